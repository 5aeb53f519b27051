/* codec: CoAP messages (RFC 7252 section 3), decoded in place and encoded
 * into a caller's buffer (codec.h).
 *
 * The one idea to read it by: an option is a header byte of two nibbles,
 * delta (from the previous option's number) and length, each 0..12 as is,
 * 13 for "one more byte, plus 13", 14 for "two more bytes, plus 269", and
 * 15 reserved (0xFF as a whole byte is the payload marker). Those forms do
 * not overlap, so every option list has exactly one encoding: a message the
 * decoder accepts, written again option by option, gives the same bytes.
 *
 * The decoder reads the whole datagram even after it knows the message is
 * too big for it (CY_EMSGSIZE): a format error anywhere wins, so a CON with
 * one is answered with RST, not 4.02.
 */
#include "coap/codec.h"

#include "core/cy_err.h"

#include <stdio.h>
#include <string.h>

#define PAYLOAD_MARKER 0xFF
/* The largest option delta or length the 13/14 extensions can say. */
#define EXT_MAX (65535 + 269)

/* ---- decoding ---- */

/* One extended delta or length: nibble 0..14 and the bytes after it. */
static int read_ext(unsigned nib, const uint8_t *buf, size_t len, size_t *pos, uint32_t *v)
{
    if (nib < 13) {
        *v = nib;
    } else if (nib == 13) {
        if (len - *pos < 1) return CY_EPROTO;
        *v = 13u + buf[*pos];
        *pos += 1;
    } else if (nib == 14) {
        if (len - *pos < 2) return CY_EPROTO;
        *v = 269u + ((uint32_t)buf[*pos] << 8 | buf[*pos + 1]);
        *pos += 2;
    } else {
        return CY_EPROTO; /* 15 outside the payload marker */
    }
    return 0;
}

int cy_coap_decode(const uint8_t *buf, size_t len, cy_coap_msg *out)
{
    out->type = 0;
    out->code = 0;
    out->mid = 0;
    out->tkl = 0;
    out->n_opts = 0;
    out->payload = NULL;
    out->payload_len = 0;
    if (!buf || len < CY_COAP_HEADER || buf[0] >> 6 != 1) return CY_EINVAL;
    out->type = (buf[0] >> 4) & 3;
    out->code = buf[1];
    out->mid = (uint16_t)(buf[2] << 8 | buf[3]);

    unsigned tkl = buf[0] & 0x0f;
    if (tkl > CY_COAP_TOKEN_MAX) return CY_EPROTO;
    if (out->code == CY_COAP_EMPTY) /* 0.00: the 4 bytes and nothing else */
        return tkl == 0 && len == CY_COAP_HEADER ? 0 : CY_EPROTO;
    if (len - CY_COAP_HEADER < tkl) return CY_EPROTO;

    size_t pos = CY_COAP_HEADER + tkl;
    uint32_t num = 0;
    unsigned n = 0;
    bool too_big = false;
    while (pos < len && buf[pos] != PAYLOAD_MARKER) {
        uint8_t b = buf[pos++];
        uint32_t delta, olen;
        if (read_ext(b >> 4, buf, len, &pos, &delta) || read_ext(b & 0x0f, buf, len, &pos, &olen))
            goto bad;
        num += delta;
        if (num > UINT16_MAX || len - pos < olen) goto bad;
        if (n >= CY_COAP_MAX_OPTS || olen > CY_COAP_OPT_MAX_LEN) {
            too_big = true; /* keep reading: a format error further on wins */
        } else {
            cy_coap_opt *o = &out->opts[n];
            o->num = (uint16_t)num;
            o->len = (uint16_t)olen;
            o->val = olen ? buf + pos : NULL;
        }
        n++;
        pos += olen;
    }
    if (pos < len) { /* the marker */
        pos++;
        if (pos == len) goto bad;
        out->payload = buf + pos;
        out->payload_len = len - pos;
    }

    out->tkl = (uint8_t)tkl;
    if (tkl) memcpy(out->token, buf + CY_COAP_HEADER, tkl);
    if (too_big) {
        out->payload = NULL;
        out->payload_len = 0;
        return CY_EMSGSIZE;
    }
    out->n_opts = (uint16_t)n;
    return 0;

bad:
    out->payload = NULL;
    out->payload_len = 0;
    return CY_EPROTO;
}

const cy_coap_opt *cy_coap_opt_find(const cy_coap_msg *m, uint16_t num)
{
    for (unsigned i = 0; i < m->n_opts; i++) {
        if (m->opts[i].num == num) return &m->opts[i];
        if (m->opts[i].num > num) break; /* ascending */
    }
    return NULL;
}

unsigned cy_coap_opt_count(const cy_coap_msg *m, uint16_t num)
{
    unsigned n = 0;
    for (unsigned i = 0; i < m->n_opts; i++)
        n += m->opts[i].num == num;
    return n;
}

int cy_coap_opt_uint(const cy_coap_opt *o, uint32_t *v)
{
    if (o->len > 4) return CY_EPROTO;
    uint32_t x = 0;
    for (unsigned i = 0; i < o->len; i++)
        x = x << 8 | o->val[i];
    *v = x;
    return 0;
}

uint16_t cy_coap_unknown_critical(const cy_coap_msg *m, const uint16_t *known, size_t n)
{
    for (unsigned i = 0; i < m->n_opts; i++) {
        uint16_t num = m->opts[i].num;
        if (!cy_coap_opt_critical(num)) continue;
        size_t k = 0;
        while (k < n && known[k] != num)
            k++;
        if (k == n) return num;
    }
    return 0;
}

/* Well-formed UTF-8 (RFC 3629): shortest forms only, no surrogates, nothing
 * over U+10FFFF. NUL is valid UTF-8; the caller refuses it. */
static bool utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        unsigned n;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (len - i - 1 < n) return false;
        for (unsigned k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += n + 1;
    }
    return true;
}

static bool segment_ok(const cy_coap_opt *o)
{
    for (unsigned i = 0; i < o->len; i++) {
        uint8_t c = o->val[i];
        if (c == '/' || c == '\0' || c == '+' || c == '#') return false;
    }
    return o->len > 0 && utf8_valid(o->val, o->len);
}

int cy_coap_uri_path(const cy_coap_msg *m, char *out, size_t cap, size_t *len)
{
    *len = 0;
    if (cap) out[0] = '\0';
    unsigned nseg = cy_coap_opt_count(m, CY_COAP_OPT_URI_PATH);
    const cy_coap_opt *first = cy_coap_opt_find(m, CY_COAP_OPT_URI_PATH);
    /* One empty segment is the root ("coap://h/" sent as an option), the
     * same as none; any other empty segment is refused. */
    if (nseg == 1 && first->len == 0) nseg = 0;
    size_t total = 0;
    for (unsigned i = 0; i < nseg; i++) {
        if (!segment_ok(&first[i])) return CY_EINVAL; /* repeats are adjacent */
        total += (i ? 1 : 0) + first[i].len;
    }
    if (total >= cap) return CY_EMSGSIZE;
    size_t pos = 0;
    for (unsigned i = 0; i < nseg; i++) {
        if (i) out[pos++] = '/';
        memcpy(out + pos, first[i].val, first[i].len);
        pos += first[i].len;
    }
    out[pos] = '\0';
    *len = pos;
    return 0;
}

int cy_coap_query(const cy_coap_msg *m, const char *key, const uint8_t **val, size_t *vlen)
{
    if (val) *val = NULL;
    if (vlen) *vlen = 0;
    if (!key) return CY_EINVAL;
    size_t klen = strlen(key);
    for (unsigned i = 0; i < m->n_opts; i++) {
        const cy_coap_opt *o = &m->opts[i];
        if (o->num != CY_COAP_OPT_URI_QUERY) continue;
        const uint8_t *eq = o->len ? memchr(o->val, '=', o->len) : NULL;
        size_t kl = eq ? (size_t)(eq - o->val) : o->len;
        if (kl != klen || (klen && memcmp(o->val, key, klen) != 0)) continue;
        size_t vl = eq ? o->len - kl - 1 : 0;
        if (val) *val = vl ? eq + 1 : NULL;
        if (vlen) *vlen = vl;
        return 0;
    }
    return CY_ENOENT;
}

int cy_coap_block_decode(const cy_coap_opt *o, cy_coap_block *b)
{
    uint32_t v;
    if (o->len > 3 || cy_coap_opt_uint(o, &v)) return CY_EPROTO;
    if ((v & 7) == 7) return CY_EPROTO;
    b->num = v >> 4;
    b->more = (v >> 3) & 1;
    b->szx = v & 7;
    return 0;
}

uint32_t cy_coap_block_value(const cy_coap_block *b)
{
    return b->num << 4 | (b->more ? 8u : 0u) | (b->szx & 7u);
}

/* ---- encoding ---- */

static void fail(cy_coap_writer *w, int err)
{
    if (!w->err) w->err = err;
}

/* Room for n more bytes? Sets CY_EMSGSIZE when not. */
static bool room(cy_coap_writer *w, size_t n)
{
    if (w->cap - w->len >= n) return true;
    fail(w, CY_EMSGSIZE);
    return false;
}

void cy_coap_w_init(cy_coap_writer *w, uint8_t *buf, size_t cap, uint8_t type, uint8_t code,
                    uint16_t mid, const uint8_t *token, uint8_t tkl)
{
    w->buf = buf;
    w->cap = buf ? cap : 0;
    w->len = 0;
    w->last_opt = 0;
    w->err = 0;
    w->payload = false;
    if (type > CY_COAP_RST || tkl > CY_COAP_TOKEN_MAX || (tkl && !token) ||
        (code == CY_COAP_EMPTY && tkl)) {
        fail(w, CY_EINVAL);
        return;
    }
    if (!room(w, CY_COAP_HEADER + (size_t)tkl)) return;
    buf[0] = (uint8_t)(1u << 6 | (unsigned)type << 4 | tkl);
    buf[1] = code;
    buf[2] = (uint8_t)(mid >> 8);
    buf[3] = (uint8_t)mid;
    if (tkl) memcpy(buf + CY_COAP_HEADER, token, tkl);
    w->len = CY_COAP_HEADER + (size_t)tkl;
}

/* The nibble for an option delta or length v (<= EXT_MAX), and its
 * extension bytes into ext (*n of them). */
static unsigned ext_form(uint32_t v, uint8_t ext[2], size_t *n)
{
    if (v < 13) {
        *n = 0;
        return v;
    }
    if (v < 269) {
        ext[0] = (uint8_t)(v - 13);
        *n = 1;
        return 13;
    }
    ext[0] = (uint8_t)((v - 269) >> 8);
    ext[1] = (uint8_t)(v - 269);
    *n = 2;
    return 14;
}

void cy_coap_w_opt(cy_coap_writer *w, uint16_t num, const void *val, size_t len)
{
    if (w->err) return;
    if (num < w->last_opt || w->payload || len > EXT_MAX || (len && !val) ||
        w->buf[1] == CY_COAP_EMPTY) {
        fail(w, CY_EINVAL);
        return;
    }
    uint8_t dext[2], lext[2];
    size_t dn, ln;
    unsigned dnib = ext_form((uint32_t)(num - w->last_opt), dext, &dn);
    unsigned lnib = ext_form((uint32_t)len, lext, &ln);
    if (!room(w, 1 + dn + ln + len)) return; /* len <= EXT_MAX: no overflow */
    uint8_t *p = w->buf + w->len;
    *p++ = (uint8_t)(dnib << 4 | lnib);
    memcpy(p, dext, dn);
    p += dn;
    memcpy(p, lext, ln);
    p += ln;
    if (len) memcpy(p, val, len);
    w->len += 1 + dn + ln + len;
    w->last_opt = num;
}

void cy_coap_w_opt_uint(cy_coap_writer *w, uint16_t num, uint32_t v)
{
    uint8_t b[4];
    size_t n = 0;
    for (int shift = 24; shift >= 0; shift -= 8)
        if (n || v >> shift) b[n++] = (uint8_t)(v >> shift);
    cy_coap_w_opt(w, num, b, n);
}

void cy_coap_w_payload(cy_coap_writer *w, const void *p, size_t len)
{
    if (w->err) return;
    if (w->payload || (len && !p) || (len && w->buf[1] == CY_COAP_EMPTY)) {
        fail(w, CY_EINVAL);
        return;
    }
    w->payload = true;
    if (!len) return;
    if (!room(w, 1) || w->cap - w->len - 1 < len) { /* not 1 + len: it may wrap */
        fail(w, CY_EMSGSIZE);
        return;
    }
    w->buf[w->len] = PAYLOAD_MARKER;
    memcpy(w->buf + w->len + 1, p, len);
    w->len += 1 + len;
}

int cy_coap_w_end(cy_coap_writer *w, size_t *len)
{
    if (len) *len = w->err ? 0 : w->len;
    return w->err;
}

size_t cy_coap_empty(uint8_t buf[CY_COAP_HEADER], uint8_t type, uint16_t mid)
{
    buf[0] = (uint8_t)(1u << 6 | (type & 3u) << 4);
    buf[1] = CY_COAP_EMPTY;
    buf[2] = (uint8_t)(mid >> 8);
    buf[3] = (uint8_t)mid;
    return CY_COAP_HEADER;
}

const char *cy_coap_code_text(uint8_t code, char buf[8])
{
    snprintf(buf, 8, "%u.%02u", (unsigned)CY_COAP_CLASS(code), (unsigned)CY_COAP_DETAIL(code));
    return buf;
}
