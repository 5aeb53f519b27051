"""CoAP devices over DTLS 1.2 with pre-shared keys (docs/device-protocol.md,
"CoAP (UDP) and CoAP over DTLS"): PSK identity = device id, key = the
device's 32-character PSK as ASCII bytes.

Two clients: Debian's coap-client-openssl (libcoap 4.3, an independent
DTLS stack of the same OpenSSL) for events, and CoapsProxy, which runs
tests/tools/coaps_proxy (built next to CYAN_BIN): a DTLS PSK client that
bridges a local plain UDP port to cyan's coaps port, so that a
coapdev.Device (query_id=False: over DTLS the session names the device)
speaks CoAP over DTLS and can serve calls, reads and messages.

With several shards a DTLS session lives on the shard whose SO_REUSEPORT
socket the client's address hashes to (its terminator), and its datagrams
travel to the device's owner over the bus, so the same tests cover that
path. Absence is always proven by a later event that must arrive first."""

import os
import re
import signal
import subprocess
import time

import pytest

import coapdev
from apidevice import api
from coapdev import POST, code
from conftest import CYAN_BIN, SHARDS, child_env
from coaptest import (check_call_and_read, check_messages, mqtt_watch, new_device, owner_of, presence,
                      wait_until)
from helpers import Client

pytestmark = pytest.mark.cyan_only

COAP_CLIENT = "/usr/bin/coap-client-openssl"
PROXY_BIN = os.path.join(os.path.dirname(os.path.abspath(CYAN_BIN)), "coaps_proxy")


class CoapsProxy:
    """tests/tools/coaps_proxy for one device: start() returns True once its
    handshake completed ("ready <port>"), False if it failed ("failed ...").
    The device then sends to 127.0.0.1:self.port. stop() sends SIGTERM (it
    answers with close_notify) and checks that it exits 0 (ASan: no leak)."""

    def __init__(self, srv, identity, key, timeout_ms=8000):
        self.argv = [PROXY_BIN, "--listen", "127.0.0.1:0",
                     "--server", "%s:%d" % (srv.host, srv.coaps_port),
                     "--identity", identity, "--key", key, "--timeout-ms", str(timeout_ms)]
        self.timeout = timeout_ms / 1000.0 + 5
        self.proc = None
        self.port = None
        self.line = None

    def start(self):
        if not os.access(PROXY_BIN, os.X_OK):
            pytest.fail("%s not built (cmake --build the build dir of CYAN_BIN)" % PROXY_BIN)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_env())
        # The first line comes within the proxy's own timeout (bounded).
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ok = sel.select(self.timeout)
        sel.close()
        if not ok:
            self.proc.kill()
            raise AssertionError("coaps_proxy said nothing within %.0fs" % self.timeout)
        self.line = self.proc.stdout.readline().decode().strip()
        if self.line.startswith("ready "):
            self.port = int(self.line.split()[1])
            return True
        rc = self.proc.wait(5)
        err = self.proc.stderr.read().decode()
        assert rc == 1, "coaps_proxy: %r, exit %d\n%s" % (self.line, rc, err)
        assert self.line.startswith("failed "), (self.line, err)
        assert "ERROR: AddressSanitizer" not in err and "LeakSanitizer" not in err, err
        self.proc = None
        return False

    def device(self, device_id, **kw):
        return coapdev.Device("127.0.0.1", self.port, device_id, query_id=False, **kw)

    def stop(self):
        """SIGTERM: close_notify, then exit 0 (bounded)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise AssertionError("coaps_proxy did not exit within 10 s of SIGTERM")
        err = proc.stderr.read().decode()
        out = proc.stdout.read().decode()
        assert rc == 0, "coaps_proxy exited %d\n%s%s" % (rc, out, err)


def proxy_device(srv, d, **kw):
    """(CoapsProxy, coapdev.Device) for the device d (a POST /v1/devices body)."""
    px = CoapsProxy(srv, d["id"], d["psk"])
    assert px.start(), px.line
    return px, px.device(d["id"], **kw)


def terminators(srv, identity):
    """The shards that logged a DTLS session of identity (the terminator
    logs "DTLS session from" at debug level), in order."""
    pat = re.compile(r"shard=(\d+) client=%s DTLS session from " % re.escape(identity))
    return [int(m.group(1)) for m in pat.finditer(srv.log())]


def proxy_on(srv, d, want, tries=40):
    """(started CoapsProxy, its terminator) for device d, on a terminator
    that satisfies want(shard): each proxy has a new source port, which
    SO_REUSEPORT maps to some shard's socket; proxies are tried until one
    lands as wanted."""
    for _ in range(tries):
        before = len(terminators(srv, d["id"]))
        px = CoapsProxy(srv, d["id"], d["psk"])
        assert px.start(), px.line
        t = wait_until(lambda: terminators(srv, d["id"])[before:], 5,
                       "the DTLS session's log line")[-1]
        if want(t):
            return px, t
        px.stop()
    raise AssertionError("no DTLS session on a wanted terminator in %d tries" % tries)


def coap_client(srv, identity, key, name, payload, timeout=20):
    """coap-client-openssl: one CON POST /e/<name> over DTLS."""
    return subprocess.run([COAP_CLIENT, "-m", "post", "-u", identity, "-k", key, "-e", payload,
                           "-B", "4", "coaps://127.0.0.1:%d/e/%s" % (srv.coaps_port, name)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def open_server(server_factory):
    """Anonymous MQTT (to watch any topic), isolate_devices as by default
    for the API tests. (allow_anonymous turns plain CoAP on too.)"""
    srv = server_factory(_template=False, allow_anonymous=True, isolate_devices=True)
    srv.wait_api_healthy()
    return srv


@pytest.fixture
def coaps_server(api_server_factory):
    return api_server_factory()


def test_coap_client_event_wrong_key_unknown_identity(open_server):
    srv = open_server
    d = new_device(srv)
    w = mqtt_watch(srv, "devices/%s/events/#" % d["id"])
    try:
        cp = coap_client(srv, d["id"], d["psk"], "temp", "21.5")
        assert cp.returncode == 0, cp.stderr
        m = w.get(timeout=5)
        assert (m.topic, m.payload, m.qos) == ("devices/%s/events/temp" % d["id"], b"21.5", 1)
        # A wrong key (one character changed) and an unknown identity fail.
        bad = d["psk"][:-1] + ("a" if d["psk"][-1] != "a" else "b")
        cp = coap_client(srv, d["id"], bad, "temp", "wrong-key")
        # The device's later event, with the right key, is the first to arrive.
        cp2 = coap_client(srv, "0" * 24, d["psk"], "temp", "unknown-id")
        cp3 = coap_client(srv, d["id"], d["psk"], "temp", "after")
        assert cp3.returncode == 0, cp3.stderr
        m = w.get(timeout=5)
        assert m.payload == b"after", (m.payload, cp.stderr, cp2.stderr)
    finally:
        w.disconnect()


def test_proxy_wrong_key_and_unknown_identity_fail(coaps_server):
    srv = coaps_server
    d = new_device(srv)
    for ident, key in ((d["id"], "x" * 32), ("f" * 24, d["psk"]), (d["id"], d["psk"][:16]),
                       ("x" * 128, d["psk"])):
        px = CoapsProxy(srv, ident, key, timeout_ms=2500)
        assert not px.start(), (ident, key, px.line)
    px, dev = proxy_device(srv, d)
    try:
        assert dev.event("ok", b"1").code == code(2, 4)
    finally:
        dev.close()
        px.stop()


def test_call_read_presence_over_dtls(coaps_server):
    srv = coaps_server
    d = new_device(srv)
    px, dev = proxy_device(srv, d, functions={"led": lambda arg: b"on:" + arg},
                           variables={"temp": b"21.5"})
    try:
        check_call_and_read(srv, d, dev, "coaps")
        # Requests over DTLS carry no ?id=; one that does is still the session's device.
        assert dev.request(POST, "e/x", b"1", extra=[(coapdev.URI_QUERY, "id=" + "0" * 24)]
                           ).code == code(2, 4)
    finally:
        dev.close()
        px.stop()


def test_messages_reach_a_subscribed_dtls_device(open_server):
    srv = open_server
    d = new_device(srv)
    px, dev = proxy_device(srv, d)
    try:
        check_messages(srv, d, dev)
    finally:
        dev.close()
        px.stop()


def test_rotated_psk_is_required_for_a_new_handshake(open_server):
    srv = open_server
    d = new_device(srv)
    w = mqtt_watch(srv, "devices/%s/events/#" % d["id"])
    px, dev = proxy_device(srv, d)
    try:
        assert dev.event("before", b"1").code == code(2, 4)
        r = api(srv, "POST", "/v1/devices/%s/psk" % d["id"])
        assert r.status == 200, r.text
        new = r.body["psk"]
        assert len(new) == 32 and new != d["psk"]
        # The session made with the old key is not ended by the rotation
        # (docs/api.md: the new PSK is "the one the next DTLS handshake must
        # use"): its requests are still served.
        assert dev.event("during", b"1").code == code(2, 4)
        dev.close()
        px.stop()
        # The old key no longer completes a handshake, on any shard (each
        # new proxy has a new source port, so likely another terminator).
        for _ in range(3):
            old = CoapsProxy(srv, d["id"], d["psk"], timeout_ms=2500)
            ok = old.start()
            old.stop()
            assert not ok, "the old PSK still works after rotation: %r" % old.line
        d2 = dict(d, psk=new)
        px, dev = proxy_device(srv, d2)
        assert dev.event("after", b"2").code == code(2, 4)
        topics = [w.get(timeout=5).topic for _ in range(3)]
        assert topics == ["devices/%s/events/%s" % (d["id"], n)
                          for n in ("before", "during", "after")]
    finally:
        dev.close()
        px.stop()
        w.disconnect()


def test_plain_coap_off_does_not_affect_coaps(coaps_server):
    # coaps_server: coap_insecure and allow_anonymous false, so plain CoAP is off
    # (allow_anonymous=true would turn it on).
    srv = coaps_server
    d = new_device(srv)
    plain = coapdev.Device(srv.host, srv.coap_port, d["id"])
    px, dev = proxy_device(srv, d)
    try:
        r = plain.event("x", b"1")
        assert r.code == code(4, 1), r
        assert dev.event("x", b"1").code == code(2, 4)
        assert presence(srv, d["id"])["protocol"] == "coaps"
    finally:
        plain.close()
        dev.close()
        px.stop()


@pytest.mark.parametrize("where", ["owner", "other"])
def test_close_notify_takes_the_device_offline(coaps_server, where):
    """The terminator ends the session; the owner (itself, or another shard
    told over the bus) takes the device offline at once."""
    srv = coaps_server
    n = int(srv.settings.get("shards", SHARDS))
    if where == "other" and n == 1:
        pytest.skip("one shard: the terminator is the owner")
    d = new_device(srv)
    owner = owner_of(d["id"], n)
    px, t = proxy_on(srv, d, (lambda t: t == owner) if where == "owner" else
                     (lambda t: t != owner))
    dev = px.device(d["id"])
    try:
        assert dev.event("hello", b"1").code == code(2, 4)
        p = presence(srv, d["id"])
        assert p["online"] is True and p["protocol"] == "coaps", p
        t0 = time.monotonic()
        px.stop()  # SIGTERM: close_notify
        wait_until(lambda: presence(srv, d["id"])["online"] is False, 5,
                   "the device offline after close_notify")
        assert time.monotonic() - t0 < 5
        assert srv.wait_log("shard=%d client=%s DTLS session ended: close_notify"
                            % (t, d["id"])), srv.log_tail(3000)
    finally:
        dev.close()
        px.stop()


def sized(dev, path, total):
    """A payload that makes dev's CON POST to path exactly total bytes long."""
    head = len(coapdev.encode(coapdev.CON, POST, 0, b"\0" * 4, dev._opts(path), b"")) + 1
    return b"x" * (total - head)


@pytest.mark.parametrize("transport", ["coap", "coaps"])
def test_coap_max_message_is_the_limit(api_server_factory, transport):
    """docs: a message over coap_max_message (default 1280 bytes) is answered
    4.13 with Size1, over either transport; one of exactly that size is taken."""
    srv = api_server_factory(coap_insecure=True)
    d = new_device(srv)
    px = None
    if transport == "coaps":
        px, dev = proxy_device(srv, d)
    else:
        dev = coapdev.Device(srv.host, srv.coap_port, d["id"])
    try:
        assert dev.request(POST, "e/big", sized(dev, "e/big", 1280)).code == code(2, 4)
        got = {}
        for total in (1281, 1400, 1500, 3000):
            try:
                r = dev.request(POST, "e/big", sized(dev, "e/big", total), timeout=5)
                got[total] = (coapdev.code_text(r.code), r.opt(coapdev.SIZE1))
            except TimeoutError:
                got[total] = "no answer"
        assert dev.ping().type == coapdev.RST
        want = {t: ("4.13", [(1280).to_bytes(2, "big")]) for t in got}
        assert got == want, (transport, got)
    finally:
        dev.close()
        if px is not None:
            px.stop()


def test_deleted_device_is_refused_and_its_dtls_session_closed(open_server):
    """docs/api.md: DELETE /v1/devices/{id}: "its connection is closed and
    its session ended" (coap.h: cy_coap_kick closes its DTLS sessions)."""
    srv = open_server
    d, other = new_device(srv), new_device(srv)
    w = mqtt_watch(srv, "devices/+/events/#")
    px, dev = proxy_device(srv, d)
    px2, dev2 = proxy_device(srv, other)
    try:
        assert dev.event("before", b"1").code == code(2, 4)
        assert w.get(timeout=5).payload == b"1"
        r = api(srv, "DELETE", "/v1/devices/%s" % d["id"])
        assert r.status == 200, r.text
        try:
            r = dev.event("deleted", b"2", timeout=3, retransmit=False)
            assert r.code == code(4, 1), r
        except TimeoutError:
            pass  # its session was closed first: nothing answers
        # Nothing from the deleted device: the other's later event comes first.
        assert dev2.event("other", b"3").code == code(2, 4)
        m = w.get(timeout=5)
        assert (m.topic, m.payload) == ("devices/%s/events/other" % other["id"], b"3")
        # Its DTLS session is closed by cyan (the proxy hears an alert or
        # close_notify and exits by itself).
        try:
            rc = px.proc.wait(5)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc is not None, "the deleted device's DTLS session is still up 5 s later"
        out = px.proc.stdout.read().decode()
        assert rc == 0 and out.startswith("closed "), (rc, out)
    finally:
        dev.close()
        dev2.close()
        px.stop()
        px2.stop()
        w.disconnect()


def test_queued_message_waits_for_the_next_session(open_server):
    """A QoS 1 message for a subscribed DTLS device that went offline (its
    session closed) waits in its session and is sent once the device is
    heard again over a new session (a new source port, so likely another
    terminator shard)."""
    srv = open_server
    d = new_device(srv)
    px, dev = proxy_device(srv, d)
    px2 = dev2 = None
    c = Client(srv, client_id="pub-%d" % time.monotonic_ns(), version=5)
    try:
        assert dev.subscribe("devices/%s/cmd/#" % d["id"]).code == code(2, 4)
        dev.close()
        px.stop()
        wait_until(lambda: presence(srv, d["id"])["online"] is False, 5, "offline")
        c.connect()
        c.publish("devices/%s/cmd/q" % d["id"], b"kept", qos=1)
        px2, dev2 = proxy_device(srv, d)
        assert dev2.ping().type == coapdev.RST
        assert dev2.messages.get(timeout=10) == ("devices/%s/cmd/q" % d["id"], b"kept")
    finally:
        c.disconnect()
        dev.close()
        px.stop()
        if dev2 is not None:
            dev2.close()
            px2.stop()


def test_old_session_idling_out_does_not_take_the_new_one_offline(api_server_factory):
    """A device whose address changed makes a new handshake; its old
    session idles out later (coap_idle_timeout) on its terminator, and that
    must not take the device, now online through the new one, offline."""
    srv = api_server_factory(coap_idle_timeout=5)
    d = new_device(srv)
    px1, dev1 = proxy_device(srv, d)
    px2 = dev2 = None
    try:
        assert dev1.event("first", b"1").code == code(2, 4)
        dev1.close()  # the old address goes quiet; its proxy keeps the session
        px2, dev2 = proxy_device(srv, d, functions={"f": lambda arg: b"new"})
        assert dev2.describe().code == code(2, 4)
        # Keep the new session heard until the old one has idled out.
        deadline = time.monotonic() + 15
        while not srv.wait_log("client=%s DTLS session ended: idle" % d["id"], timeout=1):
            assert time.monotonic() < deadline, "the old session never idled out"
            assert dev2.ping().type == coapdev.RST
        assert dev2.ping().type == coapdev.RST
        p = presence(srv, d["id"])
        assert p["online"] is True and p["protocol"] == "coaps", p
        r = api(srv, "POST", "/v1/devices/%s/functions/f" % d["id"], json={"arg": ""})
        assert r.status == 200 and r.body["return_value"] == "new", r.text
    finally:
        dev1.close()
        px1.stop()
        if dev2 is not None:
            dev2.close()
            px2.stop()
