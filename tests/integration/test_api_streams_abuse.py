"""Event streams used against the node (issue 9, items 5 and 7; docs/api.md,
"Event streams: limits").

- Many clients that open a stream and never read, plus large events: the
  shard's loop must keep turning (no watchdog kill), its MQTT devices stay
  connected, and a later event still reaches a client that reads.
- One token, or one address, may hold only so many streams (429
  too_many_streams past it), while another token still gets one.
- A stream ends within seconds of its token being revoked.

The stall test prints the longest MQTT ping round trip it saw while the
events fanned out (a measure of the loop's longest pass), never asserts it.
"""

import os
import re
import socket
import threading
import time

import pytest

import rawmqtt
from apidevice import SseStream, api, online_device, token_create
from test_shards import status

pytestmark = pytest.mark.cyan_only

SLOW_STREAMS = int(os.environ.get("CYAN_SLOW_STREAMS", "300"))
EVENT_BYTES = 65000
EVENTS = 15


def open_raw_stream(srv, token, path="/v1/events", rcvbuf=2048, timeout=10.0, source=None):
    """A stream whose client reads the response head and then nothing more:
    (socket, status, bytes read). The tiny receive buffer makes it a slow
    reader; source: the local address to connect from."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source:
        s.bind((source, 0))
    s.settimeout(timeout)
    s.connect((srv.host, srv.http_port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
               % (path, token)).encode())
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
        d = s.recv(1024)
        if not d:
            break
        buf += d
    head = buf.split(b"\r\n", 1)[0].split()
    st = int(head[1]) if len(head) > 1 else 0
    if st != 200:  # an error: read its whole body too
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", buf)
        want = buf.index(b"\r\n\r\n") + 4 + int(m.group(1)) if m else 0
        while len(buf) < want and time.monotonic() < deadline:
            d = s.recv(4096)
            if not d:
                break
            buf += d
    return s, st, buf


class Pinger(threading.Thread):
    """An MQTT client that pings every 10 ms and keeps the longest round
    trip: while it runs, the longest pass of the shard's loop is at most
    that."""

    def __init__(self, srv, device):
        super().__init__(daemon=True)
        self.c = rawmqtt.RawClient(srv.host, srv.port, version=4, timeout=10.0)
        ack = self.c.connect(device.id, username=device.id, password=device.secret)
        assert ack.rc == 0, ack
        self.worst = 0.0
        self.error = None
        self.stop = threading.Event()

    def run(self):
        try:
            while not self.stop.is_set():
                t0 = time.monotonic()
                self.c.send(rawmqtt.pingreq())
                self.c.read_packet(timeout=10.0)
                self.worst = max(self.worst, time.monotonic() - t0)
                time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def test_slow_streams_and_large_events_do_not_stall_the_shard(api_server_factory):
    # One shard, so the streams, the device and the events share one loop;
    # a short watchdog makes a long pass visible as a kill.
    srv = api_server_factory(shards=1, watchdog_timeout=int(os.environ.get("CYAN_STALL_WATCHDOG", "400")), http_max_body=262144,
                             http_max_connections=SLOW_STREAMS + 64,
                             sse_max_per_token=SLOW_STREAMS + 10,
                             sse_max_per_address=SLOW_STREAMS + 10,
                             http_max_per_address=SLOW_STREAMS + 64)
    before = status(srv)[0]
    assert before.state == "RUNNING" and before.pid, before
    token = srv.admin_token()
    dev = online_device(srv, 5, events=True)
    slow = []
    pinger = None
    try:
        for _ in range(SLOW_STREAMS):
            s, st, head = open_raw_stream(srv, token)
            assert st == 200, head
            slow.append(s)
        info = srv.add_device()
        pinger = Pinger(srv, info)
        pinger.start()
        with SseStream(srv, "/v1/events") as fast:
            assert fast.status == 200, fast.body
            big = "x" * EVENT_BYTES
            t0 = time.monotonic()
            for i in range(EVENTS):
                r = api(srv, "POST", "/v1/events", json={"name": "big/%d" % i, "data": big})
                assert r.status == 202, r
            for i in range(EVENTS):
                ev = fast.next(30.0)
                assert ev.event == "big/%d" % i and len(ev.json["data"]) == EVENT_BYTES, ev
            fanned = time.monotonic() - t0
            r = api(srv, "POST", "/v1/events", json={"name": "after", "data": "1"})
            assert r.status == 202, r
            ev = fast.next(10.0)
            assert ev.event == "after", ev
            dev.wait_events(EVENTS + 1, timeout=15.0)
        pinger.stop.set()
        pinger.join(15)
        print("\n%d slow streams, %d x %d B events: fast stream had them all after %.3f s; "
              "longest MQTT ping round trip %.3f s" % (SLOW_STREAMS, EVENTS, EVENT_BYTES, fanned,
                                                      pinger.worst))
        assert pinger.error is None, "the pinging device lost its connection: %r" % pinger.error
        assert dev.disconnects == 0, "the device on the shard was disconnected"
        after = status(srv)[0]
        assert after.pid == before.pid and after.gen == before.gen, (before, after)
    finally:
        if pinger is not None:
            pinger.stop.set()
        for s in slow:
            s.close()
        dev.close()


def test_streams_per_token_limit(api_server_factory):
    srv = api_server_factory(shards=1, sse_max_per_token=3, sse_max_per_address=50)
    _, ro = token_create(srv, "viewer", read_only=True)
    _, other = token_create(srv, "other", read_only=True)
    held = []
    try:
        for _ in range(3):
            s = SseStream(srv, "/v1/events", token=ro)
            held.append(s)
            assert s.status == 200, s.body
        s, st, head = open_raw_stream(srv, ro, "/v1/events/x")
        s.close()
        assert st == 429 and b"too_many_streams" in head, head
        # Another token still gets one, and it works.
        o = SseStream(srv, "/v1/events", token=other)
        held.append(o)
        assert o.status == 200, o.body
        r = api(srv, "POST", "/v1/events", json={"name": "n", "data": "1"})
        assert r.status == 202, r
        assert o.next(5.0).event == "n"
        assert held[0].next(5.0).event == "n"
        # A stream that ends gives its place back.
        held.pop(0).close()
        for _ in range(100):
            s = SseStream(srv, "/v1/events", token=ro)
            if s.status == 200:
                held.append(s)
                break
            s.close()
            time.sleep(0.05)
        else:
            raise AssertionError("the token's place was not given back")
    finally:
        for s in held:
            s.close()


def test_streams_per_address_limit(api_server_factory):
    srv = api_server_factory(shards=1, sse_max_per_token=50, sse_max_per_address=2)
    toks = [token_create(srv, "t%d" % i, read_only=True)[1] for i in range(3)]
    held = []
    try:
        for t in toks[:2]:
            s, st, head = open_raw_stream(srv, t, rcvbuf=65536)
            held.append(s)
            assert st == 200, head
        s, st, head = open_raw_stream(srv, toks[2])
        s.close()
        assert st == 429 and b"too_many_streams" in head, head
        # Another address (127.0.0.2 is loopback too) still gets one.
        s, st, head = open_raw_stream(srv, toks[2], source="127.0.0.2")
        held.append(s)
        assert st == 200, head
    finally:
        for s in held:
            s.close()


def test_stream_ends_when_its_token_is_revoked(api_server_factory):
    srv = api_server_factory()
    tid, tok = token_create(srv, "doomed", read_only=True)
    with SseStream(srv, "/v1/events", token=tok) as doomed, \
            SseStream(srv, "/v1/events") as keeper:
        assert doomed.status == 200 and keeper.status == 200
        r = api(srv, "POST", "/v1/events", json={"name": "before", "data": "1"})
        assert r.status == 202, r
        assert doomed.next(5.0).event == "before"
        assert keeper.next(5.0).event == "before"
        srv.cli("token", "revoke", tid)
        t0 = time.monotonic()
        assert doomed.wait_eof(10.0), "the stream of a revoked token is still open after 10 s: %r" % (
            doomed.items[-5:],)
        print("\nstream of a revoked token ended %.2f s after `cyan token revoke`"
              % (time.monotonic() - t0))
        assert not [e for e in doomed.events() if e.event == "after"]
        # The other token's stream goes on.
        r = api(srv, "POST", "/v1/events", json={"name": "after", "data": "2"})
        assert r.status == 202, r
        assert keeper.next(5.0).event == "after"
    # And the revoked token opens nothing more.
    r = api(srv, "GET", "/v1/events", token=tok, timeout=5)
    assert r.status == 401, r
