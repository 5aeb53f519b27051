/* api_routes: the table of the HTTP API's routes, each with the one token
 * scope it needs, and the small pure pieces the API's door needs: CORS
 * origin matching.
 *
 * Every request is matched against the table before anything else runs:
 * a path no route has is 404, a path whose routes take other methods is 405
 * (Allow lists them), and a route's handler runs only once the token holds
 * the route's scope (403 otherwise). So a route cannot be added without a
 * scope, and the unit test walks the whole table (tests/unit/
 * test_api_routes.c); docs/api.md's table of scopes is the same list.
 *
 * A pattern is the path after "/v1/", segment by segment: a literal, "*"
 * (exactly one segment) or "**" (one or more, to the end; only last).
 *
 * Ownership: the table and the routes returned are static. Thread: any.
 */
#ifndef CY_API_ROUTES_H
#define CY_API_ROUTES_H

#include <stdbool.h>
#include <stddef.h>

/* What a route does (api.c dispatches on it). */
typedef enum api_op {
    API_OP_HEALTH,
    API_OP_DEVICES_LIST,
    API_OP_DEVICE_CREATE,
    API_OP_DEVICE_GET,
    API_OP_DEVICE_DELETE,
    API_OP_DEVICE_RENAME,
    API_OP_DEVICE_PSK,
    API_OP_DEVICE_CALL,
    API_OP_DEVICE_VARIABLE,
    API_OP_DEVICE_EVENTS,
    API_OP_EVENTS_STREAM,
    API_OP_EVENT_PUBLISH,
    API_OP_EVENT_TRACE,
    API_OP_STREAM_TOKEN,
    API_OP_WEBHOOKS_LIST,
    API_OP_WEBHOOK_CREATE,
    API_OP_WEBHOOK_GET,
    API_OP_WEBHOOK_PATCH,
    API_OP_WEBHOOK_DELETE,
    API_OP_WEBHOOK_SECRET,
    API_OP_DEAD_LETTERS,
    API_OP_DEAD_REPLAY_ALL,
    API_OP_DEAD_REPLAY_ONE,
    API_OP_TOKENS_LIST,
    API_OP_TOKEN_CREATE,
    API_OP_TOKEN_REVOKE,
    /* Particle's paths (api_particle.c) */
    API_OP_PARTICLE_CALL,
    API_OP_PARTICLE_VARIABLE,
} api_op;

typedef struct api_route {
    const char *method;
    const char *pattern; /* after "/v1/" */
    unsigned scope;      /* the CY_SCOPE_* bit it needs; 0: none (GET /v1/health) */
    api_op op;
    bool stream; /* an event stream: a stream token may open it */
} api_route;

#define API_MAX_SEGMENTS 8 /* path segments after /v1/ that a request is split into */

/* The whole table, *n routes. */
const api_route *cy_api_routes(size_t *n);

/* The route of method and the path's segments seg[0..nseg) (after /v1/),
 * or NULL. When NULL, allow (cap bytes, may be NULL) gets the methods of
 * the routes whose pattern matches the path, ", "-separated ("" when none:
 * the path is no route's, 404). GET /v1/events/{id}/trace is a trace only
 * when {id} is an event id (cy_api_is_trace); otherwise it is an event
 * stream with that prefix. */
const api_route *cy_api_route_find(const char *method, char *const *seg, unsigned nseg, char *allow,
                                   size_t allow_cap);

/* Whether name is one of cyan's own sub-paths of a device: the literal
 * after "devices/{id}/" in a route of the table (psk, events, functions,
 * variables). Particle's paths (POST and GET /v1/devices/{id}/{name}) never
 * take such a name: cyan's own route, or its 404 or 405, wins. */
bool cy_api_device_subpath(const char *name);

/* Split path (changed in place) into its segments after "/v1/", at most
 * API_MAX_SEGMENTS (the rest is not split off: an event stream takes its
 * prefix from the raw path). Returns how many (0: not an API path). */
unsigned cy_api_split(char *path, char *seg[API_MAX_SEGMENTS]);

/* CORS: whether a request from origin (the Origin header; borrowed) may
 * read the API's answers under the cors_origins setting list ("" none,
 * "*", or comma-separated origins): the value for
 * Access-Control-Allow-Origin ("*", or origin itself when listed, compared
 * case-insensitively), or NULL (not allowed: no CORS headers). Never
 * reflects an origin the list does not name. */
const char *cy_api_cors_allow(const char *list, const char *origin);

#endif
