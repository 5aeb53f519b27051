/* api_ws: the HTTP side of MQTT over WebSocket, GET /mqtt (RFC 6455).
 *
 * A device that connects over WebSocket (a browser running MQTT.js) asks
 * for GET /mqtt with the WebSocket handshake and subprotocol "mqtt". It
 * shows no API token: it logs in with its MQTT CONNECT, as over TCP, so
 * this file only checks the handshake (in the HTTP check, before anything
 * else is read: a bad one is refused with the API's JSON errors and the
 * connection closed) and then answers 101 and hands the socket to the MQTT
 * gateway through the shard's callback (the API does not know the gateway:
 * the layering, scripts/layers.py). The HTTP listener's own limits apply
 * to it as to any request: the connection rate per address (at accept),
 * max_per_address, max_connections, the request deadline until the 101.
 *
 * Thread: the shard's loop.
 */
#include "api/api_int.h"

#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_str.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

bool cy_api_ws_has_token(const char *list, const char *token)
{
    size_t tl = strlen(token), len;
    const char *p = list, *item;
    while ((item = cy_list_next(&p, &len)))
        if (len == tl && strncasecmp(item, token, tl) == 0) return true;
    return false;
}

void cy_api_ws_accept_key(const char *key, char out[29])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    char text[128];
    int n = snprintf(text, sizeof(text), "%s" WS_GUID, key);
    if (n < 0 || (size_t)n >= sizeof(text) ||
        !EVP_Digest(text, (size_t)n, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20) {
        out[0] = '\0';
        return;
    }
    EVP_EncodeBlock((unsigned char *)out, md, 20);
}

/* A Sec-WebSocket-Key: base64 of 16 bytes (24 characters, "==" at the end). */
static bool key_ok(const char *k)
{
    if (!k || strlen(k) != 24 || strcmp(k + 22, "==") != 0) return false;
    unsigned char raw[20];
    return EVP_DecodeBlock(raw, (const unsigned char *)k, 24) == 18;
}

void cy_api_ws_check(cy_api *b, cy_http_req *req)
{
    if (!b->ws_accept) {
        cy_api_reply_error(b, req, 404, "not_found", NULL, "no such endpoint");
        return;
    }
    if (strcmp(cy_http_method(req), "GET") != 0) {
        static const char *const allow[] = {"Allow", "GET", NULL};
        cy_api_reply_error(b, req, 405, "method_not_allowed", allow, "%s takes GET",
                           CY_API_WS_PATH);
        return;
    }
    static const char *const upgrade[] = {"Upgrade", "websocket", "Sec-WebSocket-Version", "13",
                                          NULL};
    if (!cy_api_ws_has_token(cy_http_header(req, "Upgrade"), "websocket")) {
        cy_api_reply_error(b, req, 426, "upgrade_required", upgrade,
                           "%s is MQTT over WebSocket: Upgrade: websocket required",
                           CY_API_WS_PATH);
        return;
    }
    const char *v = cy_http_header(req, "Sec-WebSocket-Version");
    if (!v || strcmp(v, "13") != 0) {
        cy_api_reply_error(b, req, 426, "upgrade_required", upgrade,
                           "WebSocket version 13 required");
        return;
    }
    if (!cy_api_ws_has_token(cy_http_header(req, "Connection"), "upgrade")) {
        cy_api_reply_error(b, req, 400, "bad_request", NULL, "Connection: Upgrade required");
        return;
    }
    if (!key_ok(cy_http_header(req, "Sec-WebSocket-Key"))) {
        cy_api_reply_error(b, req, 400, "bad_request", NULL,
                           "Sec-WebSocket-Key missing or not 16 bytes in base64");
        return;
    }
    if (!cy_api_ws_has_token(cy_http_header(req, "Sec-WebSocket-Protocol"), "mqtt")) {
        cy_api_reply_error(b, req, 400, "bad_request", NULL,
                           "Sec-WebSocket-Protocol must offer mqtt");
        return;
    }
    const char *cl = cy_http_header(req, "Content-Length");
    if (cy_http_header(req, "Transfer-Encoding") || (cl && strcmp(cl, "0") != 0))
        cy_api_reply_error(b, req, 400, "bad_request", NULL, "a WebSocket handshake has no body");
}

/* cy_http_upgrade's callback: the 101 is out. */
static void upgraded(void *arg, int fd, const uint8_t *extra, size_t len, cy_http_upgraded *u)
{
    cy_api *b = arg;
    if (fd < 0) return; /* the client left first: nothing to hand over */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    const struct sockaddr *peer = NULL;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0 &&
        (ss.ss_family == AF_INET || ss.ss_family == AF_INET6))
        peer = (const struct sockaddr *)&ss;
    b->ws_accept(b->ws_ctx, fd, extra, len, peer, u);
}

void cy_api_ws_upgrade(cy_api *b, cy_http_req *req)
{
    /* The check let it through: the handshake is valid and /mqtt served. */
    char accept[29];
    cy_api_ws_accept_key(cy_http_header(req, "Sec-WebSocket-Key"), accept);
    const char *h[] = {
        "Upgrade", "websocket", "Sec-WebSocket-Accept", accept, "Sec-WebSocket-Protocol",
        "mqtt",    NULL};
    cy_api_answered(b, req);
    int rc = cy_http_upgrade(req, h, upgraded, b);
    if (rc) {
        cy_warn(NULL, "WebSocket upgrade failed: %s", cy_strerror(rc));
        cy_api_reply_error(b, req, 500, "internal", NULL, "upgrade failed");
    }
}
