/* main: the process that runs one shard, as spawned by the supervisor.
 *
 * It inherits the listening MQTT socket as fd 3, one end of a socketpair
 * to the supervisor as fd 4, the listening HTTP socket as fd 5 and the data
 * folder's lock as fd 6, which it keeps open and never touches: while any
 * process of a run lives, the lock stays held (see health/supervisor.h);
 * CoAP's sockets as fds 7 and 8, and the MQTT over TLS listener as fd 9. It
 * maps the
 * scoreboard and writes only its own slot: STARTING while it loads its
 * SQLite file (data_dir/shard-<index>.db), then RUNNING, with a heartbeat on
 * every loop pass and at least every 100 ms from a timer.
 *
 * It stops cleanly on SIGTERM or SIGINT. It never outlives the supervisor:
 * it asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG).
 * Not SIGTERM: a stopped (SIGSTOP) or spinning shard never runs the loop
 * that would handle it, and a SIGTERM left pending kept such a shard, and
 * the listening port, alive after a supervisor's SIGKILL. SIGKILL ends a
 * process in any state, and costs nothing that matters: what a shard has
 * acknowledged is on disk before the acknowledgement, and a supervisor
 * killed is already an unclean stop. EOF on fd 4 stays as a second,
 * independent way to notice.
 *
 * Fd 4 also carries reloads: on SIGHUP the supervisor re-reads the config
 * and sends every setting that can change at runtime as "name=value" lines
 * ended by an empty line; the shard checks them all, applies them to its
 * own copy of the settings (the layers read that copy at each use) and
 * logs what changed. A shard thus never reads the config file after its
 * start: it applies what the supervisor checked, and a file broken since
 * cannot reach it. The ACL file (acl_file) is another matter: the shard
 * reads it again at every reload (cy_shard_reload); one that no longer
 * parses is logged and the rules in use stay.
 *
 * Two drills, for people practising an outage, come from `cyan shard
 * spin|stall` as the realtime signal CY_DRILL_SIGNAL with a value naming
 * the drill and this shard's generation (health/watchdog.h): spin makes the
 * loop busy-loop forever (heartbeat stops: the supervisor finds it "hung");
 * stall makes it ignore input (heartbeat kept: found "stuck" once peers
 * have queued work for it). SIGUSR1, SIGUSR2 and SIGHUP, which log-rotation
 * tools and habits send to any process, do nothing here but log once.
 */
#include "shard/shard.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_limit.h"
#include "core/cy_log.h"
#include "health/scoreboard.h"
#include "health/watchdog.h"
#include "store/store.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define LISTEN_FD 3
#define SUPERVISOR_FD 4
#define HTTP_FD 5
#define COAP_FD 7  /* the plain CoAP socket, when coap_listen is set */
#define COAPS_FD 8 /* this shard's DTLS socket, when coaps_listen is set */
#define MQTTS_FD 9 /* the MQTT over TLS listener, when tls_cert and mqtts_listen are set */
#define BEAT_MS 100
#define RELOAD_MAX 8192 /* bytes of one reload message from the supervisor */

typedef struct shard {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sigusr1, sigusr2, sighup;
    uv_async_t drill;
    uv_pipe_t supervisor;
    uv_timer_t beat;
    cy_shard *shard;
    cy_sb_slot *slot;
    cy_config live; /* the settings the layers read; changed by reloads */
    unsigned index;
    bool stopping;
    bool told[3]; /* SIGUSR1, SIGUSR2, SIGHUP: logged once */
    size_t inlen;
    char in[RELOAD_MAX]; /* a reload message being received */
} shard;

/* The drill signal's handler reaches the loop through these (a handler
 * gets no user data). */
static uv_async_t *drill_async;
static int64_t drill_generation;
static volatile sig_atomic_t drill_pending;

static void drill_handler(int sig, siginfo_t *si, void *uctx)
{
    (void)sig;
    (void)uctx;
    if (si->si_code != SI_QUEUE) return;
    int kind = cy_drill_kind(si->si_value.sival_int, drill_generation);
    if (kind == CY_DRILL_NONE || !drill_async) return;
    drill_pending = kind;
    uv_async_send(drill_async); /* async-signal-safe */
}

static void drill_signal(bool on)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    if (on) {
        sa.sa_sigaction = drill_handler;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
    } else {
        sa.sa_handler = SIG_IGN;
    }
    sigaction(CY_DRILL_SIGNAL, &sa, NULL);
}

static void stop(shard *sh, const char *why)
{
    if (sh->stopping) return;
    sh->stopping = true;
    cy_info(NULL, "%s, shutting down", why);
    if (sh->slot) cy_sb_store(&sh->slot->state, CY_SHARD_STOPPING);
    cy_shard_stop(sh->shard);
    uv_close((uv_handle_t *)&sh->sigterm, NULL);
    uv_close((uv_handle_t *)&sh->sigint, NULL);
    uv_close((uv_handle_t *)&sh->sigusr1, NULL);
    uv_close((uv_handle_t *)&sh->sigusr2, NULL);
    uv_close((uv_handle_t *)&sh->sighup, NULL);
    drill_signal(false); /* before the handle it would wake is closed */
    drill_async = NULL;
    uv_close((uv_handle_t *)&sh->drill, NULL);
    uv_close((uv_handle_t *)&sh->supervisor, NULL);
    uv_close((uv_handle_t *)&sh->beat, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    shard *sh = h->data;
    int which = signum == SIGUSR1 ? 0 : signum == SIGUSR2 ? 1 : signum == SIGHUP ? 2 : -1;
    if (which >= 0) {
        if (!sh->told[which])
            cy_warn(NULL,
                    "shard %u: %s ignored (logged once): cyan writes its log to stderr and "
                    "has nothing to reopen; reload with SIGHUP to the supervisor, drills are "
                    "`cyan shard spin|stall`",
                    sh->index, signum == SIGUSR1 ? "SIGUSR1" : signum == SIGUSR2 ? "SIGUSR2"
                                                                                 : "SIGHUP");
        sh->told[which] = true;
        return;
    }
    stop(sh, signum == SIGTERM ? "received SIGTERM" : "received SIGINT");
}

static void on_drill(uv_async_t *a)
{
    shard *sh = a->data;
    int kind = drill_pending;
    drill_pending = CY_DRILL_NONE;
    if (kind == CY_DRILL_SPIN) {
        cy_warn(NULL, "drill: spinning the event loop forever (cyan shard spin)");
        for (volatile int spin = 1; spin;) {
        }
    }
    if (kind == CY_DRILL_STALL) cy_shard_stall(sh->shard);
    if (kind == CY_DRILL_DROP) cy_shard_drop(sh->shard);
}

/* Apply one reload message (NUL-terminated "name=value" lines): all or
 * nothing, and only settings that may change at runtime. */
static void reload(shard *sh, char *msg)
{
    cy_config next = sh->live;
    cy_config_error err;
    int rc = 0;
    for (char *line = msg, *nl; !rc && line && *line; line = nl) {
        nl = strchr(line, '\n');
        if (nl) *nl++ = '\0';
        char *eq = strchr(line, '=');
        if (!eq) {
            rc = CY_ECONFIG;
            snprintf(err.msg, sizeof(err.msg), "malformed line '%.100s'", line);
            break;
        }
        *eq = '\0';
        size_t i = 0;
        while (i < cy_config_count() && strcmp(cy_config_name(i), line))
            i++;
        if (i == cy_config_count() || !cy_config_reloadable(i)) {
            rc = CY_ECONFIG;
            snprintf(err.msg, sizeof(err.msg), "%.60s cannot change at runtime", line);
            break;
        }
        rc = cy_config_set(&next, line, eq + 1, &err);
    }
    cy_log_level lvl;
    if (!rc && cy_log_parse_level(next.log_level, &lvl)) {
        rc = CY_ECONFIG;
        snprintf(err.msg, sizeof(err.msg), "bad log_level '%s'", next.log_level);
    }
    if (rc) {
        cy_error(NULL, "shard %u: reload refused, nothing changed: %s", sh->index, err.msg);
        return;
    }
    char what[900] = "";
    size_t n = 0;
    for (size_t i = 0; i < cy_config_count(); i++) {
        char a[160], b[160];
        cy_config_value(&sh->live, i, a, sizeof(a));
        cy_config_value(&next, i, b, sizeof(b));
        if (strcmp(a, b) && n < sizeof(what))
            n += (size_t)snprintf(what + n, sizeof(what) - n, "%s%s %s -> %s", n ? ", " : "",
                                  cy_config_name(i), a, b);
    }
    /* The line shows under the old level or the new one, whichever says more. */
    cy_log_level old = lvl;
    cy_log_parse_level(sh->live.log_level, &old);
    sh->live = next;
    cy_log_set_level(old < lvl ? old : lvl);
    if (n)
        cy_info(NULL, "shard %u: reload applied: %s", sh->index, what);
    else
        cy_info(NULL, "shard %u: reload: no setting changed", sh->index);
    cy_log_set_level(lvl);
    /* A file a setting names is read again at every reload, changed or not. */
    cy_shard_reload(sh->shard);
}

static void on_alloc_in(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    shard *sh = h->data;
    (void)size;
    if (sh->inlen + 1 >= sizeof(sh->in)) sh->inlen = 0; /* never ended: see on_supervisor */
    *buf = uv_buf_init(sh->in + sh->inlen, (unsigned)(sizeof(sh->in) - 1 - sh->inlen));
}

static void on_supervisor(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    shard *sh = s->data;
    (void)buf;
    if (nread < 0) {
        stop(sh, "supervisor gone");
        return;
    }
    sh->inlen += (size_t)nread;
    sh->in[sh->inlen] = '\0';
    /* Messages end with an empty line. */
    char *end;
    while ((end = strstr(sh->in, "\n\n"))) {
        end[1] = '\0';
        reload(sh, sh->in);
        size_t used = (size_t)(end + 2 - sh->in);
        memmove(sh->in, end + 2, sh->inlen - used + 1);
        sh->inlen -= used;
    }
    if (sh->inlen + 1 >= sizeof(sh->in)) {
        cy_error(NULL, "shard %u: a reload message over %d bytes: dropped", sh->index, RELOAD_MAX);
        sh->inlen = 0;
    }
}

static void on_beat(uv_timer_t *t)
{
    shard *sh = t->data;
    cy_shard_beat(sh->shard);
}

int cy_shard_run(const cy_config *cfg, unsigned index, uint64_t generation)
{
    shard sh;
    memset(&sh, 0, sizeof(sh));
    cy_scoreboard sb;
    memset(&sb, 0, sizeof(sb));
    cy_registry *reg = NULL;
    cy_store *store = NULL;
    cy_limit *limit = NULL;
    int status = 1, rc;
    char tag[24];
    snprintf(tag, sizeof(tag), "shard=%u", index);
    cy_log_set_tag(tag);
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* see the file comment */
    signal(SIGPIPE, SIG_IGN);
    /* Until the loop handles them: by default each of these would end the
     * process (see the file comment). */
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    drill_signal(false);
    sh.live = *cfg;
    sh.index = index;
    cfg = &sh.live;
    char path[600];
    snprintf(path, sizeof(path), "%s/run/scoreboard", cfg->data_dir);
    if (cy_scoreboard_open(path, &sb)) {
        cy_error(NULL, "shard %u: cannot open the scoreboard %s (is the supervisor running?)",
                 index, path);
        return 1;
    }
    /* The death signal is armed only from the prctl on, so a supervisor
     * that died before it would go unnoticed. Our parent is then some
     * reaper, not the pid the supervisor wrote here before spawning us. */
    pid_t parent = getppid();
    if ((int64_t)parent != cy_sb_load(&sb.hdr->supervisor_pid)) {
        cy_error(NULL, "shard %u: my supervisor (pid %lld) is gone; exiting", index,
                 (long long)cy_sb_load(&sb.hdr->supervisor_pid));
        cy_scoreboard_close(&sb);
        return 1;
    }
    if (index >= sb.hdr->nshards) {
        cy_error(NULL, "shard %u: the scoreboard has only %llu shards", index,
                 (unsigned long long)sb.hdr->nshards);
        goto out;
    }
    sh.slot = &sb.slots[index];
    cy_sb_store(&sh.slot->ready, 0);
    cy_sb_store(&sh.slot->accepting, 0);
    cy_sb_store(&sh.slot->pid, getpid());
    cy_sb_store(&sh.slot->generation, (int64_t)generation);
    cy_sb_store(&sh.slot->heartbeat_ms, cy_mono_ms());
    cy_sb_store(&sh.slot->state, CY_SHARD_STARTING);

    snprintf(path, sizeof(path), "%s/registry.db", cfg->data_dir);
    if (cy_registry_open(path, &reg)) goto out;
    snprintf(path, sizeof(path), "%s/shard-%u.db", cfg->data_dir, index);
    if (cy_store_open(path, !strcmp(cfg->store_sync, "full"), &store)) goto out;
    /* The node's limits against abuse; alone, this shard's own if the node's
     * table cannot be mapped (the limits then count per shard). */
    snprintf(path, sizeof(path), "%s/run/limits", cfg->data_dir);
    if ((rc = cy_limit_open(path, cfg, &limit))) {
        cy_warn(NULL, "shard %u: cannot map the node's limits table %s (%s): counting failed "
                      "logins and connection rates for this shard alone",
                index, path, cy_strerror(rc));
        if ((rc = cy_limit_new(cfg, &limit))) goto out;
    }
    uv_loop_init(&sh.loop);
    cy_shard_place where = {index, (unsigned)sb.hdr->nshards, generation, &sb, limit};
    rc = cy_shard_new(&sh.loop, cfg, store, reg, &where, &sh.shard);
    if (rc) {
        cy_error(NULL, "shard %u: cannot load its state: %s", index, cy_strerror(rc));
        goto out_loop;
    }
    /* Fd 9 exists when the supervisor started with a certificate; a
     * tls_cert that a reload added has none (asked of the descriptor). */
    int accepting = 0;
    socklen_t alen = sizeof(accepting);
    bool mqtts = cfg->tls_cert[0] && cfg->mqtts_listen[0] &&
                 getsockopt(MQTTS_FD, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &alen) == 0 &&
                 accepting;
    cy_shard_fds fds = {LISTEN_FD, cfg->http_listen[0] ? HTTP_FD : -1,
                        cfg->coap_listen[0] ? COAP_FD : -1, cfg->coaps_listen[0] ? COAPS_FD : -1,
                        mqtts ? MQTTS_FD : -1};
    if (cy_shard_start(sh.shard, &fds)) {
        cy_error(NULL, "shard %u: cannot start serving", index);
        cy_shard_stop(sh.shard);
        uv_run(&sh.loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    close(LISTEN_FD); /* the shard holds its own duplicates */
    if (cfg->http_listen[0]) close(HTTP_FD);
    if (cfg->coap_listen[0]) close(COAP_FD);
    if (cfg->coaps_listen[0]) close(COAPS_FD);
    if (mqtts) close(MQTTS_FD);
    uv_signal_init(&sh.loop, &sh.sigterm);
    uv_signal_init(&sh.loop, &sh.sigint);
    uv_signal_init(&sh.loop, &sh.sigusr1);
    uv_signal_init(&sh.loop, &sh.sigusr2);
    uv_signal_init(&sh.loop, &sh.sighup);
    sh.sigterm.data = sh.sigint.data = sh.sigusr1.data = sh.sigusr2.data = sh.sighup.data = &sh;
    uv_signal_start(&sh.sigterm, on_signal, SIGTERM);
    uv_signal_start(&sh.sigint, on_signal, SIGINT);
    uv_signal_start(&sh.sigusr1, on_signal, SIGUSR1);
    uv_signal_start(&sh.sigusr2, on_signal, SIGUSR2);
    uv_signal_start(&sh.sighup, on_signal, SIGHUP);
    uv_async_init(&sh.loop, &sh.drill, on_drill);
    sh.drill.data = &sh;
    drill_generation = (int64_t)generation;
    drill_async = &sh.drill;
    drill_signal(true);
    uv_pipe_init(&sh.loop, &sh.supervisor, 0);
    sh.supervisor.data = &sh;
    if (uv_pipe_open(&sh.supervisor, SUPERVISOR_FD) == 0)
        uv_read_start((uv_stream_t *)&sh.supervisor, on_alloc_in, on_supervisor);
    else
        cy_warn(NULL, "shard %u: no supervisor pipe on fd 4; it will not notice its death", index);
    uv_timer_init(&sh.loop, &sh.beat);
    sh.beat.data = &sh;
    uv_timer_start(&sh.beat, on_beat, BEAT_MS, BEAT_MS);
    cy_sb_store(&sh.slot->started_ms, cy_mono_ms());
    cy_shard_beat(sh.shard);
    cy_sb_store(&sh.slot->state, CY_SHARD_RUNNING);
    uv_run(&sh.loop, UV_RUN_DEFAULT);
    status = 0;
out_loop:
    cy_shard_free(sh.shard);
    uv_run(&sh.loop, UV_RUN_NOWAIT);
    if (uv_loop_close(&sh.loop)) cy_warn(NULL, "shard %u: loop closed with handles open", index);
out:
    cy_limit_free(limit);
    cy_store_close(store);
    cy_registry_close(reg);
    if (sh.slot) cy_sb_store(&sh.slot->state, CY_SHARD_DOWN);
    cy_scoreboard_close(&sb);
    if (status == 0) cy_info(NULL, "shard %u stopped", index);
    return status;
}
