/* api: the HTTP API of one shard (docs/api.md): devices, tokens, function
 * calls and variable reads, events published and streamed.
 *
 * Every shard serves the API from the same listening socket; a request
 * about a device is a device request (device.h): run by the device's owner
 * shard and answered from there exactly once. The event buffer is a subscriber of kind "events" (router.h) of
 * "devices/+/events/#" and "events/#", so every shard sees every event.
 *
 * Ownership: cy_api_new borrows everything in cy_api_deps, which must
 * outlive it, and duplicates http_fd. It holds message references (the
 * event buffer): free it before the router.
 * Errors: CY_ENOMEM, -errno.
 * Thread: the shard's loop thread only.
 */
#ifndef CY_API_H
#define CY_API_H

#include "cluster/cluster.h"
#include "core/cy_config.h"
#include "core/cy_limit.h"
#include "device/device.h"
#include "health/metrics.h"
#include "health/scoreboard.h"
#include "http/http.h"
#include "router/router.h"
#include "store/store.h"

#include <uv.h>

typedef struct cy_api cy_api;

typedef struct cy_api_deps {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_registry *registry;  /* devices and tokens */
    cy_router *router;
    cy_cluster *cluster;
    cy_devices *devices;
    cy_counters *stats;
    cy_hists *hists;        /* latency of every answer (CY_HIST_API_REQUEST); NULL: none */
    cy_scoreboard *sb;      /* NULL: none */
    cy_limit *limit;        /* failed tokens, connection rates (core/cy_limit.h); NULL: none */
    unsigned self, nshards;
    /* MQTT over WebSocket at GET /mqtt (api_ws.c): called with an upgraded
     * connection (the arguments as cy_mqtt_ws_accept's, mqtt/gateway.h:
     * fd and u are taken over). NULL: /mqtt is 404. */
    void (*ws_accept)(void *ctx, int fd, const uint8_t *extra, size_t len,
                      const struct sockaddr *peer, cy_http_upgraded *u);
    void *ws_ctx;
} cy_api_deps;

/* Build the API on the inherited listening socket http_fd (duplicated),
 * subscribe the event buffer, take the device layer's answers. Requests
 * are served from cy_api_listen on. */
int cy_api_new(const cy_api_deps *deps, int http_fd, cy_api **out);
/* Start taking HTTP requests (when the shard starts accepting clients). */
void cy_api_listen(cy_api *a);
/* Close every HTTP connection and stream (pending requests end). */
void cy_api_stop(cy_api *a);
/* HTTPS: read tls_cert and tls_key again for new connections (open ones
 * keep theirs); a failure keeps the old pair and is logged. No-op on plain
 * HTTP. */
void cy_api_reload_tls(cy_api *a);
/* Safe on NULL. */
void cy_api_free(cy_api *a);

#endif
