/* sign: Standard Webhooks secrets and signatures; see sign.h.
 *
 * The base64 here is the standard alphabet with padding, checked strictly
 * before OpenSSL decodes it: EVP_DecodeBlock skips surrounding whitespace,
 * accepts what it should not, and always returns 3 bytes per 4 characters,
 * counting the zero bytes that padding stands for, so the length comes from
 * the text instead.
 *
 * The HMAC runs on a copy of one prototype context that already holds
 * SHA-256 (made once per process, under pthread_once): fetching "HMAC" and
 * "SHA256" from OpenSSL's provider on every request costs more than
 * signing a small body. The copy is the caller's alone, so any thread may
 * sign; the prototype is only read. It is freed at exit, before OpenSSL's
 * own cleanup (registered earlier, so run later).
 */
#include "webhooks/sign.h"

#include "core/cy_err.h"

#include <inttypes.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREFIX "whsec_"
#define PREFIX_LEN 6
#define KEY_MIN 16
#define KEY_MAX 64
#define B64_MAX (4 * ((KEY_MAX + 2) / 3)) /* 88 characters for 64 bytes */
#define MAC_LEN 32                        /* SHA-256 */

static pthread_once_t proto_once = PTHREAD_ONCE_INIT;
static EVP_MAC_CTX *proto; /* HMAC with SHA-256 set, no key; NULL when unavailable */

static void proto_free(void)
{
    EVP_MAC_CTX_free(proto);
    proto = NULL;
}

static void proto_make(void)
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac); /* the context holds its own reference */
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (!ctx || !EVP_MAC_CTX_set_params(ctx, params)) {
        EVP_MAC_CTX_free(ctx);
        return;
    }
    proto = ctx;
    atexit(proto_free);
}

static bool b64_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

int cy_wh_secret_new(char out[CY_WH_SECRET_LEN])
{
    uint8_t key[CY_WH_SECRET_BYTES];
    if (!out) return CY_EINVAL;
    if (RAND_bytes(key, sizeof(key)) != 1) return CY_EIO;
    memcpy(out, PREFIX, PREFIX_LEN);
    /* EVP_EncodeBlock writes 4 per 3 bytes and a NUL: 32 + 1 for 24. */
    EVP_EncodeBlock((unsigned char *)out + PREFIX_LEN, key, sizeof(key));
    OPENSSL_cleanse(key, sizeof(key));
    return 0;
}

int cy_wh_secret_key(const char *secret, uint8_t key[64], size_t *len)
{
    if (!secret || !key || !len || strncmp(secret, PREFIX, PREFIX_LEN) != 0) return CY_EINVAL;
    const char *b = secret + PREFIX_LEN;
    size_t n = strlen(b);
    if (n == 0 || n % 4 != 0 || n > B64_MAX) return CY_EINVAL;
    size_t pad = 0;
    if (b[n - 1] == '=') pad = b[n - 2] == '=' ? 2 : 1;
    for (size_t i = 0; i < n - pad; i++)
        if (!b64_char((unsigned char)b[i])) return CY_EINVAL;
    size_t bytes = n / 4 * 3 - pad;
    if (bytes < KEY_MIN || bytes > KEY_MAX) return CY_EINVAL;
    uint8_t tmp[B64_MAX / 4 * 3];
    if (EVP_DecodeBlock(tmp, (const unsigned char *)b, (int)n) != (int)(n / 4 * 3)) {
        OPENSSL_cleanse(tmp, sizeof(tmp));
        return CY_EINVAL;
    }
    memcpy(key, tmp, bytes);
    OPENSSL_cleanse(tmp, sizeof(tmp));
    *len = bytes;
    return 0;
}

/* HMAC-SHA256(key, "<id>.<ts>.<body>") into mac. */
static int hmac(const uint8_t *key, size_t key_len, const char *id, int64_t ts, const uint8_t *body,
                size_t body_len, uint8_t mac[MAC_LEN])
{
    pthread_once(&proto_once, proto_make);
    if (!proto) return CY_EIO;
    char stamp[24];
    int sn = snprintf(stamp, sizeof(stamp), ".%" PRId64 ".", ts);
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(proto);
    size_t out_len = 0;
    bool ok = ctx && EVP_MAC_init(ctx, key, key_len, NULL) &&
              EVP_MAC_update(ctx, (const unsigned char *)id, strlen(id)) &&
              EVP_MAC_update(ctx, (const unsigned char *)stamp, (size_t)sn) &&
              (body_len == 0 || EVP_MAC_update(ctx, body, body_len)) &&
              EVP_MAC_final(ctx, mac, &out_len, MAC_LEN) && out_len == MAC_LEN;
    EVP_MAC_CTX_free(ctx);
    return ok ? 0 : CY_EIO;
}

int cy_wh_sign(const char *const *secrets, size_t n, const char *id, int64_t ts,
               const uint8_t *body, size_t body_len, cy_buf *out)
{
    if (!secrets || n < 1 || n > 2 || !id || !out || (!body && body_len)) return CY_EINVAL;
    size_t start = cy_buf_size(out);
    int rc = CY_EINVAL; /* stays so when every secret was skipped */
    size_t signed_n = 0;
    for (size_t i = 0; i < n; i++) {
        if (!secrets[i] || !secrets[i][0]) continue;
        uint8_t key[KEY_MAX], mac[MAC_LEN];
        size_t key_len;
        rc = cy_wh_secret_key(secrets[i], key, &key_len);
        if (rc == 0) rc = hmac(key, key_len, id, ts, body, body_len, mac);
        OPENSSL_cleanse(key, sizeof(key));
        if (rc) break;
        char sig[4 + 4 * ((MAC_LEN + 2) / 3) + 1] = " v1,";
        int bn = EVP_EncodeBlock((unsigned char *)sig + 4, mac, MAC_LEN);
        const char *p = signed_n ? sig : sig + 1; /* a space before the second */
        rc = cy_buf_append(out, p, (size_t)(sig + 4 + bn - p));
        if (rc) break;
        signed_n++;
    }
    if (rc) out->len = out->off + start; /* nothing half-written */
    return rc;
}
