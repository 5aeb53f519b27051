/* cli_int: what the files of src/cli share: the pure text helpers
 * (text.c: addresses and URLs, API times, the line of a setting in a
 * configuration file), the server-sent events parser (sse.c), and one
 * client's state with its requests (request.c).
 *
 * The pure parts take and return plain text, allocate nothing and print
 * nothing (tests/unit/test_cli_parse.c); request.c prints the one line of
 * an error itself. Ownership: every pointer argument is borrowed.
 * Thread: the CLI's one thread.
 */
#ifndef CY_CLI_INT_H
#define CY_CLI_INT_H

#include "cli/cli.h"
#include "core/cy_buf.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- text.c ---- */

/* How many bytes at s[0..n) are one control character: C0 and DEL (1), or
 * a C1 one in UTF-8 (U+0080..U+009F: 0xC2 0x80..0x9F, 2), which terminals
 * also obey (0x9B is CSI, as ESC [ is); 0 for anything else. */
size_t cy_cli_control_at(const char *s, size_t n);
/* Does s[0..n) hold a control character? */
bool cy_cli_has_control(const char *s, size_t n);
/* s with each control character replaced by '?', in place (it can only
 * shrink); s is NUL-terminated. */
void cy_cli_clean(char *s);

/* The base URL of the API a node serves on listen (http_listen,
 * "host:port" or "[v6]:port"): "http[s]://host:port", with a wildcard host
 * (0.0.0.0, *, empty, [::]) replaced by this machine's loopback (127.0.0.1
 * or [::1]). CY_ENOENT for "" (the API is off), CY_EINVAL for text that is
 * no listener address, CY_ERANGE if out (cap bytes) is too small. */
int cy_cli_listen_url(const char *listen, bool https, char *out, size_t cap);

/* A base URL from the user: "http://" or "https://" (any case), a host,
 * an optional ":port" (1..65535) and an optional path, no user:password@,
 * no query or fragment, no blank or control character. Written to out
 * without its trailing '/'s. CY_EINVAL (with why, a static text, in *why
 * when why is not NULL) or CY_ERANGE. */
int cy_cli_base_url(const char *text, char *out, size_t cap, const char **why);

/* Whether base URLs a and b (as cy_cli_base_url writes them) reach the same
 * node: the same scheme and port, and the same host (case aside) or two
 * loopback hosts (localhost, 127.0.0.0/8, [::1]). */
bool cy_cli_same_node(const char *a, const char *b);

/* An API time ("2026-11-24T06:05:00.001Z"; the milliseconds optional) as
 * wall ms since the epoch. CY_EINVAL if it is not one. */
int cy_cli_time_ms(const char *iso, int64_t *ms);

/* How long ago ago_ms is, short: "now" (under a second), "12s ago",
 * "5m ago", "3h ago", "4d ago"; a time in the future (a clock ahead) is
 * "now" too. */
void cy_cli_age(int64_t ago_ms, char *out, size_t cap);

/* The line number (1-based) of the last line of the configuration text
 * text[0..len) that sets name ("name = value", as cy_config_load_buf reads
 * it), or 0 if none does. */
unsigned cy_cli_config_line(const char *text, size_t len, const char *name);

/* ---- sse.c: text/event-stream, as a browser's EventSource reads it ----
 *
 * Lines end with "\n", "\r\n" or "\r"; "field: value" lines build an event
 * (data lines joined by "\n"), a blank line dispatches it if it has data;
 * lines starting with ':' are comments; "id" persists from event to event
 * (the Last-Event-ID to resume from). A line is at most CY_SSE_MAX_LINE
 * bytes: a longer one is CY_EMSGSIZE (a stream that is not cyan's). */

#define CY_SSE_MAX_LINE (4u << 20)
#define CY_SSE_ID_MAX 128

typedef struct cy_sse {
    cy_buf line;            /* the line being read, without its end */
    cy_buf data;            /* the event's data so far */
    char event[128];        /* the event's type; "" = "message" */
    char id[CY_SSE_ID_MAX]; /* the last id seen */
    bool has_data;          /* a data line came for this event */
    bool after_cr;          /* the last byte fed was '\r' */
} cy_sse;

/* What the parser calls; a non-zero return stops cy_sse_feed, which
 * returns it. Texts are NUL-terminated, valid during the call. */
typedef struct cy_sse_cb {
    int (*event)(void *ctx, const char *type, const char *id, const char *data, size_t len);
    int (*comment)(void *ctx, const char *text); /* after ':' and one blank; may be NULL */
    void *ctx;
} cy_sse_cb;

void cy_sse_init(cy_sse *p);
void cy_sse_fini(cy_sse *p);
/* Feed n bytes (any split: a line or an event may span calls). 0,
 * CY_EMSGSIZE, CY_ENOMEM, or a callback's non-zero return. */
int cy_sse_feed(cy_sse *p, const char *buf, size_t n, const cy_sse_cb *cb);

/* ---- request.c: one client of one API ---- */

typedef struct cli {
    const cy_config *cfg;
    char url[1024]; /* base, no trailing '/' */
    char token[512];
    char cacert[1024];  /* CA file for https ("" = the system's) */
    bool skip_host;     /* the configuration's own https node: peer checked, host name not */
    bool json;          /* --json */
    long timeout;       /* --timeout, s (0: the API's default) */
    const char *device; /* --device (subscribe) */
    char err[CURL_ERROR_SIZE];
} cli;

/* An answer: its status and body (up to CY_CLI_MAX_ANSWER bytes). */
typedef struct cli_answer {
    long status;
    cy_buf body;
    char retry_after[32]; /* the Retry-After header, "" if none */
} cli_answer;

/* Where the API is and the token (cli.h, "Where the API is"), into c.
 * need_token false: only the URL is needed. 0, or 1 (said on stderr). */
int cli_target(cli *c, const cy_config *cfg, const char *url_flag, const char *token_flag,
               const char *cacert_flag);

/* The options every request of c has (the URL, the token, TLS, the
 * deadlines of connect and of silence, no redirects, no signals). */
void cli_easy_setup(cli *c, CURL *e, const char *url, struct curl_slist **headers);

/* method path (after the base URL; segments already escaped) with body
 * (JSON text, may be NULL), an answer due within timeout_s. 0 when an
 * answer came (any status: *a holds it; the caller frees a->body with
 * cy_buf_fini), 1 when none did (said on stderr). */
int cli_request(cli *c, const char *method, const char *path, const char *body, long timeout_s,
                cli_answer *a);

/* Say on stderr why a (not 2xx) failed: "cyan: HTTP 404 device_not_found:
 * no device x" from the API's JSON, else its status and the start of its
 * body. */
void cli_answer_error(const cli_answer *a);

/* Say on stderr why a transfer of c to url failed (curl's code rc), with a
 * hint where one helps (is cyan running? HTTPS?). */
void cli_transfer_error(const cli *c, const char *url, CURLcode rc, long timeout_s);

/* Append s, percent-encoded as one path segment, to b ("" for NULL). */
int cli_escape(cy_buf *b, const char *s);

/* ---- subscribe.c ---- */

/* cyan subscribe: prefix may be NULL. Returns the exit status. */
int cli_subscribe(cli *c, const char *prefix);

#endif
