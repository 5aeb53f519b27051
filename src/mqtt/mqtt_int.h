/* mqtt_int: what the codec's files share and nobody else needs.
 *
 * The property table (the wire type of each property id and the packets it
 * may appear in, MQTT 5 table 2-4), the property block decoder and writer
 * that the packet decoder and encoder call, and small inline readers and
 * writers of big-endian integers. Not part of the module's interface: only
 * the codec's own .c files include it.
 */
#ifndef CY_MQTT_INT_H
#define CY_MQTT_INT_H

#include "mqtt/mqtt.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Wire type of a property value. 0 means "no such property". */
enum {
    PK_NONE = 0,
    PK_BYTE,
    PK_U16,
    PK_U32,
    PK_VARINT,
    PK_STR,  /* UTF-8 string */
    PK_BIN,  /* binary data */
    PK_PAIR, /* UTF-8 string pair */
};

/* Context of a property block: a packet type (1..15), or 0 for the will
 * properties of a CONNECT. */
#define CY_MQTT_CTX_WILL 0

typedef struct cy_mqtt_prop_info {
    uint8_t kind;     /* PK_* */
    uint16_t allowed; /* bit n: may appear in context n */
    uint16_t off;     /* offset of the field in cy_mqtt_props (not for sub ids, pairs) */
} cy_mqtt_prop_info;

/* Indexed by property id; ids >= 64 are all unknown. */
extern const cy_mqtt_prop_info cy_mqtt_prop_table[64];

/* Decode a property block whose length prefix starts at *p, within [*p,
 * end), for context ctx. Fills out (which the caller has zeroed) and
 * advances *p past the block. Errors: CY_EPROTO. */
int cy_mqtt_props_decode(const uint8_t **p, const uint8_t *end, unsigned ctx, cy_mqtt_props *out);

/* Size of the property block body (without its length prefix) as it will be
 * written. Errors: CY_EINVAL (a string over 65535 bytes, a bad subscription
 * identifier, too many of them), CY_EMSGSIZE. */
int cy_mqtt_props_measure(const cy_mqtt_props *p, size_t *len);

/* Write the length prefix (len, from cy_mqtt_props_measure) and the block
 * at w; returns the end of what was written. Cannot fail. */
uint8_t *cy_mqtt_props_write(uint8_t *w, const cy_mqtt_props *p, size_t len);

/* Step over one property of the block blk[0..len) at *pos: its id, and its
 * value's bytes val[0..vlen) (for a pair: both strings with their length
 * prefixes). Returns 1 for a property, 0 at the end, -1 for a malformed or
 * unknown entry. Checks structure only, not UTF-8. */
int cy_mqtt_prop_step(const uint8_t *blk, size_t len, size_t *pos, uint8_t *id, const uint8_t **val,
                      size_t *vlen);

/* UTF-8 per cy_mqtt_utf8_valid, and no '+' or '#': a topic name (which may
 * be empty here; the callers decide about emptiness). */
bool cy_mqtt_topic_chars_valid(const char *s, size_t len);

/* Bytes a variable byte integer of value v takes (v <= CY_MQTT_MAX_REMAINING). */
static inline size_t cy_mqtt_varint_size(uint32_t v)
{
    return v < 128u ? 1 : v < 16384u ? 2 : v < 2097152u ? 3 : 4;
}

static inline uint16_t cy_mqtt_rd16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline uint32_t cy_mqtt_rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint8_t *cy_mqtt_wr16(uint8_t *w, uint16_t v)
{
    w[0] = (uint8_t)(v >> 8);
    w[1] = (uint8_t)v;
    return w + 2;
}

static inline uint8_t *cy_mqtt_wr32(uint8_t *w, uint32_t v)
{
    w[0] = (uint8_t)(v >> 24);
    w[1] = (uint8_t)(v >> 16);
    w[2] = (uint8_t)(v >> 8);
    w[3] = (uint8_t)v;
    return w + 4;
}

static inline uint8_t *cy_mqtt_wrvar(uint8_t *w, uint32_t v)
{
    do {
        uint8_t b = v & 127u;
        v >>= 7;
        *w++ = v ? (uint8_t)(b | 128u) : b;
    } while (v);
    return w;
}

/* A string or binary field: two length bytes, then the bytes. */
static inline uint8_t *cy_mqtt_wrstr(uint8_t *w, const void *s, uint32_t len)
{
    w = cy_mqtt_wr16(w, (uint16_t)len);
    if (len) memcpy(w, s, len);
    return w + len;
}

#endif
