/* handle_disconnect: DISCONNECT from the client.
 *
 * Reason 0x00 (or a 3.1.1 DISCONNECT) discards the will; 0x04 "disconnect
 * with will message" keeps it, as does every other reason (the client is
 * saying something went wrong). MQTT 5 may also change the session expiry
 * here, but not from 0 to non-zero (a protocol error, 3.14.2.2.2).
 */
#include "mqtt/gateway_int.h"

#include "core/cy_log.h"

int cy_handle_disconnect(cy_conn *c, cy_mqtt_disconnect *p)
{
    cy_mqtt *g = c->g;
    cy_session *s = c->sess;
    if (c->version == CY_MQTT_V5 && (p->props.present & CY_PBIT(CY_PROP_SESSION_EXPIRY))) {
        if (s->expiry == 0 && p->props.session_expiry != 0) return CY_RC_PROTOCOL_ERROR;
        uint32_t e = p->props.session_expiry;
        if (g->cfg->max_session_expiry && e > g->cfg->max_session_expiry)
            e = g->cfg->max_session_expiry;
        if (e == 0) cy_session_forget(g->devices, s);
        s->expiry = e;
    }
    c->clean_disconnect = c->version != CY_MQTT_V5 || p->reason == CY_RC_SUCCESS;
    c->said_bye = true;
    cy_debug(s->client_id, "disconnected (reason 0x%02x)",
             c->version == CY_MQTT_V5 ? p->reason : 0);
    cy_conn_close(c, 0, NULL);
    return 0;
}
