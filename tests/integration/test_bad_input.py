"""Malformed and out-of-order input, byte-exact. After a valid CONNECT, each
bad packet gets (v5) a DISCONNECT with 0x81 Malformed Packet or 0x82 Protocol
Error and the socket is closed; 3.1.1 just closes. The server names the
client in its log and keeps serving everyone else."""

import struct
import time

import pytest

import rawmqtt as rm
from helpers import CYAN, Client, raw, raw_connected, uniq, wait_until

MALFORMED = {0x81}
EITHER = {0x81, 0x82}


def _sub_body(pid, flt, opts, version=5):
    return struct.pack("!H", pid) + (b"\x00" if version == 5 else b"") + rm.mstr(flt) + \
        bytes([opts])


# name -> (builder(version) -> bytes, allowed v5 reason codes, also for 3.1.1)
CASES = {
    "subscribe_reserved_flags": (
        lambda v: rm.packet(rm.SUBSCRIBE, 0x00, _sub_body(1, "a/b", 1, v)), EITHER, True),
    "publish_qos3": (
        lambda v: rm.packet(rm.PUBLISH, 0x06, rm.mstr("a/b") + b"\x00\x01" +
                            (b"\x00" if v == 5 else b"") + b"x"), EITHER, True),
    "remaining_length_5_bytes": (
        lambda v: bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]), MALFORMED, True),
    "topic_invalid_utf8": (
        lambda v: rm.publish(b"a/\xff\xfe", b"x", version=v), MALFORMED, True),
    "topic_utf16_surrogate": (
        lambda v: rm.publish(b"a/\xed\xa0\x80", b"x", version=v), MALFORMED, True),
    "topic_nul": (
        lambda v: rm.publish("a/\x00b", b"x", version=v), MALFORMED, True),
    "topic_with_plus": (
        lambda v: rm.publish("a/+", b"x", version=v), EITHER, True),
    "topic_with_hash": (
        lambda v: rm.publish("a/#", b"x", qos=1, pid=3, version=v), EITHER, True),
    "topic_length_beyond_packet": (
        lambda v: rm.packet(rm.PUBLISH, 0, b"\x00\x20a/b"), MALFORMED, True),
    "unknown_property": (
        lambda v: rm.packet(rm.PUBLISH, 0, rm.mstr("a/b") + b"\x02\x50\x00" + b"x"),
        MALFORMED, False),
    "property_length_beyond_packet": (
        lambda v: rm.packet(rm.PUBLISH, 0, rm.mstr("a/b") + b"\x20\x01\x00"),
        MALFORMED, False),
    "packet_type_0": (
        lambda v: rm.packet(0, 0, b""), EITHER, True),
    "pubrel_reserved_flags": (
        lambda v: rm.packet(rm.PUBREL, 0x00, b"\x00\x01"), EITHER, True),
    "subscribe_no_filters": (
        lambda v: rm.packet(rm.SUBSCRIBE, 0x02, b"\x00\x01" + (b"\x00" if v == 5 else b"")),
        EITHER, True),
    "subscribe_options_qos3": (
        lambda v: rm.packet(rm.SUBSCRIBE, 0x02, _sub_body(1, "a/b", 3, v)), EITHER, True),
    "publish_qos1_packet_id_0": (
        lambda v: rm.publish("a/b", b"x", qos=1, pid=0, version=v), EITHER, True),
}


def _observer(server, device):
    topic = uniq("obs/")
    obs = Client(server, device)
    obs.connect()
    obs.subscribe(topic, 1)
    return obs, topic


def _still_serving(server, new_device, obs, topic):
    with Client(server, new_device()) as pub:
        pub.connect()
        pub.publish(topic, b"still-here", qos=1)
    assert obs.get(3.0).payload == b"still-here"


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_v5(server, new_device, case):
    build, allowed, _ = CASES[case]
    obs, topic = _observer(server, new_device())
    with obs:
        dev = new_device()
        cid = uniq("bad")
        c, _ = raw_connected(server, dev, client_id=cid)
        mark = len(server.log())
        with c:
            c.send(build(5))
            got = c.wait_closed(3.0)
        codes = [(type(p), getattr(p, "rc", None)) for p in got]
        if CYAN:
            assert len(codes) == 1 and codes[0][0] is rm.Disconnect and codes[0][1] in allowed, \
                "expected DISCONNECT %s, got %r" % (sorted(hex(a) for a in allowed), got)
            assert _wait_log_names(server, mark, cid, dev.id), \
                "server log does not name the client after the error"
        else:
            assert all(t is rm.Disconnect and rc in EITHER for t, rc in codes), got
        _still_serving(server, new_device, obs, topic)


@pytest.mark.parametrize("case", sorted(k for k, v in CASES.items() if v[2]))
def test_malformed_v311_closes(server, new_device, case):
    build = CASES[case][0]
    obs, topic = _observer(server, new_device())
    with obs:
        c, _ = raw_connected(server, new_device(), version=4)
        with c:
            c.send(build(4))
            assert c.wait_closed(3.0) == []
        _still_serving(server, new_device, obs, topic)


def _wait_log_names(server, mark, *names):
    return wait_until(lambda: any(n in server.log()[mark:] for n in names), timeout=2.0)


@pytest.mark.parametrize("first", ["pingreq", "publish", "subscribe", "http", "connack"])
def test_first_packet_not_connect_closed(server, new_device, first):
    pkt = {
        "pingreq": rm.pingreq(),
        "publish": rm.publish("a/b", b"x", version=4),
        "subscribe": rm.subscribe(1, [("a/b", 0)], version=4),
        "http": b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/7.88.1\r\n"
                b"Accept: */*\r\n\r\n",
        "connack": rm.packet(rm.CONNACK, 0, b"\x00\x00"),
    }[first]
    obs, topic = _observer(server, new_device())
    with obs:
        with raw(server) as c:
            c.send(pkt)
            assert c.wait_closed(3.0) == []
        _still_serving(server, new_device, obs, topic)


@pytest.mark.parametrize("version", [4, 5])
def test_second_connect_closed(server, device, version):
    c, _ = raw_connected(server, device, version=version)
    with c:
        c.send(rm.connect(uniq("again"), version=version, username=device.id,
                          password=device.secret))
        got = c.wait_closed(3.0)
    if version == 4:
        assert got == []
    elif CYAN or got:  # mosquitto just closes
        assert [(type(p), p.rc) for p in got] == [(rm.Disconnect, 0x82)]


def test_unsupported_protocol_level(server, device):
    with raw(server) as c:
        c.send(rm.connect(uniq("v6"), level=6, version=5, username=device.id,
                          password=device.secret))
        got = c.wait_closed(3.0)
    assert len(got) == 1 and isinstance(got[0], rm.Connack), got
    # mosquitto answers with the 3.1.1 code 0x01; cyan with 0x84
    assert got[0].rc == 0x84 or (not CYAN and got[0].rc == 0x01)


@pytest.mark.parametrize("version", [4, 5])
def test_connect_reserved_flag_closed(server, device, version):
    pkt = bytearray(rm.connect(uniq("rf"), version=version, username=device.id,
                               password=device.secret))
    # fixed header (2 bytes) + protocol name (6) + level (1) -> connect flags
    pkt[9] |= 0x01
    with raw(server) as c:
        c.send(bytes(pkt))
        got = c.wait_closed(3.0)
    assert not [p for p in got if isinstance(p, rm.Connack) and p.rc == 0], got


def test_connect_will_qos3_closed(server, device):
    pkt = bytearray(rm.connect(uniq("wq"), username=device.id, password=device.secret,
                               will=dict(topic="w/t", payload=b"x", qos=1)))
    pkt[9] |= 0x18  # will QoS 3
    with raw(server) as c:
        c.send(bytes(pkt))
        got = c.wait_closed(3.0)
    assert not [p for p in got if isinstance(p, rm.Connack) and p.rc == 0], got


def test_truncated_packet_then_close_is_harmless(server, new_device):
    """A client that dies mid-packet does not disturb anyone."""
    obs, topic = _observer(server, new_device())
    with obs:
        for cut in (1, 2, 5):
            c, _ = raw_connected(server, new_device())
            pkt = rm.publish("a/b", b"y" * 100, qos=1, pid=1)
            c.send(pkt[:cut])
            c.abort()
        _still_serving(server, new_device, obs, topic)


def test_byte_at_a_time(server, new_device):
    """Packets split into single bytes are reassembled."""
    topic = uniq("bt/")
    obs, _ = _observer(server, new_device())
    with obs:
        obs.subscribe(topic, 1)
        dev = new_device()
        with raw(server) as c:
            data = rm.connect(uniq("bt"), username=dev.id, password=dev.secret) + \
                rm.publish(topic, b"slow", qos=1, pid=1)
            for i in range(len(data)):
                c.send(data[i:i + 1])
                if i % 16 == 0:
                    time.sleep(0.01)
            assert c.expect(rm.CONNACK).rc == 0
            assert c.expect(rm.PUBACK).pid == 1
            c.disconnect()
        assert obs.get().payload == b"slow"
