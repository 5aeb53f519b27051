"""$SYS/cyan/<name>: retained decimal counters republished every
sys_interval (the tests run cyan with --sys_interval=1)."""

import re
import time

import pytest

import rawmqtt as rm
from helpers import Client, SysWatcher, raw, raw_connected, uniq, publish_props, wait_until

pytestmark = pytest.mark.cyan_only

COUNTERS = [
    "clients_connected", "connects_total", "connects_refused", "protocol_errors",
    "keepalive_timeouts", "connect_timeouts", "publish_received", "publish_sent",
    "messages_dropped", "messages_expired",
    "limit_packet_too_large", "limit_topic_too_long", "limit_queue_full",
    "limit_subscriptions", "limit_connections", "limit_receive_max", "limit_preauth",
    "limit_retained",
]


@pytest.fixture
def watcher(server):
    w = SysWatcher(server, server.add_device())
    yield w
    w.close()


def test_all_counters_published_retained(server, device):
    with Client(server, device) as c:
        c.connect()
        c.subscribe("$SYS/cyan/#", 0)
        seen = {}
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and not set(COUNTERS) <= set(seen):
            try:
                m = c.get(timeout=max(0.05, deadline - time.monotonic()))
            except AssertionError:
                break
            name = m.topic[len("$SYS/cyan/"):]
            if name not in seen:
                seen[name] = m
    missing = [n for n in COUNTERS if n not in seen]
    assert not missing, "counters never published: %s" % missing
    for n in COUNTERS:
        text = seen[n].payload.decode()
        assert text.isdigit(), "%s = %r is not a decimal" % (n, text)
        # the first copy a new subscriber gets is the retained one
        assert seen[n].retain, "%s not retained" % n


def test_connection_counters(server, new_device, watcher):
    base_total = watcher.wait("connects_total")
    base_now = watcher.wait("clients_connected", lambda v: v >= 1)
    base_ref = watcher.wait("connects_refused")
    dev = new_device()
    clients = [Client(server, dev) for _ in range(3)]
    try:
        for c in clients:
            c.connect()
        watcher.wait("clients_connected", lambda v: v >= base_now + 3)
        watcher.wait("connects_total", lambda v: v >= base_total + 3)
        with raw(server) as r:
            assert r.connect(uniq("bad"), username=dev.id, password="0" * 32).rc == 0x86
        watcher.wait("connects_refused", lambda v: v >= base_ref + 1)
    finally:
        for c in clients:
            c.close()
    watcher.wait("clients_connected", lambda v: v <= base_now)


def test_publish_counters(server, new_device, watcher):
    r0 = watcher.wait("publish_received")
    s0 = watcher.wait("publish_sent")
    topic = uniq("pc/")
    with Client(server, new_device()) as sub, Client(server, new_device()) as pub:
        sub.connect()
        sub.subscribe(topic, 1)
        pub.connect()
        for i in range(5):
            pub.publish(topic, b"x", qos=1)
        sub.get_n(5)
    watcher.wait("publish_received", lambda v: v >= r0 + 5)
    watcher.wait("publish_sent", lambda v: v >= s0 + 5)


def test_protocol_errors_counter(server, new_device, watcher):
    e0 = watcher.wait("protocol_errors")
    c, _ = raw_connected(server, new_device())
    with c:
        c.send(rm.packet(0, 0, b""))
        c.wait_closed(3.0)
    watcher.wait("protocol_errors", lambda v: v >= e0 + 1)


def test_keepalive_timeouts_counter(server, new_device, watcher):
    k0 = watcher.wait("keepalive_timeouts")
    c, _ = raw_connected(server, new_device(), keepalive=1)
    with c:
        c.wait_closed(4.0)
    watcher.wait("keepalive_timeouts", lambda v: v >= k0 + 1)


def test_connect_timeouts_counter(server_factory):
    srv = server_factory(connect_timeout=1)
    w = SysWatcher(srv, srv.add_device())
    try:
        t0 = w.wait("connect_timeouts")
        with raw(srv) as c:
            c.wait_closed(3.0)
        w.wait("connect_timeouts", lambda v: v >= t0 + 1)
    finally:
        w.close()


def test_messages_expired_counter(server, new_device, watcher):
    x0 = watcher.wait("messages_expired")
    dev = new_device()
    cid, topic = uniq("mx"), uniq("mx/")
    with Client(server, dev, client_id=cid, clean=False, session_expiry=300) as c:
        c.connect()
        c.subscribe(topic, 1)
        c.disconnect()
    with Client(server, new_device()) as pub:
        pub.connect()
        pub.publish(topic, b"e", qos=1, props=publish_props(MessageExpiryInterval=1))
    time.sleep(1.5)
    with Client(server, dev, client_id=cid, clean=False, session_expiry=300) as c:
        c.connect()
        c.expect_none(0.5)
    watcher.wait("messages_expired", lambda v: v >= x0 + 1)


_TOTAL = re.compile(r"^([a-z0-9_]+) +(\d+) +([a-z]*) +(counter|gauge)$")


def status_totals(server):
    """{name: (value, unit, kind)} from the totals `cyan status` prints
    after its shard table."""
    out = server.cli("status").stdout
    head, sep, tail = out.partition("\nnode totals over ")
    assert sep, out
    totals = {}
    for line in tail.splitlines()[1:]:
        m = _TOTAL.match(line)
        assert m, "not a totals line: %r\n%s" % (line, out)
        totals[m.group(1)] = (int(m.group(2)), m.group(3), m.group(4))
    return totals


def test_status_prints_node_totals(server, new_device):
    """`cyan status` prints every metric's node total (summed over the
    shards, whichever shard each client landed on) with unit and kind."""
    t0 = status_totals(server)
    assert set(COUNTERS) <= set(t0), t0
    assert len(t0) == 60, t0
    assert t0["clients_connected"][1:] == ("connections", "gauge")
    assert t0["publish_received"][1:] == ("packets", "counter")
    assert t0["sessions"][2] == "gauge" and t0["events"][2] == "counter"
    dev = new_device()
    topic = uniq("st/")
    clients = [Client(server, dev) for _ in range(4)]
    try:
        for c in clients:
            c.connect()
        for c in clients:
            c.publish(topic, b"x", qos=1)
        seen = {}

        def moved():
            seen.update(status_totals(server))
            return (seen["clients_connected"][0] >= t0["clients_connected"][0] + 4
                    and seen["connects_total"][0] >= t0["connects_total"][0] + 4
                    and seen["publish_received"][0] >= t0["publish_received"][0] + 4)

        assert wait_until(moved, timeout=10.0, interval=0.2), (t0, seen)
    finally:
        for c in clients:
            c.close()
