"""Retained message limits (max_retained, max_retained_bytes,
max_retained_per_client, max_retained_bytes_per_client) and giving the disk
space of cleared retained messages back.

Over a limit a retained PUBLISH is refused: MQTT 5 QoS 1/2 get 0x97 (Quota
exceeded) in the PUBACK/PUBREC, QoS 0 is dropped, a 3.1.1 client is
disconnected; every refusal counts limit_retained. Replacing counts only the
difference in size, clearing always works. Whether a refused message was
kept is checked by subscribing to it and then to a topic known to be
retained: retained messages come in the order of the filters, so the
sentinel's arrival proves the refused one was not sent."""

import glob
import os
import threading
import time

import pytest

import rawmqtt as rm
from helpers import Client, SysWatcher, raw_connected, uniq, wait_until

pytestmark = pytest.mark.cyan_only


class AckCodes:
    """The reason code of each PUBACK a paho 5 client gets (paho 1.6 parses
    it and drops it: read the byte before paho handles the packet)."""

    def __init__(self, client):
        self.codes = {}
        self.cv = threading.Condition()
        c = client.c
        orig = c._handle_pubackcomp

        def hook(cmd):
            pkt = c._in_packet
            mid = int.from_bytes(pkt["packet"][:2], "big")
            code = pkt["packet"][2] if pkt["remaining_length"] > 2 else 0
            with self.cv:
                self.codes[mid] = code
                self.cv.notify_all()
            return orig(cmd)
        c._handle_pubackcomp = hook

    def wait(self, mid, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.cv:
            while mid not in self.codes:
                left = deadline - time.monotonic()
                assert left > 0, "no PUBACK for mid %d within %.1fs" % (mid, timeout)
                self.cv.wait(left)
            return self.codes.pop(mid)


def publish_rc(client, acks, topic, payload, qos=1):
    info = client.publish(topic, payload, qos=qos, retain=True, wait=False)
    return acks.wait(info.mid)


def retained_now(server, device, topics, sentinel):
    """Which of topics hold a retained message, proven by the sentinel's
    (a topic known to be retained) arriving after them."""
    with Client(server, device) as sub:
        sub.connect()
        sub.subscribe([(t, 1) for t in topics] + [(sentinel, 1)])
        got = []
        for _ in range(len(topics) + 1):
            m = sub.get(timeout=5.0)
            if m.topic == sentinel:
                return got
            got.append((m.topic, m.payload))
        raise AssertionError("sentinel %s never arrived: %r" % (sentinel, got))


def counter(server, device, name, pred, timeout=6.0):
    w = SysWatcher(server, device)
    try:
        return w.wait(name, pred, timeout=timeout)
    finally:
        w.close()


def test_per_client_limit_v5_quota_exceeded(server_factory):
    srv = server_factory(max_retained_per_client=3)
    dev, other = srv.add_device(), srv.add_device()
    base = uniq("rl")
    t = ["%s/%d" % (base, i) for i in range(5)]
    with Client(srv, dev) as pub:
        acks = AckCodes(pub)
        pub.connect()
        for i in range(3):
            assert publish_rc(pub, acks, t[i], b"v%d" % i) == 0
        assert publish_rc(pub, acks, t[3], b"over") == 0x97  # a 4th topic
        assert publish_rc(pub, acks, t[0], b"replaced") == 0  # replacing: not a new one
        assert publish_rc(pub, acks, t[1], b"") == 0  # clearing always works
        assert publish_rc(pub, acks, t[3], b"now fits") == 0  # room again
        assert publish_rc(pub, acks, t[4], b"over") == 0x97
        # QoS 0 over the limit: dropped, the connection stays
        pub.publish(t[4], b"qos0", qos=0, retain=True)
        assert publish_rc(pub, acks, t[2], b"still here") == 0
        # another client has its own allowance
    with Client(srv, other) as o:
        oacks = AckCodes(o)
        o.connect()
        assert publish_rc(o, oacks, base + "/other", b"o") == 0
    got = retained_now(srv, srv.add_device(), t, base + "/other")
    assert sorted(got) == [(t[0], b"replaced"), (t[2], b"still here"), (t[3], b"now fits")]
    assert counter(srv, dev, "limit_retained", lambda v: v >= 3) >= 3


def test_per_client_limit_v311_disconnected(server_factory):
    srv = server_factory(max_retained_per_client=2)
    dev = srv.add_device()
    base = uniq("r3")
    cid = uniq("c3")
    c, _ = raw_connected(srv, dev, client_id=cid, version=4)
    with c:
        assert c.publish(base + "/a", b"a", qos=1, retain=True, pid=1).rc == 0
        assert c.publish(base + "/b", b"b", qos=1, retain=True, pid=2).rc == 0
        c.send(rm.publish(base + "/c", b"c", qos=1, retain=True, pid=3, version=4))
        assert c.wait_closed(3.0) == []  # no PUBACK: closed
    c, _ = raw_connected(srv, dev, client_id=cid, version=4)
    with c:
        # clearing works at the limit, then a new topic fits again
        assert c.publish(base + "/a", b"", qos=1, retain=True, pid=4).rc == 0
        assert c.publish(base + "/c", b"c", qos=1, retain=True, pid=5).rc == 0
        c.disconnect()
    got = retained_now(srv, srv.add_device(), [base + "/a", base + "/c"], base + "/b")
    assert got == [(base + "/c", b"c")]


def test_per_client_bytes_counts_replacement_difference(server_factory):
    srv = server_factory(max_retained_bytes_per_client=3000)
    dev = srv.add_device()
    t = uniq("rb/")
    with Client(srv, dev) as pub:
        acks = AckCodes(pub)
        pub.connect()
        assert publish_rc(pub, acks, t, b"x" * 2000) == 0
        # replacing 2000 bytes by 2900: within 3000 (not 4900)
        assert publish_rc(pub, acks, t, b"y" * 2900) == 0
        assert publish_rc(pub, acks, t + "/2", b"z" * 200) == 0x97
        assert publish_rc(pub, acks, t, b"") == 0
        assert publish_rc(pub, acks, t + "/2", b"z" * 200) == 0


def test_node_wide_count_across_clients(server_factory):
    """Every shard holds every retained message, so the node's count is
    known where each client publishes."""
    srv = server_factory(max_retained=3)
    base = uniq("rn")
    devs = [srv.add_device() for _ in range(4)]
    for i, d in enumerate(devs[:3]):
        with Client(srv, d) as pub:
            acks = AckCodes(pub)
            pub.connect()
            assert publish_rc(pub, acks, "%s/%d" % (base, i), b"v") == 0
    with Client(srv, devs[3]) as pub:
        acks = AckCodes(pub)
        pub.connect()
        assert publish_rc(pub, acks, base + "/3", b"v") == 0x97
        assert publish_rc(pub, acks, base + "/0", b"replaced by another") == 0


def _db_bytes(srv):
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(srv.data_dir, "shard-*.db")))


def test_cleared_retained_space_is_given_back(server_factory):
    srv = server_factory(max_retained_bytes_per_client=0, max_retained_bytes=0)
    dev = srv.add_device()
    base = uniq("rd")
    big = os.urandom(512 * 1024)
    n = 24
    with Client(srv, dev) as pub:
        pub.connect()
        for i in range(n):
            pub.publish("%s/%d" % (base, i), big, qos=1, retain=True)
        # every shard holds the 12 MB; checkpoints move it into the files
        assert wait_until(lambda: _db_bytes(srv) > 8 * 1024 * 1024, timeout=20), _db_bytes(srv)
        full = _db_bytes(srv)
        for i in range(n):
            pub.publish("%s/%d" % (base, i), b"", qos=1, retain=True)
    assert wait_until(lambda: _db_bytes(srv) < full // 4, timeout=30, interval=0.2), (
        "shard files %d bytes after clearing, %d before" % (_db_bytes(srv), full))


@pytest.mark.parametrize("version", [4, 5])
def test_retained_will_over_the_limit_refuses_connect(server_factory, version):
    """A will is a publish: a retained will that its client's allowance
    cannot hold refuses the CONNECT (MQTT 5 0x97, 3.1.1 return code 5)
    instead of being accepted and then silently not kept."""
    srv = server_factory(max_retained_per_client=1)
    dev = srv.add_device()
    cid = uniq("rw")
    with Client(srv, dev, client_id=cid) as pub:
        pub.connect()
        pub.publish(uniq("rw/") + "/kept", b"1", qos=1, retain=True)
    will = dict(topic=uniq("rw/") + "/will", payload=b"gone", retain=True)
    c, ack = raw_connected_rc(srv, dev, cid, version, will)
    with c:
        assert ack.rc == (0x97 if version == 5 else 5), ack
    # not retained: a QoS 0 will is fine, and so is a will on the same client
    # once its allowance has room
    c, ack = raw_connected_rc(srv, dev, cid, version, dict(will, retain=False))
    with c:
        assert ack.rc == 0, ack


def raw_connected_rc(srv, dev, cid, version, will):
    from helpers import raw
    c = raw(srv, version)
    ack = c.connect(cid, username=dev.id, password=dev.secret, will=will)
    return c, ack
