/* subscribe: `cyan subscribe [PREFIX] [--device DEVICE]`, the API's live
 * event stream (server-sent events, docs/api.md "The event stream") on
 * stdout, one line per event, until Ctrl-C.
 *
 * A stream that was open and ends (the node restarts, a proxy drops it,
 * nothing came for CY_CLI_STREAM_SILENCE_S though the server sends a
 * heartbeat every sse_heartbeat seconds) is opened again after a backoff
 * (0.5 s, doubling up to 30 s, back to 0.5 s once a stream worked), with
 * Last-Event-ID set to the last event's id: the node replays what was
 * missed from its buffer, or says ": gap" (reported on stderr) when it no
 * longer has it. So a line on stdout is never repeated or silently lost
 * across a reconnect. The first connection failing is an error at once
 * (exit 1): a wrong address or token should not look like a wait. Once
 * connected, 429 and 5xx answers are waited out (Retry-After at least);
 * another 4xx (a token revoked meanwhile) ends the command with exit 1.
 *
 * Ctrl-C (SIGINT) or SIGTERM ends it with exit 0: the handler only sets a
 * flag, which libcurl's progress callback and the backoff's sleep read
 * (within a second).
 */
#include "cli/cli_int.h"

#include "core/cy_err.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define BACKOFF_MIN_S 0.5
#define BACKOFF_MAX_S 30.0
#define ERROR_BODY_MAX 65536 /* bytes of a refusal's body kept */
#define OUTPUT_FAILED 1      /* an event callback's "stop": stdout is gone */

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

typedef struct stream {
    cli *c;
    CURL *easy;
    cy_sse sse;
    long status;        /* of this connection, once its first byte came */
    bool open;          /* a 200 with an event stream: said on stderr */
    bool not_sse;       /* a 200 that is not text/event-stream */
    bool resumed;       /* opened with a Last-Event-ID */
    cli_answer refusal; /* a status other than 200: its body and Retry-After */
    int stop;           /* why a callback stopped the transfer (0: none) */
    const char *what;   /* what is streamed, for the line that says it is open */
} stream;

/* Text of the stream for a terminal: control characters as '?'. */
static void put_clean(FILE *f, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        size_t k = cy_cli_control_at(s + i, n - i);
        fputc(k ? '?' : s[i], f);
        i += k ? k : 1;
    }
}

/* One event: with --json its JSON as it came, else
 * "PUBLISHED_AT  DEVICE  NAME  DATA" (DEVICE "-" for the shared space; a
 * DATA with control characters as a JSON string). */
static int on_event(void *ctx, const char *type, const char *id, const char *data, size_t len)
{
    stream *s = ctx;
    (void)type, (void)id;
    if (s->c->json) {
        fwrite(data, 1, len, stdout);
        putchar('\n');
    } else {
        json_t *o = json_loadb(data, len, 0, NULL);
        const char *at = json_string_value(json_object_get(o, "published_at"));
        const char *dev = json_string_value(json_object_get(o, "device_id"));
        const char *name = json_string_value(json_object_get(o, "name"));
        json_t *d = json_object_get(o, "data");
        const char *enc = json_string_value(json_object_get(o, "encoding"));
        if (!o || !name) {
            fputs("? ", stdout);
            put_clean(stdout, data);
            putchar('\n');
        } else {
            put_clean(stdout, at ? at : "-");
            fputs("  ", stdout);
            put_clean(stdout, dev ? dev : "-");
            fputs("  ", stdout);
            put_clean(stdout, name);
            fputs("  ", stdout);
            const char *dt = json_string_value(d);
            size_t dl = json_string_length(d);
            if (dt && !cy_cli_has_control(dt, dl) && strlen(dt) == dl) {
                fwrite(dt, 1, dl, stdout);
            } else {
                /* ASCII only: a C1 character is written \u009b, not as itself. */
                char *t =
                    d ? json_dumps(d, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
                fputs(t ? t : "", stdout);
                free(t);
            }
            if (enc) {
                fputs(" (", stdout);
                put_clean(stdout, enc);
                putchar(')');
            }
            putchar('\n');
        }
        json_decref(o);
    }
    return fflush(stdout) || ferror(stdout) ? OUTPUT_FAILED : 0;
}

/* Comments: the ones that say something to the user, on stderr. */
static int on_comment(void *ctx, const char *text)
{
    (void)ctx;
    if (!strncmp(text, "gap", 3) || !strncmp(text, "token ", 6)) {
        fputs("cyan: the stream says: ", stderr);
        put_clean(stderr, text);
        fputc('\n', stderr);
    }
    return 0;
}

/* The first byte of a body: what answered, and is it a stream? */
static void first_byte(stream *s)
{
    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
    if (s->status != 200) return;
    const char *ct = NULL;
    curl_easy_getinfo(s->easy, CURLINFO_CONTENT_TYPE, &ct);
    if (!ct || strncasecmp(ct, "text/event-stream", 17) != 0) {
        s->not_sse = true;
        return;
    }
    s->open = true;
    if (s->resumed) {
        /* The id is the server's text: cleaned like the stream's. */
        fprintf(stderr, "cyan: reconnected to %s, resuming after event ", s->c->url);
        put_clean(stderr, s->sse.id);
        fputc('\n', stderr);
    } else
        fprintf(stderr, "cyan: subscribed to %s at %s (Ctrl-C ends it)\n", s->what, s->c->url);
}

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    stream *s = ud;
    size_t len = size * n;
    if (!s->status) first_byte(s);
    if (s->status != 200 || s->not_sse) {
        cy_buf *b = &s->refusal.body;
        size_t room = ERROR_BODY_MAX - cy_buf_size(b);
        if (cy_buf_append(b, p, len < room ? len : room)) return 0;
        return cy_buf_size(b) < ERROR_BODY_MAX ? len : 0;
    }
    cy_sse_cb cb = {on_event, on_comment, s};
    int rc = cy_sse_feed(&s->sse, p, len, &cb);
    if (rc) {
        s->stop = rc;
        return 0;
    }
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    stream *s = ud;
    size_t len = size * n;
    if (len > 12 && !strncasecmp(p, "Retry-After:", 12)) {
        /* Seconds (cyan's form); an HTTP date (a proxy's) is not read as
         * its digits run together, a wait of hours: the backoff stands. */
        char v[32];
        size_t k = 0, i = 12;
        while (i < len && (p[i] == ' ' || p[i] == '\t'))
            i++;
        for (; i < len && k + 1 < sizeof(v) && p[i] >= '0' && p[i] <= '9'; i++)
            v[k++] = p[i];
        while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
            i++;
        v[i == len ? k : 0] = '\0';
        snprintf(s->refusal.retry_after, sizeof(s->refusal.retry_after), "%s", v);
    }
    return len;
}

static int on_progress(void *p, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)p, (void)a, (void)b, (void)c, (void)d;
    return stop_signal != 0;
}

/* One connection, until it ends; its CURLcode. */
static CURLcode connect_once(stream *s, const char *url)
{
    CURL *e = curl_easy_init();
    if (!e) return CURLE_OUT_OF_MEMORY;
    s->easy = e;
    struct curl_slist *h = curl_slist_append(NULL, "Accept: text/event-stream");
    char last[CY_SSE_ID_MAX + 32];
    if (s->sse.id[0]) {
        snprintf(last, sizeof(last), "Last-Event-ID: %s", s->sse.id);
        h = curl_slist_append(h, last);
        s->resumed = true;
    }
    cli_easy_setup(s->c, e, url, &h);
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)CY_CLI_STREAM_SILENCE_S);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, s);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
    CURLcode rc = curl_easy_perform(e);
    if (!s->status) curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &s->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    s->easy = NULL;
    return rc;
}

/* Sleep secs, or less if a signal comes. */
static void nap(double secs)
{
    struct timespec step = {0, 50 * 1000 * 1000};
    for (double left = secs; left > 0 && !stop_signal; left -= 0.05)
        nanosleep(&step, NULL);
}

/* The request's path: /v1/events[/PREFIX] or /v1/devices/D/events[/PREFIX],
 * each segment of the prefix escaped, its '/'s kept. */
static int stream_path(cy_buf *b, const char *device, const char *prefix)
{
    int rc = 0;
    if (device) {
        rc = cy_buf_append(b, "/v1/devices/", 12);
        if (!rc) rc = cli_escape(b, device);
        if (!rc) rc = cy_buf_append(b, "/events", 7);
    } else {
        rc = cy_buf_append(b, "/v1/events", 10);
    }
    for (const char *p = prefix; !rc && p && *p;) {
        size_t n = strcspn(p, "/");
        char seg[1024];
        if (n >= sizeof(seg)) return CY_EINVAL;
        memcpy(seg, p, n);
        seg[n] = '\0';
        rc = cy_buf_put_u8(b, '/');
        if (!rc) rc = cli_escape(b, seg);
        p += n;
        if (*p == '/') p++;
        if (!rc && !*p && p[-1] == '/') rc = cy_buf_put_u8(b, '/');
    }
    return rc;
}

int cli_subscribe(cli *c, const char *prefix)
{
    cy_buf path;
    cy_buf_init(&path);
    char what[256];
    snprintf(what, sizeof(what), "%s%s%s%.100s%s", c->device ? "the events of " : "every event",
             c->device ? c->device : "", prefix && *prefix ? " starting with '" : "",
             prefix ? prefix : "", prefix && *prefix ? "'" : "");
    char url[2048];
    if (stream_path(&path, c->device, prefix && *prefix ? prefix : NULL) ||
        cy_buf_put_u8(&path, 0) ||
        snprintf(url, sizeof(url), "%s%s", c->url, (char *)cy_buf_head(&path)) >=
            (int)sizeof(url)) {
        fprintf(stderr, "cyan: the prefix is too long\n");
        cy_buf_fini(&path);
        return 1;
    }
    cy_buf_fini(&path);
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: a wait ends at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    setvbuf(stdout, NULL, _IOLBF, 0);

    char last_id[CY_SSE_ID_MAX] = "";
    bool ever_open = false;
    double backoff = BACKOFF_MIN_S;
    int status = 0;
    while (!stop_signal) {
        stream s;
        memset(&s, 0, sizeof(s));
        s.c = c;
        s.what = what;
        cy_sse_init(&s.sse);
        cy_buf_init(&s.refusal.body);
        memcpy(s.sse.id, last_id, sizeof(last_id));
        CURLcode rc = connect_once(&s, url);
        memcpy(last_id, s.sse.id, sizeof(last_id));
        ever_open |= s.open;
        double wait = 0;
        bool done = true;
        if (stop_signal) {
            status = 0;
        } else if (s.stop == OUTPUT_FAILED) {
            status = 1; /* stdout is gone: nobody to tell */
        } else if (s.stop) {
            fprintf(stderr, "cyan: %s: not an event stream of cyan's: %s\n", url,
                    cy_strerror(s.stop));
            status = 1;
        } else if (s.not_sse) {
            fprintf(stderr, "cyan: %s: HTTP 200 but not an event stream (text/event-stream)\n",
                    url);
            status = 1;
        } else if (s.status && s.status != 200) {
            s.refusal.status = s.status;
            cli_answer_error(&s.refusal);
            if (ever_open && (s.status == 429 || s.status >= 500)) {
                wait = atof(s.refusal.retry_after);
                done = false;
            } else {
                status = 1;
            }
        } else if (!ever_open) {
            /* Never connected: a wrong address is said at once. */
            if (rc == CURLE_OK)
                fprintf(stderr, "cyan: %s: the stream ended before it began\n", url);
            else
                cli_transfer_error(c, url, rc, 0);
            status = 1;
        } else {
            const char *why = rc == CURLE_OK                   ? "the server ended it"
                              : rc == CURLE_PARTIAL_FILE       ? "the connection was closed"
                              : rc == CURLE_OPERATION_TIMEDOUT ? "nothing came for a minute"
                              : c->err[0]                      ? c->err
                                                               : curl_easy_strerror(rc);
            fprintf(stderr, "cyan: %s (%s)", s.open ? "the stream was lost" : "cannot reconnect",
                    why);
            done = false;
        }
        if (!done && s.open) backoff = BACKOFF_MIN_S; /* it worked: start over */
        if (!done) {
            if (wait < backoff) wait = backoff;
            if (wait > 3600) wait = 3600;
            if (s.status == 200 || !s.status)
                fprintf(stderr, "; reconnecting in %.1f s\n", wait);
            else
                fprintf(stderr, "cyan: retrying in %.1f s\n", wait);
            backoff = backoff * 2 > BACKOFF_MAX_S ? BACKOFF_MAX_S : backoff * 2;
        }
        cy_sse_fini(&s.sse);
        cy_buf_fini(&s.refusal.body);
        if (done) break;
        nap(wait);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return status;
}
