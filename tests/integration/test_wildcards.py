"""Topic filters: '+' and '#', the '$' rule, overlapping subscriptions and
subscription identifiers."""

import pytest

import rawmqtt as rm
from helpers import Client, SubscribeOptions, Properties, PacketTypes, raw_connected, uniq


def _publish_all(server, device, topics, qos=1):
    with Client(server, device) as pub:
        pub.connect()
        for t in topics:
            pub.publish(t, t.encode(), qos=qos)


def test_single_level_wildcard(server, new_device):
    base = uniq("w")
    with Client(server, new_device()) as sub:
        sub.connect()
        sub.subscribe(base + "/+/c", 1)
        sub.subscribe("+/" + base + "/+", 1)
        _publish_all(server, new_device(), [
            base + "/b/c", base + "/b/d", base + "/b/c/d", base + "//c", base + "/c",
            "x/" + base + "/y", "x/" + base, "x/" + base + "/y/z"])
        got = sorted(m.topic for m in sub.drain(0.7))
    assert got == sorted([base + "/b/c", base + "//c", "x/" + base + "/y"])


def test_multi_level_wildcard(server, new_device):
    base = uniq("m")
    with Client(server, new_device()) as sub:
        sub.connect()
        sub.subscribe(base + "/a/#", 1)
        _publish_all(server, new_device(), [
            base + "/a", base + "/a/b", base + "/a/b/c", base + "/a/", base + "/ab", base])
        got = sorted(m.topic for m in sub.drain(0.7))
    # "a/#" also matches the parent level "a".
    assert got == sorted([base + "/a", base + "/a/b", base + "/a/b/c", base + "/a/"])


def test_dollar_topics_not_matched_by_leading_wildcards(server, new_device):
    mark = uniq("d")
    with Client(server, new_device()) as all_, Client(server, new_device()) as sys_, \
            Client(server, new_device()) as plus:
        for c in (all_, sys_, plus):
            c.connect()
        all_.subscribe("#", 0)
        plus.subscribe("+/#", 0)
        sys_.subscribe("$SYS/#", 0)
        # $SYS topics are retained / republished every sys_interval (1 s).
        m = sys_.get(timeout=3.5)
        assert m.topic.startswith("$SYS/")
        _publish_all(server, new_device(), [mark + "/x"], qos=1)
        for c in (all_, plus):
            got = [m.topic for m in c.drain(1.2)]
            assert mark + "/x" in got
            assert not [t for t in got if t.startswith("$")], got


# mosquitto sends one copy per matching subscription; cyan sends one.
@pytest.mark.cyan_only
def test_overlapping_subscriptions_delivered_once_at_highest_qos(server, new_device):
    base = uniq("o")
    with Client(server, new_device(), version=5) as sub:
        sub.connect()
        assert sub.subscribe(base + "/#", 0) == [0]
        assert sub.subscribe(base + "/+", 2) == [2]
        assert sub.subscribe(base + "/t", 1) == [1]
        _publish_all(server, new_device(), [base + "/t"], qos=2)
        msgs = sub.drain(0.7)
    assert [(m.topic, m.qos) for m in msgs] == [(base + "/t", 2)]


# mosquitto sends one copy per matching subscription; cyan sends one.
@pytest.mark.cyan_only
def test_overlapping_subscriptions_v311_once(server, new_device):
    base = uniq("o3")
    with Client(server, new_device(), version=4) as sub:
        sub.connect()
        sub.subscribe([(base + "/#", 1), (base + "/t", 0)])
        _publish_all(server, new_device(), [base + "/t"], qos=1)
        msgs = sub.drain(0.7)
    assert [(m.topic, m.qos) for m in msgs] == [(base + "/t", 1)]


# mosquitto sends one copy per matching subscription; cyan sends one.
@pytest.mark.cyan_only
def test_v5_publish_carries_all_subscription_identifiers(server, new_device):
    base = uniq("si")
    with Client(server, new_device(), version=5) as sub:
        sub.connect()
        for filt, sid in ((base + "/#", 11), (base + "/+", 2000)):
            p = Properties(PacketTypes.SUBSCRIBE)
            p.SubscriptionIdentifier = sid
            assert sub.subscribe(filt, options=SubscribeOptions(qos=1), props=p) == [1]
        sub.subscribe(base + "/zz", 1)  # no identifier
        _publish_all(server, new_device(), [base + "/t", base + "/zz", base + "/x/y"], qos=1)
        msgs = {m.topic: m for m in sub.drain(0.7)}
    assert set(msgs) == {base + "/t", base + "/zz", base + "/x/y"}
    assert [m.qos for m in msgs.values()] == [1, 1, 1]

    def ids(topic):
        return sorted(getattr(msgs[topic].properties, "SubscriptionIdentifier", []))
    assert ids(base + "/t") == [11, 2000]
    assert ids(base + "/zz") == [11, 2000], "a subscription without identifier adds none"
    assert ids(base + "/x/y") == [11], "only the identifier of the matching '#' subscription"


# mosquitto sends one copy per matching subscription; cyan sends one.
@pytest.mark.cyan_only
def test_raw_subscription_identifier_on_wire(server, new_device):
    """Same check byte-exact: one PUBLISH, both identifiers."""
    base = uniq("sr")
    c, _ = raw_connected(server, new_device())
    with c:
        assert c.subscribe([(base + "/#", 1)], pid=1,
                           props=[(rm.SUBSCRIPTION_IDENTIFIER, 5)]).codes == [1]
        assert c.subscribe([(base + "/a", 0)], pid=2,
                           props=[(rm.SUBSCRIPTION_IDENTIFIER, 300)]).codes == [0]
        _publish_all(server, new_device(), [base + "/a"], qos=1)
        p = c.recv_publish()
        assert p.topic == base + "/a" and p.qos == 1
        assert sorted(p.props.get_list("subscription_identifier")) == [5, 300]
        c.expect_nothing(0.5)
        c.disconnect()
