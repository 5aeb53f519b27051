"""Retained messages: set, replaced, cleared, kept across restarts, retain
handling and retain-as-published (v5), none for shared subscriptions."""

import pytest

import rawmqtt as rm
from helpers import Client, SubscribeOptions, raw_connected, uniq


def _retain(server, device, topic, payload, qos=1, version=5):
    with Client(server, device, version=version) as pub:
        pub.connect()
        pub.publish(topic, payload, qos=qos, retain=True)
        pub.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_retained_set_and_received_by_later_subscriber(server, new_device, version):
    topic = uniq("ret/")
    _retain(server, new_device(), topic, b"old", version=version)
    _retain(server, new_device(), topic, b"state", version=version)  # replaces
    with Client(server, new_device(), version=version) as sub:
        sub.connect()
        sub.subscribe(topic, 1)
        m = sub.get()
        assert (m.topic, m.payload, m.retain) == (topic, b"state", True)
        sub.expect_none(0.4)
        # a live message to an existing subscriber is not flagged retained (v3 rule,
        # and v5 without retain-as-published)
        _retain(server, new_device(), topic, b"live", version=version)
        m = sub.get()
        assert (m.payload, m.retain) == (b"live", False)


def test_retained_via_wildcard_subscription(server, new_device):
    base = uniq("rw")
    dev = new_device()
    for leaf in ("a", "b", "c/d"):
        _retain(server, dev, "%s/%s" % (base, leaf), leaf.encode())
    with Client(server, new_device()) as sub:
        sub.connect()
        sub.subscribe(base + "/+", 1)
        got = sorted((m.topic, m.payload, m.retain) for m in sub.drain(0.7))
    assert got == [(base + "/a", b"a", True), (base + "/b", b"b", True)]


def test_empty_retained_publish_clears(server, new_device):
    topic = uniq("clr/")
    dev = new_device()
    _retain(server, dev, topic, b"state")
    _retain(server, dev, topic, b"")
    with Client(server, new_device()) as sub:
        sub.connect()
        sub.subscribe(topic, 1)
        sub.expect_none(0.7)


def test_retained_qos_is_min_of_stored_and_subscription(server, new_device):
    topic = uniq("rq/")
    _retain(server, new_device(), topic, b"s", qos=2)
    with Client(server, new_device()) as sub:
        sub.connect()
        sub.subscribe(topic, 1)
        m = sub.get()
        assert (m.payload, m.qos, m.retain) == (b"s", 1, True)


# mosquitto saves its database only periodically, so SIGKILL is cyan-only.
@pytest.mark.parametrize("kill", [False, pytest.param(True, marks=pytest.mark.cyan_only)],
                         ids=["sigterm", "sigkill"])
def test_retained_survive_restart(server, new_device, kill):
    topic = uniq("rr/")
    cleared = uniq("rc/")
    dev = new_device()
    _retain(server, dev, topic, b"persisted", qos=1)
    _retain(server, dev, cleared, b"gone", qos=1)
    _retain(server, dev, cleared, b"", qos=1)
    server.restart(kill=kill)
    with Client(server, dev) as sub:
        sub.connect()
        sub.subscribe([(topic, SubscribeOptions(qos=1)), (cleared, SubscribeOptions(qos=1))])
        msgs = sub.drain(0.7)
    assert [(m.topic, m.payload, m.retain) for m in msgs] == [(topic, b"persisted", True)]


def test_retain_handling(server, new_device):
    """0: send on every subscribe; 1: only if the subscription is new; 2: never."""
    topic = uniq("rh/")
    _retain(server, new_device(), topic, b"r")
    with Client(server, new_device()) as sub:
        sub.connect()
        for rh, first, again in ((0, 1, 1), (1, 1, 0), (2, 0, 0)):
            sub.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=rh))
            assert len(sub.drain(0.5)) == first, "retain handling %d, new subscription" % rh
            sub.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=rh))
            assert len(sub.drain(0.5)) == again, "retain handling %d, existing subscription" % rh
            sub.c.unsubscribe(topic)
            sub.drain(0.2)


def test_retain_as_published(server, new_device):
    base = uniq("rap")
    with Client(server, new_device()) as sub:
        sub.connect()
        sub.subscribe(base + "/keep", options=SubscribeOptions(qos=1, retainAsPublished=True))
        sub.subscribe(base + "/clear", options=SubscribeOptions(qos=1, retainAsPublished=False))
        with Client(server, new_device()) as pub:
            pub.connect()
            pub.publish(base + "/keep", b"k", qos=1, retain=True)
            pub.publish(base + "/clear", b"c", qos=1, retain=True)
            pub.publish(base + "/keep", b"n", qos=1, retain=False)
        got = sorted((m.topic, m.payload, m.retain) for m in sub.drain(0.7))
    assert got == [(base + "/clear", b"c", False), (base + "/keep", b"k", True),
                   (base + "/keep", b"n", False)]


# mosquitto 2.0.11 does send retained messages to shared subscriptions.
@pytest.mark.cyan_only
def test_shared_subscription_gets_no_retained(server, new_device):
    topic = uniq("rs/")
    _retain(server, new_device(), topic, b"r")
    c, _ = raw_connected(server, new_device())
    with c:
        ack = c.subscribe([("$share/g1/" + topic, rm.sub_options(qos=1))])
        assert ack.codes == [1]
        c.expect_nothing(0.7)
        # but live messages do arrive
        with Client(server, new_device()) as pub:
            pub.connect()
            pub.publish(topic, b"live", qos=1)
        p = c.recv_publish()
        assert (p.topic, p.payload, p.retain) == (topic, b"live", False)
        c.disconnect()
