/* http_testlib: what the unit tests with an in-process HTTP receiver share
 * (test_http_client, test_notify). Header-only. Thread: the test's. */
#ifndef CY_HTTP_TESTLIB_H
#define CY_HTTP_TESTLIB_H

#include <string.h>
#include <strings.h>

/* The value of header `name` in a request head ("...\r\nName: value\r\n"),
 * copied NUL-terminated into out (cut to len - 1), or NULL when absent. */
static inline const char *find_header(const char *head, const char *name, char *out, size_t len)
{
    const char *p = head;
    size_t nl = strlen(name);
    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (!strncasecmp(p, name, nl) && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t l = strcspn(v, "\r\n");
            if (l >= len) l = len - 1;
            memcpy(out, v, l);
            out[l] = '\0';
            return out;
        }
    }
    return NULL;
}

#endif
