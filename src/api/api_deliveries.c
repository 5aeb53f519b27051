/* api_deliveries: what became of events, for people: a webhook's delivery
 * figures, its dead letters and their replay, and an event's trace
 * (docs/api.md, "Webhooks"). The answers are read from every shard's file
 * (webhooks/inspect.c), so any shard answers for the node, even for a shard
 * that is restarting; a replay is a request in the registry that the shard
 * holding the letters takes (store/hooks.h).
 */
#include "api/api_int.h"

#include "core/cy_err.h"
#include "store/hooks.h"
#include "webhooks/webhooks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEAD_LIST_DEFAULT 100
#define DEAD_LIST_MAX 1000

json_t *cy_api_webhook_stats(cy_api *b, const char *id)
{
    return cy_webhooks_stats(b->cfg, b->nshards, id);
}

bool cy_api_is_trace(char *const *seg, unsigned nseg)
{
    unsigned shard;
    uint64_t seq;
    return nseg == 3 && !strcmp(seg[0], "events") && !strcmp(seg[2], "trace") &&
           cy_webhooks_event_id_parse(seg[1], &shard, &seq) == 0;
}

void cy_api_event_trace(cy_api *b, cy_http_req *req, const char *event_id)
{
    json_t *o = NULL;
    int rc = cy_webhooks_trace(b->cfg, b->nshards, b->registry, event_id, &o);
    if (rc == CY_EINVAL)
        cy_api_reply_error(b, req, 404, "not_found", NULL,
                           "no event %s: ids are <shard>-<number>, shard below %u", event_id,
                           b->nshards);
    else if (rc)
        cy_api_reply_error(b, req, 404, "not_found", NULL,
                           "event %s is not in its shard's log (never logged, or trimmed)",
                           event_id);
    else
        cy_api_reply_json(b, req, 200, o, NULL);
}

/* GET .../dead-letters?limit=N */
static void dead_list(cy_api *b, cy_http_req *req, const char *id)
{
    unsigned limit = DEAD_LIST_DEFAULT;
    const char *l = cy_http_query(req, "limit");
    if (l) {
        char *end;
        unsigned long v = strtoul(l, &end, 10);
        if (*l < '0' || *l > '9' || *end || v < 1 || v > DEAD_LIST_MAX) {
            cy_api_reply_error(b, req, 400, "bad_request", NULL, "limit is 1 to %u",
                               DEAD_LIST_MAX);
            return;
        }
        limit = (unsigned)v;
    }
    json_t *arr = cy_webhooks_dead_letters(b->cfg, b->nshards, id, limit);
    cy_api_reply_json(b, req, 200,
                      arr ? json_pack("{s:s, s:o}", "webhook_id", id, "dead_letters", arr) : NULL,
                      NULL);
}

/* POST .../dead-letters/replay (all) or .../dead-letters/{event id}/replay. */
static void dead_replay(cy_api *b, cy_http_req *req, const char *id, const char *event_id)
{
    int rc = 0;
    unsigned asked = 0;
    if (event_id) {
        unsigned shard;
        uint64_t seq;
        if (cy_webhooks_event_id_parse(event_id, &shard, &seq) || shard >= b->nshards) {
            cy_api_reply_error(b, req, 404, "not_found", NULL, "no event %s", event_id);
            return;
        }
        rc = cy_registry_webhook_replay(b->registry, id, shard, seq);
        asked = 1;
    } else {
        for (unsigned j = 0; j < b->nshards && !rc; j++, asked++)
            rc = cy_registry_webhook_replay(b->registry, id, j, 0);
    }
    if (rc) {
        cy_api_reply_error(b, req, 500, "internal", NULL, "cannot record the replay: %s",
                           cy_strerror(rc));
        return;
    }
    /* Asynchronous: each shard takes its request within half a second. */
    cy_api_reply_json(b, req, 202,
                      json_pack("{s:s, s:s?, s:b}", "webhook_id", id, "event_id", event_id,
                                "replay_requested", 1),
                      NULL);
    (void)asked;
}

void cy_api_dead_letters(cy_api *b, cy_http_req *req, api_op op, char *const *seg)
{
    if (op == API_OP_DEAD_LETTERS)
        dead_list(b, req, seg[1]);
    else
        dead_replay(b, req, seg[1], op == API_OP_DEAD_REPLAY_ONE ? seg[3] : NULL);
}
