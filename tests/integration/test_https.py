"""HTTPS on the API and the operations listener (issue 14, "TLS";
docs/operations.md, "TLS").

- With tls_cert and tls_key, both listeners speak TLS 1.2/1.3 only, with a
  certificate a client verifies against its CA (curl --cacert), and plain
  HTTP is not answered.
- The monitor's canary makes its function call over HTTPS.
- SIGHUP reads the pair again: new connections get the new certificate, an
  open connection keeps working; a broken file keeps the old pair.
- A key that is not the certificate's stops the start with a clear error.
"""

import http.client
import os
import re
import signal
import ssl
import subprocess
import time

import pytest

from conftest import CYAN_BIN, HOST
from tlscerts import CA

pytestmark = pytest.mark.cyan_only


def curl(url, ca, *extra, token=None):
    argv = ["curl", "-sS", "--max-time", "10", "--cacert", ca, "-o", "-", "-w", "\n%{http_code}"]
    if token:
        argv += ["-H", "Authorization: Bearer %s" % token]
    cp = subprocess.run(argv + list(extra) + [url], capture_output=True, text=True, timeout=20)
    body, _, code = cp.stdout.rpartition("\n")
    return cp.returncode, int(code or 0), body, cp.stderr


def https_url(srv, port):
    return "https://%s:%d" % (srv.host, port)


def start_tls(server_factory, tmp_path, **settings):
    ca = CA(str(tmp_path / "ca"))
    cert, key = ca.issue("cyan-1")
    srv = server_factory(_template=False, tls_cert=cert, tls_key=key, **settings)
    return srv, ca, cert, key


def wait_ok(srv, url, ca, token=None, timeout=15.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = curl(url, ca.cert, token=token)
        if last[0] == 0 and last[1] == 200:
            return last
        time.sleep(0.1)
    raise AssertionError("%s never answered 200: %r\n%s" % (url, last, srv.log_tail()))


def peer_cn(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    with ctx.wrap_socket(__import__("socket").create_connection((HOST, port), timeout=5),
                         server_hostname="127.0.0.1") as s:
        subject = dict(x[0] for x in s.getpeercert()["subject"])
        return subject["commonName"], s.version()


def test_api_and_ops_speak_only_tls(server_factory, tmp_path):
    srv, ca, cert, key = start_tls(server_factory, tmp_path)
    token = srv.admin_token()
    api = https_url(srv, srv.http_port)
    wait_ok(srv, api + "/v1/health", ca)
    rc, code, body, err = curl(api + "/v1/devices", ca.cert, token=token)
    assert (rc, code) == (0, 200), (rc, code, body, err)
    # The operations listener: /metrics over HTTPS, verified by the same CA.
    rc, code, body, err = curl(https_url(srv, srv.ops_port) + "/metrics", ca.cert)
    assert (rc, code) == (0, 200) and "cyan_" in body, (rc, code, err)
    # Verification really happens: another CA's client refuses the server.
    other = CA(str(tmp_path / "other"), name="someone else")
    rc, code, _, err = curl(api + "/v1/health", other.cert)
    assert rc != 0 and code == 0, (rc, code, err)
    # Plain HTTP gets no HTTP answer.
    cp = subprocess.run(["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                         "http://%s:%d/v1/health" % (srv.host, srv.http_port)],
                        capture_output=True, text=True, timeout=15)
    assert cp.stdout.strip() == "000", cp
    # TLS 1.2 and 1.3 only.
    for ver, ok in (("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)):
        cp = subprocess.run(["openssl", "s_client", ver, "-connect", "%s:%d" % (srv.host, srv.http_port),
                             "-CAfile", ca.cert, "-verify_return_error"],
                            input="", capture_output=True, text=True, timeout=15)
        assert (cp.returncode == 0) == ok, (ver, cp.returncode, cp.stdout[-500:], cp.stderr[-500:])
    assert "(HTTPS)" in open(srv.log_path).read()


def test_canary_calls_over_https(server_factory, tmp_path):
    srv, ca, cert, key = start_tls(server_factory, tmp_path, canary_interval=200,
                                   isolate_devices=True)
    ops = https_url(srv, srv.ops_port) + "/metrics"
    pat = re.compile(r'^cyan_canary_success_total\{shard="0",step="call"\} (\d+)', re.M)
    deadline = time.monotonic() + 20
    n = 0
    while time.monotonic() < deadline:
        _, code, body, _ = curl(ops, ca.cert)
        m = pat.search(body) if code == 200 else None
        n = int(m.group(1)) if m else 0
        if n >= 2:
            break
        time.sleep(0.2)
    assert n >= 2, "the canary's call step never succeeded over HTTPS\n" + srv.log_tail()


def test_sighup_reloads_the_pair_without_dropping(server_factory, tmp_path):
    srv, ca, cert, key = start_tls(server_factory, tmp_path)
    token = srv.admin_token()
    wait_ok(srv, https_url(srv, srv.http_port) + "/v1/health", ca)
    assert peer_cn(srv.http_port, ca.cert)[0] == "cyan-1"
    ctx = ssl.create_default_context(cafile=ca.cert)
    kept = http.client.HTTPSConnection(HOST, srv.http_port, context=ctx, timeout=10)
    kept.request("GET", "/v1/devices", headers={"Authorization": "Bearer " + token})
    r = kept.getresponse()
    r.read()
    assert r.status == 200

    # A new pair in the same files, then SIGHUP.
    cert2, key2 = ca.issue("cyan-2")
    os.replace(cert2, cert)
    os.replace(key2, key)
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    cns = set()
    while time.monotonic() < deadline:
        cns = {peer_cn(srv.http_port, ca.cert)[0], peer_cn(srv.ops_port, ca.cert)[0]}
        if cns == {"cyan-2"}:
            break
        time.sleep(0.1)
    assert cns == {"cyan-2"}, (cns, srv.log_tail())
    # The connection opened before the reload still works.
    kept.request("GET", "/v1/devices", headers={"Authorization": "Bearer " + token})
    r = kept.getresponse()
    r.read()
    assert r.status == 200

    # A broken certificate: refused with a line, the pair in use stays.
    with open(cert, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_log("reload of the TLS certificate failed, the old one stays in use", timeout=10)
    assert peer_cn(srv.http_port, ca.cert)[0] == "cyan-2"
    kept.close()


def test_key_of_another_certificate_stops_the_start(tmp_path):
    ca = CA(str(tmp_path / "ca"))
    cert, _ = ca.issue("cyan-1")
    _, other_key = ca.issue("cyan-2")
    cp = subprocess.run([CYAN_BIN, "--data_dir=%s" % (tmp_path / "data"), "--mqtt_listen=127.0.0.1:0",
                         "--tls_cert=%s" % cert, "--tls_key=%s" % other_key],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 1, cp
    assert "does not match" in cp.stderr and "not starting" in cp.stderr, cp.stderr
    assert not os.path.exists(tmp_path / "data"), "nothing is created before the check"
    cp = subprocess.run([CYAN_BIN, "--data_dir=%s" % (tmp_path / "data"), "--tls_cert=%s" % cert],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 1 and "tls_key" in cp.stderr, cp


def test_device_cert_from_the_development_ca(tmp_path):
    """`cyan device add NAME --cert` makes the development CA on first use
    and a client certificate for the device (CN = its id, clientAuth),
    owner-only files, never overwritten; `cyan device cert` issues one for
    an existing device."""
    data = str(tmp_path / "data")
    os.makedirs(data)  # no command but serve makes a data folder

    def cyan(*args):
        return subprocess.run([CYAN_BIN] + list(args) + ["--data_dir=%s" % data],
                              capture_output=True, text=True, timeout=30)

    cp = cyan("device", "add", "lamp", "--cert")
    assert cp.returncode == 0, cp
    out = dict(line.split(": ", 1) for line in cp.stdout.strip().splitlines())
    assert "made a development CA" in cp.stderr, cp.stderr
    ca = os.path.join(data, "dev-ca.crt")
    assert out["cert"] == os.path.join(data, "certs", out["id"] + ".crt")
    for path in (ca, os.path.join(data, "dev-ca.key"), out["cert"], out["key"]):
        assert os.stat(path).st_mode & 0o777 == 0o600, path
    v = subprocess.run(["openssl", "verify", "-CAfile", ca, "-purpose", "sslclient", out["cert"]],
                       capture_output=True, text=True)
    assert v.returncode == 0, v
    subj = subprocess.run(["openssl", "x509", "-in", out["cert"], "-noout", "-subject"],
                          capture_output=True, text=True).stdout
    assert subj.strip().replace(" ", "") == "subject=CN=%s" % out["id"], subj
    # The key is the certificate's.
    pub = [subprocess.run(argv, capture_output=True, text=True).stdout for argv in (
        ["openssl", "x509", "-in", out["cert"], "-noout", "-pubkey"],
        ["openssl", "pkey", "-in", out["key"], "-pubout"])]
    assert pub[0] == pub[1] and pub[0]
    # Never over existing files; the CA is made once.
    before = open(out["cert"]).read()
    cp = cyan("device", "cert", "lamp")
    assert cp.returncode == 1 and "exists already" in cp.stderr, cp
    assert open(out["cert"]).read() == before
    cp = cyan("device", "add", "fan", "--cert")
    assert cp.returncode == 0 and "made a development CA" not in cp.stderr, cp
    cp = cyan("device", "cert", "nobody")
    assert cp.returncode == 1 and "no device 'nobody'" in cp.stderr, cp
