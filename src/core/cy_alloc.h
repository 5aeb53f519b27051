/* cy_alloc: the allocator every module uses, with a fault-injection hook.
 *
 * Tests call cy_alloc_fail_after(n) to make the (n+1)th allocation from now
 * fail, and walk every failure path of a constructor checking nothing leaks
 * (SQLite's way). cy_alloc_fail_after(-1) turns it off. Memory from these
 * functions is released with cy_free (plain free underneath).
 *
 * Thread: the fault counter is per process and not synchronised; cyan runs one
 * loop thread per process.
 */
#ifndef CY_ALLOC_H
#define CY_ALLOC_H

#include <stddef.h>

void *cy_malloc(size_t n);
void *cy_calloc(size_t count, size_t size);
void *cy_realloc(void *p, size_t n);
/* Copies len bytes of s and a terminating NUL. Caller frees with cy_free. */
char *cy_strndup(const char *s, size_t len);
char *cy_strdup(const char *s);
void cy_free(void *p);

/* Fail the allocation after the next n successful ones; -1 disables. */
void cy_alloc_fail_after(long n);

#endif
