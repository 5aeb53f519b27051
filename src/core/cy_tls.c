/* cy_tls: the stream TLS engine of cy_tls.h, on OpenSSL 3.
 *
 * One BIO per engine, of our own method, serves as both the SSL's read and
 * write BIO: read copies from the lent input (then "retry"), write appends
 * to the engine's output buffer and never refuses (so SSL_write never
 * writes partially and one call encrypts a whole batch). Errors are taken
 * from OpenSSL's error queue at the call that failed and the queue is
 * cleared before every call, so one connection's failure never shows in
 * another's.
 */
#include "core/cy_tls.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* TLS 1.2: forward secrecy and AEAD only (no RC4, 3DES, CBC, SHA-1 MACs). */
#define CIPHERS_12 "ECDHE+AESGCM:ECDHE+CHACHA20"
/* Our BIO's type: a source/sink with an index of its own. */
#define BIO_TYPE_CY_TLS (0x7d | BIO_TYPE_SOURCE_SINK)

struct cy_tls_ctx {
    SSL_CTX *ssl;
    BIO_METHOD *meth;
    int refs;
    bool client;
    bool client_certs; /* server: a CA was given, certificates are requested */
};

struct cy_tls {
    SSL *ssl;
    cy_tls_ctx *ctx;
    const uint8_t *in; /* lent ciphertext not taken yet */
    size_t in_len;
    cy_buf out;          /* ciphertext to write */
    unsigned long error; /* OpenSSL's error code of the failure, 0 = none recorded */
    bool failed;
    bool nomem; /* our BIO could not grow the output */
};

/* ---- the BIO ---- */

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int bio_read(BIO *b, char *data, int len)
{
    cy_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!t || t->in_len == 0 || len <= 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = (size_t)len < t->in_len ? (size_t)len : t->in_len;
    memcpy(data, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (int)n;
}

static int bio_write(BIO *b, const char *data, int len)
{
    cy_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!t || len < 0) return -1;
    if (cy_buf_append(&t->out, data, (size_t)len)) {
        t->nomem = true;
        return -1;
    }
    return len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    cy_tls *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return t ? (long)t->in_len : 0;
    case BIO_CTRL_WPENDING:
        return 0;
    default:
        return 0;
    }
}

/* ---- contexts ---- */

static int config_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int config_error(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    ERR_clear_error();
    return CY_ECONFIG;
}

/* OpenSSL's reason for the last failure, or what errno says (a file that
 * cannot be opened). */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_SYS) return strerror(ERR_GET_REASON(e));
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

/* Can path be opened for reading? Said before OpenSSL tries, whose own
 * words for a missing file are obscure. */
static int readable(const char *what, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        return config_error(err, errlen, "%s %s: %s", what, path, strerror(errno));
    }
    fclose(f);
    return 0;
}

/* An encrypted key is refused rather than prompted for on the terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* "1.2" or "1.3" as OpenSSL's version; def for NULL or ""; 0 for anything else. */
static int version_of(const char *v, int def)
{
    if (!v || !v[0]) return def;
    if (!strcmp(v, "1.2")) return TLS1_2_VERSION;
    if (!strcmp(v, "1.3")) return TLS1_3_VERSION;
    return 0;
}

int cy_tls_ctx_new(const cy_tls_options *o, cy_tls_ctx **out, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    bool has_cert = o->cert && o->cert[0], has_key = o->key && o->key[0];
    bool has_ca = o->ca && o->ca[0];
    if (!o->client && (!has_cert || !has_key))
        return config_error(err, errlen, "a TLS server needs a certificate and a key");
    if (has_cert != has_key)
        return config_error(err, errlen, "a certificate needs its key and a key its certificate");
    int min = version_of(o->min_version, TLS1_2_VERSION),
        max = version_of(o->max_version, TLS1_3_VERSION);
    if (!min || !max || min > max)
        return config_error(err, errlen, "TLS versions '%s'..'%s': expected 1.2 or 1.3",
                            o->min_version ? o->min_version : "",
                            o->max_version ? o->max_version : "");
    if (has_cert && readable("certificate", o->cert, err, errlen)) return CY_ECONFIG;
    if (has_key && readable("private key", o->key, err, errlen)) return CY_ECONFIG;
    if (has_ca && readable("CA bundle", o->ca, err, errlen)) return CY_ECONFIG;

    ERR_clear_error();
    int rc = CY_ENOMEM;
    cy_tls_ctx *c = cy_calloc(1, sizeof(*c));
    if (!c) return CY_ENOMEM;
    c->refs = 1;
    c->client = o->client;
    c->ssl = SSL_CTX_new(o->client ? TLS_client_method() : TLS_server_method());
    if (!c->ssl) goto fail;
    SSL_CTX_set_security_level(c->ssl, 2);
    if (!SSL_CTX_set_min_proto_version(c->ssl, min) || !SSL_CTX_set_max_proto_version(c->ssl, max))
        goto fail;
    if (!SSL_CTX_set_cipher_list(c->ssl, o->ciphers && o->ciphers[0] ? o->ciphers : CIPHERS_12)) {
        rc = config_error(err, errlen, "TLS 1.2 cipher list '%s': %s",
                          o->ciphers && o->ciphers[0] ? o->ciphers : CIPHERS_12, ssl_reason());
        goto fail;
    }
    /* No renegotiation (a CPU sink for a stranger); no session tickets or
     * cache: a device may reconnect to any shard, and each shard's ticket
     * keys are its own (docs/architecture.md, "MQTT over TLS"). */
    SSL_CTX_set_options(c->ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION |
                                    SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(c->ssl, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(c->ssl, 0);
    SSL_CTX_set_max_cert_list(c->ssl, CY_TLS_MAX_CERT_LIST);
    if (has_cert) {
        if (SSL_CTX_use_certificate_chain_file(c->ssl, o->cert) != 1) {
            rc = config_error(err, errlen,
                              "certificate %s: %s (a PEM certificate chain, "
                              "leaf first, is expected)",
                              o->cert, ssl_reason());
            goto fail;
        }
        FILE *f = fopen(o->key, "r");
        EVP_PKEY *pk = f ? PEM_read_PrivateKey(f, NULL, no_passphrase, NULL) : NULL;
        if (f) fclose(f);
        if (!pk) {
            rc = config_error(err, errlen,
                              "private key %s: %s (an unencrypted PEM key is "
                              "expected)",
                              o->key, ssl_reason());
            goto fail;
        }
        int used = SSL_CTX_use_PrivateKey(c->ssl, pk);
        EVP_PKEY_free(pk);
        if (used != 1 || SSL_CTX_check_private_key(c->ssl) != 1) {
            rc = config_error(err, errlen, "private key %s does not match certificate %s", o->key,
                              o->cert);
            goto fail;
        }
    }
    if (has_ca) {
        if (SSL_CTX_load_verify_locations(c->ssl, o->ca, NULL) != 1) {
            rc = config_error(err, errlen, "CA bundle %s: %s", o->ca, ssl_reason());
            goto fail;
        }
        if (!o->client) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca);
            if (!names) {
                rc = config_error(err, errlen, "CA bundle %s: %s", o->ca, "no certificate in it");
                goto fail;
            }
            SSL_CTX_set_client_CA_list(c->ssl, names);
            c->client_certs = true;
        }
        /* Server: requested, not required; one sent must verify. */
        SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER, NULL);
    }
    c->meth = BIO_meth_new(BIO_TYPE_CY_TLS, "cyan tls");
    if (!c->meth || !BIO_meth_set_create(c->meth, bio_create) ||
        !BIO_meth_set_read(c->meth, bio_read) || !BIO_meth_set_write(c->meth, bio_write) ||
        !BIO_meth_set_ctrl(c->meth, bio_ctrl))
        goto fail;
    ERR_clear_error();
    *out = c;
    return 0;
fail:
    if (rc == CY_ENOMEM && err && errlen && !err[0])
        snprintf(err, errlen, "TLS setup failed: %s", ssl_reason());
    ERR_clear_error();
    BIO_meth_free(c->meth);
    SSL_CTX_free(c->ssl);
    cy_free(c);
    return rc;
}

void cy_tls_options_of(const cy_config *cfg, cy_tls_options *o)
{
    memset(o, 0, sizeof(*o));
    o->cert = cfg->tls_cert;
    o->key = cfg->tls_key;
    o->ca = cfg->tls_ca;
    o->ciphers = cfg->tls_ciphers;
    o->min_version = cfg->tls_min_version;
}

int cy_tls_check(const cy_tls_options *o, char *err, size_t errlen)
{
    cy_tls_ctx *c = NULL;
    int rc = cy_tls_ctx_new(o, &c, err, errlen);
    cy_tls_ctx_unref(c);
    return rc;
}

cy_tls_ctx *cy_tls_ctx_ref(cy_tls_ctx *ctx)
{
    ctx->refs++;
    return ctx;
}

void cy_tls_ctx_unref(cy_tls_ctx *ctx)
{
    if (!ctx || --ctx->refs > 0) return;
    SSL_CTX_free(ctx->ssl);
    BIO_meth_free(ctx->meth);
    cy_free(ctx);
}

bool cy_tls_ctx_client_certs(const cy_tls_ctx *ctx)
{
    return ctx && ctx->client_certs;
}

/* ---- engines ---- */

int cy_tls_new(cy_tls_ctx *ctx, cy_tls **out)
{
    *out = NULL;
    cy_tls *t = cy_calloc(1, sizeof(*t));
    if (!t) return CY_ENOMEM;
    ERR_clear_error();
    t->ssl = SSL_new(ctx->ssl);
    BIO *b = t->ssl ? BIO_new(ctx->meth) : NULL;
    if (!b) {
        SSL_free(t->ssl);
        cy_free(t);
        ERR_clear_error();
        return CY_ENOMEM;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b); /* one BIO both ways: the SSL takes our one reference */
    if (ctx->client)
        SSL_set_connect_state(t->ssl);
    else
        SSL_set_accept_state(t->ssl);
    t->ctx = cy_tls_ctx_ref(ctx);
    *out = t;
    return 0;
}

void cy_tls_free(cy_tls *t)
{
    if (!t) return;
    SSL_free(t->ssl);
    cy_buf_fini(&t->out);
    cy_tls_ctx_unref(t->ctx);
    cy_free(t);
}

void cy_tls_input(cy_tls *t, const uint8_t *p, size_t len)
{
    t->in = p;
    t->in_len = len;
}

size_t cy_tls_input_left(const cy_tls *t)
{
    return t->in_len;
}

/* Map the outcome of an SSL call that returned r <= 0. */
static int failure(cy_tls *t, int r)
{
    int e = SSL_get_error(t->ssl, r);
    if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && !t->nomem) return CY_EAGAIN;
    if (e == SSL_ERROR_ZERO_RETURN) return CY_EPIPE;
    t->failed = true;
    t->error = ERR_peek_last_error();
    ERR_clear_error();
    return t->nomem ? CY_ENOMEM : CY_EPROTO;
}

int cy_tls_handshake(cy_tls *t)
{
    if (t->failed) return t->nomem ? CY_ENOMEM : CY_EPROTO;
    if (SSL_is_init_finished(t->ssl)) return 0;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    return r == 1 ? 0 : failure(t, r);
}

int cy_tls_read(cy_tls *t, uint8_t *buf, size_t cap, size_t *n)
{
    *n = 0;
    if (t->failed) return t->nomem ? CY_ENOMEM : CY_EPROTO;
    if (!cap) return CY_EINVAL;
    ERR_clear_error();
    size_t got = 0;
    int r = SSL_read_ex(t->ssl, buf, cap, &got);
    if (r == 1) {
        *n = got;
        return 0;
    }
    return failure(t, r);
}

int cy_tls_write(cy_tls *t, const uint8_t *p, size_t len)
{
    if (t->failed) return t->nomem ? CY_ENOMEM : CY_EPROTO;
    if (!SSL_is_init_finished(t->ssl)) return CY_EAGAIN;
    ERR_clear_error();
    while (len) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : len, done = 0;
        int r = SSL_write_ex(t->ssl, p, chunk, &done);
        if (r != 1) {
            int rc = failure(t, r);
            /* Our BIO never asks to retry a write: a retry here is a dead peer's state. */
            return rc == CY_EAGAIN ? CY_EPROTO : rc;
        }
        p += done;
        len -= done;
    }
    return 0;
}

void cy_tls_close(cy_tls *t)
{
    if (t->failed || !SSL_is_init_finished(t->ssl)) return;
    ERR_clear_error();
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

cy_buf *cy_tls_out(cy_tls *t)
{
    return &t->out;
}

bool cy_tls_established(const cy_tls *t)
{
    return SSL_is_init_finished(t->ssl);
}

const char *cy_tls_why(const cy_tls *t)
{
    static char text[160];
    long v = SSL_get_verify_result(t->ssl);
    const char *r = t->error ? ERR_reason_error_string(t->error) : NULL;
    if (t->nomem)
        snprintf(text, sizeof(text), "out of memory");
    else if (v != X509_V_OK && SSL_get0_peer_certificate(t->ssl))
        snprintf(text, sizeof(text), "%s: certificate: %s", r ? r : "handshake failed",
                 X509_verify_cert_error_string(v));
    else
        snprintf(text, sizeof(text), "%s", r ? r : "protocol error");
    return text;
}

const char *cy_tls_describe(const cy_tls *t)
{
    static char text[96];
    if (!SSL_is_init_finished(t->ssl)) return "";
    snprintf(text, sizeof(text), "%s %s", SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl));
    return text;
}

static bool asn1_is(const ASN1_STRING *s, const char *id, size_t len)
{
    return s && (size_t)ASN1_STRING_length(s) == len &&
           memcmp(ASN1_STRING_get0_data(s), id, len) == 0;
}

bool cy_tls_peer_is(const cy_tls *t, const char *id, size_t len)
{
    if (!len || t->failed || !SSL_is_init_finished(t->ssl)) return false;
    X509 *cert = SSL_get0_peer_certificate(t->ssl);
    if (!cert || SSL_get_verify_result(t->ssl) != X509_V_OK) return false;
    /* Only a context that asked (has a CA) verified anything. */
    if (!t->ctx->client_certs) return false;
    bool found = false;
    X509_NAME *subject = X509_get_subject_name(cert);
    for (int i = -1; !found && subject;) {
        i = X509_NAME_get_index_by_NID(subject, NID_commonName, i);
        if (i < 0) break;
        found = asn1_is(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i)), id, len);
    }
    GENERAL_NAMES *sans = found ? NULL : X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; sans && !found && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type == GEN_DNS)
            found = asn1_is(g->d.dNSName, id, len);
        else if (g->type == GEN_URI)
            found = asn1_is(g->d.uniformResourceIdentifier, id, len);
    }
    GENERAL_NAMES_free(sans);
    ERR_clear_error();
    return found;
}
