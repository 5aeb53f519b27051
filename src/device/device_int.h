/* device_int: the device layer's state, shared by its files only
 * (device.c: lifecycle, convention; presence.c: presence and status
 * events; session.c: sessions; session_map.c: the sessions by client id;
 * calls.c: calls and reads on the owner shard).
 * Thread: the shard's loop thread.
 */
#ifndef CY_DEVICE_INT_H
#define CY_DEVICE_INT_H

#include "core/cy_log.h"
#include "device/device.h"
#include "device/session.h"

/* What a device's last status event said (announced: queued or logged). */
enum { PR_NONE = 0, PR_OFFLINE, PR_ONLINE };

/* The sessions by client id (session_map.c): an intrusive chained hash
 * table. A session is its own entry (its hnext is the chain, its client id
 * the key), so the table allocates only its slots. It neither owns nor
 * frees the sessions. */
typedef struct cy_session_map {
    cy_session **slots; /* chains through cy_session.hnext */
    size_t nslots;      /* power of two, or 0 */
    size_t count;
} cy_session_map;

/* The owner's record of one device: since this shard started, or read
 * back from its row (presence.c). */
typedef struct dev_presence {
    cy_link *link;           /* its link, or NULL while offline */
    int64_t connected_since; /* wall ms of the current connection, 0 offline */
    int64_t last_heard;      /* wall ms of its last packet, kept when it goes offline */
    int64_t last_rtt;        /* wall ms of its last answered call or read; 0 = none */
    int64_t changed_at;      /* wall ms of its latest online/offline change */
    int64_t saved_heard;     /* last_heard as its row has it (0: no row) */
    int64_t saved_rtt;       /* last_rtt as its row has it */
    int64_t saved_mono;      /* its link's last heard (mono ms) when its row was written; 0 none:
                              * compared, not the wall time, which moves with the clocks' jitter */
    /* status events */
    int64_t tat;        /* mono ms: the per-device limit's (cy_presence_allow) */
    int64_t held_until; /* mono ms when held changes are looked at again */
    struct dev_presence *held_prev, *held_next; /* the held list (d->held) */
    uint32_t unannounced; /* changes since its last status event that none announced */
    uint8_t announced;    /* PR_*: what its last status event (queued or logged) says */
    uint8_t reason;       /* cy_presence_reason of its latest change */
    bool logged_online;   /* its last *logged* status event said online (its row's) */
    bool held;            /* in the held list */
    bool internal;        /* a canary: no status events, no row */
    bool kicked;          /* being deleted: its offline is reason "deleted" */
    char protocol[12];    /* of its current or last link */
    char id[CY_DEVICE_ID_LEN + 1];
} dev_presence;

/* A status event waiting for the rate (presence.c): self-contained, so
 * its device may be deleted meanwhile. */
typedef struct dev_status {
    struct dev_status *next;
    int64_t at;         /* wall ms of the change */
    int64_t last_heard; /* wall ms */
    uint32_t coalesced; /* changes it stands for beyond itself */
    bool online;
    uint8_t reason; /* cy_presence_reason */
    char protocol[12];
    char id[CY_DEVICE_ID_LEN + 1];
} dev_status;

/* A call or read the owner sent to a device and waits for. */
typedef struct dev_call {
    struct dev_call *prev, *next;
    char rid[17];     /* request id as sent to the device (16 hex) */
    uint8_t op;       /* CY_DEVICE_OP_CALL or CY_DEVICE_OP_GET */
    unsigned from;    /* requester shard */
    uint32_t req_id;  /* requester's request id */
    int64_t sent_us;  /* mono us when sent */
    int64_t deadline; /* mono ms */
    char device[CY_DEVICE_ID_LEN + 1];
    char name[CY_DEVICE_NAME_MAX + 1];
} dev_call;

struct cy_devices {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_store *store;
    cy_router *router;
    cy_cluster *cluster;
    cy_counters *stats;
    cy_hists *hists; /* NULL: none */
    unsigned self, nshards;
    uint64_t generation;
    cy_session_map sessions; /* client id -> cy_session */
    cy_session *offline;     /* sessions offline and persistent, or with a pending will */
    cy_sub_kind session_kind;
    cy_map presence; /* device id -> dev_presence */
    /* status events (presence.c) */
    dev_status *st_head, *st_tail; /* waiting for the rate, in order */
    size_t st_n;
    int64_t st_tokens;   /* the shard's bucket: events it may log now, in thousandths */
    int64_t st_refill;   /* mono ms of its last refill */
    dev_presence *held;  /* devices whose changes wait for their own limit */
    int64_t started;     /* mono ms of cy_devices_new */
    bool st_open;        /* the peers' links were up (or the wait ran out): events may go */
    bool st_quiet;       /* changes came while presence_event_rate was 0 (a reload): what
                          * devices last announced may be stale; looked at once it is not */
    int64_t flush_at;    /* mono ms of the next write of moved presence rows */
    dev_call *calls;     /* in a list for the deadlines */
    cy_map calls_by_rid; /* rid (16 bytes) -> dev_call, for replies */
    uint64_t next_rid;
    uint64_t progress;          /* answers given, requests ended, queued deliveries sent */
    uint64_t online_queued;     /* queued deliveries (n_queued) of sessions with a link: only
                                 * these can be deliverable now (session.c keeps it) */
    cy_device_answer_fn answer; /* where the owner's answers go */
    void *answer_ctx;
    /* requester side (requests.c) */
    cy_device_request *requests; /* in a list for the deadlines */
    cy_map requests_by_id;       /* id (4 bytes) -> request */
    uint32_t next_request;
    cy_buf frame; /* API_REQ encode scratch */
    /* the operator's ACL (acl_file) */
    cy_acl *acl;      /* NULL: none, everything allowed */
    uint32_t acl_gen; /* bumped by every load (never 0): a session whose acl_gen equals it
                       * had each subscription checked under these rules (session.c) */
    cy_logrl acl_log; /* refusals: one line per client per window */
};

/* session.c */
void cy_session_init_kind(cy_devices *d);
/* Put s in the offline list (if it is not) as offline since `since` (mono
 * ms; 1 if not above 0). Errors: CY_ENOMEM (its cold block; nothing
 * changed). */
int cy_offline_link(cy_devices *d, cy_session *s, int64_t since);
/* Take s out of the offline list (if it is in): offline_since 0. */
void cy_offline_unlink(cy_devices *d, cy_session *s);
/* Free memory only (teardown). */
void cy_session_free(cy_devices *d, cy_session *s);
/* Publish s's will now (when: a note for the log line). */
void cy_session_publish_will(cy_devices *d, cy_session *s, const char *when);
/* Check s's subscriptions under the ACL in use as its connection names
 * itself: s->acl_gen becomes d->acl_gen if every one is covered, else 0
 * (its deliveries are then checked one by one). */
void cy_session_acl_recheck(cy_devices *d, cy_session *s);
/* Store loader helpers. */
int cy_session_load_sub(cy_devices *d, cy_session *s, const char *filter, size_t len, uint8_t opts,
                        uint32_t sub_id);
int cy_session_load_msg(cy_devices *d, cy_session *s, const cy_store_msg *sm);
int cy_session_load_inq2(cy_session *s, uint16_t id);

/* session_map.c */
void cy_session_map_init(cy_session_map *m);
/* Frees the slots; the sessions are not touched. */
void cy_session_map_fini(cy_session_map *m);
/* The session whose client id is id (len bytes), or NULL. */
cy_session *cy_session_map_get(const cy_session_map *m, const char *id, size_t len);
/* Enter s (borrowed: it stays in the map until cy_session_map_del) under
 * its client id. Errors: CY_EEXIST (a session of that id is in; nothing
 * changed), CY_ENOMEM (only while the map has no slots at all: a failed
 * growth later only lengthens the chains). */
int cy_session_map_put(cy_session_map *m, cy_session *s);
/* Take s out; false if it was not in. */
bool cy_session_map_del(cy_session_map *m, cy_session *s);
/* Visit every session. fn may take the session it is given out of the map
 * (or free it), and must not otherwise change the map. */
void cy_session_map_each(const cy_session_map *m, void (*fn)(void *ctx, cy_session *s), void *ctx);

/* presence.c */
dev_presence *cy_presence_get(cy_devices *d, const char *id, size_t len, bool create);
void cy_presence_init(cy_devices *d);
/* Log the status events the rate allows, release held devices whose time
 * came (now: mono ms). */
void cy_presence_tick(cy_devices *d, int64_t now);
/* Write the rows whose times moved, when presence_flush_interval passed
 * (all: now, whatever the interval). */
void cy_presence_flush(cy_devices *d, int64_t now, bool all);
void cy_presence_free(cy_devices *d);

/* requests.c */
void cy_requests_init(cy_devices *d);
/* The default answer function: back to the requester (requests.c). */
void cy_requests_init_answer(cy_devices *d);
void cy_requests_tick(cy_devices *d, int64_t now);
void cy_requests_free(cy_devices *d);
/* Requests with a caller whose deadline passed (now: mono ms). */
uint64_t cy_requests_owed(const cy_devices *d, int64_t now);

/* calls.c */
void cy_calls_tick(cy_devices *d, int64_t now);
void cy_calls_free(cy_devices *d);
/* Calls and reads sent to a device whose deadline passed (now: mono ms). */
uint64_t cy_calls_owed(const cy_devices *d, int64_t now);

#endif
