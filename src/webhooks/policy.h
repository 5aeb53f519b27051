/* policy: the rules of webhook delivery that need no I/O, so that they
 * are tested alone: what an answer means, when to try again, when an
 * endpoint is given a rest, and which addresses a webhook may not reach.
 *
 * Answers: 2xx delivered; 408, 429, 5xx and no answer at all (a
 * connection error, a timeout: status 0) are tried again; 410 Gone
 * disables the webhook; every other status (1xx, 3xx: redirects are not
 * followed, other 4xx) is final: the event goes to the dead-letter list.
 *
 * Waits (Standard Webhooks' schedule, scaled by base): after the n-th
 * failed attempt wait base x {1, 60, 360, 1440, 3600, 7200, 7200, ...}
 * (base 5 s: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, ...), each with
 * +-20% jitter so that a fleet of retries does not return in step. A
 * Retry-After answer (delta-seconds or an HTTP-date) waits at least that
 * long, at most CY_WH_RETRY_AFTER_MAX_MS.
 *
 * The circuit of one endpoint: CLOSED lets every request through. After
 * CY_WH_CIRCUIT_FAILURES failed attempts in a row it OPENs for a while
 * (CY_WH_CIRCUIT_OPEN_MS, doubled at each reopening, at most
 * CY_WH_CIRCUIT_OPEN_MAX_MS): nothing is sent. Then HALF_OPEN: one probe
 * request; its success closes the circuit, its failure opens it again.
 *
 * Addresses: cy_wh_addr_private says whether an address is one a webhook
 * must not reach unless the operator allows it (webhook_allow_private):
 * unspecified, loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7),
 * shared (100.64/10), link-local (169.254/16 with the cloud metadata
 * address, fe80::/10), multicast, broadcast, 0/8, and IPv4-mapped or
 * NAT64-free IPv6 forms of those (::ffff:a.b.c.d).
 *
 * Thread: any. Nothing here allocates.
 */
#ifndef CY_WEBHOOKS_POLICY_H
#define CY_WEBHOOKS_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CY_WH_RETRY_AFTER_MAX_MS (6 * 3600 * 1000LL)
#define CY_WH_CIRCUIT_FAILURES 5
#define CY_WH_CIRCUIT_OPEN_MS 5000
#define CY_WH_CIRCUIT_OPEN_MAX_MS (10 * 60 * 1000)

typedef enum {
    CY_WH_DELIVERED, /* 2xx */
    CY_WH_RETRY,     /* try again later */
    CY_WH_DEAD,      /* final: dead-letter it */
    CY_WH_GONE       /* 410: disable the webhook (the event is dead-lettered) */
} cy_wh_verdict;

/* status: the HTTP status, 0 for no answer. */
cy_wh_verdict cy_wh_classify(long status);
/* Milliseconds to wait after `failures` failed attempts (>= 1) with base
 * base_ms; rnd in [0, 1) draws the jitter. */
int64_t cy_wh_backoff_ms(unsigned failures, uint32_t base_ms, double rnd);
/* A Retry-After value as milliseconds from now_wall_ms (capped at
 * CY_WH_RETRY_AFTER_MAX_MS, 0 for a date in the past), or -1 when value
 * is NULL or not a valid delta-seconds or IMF-fixdate. */
int64_t cy_wh_retry_after_ms(const char *value, int64_t now_wall_ms);

typedef enum { CY_WH_CLOSED, CY_WH_OPEN, CY_WH_HALF_OPEN } cy_wh_circuit_state;

typedef struct cy_wh_circuit {
    cy_wh_circuit_state state;
    unsigned failures;     /* failed attempts in a row */
    unsigned opens;        /* times opened since it was last closed */
    int64_t open_until;    /* mono ms: while OPEN */
    bool probing;          /* HALF_OPEN: the probe is in flight */
} cy_wh_circuit;

void cy_wh_circuit_init(cy_wh_circuit *c);
/* May a request start now? OPEN turns HALF_OPEN when its time is up; in
 * HALF_OPEN one request (the probe) may start, and *probe (may be NULL) is
 * set for it. */
bool cy_wh_circuit_allow(cy_wh_circuit *c, int64_t now_ms, bool *probe);
/* The result of a request that allow let through. ok: a 2xx or any final
 * answer from a working endpoint (4xx other than 408/429: the endpoint
 * answered); failed: what cy_wh_classify calls RETRY. */
void cy_wh_circuit_result(cy_wh_circuit *c, bool ok, int64_t now_ms);

/* See the header comment. sa may be AF_INET or AF_INET6 (others: true). */
bool cy_wh_addr_private(const struct sockaddr *sa);
/* Check a webhook URL: http:// or https://, a host, at most 2048 bytes,
 * no user:password part, no whitespace or control characters; a literal
 * IP address that cy_wh_addr_private refuses is refused too unless
 * allow_private. 0 or CY_EINVAL with a reason in why. Names are checked at
 * connect time (the client's address check), not here. */
int cy_wh_url_check(const char *url, bool allow_private, char *why, size_t why_len);

#endif
