/* cy_str: small text helpers shared by the settings, the token scopes and
 * the HTTP layer's header lists.
 *
 * Ownership: every pointer is borrowed; results point into the caller's
 * text. Errors: none. Threads: any (no state).
 */
#ifndef CYAN_CORE_CY_STR_H
#define CYAN_CORE_CY_STR_H

#include <stddef.h>

/* The next item of a comma-separated list, blanks (spaces, tabs) around it
 * trimmed: returns its start and sets *len (0 for an empty item), and moves
 * *p past the item's comma; NULL once *p is NULL (set so after the last
 * item). Every item counts, empty ones too: "" is one empty item, "a," is
 * "a" then an empty item. Start with *p = the list (NULL: no items). */
const char *cy_list_next(const char **p, size_t *len);

#endif
