/* mqtt_util: the codec's small pieces: variable byte integers, UTF-8
 * checking and packet type names.
 *
 * A variable byte integer stores 7 bits per byte, least significant group
 * first, with the top bit of each byte saying "another byte follows"; at most
 * 4 bytes (268435455), and (MQTT 5 1.5.5) in the fewest bytes possible, so
 * 0x80 0x00 is malformed, not a long way of writing 0.
 *
 * MQTT strings (1.5.4) are well-formed UTF-8 without U+0000 and without the
 * surrogates U+D800..U+DFFF; overlong forms and code points above U+10FFFF
 * are not UTF-8 at all. Topic names and payloads are mostly ASCII, so the
 * checker tests 8 bytes at a time (no high bit, no zero byte, and for topic
 * names no '+' or '#') and only walks byte by byte from the first byte that
 * needs it.
 */
#include "mqtt/mqtt_int.h"

#include "core/cy_err.h"

#include <string.h>

int cy_mqtt_varint_encode(uint8_t out[4], uint32_t value)
{
    return (int)(cy_mqtt_wrvar(out, value) - out);
}

int cy_mqtt_varint_decode(const uint8_t *buf, size_t len, uint32_t *value, size_t *used)
{
    uint32_t v = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i >= len) return CY_EAGAIN;
        uint8_t b = buf[i];
        v |= (uint32_t)(b & 127u) << (7 * i);
        if (!(b & 128u)) {
            if (b == 0 && i > 0) return CY_EPROTO; /* not the shortest form */
            *value = v;
            *used = i + 1;
            return 0;
        }
    }
    return CY_EPROTO;
}

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Nonzero if some byte of v is zero (exact when no byte has its top bit set). */
static inline uint64_t zero_byte(uint64_t v)
{
    return (v - ONES) & ~v & HIGHS;
}

/* The checker behind both exported functions; `topic` is a constant at each
 * call site, so each gets its own specialised loop. */
static inline bool utf8_check(const uint8_t *p, size_t len, bool topic)
{
    if (len == 0) return true; /* p may be NULL */
    const uint8_t *end = p + len;
    for (;;) {
        while (end - p >= 8) {
            uint64_t v = load64(p);
            uint64_t bad = (v & HIGHS) | zero_byte(v);
            if (topic) bad |= zero_byte(v ^ (ONES * '+')) | zero_byte(v ^ (ONES * '#'));
            if (bad) break;
            p += 8;
        }
        if (p == end) return true;
        /* One character, then back to the fast loop. */
        unsigned c = *p;
        if (c < 0x80) {
            if (c == 0 || (topic && (c == '+' || c == '#'))) return false;
            p++;
            continue;
        }
        if (c < 0xC2) return false; /* continuation byte or overlong 2-byte form */
        if (c < 0xE0) {
            if (end - p < 2 || (p[1] & 0xC0) != 0x80) return false;
            p += 2;
            continue;
        }
        if (c < 0xF0) {
            if (end - p < 3) return false;
            unsigned c1 = p[1];
            if ((c1 & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return false;
            if (c == 0xE0 && c1 < 0xA0) return false;  /* overlong */
            if (c == 0xED && c1 >= 0xA0) return false; /* surrogate */
            p += 3;
            continue;
        }
        if (c < 0xF5) {
            if (end - p < 4) return false;
            unsigned c1 = p[1];
            if ((c1 & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return false;
            if (c == 0xF0 && c1 < 0x90) return false;  /* overlong */
            if (c == 0xF4 && c1 >= 0x90) return false; /* above U+10FFFF */
            p += 4;
            continue;
        }
        return false;
    }
}

bool cy_mqtt_utf8_valid(const char *s, size_t len)
{
    return utf8_check((const uint8_t *)s, len, false);
}

bool cy_mqtt_topic_chars_valid(const char *s, size_t len)
{
    return utf8_check((const uint8_t *)s, len, true);
}

const char *cy_mqtt_type_name(uint8_t type)
{
    static const char *const names[16] = {
        NULL,      "CONNECT",  "CONNACK",    "PUBLISH", "PUBACK",      "PUBREC",
        "PUBREL",  "PUBCOMP",  "SUBSCRIBE",  "SUBACK",  "UNSUBSCRIBE", "UNSUBACK",
        "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH",
    };
    return type < 16 && names[type] ? names[type] : "?";
}
