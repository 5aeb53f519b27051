/* session_map: the sessions by client id, an intrusive hash table
 * (device_int.h).
 *
 * Every connected device has a session, so the table is kept to what a
 * session must carry anyway: the chain link is a field of the session
 * (hnext) and the key is its inline client id, so an entry costs no
 * allocation of its own (a cy_map entry was 32 bytes a session). What the
 * table allocates is its slots: 8 bytes each, a power of two of them, at
 * most one session a slot on average.
 *
 * Chained, FNV-1a (cy_hash) over the client id; the hash is not cached in
 * the session (4 bytes a session for a compare that the length check and
 * memcmp of a short id already do cheaply). Growth doubles the slots when
 * the count would pass them and moves every session at once: at 15,000
 * sessions a shard that is about 15,000 hashes of short ids, well under a
 * millisecond, once per doubling; an incremental rehash would need two
 * tables and a cursor, kept for ever, for a pause that small. A failed
 * growth only lengthens the chains. The slots never shrink (nor did
 * cy_map's): a shard that once held N sessions keeps 8*N bytes.
 *
 * Thread: the shard's loop thread.
 */
#include "device/device_int.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <string.h>

#define MIN_SLOTS 16

void cy_session_map_init(cy_session_map *m)
{
    memset(m, 0, sizeof(*m));
}

void cy_session_map_fini(cy_session_map *m)
{
    cy_free(m->slots);
    memset(m, 0, sizeof(*m));
}

static size_t slot_of(const cy_session_map *m, const char *id, size_t len)
{
    return (size_t)cy_hash(id, len) & (m->nslots - 1);
}

cy_session *cy_session_map_get(const cy_session_map *m, const char *id, size_t len)
{
    if (!m->nslots) return NULL;
    for (cy_session *s = m->slots[slot_of(m, id, len)]; s; s = s->hnext)
        if (s->client_id_len == len && memcmp(s->client_id, id, len) == 0) return s;
    return NULL;
}

static int grow(cy_session_map *m)
{
    size_t n = m->nslots ? m->nslots * 2 : MIN_SLOTS;
    cy_session **slots = cy_calloc(n, sizeof(*slots));
    if (!slots) return CY_ENOMEM;
    for (size_t i = 0; i < m->nslots; i++) {
        cy_session *s = m->slots[i];
        while (s) {
            cy_session *next = s->hnext;
            size_t j = (size_t)cy_hash(s->client_id, s->client_id_len) & (n - 1);
            s->hnext = slots[j];
            slots[j] = s;
            s = next;
        }
    }
    cy_free(m->slots);
    m->slots = slots;
    m->nslots = n;
    return 0;
}

int cy_session_map_put(cy_session_map *m, cy_session *s)
{
    if (cy_session_map_get(m, s->client_id, s->client_id_len)) return CY_EEXIST;
    /* A failed grow only costs speed, unless there are no slots at all. */
    if (m->count >= m->nslots && grow(m) && !m->nslots) return CY_ENOMEM;
    size_t i = slot_of(m, s->client_id, s->client_id_len);
    s->hnext = m->slots[i];
    m->slots[i] = s;
    m->count++;
    return 0;
}

bool cy_session_map_del(cy_session_map *m, cy_session *s)
{
    if (!m->nslots) return false;
    for (cy_session **pp = &m->slots[slot_of(m, s->client_id, s->client_id_len)]; *pp;
         pp = &(*pp)->hnext)
        if (*pp == s) {
            *pp = s->hnext;
            s->hnext = NULL;
            m->count--;
            return true;
        }
    return false;
}

void cy_session_map_each(const cy_session_map *m, void (*fn)(void *ctx, cy_session *s), void *ctx)
{
    for (size_t i = 0; i < m->nslots; i++)
        for (cy_session *s = m->slots[i], *next; s; s = next) {
            next = s->hnext; /* fn may take s out of the map, or free it */
            fn(ctx, s);
        }
}
