/* handle_connect: CONNECT in, CONNACK out.
 *
 * In order: connection limit (not for a CONNECT that takes over a connected
 * session: it replaces a connection), credentials (username = device id, password =
 * device secret, checked against the registry; anonymous only when allowed),
 * client identifier (assigned when empty), session expiry, then session
 * takeover (a live connection with the same client id is disconnected with
 * 0x8E and its will handled as for any abnormal close), then the session is
 * resumed (clean start 0 and one exists: session present) or created, the
 * will is armed, CONNACK goes out with cyan's limits as MQTT 5 properties,
 * and whatever the session had in flight is resent with DUP.
 *
 * While the data folder's disk is full, a CONNECT that would make a new
 * persistent session (expiry > 0 and no persistent session of that name to
 * resume) is refused with 0x97 Quota exceeded (3.1.1: 3, server
 * unavailable). Resuming one is allowed: its client drains its queue, which
 * frees space, and the session row exists already.
 *
 * Refusals answer with the version's own code (MQTT 5 reason or 3.1.1
 * return code) and close the connection without a DISCONNECT.
 *
 * Failed logins are limited for the whole node (core/cy_limit.h), before
 * the secret is checked: an address (or, for addresses that have failed
 * too, a device id) over auth_fail_burst failures in auth_fail_window has
 * its CONNECT held for auth_fail_delay (CY_CONN_HOLD: conn.c keeps it and
 * hands it back), success or not; over auth_fail_lockout_after it is
 * refused unchecked for auth_lockout with 0x9F Connection rate exceeded
 * (3.1.1: 5, not authorized). A wrong secret or an unknown device is 0x86
 * (3.1.1: 4) and counts against the address, and against the device id
 * when that device exists. The secret is never logged.
 */
#include "mqtt/gateway_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <stdio.h>
#include <string.h>

static int refuse(cy_conn *c, uint8_t rc5, uint8_t rc3, const char *who, const char *why)
{
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_CONNACK;
    p.u.connack.reason = c->version == CY_MQTT_V5 ? rc5 : rc3;
    cy_conn_send(c, &p);
    c->g->stats->connects_refused++;
    cy_conn_log_stranger(c, "refused logins", "connect refused for client '%.64s': %s", who, why);
    cy_conn_close(c, 0, NULL);
    return 0;
}

/* A device certificate (mqtts_listen with tls_ca): the device it names
 * logs in without its secret when it sends none, its username being absent
 * or that id (the client id then names it). 1: logged in (an absent
 * username becomes the id, so the device rules apply as for a password
 * login); 0: not a certificate login, credentials decide; -1: refused. */
static int cert_login(cy_conn *c, cy_mqtt_connect *p, const char *who)
{
    const cy_str *id = p->has_username ? &p->username : &p->client_id;
    if (!c->ext || p->has_password || !id->len || id->len > CY_DEVICE_ID_LEN ||
        !cy_conn_cert_is(c, id->p, id->len))
        return 0;
    char text[CY_DEVICE_ID_LEN + 1];
    memcpy(text, id->p, id->len);
    text[id->len] = '\0';
    cy_device d;
    int rc = cy_registry_device_get(c->g->registry, text, &d);
    if (rc == CY_ESTORE)
        return refuse(c, CY_RC_SERVER_UNAVAILABLE, CY_RC3_SERVER_UNAVAILABLE, who,
                      "registry unavailable"),
               -1;
    if (rc || strcmp(d.id, text)) return 0; /* no such device (a name is not an id) */
    if (!p->has_username) {
        p->has_username = true;
        p->username = *id;
    }
    cy_debug(text, "logged in by its client certificate");
    return 1;
}

/* A failure changed the state of its address or device: say so, once per
 * lockout (or slowdown) and address, rate-limited like every line a
 * stranger can cause. */
static void log_limit_change(cy_conn *c, unsigned bits, const struct sockaddr *sa,
                             const cy_mqtt_connect *p)
{
    const cy_config *cfg = c->g->cfg;
    char addr[64];
    cy_limit_addr_text(sa, addr, sizeof(addr));
    int ul = (int)(p->username.len > 64 ? 64 : p->username.len);
    if (bits & CY_LIMIT_ADDR_LOCKED_NOW)
        cy_conn_log_stranger(c, "login lockouts",
                             "address %s locked out for %u s: %u failed logins within %u s",
                             addr, cfg->auth_lockout, cfg->auth_fail_lockout_after,
                             cfg->auth_fail_window);
    else if (bits & CY_LIMIT_ADDR_SLOW_NOW)
        cy_conn_log_stranger(c, "login slowdowns",
                             "address %s slowed: %u failed logins within %u s; its logins "
                             "are held %u ms",
                             addr, cfg->auth_fail_burst, cfg->auth_fail_window,
                             cfg->auth_fail_delay);
    if (bits & CY_LIMIT_ID_LOCKED_NOW)
        cy_conn_log_stranger(c, "device lockouts",
                             "device '%.*s' locked out for %u s for the addresses that failed: "
                             "%u failed logins within %u s",
                             ul, p->username.p, cfg->auth_lockout, cfg->auth_fail_lockout_after,
                             cfg->auth_fail_window);
}

/* 0: logged in; -1: refused (answered, closed); CY_CONN_HOLD: hold it. */
static int authenticate(cy_conn *c, const cy_mqtt_connect *p, const char *who)
{
    cy_mqtt *g = c->g;
    if (!p->has_username) {
        if (g->cfg->allow_anonymous) return 0;
        return refuse(c, CY_RC_NOT_AUTHORIZED, CY_RC3_NOT_AUTHORIZED, who,
                      "no credentials and allow_anonymous is false"),
               -1;
    }
    struct sockaddr_storage ss;
    const struct sockaddr *sa = g->limit ? cy_conn_addr(c, &ss) : NULL;
    int64_t now = cy_mono_ms(), retry = 0;
    char why[CY_MAX_CLIENT_ID + 96];
    int ul = (int)(p->username.len > 64 ? 64 : p->username.len);
    switch (cy_limit_auth_check(g->limit, sa, p->username.p, p->username.len, c->delay_served,
                                now, &retry)) {
    case CY_LIMIT_LOCKED:
        g->stats->auth_locked++;
        snprintf(why, sizeof(why),
                 "device '%.*s': locked out after repeated failed logins (%lld s left)", ul,
                 p->username.p, (long long)((retry + 999) / 1000));
        return refuse(c, CY_RC_CONNECTION_RATE_EXCEEDED, CY_RC3_NOT_AUTHORIZED, who, why), -1;
    case CY_LIMIT_DELAY:
        g->stats->auth_delayed++;
        cy_conn_log_stranger(c, "held logins",
                             "login for device '%.*s' held %lld ms: repeated failed logins", ul,
                             p->username.p, (long long)retry);
        return CY_CONN_HOLD;
    default: break;
    }
    int rc = CY_EACCES;
    if (p->has_password)
        rc = cy_registry_device_check(g->registry, p->username.p, p->username.len,
                                      (const uint8_t *)p->password.p, p->password.len);
    if (rc == 0) return 0;
    if (rc == CY_ESTORE)
        return refuse(c, CY_RC_SERVER_UNAVAILABLE, CY_RC3_SERVER_UNAVAILABLE, who,
                      "registry unavailable"),
               -1;
    g->stats->auth_failures++;
    unsigned bits = cy_limit_auth_failed(g->limit, sa, p->username.p, p->username.len,
                                         rc == CY_EACCES, now);
    if (bits) log_limit_change(c, bits, sa, p);
    snprintf(why, sizeof(why), "bad credentials for device '%.*s' (%s)", ul, p->username.p,
             rc == CY_ENOENT ? "unknown device" : "wrong secret");
    return refuse(c, CY_RC_BAD_USER_OR_PASSWORD, CY_RC3_BAD_USER_OR_PASSWORD, who, why), -1;
}

static cy_msg *make_will(cy_conn *c, const cy_mqtt_connect *p, bool retain)
{
    return cy_msg_from_publish(&p->will_topic, (const uint8_t *)p->will_payload.p,
                               p->will_payload.len, &p->will_props, p->will_qos, retain,
                               p->version, &c->g->scratch);
}

/* Would this CONNECT take over a session that is connected now? Then it
 * replaces a connection rather than adding one, and max_connections does
 * not refuse it. The session is named as below: an isolated device's by its
 * username. Credentials are checked after, as for any CONNECT, so a
 * stranger who names a connected session gets no further than before. */
static bool takes_over(cy_mqtt *g, const cy_mqtt_connect *p)
{
    const cy_str *name =
        p->has_username && g->cfg->isolate_devices ? &p->username : &p->client_id;
    if (name->len == 0 || name->len > CY_MAX_CLIENT_ID) return false;
    cy_session *s = cy_session_find(g->devices, name->p, name->len);
    return s && s->link;
}

int cy_handle_connect(cy_conn *c, cy_mqtt_connect *p)
{
    cy_mqtt *g = c->g;
    c->version = p->version;

    char who[CY_MAX_CLIENT_ID + 1];
    size_t idlen = p->client_id.len < CY_MAX_CLIENT_ID ? p->client_id.len : CY_MAX_CLIENT_ID;
    memcpy(who, p->client_id.p, idlen);
    who[idlen] = '\0';
    const char *logname = idlen ? who : cy_conn_peer(c);

    if (g->stopping)
        return refuse(c, CY_RC_SERVER_UNAVAILABLE, CY_RC3_SERVER_UNAVAILABLE, logname,
                      "shutting down");
    if (cy_mqtt_clients_connected(g) >= g->cfg->max_connections && !takes_over(g, p)) {
        g->stats->limit_connections++;
        return refuse(c, CY_RC_QUOTA_EXCEEDED, CY_RC3_SERVER_UNAVAILABLE, logname,
                      "max_connections reached");
    }
    if (p->props.present & CY_PBIT(CY_PROP_AUTH_METHOD))
        return refuse(c, CY_RC_BAD_AUTH_METHOD, CY_RC3_NOT_AUTHORIZED, logname,
                      "enhanced authentication is not supported");
    int cert = cert_login(c, p, logname);
    if (cert < 0) return 0;
    if (!cert) {
        /* A verified certificate cannot be guessed: only secrets go through
         * the failed-login limits. */
        int auth = authenticate(c, p, logname);
        if (auth == CY_CONN_HOLD) return CY_CONN_HOLD;
        if (auth) return 0;
    }
    if (p->client_id.len > CY_MAX_CLIENT_ID)
        return refuse(c, CY_RC_CLIENT_ID_INVALID, CY_RC3_ID_REJECTED, logname,
                      "client id longer than 256 bytes");

    /* An isolated device is its own session: client id = device id (an
     * empty one becomes the device id), so no device can take over another
     * device's session and the API finds each device's session by its id. */
    bool device = p->has_username && g->cfg->isolate_devices;
    if (device) {
        if (p->client_id.len &&
            (p->client_id.len != p->username.len ||
             memcmp(p->client_id.p, p->username.p, p->username.len) != 0))
            return refuse(c, CY_RC_CLIENT_ID_INVALID, CY_RC3_ID_REJECTED, logname,
                          "a device's client id must be its device id");
        idlen = p->username.len < CY_MAX_CLIENT_ID ? p->username.len : CY_MAX_CLIENT_ID;
        memcpy(who, p->username.p, idlen);
        who[idlen] = '\0';
    }

    /* Client identifier. */
    bool assigned = false;
    if (p->client_id.len == 0 && !device) {
        if (c->version != CY_MQTT_V5 && !p->clean_start)
            return refuse(c, CY_RC_CLIENT_ID_INVALID, CY_RC3_ID_REJECTED, cy_conn_peer(c),
                          "empty client id needs clean session");
        /* An assigned id must belong to this shard, so that a client that
         * reconnects with it lands where its session is. */
        do {
            snprintf(who, sizeof(who), "auto-%016llx",
                     (unsigned long long)(((uint64_t)cy_wall_ms() << 20) ^ ++g->next_assigned_id));
            idlen = strlen(who);
        } while (cy_shard_of(who, idlen, g->nshards) != g->self);
        assigned = true;
    }
    /* A will is a publish made at the close: it passes the same rules as a
     * PUBLISH from this client, now, so that no device can leave a message
     * outside its own spaces by dropping its connection. */
    bool internal = p->has_username && p->username.len == idlen &&
                    memcmp(p->username.p, who, idlen) == 0 &&
                    cy_registry_device_internal(g->registry, who, idlen) == 1;
    bool will_retain = p->will_retain;
    if (p->will) {
        if (!cy_topic_valid_name(p->will_topic.p, p->will_topic.len)) return CY_RC_PROTOCOL_ERROR;
        bool reply = false;
        const char *why = NULL;
        cy_who as = {who, idlen, p->has_username ? p->username.p : NULL,
                     p->has_username ? p->username.len : 0, internal};
        int reason = cy_device_admit(g->devices, device ? who : NULL, idlen, &as, p->will_topic.p,
                                      p->will_topic.len, (const uint8_t *)p->will_payload.p,
                                      p->will_payload.len, &will_retain, &reply, &why);
        if (!reason && reply) {
            reason = CY_RC_NOT_AUTHORIZED;
            why = "a reply topic (a will cannot answer a call)";
        }
        /* A retained will is charged to its client when it is published; if it
         * is over a retained limit already, the CONNECT says so now. */
        if (!reason && will_retain) {
            cy_msg *w = make_will(c, p, true);
            if (!w) return refuse(c, CY_RC_SERVER_BUSY, CY_RC3_SERVER_UNAVAILABLE, who, "out of memory");
            reason = cy_router_retain_check(g->router, who, w);
            why = "over a retained messages limit";
            cy_msg_unref(w);
        }
        if (reason) {
            char text[128];
            snprintf(text, sizeof(text), "will refused: %s", why);
            return refuse(c, (uint8_t)reason, CY_RC3_NOT_AUTHORIZED, who, text);
        }
    }

    /* Session expiry: MQTT 5 property; 3.1.1 clean session 0 = never. */
    uint32_t expiry;
    if (c->version == CY_MQTT_V5)
        expiry = (p->props.present & CY_PBIT(CY_PROP_SESSION_EXPIRY)) ? p->props.session_expiry : 0;
    else
        expiry = p->clean_start ? 0 : 0xFFFFFFFFu;
    bool expiry_capped = false;
    if (g->cfg->max_session_expiry && expiry > g->cfg->max_session_expiry) {
        expiry = g->cfg->max_session_expiry;
        expiry_capped = true;
    }

    /* Disk full: no new persistent session (see the top of the file). */
    cy_session *s = cy_session_find(g->devices, who, idlen);
    if (expiry > 0 && !(s && s->persistent && !p->clean_start) && cy_space_full(g->space)) {
        g->stats->store_full_refusals++;
        return refuse(c, CY_RC_QUOTA_EXCEEDED, CY_RC3_SERVER_UNAVAILABLE, who,
                      "the data folder's disk is full: no new persistent session");
    }

    /* Takeover. */
    if (s && s->link) {
        cy_info(who, "session taken over by a new connection from %s", cy_conn_peer(c));
        s->link->ops->close(s->link, CY_RC_SESSION_TAKEN_OVER, "session taken over");
        s = cy_session_find(g->devices, who, idlen); /* ended if it was not persistent */
    }
    bool present = false;
    if (s && p->clean_start) {
        cy_session_end(g->devices, s);
        s = NULL;
    }
    if (s) {
        present = true;
    } else {
        s = cy_session_new(g->devices, who, idlen);
        if (!s)
            return refuse(c, CY_RC_SERVER_BUSY, CY_RC3_SERVER_UNAVAILABLE, who, "out of memory");
    }
    if (expiry == 0) cy_session_forget(g->devices, s);
    s->version = c->version;
    s->expiry = expiry;
    s->persistent = expiry > 0;
    cy_session_attach(g->devices, s, &c->link);
    c->sess = s;
    c->state = CONN_ACTIVE;
    c->device = device;
    c->internal = internal;
    c->counted = true;
    if (!internal) cy_connsum_opened(cy_conn_kind_of(c)); /* the monitor's canaries: not */
    g->stats->clients_connected++;
    g->stats->connects_total++;
    /* Who the ACL sees (before anything is sent to the session). */
    if (cy_session_set_who(g->devices, s, p->has_username ? p->username.p : NULL,
                           p->has_username ? p->username.len : 0, internal))
        return refuse(c, CY_RC_SERVER_BUSY, CY_RC3_SERVER_UNAVAILABLE, who, "out of memory");

    /* Keep-alive. */
    c->keepalive = p->keep_alive;
    bool server_ka = false;
    if (c->version == CY_MQTT_V5 && (p->keep_alive == 0 || p->keep_alive > g->cfg->max_keepalive)) {
        c->keepalive = (uint16_t)g->cfg->max_keepalive; /* config keeps it <= 65535 */
        server_ka = true;
    }

    /* The client's limits. */
    uint64_t limits = CY_PBIT(CY_PROP_RECEIVE_MAX) | CY_PBIT(CY_PROP_MAX_PACKET_SIZE) |
                      CY_PBIT(CY_PROP_TOPIC_ALIAS_MAX);
    if (c->version == CY_MQTT_V5 && (p->props.present & limits)) {
        cy_conn_v5 *x = cy_conn_v5_get(c);
        if (!x) return refuse(c, CY_RC_SERVER_BUSY, CY_RC3_SERVER_UNAVAILABLE, who, "out of memory");
        if (p->props.present & CY_PBIT(CY_PROP_RECEIVE_MAX)) x->peer_recv_max = p->props.receive_max;
        if (p->props.present & CY_PBIT(CY_PROP_MAX_PACKET_SIZE))
            x->peer_max_packet = p->props.max_packet_size;
        if (p->props.present & CY_PBIT(CY_PROP_TOPIC_ALIAS_MAX))
            x->peer_alias_max = p->props.topic_alias_max;
    }

    /* Will. */
    if (p->will) {
        s->will = make_will(c, p, will_retain);
        s->will_delay = (p->will_props.present & CY_PBIT(CY_PROP_WILL_DELAY))
                            ? p->will_props.will_delay
                            : 0;
        s->will_at = 0;
    }

    cy_session_persist(g->devices, s);

    cy_mqtt_packet ack;
    memset(&ack, 0, sizeof(ack));
    ack.type = CY_MQTT_CONNACK;
    ack.u.connack.session_present = present;
    ack.u.connack.reason = 0;
    if (c->version == CY_MQTT_V5) {
        cy_mqtt_props *ap = &ack.u.connack.props;
        ap->present = CY_PBIT(CY_PROP_RECEIVE_MAX) | CY_PBIT(CY_PROP_MAX_PACKET_SIZE) |
                      CY_PBIT(CY_PROP_TOPIC_ALIAS_MAX);
        ap->receive_max = (uint16_t)g->cfg->max_inflight;
        ap->max_packet_size = g->cfg->max_packet_size;
        ap->topic_alias_max = (uint16_t)g->cfg->topic_alias_max;
        if (assigned || (device && p->client_id.len == 0)) {
            ap->present |= CY_PBIT(CY_PROP_ASSIGNED_CLIENT_ID);
            ap->assigned_client_id = (cy_str){s->client_id, s->client_id_len};
        }
        if (server_ka) {
            ap->present |= CY_PBIT(CY_PROP_SERVER_KEEP_ALIVE);
            ap->server_keep_alive = (uint16_t)c->keepalive;
        }
        if (expiry_capped) {
            ap->present |= CY_PBIT(CY_PROP_SESSION_EXPIRY);
            ap->session_expiry = expiry;
        }
    }
    cy_conn_send(c, &ack);
    cy_debug(s->client_id, "connected from %s proto=%u keepalive=%u clean=%d expiry=%u%s",
             cy_conn_peer(c), c->version, c->keepalive, p->clean_start, expiry,
             present ? " resumed" : "");
    if (device) cy_device_online(g->devices, s, &c->link);
    cy_session_resume(g->devices, s);
    return 0;
}
