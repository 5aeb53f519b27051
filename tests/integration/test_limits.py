"""Limits, each with its reason code and its counter ($SYS/cyan/<name>,
retained, republished every sys_interval): packet size, topic length, queue
length of an offline session, subscriptions per session, connections,
inbound receive maximum."""

import time

import pytest

import rawmqtt as rm
from helpers import CYAN, Client, SysWatcher, raw, raw_connected, uniq


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
