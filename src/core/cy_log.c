/* cy_log: formatted single-write log lines; see cy_log.h. */
#include "core/cy_log.h"

#include "core/cy_err.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static cy_log_level min_level = CY_LOG_INFO;
static char tag[32];

void cy_log_set_tag(const char *t)
{
    snprintf(tag, sizeof(tag), "%s", t ? t : "");
}
static const char *names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

void cy_log_set_level(cy_log_level lvl)
{
    min_level = lvl;
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

void cy_log(cy_log_level lvl, const char *client, const char *fmt, ...)
{
    if (lvl < min_level) return;
    char line[1024];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), names[lvl]);
    if (tag[0] && n < (int)sizeof(line))
        n += snprintf(line + n, sizeof(line) - (size_t)n, "%s ", tag);
    if (client && n < (int)sizeof(line))
        n += snprintf(line + n, sizeof(line) - (size_t)n, "client=%.200s ", client);
    if (n < (int)sizeof(line)) {
        va_list ap;
        va_start(ap, fmt);
        n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
    }
    if (n >= (int)sizeof(line) - 1) n = (int)sizeof(line) - 2;
    /* Control characters from client-supplied text must not forge lines. */
    for (int i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20) line[i] = '?';
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
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
