"""Session takeover: a second CONNECT with the same client id disconnects the
first connection (v5: DISCONNECT 0x8E) and, with clean start 0, continues its
session."""

import pytest

import rawmqtt as rm
from helpers import CYAN, Client, raw_connected, uniq


def test_v5_takeover_disconnects_first_with_0x8e(server, device):
    cid = uniq("tk")
    first, _ = raw_connected(server, device, client_id=cid)
    with first:
        second, _ = raw_connected(server, device, client_id=cid)
        with second:
            got = first.wait_closed(3.0)
            seen = [(type(p), getattr(p, "rc", None)) for p in got]
            if CYAN or seen:  # mosquitto 2.0.11 just closes
                assert seen == [(rm.Disconnect, 0x8E)]
            second.send(rm.pingreq())
            second.expect(rm.PINGRESP)
            second.disconnect()


def test_v311_takeover_closes_first(server, device):
    cid = uniq("tk3")
    first, _ = raw_connected(server, device, client_id=cid, version=4)
    with first:
        second, _ = raw_connected(server, device, client_id=cid, version=4)
        with second:
            assert first.wait_closed(3.0) == []
            second.send(rm.pingreq())
            second.expect(rm.PINGRESP)
            second.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_takeover_continues_session(server, new_device, version):
    dev = new_device()
    cid, topic = uniq("tks"), uniq("tks/")
    kw = dict(client_id=cid, version=version, clean=False)
    if version == 5:
        kw["props"] = [(rm.SESSION_EXPIRY_INTERVAL, 300)]
    first, _ = raw_connected(server, dev, **kw)
    with first:
        assert first.subscribe([(topic, 1)]).codes == [1]
        second, ack = raw_connected(server, dev, **kw)
        with second:
            assert ack.session_present == 1
            first.wait_closed(3.0)
            with Client(server, new_device()) as pub:
                pub.connect()
                pub.publish(topic, b"to-second", qos=1)
            p = second.recv_publish()
            assert (p.topic, p.payload) == (topic, b"to-second")
            second.disconnect()


def test_takeover_with_clean_start_discards_session(server, new_device):
    dev = new_device()
    cid, topic = uniq("tkc"), uniq("tkc/")
    first, _ = raw_connected(server, dev, client_id=cid, clean=False,
                             props=[(rm.SESSION_EXPIRY_INTERVAL, 300)])
    with first:
        first.subscribe([(topic, 1)])
        second, ack = raw_connected(server, dev, client_id=cid, clean=True)
        with second:
            assert ack.session_present == 0
            first.wait_closed(3.0)
            with Client(server, new_device()) as pub:
                pub.connect()
                pub.publish(topic, b"x", qos=1)
            second.expect_nothing(0.5)
            second.disconnect()


def test_takeover_by_paho_keeps_serving_others(server, new_device):
    """A takeover storm of one client id does not disturb another client."""
    dev = new_device()
    cid, topic = uniq("tkp"), uniq("tkp/")
    with Client(server, new_device()) as other:
        other.connect()
        other.subscribe(topic, 1)
        clients = []
        try:
            for _ in range(5):
                c = Client(server, dev, client_id=cid)
                c.connect()
                clients.append(c)
            for c in clients[:-1]:
                assert c.wait_gone(3.0), "taken-over connection still open"
            clients[-1].publish(topic, b"alive", qos=1)
            assert other.get().payload == b"alive"
        finally:
            for c in clients:
                c.close()
