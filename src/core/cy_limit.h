/* cy_limit: limits against abuse. Failed logins and new connections,
 * counted per source address and per device id for the whole node; and a
 * rate (a token bucket) that one owner keeps for itself, such as a
 * connection's publish rate.
 *
 * The node-wide part is a table in a file that every process of the node
 * maps MAP_SHARED (data_dir/run/limits, made by the supervisor at each
 * start: a restart forgets every count and lockout). A client's connections
 * land on any shard, so tables per shard would multiply every limit by the
 * shard count. The table has three regions of CY_LIMIT_SLOTS slots: new
 * connections by address, failed logins by address, failed logins by id
 * (device id, or an API token's id). A slot is 32 bytes of 64-bit words
 * changed only with atomic operations (compare-and-swap), never a lock, so
 * no process can block another, even one stopped or killed mid-update.
 * The price is precision: two processes racing on one slot may lose a count
 * or, in the instant a slot is taken over for a new key, credit a count to
 * the wrong key. Limits are approximate by about a count; nothing can be
 * corrupted.
 *
 * Keys are SipHash-2-4 of the address (or id) under a random key of the
 * table, so nobody outside can aim at a slot. Addresses: IPv4 whole (an
 * IPv4-mapped IPv6 address counts as IPv4), IPv6 by its /64 prefix (one
 * host usually holds a whole /64; counting /128s would let it take a fresh
 * address per attempt). A key lives in one of CY_LIMIT_PROBE slots from
 * its hash; when all are taken by other keys, the one used least recently
 * is taken over, a slot whose lockout still runs counting as used until its
 * end (a flood of new keys cannot free a locked-out attacker, unless the
 * flood locks out all of its neighbours too).
 *
 * Failed logins (auth_fail_*): each key counts its failures within a
 * window of auth_fail_window seconds from its first failure. A key is
 *   - clean: no failure in its current window;
 *   - slow: auth_fail_burst failures or more in its window;
 *   - locked: auth_fail_lockout_after failures in its window, and then for
 *     auth_lockout seconds.
 * cy_limit_auth_check says what to do with a login attempt before its
 * secret is checked:
 *   - its address locked: refuse it unchecked (even with the right secret:
 *     otherwise a lockout would not stop guessing);
 *   - its id locked: refuse it unchecked, unless its address is clean;
 *   - its address slow, or its id slow and its address not clean: check it
 *     after auth_fail_delay milliseconds (0: at once; the caller holds the attempt on a
 *     timer, never blocking its loop; success and failure alike, so that
 *     the delay tells nothing);
 *   - otherwise check it now.
 * The trade-off for ids: an attacker can make any device id slow or locked
 * with a few wrong secrets, so a lock on an id alone never stops an address
 * that has not failed (a device connecting from its usual address with its
 * right secret); it stops the addresses that have guessed, and costs a
 * botnet one guess per address per window. Device secrets and tokens are
 * 128 random bits, so what the limits stop is a flood, not a lucky guess.
 * Addresses in limits_exempt (loopback by default: local tools, the
 * monitor's canaries, a reverse proxy on the same host) are never slowed
 * nor locked by address, nor rate-limited at accept; their failures still
 * make them "not clean" for an id's lock.
 *
 * New connections (max_connect_rate_per_address per second, bursts of
 * connect_burst_per_address): a generic cell rate algorithm (GCRA), the
 * token bucket as one word, the time at which the bucket would be full
 * again.
 *
 * Settings are read from the config at each call (reloadable), except
 * limits_exempt, parsed when the table is opened. auth_fail_lockout_after
 * 0 also lifts the lockouts that are running (an operator's way out,
 * with a reload).
 *
 * Time: every call takes now_ms, CLOCK_MONOTONIC milliseconds (the same
 * clock in every process of a machine; tests inject their own).
 * Ownership: cy_limit_open/cy_limit_new borrow cfg, which must outlive the
 * handle (a shard's live settings); caller frees with cy_limit_free. All
 * functions take a NULL handle: no limits (every check passes).
 * Errors: CY_EIO (file or mmap, errno logged), CY_EINVAL (not a table of
 * this layout, a bad limits_exempt), CY_ENOMEM.
 * Thread: any, any process; the handle itself is not shared between
 * threads (it holds nothing that changes after open).
 */
#ifndef CY_LIMIT_H
#define CY_LIMIT_H

#include "core/cy_config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CY_LIMIT_SLOTS 8192 /* per region; a power of two */
#define CY_LIMIT_PROBE 8    /* slots a key may live in */
#define CY_LIMIT_EXEMPT_MAX 16

typedef struct cy_limit cy_limit;

/* ---- the node's table ---- */

/* Make a new table file at path (0600; built under a temporary name and
 * renamed, so a process still mapping the old one is not disturbed). The
 * supervisor, at each start. */
int cy_limit_file_create(const char *path);
/* Map the table at path (a shard). */
int cy_limit_open(const char *path, const cy_config *cfg, cy_limit **out);
/* A table of this process alone, in memory (tests; a process with no node
 * file). */
int cy_limit_new(const cy_config *cfg, cy_limit **out);
void cy_limit_free(cy_limit *l); /* safe on NULL */

/* Check a limits_exempt value: a list of addresses with an optional prefix
 * length ("127.0.0.0/8, ::1"), separated by commas or spaces; "" is none.
 * 0, or CY_EINVAL with the offending entry in err (may be NULL). */
int cy_limit_exempt_check(const char *list, char *err, size_t errlen);

/* Is the address exempt (limits_exempt)? */
bool cy_limit_exempt(const cy_limit *l, const struct sockaddr *sa);

/* A new connection from sa at now_ms: true to take it, false when its
 * address is over max_connect_rate_per_address (close it). Records it. */
bool cy_limit_connect(cy_limit *l, const struct sockaddr *sa, int64_t now_ms);

enum {
    CY_LIMIT_GO = 0,     /* check the secret now */
    CY_LIMIT_DELAY = 1,  /* check it after auth_fail_delay ms */
    CY_LIMIT_LOCKED = 2, /* refuse it unchecked */
};

/* What to do with a login attempt from sa (may be NULL: unknown) for id
 * (id_len bytes, not NUL-terminated; NULL or 0: none) before its secret is
 * checked; see the file comment. delayed: the attempt has been held for
 * auth_fail_delay already (never DELAY again; a lock is still applied).
 * *retry_ms (may be NULL): for LOCKED, ms until the lockout ends; for
 * DELAY, the delay; else 0. Changes nothing. */
int cy_limit_auth_check(cy_limit *l, const struct sockaddr *sa, const char *id, size_t id_len,
                        bool delayed, int64_t now_ms, int64_t *retry_ms);

/* What a failure changed, for the log: bits of the return. */
enum {
    CY_LIMIT_ADDR_SLOW_NOW = 1,   /* this failure made the address slow */
    CY_LIMIT_ADDR_LOCKED_NOW = 2, /* this failure locked the address */
    CY_LIMIT_ID_SLOW_NOW = 4,
    CY_LIMIT_ID_LOCKED_NOW = 8,
};
/* A secret was checked and was wrong (or named nobody): count it against
 * sa and, when id names something that exists (id_exists), against id
 * (failures for ids that exist nowhere would only fill the table).
 * Returns CY_LIMIT_*_NOW bits. */
unsigned cy_limit_auth_failed(cy_limit *l, const struct sockaddr *sa, const char *id, size_t id_len,
                              bool id_exists, int64_t now_ms);

/* Failures counted in the current window of sa's address, of id (0: none,
 * or its window ended), and whether each is locked. For logs and tests. */
uint32_t cy_limit_failures(const cy_limit *l, const struct sockaddr *sa, const char *id,
                           size_t id_len, int64_t now_ms, bool *locked);

/* The address of sa as text, the way the limits count it ("10.0.0.1",
 * "2001:db8:1:2::/64"), into out (at least 64 bytes). */
void cy_limit_addr_text(const struct sockaddr *sa, char *out, size_t len);

/* ---- one owner's rate: a token bucket as one word (GCRA) ----
 *
 * tat is the theoretical arrival time in microseconds: when the bucket
 * would be full again. A use costing cost_us (a message at r per second:
 * 1e6 / r; n bytes at b per second: n * 1e6 / b) passes while the debt
 * (tat - now) is at most burst_us, and then adds its cost: so a use larger
 * than the whole burst (one big message) still passes when the bucket is
 * not in debt, and the uses after it wait until the debt is paid. Start
 * with tat = 0. No system call: callers pass the loop's cached time. */
static inline bool cy_rate_take(int64_t *tat, int64_t now_us, int64_t cost_us, int64_t burst_us)
{
    int64_t t = *tat > now_us ? *tat : now_us;
    if (t - now_us > burst_us) return false;
    *tat = t + cost_us;
    return true;
}
/* Charge the cost whatever the debt (the use was taken anyway). */
static inline void cy_rate_charge(int64_t *tat, int64_t now_us, int64_t cost_us)
{
    *tat = (*tat > now_us ? *tat : now_us) + cost_us;
}
/* Microseconds until cy_rate_take passes again (0: now). */
static inline int64_t cy_rate_wait(int64_t tat, int64_t now_us, int64_t burst_us)
{
    int64_t w = tat - burst_us - now_us;
    return w > 0 ? w : 0;
}

/* A publisher's two rates (max_publish_rate messages/s and
 * max_publish_bytes_rate bytes/s, 0 = none), each with a burst of one
 * second's worth. */
typedef struct cy_pub_rate {
    int64_t msg_tat;  /* us */
    int64_t byte_tat; /* us */
} cy_pub_rate;

#define CY_RATE_BURST_US 1000000
/* Does cfg limit publishes at all? */
static inline bool cy_pub_rate_on(const cy_config *cfg)
{
    return cfg->max_publish_rate || cfg->max_publish_bytes_rate;
}
/* One publish of `bytes` at now_us: true when within both rates (and then
 * charged), false when over either (nothing charged). */
bool cy_pub_rate_take(cy_pub_rate *r, const cy_config *cfg, size_t bytes, int64_t now_us);
/* Charge one publish whatever the debt (it was taken); true while still
 * within both rates after it (false: the publisher should wait). */
bool cy_pub_rate_charge(cy_pub_rate *r, const cy_config *cfg, size_t bytes, int64_t now_us);
/* Microseconds until a publish passes again. */
int64_t cy_pub_rate_wait(const cy_pub_rate *r, const cy_config *cfg, int64_t now_us);

#endif
