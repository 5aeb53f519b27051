"""What a stranger with a socket, or a device with its own credentials, can do
to cyan (issue 9): each test is a reproducer of a defect found by attacking
cyan, and fails on the code before its fix.

A shard that crashes is replaced by the supervisor within a second or two, so
"nothing crashed" is checked by the shard processes' pids, after a later
exchange that must succeed on the same shard."""

import os
import select
import signal
import socket
import struct
import time

import pytest

import rawmqtt as rm
from helpers import Client, raw, uniq, wait_until

pytestmark = pytest.mark.cyan_only


def shard_pids(server):
    """The pids of this server's shard processes, sorted."""
    return sorted(server.shard_pids().values())


def steady_pids(server):
    """The shard pids once every shard has started."""
    return sorted(server.wait_shard_pids().values())


def reset_socket(server):
    s = socket.create_connection((server.host, server.port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return s


def round_trip(server, device, client_id):
    """A subscribe/publish exchange on the shard that owns client_id."""
    with Client(server, device, client_id=client_id) as c:
        c.connect()
        topic = uniq("probe/")
        c.subscribe(topic, 1)
        c.publish(topic, b"alive", qos=1)
        assert c.get().payload == b"alive"


# ------------------------------------------------------------------ 1. double close

@pytest.mark.parametrize("version", [4, 5])
def test_refused_connect_then_reset_leaves_shard_running(server, device, version):
    """A CONNECT with bad credentials followed by a TCP reset: the refusal's
    CONNACK fails to write, which closed the connection twice and aborted the
    shard in uv_close (5 tries in 10)."""
    before = steady_pids(server)
    bad = rm.connect("nosuchdevice", version=version, username="nosuchdevice",
                     password=b"x")
    for _ in range(30):
        s = reset_socket(server)
        s.sendall(bad)
        s.close()
        time.sleep(0.01)
    round_trip(server, device, "nosuchdevice")
    assert shard_pids(server) == before, server.log_tail()
    assert "Assertion" not in server.log()


def test_protocol_error_then_reset_leaves_shard_running(server, device):
    """The same close-while-flushing path through a protocol error (a v5
    DISCONNECT is written, then the socket is found reset)."""
    before = steady_pids(server)
    for _ in range(30):
        s = reset_socket(server)
        s.sendall(rm.connect("nosuchdevice", version=5, username=device.id,
                             password=device.secret) + rm.packet(0, 0, b""))
        s.close()
        time.sleep(0.01)
    round_trip(server, device, "nosuchdevice")
    assert shard_pids(server) == before, server.log_tail()


# ------------------------------------------------------------------ 2. wills under isolation

from apidevice import call, create_device, get_device, online_device  # noqa: E402

CONNACK_REFUSED = {4: 5, 5: 0x87}


def connect_with_will(srv, info, version, will):
    c = raw(srv, version)
    ack = c.connect(info["id"], username=info["id"], password=info["secret"], will=will)
    return c, ack


@pytest.mark.parametrize("version", [4, 5])
def test_will_outside_own_space_refused(api_server, version):
    """A device's will is a publish: a will topic in another device's space
    (a forged call, a forged event, its describe), in no device's space, or
    in the device's own reply topic refuses the CONNECT; nothing of it ever
    reaches the victim. Before the fix the CONNECT was accepted and the will
    routed when the connection dropped."""
    a = create_device(api_server)
    victim = online_device(api_server, 5, {"reboot": lambda arg: "1"})
    V, A = victim.id, a["id"]
    try:
        for topic in ["devices/%s/call/reboot/0000000000000001" % V,
                      "devices/%s/events/forged" % V,
                      "devices/%s/describe" % V,
                      "elsewhere/topic",
                      "devices/%s/reply/0000000000000001" % A]:
            c, ack = connect_with_will(api_server, a, version,
                                       dict(topic=topic, payload=b'{"functions":["x"]}',
                                            retain=True, qos=1))
            with c:
                assert ack.rc == CONNACK_REFUSED[version], (topic, ack)
                c.wait_closed(3.0)
        # A later call through the API must be the first thing the victim
        # sees: no forged call came before it.
        r = call(api_server, V, "reboot", "now")
        assert r.status == 200, r.body
        assert [k.name for k in victim.calls] == ["reboot"], victim.calls
        assert victim.calls[0].arg == "now", victim.calls
        assert get_device(api_server, V)["functions"] == ["reboot"]
    finally:
        victim.close()


def test_will_describe_is_checked_and_retained(api_server):
    """A will on the device's own describe passes the describe rules, and is
    kept as retained like a describe published directly."""
    a = create_device(api_server)
    A = a["id"]
    c, ack = connect_with_will(api_server, a, 5, dict(topic="devices/%s/describe" % A,
                                                      payload=b'{"functions": ["a b c"]}'))
    with c:
        assert ack.rc == 0x99, ack
    c, ack = connect_with_will(api_server, a, 5, dict(topic="devices/%s/describe" % A,
                                                      payload=b'{"functions": ["gone"]}'))
    assert ack.rc == 0, ack
    c.close()  # no DISCONNECT: the will goes out, retained though not flagged so
    assert wait_until(lambda: get_device(api_server, A)["functions"] == ["gone"], timeout=5)


def test_will_in_own_space_still_works(api_server):
    """The rules keep a device's legitimate wills: its own events and the
    shared events space."""
    a = create_device(api_server)
    watcher = online_device(api_server, 5, {}, events=True)
    try:
        c, ack = connect_with_will(api_server, a, 5,
                                   dict(topic="events/lost", payload=b"bye", qos=1))
        assert ack.rc == 0, ack
        c.close()
        assert wait_until(lambda: ("events/lost", b"bye") in watcher.events, timeout=5), \
            watcher.events
    finally:
        watcher.close()


# ------------------------------------------------------------------ 4. memory before login

def big_connect(device, client_id, size):
    """A valid CONNECT of exactly `size` bytes (padded with a will payload)."""
    base = rm.connect(client_id, version=4, username=device.id, password=device.secret,
                      will=dict(topic="w/" + client_id, payload=b""))
    pkt = b""
    pad = size - len(base)
    for _ in range(4):  # the remaining-length field may grow a byte
        pkt = rm.connect(client_id, version=4, username=device.id, password=device.secret,
                         will=dict(topic="w/" + client_id, payload=b"p" * pad))
        pad += size - len(pkt)
    assert len(pkt) == size, len(pkt)
    return pkt


def test_connect_over_max_connect_size_closed_from_its_header(server_factory):
    """A CONNECT whose fixed header declares more than max_connect_size is
    refused before any byte of its body is held (before the fix the socket
    waited, buffering up to max_packet_size = 1 MiB)."""
    srv = server_factory(max_connect_size=4096)
    with raw(srv, 4) as c:
        c.send(bytes([0x10]) + rm.varint(100000) + b"\x00\x04MQTT")
        assert c.wait_closed(3.0) == []
    # a CONNECT within the bound is fine, also when it comes in pieces
    dev = srv.add_device()
    pkt = big_connect(dev, uniq("ok"), 4000)
    with raw(srv, 4) as c:
        c.send(pkt[:1500])
        time.sleep(0.05)
        c.send(pkt[1500:])
        assert c.expect(rm.CONNACK, 3.0).rc == 0


def _closed(sock):
    """Has the server closed sock? (Never blocks; it sends nothing before
    CONNECT, so readable means EOF or reset.)"""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_half_sent_connects_bounded_by_preauth_memory(server_factory):
    """Sockets that hold part of a CONNECT share one budget per shard: past
    preauth_memory, more such sockets are closed; the budget comes back when
    they go, and a complete CONNECT never needs it."""
    srv = server_factory(shards=1, preauth_memory=65536, max_connect_size=8192,
                         connect_timeout=120)
    dev = srv.add_device()
    socks = []
    try:
        for i in range(40):
            s = socket.create_connection((srv.host, srv.port), timeout=5)
            s.sendall(big_connect(dev, "half%d" % i, 8000)[:4000])
            socks.append(s)
        # 40 x 4-8 KiB is well over 64 KiB: most must be closed.
        assert wait_until(lambda: sum(_closed(s) for s in socks) >= 24, timeout=10), \
            "closed: %d of 40" % sum(_closed(s) for s in socks)
        # a real client logs in meanwhile (its CONNECT arrives whole)
        round_trip(srv, dev, uniq("whole"))
    finally:
        for s in socks:
            s.close()
    # The budget is back once those sockets are gone: 6 new half-sent
    # CONNECTs (6 x 8 KiB < 64 KiB) all complete and get a CONNACK. (The
    # round trip is the barrier: the server has seen the closes before it.)
    round_trip(srv, dev, uniq("whole"))
    late = []
    try:
        pkts = [big_connect(dev, "late%d" % i, 8000) for i in range(6)]
        for p in pkts:
            s = raw(srv, 4)
            s.send(p[:4000])
            late.append((s, p))
        for s, p in late:
            s.send(p[4000:])
            assert s.expect(rm.CONNACK, 5.0).rc == 0
    finally:
        for s, _ in late:
            s.close()


# ------------------------------------------------------------------ 8e. log floods

def test_failed_logins_logged_once_per_address_per_window(server):
    """50 refused logins from one address make one log line per shard (with the count
    of the rest coming in the next window's line), not 50; every one of them
    got its CONNACK, so the server had handled them all when the log is read."""
    mark = len(server.log())
    for i in range(50):
        with raw(server, 5) as c:
            ack = c.connect("nosuch%d" % i, username="nosuch%d" % i, password=b"x")
            assert ack.rc == 0x86, ack
    from conftest import SHARDS  # each shard keeps its own window
    lines = [l for l in server.log()[mark:].splitlines() if "connect refused" in l]
    assert 1 <= len(lines) <= 2 * SHARDS, "\n".join(lines[:10])
    assert "from 127.0.0.1: connect refused for client 'nosuch" in lines[0], lines[0]


def shard_pid(server, index):
    """The pid of shard `index` of this server."""
    return server.shard_pids().get(index)


def test_handover_of_strangers_bytes_counts_in_preauth_memory(server_factory):
    """A CONNECT for a client of another shard is handed over with what came
    after it in the same read, before login. While that shard does not read
    (stopped), those bytes wait in the bus: they count in preauth_memory, so
    past it the CONNECT is refused at once (0x88 Server unavailable)
    instead of the shard queueing 60 KiB more for every stranger."""
    from test_shards import shard_of
    srv = server_factory(shards=2, preauth_memory=65536, watchdog_timeout=30000)
    srv.wait_api_healthy()
    cid = next("ho%d" % i for i in range(1000) if shard_of("ho%d" % i, 2) == 1)
    victim = shard_pid(srv, 1)
    junk = rm.packet(rm.PUBLISH, 0, rm.mstr("x") + b"j" * 60000)
    socks = []
    os.kill(victim, signal.SIGSTOP)
    try:
        # shard 1 is stopped: only shard 0 accepts, and hands each over. (A
        # second later shard 0 refuses them anyway, as shard 1's heartbeat is
        # stale: the log says which refusal came.)
        for _ in range(12):
            c = raw(srv, 5, timeout=3.0)
            socks.append(c)
            c.send(rm.connect(cid, version=5, username="nosuch", password=b"x") + junk)
        assert srv.wait_log("preauth_memory spent on connections not logged in", timeout=5)
        codes = []
        for c in socks:
            try:
                codes.append(c.expect(rm.CONNACK, 0.2).rc)
            except (rm.Timeout, rm.Closed):
                codes.append(None)  # still waiting in the bus
        assert 0x88 in codes, codes
    finally:
        os.kill(victim, signal.SIGCONT)
        for c in socks:
            c.close()
    # once shard 1 runs again (and its heartbeat is fresh), its clients log in
    dev = srv.add_device()

    def logs_in():
        try:
            round_trip(srv, dev, cid)
            return True
        except AssertionError:
            return False
    assert wait_until(logs_in, timeout=10, interval=0.3)
    assert steady_pids(srv)
