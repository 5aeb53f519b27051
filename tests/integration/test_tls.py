"""MQTT over TLS (mqtts_listen): clients nobody here wrote (mosquitto_pub and
mosquitto_sub with --cafile, paho with MQTT 5, openssl s_client, Python's ssl
module under the raw client), the shard that accepted a TLS connection as the
terminator of another shard's device, certificate reloads and device
certificates.

Certificates are made by each run with the `openssl` command: a CA, a
server certificate for localhost and 127.0.0.1, a second server certificate
(for the reload), device certificates whose CN is a device id, and a second
CA nobody trusts.

A connection is "proxied" when the shard that accepted it is not the owner
of its client id: the accepting shard logs "TLS terminated here for shard N,
the owner of '<id>'" (debug). Any shard may accept (one shared socket), so the
terminator tests connect with fresh client ids until one is proxied (3 in 4
are, with 4 shards).
"""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import types

import pytest

import rawmqtt
from conftest import CYAN_BIN, HOST, SHARDS, child_env, free_port
from helpers import CYAN, Client, MosquittoSub, mosquitto_pub, uniq, wait_until
from test_shards import shard_of

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's TLS listener"),
]

TERMINATOR_SHARDS = 4
BIG = 200 * 1024


# ------------------------------------------------------------------ certificates

def _openssl(*args, cwd):
    cp = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, text=True,
                        timeout=30)
    assert cp.returncode == 0, "openssl %s: %s" % (" ".join(args), cp.stderr)


class Certs:
    """PEM files in a folder: ca, server (localhost), server2 (the reload's),
    other_ca; device(cn) signs a device certificate on demand."""

    def __init__(self, folder):
        self.dir = folder
        self._n = 0
        for ca in ("ca", "other_ca"):
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2",
                     "-subj", "/CN=cyan test %s" % ca, cwd=folder)
        with open(os.path.join(folder, "server.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        self.server = self.sign("server", "/CN=localhost", "server.ext")
        self.server2 = self.sign("server2", "/CN=localhost/O=second", "server.ext")
        self.ca = self.path("ca.pem")
        self.other_ca = self.path("other_ca.pem")
        self.junk = self.path("junk.pem")
        with open(self.junk, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")

    def path(self, name):
        return os.path.join(self.dir, name)

    def sign(self, name, subj, ext=None, ca="ca"):
        """(cert path, key path) of a new certificate signed by ca."""
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", name + ".key", "-out", name + ".csr", "-subj", subj, cwd=self.dir)
        self._n += 1
        args = ["x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                "-set_serial", str(1000 + self._n), "-out", name + ".pem", "-days", "2"]
        if ext:
            args += ["-extfile", ext]
        _openssl(*args, cwd=self.dir)
        return self.path(name + ".pem"), self.path(name + ".key")

    def device(self, cn, ca="ca"):
        return self.sign("dev%d" % (self._n + 1), "/CN=%s" % cn, ca=ca)


@pytest.fixture(scope="module")
def certs():
    folder = tempfile.mkdtemp(prefix="cytls", dir="/tmp")
    yield Certs(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tls_factory(server_factory, certs):
    """tls_factory(**settings): a cyan whose tls_cert/tls_key are copies of
    the test server certificate (so a test may replace them) and anonymous
    MQTT allowed unless the settings say otherwise."""
    def start(**settings):
        folder = tempfile.mkdtemp(prefix="cyt", dir="/tmp")
        cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        shutil.copy(certs.server[0], cert)
        shutil.copy(certs.server[1], key)
        settings.setdefault("tls_cert", cert)
        settings.setdefault("tls_key", key)
        settings.setdefault("allow_anonymous", True)
        # These tests use the API and /metrics over plain HTTP; HTTPS with
        # the same certificate is test_https.py's.
        settings.setdefault("http_tls", False)
        settings.setdefault("ops_tls", False)
        srv = server_factory(**settings)
        srv.tls_files = (cert, key)
        return srv

    return start


def tls_addr(srv):
    """What the helpers' clients need of a server, pointed at mqtts_listen."""
    return types.SimpleNamespace(host=srv.host, port=srv.mqtts_port)


def ssl_context(certs, ca=None, cert=None, version=None):
    ctx = ssl.create_default_context(cafile=ca or certs.ca)
    if cert:
        ctx.load_cert_chain(*cert)
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def tls_raw(srv, certs, version=5, cert=None, ca=None):
    """A rawmqtt client over TLS to mqtts_listen."""
    c = rawmqtt.RawClient(srv.host, srv.mqtts_port, version=version)
    c.sock = ssl_context(certs, ca, cert).wrap_socket(c.sock, server_hostname="localhost")
    return c


def tls_paho(srv, certs, version=5, cert=None, **kw):
    """A helpers.Client over TLS. Its publishes are written by its loop
    thread: paho writes from the caller's thread otherwise, while the loop
    thread reads, and one SSL object used by two threads at once corrupts
    records (OpenSSL's objects are not thread-safe)."""
    c = Client(tls_addr(srv), version=version, **kw)
    c.c.tls_set(ca_certs=certs.ca, certfile=cert[0] if cert else None,
                keyfile=cert[1] if cert else None)
    c.c.on_socket_register_write = lambda client, userdata, sock: None
    return c


def proxied_log(srv, client_id):
    return "the owner of '%s'" % client_id in srv.log()


def connect_proxied(srv, make, tries=16):
    """make(client_id) -> connected client; returns (client, id) of one whose
    TLS connection was accepted by a shard other than its owner."""
    for _ in range(tries):
        cid = uniq("tp")
        c = make(cid)
        if wait_until(lambda: proxied_log(srv, cid), 2.0):
            return c, cid
        c.close()
    pytest.fail("no connection of %d was terminated by another shard\n%s"
                % (tries, srv.log_tail()))


def metric_sum(srv, name):
    return sum(v for (n, _), v in srv.metrics().items() if n == name)


# ------------------------------------------------------------------ basics

def test_mosquitto_pub_sub_over_tls(tls_factory, certs):
    srv = tls_factory()
    addr = tls_addr(srv)
    topic = uniq("tls/")
    sub = MosquittoSub(addr, None, topic, qos=1, count=2, extra=["--cafile", certs.ca])
    try:
        mosquitto_pub(addr, None, topic, "over tls", qos=1, extra=["--cafile", certs.ca])
        mosquitto_pub(srv, None, topic, "in the clear", qos=1)  # the plain listener still serves
        got = sub.messages()
    finally:
        sub.close()
    assert sorted(m[3] for m in got) == ["in the clear", "over tls"], got


def test_paho_mqtt5_over_tls_and_plain_qos1_both_ways(tls_factory, certs):
    srv = tls_factory()
    topic_a, topic_b = uniq("a/"), uniq("b/")
    with tls_paho(srv, certs) as t, Client(srv) as p:
        t.connect()
        p.connect()
        assert t.subscribe(topic_a, 1) == [1]
        assert p.subscribe(topic_b, 1) == [1]
        p.publish(topic_a, b"plain to tls", qos=1)
        t.publish(topic_b, b"tls to plain", qos=1)
        m = t.get()
        assert (m.topic, m.payload, m.qos) == (topic_a, b"plain to tls", 1)
        m = p.get()
        assert (m.topic, m.payload, m.qos) == (topic_b, b"tls to plain", 1)
    assert "TLS error" not in srv.log()


def test_wrong_ca_and_old_versions_are_refused(tls_factory, certs):
    srv = tls_factory()
    # A client that trusts another CA refuses our certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_raw(srv, certs, ca=certs.other_ca)
    # TLS 1.1 (and anything below 1.2) is refused by the server.
    cp = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % (srv.host, srv.mqtts_port),
                         "-tls1_1"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=20)
    assert cp.returncode != 0, cp.stdout
    assert "Cipher is (NONE)" in cp.stdout or "alert" in cp.stderr, (cp.stdout, cp.stderr)
    # TLS 1.2 with a modern suite is taken.
    c = rawmqtt.RawClient(srv.host, srv.mqtts_port)
    c.sock = ssl_context(certs, version=ssl.TLSVersion.TLSv1_2).wrap_socket(
        c.sock, server_hostname="localhost")
    assert c.sock.version() == "TLSv1.2"
    assert "GCM" in c.sock.cipher()[0] or "CHACHA20" in c.sock.cipher()[0], c.sock.cipher()
    c.send(rawmqtt.connect(uniq("t12")))
    assert c.expect(rawmqtt.CONNACK).rc == 0
    c.close()
    # Plain MQTT on the TLS port: the handshake fails, the socket is closed.
    c = rawmqtt.RawClient(srv.host, srv.mqtts_port)
    c.send(rawmqtt.connect(uniq("plain")))
    c.wait_closed(5.0)
    assert wait_until(lambda: metric_sum(srv, "cyan_tls_handshake_failures_total") >= 2, 5.0), \
        srv.metrics()
    assert metric_sum(srv, "cyan_tls_handshakes_total") >= 1


def test_a_handshake_that_never_finishes_is_cut_at_connect_timeout(tls_factory):
    srv = tls_factory(connect_timeout=1)
    silent = socket.create_connection((srv.host, srv.mqtts_port), timeout=10)
    half = socket.create_connection((srv.host, srv.mqtts_port), timeout=10)
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
    t0 = time.monotonic()
    for s in (silent, half):
        try:
            assert s.recv(4096) == b""
        except ConnectionResetError:
            pass
    took = time.monotonic() - t0
    assert 0.5 <= took <= 4.5, took
    silent.close()
    half.close()


def test_packets_split_across_records_and_records_holding_many(tls_factory, certs):
    srv = tls_factory()
    c = tls_raw(srv, certs)
    topic = uniq("split/")
    for b in rawmqtt.connect(uniq("s"), keepalive=60):  # one TLS record per byte
        c.send(bytes([b]))
    assert c.expect(rawmqtt.CONNACK).rc == 0
    # A SUBSCRIBE, a PUBLISH to it and a PINGREQ in one record.
    c.send(rawmqtt.subscribe(1, [(topic, 1)]) + rawmqtt.publish(topic, b"p" * 70000, qos=1, pid=2)
           + rawmqtt.pingreq())
    assert c.expect(rawmqtt.SUBACK).codes == [1]
    got = [c.read() for _ in range(3)]
    kinds = sorted(type(p).__name__ for p in got)
    assert kinds == ["Ack", "Packet", "Publish"], got  # PUBACK, PINGRESP, the message
    m = [p for p in got if isinstance(p, rawmqtt.Publish)][0]
    assert m.payload == b"p" * 70000
    c.send(rawmqtt.disconnect())
    c.close()


def test_handshakes_count_in_preauth_memory(tls_factory):
    """Each handshake in progress holds CY_TLS_HANDSHAKE_BYTES (80 KB) of the
    shard's preauth_memory: with 256 KB, three; the next is closed at once."""
    srv = tls_factory(shards=1, preauth_memory=262144, connect_timeout=30)
    socks = [socket.create_connection((srv.host, srv.mqtts_port), timeout=10) for _ in range(6)]
    closed = []
    for s in socks:
        s.settimeout(1.5)
        try:
            closed.append(s.recv(1) == b"")
        except socket.timeout:
            closed.append(False)
        except ConnectionResetError:
            closed.append(True)
    assert closed == [False] * 3 + [True] * 3, closed
    for s in socks:
        s.close()
    assert srv.wait_log("preauth_memory (262144 bytes) spent"), srv.log_tail()


def test_the_supervisor_refuses_a_broken_certificate(certs, tmp_path):
    argv = [CYAN_BIN, "--data_dir=%s" % (tmp_path / "data"), "--shards=1", "--monitor=false",
            "--mqtt_listen=%s:%d" % (HOST, free_port()), "--http_listen=",
            "--coap_listen=", "--coaps_listen=", "--mqtts_listen=%s:%d" % (HOST, free_port())]
    cases = [(["--tls_cert=%s" % certs.junk, "--tls_key=%s" % certs.server[1]], certs.junk),
             (["--tls_cert=%s" % certs.server[0], "--tls_key=%s" % certs.server2[1]],
              "does not match"),
             (["--tls_cert=%s" % (tmp_path / "missing.pem"), "--tls_key=%s" % certs.server[1]],
              "missing.pem"),
             (["--tls_cert=%s" % certs.server[0]], "needs")]
    for extra, says in cases:
        cp = subprocess.run(argv + extra, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=30, env=child_env())
        assert cp.returncode != 0, (extra, cp.stderr)
        assert says in cp.stderr and "not starting" in cp.stderr, (extra, cp.stderr)


def test_an_explicit_open_plain_listener_is_warned_about(server_factory):
    srv = server_factory(
        _prepare=lambda s: s.settings.update(mqtt_listen="0.0.0.0:%d" % s.port))
    assert srv.wait_log("plaintext listeners open to the network: mqtt_listen 0.0.0.0:", 3.0), \
        srv.log_tail()
    assert "no tls_cert is configured" in srv.log()


# ------------------------------------------------------------------ the terminator

@pytest.fixture
def shards_tls(tls_factory):
    """TLS on TERMINATOR_SHARDS shards, all ready."""
    srv = tls_factory(shards=TERMINATOR_SHARDS, max_output=65536)
    srv.wait_api_healthy()
    return srv


def test_a_device_of_another_shard_goes_through_its_terminator(shards_tls, certs):
    srv = shards_tls
    topic_in, topic_out = uniq("in/"), uniq("out/")
    with Client(srv) as plain:
        plain.connect()
        assert plain.subscribe(topic_out, 1) == [1]
        t, cid = connect_proxied(srv, lambda cid: _connected(tls_paho(srv, certs, client_id=cid)))
        try:
            owner = shard_of(cid, TERMINATOR_SHARDS)
            # The owner serves it and logs the device's own address.
            port = t.c.socket().getsockname()[1]
            assert srv.wait_log("shard=%d client=%s connected from 127.0.0.1:%d" % (owner, cid, port)), \
                srv.log_tail()
            assert t.subscribe(topic_in, 1) == [1]
            big_in = bytes(i % 251 for i in range(BIG))
            big_out = bytes((i * 7) % 253 for i in range(BIG))
            plain.publish(topic_in, big_in, qos=1)
            t.publish(topic_out, big_out, qos=1, timeout=10)
            m = t.get(10)
            assert (m.topic, len(m.payload), m.payload == big_in) == (topic_in, BIG, True)
            m = plain.get(10)
            assert (m.topic, len(m.payload), m.payload == big_out) == (topic_out, BIG, True)
            for i in range(20):  # small ones after the big ones, in order
                plain.publish(topic_in, b"%d" % i, qos=1)
            assert [m.payload for m in t.get_n(20)] == [b"%d" % i for i in range(20)]
        finally:
            t.close()


def _connected(c):
    c.connect()
    return c


def test_a_slow_tls_reader_of_another_shard_gets_everything(shards_tls, certs):
    """The owner writes faster than the device reads: the terminator stops
    reading the socketpair (its ciphertext over max_output), the owner's own
    back-pressure follows, and once the device reads, all of it arrives."""
    srv = shards_tls
    topic = uniq("slow/")

    def make(cid):
        c = tls_raw(srv, certs)
        c.send(rawmqtt.connect(cid, keepalive=60))
        assert c.expect(rawmqtt.CONNACK).rc == 0
        return c

    sub, cid = connect_proxied(srv, make)
    sub.send(rawmqtt.subscribe(1, [(topic, 1)]))
    assert sub.expect(rawmqtt.SUBACK).codes == [1]
    n, size = 30, 100 * 1024
    with Client(srv) as pub:
        pub.connect()
        for i in range(n):
            pub.publish(topic, bytes([i]) * size, qos=1, wait=False)
        time.sleep(1.5)  # the subscriber reads nothing meanwhile
        got = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            m = sub.expect(rawmqtt.PUBLISH, timeout=10)
            got.append(m.payload)
            sub.send(rawmqtt.puback(m.pid))
    assert [len(p) for p in got] == [size] * n
    assert [p[0] for p in got] == list(range(n))
    assert "not read: the device reads slowly" in srv.log(), srv.log_tail()
    sub.send(rawmqtt.disconnect())
    sub.close()


def test_the_terminator_stops_reading_a_device_whose_owner_is_slow(shards_tls, certs):
    """The device sends faster than its owner reads (the owner is stopped
    for a moment): the terminator stops reading the device, then everything
    is acknowledged in order."""
    srv = shards_tls

    def make(cid):
        c = tls_raw(srv, certs)
        c.send(rawmqtt.connect(cid, keepalive=60))
        assert c.expect(rawmqtt.CONNACK).rc == 0
        return c

    dev, cid = connect_proxied(srv, make)
    owner_pid = srv.shard_pids()[shard_of(cid, TERMINATOR_SHARDS)]
    n, size = 25, 200 * 1024
    data = b"".join(rawmqtt.publish(uniq("up/"), b"x" * size, qos=1, pid=i + 1) for i in range(n))
    os.kill(owner_pid, signal.SIGSTOP)
    sender = threading.Thread(target=dev.send, args=(data,), daemon=True)
    try:
        sender.start()
        assert wait_until(lambda: "reads its plaintext slowly" in srv.log(), 1.0), srv.log_tail()
    finally:
        os.kill(owner_pid, signal.SIGCONT)
    sender.join(20)
    acks = [dev.expect(rawmqtt.PUBACK, timeout=10).pid for _ in range(n)]
    assert acks == list(range(1, n + 1))
    dev.send(rawmqtt.disconnect())
    dev.close()


def test_closing_either_side_closes_the_other(shards_tls, certs):
    srv = shards_tls
    will_topic = uniq("will/")
    with Client(srv) as watcher:
        watcher.connect()
        assert watcher.subscribe(will_topic, 1) == [1]
        # The device goes away without DISCONNECT: the owner sees it at once
        # (its will is published), not at keep-alive.
        t, cid = connect_proxied(srv, lambda cid: _connected(tls_paho(
            srv, certs, client_id=cid, keepalive=60,
            will={"topic": will_topic, "payload": b"gone", "qos": 1})))
        t.kill()
        m = watcher.get(5.0)
        assert (m.topic, m.payload) == (will_topic, b"gone")
        assert srv.wait_log("client=%s connection lost without DISCONNECT" % cid), srv.log_tail()

    # The owner closes (a takeover by a plain connection with the same id):
    # the device reads the DISCONNECT and then the end of the connection.
    def make(cid):
        c = tls_raw(srv, certs)
        c.send(rawmqtt.connect(cid, keepalive=60))
        assert c.expect(rawmqtt.CONNACK).rc == 0
        return c

    dev, cid = connect_proxied(srv, make)
    with Client(srv, client_id=cid) as thief:
        thief.connect()
        got = dev.wait_closed(5.0)
        assert any(isinstance(p, rawmqtt.Disconnect) and p.rc == 0x8E for p in got), got


# ------------------------------------------------------------------ reload

def _peer_cert(srv, certs):
    c = tls_raw(srv, certs)
    der = c.sock.getpeercert(binary_form=True)
    c.close()
    return ssl.DER_cert_to_PEM_cert(der)


def _pem_of(path):
    with open(path) as f:
        text = f.read()
    return ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(text))


def test_sighup_reloads_the_certificate_without_dropping_connections(tls_factory, certs):
    srv = tls_factory()
    nshards = int(srv.settings.get("shards", SHARDS))
    cert, key = srv.tls_files
    assert _peer_cert(srv, certs) == _pem_of(certs.server[0])
    topic = uniq("keep/")
    with tls_paho(srv, certs) as old:
        old.connect()
        assert old.subscribe(topic, 1) == [1]
        shutil.copy(certs.server2[0], cert)
        shutil.copy(certs.server2[1], key)
        mark = len(srv.log())
        srv.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: srv.log()[mark:].count("loaded for new connections") == nshards,
                          5.0), srv.log_tail()
        assert _peer_cert(srv, certs) == _pem_of(certs.server2[0])
        # The connection made before the reload still works.
        with Client(srv) as p:
            p.connect()
            p.publish(topic, b"still here", qos=1)
        assert old.get(5.0).payload == b"still here"
        # A broken file: logged, the certificate in use stays.
        shutil.copy(certs.junk, cert)
        mark = len(srv.log())
        srv.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: srv.log()[mark:].count("reload refused, keeping") == nshards,
                          5.0), srv.log_tail()
        assert "supervisor: SIGHUP: TLS: certificate %s" % cert in srv.log()[mark:]
        assert _peer_cert(srv, certs) == _pem_of(certs.server2[0])
        old.publish(topic, b"after the broken reload", qos=1)
        assert old.get(5.0).payload == b"after the broken reload"


# ------------------------------------------------------------------ device certificates

def _cert_client(srv, certs, device_id, cert, version=5, username=None):
    c = tls_paho(srv, certs, version=version, cert=cert, client_id=device_id,
                 username=username)
    return c


def test_a_device_logs_in_with_its_certificate(tls_factory, certs):
    srv = tls_factory(tls_ca=certs.ca, isolate_devices=True, allow_anonymous=False)
    dev, other = srv.add_device(), srv.add_device()
    cert = certs.device(dev.id)
    # Client id = device id, no username, no secret.
    with _cert_client(srv, certs, dev.id, cert) as c:
        c.connect()
        topic = "devices/%s/events/hello" % dev.id
        assert c.subscribe(topic, 1) == [1]
        c.publish(topic, b"by certificate", qos=1)
        assert c.get().payload == b"by certificate"
        # The device rules hold as for a password login.
        assert c.subscribe("devices/%s/events/x" % other.id, 1) == [0x87]
    # Username = the id, no secret; MQTT 3.1.1 too.
    with _cert_client(srv, certs, dev.id, cert, version=4, username=dev.id) as c:
        c.connect()
    # The certificate names dev, not other: other's id without its secret is refused.
    with _cert_client(srv, certs, other.id, cert) as c:
        c.connect(expect_rc=0x87)
    # A wrong secret is still wrong, certificate or not.
    with _cert_client(srv, certs, dev.id, cert, username=dev.id) as c:
        c.c.username_pw_set(dev.id, "0" * 32)
        c.connect(expect_rc=0x86)
    # Without a certificate the secret works as always.
    with tls_paho(srv, certs, device=dev, client_id=dev.id) as c:
        c.connect()
    # A certificate of a CA we do not trust fails the handshake.
    stranger = certs.device(dev.id, ca="other_ca")
    with pytest.raises((ssl.SSLError, OSError)):
        c = tls_raw(srv, certs, cert=stranger)
        c.send(rawmqtt.connect(dev.id))
        c.expect(rawmqtt.CONNACK)
    assert wait_until(lambda: metric_sum(srv, "cyan_tls_handshake_failures_total") >= 1, 5.0)


def test_a_certificate_login_through_the_terminator(tls_factory, certs):
    srv = tls_factory(tls_ca=certs.ca, isolate_devices=True, allow_anonymous=False,
                      shards=TERMINATOR_SHARDS)
    srv.wait_api_healthy()
    dev = srv.add_device()
    cert = certs.device(dev.id)
    needle = "the owner of '%s' (its certificate names it)" % dev.id
    for _ in range(16):
        seen = srv.log().count(needle)
        c = _cert_client(srv, certs, dev.id, cert)
        c.connect()
        # The terminator logs before it hands the socket over; the line may
        # reach the file a moment after the CONNACK reached us.
        if wait_until(lambda: srv.log().count(needle) > seen, 2.0):
            break
        c.close()
    else:
        pytest.fail("no certificate login went through a terminator\n%s" % srv.log_tail())
    try:
        topic = "devices/%s/events/t" % dev.id
        assert c.subscribe(topic, 1) == [1]
        c.publish(topic, b"proxied", qos=1)
        assert c.get().payload == b"proxied"
    finally:
        c.close()


def test_a_tls_device_of_a_stopped_shard_is_refused_at_once(tls_factory, certs):
    """The owner is not ready (stopped past its heartbeat's limit): the
    shard that took the TLS connection answers Server unavailable itself,
    encrypted, at once."""
    srv = tls_factory(shards=TERMINATOR_SHARDS, watchdog_timeout=5000)
    srv.wait_api_healthy()
    victim = 1
    cid = next(c for c in (uniq("v") for _ in range(1000)) if shard_of(c, TERMINATOR_SHARDS) == victim)
    pid = srv.shard_pids()[victim]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(1.3)  # its heartbeat is over 1 s old: not ready
        t0 = time.monotonic()
        c = tls_raw(srv, certs)
        c.send(rawmqtt.connect(cid))
        ack = c.expect(rawmqtt.CONNACK, timeout=3.0)
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert ack.rc == 0x88, ack
    assert took < 1.0, took
    c.wait_closed(3.0)


def test_a_certificate_from_the_development_ca_logs_in(tls_factory, certs):
    """`cyan device add NAME --cert` with tls_ca = data_dir/dev-ca.crt: the
    device logs in with the certificate it was given, and no secret."""
    srv = tls_factory(isolate_devices=True, allow_anonymous=False)
    cp = srv.cli("device", "add", "lamp", "--cert")
    out = dict(line.split(": ", 1) for line in cp.stdout.strip().splitlines())
    srv.restart(tls_ca=os.path.join(srv.data_dir, "dev-ca.crt"))
    with _cert_client(srv, certs, out["id"], (out["cert"], out["key"])) as c:
        c.connect()
        topic = "devices/%s/events/hello" % out["id"]
        assert c.subscribe(topic, 1) == [1]
        c.publish(topic, b"dev CA", qos=1)
        assert c.get().payload == b"dev CA"
