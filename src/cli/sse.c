/* sse: a text/event-stream parser for `cyan subscribe` (cli_int.h), by
 * the rules of the HTML standard's EventSource ("Interpreting an event
 * stream"), of which cyan's streams use a part: "id:", "event:" and
 * "data:" lines, comments (": heartbeat", ": gap ..."), a blank line
 * after each event.
 *
 * Bytes accumulate in `line` until a line end ("\n", "\r\n" or "\r": a
 * '\r' at the end of one feed and a '\n' at the start of the next are one
 * line end, hence after_cr); each whole line is processed at once.
 */
#include "cli/cli_int.h"

#include "core/cy_err.h"

#include <string.h>

void cy_sse_init(cy_sse *p)
{
    memset(p, 0, sizeof(*p));
    cy_buf_init(&p->line);
    cy_buf_init(&p->data);
}

void cy_sse_fini(cy_sse *p)
{
    cy_buf_fini(&p->line);
    cy_buf_fini(&p->data);
}

static void event_reset(cy_sse *p)
{
    cy_buf_reset(&p->data);
    p->event[0] = '\0';
    p->has_data = false;
}

/* One whole line, s[0..n) (NUL-terminated at n by the caller). */
static int line(cy_sse *p, char *s, size_t n, const cy_sse_cb *cb)
{
    if (n == 0) { /* dispatch */
        if (!p->has_data) {
            event_reset(p);
            return 0;
        }
        int rc = cy_buf_put_u8(&p->data, 0); /* NUL-terminated for the callback */
        if (rc) return rc;
        rc = cb->event ? cb->event(cb->ctx, p->event, p->id, (const char *)cy_buf_head(&p->data),
                                   cy_buf_size(&p->data) - 1)
                       : 0;
        event_reset(p);
        return rc;
    }
    if (s[0] == ':') {
        const char *text = s + 1;
        if (*text == ' ') text++;
        return cb->comment ? cb->comment(cb->ctx, text) : 0;
    }
    char *colon = memchr(s, ':', n);
    const char *value = "";
    size_t vlen = 0;
    if (colon) {
        *colon = '\0';
        value = colon + 1;
        if (*value == ' ') value++;
        vlen = n - (size_t)(value - s);
    }
    if (!strcmp(s, "data")) {
        /* An event's data is bounded as a line is: a server that never ends one is refused. */
        if (cy_buf_size(&p->data) + vlen + 1 > CY_SSE_MAX_LINE) return CY_EMSGSIZE;
        if (p->has_data) {
            int rc = cy_buf_put_u8(&p->data, '\n');
            if (rc) return rc;
        }
        p->has_data = true;
        return cy_buf_append(&p->data, value, vlen);
    }
    if (!strcmp(s, "event")) {
        if (vlen < sizeof(p->event)) memcpy(p->event, value, vlen + 1);
        return 0;
    }
    if (!strcmp(s, "id")) {
        /* An id with a NUL is ignored (the standard); so is one too long
         * to resume from. */
        if (vlen < sizeof(p->id) && !memchr(value, '\0', vlen)) memcpy(p->id, value, vlen + 1);
        return 0;
    }
    return 0; /* retry and unknown fields */
}

int cy_sse_feed(cy_sse *p, const char *buf, size_t n, const cy_sse_cb *cb)
{
    for (size_t i = 0; i < n;) {
        if (p->after_cr && buf[i] == '\n') { /* the rest of a "\r\n" */
            p->after_cr = false;
            i++;
            continue;
        }
        p->after_cr = false;
        /* Up to the next line end: appended in one piece. */
        size_t j = i;
        while (j < n && buf[j] != '\n' && buf[j] != '\r')
            j++;
        if (cy_buf_size(&p->line) + (j - i) > CY_SSE_MAX_LINE) return CY_EMSGSIZE;
        int rc = cy_buf_append(&p->line, buf + i, j - i);
        if (rc) return rc;
        if (j == n) break; /* the line goes on in the next feed */
        p->after_cr = buf[j] == '\r';
        i = j + 1;
        size_t len = cy_buf_size(&p->line);
        if ((rc = cy_buf_put_u8(&p->line, 0))) return rc;
        rc = line(p, (char *)cy_buf_head(&p->line), len, cb);
        cy_buf_reset(&p->line);
        if (rc) return rc;
    }
    return 0;
}
