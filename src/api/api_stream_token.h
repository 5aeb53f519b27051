/* api_stream_token: short-lived tokens that open event streams from a URL.
 *
 * A browser's EventSource cannot set an Authorization header, and a
 * long-lived token must never stand in a URL (URLs land in proxy logs,
 * browser history, Referer headers). So a client holding a token with
 * events:read asks for a stream token (POST /v1/events/stream-token) and
 * puts that in the URL: "?stream_token=cys_...". It opens event streams
 * only, only until it expires (CY_STREAM_TOKEN_TTL_MS at most), and only
 * while the token that made it (its parent) is neither revoked nor expired;
 * a stream opened with it belongs to the parent (revoking the parent ends
 * it).
 *
 * Nothing is stored: the text is "cys_<parent id>_<expiry>_<mac>", the
 * parent's 12 hex characters, the expiry in wall milliseconds as 12 hex
 * digits, and the first 16 bytes (32 hex characters) of
 * HMAC-SHA256(key, "cys1:" parent id ":" expiry), where key is a key every
 * process of the node derives alike (cy_registry_subkey, label
 * CY_STREAM_TOKEN_KEY_LABEL), so any shard accepts the stream tokens of any
 * other, and a restart keeps them valid. Forging one needs the key file.
 *
 * Pure functions: the clock is the caller's (now_ms, expires_ms: wall ms).
 * Ownership: every pointer borrowed; outputs are the caller's buffers.
 * Errors: CY_EINVAL (NULL argument, not shaped like a stream token),
 * CY_EACCES (the MAC does not match: forged, altered, or made under another
 * key), CY_ETIMEDOUT (expired), CY_EIO (the HMAC failed).
 * Thread: any.
 */
#ifndef CY_API_STREAM_TOKEN_H
#define CY_API_STREAM_TOKEN_H

#include "store/store.h"

#include <stddef.h>
#include <stdint.h>

#define CY_STREAM_TOKEN_PREFIX "cys_"
/* "cys_" + id + "_" + 12 hex + "_" + 32 hex */
#define CY_STREAM_TOKEN_LEN (4 + CY_TOKEN_ID_LEN + 1 + 12 + 1 + 32)
#define CY_STREAM_TOKEN_TTL_MS 60000 /* the longest a stream token lives */
#define CY_STREAM_TOKEN_KEY_LABEL "cyan stream tokens v1"

/* Make the stream token of parent_id (CY_TOKEN_ID_LEN lowercase hex)
 * expiring at expires_ms (> 0, below 2^48) into out, NUL-terminated. */
int cy_stream_token_mint(const uint8_t key[CY_REGISTRY_SUBKEY_LEN], const char *parent_id,
                         int64_t expires_ms, char out[CY_STREAM_TOKEN_LEN + 1]);

/* Check text[0..len) (need not be NUL-terminated) at now_ms: 0 when it is
 * one of ours and not expired (expires_ms <= now_ms is expired), with its
 * parent's id in parent_out and its expiry in *expires_out (both filled
 * for CY_ETIMEDOUT too; "" and 0 on other failures). The MAC is compared
 * in constant time. */
int cy_stream_token_verify(const uint8_t key[CY_REGISTRY_SUBKEY_LEN], const char *text, size_t len,
                           int64_t now_ms, char parent_out[CY_TOKEN_ID_LEN + 1],
                           int64_t *expires_out);

#endif
