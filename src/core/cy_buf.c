/* cy_buf: growable buffer with a consumed prefix; see cy_buf.h. */
#include "core/cy_buf.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <string.h>

void cy_buf_init(cy_buf *b)
{
    memset(b, 0, sizeof(*b));
}

void cy_buf_fini(cy_buf *b)
{
    cy_free(b->data);
    memset(b, 0, sizeof(*b));
}

int cy_buf_reserve(cy_buf *b, size_t n)
{
    return cy_buf_reserve_from(b, n, 256);
}

int cy_buf_reserve_from(cy_buf *b, size_t n, size_t first)
{
    if (b->cap - b->len >= n) return 0;
    if (b->off > 0) { /* compact before growing */
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= n) return 0;
    }
    size_t cap = b->cap ? b->cap : first ? first : 256;
    while (cap - b->len < n) {
        if (cap > SIZE_MAX / 2) return CY_ENOMEM;
        cap *= 2;
    }
    uint8_t *d = cy_realloc(b->data, cap);
    if (!d) return CY_ENOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

int cy_buf_append(cy_buf *b, const void *p, size_t n)
{
    if (n == 0) return 0;
    int rc = cy_buf_reserve(b, n);
    if (rc) return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int cy_buf_put_u8(cy_buf *b, uint8_t v)
{
    return cy_buf_append(b, &v, 1);
}

int cy_buf_put_u16(cy_buf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    return cy_buf_append(b, x, 2);
}

int cy_buf_put_u32(cy_buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    return cy_buf_append(b, x, 4);
}

void cy_buf_consume(cy_buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len) b->off = b->len = 0;
}

void cy_buf_reset(cy_buf *b)
{
    b->off = b->len = 0;
}

void cy_buf_shrink(cy_buf *b)
{
    if (b->len == b->off && b->cap > 4096) {
        cy_free(b->data);
        b->data = NULL;
        b->cap = b->off = b->len = 0;
    }
}

const uint8_t *cy_reader_take(cy_reader *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *at = r->p;
    if (n) r->p += n; /* p is NULL in a reader of no bytes */
    return at;
}

uint64_t cy_reader_be(cy_reader *r, size_t n)
{
    const uint8_t *p = cy_reader_take(r, n);
    uint64_t v = 0;
    for (size_t i = 0; p && i < n; i++) v = (v << 8) | p[i];
    return v;
}
