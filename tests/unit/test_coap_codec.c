/* Tests of the CoAP codec (src/coap/codec.c): messages written by hand from
 * RFC 7252 (a CON GET and its piggybacked 2.05, empty ACK/RST/ping), decoded
 * and encoded byte for byte; every format error class; option deltas and
 * lengths at the edges of the 13/14 extensions (12/13/268/269, Echo 252,
 * No-Response 258, Request-Tag 292, 65535); repeated options and the
 * option limits; the writer at every capacity below a message's size (a
 * guard byte proves it never writes past cap) and its refusals; unsigned
 * integer and block options; the Uri-Path and Uri-Query helpers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coap/codec.h"
#include "core/cy_err.h"

#include <string.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* Decode, expect rc; the message in *m. */
static void decode(const uint8_t *b, size_t len, int rc, cy_coap_msg *m)
{
    assert_int_equal(cy_coap_decode(b, len, m), rc);
}

static void assert_opt(const cy_coap_opt *o, uint16_t num, const char *val)
{
    assert_non_null(o);
    assert_int_equal(o->num, num);
    assert_int_equal(o->len, strlen(val));
    if (o->len)
        assert_memory_equal(o->val, val, o->len);
    else
        assert_null(o->val);
}

/* Encode m again with the writer into buf (cap); returns the writer's rc. */
static int encode(const cy_coap_msg *m, uint8_t *buf, size_t cap, size_t *len)
{
    cy_coap_writer w;
    cy_coap_w_init(&w, buf, cap, m->type, m->code, m->mid, m->token, m->tkl);
    for (unsigned i = 0; i < m->n_opts; i++)
        cy_coap_w_opt(&w, m->opts[i].num, m->opts[i].val, m->opts[i].len);
    cy_coap_w_payload(&w, m->payload, m->payload_len);
    return cy_coap_w_end(&w, len);
}

/* The message decodes, and encodes again to the very same bytes. */
static void assert_round_trip(const uint8_t *b, size_t len, cy_coap_msg *m)
{
    static uint8_t out[70000];
    size_t olen = 0;
    decode(b, len, 0, m);
    assert_int_equal(encode(m, out, sizeof(out), &olen), 0);
    assert_int_equal(olen, len);
    assert_memory_equal(out, b, len);
}

/* ---- RFC 7252 messages ---- */

/* CON GET /temperature, mid 0x7d34, token 0x71 0x72 (appendix A style). */
static const uint8_t GET_TEMP[] = {0x42, 0x01, 0x7d, 0x34, 0x71, 0x72, 0xbb, 't', 'e',
                                   'm',  'p',  'e',  'r',  'a',  't',  'u',  'r', 'e'};
/* Its piggybacked answer: ACK 2.05, same mid and token, Content-Format 0
 * (text/plain, an empty uint), payload "22.3 C". */
static const uint8_t CONTENT[] = {0x62, 0x45, 0x7d, 0x34, 0x71, 0x72, 0xc0,
                                  0xff, '2',  '2',  '.',  '3',  ' ',  'C'};

static void test_cy_coap_decode_rfc_get(void **state)
{
    cy_coap_msg m;
    decode(GET_TEMP, sizeof(GET_TEMP), 0, &m);
    assert_int_equal(m.type, CY_COAP_CON);
    assert_int_equal(m.code, CY_COAP_GET);
    assert_int_equal(m.mid, 0x7d34);
    assert_int_equal(m.tkl, 2);
    assert_memory_equal(m.token, "\x71\x72", 2);
    assert_int_equal(m.n_opts, 1);
    assert_opt(&m.opts[0], CY_COAP_OPT_URI_PATH, "temperature");
    assert_null(m.payload);
    assert_int_equal(m.payload_len, 0);
    /* the option value points into the datagram */
    assert_ptr_equal(m.opts[0].val, GET_TEMP + 7);
    assert_round_trip(GET_TEMP, sizeof(GET_TEMP), &m);
}

static void test_cy_coap_decode_rfc_piggybacked(void **state)
{
    cy_coap_msg m;
    decode(CONTENT, sizeof(CONTENT), 0, &m);
    assert_int_equal(m.type, CY_COAP_ACK);
    assert_int_equal(m.code, CY_COAP_CONTENT);
    assert_int_equal(m.mid, 0x7d34);
    assert_int_equal(m.tkl, 2);
    assert_int_equal(m.n_opts, 1);
    assert_opt(&m.opts[0], CY_COAP_OPT_CONTENT_FORMAT, "");
    uint32_t v = 99;
    assert_int_equal(cy_coap_opt_uint(&m.opts[0], &v), 0);
    assert_int_equal(v, CY_COAP_FMT_TEXT);
    assert_int_equal(m.payload_len, 6);
    assert_memory_equal(m.payload, "22.3 C", 6);
    assert_round_trip(CONTENT, sizeof(CONTENT), &m);
}

/* The writer, called as a server would, gives the RFC bytes. */
static void test_cy_coap_w_rfc_messages(void **state)
{
    uint8_t buf[64];
    size_t len = 0;
    cy_coap_writer w;
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 0x7d34,
                   (const uint8_t *)"\x71\x72", 2);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "temperature", 11);
    cy_coap_w_payload(&w, NULL, 0);
    assert_int_equal(cy_coap_w_end(&w, &len), 0);
    assert_int_equal(len, sizeof(GET_TEMP));
    assert_memory_equal(buf, GET_TEMP, len);

    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_ACK, CY_COAP_CONTENT, 0x7d34,
                   (const uint8_t *)"\x71\x72", 2);
    cy_coap_w_opt_uint(&w, CY_COAP_OPT_CONTENT_FORMAT, CY_COAP_FMT_TEXT);
    cy_coap_w_payload(&w, "22.3 C", 6);
    assert_int_equal(cy_coap_w_end(&w, &len), 0);
    assert_int_equal(len, sizeof(CONTENT));
    assert_memory_equal(buf, CONTENT, len);
}

/* Observe registration (RFC 7641: Observe 0, an empty uint), a Block1
 * request (RFC 7959: 0/1/128 is 0x0b), an Echo challenge (RFC 9175) and
 * No-Response (RFC 7967) / Request-Tag: each round trips. */
static void test_cy_coap_decode_rfc_extensions(void **state)
{
    cy_coap_msg m;
    static const uint8_t observe[] = {0x41, 0x01, 0x00, 0x01, 0xaa, 0x60, 0x52,
                                      'd',  'v',  0x04, 'e',  'v',  'n',  't'};
    assert_round_trip(observe, sizeof(observe), &m);
    assert_opt(cy_coap_opt_find(&m, CY_COAP_OPT_OBSERVE), CY_COAP_OPT_OBSERVE, "");
    assert_int_equal(cy_coap_opt_count(&m, CY_COAP_OPT_URI_PATH), 2);

    static const uint8_t block1[] = {0x40, 0x03, 0x12, 0x34, 0xb7, 'o',  'p', 't', 'i', 'o',
                                     'n',  's',  0xd1, 0x03, 0x0b, 0xff, 'x', 'y', 'z'};
    assert_round_trip(block1, sizeof(block1), &m);
    cy_coap_block b;
    assert_int_equal(cy_coap_block_decode(cy_coap_opt_find(&m, CY_COAP_OPT_BLOCK1), &b), 0);
    assert_int_equal(b.num, 0);
    assert_true(b.more);
    assert_int_equal(b.szx, 3);
    assert_int_equal(cy_coap_block_size(b.szx), 128);

    /* 4.01 with an 8-byte Echo (252 = 13 + 239) */
    static const uint8_t echo[] = {0x60, 0x81, 0x00, 0x02, 0xd8, 0xef, 1, 2, 3, 4, 5, 6, 7, 8};
    assert_round_trip(echo, sizeof(echo), &m);
    assert_int_equal(m.code, CY_COAP_UNAUTHORIZED);
    assert_int_equal(m.n_opts, 1);
    assert_int_equal(m.opts[0].num, CY_COAP_OPT_ECHO);
    assert_int_equal(m.opts[0].len, 8);

    /* POST with Echo, No-Response 26 (258 - 252 = 6) and Request-Tag
     * (292 - 258 = 34 = 13 + 21) */
    static const uint8_t post[] = {0x50, 0x02, 0x00, 0x03, 0xd2, 0xef, 0xa1, 0xb2,
                                   0x61, 26,   0xd1, 21,   0x07, 0xff, '1'};
    assert_round_trip(post, sizeof(post), &m);
    assert_int_equal(m.type, CY_COAP_NON);
    assert_int_equal(m.n_opts, 3);
    assert_int_equal(m.opts[0].num, CY_COAP_OPT_ECHO);
    assert_int_equal(m.opts[1].num, CY_COAP_OPT_NO_RESPONSE);
    assert_int_equal(m.opts[2].num, CY_COAP_OPT_REQUEST_TAG);
    uint32_t v;
    assert_int_equal(cy_coap_opt_uint(&m.opts[1], &v), 0);
    assert_int_equal(v, 26);
}

static void test_cy_coap_decode_empty(void **state)
{
    cy_coap_msg m;
    uint8_t buf[CY_COAP_HEADER];
    static const uint8_t ack[] = {0x60, 0x00, 0xbe, 0xef};
    static const uint8_t rst[] = {0x70, 0x00, 0x00, 0x01};
    static const uint8_t ping[] = {0x40, 0x00, 0x12, 0x34};

    assert_int_equal(cy_coap_empty(buf, CY_COAP_ACK, 0xbeef), 4);
    assert_memory_equal(buf, ack, 4);
    assert_int_equal(cy_coap_empty(buf, CY_COAP_RST, 1), 4);
    assert_memory_equal(buf, rst, 4);

    assert_round_trip(ack, 4, &m);
    assert_int_equal(m.type, CY_COAP_ACK);
    assert_int_equal(m.code, CY_COAP_EMPTY);
    assert_int_equal(m.mid, 0xbeef);
    assert_int_equal(m.tkl, 0);
    assert_int_equal(m.n_opts, 0);
    assert_round_trip(rst, 4, &m);
    assert_int_equal(m.type, CY_COAP_RST);
    assert_round_trip(ping, 4, &m); /* CoAP ping: an empty CON */
    assert_int_equal(m.type, CY_COAP_CON);
}

/* ---- format errors ---- */

struct bad {
    const char *what;
    uint8_t b[24];
    size_t len;
    int rc;
};

static void test_cy_coap_decode_format_errors(void **state)
{
    static const struct bad cases[] = {
        {"empty datagram", {0}, 0, CY_EINVAL},
        {"1 byte", {0x40}, 1, CY_EINVAL},
        {"3 bytes", {0x40, 0x01, 0x00}, 3, CY_EINVAL},
        {"version 0", {0x00, 0x01, 0x00, 0x01}, 4, CY_EINVAL},
        {"version 2", {0x80, 0x01, 0x00, 0x01}, 4, CY_EINVAL},
        {"version 3", {0xc0, 0x00, 0x00, 0x01}, 4, CY_EINVAL},
        {"tkl 9", {0x49, 0x01, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 13, CY_EPROTO},
        {"tkl 15", {0x4f, 0x01, 0x12, 0x34}, 4, CY_EPROTO},
        {"token short", {0x44, 0x01, 0x12, 0x34, 1, 2, 3}, 7, CY_EPROTO},
        {"delta 15", {0x40, 0x01, 0x12, 0x34, 0xf0}, 5, CY_EPROTO},
        {"length 15", {0x40, 0x01, 0x12, 0x34, 0x1f, 'x'}, 6, CY_EPROTO},
        {"delta 15 after an option", {0x40, 0x01, 0x12, 0x34, 0xb1, 'a', 0xf1, 'b'}, 8, CY_EPROTO},
        {"delta 13, no byte", {0x40, 0x01, 0x12, 0x34, 0xd0}, 5, CY_EPROTO},
        {"delta 14, one byte", {0x40, 0x01, 0x12, 0x34, 0xe0, 0x00}, 6, CY_EPROTO},
        {"length 13, no byte", {0x40, 0x01, 0x12, 0x34, 0x1d}, 5, CY_EPROTO},
        {"length 14, one byte", {0x40, 0x01, 0x12, 0x34, 0x1e, 0x00}, 6, CY_EPROTO},
        {"delta 13 and length 14 short", {0x40, 0x01, 0x12, 0x34, 0xde, 0x00, 0x01}, 7, CY_EPROTO},
        {"value past the end", {0x40, 0x01, 0x12, 0x34, 0xb3, 'a', 'b'}, 7, CY_EPROTO},
        {"value 13 past the end", {0x40, 0x01, 0x12, 0x34, 0xbd, 0x00, 'a'}, 7, CY_EPROTO},
        {"number 65536 at once", {0x40, 0x01, 0x12, 0x34, 0xe0, 0xff, 0xff}, 7, CY_EPROTO},
        {"number 65536 by two",
         {0x40, 0x01, 0x12, 0x34, 0xe0, 0xfe, 0xf2, 0x10}, /* 65535, then +1 */
         8,
         CY_EPROTO},
        {"marker, no payload", {0x40, 0x01, 0x12, 0x34, 0xff}, 5, CY_EPROTO},
        {"marker after option, no payload",
         {0x40, 0x01, 0x12, 0x34, 0xb1, 'a', 0xff},
         7,
         CY_EPROTO},
        {"empty with token", {0x41, 0x00, 0x12, 0x34, 0x01}, 5, CY_EPROTO},
        {"empty with tkl, no token", {0x41, 0x00, 0x12, 0x34}, 4, CY_EPROTO},
        {"empty with option", {0x60, 0x00, 0x12, 0x34, 0xb1, 'a'}, 6, CY_EPROTO},
        {"empty with payload", {0x70, 0x00, 0x12, 0x34, 0xff, 'x'}, 6, CY_EPROTO},
        {"empty with a marker", {0x70, 0x00, 0x12, 0x34, 0xff}, 5, CY_EPROTO},
    };
    for (size_t i = 0; i < N(cases); i++) {
        const struct bad *c = &cases[i];
        cy_coap_msg m;
        memset(&m, 0xa5, sizeof(m));
        int rc = cy_coap_decode(c->b, c->len, &m);
        if (rc != c->rc) fail_msg("%s: rc %d, want %d", c->what, rc, c->rc);
        assert_int_equal(m.n_opts, 0);
        assert_int_equal(m.tkl, 0);
        assert_null(m.payload);
        assert_int_equal(m.payload_len, 0);
        if (rc == CY_EPROTO) { /* enough to answer a CON with RST */
            assert_int_equal(m.type, (c->b[0] >> 4) & 3);
            assert_int_equal(m.code, c->b[1]);
            assert_int_equal(m.mid, 0x1234);
        }
    }
    assert_int_equal(cy_coap_decode(NULL, 4, &(cy_coap_msg){0}), CY_EINVAL);
}

/* Reserved code classes are the dispatcher's to refuse, not the codec's. */
static void test_cy_coap_decode_reserved_class(void **state)
{
    static const uint8_t b[] = {0x50, CY_COAP_CODE(7, 31), 0x00, 0x01};
    cy_coap_msg m;
    decode(b, sizeof(b), 0, &m);
    assert_int_equal(m.code, 0xff);
}

/* ---- option deltas and lengths ---- */

struct edge {
    uint32_t v;     /* delta or length */
    uint8_t nib;    /* its nibble */
    uint8_t ext[2]; /* and extension bytes */
    size_t n_ext;
};

static const struct edge EDGES[] = {
    {0, 0, {0}, 0},
    {1, 1, {0}, 0},
    {12, 12, {0}, 0},
    {13, 13, {0x00}, 1},
    {14, 13, {0x01}, 1},
    {252, 13, {0xef}, 1}, /* Echo */
    {258, 13, {0xf5}, 1}, /* No-Response */
    {268, 13, {0xff}, 1},
    {269, 14, {0x00, 0x00}, 2},
    {270, 14, {0x00, 0x01}, 2},
    {292, 14, {0x00, 0x17}, 2}, /* Request-Tag */
    {1034, 14, {0x02, 0xfd}, 2},
    {65535, 14, {0xfe, 0xf2}, 2},
};

/* One option numbered d (the first, so delta d), wire bytes built from the
 * table, decoded and encoded back. */
static void test_cy_coap_option_delta_edges(void **state)
{
    for (size_t i = 0; i < N(EDGES); i++) {
        const struct edge *e = &EDGES[i];
        uint8_t b[16] = {0x40, 0x02, 0x00, 0x07};
        size_t n = 4;
        b[n++] = (uint8_t)(e->nib << 4 | 1);
        memcpy(b + n, e->ext, e->n_ext);
        n += e->n_ext;
        b[n++] = 'v';
        cy_coap_msg m;
        assert_round_trip(b, n, &m);
        assert_int_equal(m.n_opts, 1);
        assert_int_equal(m.opts[0].num, e->v);
        assert_int_equal(m.opts[0].len, 1);
    }
}

/* One Uri-Path option (11) of each edge length (those the decoder takes). */
static void test_cy_coap_option_length_edges(void **state)
{
    static uint8_t b[1100];
    for (size_t i = 0; i < N(EDGES); i++) {
        const struct edge *e = &EDGES[i];
        if (e->v > CY_COAP_OPT_MAX_LEN) continue;
        size_t n = 0;
        b[n++] = 0x40, b[n++] = 0x01, b[n++] = 0x00, b[n++] = 0x08;
        b[n++] = (uint8_t)(11 << 4 | e->nib);
        memcpy(b + n, e->ext, e->n_ext);
        n += e->n_ext;
        memset(b + n, 'p', e->v);
        n += e->v;
        cy_coap_msg m;
        assert_round_trip(b, n, &m);
        assert_int_equal(m.n_opts, 1);
        assert_int_equal(m.opts[0].num, 11);
        assert_int_equal(m.opts[0].len, e->v);
    }
}

/* Options whose deltas cross the extensions: 1, 13 (delta 12), 14 (1),
 * 282 (268), 551 (269), 820 (269), 65535 (64715 = 269 + 0xfbbe); encoded
 * by the writer from their numbers. */
static void test_cy_coap_option_delta_chain(void **state)
{
    static const uint16_t nums[] = {1, 13, 14, 282, 551, 820, 65535};
    uint8_t buf[64];
    size_t len;
    cy_coap_writer w;
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_NON, CY_COAP_POST, 9, NULL, 0);
    for (size_t i = 0; i < N(nums); i++)
        cy_coap_w_opt(&w, nums[i], "", 0);
    assert_int_equal(cy_coap_w_end(&w, &len), 0);
    static const uint8_t want[] = {0x50, 0x02, 0x00, 0x09, 0x10, 0xc0, 0x10, 0xd0, 0xff,
                                   0xe0, 0x00, 0x00, 0xe0, 0x00, 0x00, 0xe0, 0xfb, 0xbe};
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(buf, want, len);
    cy_coap_msg m;
    assert_round_trip(buf, len, &m);
    assert_int_equal(m.n_opts, N(nums));
    for (size_t i = 0; i < N(nums); i++)
        assert_int_equal(m.opts[i].num, nums[i]);
}

/* The longest option the wire can say (65535 + 269 bytes): the writer
 * writes it, the decoder calls it too big; one more byte and the writer
 * refuses it. */
static void test_cy_coap_option_longest(void **state)
{
    static uint8_t val[65535 + 270], buf[65535 + 300];
    memset(val, 'x', sizeof(val));
    cy_coap_writer w;
    size_t len;
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_PUT, 1, NULL, 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_ECHO, val, 65535 + 269);
    assert_int_equal(cy_coap_w_end(&w, &len), 0);
    assert_int_equal(len, 4 + 1 + 1 + 2 + 65535 + 269);
    assert_memory_equal(buf + 4, "\xde\xef\xff\xff", 4);
    cy_coap_msg m;
    decode(buf, len, CY_EMSGSIZE, &m);

    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_PUT, 1, NULL, 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_ECHO, val, 65535 + 270);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    assert_int_equal(len, 0);
}

/* ---- repeats and limits ---- */

static void test_cy_coap_decode_repeated_options(void **state)
{
    uint8_t buf[128];
    size_t len;
    cy_coap_writer w;
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 5, (const uint8_t *)"t", 1);
    cy_coap_w_opt(&w, CY_COAP_OPT_ETAG, "e1", 2);
    cy_coap_w_opt(&w, CY_COAP_OPT_ETAG, "e2", 2);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "a", 1);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "", 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "c", 1);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "q", 1);
    assert_int_equal(cy_coap_w_end(&w, &len), 0);
    /* repeats have delta 0 */
    static const uint8_t want[] = {0x41, 0x01, 0x00, 0x05, 't',  0x42, 'e', '1',  0x02,
                                   'e',  '2',  0x71, 'a',  0x00, 0x01, 'c', 0x41, 'q'};
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(buf, want, len);

    cy_coap_msg m;
    assert_round_trip(buf, len, &m);
    assert_int_equal(m.n_opts, 6);
    assert_int_equal(cy_coap_opt_count(&m, CY_COAP_OPT_ETAG), 2);
    assert_int_equal(cy_coap_opt_count(&m, CY_COAP_OPT_URI_PATH), 3);
    assert_int_equal(cy_coap_opt_count(&m, CY_COAP_OPT_OBSERVE), 0);
    assert_opt(cy_coap_opt_find(&m, CY_COAP_OPT_ETAG), CY_COAP_OPT_ETAG, "e1");
    assert_ptr_equal(cy_coap_opt_find(&m, CY_COAP_OPT_URI_PATH), &m.opts[2]);
    assert_opt(&m.opts[3], CY_COAP_OPT_URI_PATH, "");
    assert_null(cy_coap_opt_find(&m, CY_COAP_OPT_OBSERVE));
    assert_null(cy_coap_opt_find(&m, CY_COAP_OPT_IF_MATCH));
    assert_null(cy_coap_opt_find(&m, 65535));
}

/* n options numbered 60 (Size1, delta 0 after the first) of one byte each,
 * then tail (tail_len bytes) into buf; returns the length. */
static size_t many_options(uint8_t *buf, unsigned n, const uint8_t *tail, size_t tail_len)
{
    size_t len = 0;
    buf[len++] = 0x42, buf[len++] = 0x01, buf[len++] = 0xab, buf[len++] = 0xcd;
    buf[len++] = 0x0a, buf[len++] = 0x0b;
    for (unsigned i = 0; i < n; i++) {
        if (i == 0)
            buf[len++] = 0xd1, buf[len++] = 60 - 13;
        else
            buf[len++] = 0x01;
        buf[len++] = (uint8_t)i;
    }
    memcpy(buf + len, tail, tail_len);
    return len + tail_len;
}

static void test_cy_coap_decode_too_many_options(void **state)
{
    uint8_t buf[256];
    cy_coap_msg m;
    size_t len = many_options(buf, CY_COAP_MAX_OPTS, (const uint8_t *)"\xff!", 2);
    assert_round_trip(buf, len, &m);
    assert_int_equal(m.n_opts, CY_COAP_MAX_OPTS);
    assert_int_equal(m.opts[CY_COAP_MAX_OPTS - 1].val[0], CY_COAP_MAX_OPTS - 1);

    len = many_options(buf, CY_COAP_MAX_OPTS + 1, (const uint8_t *)"\xff!", 2);
    memset(&m, 0xa5, sizeof(m));
    decode(buf, len, CY_EMSGSIZE, &m);
    /* the header and token, for a 4.02 */
    assert_int_equal(m.type, CY_COAP_CON);
    assert_int_equal(m.code, CY_COAP_GET);
    assert_int_equal(m.mid, 0xabcd);
    assert_int_equal(m.tkl, 2);
    assert_memory_equal(m.token, "\x0a\x0b", 2);
    assert_int_equal(m.n_opts, 0);
    assert_null(m.payload);
    assert_int_equal(m.payload_len, 0);

    /* a format error after the 41st option wins: it is an RST, not a 4.02 */
    len = many_options(buf, CY_COAP_MAX_OPTS + 1, (const uint8_t *)"\xff", 1);
    decode(buf, len, CY_EPROTO, &m);
    len = many_options(buf, CY_COAP_MAX_OPTS + 5, (const uint8_t *)"\xf0", 1);
    decode(buf, len, CY_EPROTO, &m);
    assert_int_equal(m.mid, 0xabcd);
    assert_int_equal(m.tkl, 0);
}

static void test_cy_coap_decode_option_too_long(void **state)
{
    static uint8_t buf[1200];
    cy_coap_msg m;
    size_t len = 0;
    buf[len++] = 0x51, buf[len++] = 0x02, buf[len++] = 0x00, buf[len++] = 0x01;
    buf[len++] = 0x77;
    /* Proxy-Uri (35 = 13 + 22), 1035 bytes (269 + 766 = 0x2fe) */
    buf[len++] = 0xde, buf[len++] = 22, buf[len++] = 0x02, buf[len++] = 0xfe;
    memset(buf + len, 'u', 1035);
    len += 1035;
    decode(buf, len, CY_EMSGSIZE, &m);
    assert_int_equal(m.type, CY_COAP_NON);
    assert_int_equal(m.tkl, 1);
    assert_int_equal(m.token[0], 0x77);
    /* the same option one byte shorter is fine */
    buf[8] = 0xfd;
    assert_round_trip(buf, len - 1, &m);
    assert_int_equal(m.opts[0].num, CY_COAP_OPT_PROXY_URI);
    assert_int_equal(m.opts[0].len, CY_COAP_OPT_MAX_LEN);
    /* too long and then cut short: a format error */
    buf[8] = 0xfe;
    decode(buf, len - 1, CY_EPROTO, &m);
}

/* ---- the writer ---- */

/* A message that uses every part of the wire format. */
static size_t write_full(uint8_t *buf, size_t cap, int *rc)
{
    static uint8_t echo[300];
    memset(echo, 0xec, sizeof(echo));
    cy_coap_writer w;
    size_t len = 0;
    cy_coap_w_init(&w, buf, cap, CY_COAP_CON, CY_COAP_POST, 0x1001, (const uint8_t *)"12345678", 8);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "devices", 7);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "abcdefghijklmnopq", 17);
    cy_coap_w_opt_uint(&w, CY_COAP_OPT_CONTENT_FORMAT, CY_COAP_FMT_JSON);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "k=v", 3);
    cy_coap_w_opt_uint(&w, CY_COAP_OPT_BLOCK1, 0x1234b);
    cy_coap_w_opt_uint(&w, CY_COAP_OPT_SIZE1, 70000);
    cy_coap_w_opt(&w, CY_COAP_OPT_ECHO, echo, sizeof(echo));
    cy_coap_w_opt_uint(&w, CY_COAP_OPT_NO_RESPONSE, 2);
    cy_coap_w_opt(&w, CY_COAP_OPT_REQUEST_TAG, "rt", 2);
    cy_coap_w_payload(&w, "{\"t\":21.5}", 10);
    *rc = cy_coap_w_end(&w, &len);
    return len;
}

static void test_cy_coap_w_every_capacity(void **state)
{
    static uint8_t full[512], buf[512];
    int rc;
    size_t n = write_full(full, sizeof(full), &rc);
    assert_int_equal(rc, 0);
    assert_true(n > 350);
    cy_coap_msg m;
    assert_round_trip(full, n, &m);
    assert_int_equal(m.n_opts, 9);

    for (size_t cap = 0; cap < n; cap++) {
        memset(buf, 0xa5, sizeof(buf));
        size_t len = write_full(buf, cap, &rc);
        if (rc != CY_EMSGSIZE) fail_msg("cap %zu: rc %d", cap, rc);
        assert_int_equal(len, 0);
        for (size_t i = cap; i < sizeof(buf); i++)
            if (buf[i] != 0xa5) fail_msg("cap %zu: byte %zu written", cap, i);
    }
    memset(buf, 0xa5, sizeof(buf));
    assert_int_equal(write_full(buf, n, &rc), n);
    assert_int_equal(rc, 0);
    assert_memory_equal(buf, full, n);
    assert_int_equal(buf[n], 0xa5);

    /* no buffer at all */
    cy_coap_writer w;
    size_t len = 1;
    cy_coap_w_init(&w, NULL, 0, CY_COAP_ACK, CY_COAP_EMPTY, 1, NULL, 0);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EMSGSIZE);
    assert_int_equal(len, 0);
}

/* A payload whose length would wrap "1 + len" is too big, not written. */
static void test_cy_coap_w_payload_huge(void **state)
{
    uint8_t buf[16];
    cy_coap_writer w;
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_NON, CY_COAP_CONTENT, 1, NULL, 0);
    cy_coap_w_payload(&w, "x", SIZE_MAX);
    assert_int_equal(cy_coap_w_end(&w, NULL), CY_EMSGSIZE);
    assert_int_equal(w.len, 4);
}

static void test_cy_coap_w_refusals(void **state)
{
    uint8_t buf[64];
    size_t len;
    cy_coap_writer w;

    /* numbers going down; the error is sticky and nothing more is written */
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 1, NULL, 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "a", 1);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_HOST, "h", 1);
    assert_int_equal(w.len, 6);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "q", 1);
    cy_coap_w_payload(&w, "p", 1);
    assert_int_equal(w.len, 6);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    assert_int_equal(len, 0);

    /* an option after the payload, even an empty one */
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 1, NULL, 0);
    cy_coap_w_payload(&w, NULL, 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "a", 1);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 1, NULL, 0);
    cy_coap_w_payload(&w, "p", 1);
    cy_coap_w_opt(&w, 65535, NULL, 0);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    /* two payloads */
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 1, NULL, 0);
    cy_coap_w_payload(&w, "p", 1);
    cy_coap_w_payload(&w, "q", 1);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    assert_int_equal(w.len, 6);

    /* bad header arguments: nothing written */
    memset(buf, 0xa5, sizeof(buf));
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 1, (const uint8_t *)"123456789",
                   9);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    cy_coap_w_init(&w, buf, sizeof(buf), 4, CY_COAP_GET, 1, NULL, 0);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 1, NULL, 2);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    assert_int_equal(buf[0], 0xa5);

    /* an empty message has nothing after its header */
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_ACK, CY_COAP_EMPTY, 1, (const uint8_t *)"t", 1);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_ACK, CY_COAP_EMPTY, 1, NULL, 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_ETAG, NULL, 0);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_RST, CY_COAP_EMPTY, 1, NULL, 0);
    cy_coap_w_payload(&w, "x", 1);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_RST, CY_COAP_EMPTY, 0x0203, NULL, 0);
    cy_coap_w_payload(&w, NULL, 0);
    assert_int_equal(cy_coap_w_end(&w, &len), 0);
    assert_int_equal(len, 4);
    assert_memory_equal(buf, "\x70\x00\x02\x03", 4);

    /* a value pointer missing */
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 1, NULL, 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, NULL, 3);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 1, NULL, 0);
    cy_coap_w_payload(&w, NULL, 3);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EINVAL);

    /* the first error stays: too small, then out of order */
    cy_coap_w_init(&w, buf, 5, CY_COAP_CON, CY_COAP_GET, 1, NULL, 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "abc", 3);
    cy_coap_w_opt(&w, CY_COAP_OPT_IF_MATCH, NULL, 0);
    assert_int_equal(cy_coap_w_end(&w, &len), CY_EMSGSIZE);
}

static void test_cy_coap_w_opt_uint_shortest(void **state)
{
    static const struct {
        uint32_t v;
        uint16_t len;
    } cases[] = {{0, 0},     {1, 1},        {255, 1},       {256, 2},       {65535, 2},
                 {65536, 3}, {0xffffff, 3}, {0x1000000, 4}, {0xffffffff, 4}};
    for (size_t i = 0; i < N(cases); i++) {
        uint8_t buf[16];
        size_t len;
        cy_coap_writer w;
        cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 1, NULL, 0);
        cy_coap_w_opt_uint(&w, CY_COAP_OPT_MAX_AGE, cases[i].v);
        assert_int_equal(cy_coap_w_end(&w, &len), 0);
        assert_int_equal(len, 6 + cases[i].len); /* Max-Age 14: one delta byte */
        cy_coap_msg m;
        assert_round_trip(buf, len, &m);
        assert_int_equal(m.opts[0].len, cases[i].len);
        uint32_t v = 7;
        assert_int_equal(cy_coap_opt_uint(&m.opts[0], &v), 0);
        assert_int_equal(v, cases[i].v);
    }
    /* leading zeros are read (a SHOULD for senders), 5 bytes are not */
    uint32_t v;
    cy_coap_opt o = {CY_COAP_OPT_MAX_AGE, 4, (const uint8_t *)"\x00\x00\x01\x02"};
    assert_int_equal(cy_coap_opt_uint(&o, &v), 0);
    assert_int_equal(v, 0x102);
    o.len = 5;
    o.val = (const uint8_t *)"\x00\x00\x00\x01\x02";
    assert_int_equal(cy_coap_opt_uint(&o, &v), CY_EPROTO);
}

/* ---- helpers ---- */

static void test_cy_coap_block_round_trip(void **state)
{
    static const cy_coap_block cases[] = {
        {0, false, 0},  {0, true, 3},    {1, false, 6},    {15, true, 2},
        {16, false, 4}, {4095, true, 5}, {4096, false, 0}, {0xfffff, true, 6},
    };
    static const uint16_t len_of[] = {0, 1, 1, 1, 2, 2, 3, 3};
    for (size_t i = 0; i < N(cases); i++) {
        uint8_t buf[16];
        size_t len;
        cy_coap_writer w;
        cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_PUT, 1, NULL, 0);
        cy_coap_w_opt_uint(&w, CY_COAP_OPT_BLOCK2, cy_coap_block_value(&cases[i]));
        cy_coap_w_opt_uint(&w, CY_COAP_OPT_BLOCK1, cy_coap_block_value(&cases[i]));
        assert_int_equal(cy_coap_w_end(&w, &len), 0);
        cy_coap_msg m;
        assert_round_trip(buf, len, &m);
        for (int k = 0; k < 2; k++) {
            cy_coap_block b = {99, true, 9};
            assert_int_equal(m.opts[k].len, len_of[i]);
            assert_int_equal(cy_coap_block_decode(&m.opts[k], &b), 0);
            assert_int_equal(b.num, cases[i].num);
            assert_int_equal(b.more, cases[i].more);
            assert_int_equal(b.szx, cases[i].szx);
        }
    }
    assert_int_equal(cy_coap_block_size(0), 16);
    assert_int_equal(cy_coap_block_size(6), 1024);

    cy_coap_block b;
    cy_coap_opt o = {CY_COAP_OPT_BLOCK1, 1, (const uint8_t *)"\x0f"}; /* szx 7: BERT */
    assert_int_equal(cy_coap_block_decode(&o, &b), CY_EPROTO);
    o.len = 4;
    o.val = (const uint8_t *)"\x00\x00\x00\x01";
    assert_int_equal(cy_coap_block_decode(&o, &b), CY_EPROTO);
    o.len = 3;
    o.val = (const uint8_t *)"\x01\x02\x0e"; /* 0x1020 / 1 / 6 */
    assert_int_equal(cy_coap_block_decode(&o, &b), 0);
    assert_int_equal(b.num, 0x1020);
    assert_true(b.more);
    assert_int_equal(b.szx, 6);
}

/* A GET with the given Uri-Path segments (NULL-terminated list, each
 * segment's length from lens or strlen), Uri-Host before and Uri-Query
 * after, into buf; decoded into *m. */
static void path_msg(uint8_t *buf, size_t cap, cy_coap_msg *m, const char *const *segs,
                     const size_t *lens)
{
    cy_coap_writer w;
    size_t len;
    cy_coap_w_init(&w, buf, cap, CY_COAP_CON, CY_COAP_GET, 1, NULL, 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_HOST, "h", 1);
    for (size_t i = 0; segs[i]; i++)
        cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, segs[i], lens ? lens[i] : strlen(segs[i]));
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "a=b", 3);
    assert_int_equal(cy_coap_w_end(&w, &len), 0);
    decode(buf, len, 0, m);
}

static void test_cy_coap_uri_path_ok(void **state)
{
    static const struct {
        const char *segs[4];
        const char *want;
    } cases[] = {
        {{NULL}, ""},
        {{"", NULL}, ""}, /* one empty segment: the root */
        {{"temperature", NULL}, "temperature"},
        {{"a", "b", "c"}, "a/b/c"},
        {{"devices", "d-1", "t\xc3\xa9mp\xc3\xa9rature"}, "devices/d-1/t\xc3\xa9mp\xc3\xa9rature"},
        {{"\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf"}, /* 3- and 4-byte forms */
         "\xe2\x82\xac/\xf0\x9f\x98\x80/\xf4\x8f\xbf\xbf"},
        {{"$sys", "a b", "."}, "$sys/a b/."},
        {{"\xed\x9f\xbf", "\xee\x80\x80", NULL}, /* around the surrogates */
         "\xed\x9f\xbf/\xee\x80\x80"},
        {{"\xc2\x80", "\xdf\xbf", "\xf0\x90\x80\x80"}, /* the shortest forms' edges */
         "\xc2\x80/\xdf\xbf/\xf0\x90\x80\x80"},
    };
    for (size_t i = 0; i < N(cases); i++) {
        uint8_t buf[128];
        cy_coap_msg m;
        path_msg(buf, sizeof(buf), &m, cases[i].segs, NULL);
        char out[64];
        size_t len = 99;
        assert_int_equal(cy_coap_uri_path(&m, out, sizeof(out), &len), 0);
        assert_string_equal(out, cases[i].want);
        assert_int_equal(len, strlen(cases[i].want));
    }
}

static void test_cy_coap_uri_path_refused(void **state)
{
    static const struct {
        const char *segs[4];
        size_t lens[3];
    } cases[] = {
        {{"a", "", "c"}, {1, 0, 1}},   /* empty in the middle */
        {{"a", "", NULL}, {1, 0}},     /* trailing slash */
        {{"", "a", NULL}, {0, 1}},     /* leading */
        {{"", "", NULL}, {0, 0}},      /* two empty */
        {{"a/b", NULL}, {3}},          /* a slash in a segment */
        {{"a\0b", NULL}, {3}},         /* NUL */
        {{"a", "+", NULL}, {1, 1}},    /* wildcards */
        {{"#", NULL}, {1}},            /* */
        {{"x+y", NULL}, {3}},          /* */
        {{"\xc0\x80", NULL}, {2}},     /* overlong NUL */
        {{"\xe0\x80\xaf", NULL}, {3}}, /* overlong '/' */
        {{"\x80", NULL}, {1}},         /* lone continuation */
        {{"\xc3", NULL}, {1}},         /* truncated */
        {{"\xe2\x82", NULL}, {2}},     /* truncated */
        {{"\xed\xa0\x80", NULL}, {3}},
        {{"\xed\xbf\xbf", NULL}, {3}},
        /* the last surrogate */               /* surrogate */
        {{"\xf4\x90\x80\x80", NULL}, {4}},     /* over U+10FFFF */
        {{"\xf8\x88\x80\x80\x80", NULL}, {5}}, /* 5-byte form */
        {{"\xff", NULL}, {1}},                 /* */
        {{"ok", "\xc3\x28", NULL}, {2, 2}},    /* bad continuation */
    };
    for (size_t i = 0; i < N(cases); i++) {
        uint8_t buf[128];
        cy_coap_msg m;
        path_msg(buf, sizeof(buf), &m, cases[i].segs, cases[i].lens);
        char out[64];
        size_t len = 99;
        memset(out, 'z', sizeof(out));
        int rc = cy_coap_uri_path(&m, out, sizeof(out), &len);
        if (rc != CY_EINVAL) fail_msg("case %zu: rc %d", i, rc);
        assert_int_equal(len, 0);
        assert_int_equal(out[0], '\0');
        /* checked before the size */
        assert_int_equal(cy_coap_uri_path(&m, NULL, 0, &len), CY_EINVAL);
    }
}

static void test_cy_coap_uri_path_capacity(void **state)
{
    uint8_t buf[128];
    cy_coap_msg m;
    static const char *const segs[] = {"ab", "cd", NULL};
    path_msg(buf, sizeof(buf), &m, segs, NULL);
    char out[8];
    size_t len = 99;
    for (size_t cap = 0; cap <= 5; cap++) {
        memset(out, 'z', sizeof(out));
        assert_int_equal(cy_coap_uri_path(&m, cap ? out : NULL, cap, &len), CY_EMSGSIZE);
        assert_int_equal(len, 0);
        if (cap) assert_int_equal(out[0], '\0');
        for (size_t i = cap ? 1 : 0; i < sizeof(out); i++)
            assert_int_equal(out[i], 'z');
    }
    memset(out, 'z', sizeof(out));
    assert_int_equal(cy_coap_uri_path(&m, out, 6, &len), 0);
    assert_string_equal(out, "ab/cd");
    assert_int_equal(len, 5);
    assert_int_equal(out[6], 'z');

    /* the root fits in one byte, and not in none */
    static const char *const none[] = {NULL};
    path_msg(buf, sizeof(buf), &m, none, NULL);
    assert_int_equal(cy_coap_uri_path(&m, out, 1, &len), 0);
    assert_int_equal(out[0], '\0');
    assert_int_equal(cy_coap_uri_path(&m, NULL, 0, &len), CY_EMSGSIZE);
}

static void test_cy_coap_query_lookup(void **state)
{
    uint8_t buf[128];
    size_t len;
    cy_coap_writer w;
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_POST, 1, NULL, 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "t=x", 3); /* not a query */
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "a=1", 3);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "b=", 2);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "flag", 4);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "a=2", 3);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "k=x=y", 5);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "=v", 2);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, "", 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_LOCATION_QUERY, "z=9", 3); /* not a Uri-Query */
    assert_int_equal(cy_coap_w_end(&w, &len), 0);
    cy_coap_msg m;
    decode(buf, len, 0, &m);

    const uint8_t *v;
    size_t vl;
    assert_int_equal(cy_coap_query(&m, "a", &v, &vl), 0); /* the first */
    assert_int_equal(vl, 1);
    assert_memory_equal(v, "1", 1);
    assert_true(v > buf && v < buf + len); /* borrowed */
    assert_int_equal(cy_coap_query(&m, "b", &v, &vl), 0);
    assert_int_equal(vl, 0);
    assert_null(v);
    assert_int_equal(cy_coap_query(&m, "flag", &v, &vl), 0); /* no '=': empty value */
    assert_int_equal(vl, 0);
    assert_null(v);
    assert_int_equal(cy_coap_query(&m, "k", &v, &vl), 0); /* up to the first '=' */
    assert_int_equal(vl, 3);
    assert_memory_equal(v, "x=y", 3);
    assert_int_equal(cy_coap_query(&m, "", &v, &vl), 0);
    assert_int_equal(vl, 1);
    assert_memory_equal(v, "v", 1);

    static const char *const absent[] = {"A", "fla", "flags", "k=x", "t", "z", "a=1", " a"};
    for (size_t i = 0; i < N(absent); i++) {
        v = buf;
        vl = 5;
        assert_int_equal(cy_coap_query(&m, absent[i], &v, &vl), CY_ENOENT);
        assert_null(v);
        assert_int_equal(vl, 0);
    }
    assert_int_equal(cy_coap_query(&m, "flag", NULL, NULL), 0);
    assert_int_equal(cy_coap_query(&m, NULL, &v, &vl), CY_EINVAL);

    decode(GET_TEMP, sizeof(GET_TEMP), 0, &m);
    assert_int_equal(cy_coap_query(&m, "", &v, &vl), CY_ENOENT);
}

static void test_cy_coap_unknown_critical(void **state)
{
    uint8_t buf[64];
    size_t len;
    cy_coap_writer w;
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_GET, 1, NULL, 0);
    cy_coap_w_opt(&w, CY_COAP_OPT_ETAG, "e", 1);     /* elective */
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, "p", 1); /* critical */
    cy_coap_w_opt(&w, CY_COAP_OPT_MAX_AGE, NULL, 0); /* elective */
    cy_coap_w_opt(&w, CY_COAP_OPT_ACCEPT, NULL, 0);  /* critical */
    cy_coap_w_opt(&w, 2049, NULL, 0);                /* critical, unknown */
    cy_coap_w_opt(&w, 2050, NULL, 0);                /* elective, unknown */
    assert_int_equal(cy_coap_w_end(&w, &len), 0);
    cy_coap_msg m;
    decode(buf, len, 0, &m);

    assert_int_equal(cy_coap_unknown_critical(&m, NULL, 0), CY_COAP_OPT_URI_PATH);
    const uint16_t k1[] = {CY_COAP_OPT_URI_PATH};
    assert_int_equal(cy_coap_unknown_critical(&m, k1, N(k1)), CY_COAP_OPT_ACCEPT);
    const uint16_t k2[] = {CY_COAP_OPT_ACCEPT, CY_COAP_OPT_URI_PATH};
    assert_int_equal(cy_coap_unknown_critical(&m, k2, N(k2)), 2049);
    const uint16_t k3[] = {CY_COAP_OPT_ACCEPT, 2049, CY_COAP_OPT_URI_PATH};
    assert_int_equal(cy_coap_unknown_critical(&m, k3, N(k3)), 0);

    decode(CONTENT, sizeof(CONTENT), 0, &m); /* Content-Format only: elective */
    assert_int_equal(cy_coap_unknown_critical(&m, NULL, 0), 0);
    assert_true(cy_coap_opt_critical(CY_COAP_OPT_IF_MATCH));
    assert_false(cy_coap_opt_critical(CY_COAP_OPT_ECHO));
    assert_false(cy_coap_opt_critical(CY_COAP_OPT_NO_RESPONSE));
    assert_false(cy_coap_opt_critical(CY_COAP_OPT_REQUEST_TAG));
}

static void test_cy_coap_code_text(void **state)
{
    char buf[8];
    assert_string_equal(cy_coap_code_text(CY_COAP_EMPTY, buf), "0.00");
    assert_string_equal(cy_coap_code_text(CY_COAP_GET, buf), "0.01");
    assert_string_equal(cy_coap_code_text(CY_COAP_CONTENT, buf), "2.05");
    assert_string_equal(cy_coap_code_text(CY_COAP_CONTINUE, buf), "2.31");
    assert_string_equal(cy_coap_code_text(CY_COAP_NOT_FOUND, buf), "4.04");
    assert_string_equal(cy_coap_code_text(CY_COAP_TOO_MANY_REQUESTS, buf), "4.29");
    assert_string_equal(cy_coap_code_text(CY_COAP_GATEWAY_TIMEOUT, buf), "5.04");
    assert_ptr_equal(cy_coap_code_text(0xff, buf), buf);
    assert_string_equal(buf, "7.31");
    assert_int_equal(CY_COAP_CLASS(CY_COAP_INTERNAL_ERROR), 5);
    assert_int_equal(CY_COAP_DETAIL(CY_COAP_UNSUPPORTED_FORMAT), 15);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cy_coap_decode_rfc_get),
        cmocka_unit_test(test_cy_coap_decode_rfc_piggybacked),
        cmocka_unit_test(test_cy_coap_w_rfc_messages),
        cmocka_unit_test(test_cy_coap_decode_rfc_extensions),
        cmocka_unit_test(test_cy_coap_decode_empty),
        cmocka_unit_test(test_cy_coap_decode_format_errors),
        cmocka_unit_test(test_cy_coap_decode_reserved_class),
        cmocka_unit_test(test_cy_coap_option_delta_edges),
        cmocka_unit_test(test_cy_coap_option_length_edges),
        cmocka_unit_test(test_cy_coap_option_delta_chain),
        cmocka_unit_test(test_cy_coap_option_longest),
        cmocka_unit_test(test_cy_coap_decode_repeated_options),
        cmocka_unit_test(test_cy_coap_decode_too_many_options),
        cmocka_unit_test(test_cy_coap_decode_option_too_long),
        cmocka_unit_test(test_cy_coap_w_every_capacity),
        cmocka_unit_test(test_cy_coap_w_payload_huge),
        cmocka_unit_test(test_cy_coap_w_refusals),
        cmocka_unit_test(test_cy_coap_w_opt_uint_shortest),
        cmocka_unit_test(test_cy_coap_block_round_trip),
        cmocka_unit_test(test_cy_coap_uri_path_ok),
        cmocka_unit_test(test_cy_coap_uri_path_refused),
        cmocka_unit_test(test_cy_coap_uri_path_capacity),
        cmocka_unit_test(test_cy_coap_query_lookup),
        cmocka_unit_test(test_cy_coap_unknown_critical),
        cmocka_unit_test(test_cy_coap_code_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
