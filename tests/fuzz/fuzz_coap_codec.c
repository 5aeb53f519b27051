/* fuzz_coap_codec: libFuzzer target for the CoAP codec (src/coap/codec.c).
 *
 * The input is one datagram. Whatever the bytes, decode must not crash,
 * must say only what codec.h lets it say, and must fill *out as promised
 * for that answer. A message it accepts is encoded again with the writer:
 * since the option header has exactly one form for each delta and length,
 * that encoding must be the input itself, byte for byte; it must decode to
 * an equal message, and encoding that one must give the same bytes again
 * (canonical). The writer gets capacities too small by one and by more, in
 * buffers of exactly that size (ASan sees any byte past them). Then every
 * helper runs on the message (option lookup, unsigned values, unknown
 * critical options, Uri-Path, Uri-Query, Block1/Block2, code text) and is
 * checked against a plain re-computation. Any broken rule is abort(),
 * which libFuzzer reports as a crash.
 */
#include "coap/codec.h"
#include "core/cy_err.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static bool bytes_eq(const uint8_t *a, const uint8_t *b, size_t n)
{
    return n == 0 || memcmp(a, b, n) == 0;
}

static bool msg_eq(const cy_coap_msg *a, const cy_coap_msg *b)
{
    if (a->type != b->type || a->code != b->code || a->mid != b->mid || a->tkl != b->tkl ||
        !bytes_eq(a->token, b->token, a->tkl) || a->n_opts != b->n_opts ||
        a->payload_len != b->payload_len || !bytes_eq(a->payload, b->payload, a->payload_len))
        return false;
    for (unsigned i = 0; i < a->n_opts; i++)
        if (a->opts[i].num != b->opts[i].num || a->opts[i].len != b->opts[i].len ||
            !bytes_eq(a->opts[i].val, b->opts[i].val, a->opts[i].len))
            return false;
    return true;
}

/* Everything a decoded message promises: borrowed pointers inside the
 * datagram, NULL exactly for empty values, ascending numbers. */
static void check_shape(const cy_coap_msg *m, const uint8_t *data, size_t size)
{
    CHECK(m->type <= CY_COAP_RST && m->tkl <= CY_COAP_TOKEN_MAX);
    CHECK(m->n_opts <= CY_COAP_MAX_OPTS);
    CHECK(bytes_eq(m->token, data + CY_COAP_HEADER, m->tkl));
    for (unsigned i = 0; i < m->n_opts; i++) {
        const cy_coap_opt *o = &m->opts[i];
        CHECK(i == 0 || o->num >= m->opts[i - 1].num);
        CHECK(o->len <= CY_COAP_OPT_MAX_LEN);
        CHECK((o->len == 0) == (o->val == NULL));
        if (o->len) CHECK(o->val > data && o->val + o->len <= data + size);
    }
    CHECK((m->payload_len == 0) == (m->payload == NULL));
    if (m->payload_len) CHECK(m->payload + m->payload_len == data + size);
    if (m->code == CY_COAP_EMPTY) CHECK(size == 4 && m->tkl == 0 && m->n_opts == 0);
}

/* Encode m with the writer into a buffer of exactly cap bytes (malloc'd,
 * so ASan sees a write past it). Returns the rc; the bytes in *out (caller
 * frees) when out is not NULL. */
static int encode(const cy_coap_msg *m, size_t cap, uint8_t **out, size_t *len)
{
    uint8_t *buf = cap ? malloc(cap) : NULL;
    CHECK(buf || !cap);
    cy_coap_writer w;
    cy_coap_w_init(&w, buf, cap, m->type, m->code, m->mid, m->token, m->tkl);
    for (unsigned i = 0; i < m->n_opts; i++)
        cy_coap_w_opt(&w, m->opts[i].num, m->opts[i].val, m->opts[i].len);
    cy_coap_w_payload(&w, m->payload, m->payload_len);
    CHECK(w.len <= cap);
    int rc = cy_coap_w_end(&w, len);
    if (out)
        *out = buf;
    else
        free(buf);
    return rc;
}

static void check_options(const cy_coap_msg *m)
{
    uint16_t known[CY_COAP_MAX_OPTS];
    uint16_t first_critical = 0;
    for (unsigned i = 0; i < m->n_opts; i++) {
        const cy_coap_opt *o = &m->opts[i];
        known[i] = o->num;
        if (!first_critical && cy_coap_opt_critical(o->num)) first_critical = o->num;
        unsigned count = 0, first = i;
        for (unsigned k = 0; k < m->n_opts; k++)
            if (m->opts[k].num == o->num) {
                if (count++ == 0) first = k;
            }
        CHECK(cy_coap_opt_count(m, o->num) == count);
        CHECK(cy_coap_opt_find(m, o->num) == &m->opts[first]);

        uint32_t v = 0;
        int rc = cy_coap_opt_uint(o, &v);
        CHECK(rc == (o->len > 4 ? CY_EPROTO : 0));
        if (!rc) { /* the shortest form says the same value in no more bytes */
            uint8_t b[16];
            size_t len;
            cy_coap_writer w;
            cy_coap_msg r;
            cy_coap_w_init(&w, b, sizeof(b), CY_COAP_CON, CY_COAP_GET, 0, NULL, 0);
            cy_coap_w_opt_uint(&w, o->num, v);
            CHECK(cy_coap_w_end(&w, &len) == 0);
            CHECK(cy_coap_decode(b, len, &r) == 0 && r.n_opts == 1);
            uint32_t v2 = 1;
            CHECK(cy_coap_opt_uint(&r.opts[0], &v2) == 0 && v2 == v);
            CHECK(r.opts[0].len <= o->len);
            CHECK(r.opts[0].len == 0 || r.opts[0].val[0] != 0);
        }
        if (o->num == CY_COAP_OPT_BLOCK1 || o->num == CY_COAP_OPT_BLOCK2) {
            cy_coap_block b;
            rc = cy_coap_block_decode(o, &b);
            bool ok = o->len <= 3 && (o->len == 0 || (o->val[o->len - 1] & 7) != 7);
            CHECK(rc == (ok ? 0 : CY_EPROTO));
            if (!rc) {
                CHECK(b.num < (1u << 20) && b.szx <= 6);
                CHECK(cy_coap_block_value(&b) == v);
                CHECK(cy_coap_block_size(b.szx) >= 16 && cy_coap_block_size(b.szx) <= 1024);
            }
        }
    }
    CHECK(cy_coap_unknown_critical(m, NULL, 0) == first_critical);
    CHECK(cy_coap_unknown_critical(m, known, m->n_opts) == 0);
}

/* UTF-8 by the byte ranges of RFC 3629's ABNF (section 4): a different
 * way from the codec's (code points and their limits), to check it by. */
static bool utf8_abnf(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        unsigned tail;
        uint8_t lo = 0x80, hi = 0xbf; /* the range of the second byte */
        if (c <= 0x7f) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            tail = 1;
        else if (c >= 0xe0 && c <= 0xef)
            tail = 2, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        else if (c >= 0xf0 && c <= 0xf4)
            tail = 3, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        else
            return false;
        if (n - i <= tail || s[i + 1] < lo || s[i + 1] > hi) return false;
        for (unsigned k = 2; k <= tail; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf) return false;
        i += 1 + tail;
    }
    return true;
}

/* A segment cy_coap_uri_path must take: not empty, none of / NUL + #,
 * valid UTF-8. */
static bool segment_ok(const cy_coap_opt *o)
{
    for (unsigned i = 0; i < o->len; i++) {
        uint8_t c = o->val[i];
        if (c == '/' || c == 0 || c == '+' || c == '#') return false;
    }
    return o->len > 0 && utf8_abnf(o->val, o->len);
}

static void check_uri_path(const cy_coap_msg *m, size_t size)
{
    const cy_coap_opt *seg[CY_COAP_MAX_OPTS];
    unsigned n = 0;
    for (unsigned i = 0; i < m->n_opts; i++)
        if (m->opts[i].num == CY_COAP_OPT_URI_PATH) seg[n++] = &m->opts[i];
    if (n == 1 && seg[0]->len == 0) n = 0; /* the root */
    bool ok = true;
    char *want = malloc(size + 1);
    CHECK(want);
    size_t wlen = 0;
    for (unsigned i = 0; i < n; i++) {
        ok = ok && segment_ok(seg[i]);
        if (i) want[wlen++] = '/';
        if (seg[i]->len) memcpy(want + wlen, seg[i]->val, seg[i]->len);
        wlen += seg[i]->len;
    }
    CHECK(wlen <= size);
    want[wlen] = '\0';

    size_t cap = wlen + 1, len = 7;
    char *out = malloc(cap);
    CHECK(out);
    int rc = cy_coap_uri_path(m, out, cap, &len);
    CHECK(rc == (ok ? 0 : CY_EINVAL));
    if (rc == 0) {
        CHECK(len == wlen && memcmp(out, want, wlen + 1) == 0);
        /* one byte short: too big, and out is "" */
        CHECK(cy_coap_uri_path(m, wlen ? out : NULL, wlen, &len) == CY_EMSGSIZE && len == 0);
        if (wlen) CHECK(out[0] == '\0');
    } else {
        CHECK(len == 0 && out[0] == '\0');
    }
    free(out);
    free(want);
}

static void check_query(const cy_coap_msg *m)
{
    for (unsigned i = 0; i < m->n_opts; i++) {
        const cy_coap_opt *o = &m->opts[i];
        if (o->num != CY_COAP_OPT_URI_QUERY) continue;
        const uint8_t *eq = o->len ? memchr(o->val, '=', o->len) : NULL;
        size_t kl = eq ? (size_t)(eq - o->val) : o->len;
        if (kl && memchr(o->val, 0, kl)) continue; /* not a C string key */
        char key[CY_COAP_OPT_MAX_LEN + 1];
        if (kl) memcpy(key, o->val, kl);
        key[kl] = '\0';
        const uint8_t *val = NULL;
        size_t vlen = 99;
        CHECK(cy_coap_query(m, key, &val, &vlen) == 0);
        /* the first Uri-Query with this key gives the value */
        const cy_coap_opt *f = NULL;
        for (unsigned k = 0; k <= i && !f; k++) {
            const cy_coap_opt *p = &m->opts[k];
            if (p->num != CY_COAP_OPT_URI_QUERY || p->len < kl || !bytes_eq(p->val, o->val, kl))
                continue;
            if (p->len == kl || p->val[kl] == '=') f = p;
        }
        CHECK(f);
        size_t fl = f->len > kl ? f->len - kl - 1 : 0;
        CHECK(vlen == fl && (fl == 0 ? val == NULL : val == f->val + kl + 1));
        CHECK(cy_coap_query(m, key, NULL, NULL) == 0);
    }
    CHECK(cy_coap_query(m, NULL, NULL, NULL) == CY_EINVAL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cy_coap_msg m;
    int rc = cy_coap_decode(data, size, &m);
    CHECK(rc == 0 || rc == CY_EINVAL || rc == CY_EPROTO || rc == CY_EMSGSIZE);
    if (rc == CY_EINVAL) {
        CHECK(size < CY_COAP_HEADER || data[0] >> 6 != 1);
        return 0;
    }
    CHECK(m.type == ((data[0] >> 4) & 3) && m.code == data[1]);
    CHECK(m.mid == (uint16_t)(data[2] << 8 | data[3]));
    if (rc) {
        CHECK(m.n_opts == 0 && m.payload == NULL && m.payload_len == 0);
        if (rc == CY_EPROTO) CHECK(m.tkl == 0);
        if (rc == CY_EMSGSIZE)
            CHECK(m.tkl == (data[0] & 15) && bytes_eq(m.token, data + CY_COAP_HEADER, m.tkl));
        return 0;
    }
    check_shape(&m, data, size);

    /* Re-encoding gives the input; it decodes to an equal message, which
     * encodes to the same bytes. */
    uint8_t *b1, *b2;
    size_t l1 = 0, l2 = 0;
    CHECK(encode(&m, size, &b1, &l1) == 0 && l1 == size && memcmp(b1, data, size) == 0);
    cy_coap_msg r;
    CHECK(cy_coap_decode(b1, l1, &r) == 0 && msg_eq(&m, &r));
    CHECK(encode(&r, l1, &b2, &l2) == 0 && l2 == l1 && memcmp(b1, b2, l1) == 0);
    free(b1);
    free(b2);
    /* Too small, by one and by more: CY_EMSGSIZE, nothing past cap. */
    size_t len = 1;
    CHECK(encode(&m, size - 1, NULL, &len) == CY_EMSGSIZE && len == 0);
    CHECK(encode(&m, size / 2, NULL, &len) == CY_EMSGSIZE && len == 0);

    if (m.code == CY_COAP_EMPTY) {
        uint8_t e[CY_COAP_HEADER];
        CHECK(cy_coap_empty(e, m.type, m.mid) == 4 && memcmp(e, data, 4) == 0);
    }
    char text[8];
    const char *t = cy_coap_code_text(m.code, text);
    CHECK(t == text && strlen(t) == 4 && t[1] == '.');
    CHECK(t[0] - '0' == CY_COAP_CLASS(m.code) && atoi(t + 2) == CY_COAP_DETAIL(m.code));

    check_options(&m);
    check_uri_path(&m, size);
    check_query(&m);
    return 0;
}
