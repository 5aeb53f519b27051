/* hooks: webhook definitions, kept in the registry (registry.db) beside
 * devices and tokens, because they belong to the node, not to a shard:
 * the API of any shard manages them, every shard delivers its own events
 * to all of them (webhooks/webhooks.h).
 *
 * A webhook's signing secret is kept as is (it signs: cyan needs the key
 * itself, unlike a device secret, of which only a hash is kept). So a
 * stolen registry lets its holder forge requests to the users' backends;
 * docs/operations.md says so, beside the file modes that protect it.
 *
 * Every change (add, update, delete, secret rotation, replay request)
 * bumps the registry's webhook generation (cy_registry_webhooks_gen), so
 * a shard reloads the definitions only when they changed.
 *
 * Replay requests: the API asks to replay a webhook's dead letters (all of
 * one shard's, or one event's); the request is a row here, taken and
 * deleted by the shard that holds those letters (it polls when the
 * generation moves). So a replay asked on any shard reaches the owner even
 * if it is restarting.
 *
 * Ownership: strings in a cy_webhook filled by get or list are owned by
 * it: free them with cy_webhook_fini. Inputs are borrowed (copied into
 * SQLite).
 * Errors: CY_EINVAL (bad field: a reason is written to why where given),
 * CY_ENOENT (no such webhook), CY_ERANGE (webhook_max reached), CY_EIO
 * (random generator), CY_ENOMEM, CY_ESTORE.
 * Thread: the registry handle's owner.
 */
#ifndef CY_STORE_HOOKS_H
#define CY_STORE_HOOKS_H

#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>

#define CY_WEBHOOK_ID_LEN 19      /* "wh_" + 16 lowercase hex */
#define CY_WEBHOOK_SECRET_LEN 64  /* as CY_WH_SECRET_LEN, with the NUL */
#define CY_WEBHOOK_URL_MAX 2048
#define CY_WEBHOOK_EVENT_MAX 256  /* bytes of the event name prefix */
#define CY_WEBHOOK_TOPIC_MAX 256  /* bytes of a response or error topic */
/* How long (ms) the previous secret keeps signing after a rotation. */
#define CY_WEBHOOK_OLD_SECRET_MS (24 * 3600 * 1000LL)

typedef struct cy_webhook {
    char id[CY_WEBHOOK_ID_LEN + 1];
    char *event;          /* name prefix; "" = every event */
    char *url;            /* a text template (webhooks/render.h) */
    char method[8];       /* POST, PUT, PATCH, GET or DELETE */
    char *headers;        /* JSON object text of name -> value template, or NULL */
    int body_kind;        /* cy_wh_body_kind (webhooks/render.h) */
    char *body;           /* the template's text, or NULL for the default body */
    char device_id[CY_DEVICE_ID_LEN + 1]; /* "" = any device */
    char *response_topic; /* where the answer goes back (the device's hook-response), or NULL */
    char *error_topic;    /* where errors go back (hook-error), or NULL */
    bool enabled;
    bool ordered;         /* one request in flight, in log order */
    char disabled_reason[128]; /* why it was disabled ("" while enabled): "410 Gone", "by the API" */
    char secret[CY_WEBHOOK_SECRET_LEN];
    char old_secret[CY_WEBHOOK_SECRET_LEN]; /* "" = none */
    int64_t old_secret_until; /* wall ms; the old secret signs until then */
    int64_t created_at, updated_at; /* wall ms */
} cy_webhook;

void cy_webhook_fini(cy_webhook *w); /* frees the strings; safe on a zeroed one */

/* Add w (its id, secret, created_at and updated_at are made here and
 * written back into *w). Fields are checked for shape (lengths, method,
 * body_kind, headers is a JSON object of strings, device_id is 24 hex or
 * empty); the caller checks templates and URLs (webhooks/render.h,
 * policy.h) first. max: the most webhooks the node may have (CY_ERANGE). */
int cy_registry_webhook_add(cy_registry *r, cy_webhook *w, unsigned max, char *why,
                            size_t why_len);
int cy_registry_webhook_get(cy_registry *r, const char *id, cy_webhook *out);
/* Replace every field of the webhook w->id but id, secret, old secret and
 * created_at with w's (read, change, write: the API's PATCH); updated_at is
 * set. */
int cy_registry_webhook_update(cy_registry *r, cy_webhook *w, char *why, size_t why_len);
int cy_registry_webhook_delete(cy_registry *r, const char *id);
/* Enable, or disable with a reason (borrowed; "" allowed). */
int cy_registry_webhook_set_enabled(cy_registry *r, const char *id, bool enabled,
                                    const char *reason);
/* New secret; the old one signs until now + CY_WEBHOOK_OLD_SECRET_MS. The
 * new secret is written to secret_out. */
int cy_registry_webhook_rotate(cy_registry *r, const char *id,
                               char secret_out[CY_WEBHOOK_SECRET_LEN]);
/* Every webhook in creation order; stops at fn's non-zero return and
 * returns it. *w is valid only during the call (do not fini it). */
int cy_registry_webhook_list(cy_registry *r, int (*fn)(void *ctx, const cy_webhook *w),
                             void *ctx);
/* A number that changes whenever any webhook or replay request does
 * (a counter in the file, so it is seen from every process). */
int cy_registry_webhooks_gen(cy_registry *r, uint64_t *gen);

/* Ask shard `shard` to replay webhook id's dead letters: the one of event
 * seq, or all of them (seq 0). */
int cy_registry_webhook_replay(cy_registry *r, const char *id, unsigned shard, uint64_t seq);
/* Take (and delete) shard's replay requests: fn(ctx, id, seq) for each. */
int cy_registry_webhook_replays_take(cy_registry *r, unsigned shard,
                                     int (*fn)(void *ctx, const char *id, uint64_t seq),
                                     void *ctx);

#endif
