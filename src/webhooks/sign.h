/* sign: webhook secrets and signatures, the Standard Webhooks way
 * (https://www.standardwebhooks.com/).
 *
 * A secret is "whsec_" followed by the base64 of CY_WH_SECRET_BYTES random
 * bytes; the key is those bytes. A request carries
 *   webhook-id: <event id>            the same on every retry
 *   webhook-timestamp: <unix seconds> of this attempt
 *   webhook-signature: v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>
 * and, while a rotated secret's old value is still honoured, a second
 * "v1,..." for it, separated by a space: a receiver accepts the request if
 * any one signature matches a secret it knows.
 *
 * Ownership: inputs borrowed; output appended to the caller's buffer.
 * Errors: CY_EINVAL (a secret that is not whsec_<base64> of 16..64 bytes),
 * CY_EIO (the random generator or HMAC failed), CY_ENOMEM.
 * Thread: any.
 */
#ifndef CY_WEBHOOKS_SIGN_H
#define CY_WEBHOOKS_SIGN_H

#include "core/cy_buf.h"

#include <stddef.h>
#include <stdint.h>

#define CY_WH_SECRET_BYTES 24
#define CY_WH_SECRET_LEN 64 /* room for "whsec_" + base64, with the NUL */

/* A new secret, NUL-terminated, into out. */
int cy_wh_secret_new(char out[CY_WH_SECRET_LEN]);
/* The key of a secret: *len bytes into key (room for 64). */
int cy_wh_secret_key(const char *secret, uint8_t key[64], size_t *len);
/* Append the webhook-signature value for (id, ts, body) with each of
 * secrets[0..n) (n 1 or 2; NULL or "" entries are skipped) to out. */
int cy_wh_sign(const char *const *secrets, size_t n, const char *id, int64_t ts,
               const uint8_t *body, size_t body_len, cy_buf *out);

#endif
