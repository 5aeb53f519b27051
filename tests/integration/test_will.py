"""Will messages: sent when the connection drops without DISCONNECT, not after
a normal DISCONNECT, sent after v5 DISCONNECT 0x04, and the v5 will delay
(cancelled by a reconnect of the same session within the delay)."""

import time

import pytest

from helpers import Client, PacketTypes, Properties, raw, uniq


def _watch(server, device, topic):
    w = Client(server, device)
    w.connect()
    w.subscribe(topic, 1)
    return w


@pytest.mark.parametrize("version", [4, 5])
def test_will_on_socket_close_raw(server, new_device, version):
    topic = uniq("will/")
    with _watch(server, new_device(), topic) as w:
        dev = new_device()
        c = raw(server, version)
        ack = c.connect(uniq("wr"), username=dev.id, password=dev.secret,
                        will=dict(topic=topic, payload=b"gone", qos=1))
        assert ack.rc == 0
        c.abort()
        m = w.get(3.0)
        assert (m.topic, m.payload, m.qos) == (topic, b"gone", 1)
        w.expect_none(0.3)


@pytest.mark.parametrize("version", [4, 5])
def test_will_on_paho_socket_kill(server, new_device, version):
    topic = uniq("willp/")
    with _watch(server, new_device(), topic) as w:
        c = Client(server, new_device(), version=version,
                   will=dict(topic=topic, payload=b"lost", qos=1, retain=True))
        c.connect()
        c.kill()
        m = w.get(3.0)
        assert (m.topic, m.payload) == (topic, b"lost")
    # retained will: a later subscriber sees it
    with Client(server, new_device()) as late:
        late.connect()
        late.subscribe(topic, 1)
        m = late.get()
        assert (m.payload, m.retain) == (b"lost", True)


@pytest.mark.parametrize("version", [4, 5])
def test_no_will_after_normal_disconnect(server, new_device, version):
    topic = uniq("nowill/")
    with _watch(server, new_device(), topic) as w:
        c = Client(server, new_device(), version=version,
                   will=dict(topic=topic, payload=b"x", qos=1))
        c.connect()
        c.disconnect()
        w.expect_none(1.0)


def test_v5_disconnect_with_will_reason_publishes_will(server, new_device):
    topic = uniq("will4/")
    with _watch(server, new_device(), topic) as w:
        c = Client(server, new_device(), will=dict(topic=topic, payload=b"bye", qos=1))
        c.connect()
        c.disconnect(reason=0x04)
        m = w.get(3.0)
        assert (m.topic, m.payload) == (topic, b"bye")


def _will_props(delay):
    p = Properties(PacketTypes.WILLMESSAGE)
    p.WillDelayInterval = delay
    return p


def test_v5_will_delay(server, new_device):
    topic = uniq("willd/")
    with _watch(server, new_device(), topic) as w:
        cid = uniq("wd")
        c = Client(server, new_device(), client_id=cid, clean=False, session_expiry=30,
                   will=dict(topic=topic, payload=b"late", qos=1, props=_will_props(2)))
        c.connect()
        c.kill()
        t0 = time.monotonic()
        w.expect_none(1.4)
        m = w.get(3.0)
        elapsed = time.monotonic() - t0
        assert m.payload == b"late"
        assert 1.4 <= elapsed <= 4.0, "will after %.2fs, delay 2s" % elapsed


def test_v5_will_delay_cancelled_by_reconnect(server, new_device):
    topic = uniq("willc/")
    dev = new_device()
    cid = uniq("wc")
    with _watch(server, new_device(), topic) as w:
        c = Client(server, dev, client_id=cid, clean=False, session_expiry=30,
                   will=dict(topic=topic, payload=b"never", qos=1, props=_will_props(2)))
        c.connect()
        c.kill()
        time.sleep(0.3)
        with Client(server, dev, client_id=cid, clean=False, session_expiry=30) as again:
            sp, _, _ = again.connect()
            assert sp == 1
            w.expect_none(3.0)
            again.disconnect()
        w.expect_none(0.3)


def test_v5_will_delay_longer_than_session_expiry(server, new_device):
    """The will is sent when the session ends, if that is before the delay."""
    topic = uniq("willx/")
    with _watch(server, new_device(), topic) as w:
        c = Client(server, new_device(), clean=True, session_expiry=1,
                   will=dict(topic=topic, payload=b"expired", qos=1, props=_will_props(60)))
        c.connect()
        c.kill()
        m = w.get(4.0)
        assert m.payload == b"expired"


def test_will_properties_passed_through(server, new_device):
    topic = uniq("willprop/")
    with _watch(server, new_device(), topic) as w:
        p = Properties(PacketTypes.WILLMESSAGE)
        p.ContentType = "text/plain"
        p.UserProperty = [("k", "v")]
        c = Client(server, new_device(), will=dict(topic=topic, payload=b"w", qos=1, props=p))
        c.connect()
        c.kill()
        m = w.get(3.0)
        assert m.properties.ContentType == "text/plain"
        assert m.properties.UserProperty == [("k", "v")]
