/* cy_buf: a growable byte buffer, the unit of I/O.
 *
 * Bytes live in data[off .. len). Appends grow the buffer geometrically;
 * cy_buf_consume advances off and compacts lazily, so reading a stream of
 * packets out of one buffer costs no memmove per packet.
 *
 * Ownership: the buffer owns data; cy_buf_fini frees it and is safe on a
 * zeroed buffer. Errors: CY_ENOMEM. Thread: the owner's.
 */
#ifndef CY_BUF_H
#define CY_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A length-delimited string or binary field, borrowed. Not NUL-terminated. */
typedef struct cy_str {
    const char *p;
    uint32_t len;
} cy_str;

typedef struct cy_buf {
    uint8_t *data;
    size_t off; /* first unconsumed byte */
    size_t len; /* end of valid bytes */
    size_t cap; /* allocated bytes */
} cy_buf;

void cy_buf_init(cy_buf *b);
void cy_buf_fini(cy_buf *b);
/* Ensure room for n more bytes after len. A buffer with no memory gets
 * 256 bytes or the power-of-two multiple of it that n needs. */
int cy_buf_reserve(cy_buf *b, size_t n);
/* The same, but a buffer with no memory starts from `first` bytes (> 0):
 * for a buffer that most often holds a few small packets and is freed
 * after them, sized so its block matches the long-lived blocks around it
 * (a freed 256-byte block split by them leaves a hole nothing reuses). */
int cy_buf_reserve_from(cy_buf *b, size_t n, size_t first);
int cy_buf_append(cy_buf *b, const void *p, size_t n);
int cy_buf_put_u8(cy_buf *b, uint8_t v);
int cy_buf_put_u16(cy_buf *b, uint16_t v); /* big endian */
int cy_buf_put_u32(cy_buf *b, uint32_t v); /* big endian */
static inline size_t cy_buf_size(const cy_buf *b)
{
    return b->len - b->off;
}
/* NULL for a buffer that never held anything (NULL + 0 is undefined in C). */
static inline uint8_t *cy_buf_head(const cy_buf *b)
{
    return b->data ? b->data + b->off : NULL;
}
/* Drop n bytes from the front. */
void cy_buf_consume(cy_buf *b, size_t n);
/* Empty the buffer, keeping its memory. */
void cy_buf_reset(cy_buf *b);
/* Release memory above a small floor when the buffer is empty (idle connections). */
void cy_buf_shrink(cy_buf *b);

/* A bounded reader over borrowed bytes (frames between shards). A read past
 * the end returns NULL / 0 and sets bad, which stays set: check it once at
 * the end instead of after every field. */
typedef struct cy_reader {
    const uint8_t *p, *end;
    bool bad;
} cy_reader;

/* p may be NULL when len is 0 (an empty cy_buf's head). */
static inline cy_reader cy_reader_of(const uint8_t *p, size_t len)
{
    return (cy_reader){p, p ? p + len : p, false};
}
/* The next n bytes (borrowed), or NULL past the end. */
const uint8_t *cy_reader_take(cy_reader *r, size_t n);
/* The next n bytes (n <= 8) as a big-endian number, or 0 past the end. */
uint64_t cy_reader_be(cy_reader *r, size_t n);
/* Bytes left. */
static inline size_t cy_reader_left(const cy_reader *r)
{
    return r->bad ? 0 : (size_t)(r->end - r->p);
}

#endif
