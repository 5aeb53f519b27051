/* canary_probe: `cyan canary [--shard N] [--count K]`, the canary path run
 * once from the command line against a running node (docs/operations.md,
 * "Canaries"): is the path working right now, shard by shard?
 *
 * It uses its own internal devices ("cyan:probe:<shard>") and token
 * ("cyan:probe"), made anew for the run (store.h: a new secret each time),
 * never the monitor's canaries: a client id has one session, and the probe
 * taking the canary's would fail the canary. Each selected shard gets a
 * canary (canary.h) on one loop; the run ends once each has reported
 * `count` attempts of both steps. Every attempt ends by its deadline, so a
 * run lasts at most about count attempts' deadlines.
 */
#include "monitor/canary.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "health/scoreboard.h"

#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

typedef struct probe_one {
    struct probe *p;
    cy_canary *c;
    unsigned shard;
    char id[CY_DEVICE_ID_LEN + 1];
    char secret[CY_DEVICE_SECRET_LEN + 1];
    unsigned done[CY_CANARY_NSTEPS];
    bool stopped;
} probe_one;

typedef struct probe {
    FILE *out;
    unsigned count, n, ok, failed;
    probe_one *one;
} probe;

static void on_result(void *ctx, const cy_canary_result *r)
{
    probe_one *o = ctx;
    probe *p = o->p;
    if (o->stopped || o->done[r->step] >= p->count) return;
    o->done[r->step]++;
    double ms = (double)r->latency_us / 1000.0;
    if (r->ok) {
        p->ok++;
        fprintf(p->out, "shard %u device %s: %-7s #%" PRIu64 " ok %.3f ms\n", r->shard, o->id,
                cy_canary_step_name(r->step), r->seq, ms);
    } else {
        p->failed++;
        fprintf(p->out, "shard %u device %s: %-7s #%" PRIu64 " FAILED after %.3f ms: %s\n",
                r->shard, o->id, cy_canary_step_name(r->step), r->seq, ms, r->error);
    }
    fflush(p->out);
    if (o->done[CY_CANARY_PUBLISH] >= p->count && o->done[CY_CANARY_CALL] >= p->count) {
        o->stopped = true;
        cy_canary_stop(o->c);
    }
}

int cy_canary_probe(const cy_config *cfg, int shard, unsigned count, FILE *out)
{
    if (!cfg || !out || count == 0 || (shard >= 0 && (unsigned)shard >= cfg->shards) ||
        cfg->shards == 0 || cfg->shards > CY_SB_MAX_SHARDS) {
        fprintf(stderr, "cyan: canary: bad arguments (shard %d of %u, count %u)\n", shard,
                cfg ? cfg->shards : 0, count);
        return 2;
    }
    if (!cfg->http_listen[0]) {
        fprintf(stderr, "cyan: canary: http_listen is off; the probe's calls go through the "
                        "HTTP API\n");
        return 1;
    }
    probe p = {.out = out, .count = count};
    p.n = shard < 0 ? cfg->shards : 1;
    p.one = cy_calloc(p.n, sizeof(*p.one));
    if (!p.one) return 1;
    int status = 1;
    char token_id[CY_TOKEN_ID_LEN + 1], token[CY_TOKEN_MAX + 1] = "";
    char path[600];
    snprintf(path, sizeof(path), "%s/registry.db", cfg->data_dir);
    cy_registry *r = NULL;
    int rc = cy_registry_open(path, &r);
    if (rc) {
        fprintf(stderr, "cyan: canary: cannot open %s: %s\n", path, cy_strerror(rc));
        goto out;
    }
    for (unsigned i = 0; i < p.n && !rc; i++) {
        probe_one *o = &p.one[i];
        o->p = &p;
        o->shard = shard < 0 ? i : (unsigned)shard;
        rc = cy_canary_device(r, "probe", o->shard, cfg->shards, o->id, o->secret);
    }
    if (!rc) rc = cy_canary_token(r, "probe", token_id, token);
    cy_registry_close(r);
    if (rc) {
        fprintf(stderr, "cyan: canary: cannot make the probe's devices and token in %s: %s\n", path,
                cy_strerror(rc));
        goto out;
    }

    uv_loop_t loop;
    rc = uv_loop_init(&loop);
    if (rc) {
        fprintf(stderr, "cyan: canary: %s\n", uv_strerror(rc));
        goto out;
    }
    for (unsigned i = 0; i < p.n && !rc; i++) {
        probe_one *o = &p.one[i];
        cy_canary_conf conf = {.mqtt_addr = cfg->mqtt_listen,
                               .http_addr = cfg->http_listen,
                               .http_tls = cfg->tls_cert[0] && cfg->http_tls,
                               .device_id = o->id,
                               .secret = o->secret,
                               .token = token,
                               .shard = o->shard};
        rc = cy_canary_new(&loop, &conf, on_result, o, &o->c);
        if (rc)
            fprintf(stderr, "cyan: canary: shard %u: %s (mqtt_listen %s, http_listen %s)\n",
                    o->shard, cy_strerror(rc), cfg->mqtt_listen, cfg->http_listen);
    }
    if (!rc) uv_run(&loop, UV_RUN_DEFAULT); /* until every canary has stopped */
    for (unsigned i = 0; i < p.n; i++)
        cy_canary_free(p.one[i].c);
    uv_run(&loop, UV_RUN_DEFAULT); /* their handles close */
    if (uv_loop_close(&loop)) cy_warn(NULL, "canary: the loop still had handles at the end");
    if (!rc) {
        unsigned total = p.ok + p.failed;
        if (p.failed)
            fprintf(out, "canary: %u of %u attempts failed\n", p.failed, total);
        else
            fprintf(out, "canary: all %u attempts succeeded\n", total);
        status = p.failed ? 1 : 0;
    }
out:
    OPENSSL_cleanse(token, sizeof(token));
    for (unsigned i = 0; i < p.n; i++)
        OPENSSL_cleanse(p.one[i].secret, sizeof(p.one[i].secret));
    cy_free(p.one);
    return status;
}
