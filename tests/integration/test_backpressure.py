"""Back-pressure on a client that publishes and never reads (issue 10).

Every QoS 1 PUBLISH earns the client a PUBACK. A client that keeps
publishing and never reads made those acknowledgements pile up in the
shard's memory without bound. Now, once a connection's unwritten output is
over max_output, cyan stops reading it: the client's publishes wait in the
kernel and then its own sends block. A client that stays there for
max_output_stall seconds is disconnected (limit_output_stall), and the
shard serves its other clients throughout.
"""

import errno
import os
import socket
import time

import pytest

import rawmqtt as rm
from helpers import Client, SysWatcher
from test_attacks import shard_pid
from test_shards import shard_of

pytestmark = pytest.mark.cyan_only

SHARDS = int(os.environ.get("CYAN_SHARDS", "1"))
MAX_OUTPUT = 65536
STALL = 8             # max_output_stall in the test, s
FLOOD_BOUND = 64 << 20  # bytes the client may try to send before we call it unbounded
FLOOD_TIME = 60.0     # s, bound of the send loop
BLOCKED_FOR = 1.5     # s without a byte taken: the server stopped reading


def _same_shard_devices(srv, n=2):
    """n devices whose sessions live on the same shard."""
    by_shard = {}
    for _ in range(64):
        d = srv.add_device()
        by_shard.setdefault(shard_of(d.id, SHARDS), []).append(d)
        for sh, ds in by_shard.items():
            if len(ds) >= n:
                return sh, ds[:n]
    raise AssertionError("no two devices on one shard")


def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _non_reader(srv, dev, keepalive):
    """A raw MQTT 5 client with a tiny receive buffer (set before connecting,
    so the window it offers stays tiny), logged in, then non-blocking."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    s.settimeout(5.0)
    s.connect((srv.host, srv.port))
    c = rm.RawClient.__new__(rm.RawClient)
    c.version, c.sock, c.buf, c.closed = 5, s, bytearray(), False
    ack = c.connect(dev.id, username=dev.id, password=dev.secret, keepalive=keepalive)
    assert ack.rc == 0, ack
    s.setblocking(False)
    return c


def _flood(sock, topic, other, other_topic):
    """Send QoS 1 PUBLISHes without reading, non-blocking, until no byte is
    taken for BLOCKED_FOR seconds; bounded by FLOOD_BOUND bytes and
    FLOOD_TIME seconds. Returns (bytes sent, blocked). The other client
    publishes to itself along the way and must get each message."""
    # the smallest QoS 1 PUBLISH (8 bytes) earns a PUBACK of 4: the kernel's
    # buffers (MiBs on loopback) fill with acknowledgements early enough
    pkts = b"".join(rm.publish(topic, b"", qos=1, pid=1 + i) for i in range(4096))
    sent, pending = 0, memoryview(pkts)
    start = last_progress = time.monotonic()
    next_check = sent + (4 << 20)
    while sent < FLOOD_BOUND and time.monotonic() - start < FLOOD_TIME:
        try:
            n = sock.send(pending)
        except BlockingIOError:
            n = 0
        if n:
            sent += n
            last_progress = time.monotonic()
            pending = pending[n:]
            if not len(pending):
                pending = memoryview(pkts)
            if sent >= next_check:  # the shard still serves others
                next_check += 4 << 20
                other.publish(other_topic, b"during", qos=1)
                assert other.get(10.0).payload == b"during"
            continue
        if time.monotonic() - last_progress >= BLOCKED_FOR:
            return sent, True
        time.sleep(0.01)
    return sent, False


def test_client_that_never_reads_is_paused_then_disconnected(server_factory):
    srv = server_factory(max_output=MAX_OUTPUT, max_output_stall=STALL, watchdog_timeout=30000)
    sh, (flooder, friend) = _same_shard_devices(srv)
    watch = SysWatcher(srv, srv.add_device())
    base = watch.wait("limit_output_stall", timeout=5.0)
    other_topic = "devices/%s/ping" % friend.id
    with Client(srv, friend) as other:
        other.connect()
        other.subscribe(other_topic, 1)
        pid = shard_pid(srv, sh)
        rss_before = _rss_kib(pid)

        # keep-alive 1 s: while cyan does not read the client, its silence
        # is cyan's doing, so the close must be for the stall, not keep-alive
        c = _non_reader(srv, flooder, keepalive=1)
        sent, blocked = _flood(c.sock, "f", other, other_topic)
        print("flood: %d bytes sent, blocked %s" % (sent, blocked))
        assert blocked, ("the server kept reading a client that never reads: %d MiB taken"
                         % (sent >> 20))
        rss_after = _rss_kib(pid)
        # What cyan read is bounded (kernel buffers + max_output), so is
        # what it holds for the client (ASan's own allocator is noisy: loose).
        assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)

        # the shard still serves its other client while that one is stopped
        other.publish(other_topic, b"while-paused", qos=1)
        assert other.get(10.0).payload == b"while-paused"

        # past max_output_stall the client is disconnected: the socket is
        # reset (cyan closed it with unread input) and it is counted
        assert srv.wait_log("not reading its output", timeout=STALL + 10), srv.log_tail()
        watch.wait("limit_output_stall", lambda v: v >= base + 1, timeout=5.0)
        deadline, gone = time.monotonic() + 10, False
        while time.monotonic() < deadline and not gone:
            try:
                c.sock.send(b"\xc0\x00")  # PINGREQ
                while c.sock.recv(65536):
                    pass
                gone = True  # EOF
            except BlockingIOError:
                time.sleep(0.05)
            except OSError as e:
                assert e.errno in (errno.ECONNRESET, errno.EPIPE), e
                gone = True
        assert gone, "the stalled client is still connected"
        c.close()
        log = srv.log()
        assert "keep-alive timeout" not in log, log[-3000:]

        other.publish(other_topic, b"after", qos=1)
        assert other.get(10.0).payload == b"after"
    watch.close()


def test_slow_reader_resumes_without_disconnect(server_factory):
    """A client that reads, only late, is resumed once its output drains and
    gets every acknowledgement: back-pressure loses nothing."""
    srv = server_factory(max_output=MAX_OUTPUT, max_output_stall=30)
    dev = srv.add_device()
    c = _non_reader(srv, dev, keepalive=60)
    topic = "devices/%s/slow" % dev.id
    n = 20000  # 80 KB of PUBACKs: over max_output with the kernel's buffers
    pkt_of = lambda i: rm.publish(topic, b"x" * 100, qos=1, pid=1 + i % 65000)
    i, got, deadline = 0, 0, time.monotonic() + 60
    pending = b""
    while got < n and time.monotonic() < deadline:
        if not pending and i < n:
            pending = b"".join(pkt_of(j) for j in range(i, min(i + 200, n)))
            i = min(i + 200, n)
        if pending:
            try:
                k = c.sock.send(pending)
                pending = pending[k:]
            except BlockingIOError:
                pass
        if i >= n or not pending:
            pass
        # read late: only after a pause, a little at a time
        time.sleep(0.002)
        try:
            c.buf += c.sock.recv(4096)
        except BlockingIOError:
            pass
        while True:
            p = c.take_packet()
            if p is None:
                break
            assert p.type == rm.PUBACK, p
            got += 1
    assert got == n, "got %d of %d PUBACKs\n%s" % (got, n, srv.log_tail())
    c.close()
