/* policy: the rules of webhook delivery that need no I/O; see policy.h.
 *
 * Retry-After is parsed by hand rather than with strptime, whose day and
 * month names follow the locale: delta-seconds is 1*DIGIT; an HTTP-date
 * only in its IMF-fixdate form ("Sun, 06 Nov 1994 08:49:37 GMT", RFC 9110
 * 5.6.7), the one senders must generate; the obsolete RFC 850 and asctime
 * forms count as invalid.
 *
 * Private addresses: besides the ranges the header lists, 240.0.0.0/4
 * (reserved, of which the broadcast address is the last) is refused, and an
 * IPv6 address that carries an IPv4 one (mapped ::ffff:0:0/96, translated
 * ::ffff:0:0:0/96, the deprecated compatible ::/96, NAT64's 64:ff9b::/96,
 * 6to4's 2002::/16) is judged by the IPv4 address inside, since a
 * translator or relay on the way would deliver it there. Site-local
 * fec0::/10 (deprecated) counts as private.
 *
 * The URL check is about the text; a host name is resolved, and its
 * addresses checked, when the client connects. It still treats the IPv4
 * spellings the resolver accepts (inet_aton: "127.1", "0x7f.1",
 * "2130706433") as literals, so that those are refused here already.
 */
#include "webhooks/policy.h"

#include "core/cy_err.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define URL_MAX 2048

cy_wh_verdict cy_wh_classify(long status)
{
    if (status >= 200 && status <= 299) return CY_WH_DELIVERED;
    if (status <= 0 || status == 408 || status == 429 || (status >= 500 && status <= 599))
        return CY_WH_RETRY;
    if (status == 410) return CY_WH_GONE;
    return CY_WH_DEAD;
}

int64_t cy_wh_backoff_ms(unsigned failures, uint32_t base_ms, double rnd)
{
    static const unsigned steps[] = {1, 60, 360, 1440, 3600, 7200};
    size_t n = sizeof(steps) / sizeof(steps[0]);
    size_t i = failures <= 1 ? 0 : failures - 1 < n ? failures - 1 : n - 1;
    if (!(rnd >= 0.0 && rnd < 1.0)) rnd = 0.5; /* NaN and out of range: no jitter */
    double wait = (double)base_ms * steps[i] * (0.8 + 0.4 * rnd);
    return (int64_t)wait;
}

/* Up to len digits at s as a number; -1 unless all len are digits. */
static int digits(const char *s, int len)
{
    int v = 0;
    for (int i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* IMF-fixdate to unix seconds; INT64_MIN when it is not one. */
static int64_t imf_fixdate(const char *s, size_t n)
{
    static const char *days[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
    static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    /* "Sun, 06 Nov 1994 08:49:37 GMT": 29 characters, fixed positions. */
    if (n != 29 || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' ||
        s[19] != ':' || s[22] != ':' || s[25] != ' ' || memcmp(s + 26, "GMT", 3) != 0)
        return INT64_MIN;
    int wd = -1, mon = -1;
    for (int i = 0; i < 7; i++)
        if (memcmp(s, days[i], 3) == 0) wd = i;
    for (int i = 0; i < 12; i++)
        if (memcmp(s + 8, months[i], 3) == 0) mon = i;
    int day = digits(s + 5, 2), year = digits(s + 12, 4);
    int hh = digits(s + 17, 2), mm = digits(s + 20, 2), ss = digits(s + 23, 2);
    if (wd < 0 || mon < 0 || day < 1 || year < 0 || hh < 0 || hh > 23 || mm < 0 || mm > 59 ||
        ss < 0 || ss > 60)
        return INT64_MIN;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > mdays[mon] || (mon == 1 && day == 29 && !leap)) return INT64_MIN;
    struct tm tm = {.tm_year = year - 1900,
                    .tm_mon = mon,
                    .tm_mday = day,
                    .tm_hour = hh,
                    .tm_min = mm,
                    .tm_sec = ss};
    return (int64_t)timegm(&tm); /* a year of 4 digits: no overflow, no error */
}

int64_t cy_wh_retry_after_ms(const char *value, int64_t now_wall_ms)
{
    if (!value) return -1;
    /* Optional whitespace around a field value (RFC 9110 5.5). */
    while (*value == ' ' || *value == '\t')
        value++;
    size_t n = strlen(value);
    while (n && (value[n - 1] == ' ' || value[n - 1] == '\t'))
        n--;
    if (n == 0) return -1;
    if (value[0] >= '0' && value[0] <= '9') {
        int64_t secs = 0;
        for (size_t i = 0; i < n; i++) {
            if (value[i] < '0' || value[i] > '9') return -1;
            if (secs <= CY_WH_RETRY_AFTER_MAX_MS) secs = secs * 10 + (value[i] - '0');
        }
        return secs > CY_WH_RETRY_AFTER_MAX_MS / 1000 ? CY_WH_RETRY_AFTER_MAX_MS : secs * 1000;
    }
    int64_t when = imf_fixdate(value, n);
    if (when == INT64_MIN) return -1;
    int64_t d = when * 1000 - now_wall_ms;
    return d <= 0 ? 0 : d > CY_WH_RETRY_AFTER_MAX_MS ? CY_WH_RETRY_AFTER_MAX_MS : d;
}

/* ---- the circuit ----------------------------------------------------------- */

void cy_wh_circuit_init(cy_wh_circuit *c)
{
    memset(c, 0, sizeof(*c));
    c->state = CY_WH_CLOSED;
}

static void circuit_open(cy_wh_circuit *c, int64_t now_ms)
{
    int64_t rest = CY_WH_CIRCUIT_OPEN_MS;
    for (unsigned i = 0; i < c->opens && rest < CY_WH_CIRCUIT_OPEN_MAX_MS; i++)
        rest *= 2;
    if (rest > CY_WH_CIRCUIT_OPEN_MAX_MS) rest = CY_WH_CIRCUIT_OPEN_MAX_MS;
    c->state = CY_WH_OPEN;
    c->opens++;
    c->open_until = now_ms + rest;
    c->probing = false;
}

bool cy_wh_circuit_allow(cy_wh_circuit *c, int64_t now_ms, bool *probe)
{
    if (probe) *probe = false;
    if (c->state == CY_WH_CLOSED) return true;
    if (c->state == CY_WH_OPEN) {
        if (now_ms < c->open_until) return false;
        c->state = CY_WH_HALF_OPEN;
        c->probing = false;
    }
    if (c->probing) return false;
    c->probing = true;
    if (probe) *probe = true;
    return true;
}

void cy_wh_circuit_result(cy_wh_circuit *c, bool ok, int64_t now_ms)
{
    if (ok) { /* the endpoint works, whichever request said so */
        cy_wh_circuit_init(c);
        return;
    }
    c->failures++;
    switch (c->state) {
    case CY_WH_CLOSED:
        if (c->failures >= CY_WH_CIRCUIT_FAILURES) circuit_open(c, now_ms);
        break;
    case CY_WH_HALF_OPEN: /* the probe (or a request from before) failed */
        circuit_open(c, now_ms);
        break;
    case CY_WH_OPEN: /* a request from before it opened: the rest stands */
        break;
    }
}

/* ---- addresses ------------------------------------------------------------- */

static bool v4_private(uint32_t a) /* host order */
{
    uint8_t o1 = (uint8_t)(a >> 24), o2 = (uint8_t)(a >> 16);
    return o1 == 0 ||                          /* 0/8: this network, unspecified */
           o1 == 10 ||                         /* 10/8 */
           (o1 == 100 && (o2 & 0xc0) == 64) || /* 100.64/10: shared (CGNAT) */
           o1 == 127 ||                        /* loopback */
           (o1 == 169 && o2 == 254) ||         /* link-local, cloud metadata */
           (o1 == 172 && (o2 & 0xf0) == 16) || /* 172.16/12 */
           (o1 == 192 && o2 == 168) ||         /* 192.168/16 */
           o1 >= 224;                          /* multicast 224/4, reserved 240/4, broadcast */
}

static uint32_t v4_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool v6_private(const uint8_t *b)
{
    static const uint8_t zero[16];
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t translated[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0};
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    if (memcmp(b, zero, 15) == 0 && b[15] <= 1) return true; /* :: and ::1 */
    if (memcmp(b, zero, 12) == 0 || memcmp(b, mapped, 12) == 0 || memcmp(b, translated, 12) == 0 ||
        memcmp(b, nat64, 12) == 0)
        return v4_private(v4_at(b + 12));
    if (b[0] == 0x20 && b[1] == 0x02) return v4_private(v4_at(b + 2)); /* 6to4 */
    return (b[0] & 0xfe) == 0xfc ||                                    /* fc00::/7 unique local */
           (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) ||                  /* fe80::/10 link-local */
           (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) ||                  /* fec0::/10 site-local */
           b[0] == 0xff;                                               /* multicast */
}

bool cy_wh_addr_private(const struct sockaddr *sa)
{
    if (!sa) return true;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return v4_private(ntohl(in->sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        return v6_private(in6->sin6_addr.s6_addr);
    }
    return true;
}

/* ---- URLs ------------------------------------------------------------------ */

static int refuse(char *why, size_t why_len, const char *fmt, ...)
{
    if (why && why_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return CY_EINVAL;
}

/* A host name's characters: letters, digits, '-', '.', '_', bytes of UTF-8
 * (internationalised names) and braces (a template: "{{data.host}}"). */
static bool host_char(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '{' || c == '}' || c >= 0x80;
}

int cy_wh_url_check(const char *url, bool allow_private, char *why, size_t why_len)
{
    if (why && why_len) why[0] = '\0';
    if (!url || !url[0]) return refuse(why, why_len, "url: empty");
    size_t n = strlen(url);
    if (n > URL_MAX) return refuse(why, why_len, "url: longer than %d bytes", URL_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c == 0x7f)
            return refuse(why, why_len, "url: whitespace or a control character at %zu", i);
    }
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0)
        p = url + 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        p = url + 8;
    else
        return refuse(why, why_len, "url: must start with http:// or https://");
    size_t alen = strcspn(p, "/?#");
    const char *aend = p + alen;
    if (memchr(p, '@', alen)) return refuse(why, why_len, "url: no user:password@ part allowed");
    const char *host = p, *hend;
    bool bracket = *p == '[';
    if (bracket) {
        hend = memchr(p, ']', alen);
        if (!hend) return refuse(why, why_len, "url: unclosed [ in the host");
        host = p + 1;
        p = hend + 1;
    } else {
        hend = memchr(p, ':', alen);
        if (!hend) hend = aend;
        p = hend;
    }
    size_t hlen = (size_t)(hend - host);
    if (hlen == 0) return refuse(why, why_len, "url: no host");
    if (p < aend) { /* ":port" */
        if (*p != ':' || p + 1 == aend || aend - (p + 1) > 5)
            return refuse(why, why_len, "url: bad port");
        long port = 0;
        for (const char *q = p + 1; q < aend; q++) {
            if (*q < '0' || *q > '9') return refuse(why, why_len, "url: bad port");
            port = port * 10 + (*q - '0');
        }
        if (port < 1 || port > 65535) return refuse(why, why_len, "url: bad port");
    }
    char h[256];
    if (hlen >= sizeof(h)) return refuse(why, why_len, "url: host longer than 255 bytes");
    memcpy(h, host, hlen);
    h[hlen] = '\0';
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (bracket) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, h, &in6->sin6_addr) != 1)
            return refuse(why, why_len, "url: bad IPv6 address in the host");
    } else {
        for (size_t i = 0; i < hlen; i++)
            if (!host_char((unsigned char)h[i]))
                return refuse(why, why_len, "url: bad character in the host");
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        if (inet_aton(h, &in->sin_addr)) in->sin_family = AF_INET;
    }
    if (ss.ss_family != 0 && !allow_private && cy_wh_addr_private((struct sockaddr *)&ss))
        return refuse(why, why_len, "url: %s is a private, loopback or link-local address", h);
    return 0;
}
