/* wh_int: the webhook engine's state, shared by webhooks.c (the log's
 * subscriber, windows, sending, settling) and defs.c (definitions, the
 * state loaded at start, dead-letter replays). webhooks.c's file comment
 * explains the entries' states and the counters.
 *
 * Ownership: cy_webhooks owns its hooks; a hook owns its definition's
 * strings (cy_webhook_fini), its compiled templates and its entries; an
 * entry holds its own copy of the event. Thread: the shard's loop.
 */
#ifndef CY_WEBHOOKS_WH_INT_H
#define CY_WEBHOOKS_WH_INT_H

#include "core/cy_buf.h"
#include "core/cy_map.h"
#include "http/client.h"
#include "webhooks/policy.h"
#include "webhooks/render.h"
#include "webhooks/webhooks.h"

#define WH_TICK_MS 100          /* retries coming due, figures */
#define WH_DEFS_CHECK_MS 500    /* how often the definitions' generation is read */
#define WH_PERSIST_MS 100       /* a webhook's state is written at most this often */
#define WH_TRIM_MS 250          /* how often the log is trimmed */
#define WH_TRIM_ROWS 5000       /* events deleted per trim at least (more at high rates) */
#define WH_TRAIL 8              /* attempts remembered per event */
#define WH_RESPONSE_KEEP 4096   /* bytes of an answer kept (hook-response) */
#define CY_WH_MAX_HEADERS 32    /* user headers sent per request */

enum { WH_WAIT, WH_FLIGHT, WH_OK, WH_DEAD, WH_PARKED };

typedef struct wh_attempt {
    int64_t at;   /* wall ms */
    long status;  /* HTTP status; 0 = no answer */
    char error[96];
} wh_attempt;

typedef struct wh_hook wh_hook;

/* One matched event of one webhook (in the window or the retries). */
typedef struct wh_entry {
    struct wh_entry *next;
    wh_hook *h;
    uint64_t seq;
    int64_t at;       /* the event's log time, wall ms */
    char *topic;      /* NUL-terminated, in the same allocation */
    size_t topic_len;
    uint8_t *payload;
    size_t payload_len;
    uint8_t state;    /* WH_* */
    bool in_retries;  /* settled: on h->retries, not in the window */
    bool durable;     /* a hook_retry row holds it */
    bool render_failed;
    unsigned attempts;
    int64_t next_at;  /* wall ms; 0 = now */
    int64_t sent_at;
    cy_hc_xfer *xfer; /* while in flight */
    wh_attempt trail[WH_TRAIL];
    unsigned n_trail;
} wh_entry;

struct wh_hook {
    wh_hook *next;
    struct cy_webhooks *w;
    cy_webhook def;          /* owned strings */
    cy_wh_template *tmpl;
    char **header_names, **header_values;
    unsigned n_headers;
    bool own_content_type;   /* the webhook's headers set Content-Type */
    bool broken;             /* its templates do not compile: paused */
    bool removed;            /* deleted: freed once nothing is in flight */
    bool dirty;              /* state to write (at most every WH_PERSIST_MS) */
    bool persist_now;        /* ... in this batch: settled rows changed */
    int64_t next_persist;    /* mono ms */
    uint64_t seen_mark;      /* the definitions listing that last had it */
    uint64_t cursor, scan;   /* see webhooks.h */
    uint64_t matched_c, delivered_c, dead_c; /* settled */
    wh_entry *win_head, *win_tail;
    unsigned n_window, n_wait, n_flight, n_ok, n_dead, n_park;
    wh_entry *retries;       /* settled retries, unordered */
    unsigned n_retry, n_retry_flight;
    unsigned inflight;       /* requests in flight (window and retries) */
    cy_wh_circuit circuit;
    uint64_t attempts_total;
    uint64_t behind;         /* events in the log not yet read by scan */
    int64_t behind_at;       /* the first of those's time (0: none) */
    int64_t behind_next;     /* mono ms of the next count of `behind` */
    int64_t last_ok_at, last_err_at; /* wall ms */
    long last_status;
    char last_error[128];
};

/* A row of the run before a restart, waiting for the scan to reach it. */
enum { WH_ADOPT_RETRY, WH_ADOPT_DEAD };
typedef struct wh_adopt {
    int kind;
    unsigned attempts;
    int64_t next_at;
    char *trail; /* owned, or NULL */
} wh_adopt;

typedef struct wh_counts {
    uint64_t matched, delivered, queued, in_flight, dead;
} wh_counts;

struct cy_webhooks {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_store *store;
    cy_registry *registry;
    cy_router *router;
    cy_counters *stats;
    struct cy_space *space; /* NULL: never full */
    unsigned self, nshards;
    cy_sub_kind kind;
    cy_subscriber sub;
    cy_hc *hc;
    uv_timer_t tick;
    bool tick_init, started, stopping;
    bool log_moved;  /* an event was logged since the last pass */
    bool due;        /* something became due (a retry, a replay) */
    bool defs_dirty; /* read the definitions at the next tick */
    bool progress;
    unsigned window_max;
    uint64_t defs_gen, defs_mark;
    bool defs_loaded;
    int64_t next_defs_check, next_trim; /* mono ms */
    uint64_t trim_logged;    /* events_logged at the last trim */
    wh_hook *hooks;
    cy_map adopt; /* "<hook id>/<seq>" -> wh_adopt */
    cy_buf body, url, hdr, sig; /* scratch for sending */
};

/* webhooks.c */
bool cy_wh_hook_matches(const cy_webhook *d, const char *topic, size_t topic_len);
void cy_wh_hook_counts(const wh_hook *h, wh_counts *c);
int cy_wh_hook_compile(wh_hook *h);
void cy_wh_hook_compiled_free(wh_hook *h);
int cy_wh_def_copy(cy_webhook *dst, const cy_webhook *src);
void cy_wh_hook_persist(cy_webhooks *w, wh_hook *h);
void cy_wh_hook_send_due(cy_webhooks *w, wh_hook *h);
wh_entry *cy_wh_entry_new(wh_hook *h, const cy_store_hook_row *r);
void cy_wh_entry_free(wh_entry *e);
wh_hook *cy_wh_hook_find(cy_webhooks *w, const char *id);

/* defs.c */
/* Load saved states, retry rows and dead letters past the cursors (the
 * adoption map) from the store. */
int cy_wh_state_load(cy_webhooks *w);
/* Reload the definitions if their generation moved; take replay requests. */
void cy_wh_defs_check(cy_webhooks *w);
wh_adopt *cy_wh_adopt_take(cy_webhooks *w, const char *hook, uint64_t seq);
void cy_wh_adopt_free(wh_adopt *a);
void cy_wh_adopt_clear(cy_webhooks *w);
/* A removed hook's last request ended: free it. */
void cy_wh_hook_release(cy_webhooks *w, wh_hook *h);
/* Free a hook and its entries (nothing in flight). */
void cy_wh_hook_destroy(wh_hook *h);

#endif
