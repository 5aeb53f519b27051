/* cy_alloc: malloc wrappers with a countdown that makes one allocation fail. */
#include "core/cy_alloc.h"

#include <stdlib.h>
#include <string.h>

static long fail_countdown = -1;

static int should_fail(void)
{
    if (fail_countdown < 0) return 0;
    if (fail_countdown == 0) {
        fail_countdown = -1;
        return 1;
    }
    fail_countdown--;
    return 0;
}

void cy_alloc_fail_after(long n)
{
    fail_countdown = n;
}

void *cy_malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n ? n : 1);
}

void *cy_calloc(size_t count, size_t size)
{
    return should_fail() ? NULL : calloc(count ? count : 1, size ? size : 1);
}

void *cy_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n ? n : 1);
}

char *cy_strndup(const char *s, size_t len)
{
    char *d = cy_malloc(len + 1);
    if (!d) return NULL;
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

char *cy_strdup(const char *s)
{
    return cy_strndup(s, strlen(s));
}

void cy_free(void *p)
{
    free(p);
}
