/* cy_intern: one shared copy of each text many objects hold the same, such
 * as the username a fleet's devices share (every device of a fleet logging
 * in with the same credentials would otherwise carry its own copy: a malloc
 * chunk of 32-48 bytes per connection).
 *
 * A process-wide table of reference-counted, NUL-terminated copies: each
 * cy_intern of a text returns the same copy and adds a reference; each
 * cy_intern_drop of it takes one away, and the last frees it.
 *
 * Ownership: the returned text belongs to the table; the caller holds one
 * reference and gives it back with cy_intern_drop (never cy_free). The
 * input is copied. Errors: NULL when out of memory (or len of 4 GiB or
 * more). Thread: one thread per process (a shard's loop); not thread-safe.
 */
#ifndef CYAN_CORE_CY_INTERN_H
#define CYAN_CORE_CY_INTERN_H

#include <stddef.h>

/* The shared copy of text[0..len) (NUL-terminated), one more reference. */
const char *cy_intern(const char *text, size_t len);
/* Give back one reference to s (from cy_intern); NULL is ignored. */
void cy_intern_drop(const char *s);
/* Distinct texts held (tests). */
size_t cy_intern_count(void);

#endif
