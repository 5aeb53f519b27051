/* cy_limit: the node-wide table of failed logins and connection rates, and
 * the owner's rates (cy_limit.h says what each limit does).
 *
 * The idea needed to read this file: every word of the shared table is
 * changed by compare-and-swap loops or single atomic stores, because any
 * process of the node may be changing the same slot at the same moment and
 * none may wait for another. A slot:
 *   key   SipHash of what it counts, never 0; 0 = free
 *   w1    failures: window start (ms since the table's epoch, high 40 bits)
 *         and count (low 24 bits, saturating); connections: the GCRA's
 *         theoretical arrival time, us since the epoch
 *   w2    failures: end of the lockout, ms since the epoch (0: none)
 *   last  ms since the epoch of the last change (for eviction)
 * Times are kept relative to an epoch written in the header at creation,
 * plus one, so that 0 means "never" and 40 bits last 34 years.
 */
#include "core/cy_limit.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC 0x6379616e4c494d31ull /* "cyanLIM1" */
#define VERSION 1
#define NREGIONS 3
enum { R_CONNECT = 0, R_AFAIL = 1, R_IFAIL = 2 };
#define COUNT_BITS 24
#define COUNT_MAX ((1u << COUNT_BITS) - 1)
#define CAS_TRIES 16

typedef struct slot {
    uint64_t key;
    uint64_t w1;
    int64_t w2;
    int64_t last;
} slot;

typedef struct header {
    uint64_t magic;
    uint64_t version;
    uint64_t nslots;  /* per region */
    int64_t epoch_ms; /* CLOCK_MONOTONIC ms at creation */
    uint64_t sip[2];  /* the hash key */
    uint64_t pad[2];
} header;

_Static_assert(sizeof(slot) == 32, "a slot is four words");
_Static_assert(sizeof(header) % 32 == 0, "slots stay aligned");
_Static_assert((CY_LIMIT_SLOTS & (CY_LIMIT_SLOTS - 1)) == 0, "a power of two");

typedef struct exempt_net {
    uint8_t fam; /* 4 or 6 */
    uint8_t bits;
    uint8_t a[16];
} exempt_net;

struct cy_limit {
    header *h;
    slot *slots; /* NREGIONS * nslots */
    size_t map_len;
    bool mapped; /* else cy_malloc'ed */
    const cy_config *cfg;
    exempt_net ex[CY_LIMIT_EXEMPT_MAX];
    unsigned n_ex;
};

static size_t table_size(void)
{
    return sizeof(header) + (size_t)NREGIONS * CY_LIMIT_SLOTS * sizeof(slot);
}

/* ---- SipHash-2-4 (Aumasson and Bernstein), the reference algorithm ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

static uint64_t siphash(const uint64_t k[2], const uint8_t *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ull ^ k[0], v1 = 0x646f72616e646f6dull ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ull ^ k[0], v3 = 0x7465646279746573ull ^ k[1];
    uint64_t b = (uint64_t)len << 56;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t m = 0;
        for (int j = 0; j < 8; j++)
            m |= (uint64_t)in[i + (size_t)j] << (8 * j);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    for (int j = 0; i + (size_t)j < len; j++)
        b |= (uint64_t)in[i + (size_t)j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the table file ---- */

static void header_init(header *h)
{
    h->version = VERSION;
    h->nslots = CY_LIMIT_SLOTS;
    h->epoch_ms = cy_mono_ms();
    if (getrandom(h->sip, sizeof(h->sip), 0) != (ssize_t)sizeof(h->sip)) {
        /* No entropy source: still distinct per start, only guessable. */
        h->sip[0] = (uint64_t)cy_wall_ms() * 0x9e3779b97f4a7c15ull;
        h->sip[1] = (uint64_t)getpid() ^ (uint64_t)h->epoch_ms;
    }
    __atomic_store_n(&h->magic, MAGIC, __ATOMIC_RELEASE);
}

int cy_limit_file_create(const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid()) >= (int)sizeof(tmp))
        return CY_EINVAL;
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        cy_error(NULL, "limits %s: %s", tmp, strerror(errno));
        return CY_EIO;
    }
    size_t len = table_size();
    void *p = MAP_FAILED;
    if (fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)len) != 0) {
        cy_error(NULL, "limits %s: size %zu: %s", tmp, len, strerror(errno));
        goto fail;
    }
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        cy_error(NULL, "limits %s: mmap: %s", tmp, strerror(errno));
        goto fail;
    }
    header_init(p);
    munmap(p, len);
    if (rename(tmp, path) != 0) {
        cy_error(NULL, "limits %s: rename: %s", path, strerror(errno));
        goto fail_unlink;
    }
    close(fd);
    return 0;
fail:
    if (p != MAP_FAILED) munmap(p, len);
fail_unlink:
    close(fd);
    unlink(tmp);
    return CY_EIO;
}

static int parse_exempt(cy_limit *l, const char *list, char *err, size_t errlen);

static int handle_new(const cy_config *cfg, cy_limit **out)
{
    cy_limit *l = cy_calloc(1, sizeof(*l));
    if (!l) return CY_ENOMEM;
    l->cfg = cfg;
    int rc = parse_exempt(l, cfg ? cfg->limits_exempt : "", NULL, 0);
    if (rc) {
        cy_free(l);
        return rc;
    }
    *out = l;
    return 0;
}

int cy_limit_open(const char *path, const cy_config *cfg, cy_limit **out)
{
    *out = NULL;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return CY_ENOENT;
        cy_error(NULL, "limits %s: %s", path, strerror(errno));
        return CY_EIO;
    }
    struct stat st;
    size_t len = table_size();
    if (fstat(fd, &st) != 0 || (size_t)st.st_size != len) {
        close(fd);
        return CY_EINVAL;
    }
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        cy_error(NULL, "limits %s: mmap: %s", path, strerror(errno));
        return CY_EIO;
    }
    header *h = p;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != MAGIC || h->version != VERSION ||
        h->nslots != CY_LIMIT_SLOTS) {
        munmap(p, len);
        return CY_EINVAL;
    }
    cy_limit *l;
    int rc = handle_new(cfg, &l);
    if (rc) {
        munmap(p, len);
        return rc;
    }
    l->h = h;
    l->slots = (slot *)((char *)p + sizeof(header));
    l->map_len = len;
    l->mapped = true;
    *out = l;
    return 0;
}

int cy_limit_new(const cy_config *cfg, cy_limit **out)
{
    *out = NULL;
    void *p = cy_calloc(1, table_size());
    if (!p) return CY_ENOMEM;
    header_init(p);
    cy_limit *l;
    int rc = handle_new(cfg, &l);
    if (rc) {
        cy_free(p);
        return rc;
    }
    l->h = p;
    l->slots = (slot *)((char *)p + sizeof(header));
    *out = l;
    return 0;
}

void cy_limit_free(cy_limit *l)
{
    if (!l) return;
    if (l->mapped)
        munmap(l->h, l->map_len);
    else
        cy_free(l->h);
    cy_free(l);
}

/* ---- addresses ---- */

/* The address bytes that are counted: fam 4 with 4 bytes, fam 6 with the
 * /64 (8 bytes); also the whole address (full, 16 bytes for IPv6) for the
 * exemption test. 0 for an unknown family. */
static uint8_t addr_of(const struct sockaddr *sa, uint8_t full[16])
{
    if (!sa) return 0;
    if (sa->sa_family == AF_INET) {
        memcpy(full, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        return 4;
    }
    if (sa->sa_family == AF_INET6) {
        const uint8_t *b = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(b, mapped, 12) == 0) {
            memcpy(full, b + 12, 4);
            return 4;
        }
        memcpy(full, b, 16);
        return 6;
    }
    return 0;
}

static bool prefix_match(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, whole) != 0) return false;
    if (!rest) return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

static bool exempt_bytes(const cy_limit *l, uint8_t fam, const uint8_t *full)
{
    for (unsigned i = 0; i < l->n_ex; i++)
        if (l->ex[i].fam == fam && prefix_match(l->ex[i].a, full, l->ex[i].bits)) return true;
    return false;
}

bool cy_limit_exempt(const cy_limit *l, const struct sockaddr *sa)
{
    uint8_t full[16];
    uint8_t fam = addr_of(sa, full);
    return l && fam && exempt_bytes(l, fam, full);
}

void cy_limit_addr_text(const struct sockaddr *sa, char *out, size_t len)
{
    uint8_t full[16];
    uint8_t fam = addr_of(sa, full);
    char ip[INET6_ADDRSTRLEN] = "?";
    if (fam == 4) {
        inet_ntop(AF_INET, full, ip, sizeof(ip));
        snprintf(out, len, "%s", ip);
    } else if (fam == 6) {
        memset(full + 8, 0, 8);
        inet_ntop(AF_INET6, full, ip, sizeof(ip));
        snprintf(out, len, "%s/64", ip);
    } else {
        snprintf(out, len, "unknown address");
    }
}

static uint64_t key_of(const cy_limit *l, uint8_t tag, const uint8_t *p, size_t n)
{
    uint8_t buf[1 + 256];
    if (n > 256) n = 256; /* ids are at most 256 bytes (CY_MAX_CLIENT_ID) */
    buf[0] = tag;
    memcpy(buf + 1, p, n);
    uint64_t k = siphash(l->h->sip, buf, n + 1);
    return k ? k : 1;
}

/* The key of sa's counted address; 0 when there is none. */
static uint64_t addr_key(const cy_limit *l, const struct sockaddr *sa, bool *exempt)
{
    uint8_t full[16];
    uint8_t fam = addr_of(sa, full);
    *exempt = false;
    if (!fam) return 0;
    *exempt = exempt_bytes(l, fam, full);
    return key_of(l, fam, full, fam == 4 ? 4 : 8);
}

static uint64_t id_key(const cy_limit *l, const char *id, size_t len)
{
    return id && len ? key_of(l, 'i', (const uint8_t *)id, len) : 0;
}

/* ---- limits_exempt ---- */

static int parse_one(const char *s, exempt_net *e)
{
    char text[INET6_ADDRSTRLEN + 8];
    if (strlen(s) >= sizeof(text)) return CY_EINVAL;
    strcpy(text, s);
    char *slash = strchr(text, '/');
    long bits = -1;
    if (slash) {
        *slash = '\0';
        char *end;
        errno = 0;
        bits = strtol(slash + 1, &end, 10);
        if (errno || end == slash + 1 || *end || bits < 0) return CY_EINVAL;
    }
    memset(e, 0, sizeof(*e));
    if (inet_pton(AF_INET, text, e->a) == 1) {
        e->fam = 4;
        if (bits < 0) bits = 32;
        if (bits > 32) return CY_EINVAL;
    } else if (inet_pton(AF_INET6, text, e->a) == 1) {
        e->fam = 6;
        if (bits < 0) bits = 128;
        if (bits > 128) return CY_EINVAL;
    } else {
        return CY_EINVAL;
    }
    e->bits = (uint8_t)bits;
    return 0;
}

static int parse_exempt(cy_limit *l, const char *list, char *err, size_t errlen)
{
    char word[64];
    unsigned n = 0;
    const char *p = list;
    while (*p) {
        while (*p == ',' || *p == ' ' || *p == '\t')
            p++;
        if (!*p) break;
        size_t k = 0;
        while (p[k] && p[k] != ',' && p[k] != ' ' && p[k] != '\t')
            k++;
        exempt_net e;
        int rc = k < sizeof(word) ? 0 : CY_EINVAL;
        if (!rc) {
            memcpy(word, p, k);
            word[k] = '\0';
            rc = parse_one(word, &e);
        }
        if (!rc && n >= CY_LIMIT_EXEMPT_MAX) rc = CY_EINVAL;
        if (rc) {
            if (err)
                snprintf(err, errlen, "%s'%.*s'",
                         n >= CY_LIMIT_EXEMPT_MAX ? "more than 16 entries at " : "",
                         (int)(k > 60 ? 60 : k), p);
            return CY_EINVAL;
        }
        if (l) l->ex[n] = e;
        n++;
        p += k;
    }
    if (l) l->n_ex = n;
    return 0;
}

int cy_limit_exempt_check(const char *list, char *err, size_t errlen)
{
    return parse_exempt(NULL, list, err, errlen);
}

/* ---- slots ---- */

static int64_t rel_ms(const cy_limit *l, int64_t now_ms)
{
    int64_t r = now_ms - l->h->epoch_ms + 1;
    return r > 0 ? r : 1;
}

static slot *region(const cy_limit *l, int r)
{
    return l->slots + (size_t)r * CY_LIMIT_SLOTS;
}

/* How long a slot is worth keeping: its last use, or the end of its
 * lockout if later. */
static int64_t keep_until(slot *s)
{
    int64_t last = __atomic_load_n(&s->last, __ATOMIC_RELAXED);
    int64_t lock = __atomic_load_n(&s->w2, __ATOMIC_RELAXED);
    return lock > last ? lock : last;
}

/* The slot of key in region r, or NULL. create: take a free slot, or the
 * least worth keeping of the probed ones, for a key not there. */
static slot *find(const cy_limit *l, int r, uint64_t key, int64_t now, bool create)
{
    if (!l || !key) return NULL;
    slot *base = region(l, r);
    size_t mask = CY_LIMIT_SLOTS - 1, at = (size_t)key & mask;
    for (int tries = 0; tries < 4; tries++) {
        slot *free_s = NULL, *victim = NULL;
        uint64_t victim_key = 0;
        int64_t victim_keep = INT64_MAX;
        for (size_t i = 0; i < CY_LIMIT_PROBE; i++) {
            slot *s = &base[(at + i) & mask];
            uint64_t k = __atomic_load_n(&s->key, __ATOMIC_ACQUIRE);
            if (k == key) return s;
            if (k == 0) {
                if (!free_s) free_s = s;
                continue;
            }
            int64_t keep = keep_until(s);
            if (keep < victim_keep) {
                victim_keep = keep;
                victim = s;
                victim_key = k;
            }
        }
        if (!create) return NULL;
        if (free_s) {
            uint64_t zero = 0;
            if (__atomic_compare_exchange_n(&free_s->key, &zero, key, false, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                __atomic_store_n(&free_s->last, now, __ATOMIC_RELAXED);
                return free_s;
            }
            continue; /* another process took it: look again */
        }
        if (victim && __atomic_compare_exchange_n(&victim->key, &victim_key, key, false,
                                                  __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&victim->w1, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&victim->w2, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&victim->last, now, __ATOMIC_RELAXED);
            return victim;
        }
    }
    return NULL; /* contention: the caller lets the event pass uncounted */
}

/* ---- failures ---- */

typedef struct fstate {
    uint32_t n; /* failures in the current window (0: clean) */
    bool locked;
    int64_t lock_end; /* rel ms */
} fstate;

static fstate state_of(const cy_limit *l, slot *s, int64_t now)
{
    fstate f = {0, false, 0};
    if (!s) return f;
    uint64_t w = __atomic_load_n(&s->w1, __ATOMIC_RELAXED);
    int64_t start = (int64_t)(w >> COUNT_BITS);
    uint32_t n = (uint32_t)(w & COUNT_MAX);
    if (n && now - start < (int64_t)l->cfg->auth_fail_window * 1000) f.n = n;
    f.lock_end = __atomic_load_n(&s->w2, __ATOMIC_RELAXED);
    /* auth_fail_lockout_after 0 (a reload) lifts the lockouts that run. */
    f.locked = l->cfg->auth_fail_lockout_after && f.lock_end > now;
    return f;
}

static bool slow(const cy_limit *l, fstate f)
{
    return l->cfg->auth_fail_burst && f.n >= l->cfg->auth_fail_burst;
}

int cy_limit_auth_check(cy_limit *l, const struct sockaddr *sa, const char *id, size_t id_len,
                        bool delayed, int64_t now_ms, int64_t *retry_ms)
{
    if (retry_ms) *retry_ms = 0;
    if (!l || !l->cfg) return CY_LIMIT_GO;
    int64_t now = rel_ms(l, now_ms);
    bool ex;
    uint64_t ak = addr_key(l, sa, &ex);
    fstate a = state_of(l, find(l, R_AFAIL, ak, now, false), now);
    fstate d = state_of(l, find(l, R_IFAIL, id_key(l, id, id_len), now, false), now);
    if (!ex && a.locked) {
        if (retry_ms) *retry_ms = a.lock_end - now;
        return CY_LIMIT_LOCKED;
    }
    bool clean = a.n == 0 && !a.locked;
    if (d.locked && !clean) {
        if (retry_ms) *retry_ms = d.lock_end - now;
        return CY_LIMIT_LOCKED;
    }
    if (!delayed && l->cfg->auth_fail_delay && ((!ex && slow(l, a)) || (!clean && slow(l, d)))) {
        if (retry_ms) *retry_ms = l->cfg->auth_fail_delay;
        return CY_LIMIT_DELAY;
    }
    return CY_LIMIT_GO;
}

/* Count one failure in s; the bits of what it changed (slow, locked). */
static unsigned fail_one(const cy_limit *l, slot *s, int64_t now)
{
    if (!s) return 0;
    int64_t window = (int64_t)l->cfg->auth_fail_window * 1000;
    uint64_t old = __atomic_load_n(&s->w1, __ATOMIC_RELAXED), next;
    uint32_t n = 0;
    for (int i = 0; i < CAS_TRIES; i++) {
        int64_t start = (int64_t)(old >> COUNT_BITS);
        n = (uint32_t)(old & COUNT_MAX);
        if (n == 0 || now - start >= window) {
            start = now;
            n = 0;
        }
        if (n < COUNT_MAX) n++;
        next = ((uint64_t)start << COUNT_BITS) | n;
        if (__atomic_compare_exchange_n(&s->w1, &old, next, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            break;
    }
    __atomic_store_n(&s->last, now, __ATOMIC_RELAXED);
    unsigned bits = 0;
    if (l->cfg->auth_fail_burst && n == l->cfg->auth_fail_burst) bits |= CY_LIMIT_ADDR_SLOW_NOW;
    uint32_t after = l->cfg->auth_fail_lockout_after;
    if (after && n >= after) {
        int64_t end = now + (int64_t)l->cfg->auth_lockout * 1000;
        int64_t cur = __atomic_load_n(&s->w2, __ATOMIC_RELAXED);
        bool was_locked = cur > now;
        while (cur < end && !__atomic_compare_exchange_n(&s->w2, &cur, end, false, __ATOMIC_RELAXED,
                                                         __ATOMIC_RELAXED)) {
        }
        if (!was_locked) bits |= CY_LIMIT_ADDR_LOCKED_NOW;
    }
    return bits;
}

unsigned cy_limit_auth_failed(cy_limit *l, const struct sockaddr *sa, const char *id, size_t id_len,
                              bool id_exists, int64_t now_ms)
{
    if (!l || !l->cfg) return 0;
    int64_t now = rel_ms(l, now_ms);
    bool ex;
    uint64_t ak = addr_key(l, sa, &ex);
    unsigned bits = fail_one(l, find(l, R_AFAIL, ak, now, true), now);
    if (ex) bits = 0; /* counted (an exempt address is not clean), never slowed or locked */
    if (id_exists)
        bits |= fail_one(l, find(l, R_IFAIL, id_key(l, id, id_len), now, true), now) << 2;
    return bits;
}

uint32_t cy_limit_failures(const cy_limit *l, const struct sockaddr *sa, const char *id,
                           size_t id_len, int64_t now_ms, bool *locked)
{
    if (locked) *locked = false;
    if (!l || !l->cfg) return 0;
    int64_t now = rel_ms(l, now_ms);
    fstate f;
    if (sa) {
        bool ex;
        f = state_of(l, find(l, R_AFAIL, addr_key(l, sa, &ex), now, false), now);
    } else {
        f = state_of(l, find(l, R_IFAIL, id_key(l, id, id_len), now, false), now);
    }
    if (locked) *locked = f.locked;
    return f.n;
}

/* ---- connections ---- */

bool cy_limit_connect(cy_limit *l, const struct sockaddr *sa, int64_t now_ms)
{
    if (!l || !l->cfg || !l->cfg->max_connect_rate_per_address) return true;
    int64_t now = rel_ms(l, now_ms);
    bool ex;
    uint64_t ak = addr_key(l, sa, &ex);
    if (!ak || ex) return true;
    slot *s = find(l, R_CONNECT, ak, now, true);
    if (!s) return true;
    int64_t interval = 1000000 / (int64_t)l->cfg->max_connect_rate_per_address;
    if (interval < 1) interval = 1;
    uint32_t burst = l->cfg->connect_burst_per_address ? l->cfg->connect_burst_per_address : 1;
    int64_t tol = (int64_t)(burst - 1) * interval, now_us = now * 1000;
    uint64_t old = __atomic_load_n(&s->w1, __ATOMIC_RELAXED);
    __atomic_store_n(&s->last, now, __ATOMIC_RELAXED);
    for (int i = 0; i < CAS_TRIES; i++) {
        int64_t tat = (int64_t)old > now_us ? (int64_t)old : now_us;
        if (tat - now_us > tol) return false;
        if (__atomic_compare_exchange_n(&s->w1, &old, (uint64_t)(tat + interval), false,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return true;
    }
    return true;
}

/* ---- an owner's rates ---- */

static int64_t msg_cost(const cy_config *cfg)
{
    return cfg->max_publish_rate ? 1000000 / (int64_t)cfg->max_publish_rate : 0;
}

static int64_t byte_cost(const cy_config *cfg, size_t bytes)
{
    return cfg->max_publish_bytes_rate
               ? (int64_t)((double)bytes * 1e6 / (double)cfg->max_publish_bytes_rate)
               : 0;
}

bool cy_pub_rate_take(cy_pub_rate *r, const cy_config *cfg, size_t bytes, int64_t now_us)
{
    if (cfg->max_publish_rate && cy_rate_wait(r->msg_tat, now_us, CY_RATE_BURST_US)) return false;
    if (cfg->max_publish_bytes_rate && cy_rate_wait(r->byte_tat, now_us, CY_RATE_BURST_US))
        return false;
    cy_pub_rate_charge(r, cfg, bytes, now_us);
    return true;
}

bool cy_pub_rate_charge(cy_pub_rate *r, const cy_config *cfg, size_t bytes, int64_t now_us)
{
    if (cfg->max_publish_rate) cy_rate_charge(&r->msg_tat, now_us, msg_cost(cfg));
    if (cfg->max_publish_bytes_rate) cy_rate_charge(&r->byte_tat, now_us, byte_cost(cfg, bytes));
    return cy_pub_rate_wait(r, cfg, now_us) == 0;
}

int64_t cy_pub_rate_wait(const cy_pub_rate *r, const cy_config *cfg, int64_t now_us)
{
    int64_t a = cfg->max_publish_rate ? cy_rate_wait(r->msg_tat, now_us, CY_RATE_BURST_US) : 0;
    int64_t b =
        cfg->max_publish_bytes_rate ? cy_rate_wait(r->byte_tat, now_us, CY_RATE_BURST_US) : 0;
    return a > b ? a : b;
}
