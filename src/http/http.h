/* http: an HTTP/1.1 server driven by a libuv loop, for cyan's API.
 *
 * libmicrohttpd parses HTTP (we never hand-parse it); this module runs it
 * without threads of its own: libmicrohttpd keeps its sockets in an epoll
 * set, whose descriptor the loop watches, and a timer drives its timeouts.
 * The listening socket is inherited (every shard accepts from the same one),
 * so it must be non-blocking: another process may take a connection first.
 *
 * A request reaches the handler once its headers and whole body have
 * arrived. Before that, as soon as the headers are in and before any of the
 * body is read, an optional check (cy_http_check) may refuse it: that is
 * how the application turns away a request without credentials without
 * ever buffering its body. The handler answers at once or later (a function
 * call waits for a device): the request stays valid until it is answered or
 * its client goes away, whichever comes first. An answer is either one
 * reply or a stream (server-sent events): chunks written while the client
 * reads, ended by the server or by the client leaving.
 *
 * Limits, each answered by this module before the handler sees anything
 * (every such answer closes the connection):
 * headers over max_header_bytes (431);
 * a request target whose decoded path or query holds a control character
 * (%00-%1F, %7F: a NUL would cut the path short) (400);
 * framing that two parsers could read two ways, the stuff of request
 * smuggling: Content-Length together with Transfer-Encoding, two
 * Content-Lengths, a Transfer-Encoding other than "chunked" (400);
 * a body over max_body_bytes (413, judged from Content-Length when present,
 * else as soon as a chunked body passes the limit; the rest of that body is
 * read and dropped so that no reset loses the answer);
 * request_timeout_s, a total deadline from a request's first line (for a
 * new connection's first request: from the accept) to the end of its body
 * (past it the connection is closed, with a 408 when the body was
 * arriving), so that a client trickling its headers or its body one byte
 * at a time cannot hold a connection;
 * max_connections (past it the server stops accepting until one of its
 * connections closes: a new connection waits in the kernel's queue, or
 * another process sharing the socket takes it);
 * idle_timeout_s (a kept-alive connection with no request under way and
 * nothing being answered for that long is closed; the request line counts
 * as under way once it is whole).
 * max_per_address (when not 0: a connection from an address that holds
 * that many already is closed at accept, logged rate-limited);
 * the application's admit callback (its own limits, e.g. a connection
 * rate per address: a false closes the connection at accept).
 * Pressure: once open connections reach max_connections less a tenth of it
 * (no reserve below 10), each new connection closes the one that has
 * waited longest with no request under way (between requests, or no whole
 * request line yet, and no bytes waiting in its socket); a connection
 * between requests gets 1 s instead of idle_timeout_s; and a request head
 * (from the accept, or from a later request's first line) must be whole
 * within 2 s. Requests under way, held requests and streams are never
 * closed to make room.
 * Streams may hold at most cy_http_stream_limit connections: the rest (a
 * tenth of max_connections, at least one) stay for ordinary requests, so
 * that streams alone can never use up the server. A stream's unsent output
 * is bounded by max_stream_backlog: past it cy_http_stream_write refuses
 * with CY_ENOBUFS and the caller ends the stream.
 *
 * Ownership: cy_http_new borrows loop; the listening fd is duplicated (the
 * caller keeps its own). Strings returned by the accessors are borrowed from
 * the request and valid while it is. Reply bodies and stream writes are
 * copied, except chunks written with cy_http_stream_write_ref (shared).
 * Thread: the loop's thread only; no callback runs on another thread.
 * Errors: CY_ENOMEM, CY_EINVAL (bad argument, a second answer to one
 * request), CY_EIO (libmicrohttpd refused to start), CY_ENOBUFS (stream
 * backlog full), CY_EBUSY (no room for another stream), CY_EPIPE (the
 * client is gone, or the server is stopping).
 * A call that fails changes nothing: an unanswered req stays the caller's.
 */
#ifndef CY_HTTP_H
#define CY_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct sockaddr;
typedef struct cy_http cy_http;
typedef struct cy_http_req cy_http_req;
/* Immutable bytes shared by many streams, refcounted. */
typedef struct cy_http_chunk cy_http_chunk;

typedef struct cy_http_limits {
    size_t max_header_bytes;   /* request line + headers; 0 = 16 KiB */
    size_t max_body_bytes;     /* 0 = 64 KiB */
    unsigned max_connections;  /* per server; 0 = 1024 */
    unsigned idle_timeout_s;   /* 0 = 60 */
    size_t max_stream_backlog; /* unsent stream bytes; 0 = 1 MiB */
    unsigned request_timeout_s; /* first line of a request to the end of its body; 0 = 10 */
    unsigned max_per_address;   /* connections from one client address; 0 = no limit */
    /* HTTPS: PEM files of the certificate (chain, leaf first) and its
     * private key; both NULL or "" = plain HTTP. Read at cy_http_new. */
    const char *tls_cert;
    const char *tls_key;
    /* Called at each accept with the client's address (borrowed for the
     * call), before anything else: false closes the connection at once
     * (the callback counts and logs it). NULL: every connection is taken. */
    bool (*admit)(void *ctx, const struct sockaddr *addr);
    void *admit_ctx;
    /* Called before each run of MHD (each batch of socket events: every
     * request whose bytes arrived before the call is handled after it),
     * from the loop, outside any request. The API starts a new registry
     * snapshot there (cy_registry_fresh). NULL: nothing. */
    void (*before_run)(void *ctx);
    void *before_run_ctx;
} cy_http_limits;

/* Called once per request, on the loop thread, with the whole body read.
 * The handler must answer req exactly once (cy_http_reply, or
 * cy_http_stream_begin then eventually cy_http_stream_end), now or later,
 * unless the client leaves first (see cy_http_on_close). */
typedef void (*cy_http_handler)(void *ctx, cy_http_req *req);

/* Called once per request on the loop thread when its headers are
 * complete, before any of its body is read (the body accessor gives
 * nothing yet). To let the request go on, return without answering; to
 * refuse it, answer with cy_http_reply: the answer is sent with
 * "Connection: close", the body is never read and the handler never runs.
 * The check must not keep req, stream, or answer later. It may leave a
 * value for the handler with cy_http_set_tag. */
typedef void (*cy_http_check)(void *ctx, cy_http_req *req);

/* Start serving on listen_fd (a bound, listening, non-blocking TCP socket).
 * lim may be NULL (defaults); check may be NULL (none). handler and check
 * get ctx. On success *out is the server; caller frees with cy_http_free
 * after cy_http_stop. */
int cy_http_new(uv_loop_t *loop, int listen_fd, const cy_http_limits *lim, cy_http_handler handler,
                cy_http_check check, void *ctx, cy_http **out);
/* HTTPS only: read the certificate and key again (say, after SIGHUP).
 * New handshakes use them; connections already open keep theirs, and none
 * is dropped. On failure (a file missing or not parsing, the key not the
 * certificate's) the old pair stays in use and *why (static or in buf of
 * len bytes) says what failed. CY_EINVAL if h serves plain HTTP. */
int cy_http_tls_reload(cy_http *h, const char *cert, const char *key, char *buf, size_t len);
/* Check that cert and key are PEM files that load as a pair, without a
 * server (the supervisor, before it starts anything). 0 or CY_EINVAL, with
 * the reason in buf. */
int cy_http_tls_check(const char *cert, const char *key, char *buf, size_t len);

/* Stop accepting and close every connection: pending requests get their
 * close callback (cy_http_on_close), open streams end. Idempotent. The
 * loop must run once more before cy_http_free. */
void cy_http_stop(cy_http *h);
void cy_http_free(cy_http *h); /* safe on NULL */
/* Connections open now, and requests answered since start (for metrics). */
unsigned cy_http_connections(const cy_http *h);
uint64_t cy_http_requests(const cy_http *h);
/* Connections that hold a stream now (begun with cy_http_stream_begin and
 * not yet closed), and how many may: max_connections less a reserve of a
 * tenth of it (at least 1) kept for ordinary requests. */
unsigned cy_http_streams(const cy_http *h);
unsigned cy_http_stream_limit(const cy_http *h);

/* ---- the request (borrowed strings, valid while req is) ---- */
const char *cy_http_method(const cy_http_req *req);
/* The path, percent-decoded, without the query string. */
const char *cy_http_path(const cy_http_req *req);
/* A query argument (decoded), or NULL. */
const char *cy_http_query(const cy_http_req *req, const char *name);
/* A header, case-insensitive name, or NULL. */
const char *cy_http_header(const cy_http_req *req, const char *name);
/* The body (not NUL-terminated; NULL and 0 when empty). */
const uint8_t *cy_http_body(const cy_http_req *req, size_t *len);
/* "ip:port" of the client, for logs. */
const char *cy_http_peer(const cy_http_req *req);
/* The client's address alone ("ip"), e.g. to count or rate-limit by source. */
const char *cy_http_peer_addr(const cy_http_req *req);
/* The client's address as a sockaddr (borrowed, valid while req is), or
 * NULL if unknown. */
const struct sockaddr *cy_http_peer_sockaddr(const cy_http_req *req);
/* A number the application keeps with the request (0 until set), e.g. what
 * the check found for the handler to use. */
void cy_http_set_tag(cy_http_req *req, int tag);
int cy_http_tag(const cy_http_req *req);
/* Add a header (name and value copied) to whatever answers req: a reply, a
 * check's refusal or a stream's head; for headers every answer of a
 * request carries, whoever makes it (CORS). At most CY_HTTP_EXTRA_HEADERS
 * per request. Errors: CY_EINVAL (NULL, a control character in either, or
 * req already answered), CY_ENOBUFS (too many), CY_ENOMEM. */
#define CY_HTTP_EXTRA_HEADERS 8
int cy_http_add_header(cy_http_req *req, const char *name, const char *value);
/* When the request's head (request line and headers) was whole: monotonic
 * microseconds (cy_mono_us, core/cy_clock.h), taken just before the check
 * runs, before any of its body is read. What an answer's latency is
 * measured from: it leaves out the time the client took to send the head,
 * and counts its body's arrival. */
int64_t cy_http_started_us(const cy_http_req *req);

/* Called if the client goes away (or the server stops) before req is
 * answered or while its stream is open; req is freed when cb returns and
 * must not be used again. Replaces a previous callback. A client that
 * shuts down its sending side while it waits counts as gone. */
void cy_http_on_close(cy_http_req *req, void (*cb)(void *arg, cy_http_req *req), void *arg);

/* Answer req with status and body (copied; content_type NULL means
 * "application/json"; a 204 has none). headers: NULL, or name/value pairs ending with NULL,
 * e.g. {"Retry-After", "2", NULL}. req must not be used after this call;
 * the close callback does not run. Also the way a check refuses a request. */
int cy_http_reply(cy_http_req *req, unsigned status, const char *content_type, const char *body,
                  size_t len, const char *const *headers);

/* ---- protocol upgrade (WebSocket) ---- */
/* A connection handed over by cy_http_upgrade. Its owner closes it with
 * cy_http_upgraded_close, exactly once. */
typedef struct cy_http_upgraded cy_http_upgraded;
/* Called once the 101 has reached the kernel (fd >= 0), or when the
 * upgrade fails (fd -1, extra NULL, u NULL: the client left first or the
 * server stopped). fd: a duplicate of the socket, the callee's to close;
 * extra: bytes the client sent past the request head, borrowed for the
 * call; u: the handle. Until cy_http_upgraded_close the connection keeps
 * one of max_connections (and its place in max_per_address), and no HTTP
 * deadline applies to it. Over HTTPS the socket is one end of a socketpair
 * that MHD relays through TLS in its own runs. */
typedef void (*cy_http_upgrade_cb)(void *arg, int fd, const uint8_t *extra, size_t len,
                                   cy_http_upgraded *u);
/* Answer req with "101 Switching Protocols", headers (name/value pairs
 * ending with NULL, copied; "Upgrade" among them), then hand the socket to
 * cb. Called from the handler only (not the check); req must not be used
 * after. On error (CY_EINVAL, CY_ENOMEM, CY_EPIPE) nothing was sent, cb
 * never runs and req is still the caller's. */
int cy_http_upgrade(cy_http_req *req, const char *const *headers, cy_http_upgrade_cb cb,
                    void *arg);
/* Done with the upgraded connection (its fd closed by the caller first):
 * MHD shuts down and closes its own descriptor and frees the connection.
 * After cy_http_stop this only frees u. */
void cy_http_upgraded_close(cy_http_upgraded *u);

/* ---- streams (server-sent events) ---- */
/* Answer 200 with content_type (NULL means "text/event-stream") and
 * headers, the body to follow in chunks (chunked encoding; no
 * Content-Length). The connection stays open. A HEAD request gets the head
 * only, and its close callback runs once that is sent. CY_EBUSY (nothing
 * sent, req still the caller's to answer) when cy_http_stream_limit streams
 * are open already. */
int cy_http_stream_begin(cy_http_req *req, const char *content_type, const char *const *headers);
/* Queue bytes (copied) for the client. CY_ENOBUFS past max_stream_backlog
 * (nothing queued: end the stream), CY_EPIPE if the client is gone. */
int cy_http_stream_write(cy_http_req *req, const char *data, size_t len);
/* The same for bytes many streams send: one chunk, written to each stream
 * without a copy. cy_http_chunk_new copies data[0..len) once (NULL when out
 * of memory); the caller holds the one reference it returns and drops it
 * with cy_http_chunk_unref. cy_http_stream_write_ref takes a reference of
 * its own on success (the caller keeps its own); the chunk's whole length
 * counts toward max_stream_backlog, as copied bytes do (it is how far
 * behind the client is). Errors as cy_http_stream_write. */
cy_http_chunk *cy_http_chunk_new(const char *data, size_t len);
cy_http_chunk *cy_http_chunk_ref(cy_http_chunk *c); /* returns c; NULL is ignored */
void cy_http_chunk_unref(cy_http_chunk *c);         /* safe on NULL */
size_t cy_http_chunk_len(const cy_http_chunk *c);
int cy_http_stream_write_ref(cy_http_req *req, cy_http_chunk *c);
/* Bytes queued and not yet taken by the kernel. */
size_t cy_http_stream_backlog(const cy_http_req *req);
/* End the stream after what is queued has been sent; req must not be used
 * after this call and its close callback does not run. */
void cy_http_stream_end(cy_http_req *req);

#endif
