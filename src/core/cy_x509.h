/* cy_x509: a certificate authority for development, and the certificates
 * it issues to devices (`cyan device add NAME --cert`, `cyan device cert
 * NAME`).
 *
 * The CA is a pair of PEM files, `<dir>/dev-ca.crt` and `<dir>/dev-ca.key`
 * (EC P-256, ten years), made on first use. A device certificate has the
 * subject CN = the device id, extended key usage clientAuth, one year, and
 * is signed by that CA: with `tls_ca` pointing at dev-ca.crt, cyan's TLS
 * listener takes it as the device's credential. A production fleet has its
 * own CA (or a cloud's); this one is for trying the path out.
 *
 * Files are written owner-only (0600) whatever the umask, and never over an
 * existing file (CY_EEXIST): a key once written is not replaced silently.
 *
 * Ownership: strings are borrowed for the call. Errors: CY_EINVAL (a CA
 * file that does not load), CY_EEXIST, CY_EIO (a file cannot be written;
 * errno-based codes where one fits), CY_ENOMEM. Thread: any; OpenSSL's
 * default library context.
 */
#ifndef CY_X509_H
#define CY_X509_H

#include <stdbool.h>
#include <stddef.h>

#define CY_X509_CA_CERT "dev-ca.crt"
#define CY_X509_CA_KEY "dev-ca.key"

/* Make the CA in dir unless both files are there already (*made says which;
 * one file without the other is CY_EINVAL: nothing is overwritten). */
int cy_x509_ca_ensure(const char *dir, bool *made);

/* Issue a certificate for device `id` signed by the CA in ca_dir, with a
 * new key: written to cert_path and key_path. */
int cy_x509_issue_device(const char *ca_dir, const char *id, const char *cert_path,
                         const char *key_path);

#endif
