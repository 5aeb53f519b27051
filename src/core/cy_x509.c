/* cy_x509: see cy_x509.h. OpenSSL 3 (EVP_EC_gen, X509 and X509V3 calls);
 * nothing here runs on a server's path. */
#include "core/cy_x509.h"

#include "core/cy_err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define CA_DAYS 3650
#define DEVICE_DAYS 365

static int path_in(char *out, size_t len, const char *dir, const char *name)
{
    int n = snprintf(out, len, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= len ? CY_EINVAL : 0;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Write what fn writes to a new owner-only file; on any failure the file
 * is removed. */
static int write_new(const char *path, int (*fn)(FILE *f, void *obj), void *obj)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return errno == EEXIST ? CY_EEXIST : -errno;
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        int rc = -errno;
        close(fd);
        unlink(path);
        return rc;
    }
    int ok = fn(f, obj);
    if (fclose(f) != 0) ok = 0;
    if (!ok) {
        unlink(path);
        return CY_EIO;
    }
    return 0;
}

static int put_cert(FILE *f, void *x)
{
    return PEM_write_X509(f, x);
}

static int put_key(FILE *f, void *k)
{
    return PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (e == NULL) return 0;
    int ok = X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok;
}

/* A certificate for key with subject CN=cn, signed by (issuer, ikey), or
 * self-signed when issuer is NULL (then a CA). NULL on failure. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *ikey, long days)
{
    X509 *x = X509_new();
    BIGNUM *bn = NULL;
    unsigned char serial[16];
    bool ok = x && X509_set_version(x, 2) && RAND_bytes(serial, sizeof(serial)) == 1;
    if (ok) {
        serial[0] &= 0x7f; /* positive */
        bn = BN_bin2bn(serial, sizeof(serial), NULL);
        ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    }
    ok = ok && X509_gmtime_adj(X509_getm_notBefore(x), -300) &&
         X509_gmtime_adj(X509_getm_notAfter(x), days * 86400L) && X509_set_pubkey(x, key) &&
         X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                    (const unsigned char *)cn, -1, -1, 0);
    X509 *by = issuer ? issuer : x;
    ok = ok && X509_set_issuer_name(x, X509_get_subject_name(by)) &&
         add_ext(x, by, NID_subject_key_identifier, "hash");
    if (ok && issuer == NULL)
        ok = add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE") &&
             add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    else if (ok)
        ok = add_ext(x, by, NID_authority_key_identifier, "keyid:always") &&
             add_ext(x, by, NID_basic_constraints, "critical,CA:FALSE") &&
             add_ext(x, by, NID_key_usage, "critical,digitalSignature") &&
             add_ext(x, by, NID_ext_key_usage, "clientAuth");
    ok = ok && X509_sign(x, issuer ? ikey : key, EVP_sha256()) > 0;
    BN_free(bn);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

int cy_x509_ca_ensure(const char *dir, bool *made)
{
    char cert[4096], key[4096];
    *made = false;
    if (path_in(cert, sizeof(cert), dir, CY_X509_CA_CERT) ||
        path_in(key, sizeof(key), dir, CY_X509_CA_KEY))
        return CY_EINVAL;
    bool c = exists(cert), k = exists(key);
    if (c && k) return 0;
    if (c || k) return CY_EINVAL; /* half a CA: not ours to repair */
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = pk ? make_cert(pk, "cyan development CA", NULL, NULL, CA_DAYS) : NULL;
    int rc = x ? write_new(key, put_key, pk) : CY_ENOMEM;
    if (!rc && (rc = write_new(cert, put_cert, x))) unlink(key);
    X509_free(x);
    EVP_PKEY_free(pk);
    if (!rc) *made = true;
    return rc;
}

int cy_x509_issue_device(const char *ca_dir, const char *id, const char *cert_path,
                         const char *key_path)
{
    char cert[4096], key[4096];
    if (path_in(cert, sizeof(cert), ca_dir, CY_X509_CA_CERT) ||
        path_in(key, sizeof(key), ca_dir, CY_X509_CA_KEY))
        return CY_EINVAL;
    if (exists(cert_path) || exists(key_path)) return CY_EEXIST;
    FILE *f = fopen(cert, "r");
    X509 *ca = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f) fclose(f);
    f = fopen(key, "r");
    EVP_PKEY *cakey = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f) fclose(f);
    int rc = CY_EINVAL;
    EVP_PKEY *pk = NULL;
    X509 *x = NULL;
    if (ca && cakey && X509_check_private_key(ca, cakey) == 1) {
        rc = CY_ENOMEM;
        pk = EVP_EC_gen("P-256");
        x = pk ? make_cert(pk, id, ca, cakey, DEVICE_DAYS) : NULL;
        if (x) rc = write_new(key_path, put_key, pk);
        if (x && !rc && (rc = write_new(cert_path, put_cert, x))) unlink(key_path);
    }
    X509_free(x);
    EVP_PKEY_free(pk);
    X509_free(ca);
    EVP_PKEY_free(cakey);
    return rc;
}
