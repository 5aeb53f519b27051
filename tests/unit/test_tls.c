/* Unit tests for core/cy_tls: the stream TLS engine, two engines talking
 * in memory (no socket).
 *
 * Certificates are made here with OpenSSL's API into a temporary folder: a
 * CA, a server certificate it signs (CN localhost), a device certificate
 * (CN = a device id, and a SAN URI) and a second CA with a device
 * certificate of its own (a stranger's). pump() moves each engine's output
 * into the other's input and reads what either has, until neither moves;
 * partial records are tested by moving one byte at a time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "core/cy_tls.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEVICE_ID "0123456789abcdef01234567"

static char dir[64];
static char ca_pem[128], srv_pem[128], srv_key[128], dev_pem[128], dev_key[128];
static char ca2_pem[128], bad_pem[128], bad_key[128], other_key[128], junk[128];

/* ---- certificates ---- */

static EVP_PKEY *new_key(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    assert_non_null(k);
    return k;
}

static X509 *new_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key, bool ca,
                      const char *san)
{
    static long serial = 1;
    X509 *x = X509_new();
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *e =
        X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    if (ca) {
        e = X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    if (san) {
        e = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    assert_true(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

static void write_cert(const char *path, X509 *x)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
}

static void write_key(const char *path, EVP_PKEY *k)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
}

static int setup_files(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/cy_tls_XXXXXX");
    assert_non_null(mkdtemp(dir));
#define P(v, name) snprintf(v, sizeof(v), "%s/%s", dir, name)
    P(ca_pem, "ca.pem");
    P(srv_pem, "server.pem");
    P(srv_key, "server.key");
    P(dev_pem, "device.pem");
    P(dev_key, "device.key");
    P(ca2_pem, "ca2.pem");
    P(bad_pem, "stranger.pem");
    P(bad_key, "stranger.key");
    P(other_key, "other.key");
    P(junk, "junk.pem");
#undef P
    EVP_PKEY *cak = new_key(), *sk = new_key(), *dk = new_key(), *ca2k = new_key(), *bk = new_key(),
             *ok = new_key();
    X509 *ca = new_cert(cak, "cyan test CA", NULL, NULL, true, NULL);
    X509 *srv = new_cert(sk, "localhost", ca, cak, false, "DNS:localhost,IP:127.0.0.1");
    X509 *dev = new_cert(dk, DEVICE_ID, ca, cak, false, "URI:urn:dev:second");
    X509 *ca2 = new_cert(ca2k, "another CA", NULL, NULL, true, NULL);
    X509 *bad = new_cert(bk, DEVICE_ID, ca2, ca2k, false, NULL);
    write_cert(ca_pem, ca);
    write_cert(srv_pem, srv);
    write_key(srv_key, sk);
    write_cert(dev_pem, dev);
    write_key(dev_key, dk);
    write_cert(ca2_pem, ca2);
    write_cert(bad_pem, bad);
    write_key(bad_key, bk);
    write_key(other_key, ok);
    FILE *f = fopen(junk, "w");
    fputs("not a certificate\n", f);
    fclose(f);
    X509 *xs[] = {ca, srv, dev, ca2, bad};
    for (size_t i = 0; i < sizeof(xs) / sizeof(xs[0]); i++)
        X509_free(xs[i]);
    EVP_PKEY *ks[] = {cak, sk, dk, ca2k, bk, ok};
    for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++)
        EVP_PKEY_free(ks[i]);
    return 0;
}

static int teardown_files(void **state)
{
    (void)state;
    const char *files[] = {ca_pem,  srv_pem, srv_key, dev_pem,   dev_key,
                           ca2_pem, bad_pem, bad_key, other_key, junk};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        unlink(files[i]);
    rmdir(dir);
    return 0;
}

/* ---- two engines ---- */

typedef struct side {
    cy_tls *t;
    cy_buf got; /* plaintext read */
    int rc;     /* last non-EAGAIN result of a read */
} side;

static cy_tls_ctx *server_ctx(const char *ca)
{
    cy_tls_ctx *c = NULL;
    char err[256];
    cy_tls_options o = {.cert = srv_pem, .key = srv_key, .ca = ca};
    int rc = cy_tls_ctx_new(&o, &c, err, sizeof(err));
    if (rc) fail_msg("server ctx: %s", err);
    return c;
}

static cy_tls_ctx *client_ctx(const char *ca, const char *cert, const char *key)
{
    cy_tls_ctx *c = NULL;
    char err[256];
    cy_tls_options o = {.ca = ca, .cert = cert, .key = key, .client = true};
    int rc = cy_tls_ctx_new(&o, &c, err, sizeof(err));
    if (rc) fail_msg("client ctx: %s", err);
    return c;
}

static void side_init(side *s, cy_tls_ctx *ctx)
{
    memset(s, 0, sizeof(*s));
    assert_int_equal(cy_tls_new(ctx, &s->t), 0);
}

static void side_fini(side *s)
{
    cy_tls_free(s->t);
    cy_buf_fini(&s->got);
}

/* Move up to `step` bytes (0 = all) of a's output into b and let b read.
 * Returns the bytes moved. */
static size_t move(side *a, side *b, size_t step)
{
    cy_buf *out = cy_tls_out(a->t);
    size_t n = cy_buf_size(out);
    if (step && n > step) n = step;
    if (!n && b->rc) return 0;
    cy_tls_input(b->t, cy_buf_head(out), n);
    for (;;) {
        uint8_t buf[4096];
        size_t got = 0;
        int rc = cy_tls_read(b->t, buf, sizeof(buf), &got);
        if (rc == CY_EAGAIN) break;
        if (rc) {
            b->rc = rc;
            break;
        }
        assert_true(got > 0);
        assert_int_equal(cy_buf_append(&b->got, buf, got), 0);
    }
    if (!b->rc) assert_int_equal(cy_tls_input_left(b->t), 0);
    cy_buf_consume(out, n);
    return n;
}

/* Run both until neither has anything to say. */
static void pump(side *client, side *server, size_t step)
{
    for (int i = 0; i < 1000000; i++) {
        if (!client->rc && !cy_tls_established(client->t)) {
            int rc = cy_tls_handshake(client->t);
            if (rc && rc != CY_EAGAIN) client->rc = rc;
        }
        size_t moved = move(client, server, step) + move(server, client, step);
        if (!moved) return;
    }
    fail_msg("pump never settled");
}

/* ---- tests ---- */

static void test_tls_handshake_and_data(void **state)
{
    (void)state;
    cy_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(ca_pem, NULL, NULL);
    side c, s;
    side_init(&c, cc);
    side_init(&s, sc);
    cy_tls_ctx_unref(sc); /* the engines hold their own references */
    cy_tls_ctx_unref(cc);
    assert_int_equal(cy_tls_write(s.t, (const uint8_t *)"x", 1), CY_EAGAIN);
    pump(&c, &s, 0);
    assert_int_equal(c.rc, 0);
    assert_int_equal(s.rc, 0);
    assert_true(cy_tls_established(c.t));
    assert_true(cy_tls_established(s.t));
    assert_non_null(strstr(cy_tls_describe(s.t), "TLSv1.3"));
    assert_int_equal(cy_tls_write(c.t, (const uint8_t *)"hello server", 12), 0);
    assert_int_equal(cy_tls_write(s.t, (const uint8_t *)"hello client", 12), 0);
    pump(&c, &s, 0);
    assert_int_equal(cy_buf_size(&s.got), 12);
    assert_memory_equal(cy_buf_head(&s.got), "hello server", 12);
    assert_int_equal(cy_buf_size(&c.got), 12);
    assert_memory_equal(cy_buf_head(&c.got), "hello client", 12);
    /* No client certificate: nobody is named. */
    assert_false(cy_tls_peer_is(s.t, DEVICE_ID, strlen(DEVICE_ID)));
    /* close_notify: the other side reads an end. */
    cy_tls_close(c.t);
    pump(&c, &s, 0);
    assert_int_equal(s.rc, CY_EPIPE);
    side_fini(&c);
    side_fini(&s);
}

/* Records cut at every byte, and a batch larger than many records. */
static void test_tls_partial_records_and_large_batch(void **state)
{
    (void)state;
    cy_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(ca_pem, NULL, NULL);
    side c, s;
    side_init(&c, cc);
    side_init(&s, sc);
    pump(&c, &s, 1); /* the handshake one byte at a time */
    assert_true(cy_tls_established(s.t));
    size_t big = 200 * 1024;
    uint8_t *p = malloc(big);
    assert_non_null(p);
    for (size_t i = 0; i < big; i++)
        p[i] = (uint8_t)(i * 7 + 3);
    assert_int_equal(cy_tls_write(s.t, p, big), 0);
    size_t cipher = cy_buf_size(cy_tls_out(s.t));
    assert_true(cipher > big && cipher < big + big / 50); /* records of 16 KB, little overhead */
    pump(&c, &s, 1000);                                   /* cut mid-record */
    assert_int_equal(cy_buf_size(&c.got), big);
    assert_memory_equal(cy_buf_head(&c.got), p, big);
    assert_int_equal(cy_tls_write(c.t, p, 1), 0);
    pump(&c, &s, 1);
    assert_int_equal(cy_buf_size(&s.got), 1);
    free(p);
    side_fini(&c);
    side_fini(&s);
    cy_tls_ctx_unref(sc);
    cy_tls_ctx_unref(cc);
}

/* Garbage is an error, never a crash, and the engine stays dead. */
static void test_tls_garbage_is_an_error(void **state)
{
    (void)state;
    cy_tls_ctx *sc = server_ctx(NULL);
    cy_tls *t = NULL;
    assert_int_equal(cy_tls_new(sc, &t), 0);
    static const uint8_t mqtt_connect[] = {0x10, 0x10, 0x00, 0x04, 'M', 'Q', 'T', 'T', 4,
                                           2,    0,    60,   0,    4,   'a', 'b', 'c', 'd'};
    cy_tls_input(t, mqtt_connect, sizeof(mqtt_connect)); /* plaintext MQTT on the TLS port */
    uint8_t buf[256];
    size_t n = 1;
    assert_int_equal(cy_tls_read(t, buf, sizeof(buf), &n), CY_EPROTO);
    assert_int_equal(n, 0);
    assert_true(strlen(cy_tls_why(t)) > 0);
    assert_int_equal(cy_tls_read(t, buf, sizeof(buf), &n), CY_EPROTO);
    assert_int_equal(cy_tls_write(t, buf, 1), CY_EPROTO);
    cy_tls_free(t);

    /* Random bytes after a valid record header, and every byte value as a first byte. */
    for (int first = 0; first < 256; first++) {
        assert_int_equal(cy_tls_new(sc, &t), 0);
        uint8_t junkbuf[64];
        for (size_t i = 0; i < sizeof(junkbuf); i++)
            junkbuf[i] = (uint8_t)(first * 31 + i * 17);
        junkbuf[0] = (uint8_t)first;
        cy_tls_input(t, junkbuf, sizeof(junkbuf));
        int rc;
        do
            rc = cy_tls_read(t, buf, sizeof(buf), &n);
        while (rc == 0);
        assert_true(rc == CY_EPROTO || rc == CY_EAGAIN);
        cy_tls_free(t);
    }
    cy_tls_ctx_unref(sc);
    cy_tls_free(NULL);
    cy_tls_ctx_unref(NULL);
}

/* A client that trusts another CA refuses the server; the server sees the alert. */
static void test_tls_wrong_ca_fails(void **state)
{
    (void)state;
    cy_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(ca2_pem, NULL, NULL);
    side c, s;
    side_init(&c, cc);
    side_init(&s, sc);
    pump(&c, &s, 0);
    assert_int_equal(c.rc, CY_EPROTO);
    assert_non_null(strstr(cy_tls_why(c.t), "certificate"));
    assert_int_equal(s.rc, CY_EPROTO);
    side_fini(&c);
    side_fini(&s);
    cy_tls_ctx_unref(sc);
    cy_tls_ctx_unref(cc);
}

static void test_tls_client_certificates(void **state)
{
    (void)state;
    cy_tls_ctx *sc = server_ctx(ca_pem);
    assert_true(cy_tls_ctx_client_certs(sc));
    /* A device certificate of our CA names the device by CN and by SAN URI. */
    cy_tls_ctx *cc = client_ctx(ca_pem, dev_pem, dev_key);
    side c, s;
    side_init(&c, cc);
    side_init(&s, sc);
    pump(&c, &s, 0);
    assert_int_equal(s.rc, 0);
    assert_true(cy_tls_established(s.t));
    assert_true(cy_tls_peer_is(s.t, DEVICE_ID, strlen(DEVICE_ID)));
    assert_true(cy_tls_peer_is(s.t, "urn:dev:second", 14));
    assert_false(cy_tls_peer_is(s.t, DEVICE_ID, strlen(DEVICE_ID) - 1));
    assert_false(cy_tls_peer_is(s.t, "ffffffffffffffffffffffff", 24));
    side_fini(&c);
    side_fini(&s);
    cy_tls_ctx_unref(cc);

    /* No certificate: allowed (requested, not required), names nobody. */
    cc = client_ctx(ca_pem, NULL, NULL);
    side_init(&c, cc);
    side_init(&s, sc);
    pump(&c, &s, 0);
    assert_int_equal(s.rc, 0);
    assert_true(cy_tls_established(s.t));
    assert_false(cy_tls_peer_is(s.t, DEVICE_ID, strlen(DEVICE_ID)));
    side_fini(&c);
    side_fini(&s);
    cy_tls_ctx_unref(cc);

    /* A certificate of another CA with the same CN fails the handshake. */
    cc = client_ctx(ca_pem, bad_pem, bad_key);
    side_init(&c, cc);
    side_init(&s, sc);
    pump(&c, &s, 0);
    assert_int_equal(s.rc, CY_EPROTO);
    assert_false(cy_tls_peer_is(s.t, DEVICE_ID, strlen(DEVICE_ID)));
    side_fini(&c);
    side_fini(&s);
    cy_tls_ctx_unref(cc);
    cy_tls_ctx_unref(sc);
}

static void expect_config_error(const cy_tls_options *o, const char *word)
{
    char err[256] = "";
    cy_tls_ctx *c = (cy_tls_ctx *)1;
    assert_int_equal(cy_tls_ctx_new(o, &c, err, sizeof(err)), CY_ECONFIG);
    assert_null(c);
    if (!strstr(err, word)) fail_msg("error '%s' does not say '%s'", err, word);
    assert_int_equal(cy_tls_check(o, NULL, 0), CY_ECONFIG);
}

static void test_tls_config_errors(void **state)
{
    (void)state;
    cy_tls_options o = {.cert = srv_pem, .key = srv_key};
    char err[256];
    assert_int_equal(cy_tls_check(&o, err, sizeof(err)), 0);
    o.key = NULL;
    expect_config_error(&o, "needs");
    o.key = other_key;
    expect_config_error(&o, "does not match");
    o.key = srv_key;
    o.cert = "/nonexistent/cert.pem";
    expect_config_error(&o, "/nonexistent/cert.pem");
    o.cert = junk;
    expect_config_error(&o, junk);
    o.cert = srv_pem;
    o.key = junk;
    expect_config_error(&o, junk);
    o.key = srv_key;
    o.ca = junk;
    expect_config_error(&o, junk);
    o.ca = NULL;
    o.min_version = "1.1";
    expect_config_error(&o, "1.1");
    o.min_version = "1.3";
    assert_int_equal(cy_tls_check(&o, err, sizeof(err)), 0);
    o.min_version = NULL;
    o.ciphers = "NOT-A-CIPHER";
    expect_config_error(&o, "NOT-A-CIPHER");
}

/* A TLS 1.3 floor on the server and a client that stops at 1.2. */
static void test_tls_min_version(void **state)
{
    (void)state;
    cy_tls_ctx *sc = NULL;
    cy_tls_options o = {.cert = srv_pem, .key = srv_key, .min_version = "1.3"};
    assert_int_equal(cy_tls_ctx_new(&o, &sc, NULL, 0), 0);
    cy_tls_ctx *cc = NULL;
    cy_tls_options co = {.ca = ca_pem, .client = true, .max_version = "1.2"};
    assert_int_equal(cy_tls_ctx_new(&co, &cc, NULL, 0), 0);
    side c, s;
    side_init(&c, cc);
    side_init(&s, sc);
    pump(&c, &s, 0);
    assert_int_equal(s.rc, CY_EPROTO);
    side_fini(&c);
    side_fini(&s);
    cy_tls_ctx_unref(cc);
    cy_tls_ctx_unref(sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_handshake_and_data),
        cmocka_unit_test(test_tls_partial_records_and_large_batch),
        cmocka_unit_test(test_tls_garbage_is_an_error),
        cmocka_unit_test(test_tls_wrong_ca_fails),
        cmocka_unit_test(test_tls_client_certificates),
        cmocka_unit_test(test_tls_config_errors),
        cmocka_unit_test(test_tls_min_version),
    };
    return cmocka_run_group_tests(tests, setup_files, teardown_files);
}
