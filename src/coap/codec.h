/* codec: CoAP messages (RFC 7252), pure: no I/O, no allocation, no state.
 *
 * A message is a 4-byte header (version 1, type, token length, code,
 * message id), a token of 0..8 bytes, options in ascending number order
 * (each a delta and a length, 4 bits each with 13/14 extensions, 15
 * reserved), and an optional payload after the 0xFF marker. Decoding
 * checks every rule of RFC 7252 section 3 and points into the input
 * buffer (options and payload are borrowed from it: keep the datagram for
 * as long as the decoded message is used). Encoding writes into a buffer
 * the caller gives, refusing options out of order, and never writes past
 * its capacity.
 *
 * Also here: the block option of RFC 7959 (num, more, szx), option values
 * as unsigned integers, the Uri-Path joined into a topic, and the
 * Uri-Query lookup.
 *
 * Errors: see each function. Thread: any (no shared state).
 */
#ifndef CY_COAP_CODEC_H
#define CY_COAP_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Message types */
enum { CY_COAP_CON = 0, CY_COAP_NON = 1, CY_COAP_ACK = 2, CY_COAP_RST = 3 };

/* Codes: class << 5 | detail (c.dd) */
#define CY_COAP_CODE(c, dd) ((uint8_t)(((c) << 5) | (dd)))
#define CY_COAP_CLASS(code) ((uint8_t)((code) >> 5))
#define CY_COAP_DETAIL(code) ((uint8_t)((code)&0x1f))
enum {
    CY_COAP_EMPTY = 0,
    CY_COAP_GET = 1,
    CY_COAP_POST = 2,
    CY_COAP_PUT = 3,
    CY_COAP_DELETE = 4,
    CY_COAP_CREATED = CY_COAP_CODE(2, 1),
    CY_COAP_DELETED = CY_COAP_CODE(2, 2),
    CY_COAP_VALID = CY_COAP_CODE(2, 3),
    CY_COAP_CHANGED = CY_COAP_CODE(2, 4),
    CY_COAP_CONTENT = CY_COAP_CODE(2, 5),
    CY_COAP_CONTINUE = CY_COAP_CODE(2, 31),
    CY_COAP_BAD_REQUEST = CY_COAP_CODE(4, 0),
    CY_COAP_UNAUTHORIZED = CY_COAP_CODE(4, 1),
    CY_COAP_BAD_OPTION = CY_COAP_CODE(4, 2),
    CY_COAP_FORBIDDEN = CY_COAP_CODE(4, 3),
    CY_COAP_NOT_FOUND = CY_COAP_CODE(4, 4),
    CY_COAP_METHOD_NOT_ALLOWED = CY_COAP_CODE(4, 5),
    CY_COAP_NOT_ACCEPTABLE = CY_COAP_CODE(4, 6),
    CY_COAP_INCOMPLETE = CY_COAP_CODE(4, 8),
    CY_COAP_PRECONDITION_FAILED = CY_COAP_CODE(4, 12),
    CY_COAP_TOO_LARGE = CY_COAP_CODE(4, 13),
    CY_COAP_UNSUPPORTED_FORMAT = CY_COAP_CODE(4, 15),
    CY_COAP_TOO_MANY_REQUESTS = CY_COAP_CODE(4, 29),
    CY_COAP_INTERNAL_ERROR = CY_COAP_CODE(5, 0),
    CY_COAP_NOT_IMPLEMENTED = CY_COAP_CODE(5, 1),
    CY_COAP_UNAVAILABLE = CY_COAP_CODE(5, 3),
    CY_COAP_GATEWAY_TIMEOUT = CY_COAP_CODE(5, 4),
};

/* Option numbers (RFC 7252 5.10, 7641, 7959, 9175, 7967) */
enum {
    CY_COAP_OPT_IF_MATCH = 1,
    CY_COAP_OPT_URI_HOST = 3,
    CY_COAP_OPT_ETAG = 4,
    CY_COAP_OPT_IF_NONE_MATCH = 5,
    CY_COAP_OPT_OBSERVE = 6,
    CY_COAP_OPT_URI_PORT = 7,
    CY_COAP_OPT_LOCATION_PATH = 8,
    CY_COAP_OPT_URI_PATH = 11,
    CY_COAP_OPT_CONTENT_FORMAT = 12,
    CY_COAP_OPT_MAX_AGE = 14,
    CY_COAP_OPT_URI_QUERY = 15,
    CY_COAP_OPT_ACCEPT = 17,
    CY_COAP_OPT_LOCATION_QUERY = 20,
    CY_COAP_OPT_BLOCK2 = 23,
    CY_COAP_OPT_BLOCK1 = 27,
    CY_COAP_OPT_SIZE2 = 28,
    CY_COAP_OPT_PROXY_URI = 35,
    CY_COAP_OPT_PROXY_SCHEME = 39,
    CY_COAP_OPT_SIZE1 = 60,
    CY_COAP_OPT_ECHO = 252,
    CY_COAP_OPT_NO_RESPONSE = 258,
    CY_COAP_OPT_REQUEST_TAG = 292,
};

/* Content formats (RFC 7252 12.3) */
enum { CY_COAP_FMT_TEXT = 0, CY_COAP_FMT_OCTETS = 42, CY_COAP_FMT_JSON = 50 };

#define CY_COAP_HEADER 4
#define CY_COAP_TOKEN_MAX 8
/* Options one message may carry (more: CY_EMSGSIZE from cy_coap_decode). */
#define CY_COAP_MAX_OPTS 40
/* Largest option value cyan accepts (Proxy-Uri's 1034 is the RFC's largest). */
#define CY_COAP_OPT_MAX_LEN 1034

/* Is option number num critical (odd: must be understood)? */
static inline bool cy_coap_opt_critical(uint16_t num)
{
    return num & 1;
}

typedef struct cy_coap_opt {
    uint16_t num;
    uint16_t len;
    const uint8_t *val; /* borrowed from the decoded buffer (NULL when len is 0) */
} cy_coap_opt;

typedef struct cy_coap_msg {
    uint8_t type; /* CY_COAP_CON... */
    uint8_t code;
    uint16_t mid;
    uint8_t tkl; /* token length, 0..8 */
    uint8_t token[CY_COAP_TOKEN_MAX];
    uint16_t n_opts;
    cy_coap_opt opts[CY_COAP_MAX_OPTS]; /* in wire order (ascending numbers, repeats kept) */
    const uint8_t *payload;             /* borrowed; NULL when payload_len is 0 */
    size_t payload_len;
} cy_coap_msg;

/* Decode one datagram (buf[0..len), borrowed by *out).
 * Returns 0, or:
 *   CY_EINVAL   shorter than 4 bytes, or a version other than 1: nothing
 *               is known of it (RFC: silently ignore);
 *   CY_EPROTO   a message format error after a valid header: type, code
 *               and mid of *out are set (reject a CON with RST, ignore a
 *               NON, ignore an ACK or RST). Format errors: token length
 *               9..15, a token running past the end, an option delta or
 *               length nibble of 15 outside the payload marker, an option
 *               running past the end, an option number over 65535, a
 *               payload marker with no payload after it, an empty message
 *               (code 0.00) with a token, options or payload;
 *   CY_EMSGSIZE more than CY_COAP_MAX_OPTS options, or one longer than
 *               CY_COAP_OPT_MAX_LEN: the header and token of *out are set
 *               (a request gets 4.02 Bad Option: the dispatcher answers).
 *               The whole message is read first: a format error anywhere
 *               in it makes the answer CY_EPROTO instead.
 * On any error *out has no options and no payload (n_opts 0, payload
 * NULL), and no token (tkl 0) except with CY_EMSGSIZE.
 * Reserved code classes (1, 6, 7) are not refused here, nor are the rules
 * of section 4 (a NON or RST that is empty or not, a request in an ACK):
 * those are the dispatcher's. */
int cy_coap_decode(const uint8_t *buf, size_t len, cy_coap_msg *out);

/* The first option numbered num, or NULL. */
const cy_coap_opt *cy_coap_opt_find(const cy_coap_msg *m, uint16_t num);
/* How many options are numbered num. */
unsigned cy_coap_opt_count(const cy_coap_msg *m, uint16_t num);
/* Option value as an unsigned integer (0..4 bytes, network order, empty
 * = 0). CY_EPROTO if longer than 4 bytes. */
int cy_coap_opt_uint(const cy_coap_opt *o, uint32_t *v);
/* The first critical option (odd number) not in known[0..n): its number,
 * or 0 if every critical option is known. A request with one gets 4.02. */
uint16_t cy_coap_unknown_critical(const cy_coap_msg *m, const uint16_t *known, size_t n);

/* The Uri-Path segments joined with '/', NUL-terminated, in out[0..cap).
 * *len: the length without the NUL. An empty path ("/" or no Uri-Path) is
 * "": one empty Uri-Path option alone is also the root (RFC 7252 6.5 makes
 * it "/"), any other empty segment is refused. Errors: CY_EINVAL (a
 * segment is empty, holds '/', a NUL byte, '+' or '#', or is not valid
 * UTF-8: such a path cannot be a topic; checked before the size),
 * CY_EMSGSIZE (longer than cap - 1). On error out is "" (when cap > 0) and
 * *len 0. out may be NULL when cap is 0. */
int cy_coap_uri_path(const cy_coap_msg *m, char *out, size_t cap, size_t *len);
/* The value of the first Uri-Query "key=value" whose key is key (the
 * value borrowed from the message, *vlen its length; *val NULL when *vlen
 * is 0), or CY_ENOENT. The key of an option is its bytes before the first
 * '=' and must equal key exactly (case matters; key "" finds "=v"). An
 * option without '=' ("debug") is its key with an empty value: found, *vlen
 * 0, the same as "debug=". val and vlen may be NULL (presence only).
 * CY_EINVAL if key is NULL. */
int cy_coap_query(const cy_coap_msg *m, const char *key, const uint8_t **val, size_t *vlen);

/* Block1 / Block2 (RFC 7959 2.2): num (up to 20 bits), more, szx 0..6
 * (size = 16 << szx). */
typedef struct cy_coap_block {
    uint32_t num;
    bool more;
    uint8_t szx;
} cy_coap_block;
/* CY_EPROTO: longer than 3 bytes, or szx 7 (reserved, BERT only on TCP). */
int cy_coap_block_decode(const cy_coap_opt *o, cy_coap_block *b);
/* The option value of b (write it with cy_coap_w_opt_uint): num must fit
 * 20 bits, or the value is one cy_coap_block_decode refuses. */
uint32_t cy_coap_block_value(const cy_coap_block *b);
static inline size_t cy_coap_block_size(uint8_t szx)
{
    return (size_t)16 << szx;
}

/* ---- encoding ---- */

typedef struct cy_coap_writer {
    uint8_t *buf; /* borrowed */
    size_t cap, len;
    uint16_t last_opt; /* number of the last option written */
    int err;           /* sticky: the first error */
    bool payload;      /* cy_coap_w_payload was called: no option may follow */
} cy_coap_writer;

/* Start a message in buf[0..cap) (borrowed; buf may be NULL when cap is
 * 0): header and token (tkl 0..8, copied; token may be NULL when tkl is 0).
 * Every call writes all its bytes or none: after an error nothing more is
 * written, and nothing is ever written past cap. The writer refuses what
 * the decoder would (CY_EINVAL): a type over 3, and an empty message (code
 * 0.00) with a token, an option or a payload. */
void cy_coap_w_init(cy_coap_writer *w, uint8_t *buf, size_t cap, uint8_t type, uint8_t code,
                    uint16_t mid, const uint8_t *token, uint8_t tkl);
/* Append an option (val copied; NULL when len is 0). Numbers must not
 * decrease (CY_EINVAL, sticky); repeats are kept. */
void cy_coap_w_opt(cy_coap_writer *w, uint16_t num, const void *val, size_t len);
/* An unsigned integer option in its shortest form (0 is empty). */
void cy_coap_w_opt_uint(cy_coap_writer *w, uint16_t num, uint32_t v);
/* The payload (copied; none when len is 0: no marker is written). Once
 * only; after it no option may follow (CY_EINVAL). */
void cy_coap_w_payload(cy_coap_writer *w, const void *p, size_t len);
/* 0 and *len the message's length, or the first error: CY_EMSGSIZE (did
 * not fit), CY_EINVAL (options out of order, a token over 8 bytes, an
 * option after the payload, an option longer than 65535 + 269). */
int cy_coap_w_end(cy_coap_writer *w, size_t *len);
/* An empty ACK or RST (4 bytes) for mid into buf. Returns 4. (Only the
 * low 2 bits of type are used: CON makes a CoAP ping.) */
size_t cy_coap_empty(uint8_t buf[CY_COAP_HEADER], uint8_t type, uint16_t mid);

/* "2.05", "4.04"... for logs: written into buf (NUL-terminated), which is
 * returned. */
const char *cy_coap_code_text(uint8_t code, char buf[8]);

#endif
