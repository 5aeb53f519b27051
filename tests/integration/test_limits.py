"""Limits, each with its reason code and its counter ($SYS/cyan/<name>,
retained, republished every sys_interval): packet size, topic length, queue
length of an offline session, subscriptions per session, connections,
inbound receive maximum."""

import time

import pytest

import rawmqtt as rm
from helpers import CYAN, Client, SysWatcher, raw, raw_connected, uniq, wait_until


class Counters:
    """Counter checks, a no-op against the peer (no $SYS/cyan there)."""

    def __init__(self, server, device):
        self.w = SysWatcher(server, device) if CYAN else None
        self.base = {}

    def snapshot(self, *names):
        if self.w:
            for n in names:
                self.base[n] = self.w.wait(n, timeout=4.0)

    def grew(self, name, by=1):
        if self.w:
            base = self.base.get(name, 0)
            self.w.wait(name, lambda v: v >= base + by, timeout=4.0)

    def close(self):
        if self.w:
            self.w.close()


@pytest.fixture
def counters_for():
    made = []

    def make(server, device):
        c = Counters(server, device)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


def test_packet_too_large_v5(server_factory, counters_for):
    srv = server_factory(max_packet_size=1000)
    cnt = counters_for(srv, srv.add_device())
    cnt.snapshot("limit_packet_too_large")
    c, ack = raw_connected(srv, srv.add_device())
    with c:
        assert ack.props.get("maximum_packet_size") == 1000
        assert c.publish("big/ok", b"s" * 900, qos=1, pid=1).rc < 0x80  # just under
        c.send(rm.publish("big/t", b"x" * 2000, qos=1, pid=2))
        got = c.wait_closed(3.0)
        assert [(type(p), p.rc) for p in got] == [(rm.Disconnect, 0x95)]
    cnt.grew("limit_packet_too_large")


def test_packet_too_large_header_only(server_factory):
    """The limit is applied on the fixed header: no need to receive 200 MB."""
    srv = server_factory(max_packet_size=1000)
    c, _ = raw_connected(srv, srv.add_device())
    with c:
        c.send(bytes([0x30]) + rm.varint(200 * 1024 * 1024) + rm.mstr("t") + b"x" * 10)
        got = c.wait_closed(3.0)
        if CYAN or got:
            assert [(type(p), p.rc) for p in got] == [(rm.Disconnect, 0x95)]


def test_packet_too_large_v311_closed(server_factory):
    srv = server_factory(max_packet_size=1000)
    c, _ = raw_connected(srv, srv.add_device(), version=4)
    with c:
        c.send(rm.publish("big/t", b"x" * 2000, qos=1, pid=2, version=4))
        assert c.wait_closed(3.0) == []


@pytest.mark.cyan_only
def test_topic_too_long_v5_puback_0x90(server, new_device, counters_for):
    cnt = counters_for(server, new_device())
    cnt.snapshot("limit_topic_too_long")
    with Client(server, new_device()) as sub:
        sub.connect()
        sub.subscribe("#", 1)
        c, _ = raw_connected(server, new_device())
        with c:
            ok_topic = "t/" + "a" * 510          # exactly 512
            long_topic = "t/" + "a" * 598        # 600
            assert c.publish(ok_topic, b"ok", qos=1, pid=1).rc == 0
            ack = c.publish(long_topic, b"no", qos=1, pid=2)
            assert (ack.type, ack.pid, ack.rc) == (rm.PUBACK, 2, 0x90)
            c.send(rm.pingreq())
            c.expect(rm.PINGRESP)
            c.disconnect()
        assert [m.topic for m in sub.drain(0.7)] == [ok_topic]
    cnt.grew("limit_topic_too_long")


@pytest.mark.cyan_only
def test_topic_too_long_v311_closed(server_factory):
    srv = server_factory(max_topic_length=64)
    c, _ = raw_connected(srv, srv.add_device(), version=4)
    with c:
        assert c.publish("t/" + "a" * 62, b"ok", qos=1, pid=1).rc == 0
        c.send(rm.publish("t/" + "a" * 63, b"no", qos=1, pid=2, version=4))
        assert c.wait_closed(3.0) == []


@pytest.mark.cyan_only
def test_subscribe_filter_too_long(server_factory):
    """The topic length limit applies to filters too (SUBACK failure, not a drop)."""
    srv = server_factory(max_topic_length=64)
    c, _ = raw_connected(srv, srv.add_device())
    with c:
        ack = c.subscribe([("f/" + "a" * 62, 1), ("f/" + "a" * 80, 1)])
        assert ack.codes[0] == 1 and ack.codes[1] >= 0x80
        c.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_queue_full_for_offline_session(server_factory, counters_for, version):
    srv = server_factory(max_queued=10)
    cnt = counters_for(srv, srv.add_device())
    cnt.snapshot("limit_queue_full", "messages_dropped")
    dev = srv.add_device()
    cid, topic = uniq("qf"), uniq("qf/")
    kw = dict(client_id=cid, version=version, clean=False)
    if version == 5:
        kw["session_expiry"] = 300
    with Client(srv, dev, **kw) as c:
        c.connect()
        c.subscribe(topic, 1)
        c.disconnect()
    with Client(srv, srv.add_device()) as pub:
        pub.connect()
        for i in range(15):
            pub.publish(topic, b"%d" % i, qos=1)
    cnt.grew("limit_queue_full")
    cnt.grew("messages_dropped")
    with Client(srv, dev, **kw) as c:
        sp, _, _ = c.connect()
        assert sp == 1
        got = [m.payload for m in c.drain(0.8)]
    assert got == [b"%d" % i for i in range(10)]


@pytest.mark.cyan_only
def test_default_queue_limit_is_1000(server, new_device):
    dev = new_device()
    cid, topic = uniq("qd"), uniq("qd/")
    with Client(server, dev, client_id=cid, clean=False, session_expiry=300) as c:
        c.connect()
        c.subscribe(topic, 1)
        c.disconnect()
    with Client(server, new_device()) as pub:
        pub.connect()
        for i in range(1005):
            pub.publish(topic, b"%d" % i, qos=1, wait=(i % 100 == 99 or i == 1004),
                        timeout=10)
    with Client(server, dev, client_id=cid, clean=False, session_expiry=300) as c:
        c.connect()
        got = [m.payload for m in c.drain(1.0)]
    assert got == [b"%d" % i for i in range(1000)]


@pytest.mark.cyan_only
@pytest.mark.parametrize("version,code", [(5, 0x97), (4, 0x80)])
def test_max_subscriptions(server_factory, counters_for, version, code):
    srv = server_factory(max_subscriptions=3)
    cnt = counters_for(srv, srv.add_device())
    cnt.snapshot("limit_subscriptions")
    c, _ = raw_connected(srv, srv.add_device(), version=version)
    with c:
        assert c.subscribe([("s/1", 1), ("s/2", 1), ("s/3", 1)], pid=1).codes == [1, 1, 1]
        assert c.subscribe([("s/4", 1), ("s/2", 0)], pid=2).codes == [code, 0], \
            "a new filter over the limit fails; re-subscribing an existing one does not"
        c.send(rm.unsubscribe(3, ["s/1"], version=version))
        c.expect(rm.UNSUBACK)
        assert c.subscribe([("s/5", 1)], pid=4).codes == [1]
        c.disconnect()
    cnt.grew("limit_subscriptions")


@pytest.mark.cyan_only
def test_max_connections(server_factory, counters_for):
    srv = server_factory(max_connections=3)
    cnt = counters_for(srv, srv.add_device())   # connection 1
    cnt.snapshot("limit_connections")
    dev = srv.add_device()
    a, _ = raw_connected(srv, dev)                # 2
    b, _ = raw_connected(srv, dev)                # 3
    with a, b:
        with raw(srv, 5) as c:
            ack = c.connect(uniq("x"), username=dev.id, password=dev.secret)
            assert ack.rc == 0x97
            c.wait_closed(3.0)
        with raw(srv, 4) as c:
            ack = c.connect(uniq("x"), username=dev.id, password=dev.secret)
            assert ack.rc == 3
            c.wait_closed(3.0)
        cnt.grew("limit_connections", by=2)
        a.disconnect()
        ok = None
        for _ in range(20):  # the slot is freed once the server saw the close
            with raw(srv, 5) as c:
                ack = c.connect(uniq("y"), username=dev.id, password=dev.secret)
                if ack.rc == 0:
                    ok = ack
                    c.disconnect()
                    break
            time.sleep(0.1)
        assert ok is not None, "slot not freed after a client left"
        b.disconnect()


@pytest.mark.cyan_only
@pytest.mark.parametrize("isolate", [False, True])
def test_max_connections_allows_takeover(server_factory, counters_for, isolate):
    """At max_connections a reconnect that takes over its own connected
    session replaces a connection, it does not add one: it is accepted, the
    old connection gets 0x8E, and a new client is still refused."""
    srv = server_factory(max_connections=3, isolate_devices=isolate)
    if isolate:  # (the $SYS watcher is no device: no counters then)
        d0 = srv.add_device()
        first, _ = raw_connected(srv, d0, client_id=d0.id)  # connection 1
        cnt = None
    else:
        cnt = counters_for(srv, srv.add_device())     # connection 1
        cnt.snapshot("limit_connections")
    d1, d2 = srv.add_device(), srv.add_device()
    cid1 = d1.id if isolate else uniq("t")
    cid2 = d2.id if isolate else uniq("t")
    a, _ = raw_connected(srv, d1, client_id=cid1)  # 2
    b, _ = raw_connected(srv, d2, client_id=cid2)  # 3
    d3 = srv.add_device()
    cid3 = d3.id if isolate else uniq("x")
    with a, b:
        with raw(srv, 5) as c:  # a new client: refused
            assert c.connect(cid3, username=d3.id, password=d3.secret).rc == 0x97
            c.wait_closed(3.0)
        if cnt:
            cnt.grew("limit_connections")
        # the device reconnects (its old connection half-open, say): taken over
        n, ack = raw_connected(srv, d1, client_id=cid1)
        with n:
            assert ack.rc == 0
            assert [(type(p), p.rc) for p in a.wait_closed(3.0)] == [(rm.Disconnect, 0x8E)]
            # and 3.1.1 the same way
            m, ack = raw_connected(srv, d2, client_id=cid2, version=4)
            with m:
                assert ack.rc == 0
                b.wait_closed(3.0)
                # still 3 connections: a new client is still refused
                with raw(srv, 4) as c:
                    assert c.connect(cid3, username=d3.id, password=d3.secret,
                                     version=4).rc == 3
                    c.wait_closed(3.0)
                # the new connections work
                n.subscribe([(uniq("ok/"), 1)])
                m.disconnect()
            n.disconnect()
    if isolate:
        first.disconnect()


@pytest.mark.cyan_only  # mosquitto's inbound quota is not max_inflight_messages
def test_inbound_receive_maximum_exceeded(server_factory, counters_for):
    srv = server_factory(max_inflight=2)
    cnt = counters_for(srv, srv.add_device())
    cnt.snapshot("limit_receive_max")
    c, ack = raw_connected(srv, srv.add_device())
    with c:
        assert ack.props.get("receive_maximum") == 2
        for pid in (1, 2):
            c.send(rm.publish("rx/t", b"x", qos=2, pid=pid))
            assert c.expect(rm.PUBREC).pid == pid
        c.send(rm.publish("rx/t", b"x", qos=2, pid=3))
        got = c.wait_closed(3.0)
        assert [(type(p), p.rc) for p in got] == [(rm.Disconnect, 0x93)]
    cnt.grew("limit_receive_max")


def test_inbound_receive_maximum_respected_is_fine(server_factory):
    """Completing each QoS 2 flow frees its slot: many messages, never over 2."""
    srv = server_factory(max_inflight=2)
    c, _ = raw_connected(srv, srv.add_device())
    with c:
        for pid in range(1, 11):
            assert c.publish("rx/ok", b"x", qos=2, pid=pid).rc == 0
        c.send(rm.pingreq())
        c.expect(rm.PINGRESP)
        c.disconnect()


# ============================================================ limits against abuse
#
# Issue 14 (docs/operations.md, "Limits against abuse"): failed logins slowed
# then locked out per address and per device (MQTT, the API's tokens, DTLS),
# new connections per address per second, publishes per connection per
# second. The node counts them together whatever shard a connection lands
# on (CYAN_SHARDS=4 runs the same tests). Loopback is exempt from the
# per-address limits by default, so these servers set limits_exempt="" and
# their clients come from other 127/8 addresses (a source per test role).

import socket
import threading

import test_api_abuse as http

ABUSE = dict(limits_exempt="", auth_fail_burst=3, auth_fail_lockout_after=5,
             auth_fail_window=60, auth_lockout=2, auth_fail_delay=800)


class SourcedRaw(rm.RawClient):
    """A RawClient sending from a given 127/8 address."""

    def __init__(self, srv, source, version=5, timeout=5.0):
        self.version = version
        self.sock = socket.create_connection((srv.host, srv.port), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed = False


def login(srv, source, dev_id, secret, version=5, timeout=8.0):
    """(return code, seconds to the CONNACK) of one CONNECT from source."""
    with SourcedRaw(srv, source, version) as c:
        t = time.monotonic()
        ack = c.connect(uniq("l"), username=dev_id, password=secret, timeout=timeout)
        return ack.rc, time.monotonic() - t


BAD, LOCKED = {5: 0x86, 4: 4}, {5: 0x9F, 4: 5}


@pytest.mark.cyan_only
@pytest.mark.parametrize("version", [5, 4])
def test_failed_logins_slowed_then_locked_out_per_address(server_factory, counters_for, version):
    """3 wrong secrets from an address: its next attempts are held 0.8 s
    (a right secret too, then taken); 5: refused unchecked (0x9F, 3.1.1:
    5) even with the right secret, for auth_lockout; other addresses are
    not touched. Counted, logged, the secret never printed."""
    srv = server_factory(**ABUSE)
    dev = srv.add_device()
    cnt = counters_for(srv, srv.add_device())
    cnt.snapshot("auth_failures", "auth_delayed", "auth_locked")
    wrong = "0" * 32
    for _ in range(3):
        assert login(srv, "127.0.0.2", dev.id, wrong, version)[0] == BAD[version]
    rc, took = login(srv, "127.0.0.2", dev.id, wrong, version)
    assert rc == BAD[version] and took >= 0.7, (rc, took)
    rc, took = login(srv, "127.0.0.2", dev.id, dev.secret, version)  # slow, not refused
    assert rc == 0 and took >= 0.7, (rc, took)
    rc, took = login(srv, "127.0.0.2", dev.id, wrong, version)  # the 5th failure
    assert rc == BAD[version] and took >= 0.7, (rc, took)
    rc, took = login(srv, "127.0.0.2", dev.id, dev.secret, version)
    assert rc == LOCKED[version] and took < 0.7, (rc, took)
    # Another address, the right secret: at once (it never failed).
    rc, took = login(srv, "127.0.0.3", dev.id, dev.secret, version)
    assert rc == 0 and took < 0.7, (rc, took)
    cnt.grew("auth_failures", 5)
    cnt.grew("auth_delayed", 3)
    cnt.grew("auth_locked", 1)
    # The lockout ends after auth_lockout (2 s): the right secret works again.
    assert wait_until(lambda: login(srv, "127.0.0.2", dev.id, dev.secret, version)[0] == 0,
                      timeout=8.0, interval=0.3)
    log = srv.log()
    assert "address 127.0.0.2 locked out for 2 s: 5 failed logins within 60 s" in log, \
        srv.log_tail()
    assert dev.secret not in log and wrong not in log


@pytest.mark.cyan_only
def test_device_lockout_spares_addresses_that_never_failed(server_factory):
    """One wrong secret each from 5 addresses (a botnet) locks the device
    for the addresses that failed; a clean address (the device itself) is
    still checked at once: right secret in, wrong one out (and no longer
    clean)."""
    srv = server_factory(**ABUSE)
    dev = srv.add_device()
    wrong = "1" * 32
    for i in range(11, 16):
        assert login(srv, "127.0.0.%d" % i, dev.id, wrong)[0] == 0x86
    assert login(srv, "127.0.0.11", dev.id, dev.secret)[0] == 0x9F
    rc, took = login(srv, "127.0.0.20", dev.id, dev.secret)
    assert rc == 0 and took < 0.7, (rc, took)
    rc, took = login(srv, "127.0.0.21", dev.id, wrong)
    assert rc == 0x86 and took < 0.7, (rc, took)
    assert login(srv, "127.0.0.21", dev.id, dev.secret)[0] == 0x9F
    # Unknown devices are not counted per id: no lockout of names nobody has.
    for i in range(30, 36):
        assert login(srv, "127.0.0.%d" % i, "nosuchdevice", wrong)[0] == 0x86
    assert "device 'nosuchdevice' locked out" not in srv.log()
    assert "device '%s' locked out for 2 s for the addresses that failed" % dev.id in srv.log()


@pytest.mark.cyan_only
def test_held_login_blocks_nothing_else(server_factory):
    """While an attempt is held (2 s here), the shard serves everyone else:
    another address logs in and gets its answer first."""
    srv = server_factory(**dict(ABUSE, auth_fail_burst=1, auth_fail_delay=2000))
    dev = srv.add_device()
    assert login(srv, "127.0.0.2", dev.id, "2" * 32)[0] == 0x86
    with SourcedRaw(srv, "127.0.0.2") as held:
        t = time.monotonic()
        held.send(rm.connect(uniq("h"), username=dev.id, password=dev.secret))
        rc, took = login(srv, "127.0.0.3", dev.id, dev.secret)
        assert rc == 0 and took < 1.0, (rc, took)
        assert not held.buf and held.is_open(0.0), "the held attempt was answered early"
        ack = held.expect(rm.CONNACK, 5.0)
        assert ack.rc == 0 and time.monotonic() - t >= 1.8


@pytest.mark.cyan_only
def test_connect_rate_per_address(server_factory, counters_for):
    """5 connections at once from an address, 5 per second after: the 6th
    is closed at accept, without a CONNACK; other addresses, and the same
    one a moment later, are taken. Loopback is exempt by default."""
    srv = server_factory(limits_exempt="", max_connect_rate_per_address=5,
                         connect_burst_per_address=5)
    dev = srv.add_device()
    cnt = counters_for(srv, srv.add_device())
    cnt.snapshot("limit_connect_rate")
    socks = [SourcedRaw(srv, "127.0.0.2") for _ in range(8)]
    try:
        acks = []
        for c in socks:
            c.try_send(rm.connect(uniq("r"), username=dev.id, password=dev.secret))
        for c in socks:
            try:
                acks.append(c.expect(rm.CONNACK, 5.0).rc)
            except (rm.Closed, ConnectionResetError):
                acks.append(None)
        assert acks.count(0) == 5 and acks.count(None) == 3, acks
    finally:
        for c in socks:
            c.close()
    cnt.grew("limit_connect_rate", 3)
    assert login(srv, "127.0.0.3", dev.id, dev.secret)[0] == 0
    assert wait_until(lambda: _connects(srv, "127.0.0.2", dev), timeout=3.0)
    assert "over max_connect_rate_per_address" in srv.log()


def _connects(srv, source, dev):
    try:
        return login(srv, source, dev.id, dev.secret)[0] == 0
    except (rm.Closed, ConnectionResetError, BrokenPipeError):
        return False


@pytest.mark.cyan_only
def test_connect_rate_exempts_loopback_by_default(server_factory):
    srv = server_factory(max_connect_rate_per_address=2, connect_burst_per_address=2)
    dev = srv.add_device()
    for _ in range(10):
        assert login(srv, "127.0.0.1", dev.id, dev.secret)[0] == 0


@pytest.mark.cyan_only
def test_api_connect_rate_per_address(api_server_factory):
    """The API's accepts count in the same limit: the 4th connection of a
    burst of 3 is closed without an answer."""
    srv = api_server_factory(limits_exempt="", max_connect_rate_per_address=3,
                             connect_burst_per_address=3)
    answers = []
    for _ in range(4):
        s = http.connect(srv, source="127.0.0.2")
        try:
            s.sendall(http.head("GET", "/v1/health"))
            a = http.read_answer(s)
            answers.append(a.status if a else None)
        except (ConnectionResetError, BrokenPipeError):
            answers.append(None)
        finally:
            s.close()
    assert answers == [200, 200, 200, None], answers
    s = http.connect(srv, source="127.0.0.3")
    try:
        s.sendall(http.head("GET", "/v1/health"))
        assert http.read_answer(s).status == 200
    finally:
        s.close()


@pytest.mark.cyan_only
def test_api_failed_tokens_slowed_then_429(api_server_factory):
    """Bad tokens from an address: 401, held once over auth_fail_burst, and
    past auth_fail_lockout_after 429 with Retry-After and the usual error
    body, even for a valid token, until auth_lockout ends."""
    srv = api_server_factory(limits_exempt="", auth_fail_burst=2, auth_fail_lockout_after=4,
                             auth_lockout=2, auth_fail_delay=700)
    good = srv.admin_token()
    bad = "cyt_00000000abcd_" + "7" * 32

    def ask(source, token):
        s = http.connect(srv, source=source, timeout=5.0)
        try:
            t = time.monotonic()
            s.sendall(http.head("GET", "/v1/devices", token))
            a = http.read_answer(s, timeout=5.0)
            return a, time.monotonic() - t
        finally:
            s.close()

    for _ in range(2):
        a, took = ask("127.0.0.2", bad)
        assert a.status == 401, a
    a, took = ask("127.0.0.2", good)  # slow: held, then served
    assert a.status == 200 and took >= 0.6, (a, took)
    for _ in range(2):
        a, took = ask("127.0.0.2", bad)
        assert a.status == 401 and took >= 0.6, (a, took)
    a, took = ask("127.0.0.2", good)
    assert a.status == 429 and took < 0.6, (a, took)
    assert a.body["error"] == "too_many_failures", a
    assert 1 <= int(a.headers["retry-after"]) <= 2, a
    a, _ = ask("127.0.0.3", good)
    assert a.status == 200, a
    assert wait_until(lambda: ask("127.0.0.2", good)[0].status == 200, timeout=8.0,
                      interval=0.3)
    assert "7" * 32 not in srv.log()


@pytest.mark.cyan_only
def test_publish_rate_v5_refused_and_dropped(server_factory, counters_for):
    """max_publish_rate 5: of 20 QoS 1 publishes sent at once, a second's
    worth (6) is taken and the rest get 0x97; of 20 QoS 0, as many reach a
    subscriber and the rest are dropped (proven by a later message that
    must arrive after them); the rate comes back."""
    srv = server_factory(max_publish_rate=5)
    cnt = counters_for(srv, srv.add_device())
    cnt.snapshot("limit_publish_rate")
    topic = uniq("rate/")
    sub = Client(srv, srv.add_device(), version=5)
    sub.connect()
    sub.subscribe(topic + "/#", 1)
    c, _ = raw_connected(srv, srv.add_device())
    with c, sub:
        c.send(b"".join(rm.publish(topic + "/q1", b"x", qos=1, pid=i) for i in range(1, 21)))
        rcs = [c.expect(rm.PUBACK, 5.0).rc for _ in range(20)]
        ok = rcs.count(0)
        assert 6 <= ok <= 7 and rcs.count(0x97) == 20 - ok, rcs
        assert all(r == 0x97 for r in rcs[ok:]), rcs
        cnt.grew("limit_publish_rate", 13)
        got = sub.get_n(ok, timeout=5.0)
        assert all(m.topic == topic + "/q1" for m in got)
        # QoS 0: once the bucket is full again, 20 at once, then a marker.
        assert wait_until(lambda: c.publish(topic + "/probe", b"p", qos=1, pid=30).rc == 0,
                          timeout=5.0, interval=0.3)
        sub.drain(quiet=0.3)
        time.sleep(1.3)  # the bucket refills (a wait for the server's state, not an assertion)
        c.send(b"".join(rm.publish(topic + "/q0", b"%d" % i) for i in range(20)))
        assert wait_until(lambda: c.publish(topic + "/end", b"e", qos=1, pid=31).rc == 0,
                          timeout=5.0, interval=0.3)
        msgs = []
        while True:
            m = sub.get(timeout=5.0)
            if m.topic == topic + "/end":
                break
            msgs.append(m)
        q0 = [m for m in msgs if m.topic == topic + "/q0"]
        assert 6 <= len(q0) <= 7, [m.payload for m in q0]
        c.disconnect()


@pytest.mark.cyan_only
def test_publish_bytes_rate_v5(server_factory):
    """max_publish_bytes_rate 1000: a 3000-byte message passes on a full
    bucket; the next gets 0x97 until its debt (2 s beyond the burst) is paid."""
    srv = server_factory(max_publish_bytes_rate=1000)
    c, _ = raw_connected(srv, srv.add_device())
    with c:
        t = time.monotonic()
        assert c.publish("bytes/big", b"b" * 3000, qos=1, pid=1).rc == 0
        assert c.publish("bytes/small", b"s", qos=1, pid=2).rc == 0x97
        assert wait_until(lambda: c.publish("bytes/small", b"s", qos=1, pid=3).rc == 0,
                          timeout=6.0, interval=0.25)
        assert time.monotonic() - t >= 1.8
        c.disconnect()


@pytest.mark.cyan_only
def test_publish_rate_v311_throttled_not_dropped(server_factory, counters_for):
    """A 3.1.1 client cannot hear a refusal: over max_publish_rate (10) it
    is not read until the rate allows. 30 QoS 1 publishes sent at once are
    all acknowledged and delivered, over about 2 s, on an open connection."""
    srv = server_factory(max_publish_rate=10)
    cnt = counters_for(srv, srv.add_device())
    cnt.snapshot("limit_publish_rate")
    topic = uniq("thr/")
    sub = Client(srv, srv.add_device(), version=5)
    sub.connect()
    sub.subscribe(topic, 1)
    c, _ = raw_connected(srv, srv.add_device(), version=4)
    with c, sub:
        t = time.monotonic()
        c.send(b"".join(rm.publish(topic, b"%d" % i, qos=1, pid=i, version=4)
                        for i in range(1, 31)))
        pids = [c.expect(rm.PUBACK, 8.0).pid for _ in range(30)]
        took = time.monotonic() - t
        assert pids == list(range(1, 31)), pids
        assert took >= 1.5, took  # 11 at once, then 10/s
        got = sub.get_n(30, timeout=5.0)
        assert [int(m.payload) for m in got] == list(range(1, 31))
        c.send(rm.pingreq())
        c.expect(rm.PINGRESP)
    cnt.grew("limit_publish_rate")


@pytest.mark.cyan_only
def test_coap_publish_rate_4_29(api_server_factory):
    """CoAP events over max_publish_rate get 4.29 Too Many Requests with a
    Max-Age in seconds (RFC 8516)."""
    import coapdev
    from coaptest import new_device
    srv = api_server_factory(coap_insecure=True, max_publish_rate=2)
    d = new_device(srv)
    dev = coapdev.Device("127.0.0.1", srv.coap_port, d["id"])
    try:
        codes = [dev.event("e", b"%d" % i).code for i in range(5)]
        ok = codes.count(coapdev.code(2, 4))
        assert 3 <= ok <= 4 and codes[ok:] == [coapdev.code(4, 29)] * (5 - ok), \
            [coapdev.code_text(x) for x in codes]
        r = dev.event("e", b"late")
        assert r.code == coapdev.code(4, 29)
        assert 1 <= int.from_bytes(r.opt(coapdev.MAX_AGE)[0], "big") <= 2, r
    finally:
        dev.close()


@pytest.mark.cyan_only
def test_coaps_handshakes_refused_while_address_locked_out(api_server_factory):
    """Unknown DTLS identities are failed logins of their address; once it
    is locked out, a handshake with a right identity and key fails too,
    until auth_lockout ends."""
    from test_coaps import CoapsProxy
    from coaptest import new_device
    srv = api_server_factory(limits_exempt="", auth_fail_burst=0, auth_fail_lockout_after=3,
                             auth_lockout=2)
    d = new_device(srv)
    for i in range(3):
        px = CoapsProxy(srv, "%024x" % (i + 1), d["psk"], timeout_ms=2500)
        assert not px.start(), px.line
    px = CoapsProxy(srv, d["id"], d["psk"], timeout_ms=2500)
    assert not px.start(), "a locked-out address completed a handshake"
    log = srv.log()
    assert "coaps: from 127.0.0.1: address locked out for 2 s: 3 failed logins within 60 s" in log
    assert "handshake for device '%s' refused: locked out after repeated" % d["id"] in log

    def handshake():
        p = CoapsProxy(srv, d["id"], d["psk"], timeout_ms=2500)
        if p.start():
            p.stop()
            return True
        return False
    assert wait_until(handshake, timeout=10.0, interval=0.3)
    assert d["psk"] not in srv.log()


# ------------------------------------------------------------------ slowloris

@pytest.mark.cyan_only
def test_connect_trickled_a_byte_at_a_time_is_cut_at_connect_timeout(server_factory,
                                                                    counters_for):
    """A CONNECT sent one byte every 0.25 s (10 s in all) is closed by
    connect_timeout (2 s), which runs from the accept, not from the last byte."""
    srv = server_factory(connect_timeout=2)
    cnt = counters_for(srv, srv.add_device())
    cnt.snapshot("connect_timeouts")
    dev = srv.add_device()
    data = rm.connect(uniq("s"), username=dev.id, password=dev.secret)
    assert len(data) >= 40
    with SourcedRaw(srv, "127.0.0.2") as c:
        t = time.monotonic()
        closed_after = None
        for i in range(len(data)):
            if not c.try_send(data[i:i + 1]) or not c.is_open(0.25):
                closed_after = time.monotonic() - t
                break
        assert closed_after is not None, "the trickled CONNECT was read to its end"
        assert 1.5 <= closed_after <= 4.5, closed_after
    cnt.grew("connect_timeouts")


@pytest.mark.cyan_only
def test_http_head_trickled_is_cut_at_request_timeout(api_server_factory):
    """A request head sent one byte every 0.25 s is closed by
    http_request_timeout (2 s) from the accept, long before it is whole."""
    srv = api_server_factory(http_request_timeout=2)
    data = http.head("GET", "/v1/health", extra=["X-Pad: %s" % ("a" * 60)])
    s = http.connect(srv, source="127.0.0.2")
    try:
        t = time.monotonic()
        closed_after = None
        for i in range(len(data)):
            try:
                s.sendall(data[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - t
                break
            if http.sees_close(s, 0.25):
                closed_after = time.monotonic() - t
                break
        assert closed_after is not None, "the trickled head was read to its end"
        assert 1.5 <= closed_after <= 4.5, closed_after
    finally:
        s.close()
