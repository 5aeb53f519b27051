"""Certificates for the TLS tests, made with the `openssl` command: a CA
and leaf certificates it signs (a server's, for 127.0.0.1 and localhost, or
a device's), each as PEM files in a folder of the test's own."""

import os
import subprocess


def _run(*argv):
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class CA:
    """A CA in folder d: ca.pem, ca.key; issue() makes leaf pairs."""

    def __init__(self, d, name="cyan test CA"):
        os.makedirs(d, exist_ok=True)
        self.dir = d
        self.cert = os.path.join(d, "ca.pem")
        self.key = os.path.join(d, "ca.key")
        _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "2",
             "-subj", "/CN=%s" % name)
        self._n = 0

    def issue(self, cn, san="IP:127.0.0.1,DNS:localhost", server=True):
        """A leaf certificate with subject CN=cn signed by this CA:
        (cert path, key path)."""
        self._n += 1
        base = os.path.join(self.dir, "leaf%d" % self._n)
        key, csr, cert, ext = base + ".key", base + ".csr", base + ".pem", base + ".ext"
        _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", "/CN=%s" % cn)
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\n" % san)
            f.write("extendedKeyUsage=%s\n" % ("serverAuth" if server else "clientAuth"))
        _run("openssl", "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
             "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
        os.chmod(key, 0o600)
        return cert, key
