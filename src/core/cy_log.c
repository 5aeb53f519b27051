/* cy_log: formatted single-write log lines, text or JSON; see cy_log.h.
 *
 * A JSON line is built in two steps: the message is formatted as for text
 * (bounded at 1024 bytes), then every string is escaped into the line. The
 * escaping repairs what a client may have sent: control characters become
 * \u00XX, a byte that does not start or continue a valid UTF-8 sequence
 * becomes U+FFFD, so each line parses whatever was in it. */
#include "core/cy_log.h"

#include "core/cy_err.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_TEXT 1024
#define LINE_MAX_JSON 8192 /* room for the worst escaping of a whole text line */

static cy_log_level min_level = CY_LOG_INFO;
static cy_log_format format = CY_LOG_TEXT;
static char tag[32];
static char process[32] = "cyan";

void cy_log_set_tag(const char *t)
{
    snprintf(tag, sizeof(tag), "%s", t ? t : "");
}

void cy_log_set_process(const char *name)
{
    snprintf(process, sizeof(process), "%s", name && name[0] ? name : "cyan");
}

static const char *names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
static const char *json_names[] = {"debug", "info", "warn", "error"};

void cy_log_set_level(cy_log_level lvl)
{
    min_level = lvl;
}

void cy_log_set_format(cy_log_format f)
{
    format = f;
}

int cy_log_enabled(cy_log_level lvl)
{
    return lvl >= min_level;
}

int cy_log_parse_level(const char *s, cy_log_level *out)
{
    static const char *words[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, words[i]) == 0) {
            *out = (cy_log_level)i;
            return 0;
        }
    return CY_EINVAL;
}

int cy_log_parse_format(const char *s, cy_log_format *out)
{
    if (!strcmp(s, "text")) {
        *out = CY_LOG_TEXT;
        return 0;
    }
    if (!strcmp(s, "json")) {
        *out = CY_LOG_JSON;
        return 0;
    }
    return CY_EINVAL;
}

/* "2026-11-24T03:08:20.123Z" into buf (at least 25 bytes). */
static void stamp(char *buf, size_t len)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
}

/* The length of the valid UTF-8 sequence at s (n bytes left), or 0 if the
 * byte there does not begin one (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF; /* the second byte's range */
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if (n < need || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < need; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return need;
}

/* Append "key":"escaped text" (with a leading comma unless first) to out
 * at *n, never past cap - 2 (room for "}\n"). Text that does not fit is
 * cut at a character boundary. */
static void json_str(char *out, size_t cap, size_t *n, const char *key, const char *text,
                     bool first)
{
    size_t at = *n;
    int k = snprintf(out + at, cap - at, "%s\"%s\":\"", first ? "" : ",", key);
    if (k < 0 || (size_t)k >= cap - at) return;
    at += (size_t)k;
    const unsigned char *s = (const unsigned char *)text;
    size_t len = strlen(text);
    size_t room = cap - 3; /* the closing quote, '}' and '\n' */
    for (size_t i = 0; i < len;) {
        char esc[8];
        const char *piece = esc;
        size_t plen, adv = 1;
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            plen = 2;
        } else if (c == '\n' || c == '\t' || c == '\r') {
            esc[0] = '\\';
            esc[1] = c == '\n' ? 'n' : c == '\t' ? 't' : 'r';
            plen = 2;
        } else if (c < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            plen = 6;
        } else if ((adv = utf8_len(s + i, len - i)) == 0) {
            piece = "\xEF\xBF\xBD"; /* U+FFFD for a byte that is not UTF-8 */
            plen = 3;
            adv = 1;
        } else {
            piece = (const char *)s + i;
            plen = adv;
        }
        if (at + plen > room) break;
        memcpy(out + at, piece, plen);
        at += plen;
        i += adv;
    }
    out[at++] = '"';
    *n = at;
}

/* The file under src/ ("mqtt/conn.c"), or its last component. */
static const char *short_file(const char *file)
{
    if (!file) return NULL;
    const char *p = NULL;
    for (const char *q = strstr(file, "src/"); q; q = strstr(q + 1, "src/"))
        if (q == file || q[-1] == '/') p = q + 4;
    if (p) return p;
    const char *slash = strrchr(file, '/');
    return slash ? slash + 1 : file;
}

static void write_json(cy_log_level lvl, const char *file, int line, const char *client,
                       const char *msg)
{
    char out[LINE_MAX_JSON];
    char ts[64]; /* 24 bytes, room for what the compiler cannot rule out */
    stamp(ts, sizeof(ts));
    size_t n = (size_t)snprintf(out, sizeof(out), "{\"time\":\"%s\",\"level\":\"%s\"", ts,
                                json_names[lvl]);
    char *end;
    if (!strncmp(tag, "shard=", 6) && tag[6] && (strtoul(tag + 6, &end, 10), !*end)) {
        n += (size_t)snprintf(out + n, sizeof(out) - n, ",\"process\":\"shard\",\"shard\":%lu",
                              strtoul(tag + 6, NULL, 10));
    } else {
        json_str(out, sizeof(out), &n, "process", tag[0] ? tag : process, false);
    }
    const char *src = short_file(file);
    if (src) {
        char where[160];
        snprintf(where, sizeof(where), "%s:%d", src, line);
        json_str(out, sizeof(out), &n, "source", where, false);
    }
    if (client) json_str(out, sizeof(out), &n, "client", client, false);
    json_str(out, sizeof(out), &n, "message", msg, false);
    out[n++] = '}';
    out[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, out, n);
    (void)w;
}

void cy_log_at(cy_log_level lvl, const char *file, int line, const char *client, const char *fmt,
               ...)
{
    if (lvl < min_level) return;
    if ((unsigned)lvl > CY_LOG_ERROR) lvl = CY_LOG_ERROR;
    char text[LINE_MAX_TEXT];
    va_list ap;
    if (format == CY_LOG_JSON) {
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        char who[201];
        if (client) snprintf(who, sizeof(who), "%s", client);
        write_json(lvl, file, line, client ? who : NULL, text);
        return;
    }
    char ts[64]; /* 24 bytes, room for what the compiler cannot rule out */
    stamp(ts, sizeof(ts));
    int n = snprintf(text, sizeof(text), "%s %s ", ts, names[lvl]);
    if (tag[0] && n < (int)sizeof(text))
        n += snprintf(text + n, sizeof(text) - (size_t)n, "%s ", tag);
    if (client && n < (int)sizeof(text))
        n += snprintf(text + n, sizeof(text) - (size_t)n, "client=%.200s ", client);
    if (n < (int)sizeof(text)) {
        va_start(ap, fmt);
        n += vsnprintf(text + n, sizeof(text) - (size_t)n, fmt, ap);
        va_end(ap);
    }
    if (n >= (int)sizeof(text) - 1) n = (int)sizeof(text) - 2;
    /* Control characters from client-supplied text must not forge lines. */
    for (int i = 0; i < n; i++)
        if ((unsigned char)text[i] < 0x20) text[i] = '?';
    text[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, text, (size_t)n);
    (void)w;
}

/* ---- the connection summary ---- */

static const char *const kind_names[CY_CONN_KINDS] = {"mqtt",   "mqtts", "ws",
                                                      "tls/ws", "coap",  "coaps"};

static struct {
    uint64_t opened[CY_CONN_KINDS], closed[CY_CONN_KINDS];
    uint64_t refused_base; /* refused_total at the start of the interval */
    int64_t start_ms;      /* of the interval; 0 = not started */
} sum;

void cy_connsum_opened(cy_conn_kind k)
{
    if ((unsigned)k < CY_CONN_KINDS) sum.opened[k]++;
}

void cy_connsum_closed(cy_conn_kind k)
{
    if ((unsigned)k < CY_CONN_KINDS) sum.closed[k]++;
}

void cy_connsum_reset(void)
{
    memset(&sum, 0, sizeof(sum));
}

/* "12 opened (mqtt 10, mqtts 2)" into buf at *n; the total into *total. */
static void kinds(char *buf, size_t len, size_t *n, const uint64_t *c, const char *what,
                  uint64_t *total)
{
    *total = 0;
    for (int k = 0; k < CY_CONN_KINDS; k++)
        *total += c[k];
    if (*n < len)
        *n += (size_t)snprintf(buf + *n, len - *n, "%s%llu %s", *n ? ", " : "",
                               (unsigned long long)*total, what);
    bool first = true;
    for (int k = 0; k < CY_CONN_KINDS && *total; k++) {
        if (!c[k] || *n >= len) continue;
        *n += (size_t)snprintf(buf + *n, len - *n, "%s%s %llu", first ? " (" : ", ", kind_names[k],
                               (unsigned long long)c[k]);
        first = false;
    }
    if (!first && *n < len) *n += (size_t)snprintf(buf + *n, len - *n, ")");
}

int cy_connsum_tick(int64_t now_ms, uint32_t interval_s, uint64_t refused_total, uint64_t mqtt_open,
                    uint64_t coap_open)
{
    if (!interval_s) { /* off: nothing is kept, the next interval starts from here */
        memset(&sum, 0, sizeof(sum));
        sum.refused_base = refused_total;
        return 0;
    }
    if (refused_total < sum.refused_base) { /* another count (a new process): start over */
        memset(&sum, 0, sizeof(sum));
        sum.refused_base = refused_total;
    }
    if (!sum.start_ms) {
        /* The first interval begins at the first tick; what was counted
         * before it (at start, or just after a reload turned the summary
         * on) belongs to it. */
        sum.start_ms = now_ms ? now_ms : 1;
        return 0;
    }
    if (now_ms - sum.start_ms < (int64_t)interval_s * 1000) return 0;
    uint64_t refused = refused_total - sum.refused_base, opened, closed;
    char line[512];
    size_t n = 0;
    kinds(line, sizeof(line), &n, sum.opened, "opened", &opened);
    kinds(line, sizeof(line), &n, sum.closed, "closed", &closed);
    int wrote = 0;
    if (opened || closed || refused) {
        cy_info(NULL,
                "connections in the last %lld s: %s, %llu refused; open now: %llu MQTT, %llu CoAP",
                (long long)((now_ms - sum.start_ms + 500) / 1000), line,
                (unsigned long long)refused, (unsigned long long)mqtt_open,
                (unsigned long long)coap_open);
        wrote = 1;
    }
    memset(&sum, 0, sizeof(sum));
    sum.start_ms = now_ms;
    sum.refused_base = refused_total;
    return wrote;
}

/* ---- rate-limited lines ---- */

void cy_logrl_init(cy_logrl *rl, uint32_t window_ms, uint32_t burst)
{
    memset(rl, 0, sizeof(*rl));
    rl->window_ms = window_ms;
    rl->burst = burst;
}

static uint32_t key_hash(const char *k)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *k; k++) h = (h ^ (uint8_t)*k) * 16777619u;
    return h;
}

int cy_logrl_allow(cy_logrl *rl, const char *key, int64_t now_ms, uint64_t *held)
{
    if (!key) key = "";
    cy_logrl_slot *s = &rl->slots[key_hash(key) % CY_LOGRL_SLOTS];
    bool mine = strncmp(s->key, key, CY_LOGRL_KEY - 1) == 0;
    bool live = s->key[0] && now_ms - s->start_ms < (int64_t)rl->window_ms;
    if (!mine && live) { /* another source holds the slot this window */
        rl->others++;
        return 0;
    }
    if (!mine) { /* a free or expired slot: this source takes it */
        rl->others += s->held; /* the old source's count is reported by the next line */
        snprintf(s->key, sizeof(s->key), "%s", key);
        s->held = 0;
        s->start_ms = now_ms - (int64_t)rl->window_ms; /* may log at once */
    }
    if (now_ms - s->start_ms < (int64_t)rl->window_ms) {
        s->held++;
        return 0;
    }
    if (now_ms - rl->win_start_ms >= (int64_t)rl->window_ms) {
        rl->win_start_ms = now_ms;
        rl->lines = 0;
    }
    if (rl->lines >= rl->burst) {
        s->held++;
        return 0;
    }
    rl->lines++;
    *held = s->held + rl->others;
    s->held = 0;
    rl->others = 0;
    s->start_ms = now_ms;
    return 1;
}

int cy_logrl_line(cy_logrl *rl, const char *key, char more[CY_LOGRL_MORE])
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    uint64_t held = 0;
    more[0] = '\0';
    if (!cy_logrl_allow(rl, key, now, &held)) return 0;
    if (held)
        snprintf(more, CY_LOGRL_MORE, " (%llu more since the last line)",
                 (unsigned long long)held);
    return 1;
}
