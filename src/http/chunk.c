/* chunk: cy_http_chunk's life (http.h); its layout is in chunk_int.h. */
#include "http/chunk_int.h"
#include "http/http.h"

#include "core/cy_alloc.h"

#include <string.h>

cy_http_chunk *cy_http_chunk_new(const char *data, size_t len)
{
    if (data == NULL && len > 0) return NULL;
    cy_http_chunk *c = cy_malloc(sizeof(*c) + len);
    if (c == NULL) return NULL;
    c->refs = 1;
    c->len = len;
    if (len) memcpy(c->data, data, len);
    return c;
}

cy_http_chunk *cy_http_chunk_ref(cy_http_chunk *c)
{
    if (c) c->refs++;
    return c;
}

void cy_http_chunk_unref(cy_http_chunk *c)
{
    if (c && --c->refs == 0) cy_free(c);
}

size_t cy_http_chunk_len(const cy_http_chunk *c)
{
    return c ? c->len : 0;
}
