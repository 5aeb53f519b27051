/* watchdog: verdicts, backoff and the listen address; see watchdog.h for
 * the rules.
 *
 * The idea needed to read the verdict: liveness is judged on two clocks. The
 * heartbeat says the shard's loop turns; the progress clock says the work
 * given to it gets done. A shard whose loop turns but whose progress counter
 * has not moved while work is owed to it is as broken as one whose loop has
 * stopped (Particle's 2018 outage: a routing process alive, answering
 * nothing). The progress clock only runs while work is owed, so an idle
 * shard is never stuck.
 */
#include "health/watchdog.h"

#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "health/scoreboard.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

void cy_watch_init(cy_watch *w, int64_t now_ms)
{
    w->spawned_ms = now_ms;
    w->progress = 0;
    w->backlog = 0;
    w->since_ms = now_ms;
}

int64_t cy_watchdog_start_limit(int64_t timeout_ms)
{
    int64_t t = timeout_ms * CY_WATCHDOG_START_FACTOR;
    return t > CY_WATCHDOG_START_MIN_MS ? t : CY_WATCHDOG_START_MIN_MS;
}

bool cy_canary_failing(int64_t now_ms, int64_t timeout_ms, int64_t running_since_ms,
                       int64_t ok_ms, unsigned nshards, unsigned nfailing, char *why,
                       size_t why_len)
{
    if (why && why_len) why[0] = '\0';
    if (timeout_ms <= 0 || running_since_ms <= 0) return false;
    int64_t from = ok_ms > running_since_ms ? ok_ms : running_since_ms;
    if (now_ms - from <= timeout_ms) return false;
    if (nshards > 1 && nfailing >= nshards) return false;
    if (why && why_len) {
        double s = (double)(now_ms - from) / 1000.0;
        if (ok_ms > running_since_ms)
            snprintf(why, why_len, "canary failing for %.1f s", s);
        else
            snprintf(why, why_len, "canary never succeeded in %.1f s", s);
    }
    return true;
}

int64_t cy_watchdog_owed_interval(int64_t timeout_ms)
{
    int64_t t = timeout_ms / 8;
    if (t > CY_WATCHDOG_OWED_MAX_MS) t = CY_WATCHDOG_OWED_MAX_MS;
    if (t < CY_WATCHDOG_OWED_MIN_MS) t = CY_WATCHDOG_OWED_MIN_MS;
    return t;
}

int cy_watchdog_reason(cy_verdict v)
{
    if (v == CY_VERDICT_CANARY) return CY_RESTART_CANARY;
    return v == CY_VERDICT_STUCK ? CY_RESTART_STUCK : CY_RESTART_HUNG;
}

static void say(char *why, size_t len, const char *fmt, int64_t ms, uint64_t n)
{
    if (why && len) snprintf(why, len, fmt, (double)ms / 1000.0, (unsigned long long)n);
}

/* A heartbeat this recent means the shard's loop turns (it beats every
 * 100 ms). */
#define CY_WATCH_FRESH_MS 300

cy_verdict cy_watchdog_judge(cy_watch *w, const cy_watch_sample *s, int64_t now_ms,
                             int64_t timeout_ms, char *why, size_t why_len)
{
    if (why && why_len) why[0] = '\0';
    if (s->state != CY_SHARD_RUNNING) {
        /* Not judged on progress: restart its clock, so the first RUNNING
         * sample does not inherit the time spent loading. */
        w->progress = s->progress;
        w->backlog = 0;
        w->since_ms = now_ms;
        if (s->state == CY_SHARD_STARTING &&
            now_ms - w->spawned_ms > cy_watchdog_start_limit(timeout_ms)) {
            say(why, why_len, "still starting after %.1f s", now_ms - w->spawned_ms, 0);
            return CY_VERDICT_START_TIMEOUT;
        }
        return CY_VERDICT_OK;
    }
    int64_t beat_age = now_ms - s->heartbeat_ms;
    if (s->progress != w->progress || s->backlog == 0 || w->backlog == 0) {
        w->progress = s->progress;
        w->since_ms = now_ms;
    }
    w->backlog = s->backlog;
    if (beat_age > timeout_ms) {
        say(why, why_len, "no heartbeat for %.1f s", beat_age, 0);
        return CY_VERDICT_HUNG;
    }
    /* Stuck is for a loop that turns without doing its work. A heartbeat
     * that has stopped too means a loop that does not turn: leave it to the
     * hung verdict, so a stopped shard is never reported as stuck. */
    int64_t still = now_ms - w->since_ms;
    if (s->backlog > 0 && still > timeout_ms && beat_age <= CY_WATCH_FRESH_MS) {
        say(why, why_len, "no progress for %.1f s with %llu queued", still, s->backlog);
        return CY_VERDICT_STUCK;
    }
    return CY_VERDICT_OK;
}

int64_t cy_backoff_next(int64_t prev_ms, int64_t ran_ms)
{
    if (ran_ms >= CY_BACKOFF_SHORT_RUN_MS) return 0;
    int64_t d = prev_ms > CY_BACKOFF_MAX_MS / 2 ? CY_BACKOFF_MAX_MS : prev_ms * 2;
    if (d < CY_BACKOFF_MIN_MS) d = CY_BACKOFF_MIN_MS;
    if (d > CY_BACKOFF_MAX_MS) d = CY_BACKOFF_MAX_MS;
    return d;
}

static int parse_port(const char *s, int *port)
{
    if (!*s || strlen(s) > 5) return CY_EINVAL;
    int v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return CY_EINVAL;
        v = v * 10 + (*s - '0');
    }
    if (v > 65535) return CY_EINVAL;
    *port = v;
    return 0;
}

int cy_listen_addr_parse(const char *text, struct sockaddr_storage *addr)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *port_text;
    int port;
    memset(addr, 0, sizeof(*addr));
    if (!text) return CY_EINVAL;
    if (text[0] == '[') {
        const char *end = strchr(text, ']');
        if (!end || end[1] != ':' || (size_t)(end - text - 1) >= sizeof(host)) return CY_EINVAL;
        memcpy(host, text + 1, (size_t)(end - text - 1));
        host[end - text - 1] = '\0';
        port_text = end + 2;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;
        if (parse_port(port_text, &port) || inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            return CY_EINVAL;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    const char *colon = strrchr(text, ':');
    if (!colon || strchr(text, ':') != colon || (size_t)(colon - text) >= sizeof(host))
        return CY_EINVAL; /* a bare IPv6 address needs brackets */
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
    if (parse_port(colon + 1, &port)) return CY_EINVAL;
    if (!strcmp(host, "*"))
        a4->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
        return CY_EINVAL;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    return 0;
}

bool cy_watchdog_supervisor_alive(const cy_scoreboard *sb, int64_t *beat_age_ms)
{
    if (beat_age_ms) *beat_age_ms = 0;
    if (!sb->hdr) return false;
    int64_t pid = cy_sb_load(&sb->hdr->supervisor_pid);
    if (beat_age_ms) *beat_age_ms = cy_mono_ms() - cy_sb_load(&sb->hdr->supervisor_heartbeat_ms);
    if (pid <= 0) return false;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

/* 8 bits of magic, 16 of generation, 8 of kind: an accidental value with
 * the right signal is unlikely to pass, and a drill meant for a shard that
 * has since been replaced (same index, new generation) is not acted on. */
#define CY_DRILL_MAGIC 0xC7u

int cy_drill_token(int64_t generation, int kind)
{
    uint32_t v = (CY_DRILL_MAGIC << 24) | (((uint32_t)generation & 0xFFFFu) << 8) |
                 ((uint32_t)kind & 0xFFu);
    return (int)v;
}

int cy_drill_kind(int value, int64_t generation)
{
    uint32_t v = (uint32_t)value;
    if (v >> 24 != CY_DRILL_MAGIC || ((v >> 8) & 0xFFFFu) != ((uint32_t)generation & 0xFFFFu))
        return CY_DRILL_NONE;
    int kind = (int)(v & 0xFFu);
    return kind == CY_DRILL_SPIN || kind == CY_DRILL_STALL || kind == CY_DRILL_DROP ? kind
                                                                                   : CY_DRILL_NONE;
}
