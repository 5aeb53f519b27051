/* sdnotify: systemd's notification datagrams and the supervisor's own
 * health; see sdnotify.h for the protocol and the rules.
 *
 * The idea needed to read the address code: a sockaddr_un for an abstract
 * socket starts with a NUL byte and its name is the bytes after it, with
 * no terminator, so its length is the name's, not sizeof(sockaddr_un);
 * a path is NUL-terminated as usual. NOTIFY_SOCKET writes the NUL as '@'.
 */
#include "health/sdnotify.h"

#include "core/cy_err.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The address of name (NOTIFY_SOCKET syntax) into sa, its length into *len. */
static int address(const char *name, struct sockaddr_un *sa, socklen_t *len)
{
    if (!name || !name[0]) return CY_ENOENT;
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (n >= sizeof(sa->sun_path)) return CY_EINVAL;
    memcpy(sa->sun_path, name, n);
    if (name[0] == '@') {
        sa->sun_path[0] = '\0'; /* abstract: the name is the bytes after the NUL */
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    return 0;
}

static int send_to(int fd, const char *name, const char *state)
{
    struct sockaddr_un sa;
    socklen_t len;
    int rc = address(name, &sa, &len);
    if (rc) return rc;
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
        return -errno;
    return 0;
}

int cy_sd_notify_to(const char *socket_name, const char *state)
{
    struct sockaddr_un sa;
    socklen_t len;
    int rc = address(socket_name, &sa, &len);
    if (rc) return rc;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    rc = send_to(fd, socket_name, state);
    close(fd);
    return rc;
}

int cy_sd_notify(const char *state)
{
    return cy_sd_notify_to(getenv("NOTIFY_SOCKET"), state);
}

/* A positive decimal number (WATCHDOG_USEC, WATCHDOG_PID), or 0. */
static unsigned long long number(const char *s)
{
    if (!s || s[0] < '0' || s[0] > '9') return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    return errno || *end ? 0 : v;
}

int cy_sdnotify_open_from(cy_sdnotify *n, const char *socket_name, const char *usec,
                          const char *pid, pid_t self)
{
    memset(n, 0, sizeof(*n));
    n->fd = -1;
    struct sockaddr_un sa;
    socklen_t len;
    int rc = address(socket_name, &sa, &len);
    if (rc) return rc;
    snprintf(n->socket, sizeof(n->socket), "%s", socket_name);
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (n->fd < 0) return -errno;
    unsigned long long us = number(usec);
    n->bad_watchdog = usec && !us;
    /* WATCHDOG_PID names the process that must ping: absent, it is us. */
    bool ours = !pid || !pid[0] || number(pid) == (unsigned long long)self;
    if (us && ours) {
        n->watchdog_ms = (int64_t)(us / 1000);
        if (n->watchdog_ms < 1) n->watchdog_ms = 1;
    }
    return 0;
}

int cy_sdnotify_open(cy_sdnotify *n)
{
    const char *s = getenv("NOTIFY_SOCKET");
    const char *u = getenv("WATCHDOG_USEC");
    const char *p = getenv("WATCHDOG_PID");
    int rc = cy_sdnotify_open_from(n, s, u, p, getpid());
    unsetenv("NOTIFY_SOCKET"); /* after the read: the strings live in environ */
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    return rc;
}

int cy_sdnotify_send(cy_sdnotify *n, const char *state)
{
    if (n->fd < 0) return CY_ENOENT;
    return send_to(n->fd, n->socket, state);
}

int64_t cy_sdnotify_ping_ms(const cy_sdnotify *n)
{
    return n->fd >= 0 && n->watchdog_ms > 0 ? (n->watchdog_ms + 1) / 2 : 0;
}

void cy_sdnotify_close(cy_sdnotify *n)
{
    if (n->fd >= 0) close(n->fd);
    n->fd = -1;
}

bool cy_supervisor_healthy(const cy_sv_proc *p, unsigned n, bool scoreboard_ok, int64_t now_ms,
                           char *why, size_t why_len)
{
    char scratch[8];
    if (!why || !why_len) {
        why = scratch;
        why_len = sizeof(scratch);
    }
    why[0] = '\0';
    if (!scoreboard_ok) {
        snprintf(why, why_len,
                 "the scoreboard (data_dir/run/scoreboard) was removed or replaced: a new "
                 "shard could not start");
        return false;
    }
    for (unsigned i = 0; i < n; i++) {
        const cy_sv_proc *x = &p[i];
        if (x->alive && x->killed_ms && now_ms - x->killed_ms > CY_SV_REAP_MS) {
            snprintf(why, why_len, "%s (pid %lld) was killed %.1f s ago and has not exited",
                     x->name, (long long)x->pid, (double)(now_ms - x->killed_ms) / 1000.0);
            return false;
        }
        if (!x->alive && x->spawn_failing_since_ms &&
            now_ms - x->spawn_failing_since_ms > CY_SV_SPAWN_FAIL_MS) {
            snprintf(why, why_len, "%s could not be spawned for %.0f s", x->name,
                     (double)(now_ms - x->spawn_failing_since_ms) / 1000.0);
            return false;
        }
        if (!x->alive && !x->respawn_armed) {
            snprintf(why, why_len, "%s is down and no respawn is scheduled", x->name);
            return false;
        }
    }
    return true;
}
