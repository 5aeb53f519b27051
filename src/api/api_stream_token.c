/* api_stream_token: mint and verify stream tokens; see api_stream_token.h.
 *
 * The MAC covers the parent id and the expiry exactly as they stand in the
 * text, so changing either (a longer life, another parent) breaks it. Hex
 * is parsed strictly (lowercase, fixed width): one token has one text.
 */
#include "api/api_stream_token.h"

#include "core/cy_err.h"
#include "core/cy_log.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#define PREFIX_LEN 4
#define EXP_HEX 12
#define MAC_HEX 32
#define ID_AT PREFIX_LEN
#define EXP_AT (ID_AT + CY_TOKEN_ID_LEN + 1)
#define MAC_AT (EXP_AT + EXP_HEX + 1)
_Static_assert(MAC_AT + MAC_HEX == CY_STREAM_TOKEN_LEN, "the layout of a stream token");

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* The MAC of id and expiry text as MAC_HEX lowercase hex characters. */
static int mac_hex(const uint8_t *key, const char *id, const char *exp, char out[MAC_HEX + 1])
{
    char msg[5 + CY_TOKEN_ID_LEN + 1 + EXP_HEX + 1];
    int n = snprintf(msg, sizeof(msg), "cys1:%.*s:%.*s", CY_TOKEN_ID_LEN, id, EXP_HEX, exp);
    uint8_t mac[EVP_MAX_MD_SIZE];
    size_t mlen = 0;
    if (n != (int)sizeof(msg) - 1 ||
        !EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, CY_REGISTRY_SUBKEY_LEN,
                   (const uint8_t *)msg, (size_t)n, mac, sizeof(mac), &mlen) ||
        mlen < MAC_HEX / 2) {
        cy_error(NULL, "api: stream token: HMAC-SHA256 failed");
        return CY_EIO;
    }
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < MAC_HEX / 2; i++) {
        out[2 * i] = digits[mac[i] >> 4];
        out[2 * i + 1] = digits[mac[i] & 15];
    }
    out[MAC_HEX] = '\0';
    OPENSSL_cleanse(mac, sizeof(mac));
    return 0;
}

int cy_stream_token_mint(const uint8_t key[CY_REGISTRY_SUBKEY_LEN], const char *parent_id,
                         int64_t expires_ms, char out[CY_STREAM_TOKEN_LEN + 1])
{
    if (out) out[0] = '\0';
    if (!key || !parent_id || !out || expires_ms <= 0 || expires_ms >= ((int64_t)1 << 48) ||
        strlen(parent_id) != CY_TOKEN_ID_LEN || !lower_hex(parent_id, CY_TOKEN_ID_LEN))
        return CY_EINVAL;
    char exp[EXP_HEX + 1], mac[MAC_HEX + 1];
    snprintf(exp, sizeof(exp), "%012llx", (unsigned long long)expires_ms);
    int rc = mac_hex(key, parent_id, exp, mac);
    if (rc) return rc;
    snprintf(out, CY_STREAM_TOKEN_LEN + 1, CY_STREAM_TOKEN_PREFIX "%s_%s_%s", parent_id, exp, mac);
    return 0;
}

int cy_stream_token_verify(const uint8_t key[CY_REGISTRY_SUBKEY_LEN], const char *text, size_t len,
                           int64_t now_ms, char parent_out[CY_TOKEN_ID_LEN + 1],
                           int64_t *expires_out)
{
    if (parent_out) parent_out[0] = '\0';
    if (expires_out) *expires_out = 0;
    if (!key || !text || !parent_out || !expires_out) return CY_EINVAL;
    if (len != CY_STREAM_TOKEN_LEN || memcmp(text, CY_STREAM_TOKEN_PREFIX, PREFIX_LEN) != 0 ||
        !lower_hex(text + ID_AT, CY_TOKEN_ID_LEN) || text[EXP_AT - 1] != '_' ||
        !lower_hex(text + EXP_AT, EXP_HEX) || text[MAC_AT - 1] != '_' ||
        !lower_hex(text + MAC_AT, MAC_HEX))
        return CY_EINVAL;
    char want[MAC_HEX + 1];
    int rc = mac_hex(key, text + ID_AT, text + EXP_AT, want);
    if (rc) return rc;
    if (CRYPTO_memcmp(want, text + MAC_AT, MAC_HEX) != 0) return CY_EACCES;
    int64_t exp = 0;
    for (size_t i = 0; i < EXP_HEX; i++) {
        char c = text[EXP_AT + i];
        exp = exp * 16 + (c <= '9' ? c - '0' : c - 'a' + 10);
    }
    memcpy(parent_out, text + ID_AT, CY_TOKEN_ID_LEN);
    parent_out[CY_TOKEN_ID_LEN] = '\0';
    *expires_out = exp;
    return now_ms >= exp ? CY_ETIMEDOUT : 0;
}
