/* shard: the process that runs one broker, as spawned by the supervisor.
 *
 * It inherits the listening MQTT socket as fd 3, one end of a socketpair
 * to the supervisor as fd 4, the listening HTTP socket as fd 5 and the data
 * folder's lock as fd 6, which it keeps open and never touches: while any
 * process of a run lives, the lock stays held (see health/supervisor.h). It
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
 * independent way to notice. Two drills, for people
 * practising an outage: SIGUSR2 makes the loop spin forever (heartbeat
 * stops: the supervisor finds it "hung"); SIGUSR1 stalls it (input ignored,
 * heartbeat kept: found "stuck" once peers have queued work for it).
 */
#include "broker/broker.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "health/scoreboard.h"
#include "store/store.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <uv.h>

#define LISTEN_FD 3
#define SUPERVISOR_FD 4
#define HTTP_FD 5
#define BEAT_MS 100

typedef struct shard {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sigusr1, sigusr2;
    uv_pipe_t supervisor;
    uv_timer_t beat;
    cy_broker *broker;
    cy_sb_slot *slot;
    bool stopping;
} shard;

static void stop(shard *sh, const char *why)
{
    if (sh->stopping) return;
    sh->stopping = true;
    cy_info(NULL, "%s, shutting down", why);
    if (sh->slot) cy_sb_store(&sh->slot->state, CY_SHARD_STOPPING);
    cy_broker_stop(sh->broker);
    uv_close((uv_handle_t *)&sh->sigterm, NULL);
    uv_close((uv_handle_t *)&sh->sigint, NULL);
    uv_close((uv_handle_t *)&sh->sigusr1, NULL);
    uv_close((uv_handle_t *)&sh->sigusr2, NULL);
    uv_close((uv_handle_t *)&sh->supervisor, NULL);
    uv_close((uv_handle_t *)&sh->beat, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    shard *sh = h->data;
    if (signum == SIGUSR2) {
        cy_warn(NULL, "drill: spinning the event loop forever (SIGUSR2)");
        for (volatile int spin = 1; spin;) {
        }
    }
    if (signum == SIGUSR1) {
        cy_broker_stall(sh->broker);
        return;
    }
    stop(sh, signum == SIGTERM ? "received SIGTERM" : "received SIGINT");
}

static void on_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    static char scratch[64];
    (void)h;
    (void)size;
    *buf = uv_buf_init(scratch, sizeof(scratch));
}

static void on_supervisor(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    if (nread < 0) stop(s->data, "supervisor gone");
}

static void on_beat(uv_timer_t *t)
{
    shard *sh = t->data;
    cy_broker_beat(sh->broker);
}

int cy_shard_run(const cy_config *cfg, unsigned index, uint64_t generation)
{
    shard sh;
    memset(&sh, 0, sizeof(sh));
    cy_scoreboard sb;
    memset(&sb, 0, sizeof(sb));
    cy_registry *reg = NULL;
    cy_store *store = NULL;
    int status = 1;
    char tag[24];
    snprintf(tag, sizeof(tag), "shard=%u", index);
    cy_log_set_tag(tag);
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* see the file comment */
    signal(SIGPIPE, SIG_IGN);
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
    uv_loop_init(&sh.loop);
    cy_broker_shard where = {index, (unsigned)sb.hdr->nshards, generation, &sb};
    int rc = cy_broker_new(&sh.loop, cfg, store, reg, &where, &sh.broker);
    if (rc) {
        cy_error(NULL, "shard %u: cannot load its state: %s", index, cy_strerror(rc));
        goto out_loop;
    }
    if (cy_broker_start(sh.broker, LISTEN_FD)) {
        cy_broker_stop(sh.broker);
        uv_run(&sh.loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    close(LISTEN_FD); /* the broker holds its own duplicate */
    if (cfg->http_listen[0]) {
        rc = cy_api_start(sh.broker, HTTP_FD);
        if (rc) {
            cy_error(NULL, "shard %u: cannot serve the HTTP API: %s", index, cy_strerror(rc));
            cy_broker_stop(sh.broker);
            uv_run(&sh.loop, UV_RUN_DEFAULT);
            goto out_loop;
        }
        close(HTTP_FD);
    }
    uv_signal_init(&sh.loop, &sh.sigterm);
    uv_signal_init(&sh.loop, &sh.sigint);
    uv_signal_init(&sh.loop, &sh.sigusr1);
    uv_signal_init(&sh.loop, &sh.sigusr2);
    sh.sigterm.data = sh.sigint.data = sh.sigusr1.data = sh.sigusr2.data = &sh;
    uv_signal_start(&sh.sigterm, on_signal, SIGTERM);
    uv_signal_start(&sh.sigint, on_signal, SIGINT);
    uv_signal_start(&sh.sigusr1, on_signal, SIGUSR1);
    uv_signal_start(&sh.sigusr2, on_signal, SIGUSR2);
    uv_pipe_init(&sh.loop, &sh.supervisor, 0);
    sh.supervisor.data = &sh;
    if (uv_pipe_open(&sh.supervisor, SUPERVISOR_FD) == 0)
        uv_read_start((uv_stream_t *)&sh.supervisor, on_alloc, on_supervisor);
    else
        cy_warn(NULL, "shard %u: no supervisor pipe on fd 4; it will not notice its death", index);
    uv_timer_init(&sh.loop, &sh.beat);
    sh.beat.data = &sh;
    uv_timer_start(&sh.beat, on_beat, BEAT_MS, BEAT_MS);
    cy_sb_store(&sh.slot->started_ms, cy_mono_ms());
    cy_broker_beat(sh.broker);
    cy_sb_store(&sh.slot->state, CY_SHARD_RUNNING);
    uv_run(&sh.loop, UV_RUN_DEFAULT);
    status = 0;
out_loop:
    cy_broker_free(sh.broker);
    uv_run(&sh.loop, UV_RUN_NOWAIT);
    if (uv_loop_close(&sh.loop)) cy_warn(NULL, "shard %u: loop closed with handles open", index);
out:
    cy_store_close(store);
    cy_registry_close(reg);
    if (sh.slot) cy_sb_store(&sh.slot->state, CY_SHARD_DOWN);
    cy_scoreboard_close(&sb);
    if (status == 0) cy_info(NULL, "shard %u stopped", index);
    return status;
}
