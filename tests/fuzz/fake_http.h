/* fake_http: a stand-in for src/http/http.c in the API fuzzer, so the real
 * HTTP API (src/api) runs on requests given as values, with no socket and
 * no libmicrohttpd.
 *
 * It defines every function of http/http.h (the linker then never pulls
 * http.o from the cyan_http library: should the API come to call one this
 * file lacks, the link fails with duplicate symbols rather than silently
 * mixing the two). It keeps http.h's contract the way http.c does, and
 * checks the application keeps its side (abort(), a crash to libFuzzer):
 *   - the check runs on the head, before the body; a request it answers
 *     never reaches the handler;
 *   - a path or query that decodes to a control character is answered 400
 *     by the server (http.c's unescape callback), a body over
 *     max_body_bytes 413: the application never sees them;
 *   - every request is answered exactly once (a reply, or a stream begun
 *     and ended), or is still held by the application with a close
 *     callback when the client leaves; an answer's status is 200..599, and
 *     an answer without a content type is JSON (every API answer is);
 *   - stream writes only on a stream, within max_stream_backlog (the
 *     client reads everything queued after each request).
 * A HEAD stream completes at once, as http.c's does (its close callback
 * runs after the handler returns). With CYAN_FUZZ_TRACE set in the
 * environment every answer's status and body go to stderr.
 *
 * Thread: one (the fuzzer's). Ownership: requests are the fake's; a
 * request's strings are copied.
 */
#ifndef FUZZ_FAKE_HTTP_H
#define FUZZ_FAKE_HTTP_H

#include "http/http.h"

#include <stddef.h>
#include <stdint.h>

/* The server cy_http_new made last, or NULL. */
cy_http *fake_http_last(void);

/* One request as the server has read it. The target is the raw request
 * target ("/v1/x%20y?a=1"): decoded here as MHD does. headers: name, value
 * pairs, NULL-terminated (may be NULL). */
typedef struct fake_http_request {
    const char *method;
    const char *target;
    const char *const *headers;
    const uint8_t *body;
    size_t body_len;
    const char *peer; /* "ip:port"; NULL: "127.0.0.1:40000" */
} fake_http_request;

/* Take r (check, then handler). Returns the status it was answered with
 * by now (0: not yet: waiting or streaming). */
unsigned fake_http_run(cy_http *h, const fake_http_request *r);
/* The clients read what their streams queued (backlogs go back to 0). */
void fake_http_drain(cy_http *h);
/* Every client still waiting or streaming leaves: their close callbacks
 * run; every request is freed. */
void fake_http_leave_all(cy_http *h);
/* Requests answered since the server began, and streams begun. */
uint64_t fake_http_answers(const cy_http *h);

#endif
