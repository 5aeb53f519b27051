/* text: the CLI's pure text helpers (cli_int.h): the API's address from a
 * listener setting, a user's base URL checked, whether two URLs name one
 * node, API times and ages, and the line of a setting in a config file.
 *
 * URLs are taken apart by hand here, narrowly: a base URL is
 * scheme://host[:port][/path], and anything else (a user:password@, a
 * query, a blank) is refused rather than guessed at; libcurl parses it
 * again when it connects.
 */
#include "cli/cli_int.h"

#include "core/cy_err.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

size_t cy_cli_control_at(const char *s, size_t n)
{
    unsigned char c = (unsigned char)s[0];
    if (c < 0x20 || c == 0x7f) return 1;
    if (c == 0xC2 && n > 1 && (unsigned char)s[1] >= 0x80 && (unsigned char)s[1] <= 0x9F) return 2;
    return 0;
}

bool cy_cli_has_control(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (cy_cli_control_at(s + i, n - i)) return true;
    return false;
}

void cy_cli_clean(char *s)
{
    size_t n = strlen(s), w = 0;
    for (size_t i = 0; i < n;) {
        size_t k = cy_cli_control_at(s + i, n - i);
        s[w++] = k ? '?' : s[i];
        i += k ? k : 1;
    }
    s[w] = '\0';
}

int cy_cli_listen_url(const char *listen, bool https, char *out, size_t cap)
{
    if (!listen || !*listen) return CY_ENOENT;
    const char *scheme = https ? "https" : "http";
    const char *colon = strrchr(listen, ':');
    if (!colon || !colon[1]) return CY_EINVAL;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535 || !isdigit((unsigned char)colon[1])) return CY_EINVAL;
    size_t hl = (size_t)(colon - listen);
    char host[256];
    if (hl >= sizeof(host)) return CY_EINVAL;
    memcpy(host, listen, hl);
    host[hl] = '\0';
    const char *h = host;
    if (host[0] == '[') {
        if (hl < 3 || host[hl - 1] != ']') return CY_EINVAL;
        if (!strcmp(host, "[::]") || !strcmp(host, "[::0]")) h = "[::1]";
    } else {
        if (strchr(host, ':')) return CY_EINVAL; /* a v6 address without brackets */
        if (!*host || !strcmp(host, "*") || !strcmp(host, "0.0.0.0")) h = "127.0.0.1";
    }
    for (const char *p = h; *p; p++)
        if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p) || *p == '/' || *p == '@')
            return CY_EINVAL;
    int n = snprintf(out, cap, "%s://%s:%ld", scheme, h, port);
    return n < 0 || (size_t)n >= cap ? CY_ERANGE : 0;
}

/* The parts of a base URL: scheme length (4 or 5), host [hs, he), port. */
typedef struct url_parts {
    bool https;
    const char *host;
    size_t host_len;
    long port;
} url_parts;

static int url_split(const char *s, url_parts *u, const char **why)
{
    static const char *w;
    const char **whyp = why ? why : &w;
    size_t skip;
    if (!strncasecmp(s, "http://", 7)) {
        u->https = false;
        skip = 7;
    } else if (!strncasecmp(s, "https://", 8)) {
        u->https = true;
        skip = 8;
    } else {
        *whyp = "it must start with http:// or https://";
        return CY_EINVAL;
    }
    for (const char *p = s; *p; p++)
        if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p) || (unsigned char)*p > 126) {
            *whyp = "it holds a blank or a control character";
            return CY_EINVAL;
        }
    const char *h = s + skip, *p = h;
    const char *auth_end = h + strcspn(h, "/?#");
    if (memchr(h, '@', (size_t)(auth_end - h))) {
        *whyp = "no user:password@ in it: the token goes in --token";
        return CY_EINVAL;
    }
    if (strpbrk(h, "?#")) {
        *whyp = "no query or fragment in it: the base URL only, e.g. http://127.0.0.1:8080";
        return CY_EINVAL;
    }
    if (*p == '[') {
        const char *close = strchr(p, ']');
        if (!close || close > auth_end || close == p + 1) {
            *whyp = "a bad [IPv6] host";
            return CY_EINVAL;
        }
        for (const char *q = p + 1; q < close; q++)
            if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.') {
                *whyp = "a bad [IPv6] host";
                return CY_EINVAL;
            }
        p = close + 1;
    } else {
        while (p < auth_end && *p != ':')
            p++;
        if (p == h) {
            *whyp = "it names no host";
            return CY_EINVAL;
        }
        for (const char *q = h; q < p; q++)
            if (!isalnum((unsigned char)*q) && *q != '-' && *q != '.' && *q != '_') {
                *whyp = "a bad host name";
                return CY_EINVAL;
            }
    }
    u->host = h;
    u->host_len = (size_t)(p - h);
    u->port = u->https ? 443 : 80;
    if (p < auth_end && *p == ':') {
        const char *d = p + 1;
        long port = 0;
        if (d == auth_end) {
            *whyp = "a ':' without a port";
            return CY_EINVAL;
        }
        for (; d < auth_end; d++) {
            if (!isdigit((unsigned char)*d) || port > 65535) {
                *whyp = "a bad port";
                return CY_EINVAL;
            }
            port = port * 10 + (*d - '0');
        }
        if (port < 1 || port > 65535) {
            *whyp = "a port from 1 to 65535";
            return CY_EINVAL;
        }
        u->port = port;
    } else if (p != auth_end) {
        *whyp = "a bad host";
        return CY_EINVAL;
    }
    return 0;
}

int cy_cli_base_url(const char *text, char *out, size_t cap, const char **why)
{
    url_parts u;
    if (!text) return CY_EINVAL;
    int rc = url_split(text, &u, why);
    if (rc) return rc;
    size_t n = strlen(text);
    while (n > 0 && text[n - 1] == '/')
        n--;
    if (n >= cap) return CY_ERANGE;
    memcpy(out, text, n);
    out[n] = '\0';
    return 0;
}

static bool loopback(const char *h, size_t n)
{
    if (n == 9 && !strncasecmp(h, "localhost", 9)) return true;
    if (n == 5 && !memcmp(h, "[::1]", 5)) return true;
    if (n < 7 || n > 15 || strncmp(h, "127.", 4)) return false;
    int dots = 0;
    for (size_t i = 0; i < n; i++) {
        if (h[i] == '.')
            dots++;
        else if (!isdigit((unsigned char)h[i]))
            return false;
    }
    return dots == 3;
}

bool cy_cli_same_node(const char *a, const char *b)
{
    url_parts ua, ub;
    if (!a || !b || url_split(a, &ua, NULL) || url_split(b, &ub, NULL)) return false;
    if (ua.https != ub.https || ua.port != ub.port) return false;
    if (ua.host_len == ub.host_len && !strncasecmp(ua.host, ub.host, ua.host_len)) return true;
    return loopback(ua.host, ua.host_len) && loopback(ub.host, ub.host_len);
}

int cy_cli_time_ms(const char *iso, int64_t *ms)
{
    if (!iso) return CY_EINVAL;
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    int frac = 0, used = 0;
    /* YYYY-MM-DDTHH:MM:SS, then ".mmm" or nothing, then "Z" */
    if (sscanf(iso, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &used) != 6 ||
        used != 19)
        return CY_EINVAL;
    const char *p = iso + used;
    if (*p == '.') {
        int digits = 0;
        for (p++; isdigit((unsigned char)*p); p++, digits++)
            if (digits < 3) frac = frac * 10 + (*p - '0');
        if (digits == 0) return CY_EINVAL;
        for (; digits < 3; digits++)
            frac *= 10;
    }
    if (strcmp(p, "Z") != 0) return CY_EINVAL;
    if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 60)
        return CY_EINVAL;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1) return CY_EINVAL;
    *ms = (int64_t)t * 1000 + frac;
    return 0;
}

void cy_cli_age(int64_t ago_ms, char *out, size_t cap)
{
    int64_t s = ago_ms / 1000;
    if (s <= 0)
        snprintf(out, cap, "now");
    else if (s < 120)
        snprintf(out, cap, "%llds ago", (long long)s);
    else if (s < 2 * 3600)
        snprintf(out, cap, "%lldm ago", (long long)(s / 60));
    else if (s < 2 * 86400)
        snprintf(out, cap, "%lldh ago", (long long)(s / 3600));
    else
        snprintf(out, cap, "%lldd ago", (long long)(s / 86400));
}

unsigned cy_cli_config_line(const char *text, size_t len, const char *name)
{
    if (!text || !name) return 0;
    size_t nl = strlen(name);
    unsigned line = 0, found = 0;
    size_t i = len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3) ? 3 : 0; /* a BOM, as the loader */
    while (i < len) {
        line++;
        const char *s = text + i;
        const char *end = memchr(s, '\n', len - i);
        size_t n = end ? (size_t)(end - s) : len - i;
        i += n + 1;
        /* as cy_config_load_buf: a '#' ends the line, blanks around the name */
        const char *hash = memchr(s, '#', n);
        if (hash) n = (size_t)(hash - s);
        const char *eq = memchr(s, '=', n);
        if (!eq) continue;
        const char *a = s, *b = eq;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        if ((size_t)(b - a) == nl && !memcmp(a, name, nl)) found = line;
    }
    return found;
}
