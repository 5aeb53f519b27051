/* scoreboard: what every shard says about itself, in shared memory.
 *
 * One file, data_dir/run/scoreboard, mapped MAP_SHARED by the supervisor,
 * by every shard, by the monitor process and by `cyan status`. It holds a
 * header, one slot per shard and one more slot, after the shards', for the
 * monitor (cy_scoreboard_monitor): spawned, watched and restarted like a
 * shard, judged by its heartbeat only. A slot is written only by its
 * process (single writer), read by
 * anyone; fields are naturally aligned 64-bit words written with relaxed
 * atomic stores, so a reader sees each field whole (never torn) though not
 * necessarily all fields of one instant. The supervisor writes only the
 * header and, per slot, the supervisor-owned fields marked below (restart
 * bookkeeping of a shard that is down cannot be written by the shard).
 *
 * Liveness is progress, not a pid: a shard advances `heartbeat_ms` from its
 * loop (every pass and at least every 100 ms) and `progress` for every unit
 * of work it completes; peers record in their own slots how many bus frames
 * they sent to it and how many it has acknowledged. The supervisor judges:
 *   - heartbeat older than watchdog_timeout: hung (stopped, spinning,
 *     deadlocked: its loop is not running);
 *   - loop running but work queued for it (frames peers sent that it has not
 *     acknowledged, or its own `queued`) and `progress` unchanged for
 *     watchdog_timeout: stuck.
 *
 * The header's monitor section is written only by the monitor: per shard,
 * when its canary last walked the whole path; the supervisor reads it to
 * replace a shard whose canary keeps failing (watchdog.h). The header's
 * event ring is written only by the supervisor (its start, spawns, restarts
 * with their reasons), for the monitor's timeline.
 *
 * Clock: heartbeat and change times are CLOCK_MONOTONIC milliseconds, which
 * is one clock for all processes of a machine; *_wall_ms fields are
 * CLOCK_REALTIME milliseconds.
 *
 * Errors: CY_EIO (file or mmap failed, errno logged), CY_EINVAL (a file of
 * another layout or version), CY_ENOENT (open: no such file). Thread: any;
 * slots are lock-free.
 */
#ifndef CY_SCOREBOARD_H
#define CY_SCOREBOARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CY_SB_MAX_SHARDS 64
#define CY_SB_MAGIC 0x6379616e53423031ull /* "cyanSB01" */
#define CY_SB_VERSION 2

enum {
    CY_SHARD_DOWN = 0,     /* not running (not yet started, exited, killed) */
    CY_SHARD_STARTING = 1, /* spawned, loading its state */
    CY_SHARD_RUNNING = 2,  /* serving */
    CY_SHARD_STOPPING = 3, /* shutting down on request */
};

/* Restart reasons, counted per shard by the supervisor. */
enum {
    CY_RESTART_EXIT = 0,    /* exited with a status */
    CY_RESTART_SIGNAL = 1,  /* killed by a signal it did not get from us */
    CY_RESTART_HUNG = 2,    /* no heartbeat for watchdog_timeout */
    CY_RESTART_STUCK = 3,   /* work queued, no progress for watchdog_timeout */
    CY_RESTART_CANARY = 4,  /* its canary failed for canary_timeout */
    CY_RESTART_NREASONS = 5
};

/* Words for the metrics a shard publishes about itself: `counters[i]` is
 * metric i of the registry (health/metrics.h, CY_METRICS order); words past
 * CY_METRICS_N are spare, so a metric can be added without a new layout. */
#define CY_SB_COUNTERS 64

/* Latency histograms a shard publishes (health/metrics.h names them):
 * CY_SB_HISTS of them, each CY_SB_HIST_WORDS words: per-bucket counts
 * (not cumulative) for the bucket bounds of metrics.h, then the sum of
 * the observations in microseconds. */
#define CY_SB_HISTS 4
#define CY_SB_HIST_WORDS 18

typedef struct cy_sb_slot {
    /* written by the shard */
    int64_t pid;
    int64_t state;          /* CY_SHARD_* */
    int64_t generation;     /* spawn number, given by the supervisor on the command line */
    int64_t started_ms;     /* monotonic ms when it began serving */
    int64_t heartbeat_ms;   /* monotonic ms of its last loop pass */
    uint64_t loops;         /* loop passes */
    uint64_t progress;      /* units of work completed (packets handled, frames applied) */
    uint64_t queued;        /* work it knows it has not done yet */
    uint64_t connections;   /* client connections open */
    int64_t ready;          /* 1: links to every peer up and every peer's interest received */
    int64_t accepting;      /* 1: taking client connections (and handovers) */
    uint64_t bus_sent[CY_SB_MAX_SHARDS];  /* frames sent to shard j (this generation of j) */
    uint64_t bus_acked[CY_SB_MAX_SHARDS]; /* of those, acknowledged by j */
    uint64_t counters[CY_SB_COUNTERS];
    int64_t changed_ms[CY_SB_COUNTERS]; /* monotonic ms when counters[i] last changed, 0 never */
    int64_t progress_ms;                /* monotonic ms when progress last moved, 0 never */
    uint64_t hists[CY_SB_HISTS][CY_SB_HIST_WORDS];
    int64_t hist_changed_ms[CY_SB_HISTS]; /* monotonic ms of the last observation, 0 never */
    /* written by the supervisor */
    int64_t sv_pid;          /* pid it spawned (0 when down) */
    int64_t sv_restarts[CY_RESTART_NREASONS];
    int64_t sv_last_restart_ms; /* monotonic */
    int64_t sv_backoff_ms;      /* delay before the next spawn */
    char sv_last_reason[128];   /* "no progress for 2.1 s with 530 queued" */
} cy_sb_slot;

/* One entry of the supervisor's event ring (the timeline's raw input). */
enum {
    CY_SB_EVENT_START = 1,   /* the supervisor started (a deploy): text has version and commit */
    CY_SB_EVENT_SPAWN = 2,   /* a shard (or the monitor) was spawned: pid, generation */
    CY_SB_EVENT_RESTART = 3, /* one ended and will be replaced: reason, text */
    CY_SB_EVENT_STOP = 4,    /* the supervisor is stopping */
};
#define CY_SB_EVENTS 64 /* ring size: the monitor reads it every second */

typedef struct cy_sb_event {
    uint64_t seq;    /* 1, 2, ... per supervisor run; 0 = empty */
    int64_t wall_ms;
    int64_t kind;    /* CY_SB_EVENT_* */
    int64_t shard;   /* slot index (nshards = the monitor), -1 for the node */
    int64_t pid;
    int64_t generation;
    int64_t reason;  /* CY_RESTART_* for RESTART, else -1 */
    char text[136];
} cy_sb_event;

typedef struct cy_sb_header {
    uint64_t magic;
    uint64_t version;      /* CY_SB_VERSION */
    uint64_t nshards;
    int64_t supervisor_pid;
    int64_t supervisor_heartbeat_ms;
    int64_t watchdog_timeout_ms;
    int64_t started_wall_ms; /* the supervisor's start */
    char version_text[32];   /* "0.1.0" */
    char commit[48];         /* git commit the binary was built from, or "unknown" */
    /* written by the monitor */
    int64_t canary_timeout_ms;                /* 0: canaries off, no verdicts */
    int64_t canary_ok_ms[CY_SB_MAX_SHARDS];   /* monotonic ms of the last full success, 0 none */
    uint64_t alerts_seq;      /* odd while the monitor rewrites alerts_text (a seqlock) */
    int64_t alerts_ms;        /* monotonic ms of the last rewrite */
    char alerts_text[2048];   /* active alerts, one line each, for `cyan status` */
    /* written by the supervisor */
    uint64_t event_seq; /* the last event written; entry seq % CY_SB_EVENTS */
    cy_sb_event events[CY_SB_EVENTS];
} cy_sb_header;

typedef struct cy_scoreboard {
    cy_sb_header *hdr;
    cy_sb_slot *slots; /* nshards of them, then the monitor's */
    size_t map_len;
} cy_scoreboard;

/* Create (truncate) the file for nshards (1..CY_SB_MAX_SHARDS) plus the
 * monitor's slot, and map it. Used by the supervisor. */
int cy_scoreboard_create(const char *path, unsigned nshards, cy_scoreboard *sb);
/* Map an existing file (shards, `cyan status`). */
int cy_scoreboard_open(const char *path, cy_scoreboard *sb);
/* Unmap. The file stays. Safe on a zeroed scoreboard. */
void cy_scoreboard_close(cy_scoreboard *sb);

/* Relaxed atomic field access, so readers never see a torn word. */
static inline void cy_sb_store(volatile int64_t *field, int64_t v)
{
    __atomic_store_n(field, v, __ATOMIC_RELAXED);
}
static inline int64_t cy_sb_load(const volatile int64_t *field)
{
    return __atomic_load_n(field, __ATOMIC_RELAXED);
}
static inline void cy_sb_storeu(volatile uint64_t *field, uint64_t v)
{
    __atomic_store_n(field, v, __ATOMIC_RELAXED);
}
static inline uint64_t cy_sb_loadu(const volatile uint64_t *field)
{
    return __atomic_load_n(field, __ATOMIC_RELAXED);
}

/* The monitor's slot. */
static inline cy_sb_slot *cy_scoreboard_monitor(const cy_scoreboard *sb)
{
    return &sb->slots[sb->hdr->nshards];
}

/* Append an event to the ring (the supervisor only): fields first, then
 * the sequence number with a release store, so a reader that sees seq sees
 * the rest. text may be NULL. */
void cy_scoreboard_event(cy_scoreboard *sb, int64_t wall_ms, int kind, int shard, int64_t pid,
                         int64_t generation, int reason, const char *text);
/* Copy the event with sequence number seq into *out if the ring still
 * holds it; false if it was overwritten (the reader fell behind) or not
 * yet written. A copy torn by a concurrent overwrite is detected by
 * reading seq again after the copy. */
bool cy_scoreboard_event_get(const cy_scoreboard *sb, uint64_t seq, cy_sb_event *out);

/* The monitor's list of active alerts (the monitor only): a seqlock
 * write, so cy_scoreboard_alerts_get never returns a torn text. */
void cy_scoreboard_alerts_set(cy_scoreboard *sb, const char *text, int64_t now_ms);
/* Copy the list into out (NUL-terminated) and its time into *when_ms;
 * false if the monitor was writing it on every try (3). */
bool cy_scoreboard_alerts_get(const cy_scoreboard *sb, char *out, size_t len, int64_t *when_ms);

/* Work queued for shard i as its peers see it: the sum over live peers j of
 * slot[j].bus_sent[i] - slot[j].bus_acked[i], plus slot[i].queued. */
uint64_t cy_scoreboard_backlog(const cy_scoreboard *sb, unsigned i);

#endif
