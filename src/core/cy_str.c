/* cy_str: see cy_str.h. */
#include "core/cy_str.h"

static int blank(char c)
{
    return c == ' ' || c == '\t';
}

const char *cy_list_next(const char **p, size_t *len)
{
    const char *s = *p;
    if (!s) return NULL;
    while (blank(*s))
        s++;
    const char *e = s;
    while (*e && *e != ',')
        e++;
    const char *t = e;
    while (t > s && blank(t[-1]))
        t--;
    *len = (size_t)(t - s);
    *p = *e ? e + 1 : NULL;
    return s;
}
