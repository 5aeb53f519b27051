/* mqtt: the MQTT 3.1.1 and 5.0 codec. Bytes in, structs out, and back.
 *
 * The codec knows the wire format and its well-formedness rules and nothing
 * else: no sessions, no routing, no I/O. It is zero-copy on decode: every
 * string, binary field and property block in a decoded packet points into
 * the caller's input buffer (borrowed), so a decoded packet is valid only as
 * long as that buffer is unchanged.
 *
 * Framing. A packet is a fixed header (type and flags byte, then the
 * remaining length as a variable byte integer of 1 to 4 bytes) followed by
 * "remaining length" bytes. cy_mqtt_frame finds the packet boundary in a
 * stream; cy_mqtt_decode decodes one whole packet.
 *
 * Versions. 3 is MQTT 3.1 ("MQIsdp"), 4 is 3.1.1, 5 is 5.0. CONNECT carries
 * the version; every other packet is decoded with the version the connection
 * negotiated. Properties exist only in version 5.
 *
 * Errors. CY_EAGAIN: the bytes so far are a valid prefix, more are needed.
 * CY_EMSGSIZE: the packet is larger than the given maximum. CY_EPROTO: the
 * bytes can never become a valid packet (malformed: a bad remaining length,
 * reserved flag bits set, a string that is not UTF-8 or holds U+0000, a
 * property that is unknown, duplicated or not allowed in this packet, a
 * length that runs past the packet, bytes left over at the end, QoS 3, ...).
 * CY_ENOMEM only from the encoder.
 *
 * Thread: any; no state.
 */
#ifndef CY_MQTT_H
#define CY_MQTT_H

#include "core/cy_buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    CY_MQTT_V31 = 3,
    CY_MQTT_V311 = 4,
    CY_MQTT_V5 = 5,
};

enum {
    CY_MQTT_CONNECT = 1,
    CY_MQTT_CONNACK = 2,
    CY_MQTT_PUBLISH = 3,
    CY_MQTT_PUBACK = 4,
    CY_MQTT_PUBREC = 5,
    CY_MQTT_PUBREL = 6,
    CY_MQTT_PUBCOMP = 7,
    CY_MQTT_SUBSCRIBE = 8,
    CY_MQTT_SUBACK = 9,
    CY_MQTT_UNSUBSCRIBE = 10,
    CY_MQTT_UNSUBACK = 11,
    CY_MQTT_PINGREQ = 12,
    CY_MQTT_PINGRESP = 13,
    CY_MQTT_DISCONNECT = 14,
    CY_MQTT_AUTH = 15,
};

/* Largest remaining length the wire format can express. */
#define CY_MQTT_MAX_REMAINING 268435455u
/* Most subscription identifiers one encoded PUBLISH may carry. */
#define CY_MQTT_MAX_SUB_IDS 32

/* MQTT 5 reason codes used by cyan (values from the specification, 2.4). */
enum {
    CY_RC_SUCCESS = 0x00,
    CY_RC_GRANTED_QOS1 = 0x01,
    CY_RC_GRANTED_QOS2 = 0x02,
    CY_RC_DISCONNECT_WITH_WILL = 0x04,
    CY_RC_NO_MATCHING_SUBSCRIBERS = 0x10,
    CY_RC_NO_SUBSCRIPTION_EXISTED = 0x11,
    CY_RC_UNSPECIFIED = 0x80,
    CY_RC_MALFORMED = 0x81,
    CY_RC_PROTOCOL_ERROR = 0x82,
    CY_RC_IMPL_SPECIFIC = 0x83,
    CY_RC_UNSUPPORTED_VERSION = 0x84,
    CY_RC_CLIENT_ID_INVALID = 0x85,
    CY_RC_BAD_USER_OR_PASSWORD = 0x86,
    CY_RC_NOT_AUTHORIZED = 0x87,
    CY_RC_SERVER_UNAVAILABLE = 0x88,
    CY_RC_SERVER_BUSY = 0x89,
    CY_RC_BANNED = 0x8A,
    CY_RC_SERVER_SHUTTING_DOWN = 0x8B,
    CY_RC_BAD_AUTH_METHOD = 0x8C,
    CY_RC_KEEP_ALIVE_TIMEOUT = 0x8D,
    CY_RC_SESSION_TAKEN_OVER = 0x8E,
    CY_RC_TOPIC_FILTER_INVALID = 0x8F,
    CY_RC_TOPIC_NAME_INVALID = 0x90,
    CY_RC_PACKET_ID_IN_USE = 0x91,
    CY_RC_PACKET_ID_NOT_FOUND = 0x92,
    CY_RC_RECEIVE_MAX_EXCEEDED = 0x93,
    CY_RC_TOPIC_ALIAS_INVALID = 0x94,
    CY_RC_PACKET_TOO_LARGE = 0x95,
    CY_RC_MESSAGE_RATE_TOO_HIGH = 0x96,
    CY_RC_QUOTA_EXCEEDED = 0x97,
    CY_RC_ADMIN_ACTION = 0x98,
    CY_RC_PAYLOAD_FORMAT_INVALID = 0x99,
    CY_RC_RETAIN_NOT_SUPPORTED = 0x9A,
    CY_RC_QOS_NOT_SUPPORTED = 0x9B,
    CY_RC_SHARED_SUB_NOT_SUPPORTED = 0x9E,
    CY_RC_CONNECTION_RATE_EXCEEDED = 0x9F,
    CY_RC_MAX_CONNECT_TIME = 0xA0,
    CY_RC_SUB_IDS_NOT_SUPPORTED = 0xA1,
    CY_RC_WILDCARD_SUB_NOT_SUPPORTED = 0xA2,
};

/* MQTT 3.1.1 CONNACK return codes. */
enum {
    CY_RC3_ACCEPTED = 0,
    CY_RC3_BAD_VERSION = 1,
    CY_RC3_ID_REJECTED = 2,
    CY_RC3_SERVER_UNAVAILABLE = 3,
    CY_RC3_BAD_USER_OR_PASSWORD = 4,
    CY_RC3_NOT_AUTHORIZED = 5,
};

/* Property identifiers (MQTT 5, 2.2.2.2). */
enum {
    CY_PROP_PAYLOAD_FORMAT = 0x01,
    CY_PROP_MESSAGE_EXPIRY = 0x02,
    CY_PROP_CONTENT_TYPE = 0x03,
    CY_PROP_RESPONSE_TOPIC = 0x08,
    CY_PROP_CORRELATION_DATA = 0x09,
    CY_PROP_SUBSCRIPTION_ID = 0x0B,
    CY_PROP_SESSION_EXPIRY = 0x11,
    CY_PROP_ASSIGNED_CLIENT_ID = 0x12,
    CY_PROP_SERVER_KEEP_ALIVE = 0x13,
    CY_PROP_AUTH_METHOD = 0x15,
    CY_PROP_AUTH_DATA = 0x16,
    CY_PROP_REQUEST_PROBLEM_INFO = 0x17,
    CY_PROP_WILL_DELAY = 0x18,
    CY_PROP_REQUEST_RESPONSE_INFO = 0x19,
    CY_PROP_RESPONSE_INFO = 0x1A,
    CY_PROP_SERVER_REFERENCE = 0x1C,
    CY_PROP_REASON_STRING = 0x1F,
    CY_PROP_RECEIVE_MAX = 0x21,
    CY_PROP_TOPIC_ALIAS_MAX = 0x22,
    CY_PROP_TOPIC_ALIAS = 0x23,
    CY_PROP_MAX_QOS = 0x24,
    CY_PROP_RETAIN_AVAILABLE = 0x25,
    CY_PROP_USER = 0x26,
    CY_PROP_MAX_PACKET_SIZE = 0x27,
    CY_PROP_WILDCARD_SUB_AVAILABLE = 0x28,
    CY_PROP_SUB_ID_AVAILABLE = 0x29,
    CY_PROP_SHARED_SUB_AVAILABLE = 0x2A,
};

/* Bit for property id in cy_mqtt_props.present: CY_PBIT(CY_PROP_TOPIC_ALIAS). */
#define CY_PBIT(id) (UINT64_C(1) << (id))

/* The properties of one packet (or of a will message).
 *
 * Decode: the decoder sets the bit of every property it saw in `present` and
 * fills its field (the fields of absent properties are zero); user
 * properties are counted in n_user and left in the raw block (iterate with
 * cy_mqtt_props_next_user); `raw` is the whole property block (without its
 * length prefix). Subscription identifiers: the first is in sub_ids[0], the
 * count in n_sub_ids (a decoded PUBLISH from a server may carry several; up
 * to CY_MQTT_MAX_SUB_IDS are kept).
 *
 * Encode: every field whose bit is in `present` is written (in ascending id
 * order); then the subscription identifiers sub_ids[0..n_sub_ids) if
 * CY_PROP_SUBSCRIPTION_ID is present (or out_sub_ids when set, see below);
 * then each user property found in user_src[0..user_src_len) (a property
 * block; entries that are not user properties are skipped); then extra[0..
 * extra_len) verbatim (already encoded properties, e.g. the pass-through
 * properties of a forwarded message). `raw` is ignored by the encoder.
 */
typedef struct cy_mqtt_props {
    uint64_t present;
    uint8_t payload_format;
    uint8_t request_problem_info;
    uint8_t request_response_info;
    uint8_t max_qos;
    uint8_t retain_available;
    uint8_t wildcard_sub_available;
    uint8_t sub_id_available;
    uint8_t shared_sub_available;
    uint16_t server_keep_alive;
    uint16_t receive_max;
    uint16_t topic_alias_max;
    uint16_t topic_alias;
    uint32_t message_expiry;
    uint32_t session_expiry;
    uint32_t will_delay;
    uint32_t max_packet_size;
    cy_str content_type;
    cy_str response_topic;
    cy_str correlation_data;
    cy_str assigned_client_id;
    cy_str auth_method;
    cy_str auth_data;
    cy_str response_info;
    cy_str server_reference;
    cy_str reason_string;
    uint32_t n_sub_ids;
    uint32_t sub_ids[CY_MQTT_MAX_SUB_IDS];
    const uint32_t *out_sub_ids; /* encode only: if set, used instead of sub_ids (borrowed) */
    uint32_t n_user;
    const uint8_t *user_src; /* borrowed */
    size_t user_src_len;
    const uint8_t *extra; /* borrowed */
    size_t extra_len;
    const uint8_t *raw; /* decode only, borrowed from the input */
    size_t raw_len;
} cy_mqtt_props;

typedef struct cy_mqtt_connect {
    uint8_t version; /* 3, 4 or 5 */
    bool clean_start;
    uint16_t keep_alive; /* seconds */
    cy_str client_id;
    bool has_username;
    bool has_password;
    cy_str username;
    cy_str password; /* binary */
    bool will;
    uint8_t will_qos;
    bool will_retain;
    cy_str will_topic;
    cy_str will_payload; /* binary */
    cy_mqtt_props will_props;
    cy_mqtt_props props;
} cy_mqtt_connect;

typedef struct cy_mqtt_connack {
    bool session_present;
    uint8_t reason; /* v5 reason code, or 3.1.1 return code */
    cy_mqtt_props props;
} cy_mqtt_connack;

typedef struct cy_mqtt_publish {
    uint8_t qos;
    bool dup;
    bool retain;
    cy_str topic; /* may be empty in v5 when a topic alias is used */
    uint16_t packet_id; /* 0 for QoS 0 */
    const uint8_t *payload;
    size_t payload_len;
    cy_mqtt_props props;
} cy_mqtt_publish;

/* PUBACK, PUBREC, PUBREL, PUBCOMP. On decode, reason is 0 when absent. On
 * encode in v5, the reason code and properties are omitted when the reason
 * is 0 and there are no properties (the short form, 2.4). */
typedef struct cy_mqtt_ack {
    uint16_t packet_id;
    uint8_t reason;
    cy_mqtt_props props;
} cy_mqtt_ack;

/* One topic filter of a SUBSCRIBE with its options. */
typedef struct cy_mqtt_sub_entry {
    cy_str filter;
    uint8_t qos;
    bool no_local;
    bool retain_as_published;
    uint8_t retain_handling; /* 0, 1 or 2 */
} cy_mqtt_sub_entry;

/* SUBSCRIBE and UNSUBSCRIBE keep their topic list as raw bytes; walk it
 * with cy_mqtt_sub_next / cy_mqtt_unsub_next. count is the number of
 * entries (at least 1: an empty list is CY_EPROTO). For encode, the caller
 * provides `entries` (SUBSCRIBE) or `filters` (UNSUBSCRIBE) instead. */
typedef struct cy_mqtt_subscribe {
    uint16_t packet_id;
    cy_mqtt_props props;
    const uint8_t *list; /* decode: borrowed */
    size_t list_len;
    uint32_t count;
    const cy_mqtt_sub_entry *entries; /* encode: borrowed, count of them */
    const cy_str *filters;            /* encode (UNSUBSCRIBE): borrowed, count of them */
} cy_mqtt_subscribe;

/* SUBACK and UNSUBACK: one reason code per topic filter. (3.1.1 UNSUBACK
 * has none: count is 0.) */
typedef struct cy_mqtt_suback {
    uint16_t packet_id;
    cy_mqtt_props props;
    const uint8_t *reasons; /* borrowed */
    uint32_t count;
} cy_mqtt_suback;

/* DISCONNECT and AUTH. */
typedef struct cy_mqtt_disconnect {
    uint8_t reason;
    cy_mqtt_props props;
} cy_mqtt_disconnect;

typedef struct cy_mqtt_packet {
    uint8_t type;  /* CY_MQTT_* */
    uint8_t flags; /* low 4 bits of the first byte */
    union {
        cy_mqtt_connect connect;
        cy_mqtt_connack connack;
        cy_mqtt_publish publish;
        cy_mqtt_ack ack;
        cy_mqtt_subscribe subscribe; /* SUBSCRIBE and UNSUBSCRIBE */
        cy_mqtt_suback suback;       /* SUBACK and UNSUBACK */
        cy_mqtt_disconnect disconnect; /* DISCONNECT and AUTH */
    } u;
} cy_mqtt_packet;

/* Find the packet at the start of buf[0..len).
 * On success, *pkt_len is the whole packet's size (fixed header included).
 * Errors: CY_EAGAIN (fixed header or body incomplete), CY_EPROTO (remaining
 * length longer than 4 bytes), CY_EMSGSIZE (*pkt_len > max_size; *pkt_len is
 * still set so the caller can report it). max_size 0 means no limit.
 * *pkt_len is also set with CY_EAGAIN once the fixed header is complete. A
 * remaining length not in its shortest form (0x80 0x00) is CY_EPROTO. */
int cy_mqtt_frame(const uint8_t *buf, size_t len, uint32_t max_size, size_t *pkt_len);

/* Decode the packet at the start of buf[0..len) (framing included, so a
 * truncated packet gives CY_EAGAIN). version is the connection's protocol
 * version; it is ignored for CONNECT, whose own version is decoded. Checks
 * every well-formedness rule of the specification that can be checked
 * without session state, including UTF-8 validity of strings and topic
 * names (no wildcards in a PUBLISH topic, a non-empty topic unless v5 with a
 * topic alias), packet id non-zero where required, which properties each
 * packet may carry. On success *used is the packet size.
 * version 5 selects the MQTT 5 rules, any other value the 3.1.1 ones (so 0
 * works for the first packet of a connection).
 * CONNECT with protocol name "MQTT" and a level other than 4 or 5, or
 * "MQIsdp" and a level other than 3: CY_ENOTSUP, with out->type set,
 * out->u.connect.version the level seen (the rest of out->u.connect zero)
 * and *used set, so the server can answer "unsupported protocol version"
 * (0x84, or 3.1.1 return code 1). Any other protocol name is CY_EPROTO. */
int cy_mqtt_decode(const uint8_t *buf, size_t len, uint8_t version, cy_mqtt_packet *out,
                   size_t *used);

/* Walk a decoded SUBSCRIBE list. *pos starts at 0. Returns 1 and fills *e
 * while entries remain, 0 at the end. (The list was validated by decode.) */
int cy_mqtt_sub_next(const cy_mqtt_subscribe *s, uint8_t version, size_t *pos,
                     cy_mqtt_sub_entry *e);
/* Walk a decoded UNSUBSCRIBE list. */
int cy_mqtt_unsub_next(const cy_mqtt_subscribe *s, size_t *pos, cy_str *filter);
/* Walk the user properties of a decoded property block. *pos starts at 0.
 * Returns 1 with key and value while some remain, 0 at the end. */
int cy_mqtt_props_next_user(const cy_mqtt_props *p, size_t *pos, cy_str *key, cy_str *value);

/* Append the encoding of p to out for the given protocol version (for
 * CONNECT, p->u.connect.version is used). Property fields are ignored for
 * versions below 5 (version 5 selects the MQTT 5 layout, any other value the
 * 3.1.1 one, as for decode). p->flags is ignored: the fixed header flags
 * come from the packet type and, for PUBLISH, from dup/qos/retain.
 * Errors: CY_ENOMEM; CY_EMSGSIZE if the packet would exceed
 * CY_MQTT_MAX_REMAINING; CY_EINVAL for a packet that cannot be encoded
 * (QoS > 2, a string over 65535 bytes, a subscription identifier of 0,
 * an empty SUBSCRIBE/UNSUBSCRIBE/SUBACK list). On error out is unchanged. */
int cy_mqtt_encode(cy_buf *out, uint8_t version, const cy_mqtt_packet *p);

/* Size in bytes of the encoding of the property block of p (without its
 * length prefix), as cy_mqtt_encode would write it; 0 if p cannot be
 * encoded (cy_mqtt_props_encode then fails). Scanning user_src stops at its
 * first malformed entry (here and in every encoder). */
size_t cy_mqtt_props_size(const cy_mqtt_props *p);
/* Append the encoded property block (length prefix first) to out. */
int cy_mqtt_props_encode(cy_buf *out, const cy_mqtt_props *p);

/* Variable byte integer helpers (1 to 4 bytes, values up to 268435455). */
int cy_mqtt_varint_encode(uint8_t out[4], uint32_t value); /* returns the byte count */
/* Returns CY_EAGAIN if truncated, CY_EPROTO if over 4 bytes or not in the
 * shortest form (MQTT 5 1.5.5). *used bytes read. */
int cy_mqtt_varint_decode(const uint8_t *buf, size_t len, uint32_t *value, size_t *used);

/* UTF-8 well-formedness per MQTT (1.5.4): valid UTF-8, no U+0000, no
 * surrogates. Returns true if s is acceptable. Control characters are
 * allowed (the spec only says SHOULD NOT). */
bool cy_mqtt_utf8_valid(const char *s, size_t len);

/* Name of a packet type for logs ("PUBLISH"); "?" when unknown. */
const char *cy_mqtt_type_name(uint8_t type);

#endif
