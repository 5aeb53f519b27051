"""Publish/subscribe at QoS 0, 1 and 2 with real clients (mosquitto_pub/sub
in 3.1.1 and 5.0, paho), QoS downgrade, exactly-once delivery and duplicate
suppression of a re-sent QoS 2 PUBLISH."""

import pytest

import rawmqtt as rm
from helpers import Client, MosquittoSub, mosquitto_pub, raw_connected, uniq


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_clients_pubsub(server, new_device, version, qos):
    pub_dev, sub_dev = new_device(), new_device()
    topic = uniq("mc/")
    sub = MosquittoSub(server, sub_dev, topic, qos=qos, version=version, count=3, wait=5)
    try:
        for i in range(3):
            mosquitto_pub(server, pub_dev, topic, "m%d" % i, qos=qos, version=version)
        got = sub.messages()
    finally:
        sub.close()
    assert [(t, q, p) for t, q, r, p in got] == [(topic, qos, "m%d" % i) for i in range(3)]


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_paho_pubsub(server, new_device, version, qos):
    topic = uniq("p/")
    with Client(server, new_device(), version=version) as sub, \
            Client(server, new_device(), version=version) as pub:
        sub.connect()
        assert sub.subscribe(topic, qos) == [qos]
        pub.connect()
        for i in range(5):
            pub.publish(topic, b"x%d" % i, qos=qos)
        msgs = sub.get_n(5)
        assert [m.payload for m in msgs] == [b"x%d" % i for i in range(5)]
        assert all(m.qos == qos and m.topic == topic for m in msgs)
        sub.expect_none(0.3)


@pytest.mark.parametrize("pub_qos,sub_qos", [(2, 1), (2, 0), (1, 0), (0, 2), (1, 2)])
def test_qos_downgrade_to_subscription(server, new_device, pub_qos, sub_qos):
    topic = uniq("dg/")
    sub = MosquittoSub(server, new_device(), topic, qos=sub_qos, count=1, wait=5)
    try:
        mosquitto_pub(server, new_device(), topic, "hello", qos=pub_qos)
        got = sub.messages()
    finally:
        sub.close()
    assert got == [(topic, min(pub_qos, sub_qos), 0, "hello")]


def test_qos2_exactly_once_paho(server, new_device):
    topic = uniq("eo/")
    n = 50
    with Client(server, new_device()) as sub, Client(server, new_device()) as pub:
        sub.connect()
        sub.subscribe(topic, 2)
        pub.connect()
        for i in range(n):
            pub.publish(topic, b"%d" % i, qos=2, wait=False)
        msgs = sub.get_n(n, timeout=10)
        payloads = [m.payload for m in msgs]
        assert sorted(payloads, key=int) == [b"%d" % i for i in range(n)]
        assert len(set(payloads)) == n
        assert payloads == [b"%d" % i for i in range(n)], "order within one publisher kept"
        assert sub.drain(0.5) == []


def test_qos2_duplicate_publish_delivered_once(server, new_device):
    """A QoS 2 PUBLISH re-sent with DUP before PUBREL is one message."""
    topic = uniq("dup/")
    with Client(server, new_device()) as sub:
        sub.connect()
        sub.subscribe(topic, 2)
        c, _ = raw_connected(server, new_device())
        with c:
            c.send(rm.publish(topic, b"once", qos=2, pid=7))
            rec = c.expect(rm.PUBREC)
            assert rec.pid == 7 and rec.rc == 0
            c.send(rm.publish(topic, b"once", qos=2, pid=7, dup=True))
            rec2 = c.expect(rm.PUBREC)
            assert rec2.pid == 7
            c.send(rm.pubrel(7))
            comp = c.expect(rm.PUBCOMP)
            assert comp.pid == 7 and comp.rc == 0
            m = sub.get()
            assert (m.topic, m.payload) == (topic, b"once")
            sub.expect_none(0.7)
            c.disconnect()
