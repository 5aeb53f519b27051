/* cy_intern: reference-counted shared copies of texts; see cy_intern.h. */
#include "core/cy_intern.h"

#include "core/cy_alloc.h"
#include "core/cy_map.h"

#include <stdint.h>
#include <string.h>

typedef struct interned {
    uint32_t refs;
    uint32_t len;
    char text[]; /* the key in the table, NUL-terminated */
} interned;

static cy_map table; /* zeroed: an empty map, as cy_map_init makes it */

const char *cy_intern(const char *text, size_t len)
{
    if (len >= UINT32_MAX) return NULL;
    interned *e = cy_map_get(&table, text, len);
    if (e) {
        if (e->refs == UINT32_MAX) return NULL;
        e->refs++;
        return e->text;
    }
    e = cy_malloc(sizeof(*e) + len + 1);
    if (!e) return NULL;
    e->refs = 1;
    e->len = (uint32_t)len;
    memcpy(e->text, text, len);
    e->text[len] = '\0';
    if (cy_map_put(&table, e->text, len, e)) {
        cy_free(e);
        return NULL;
    }
    return e->text;
}

void cy_intern_drop(const char *s)
{
    if (!s) return;
    interned *e = (interned *)(s - offsetof(interned, text));
    if (--e->refs) return;
    cy_map_del(&table, e->text, e->len);
    cy_free(e);
    if (table.count == 0) cy_map_fini(&table); /* nothing left behind for leak checkers */
}

size_t cy_intern_count(void)
{
    return table.count;
}
