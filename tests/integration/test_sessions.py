"""Persistent sessions: subscriptions and QoS 1/2 messages kept for an
offline client (v3 clean_session=0, v5 clean_start=0 with session expiry),
across SIGKILL and restart of cyan; session expiry 0; re-sending of
unacknowledged messages with DUP."""

import time

import pytest

import rawmqtt as rm
from helpers import Client, PacketTypes, Properties, raw_connected, uniq


def _persistent(server, dev, cid, version, **kw):
    if version == 5:
        return Client(server, dev, client_id=cid, version=5, clean=False,
                      session_expiry=kw.pop("session_expiry", 300), **kw)
    return Client(server, dev, client_id=cid, version=4, clean=False, **kw)


def _publish(server, dev, topic, payloads, qos=1):
    with Client(server, dev) as pub:
        pub.connect()
        for p in payloads:
            pub.publish(topic, p, qos=qos)
        pub.disconnect()


# "Nothing more arrived" is proved with a barrier, not a sleep: a message
# published afterwards must be the next one to arrive (one publisher's
# messages reach a session in order), so anything that should not have come
# would have come before it, however slow the server is.
BARRIER = b"barrier"


def _assert_not_subscribed(server, new_device, c, topic):
    """c holds no subscription to topic: a message on it and then one on
    topic/b (which c subscribes to now) are published; only the second
    comes."""
    c.subscribe(topic + "/b", 1)
    with Client(server, new_device()) as pub:
        pub.connect()
        pub.publish(topic, b"stale", qos=1)
        pub.publish(topic + "/b", BARRIER, qos=1)
    assert _until_barrier(c) == []


def _until_barrier(c, timeout=5.0):
    """Payloads a paho Client gets up to the barrier (excluded)."""
    got = []
    while True:
        m = c.get(timeout)
        if m.payload == BARRIER:
            return got
        got.append((m.payload, m.qos))


def _raw_barrier_next(c, server, topic, timeout=5.0):
    """Publish the barrier (QoS 0) to topic and assert that it is the next
    packet the raw client c gets."""
    _publish(server, server.add_device(), topic, [BARRIER], qos=0)
    p = c.read(timeout=timeout)
    assert isinstance(p, rm.Publish) and p.payload == BARRIER, \
        "expected only the barrier, got %r" % (p,)


@pytest.mark.parametrize("version", [4, 5])
def test_offline_messages_delivered_on_reconnect(server, new_device, version):
    dev, pubdev = new_device(), new_device()
    cid, topic = uniq("ps"), uniq("ps/")
    with _persistent(server, dev, cid, version) as c:
        sp, _, _ = c.connect(clean=True if version == 5 else None)
        c.subscribe(topic, 1)
        c.disconnect()
    _publish(server, pubdev, topic, [b"q1-a", b"q1-b"], qos=1)
    _publish(server, pubdev, topic, [b"q0"], qos=0)
    _publish(server, pubdev, topic, [b"q2"], qos=2)
    with _persistent(server, dev, cid, version) as c:
        sp, rc, _ = c.connect()
        assert (sp, rc) == (1, 0)
        _publish(server, pubdev, topic, [BARRIER], qos=1)
        got = _until_barrier(c)
    got = [g for g in got if g[0] != b"q0"]  # QoS 0 while offline: optional
    assert got == [(b"q1-a", 1), (b"q1-b", 1), (b"q2", 1)]


@pytest.mark.cyan_only
@pytest.mark.parametrize("version", [4, 5])
def test_queued_message_survives_sigkill_and_restart(server, new_device, version):
    """The issue's key test: a QoS 1 message sent to an offline persistent
    session is delivered after cyan is killed with SIGKILL and restarted."""
    dev, pubdev = new_device(), new_device()
    cid, topic = uniq("sk"), uniq("sk/")
    with _persistent(server, dev, cid, version) as c:
        c.connect()
        assert c.subscribe(topic, 1) == [1]
        c.disconnect()
    _publish(server, pubdev, topic, [b"must-survive"], qos=1)  # PUBACK: on disk
    server.restart(kill=True)
    with _persistent(server, dev, cid, version) as c:
        sp, rc, _ = c.connect()
        assert (sp, rc) == (1, 0), "session lost across SIGKILL"
        m = c.get(3.0)
        assert (m.topic, m.payload, m.qos) == (topic, b"must-survive", 1)
        # the subscription survived too, and "after" is the next message:
        # must-survive came once
        _publish(server, pubdev, topic, [b"after"], qos=1)
        assert c.get().payload == b"after"
        c.disconnect()


@pytest.mark.cyan_only
def test_session_survives_sigterm_restart(server, new_device):
    dev, pubdev = new_device(), new_device()
    cid, topic = uniq("st"), uniq("st/")
    with _persistent(server, dev, cid, 5) as c:
        c.connect()
        c.subscribe(topic, 2)
        c.disconnect()
    _publish(server, pubdev, topic, [b"a", b"b"], qos=2)
    server.restart()
    with _persistent(server, dev, cid, 5) as c:
        sp, _, _ = c.connect()
        assert sp == 1
        assert [m.payload for m in c.get_n(2)] == [b"a", b"b"]
        _publish(server, pubdev, topic, [BARRIER], qos=1)
        assert _until_barrier(c) == []


@pytest.mark.cyan_only
def test_inflight_message_survives_sigkill(server, new_device):
    """A message sent but not acknowledged before the kill is re-sent with DUP."""
    dev, pubdev = new_device(), new_device()
    cid, topic = uniq("sf"), uniq("sf/")
    c, _ = raw_connected(server, dev, client_id=cid, clean=False,
                         props=[(rm.SESSION_EXPIRY_INTERVAL, 300)])
    with c:
        c.subscribe([(topic, rm.sub_options(qos=1))])
        # Under load a SUBACK may go before every shard knows the new
        # interest (it is held for at most 1 s): wait until a message from
        # the publisher's shard arrives before the one that matters.
        _publish(server, pubdev, topic, [b"ready"], qos=1)
        p = c.expect(rm.PUBLISH, timeout=10.0)
        assert p.payload == b"ready"
        c.send(rm.puback(p.pid))
        _publish(server, pubdev, topic, [b"unacked"], qos=1)
        p = c.expect(rm.PUBLISH)
        assert p.payload == b"unacked" and not p.dup
        c.abort()
    server.restart(kill=True)
    # The port accepts as soon as the supervisor listens; a shard that is
    # not up yet makes a CONNECT handed to it fail with 0x88. Wait for all.
    server.wait_api_healthy()
    c, ack = raw_connected(server, dev, client_id=cid, clean=False,
                           props=[(rm.SESSION_EXPIRY_INTERVAL, 300)])
    with c:
        assert ack.session_present == 1
        p = c.expect(rm.PUBLISH)
        assert (p.payload, p.qos, p.dup) == (b"unacked", 1, True)
        c.send(rm.puback(p.pid))
        _raw_barrier_next(c, server, topic)  # acknowledged: not sent again
        c.disconnect()


def test_session_expiry_zero_ends_session(server, new_device):
    dev = new_device()
    cid, topic = uniq("se0"), uniq("se0/")
    with Client(server, dev, client_id=cid, clean=False, session_expiry=0) as c:
        c.connect()
        c.subscribe(topic, 1)
        c.disconnect()
    _publish(server, new_device(), topic, [b"x"])
    with Client(server, dev, client_id=cid, clean=False, session_expiry=60) as c:
        sp, _, _ = c.connect()
        assert sp == 0
        # the old subscription is gone: of these two, only the barrier comes
        _assert_not_subscribed(server, new_device, c, topic)


def test_session_expiry_elapses(server, new_device):
    dev = new_device()
    cid, topic = uniq("se1"), uniq("se1/")
    with Client(server, dev, client_id=cid, clean=False, session_expiry=1) as c:
        c.connect()
        c.subscribe(topic, 1)
        c.disconnect()
    time.sleep(2.0)
    with Client(server, dev, client_id=cid, clean=False, session_expiry=60) as c:
        sp, _, _ = c.connect()
        assert sp == 0


def test_disconnect_can_shorten_session_expiry(server, new_device):
    """v5 DISCONNECT may set the session expiry (here to 0) when CONNECT had one > 0."""
    dev = new_device()
    cid = uniq("sd")
    with Client(server, dev, client_id=cid, clean=False, session_expiry=60) as c:
        c.connect()
        c.subscribe(uniq("sd/"), 1)
        p = Properties(PacketTypes.DISCONNECT)
        p.SessionExpiryInterval = 0
        c.disconnect(props=p)
    with Client(server, dev, client_id=cid, clean=False, session_expiry=60) as c:
        sp, _, _ = c.connect()
        assert sp == 0


def test_v311_clean_session_discards(server, new_device):
    dev = new_device()
    cid, topic = uniq("cs"), uniq("cs/")
    with Client(server, dev, client_id=cid, version=4, clean=False) as c:
        c.connect()
        c.subscribe(topic, 1)
        c.disconnect()
    with Client(server, dev, client_id=cid, version=4, clean=True) as c:
        sp, _, _ = c.connect()
        assert sp == 0
        c.disconnect()
    _publish(server, new_device(), topic, [b"x"])
    with Client(server, dev, client_id=cid, version=4, clean=False) as c:
        sp, _, _ = c.connect()
        assert sp == 0
        _assert_not_subscribed(server, new_device, c, topic)


@pytest.mark.parametrize("version", [4, 5])
def test_unacked_qos1_resent_with_dup(server, new_device, version):
    dev = new_device()
    cid, topic = uniq("dp"), uniq("dp/")
    kw = dict(client_id=cid, version=version, clean=False)
    if version == 5:
        kw["props"] = [(rm.SESSION_EXPIRY_INTERVAL, 300)]
    c, _ = raw_connected(server, dev, **kw)
    with c:
        c.subscribe([(topic, 1)])
        _publish(server, new_device(), topic, [b"m1"], qos=1)
        p = c.expect(rm.PUBLISH)
        assert (p.payload, p.qos, p.dup) == (b"m1", 1, False)
        c.disconnect()  # without PUBACK
    c, ack = raw_connected(server, dev, **kw)
    with c:
        assert ack.session_present == 1
        p2 = c.expect(rm.PUBLISH, timeout=3.0)
        assert (p2.payload, p2.qos, p2.dup) == (b"m1", 1, True)
        c.send(rm.puback(p2.pid, version=version))
        _raw_barrier_next(c, server, topic)
        c.disconnect()


def test_unacked_qos2_publish_and_pubrel_resent(server, new_device):
    """QoS 2: an unacknowledged PUBLISH is re-sent with DUP; after PUBREC the
    server re-sends PUBREL (not the PUBLISH)."""
    dev = new_device()
    cid, topic = uniq("d2"), uniq("d2/")
    kw = dict(client_id=cid, clean=False, props=[(rm.SESSION_EXPIRY_INTERVAL, 300)])
    c, _ = raw_connected(server, dev, **kw)
    with c:
        c.subscribe([(topic, 2)])
        _publish(server, new_device(), topic, [b"a", b"b"], qos=2)
        pa = c.expect(rm.PUBLISH)
        pb = c.expect(rm.PUBLISH)
        assert (pa.payload, pb.payload) == (b"a", b"b")
        c.send(rm.pubrec(pa.pid))       # "a" received, "b" not
        rel = c.expect(rm.PUBREL)
        assert rel.pid == pa.pid
        c.disconnect()                  # no PUBCOMP
    c, ack = raw_connected(server, dev, **kw)
    with c:
        assert ack.session_present == 1
        got = [c.read(timeout=3.0), c.read(timeout=3.0)]
        rels = [p for p in got if isinstance(p, rm.Ack) and p.type == rm.PUBREL]
        pubs = [p for p in got if isinstance(p, rm.Publish)]
        assert [r.pid for r in rels] == [pa.pid], got
        assert [(p.payload, p.dup) for p in pubs] == [(b"b", True)], got
        c.send(rm.pubcomp(pa.pid))
        c.send(rm.pubrec(pubs[0].pid))
        assert c.expect(rm.PUBREL).pid == pubs[0].pid
        c.send(rm.pubcomp(pubs[0].pid))
        _raw_barrier_next(c, server, topic)
        c.disconnect()
