"""CoAP devices over plain UDP (docs/device-protocol.md, "CoAP"): events,
describe, function calls and variable reads through the API, messages for
the device, presence, deduplication, retransmissions, and the answers to
bad input. Plain CoAP names its device (?id=) and is for development only:
these servers run with coap_insecure=true, except where the refusal is the
point. With several shards the datagrams reach any shard and travel to the
device's owner over the bus, so the same tests cover that path."""

import json
import subprocess
import time

import pytest

import coapdev
from apidevice import api
from coapdev import ACK, CON, NON, POST, RST, URI_PATH, URI_QUERY, code, encode
from coaptest import check_call_and_read, check_messages, mqtt_watch, new_device, wait_until
from helpers import Client

pytestmark = pytest.mark.cyan_only

COAP_CLIENT = "/usr/bin/coap-client-notls"


def dev_for(srv, d, **kw):
    return coapdev.Device(srv.host, srv.coap_port, d["id"], **kw)


def test_event_from_coap_client_reaches_mqtt_subscriber(coap_open_server):
    srv = coap_open_server
    d = new_device(srv)
    w = mqtt_watch(srv, "devices/%s/events/#" % d["id"])
    cp = subprocess.run([COAP_CLIENT, "-m", "post", "-e", "21.5", "-B", "5",
                         "coap://127.0.0.1:%d/e/temp?id=%s" % (srv.coap_port, d["id"])],
                        capture_output=True, text=True, timeout=20)
    assert cp.returncode == 0, cp.stderr
    m = w.get(timeout=5)
    assert m.topic == "devices/%s/events/temp" % d["id"]
    assert m.payload == b"21.5"
    assert m.qos == 1  # a CON is QoS 1
    w.disconnect()


def test_plain_coap_is_refused_by_default(api_server):
    d = new_device(api_server)
    dev = dev_for(api_server, d)
    try:
        r = dev.event("x", b"1")
        assert r.code == code(4, 1), r
        assert b"coaps" in r.payload
    finally:
        dev.close()


def test_unknown_device_and_missing_id(coap_server):
    dev = coapdev.Device(coap_server.host, coap_server.coap_port, "0" * 24)
    try:
        assert dev.event("x", b"1").code == code(4, 1)
        dev.query_id = False
        r = dev.event("x", b"1")
        assert r.code == code(4, 0) and b"id=" in r.payload
    finally:
        dev.close()


def test_call_and_read_reach_a_coap_device(coap_server):
    srv = coap_server
    d = new_device(srv)
    dev = dev_for(srv, d, functions={"led": lambda arg: b"on:" + arg},
                  variables={"temp": b"21.5"})
    try:
        check_call_and_read(srv, d, dev, "coap")
    finally:
        dev.close()


def test_call_with_a_separate_response(coap_server):
    srv = coap_server
    d = new_device(srv)
    dev = dev_for(srv, d, functions={"slow": lambda arg: b"42"}, separate=True)
    try:
        dev.describe()
        r = api(srv, "POST", "/v1/devices/%s/functions/slow" % d["id"], json={"arg": ""})
        assert r.status == 200, r.text
        assert r.body["return_value"] == 42
    finally:
        dev.close()


def test_separate_response_before_its_ack(coap_server):
    """The device's separate response overtakes its empty ACK (UDP may
    reorder them; with several shards the two can come through different
    ones): the response answers the call, the late ACK changes nothing."""
    srv = coap_server
    d = new_device(srv)
    dev = dev_for(srv, d, functions={"slow": lambda arg: b"43"}, separate="response first")
    try:
        dev.describe()
        for _ in range(2):  # and the next call goes out as usual
            r = api(srv, "POST", "/v1/devices/%s/functions/slow" % d["id"], json={"arg": ""})
            assert r.status == 200, r.text
            assert r.body["return_value"] == 43
    finally:
        dev.close()


def test_lost_ack_is_retransmitted(coap_server):
    srv = coap_server
    d = new_device(srv)
    dev = dev_for(srv, d, functions={"f": lambda arg: b"ok"})
    try:
        dev.describe()
        dev.drop_next_acks = 1  # the first request is lost: cyan sends it again after ~2-3 s
        r = api(srv, "POST", "/v1/devices/%s/functions/f" % d["id"], json={"arg": ""},
                timeout=15)
        assert r.status == 200, r.text
        assert r.body["return_value"] == "ok"
        assert r.body["round_trip_ms"] >= 1900
    finally:
        dev.close()


def test_messages_reach_a_subscribed_coap_device(coap_open_server):
    srv = coap_open_server
    d = new_device(srv)
    dev = dev_for(srv, d)
    try:
        check_messages(srv, d, dev)
        assert dev.request(coapdev.DELETE, "s/devices/%s/cmd/#" % d["id"]).code == code(2, 2)
    finally:
        dev.close()


def test_isolation_applies_to_coap(coap_server):
    d = new_device(coap_server)
    dev = dev_for(coap_server, d)
    try:
        r = dev.request(POST, "t/devices/someone-else/events/x", b"1")
        assert r.code == code(4, 3), r
        assert dev.subscribe("devices/other/#").code == code(4, 3)
        assert dev.request(POST, "t/events/shared", b"1").code == code(2, 4)
    finally:
        dev.close()


def test_duplicate_con_is_answered_again_not_routed_twice(coap_open_server):
    srv = coap_open_server
    d = new_device(srv)
    w = mqtt_watch(srv, "devices/%s/events/#" % d["id"])
    dev = dev_for(srv, d)
    try:
        mid = dev.next_mid()
        raw = encode(CON, POST, mid, b"\x01\x02",
                     [(URI_PATH, "e"), (URI_PATH, "dup"), (URI_QUERY, "id=" + d["id"])], b"once")
        dev.send_raw(raw)
        a = dev.wait_mid(mid)
        dev.send_raw(raw)  # the device did not hear the ACK and sends again
        b = dev.wait_mid(mid)
        assert a.code == b.code == code(2, 4)
        # A later event must arrive right after the one copy of "dup".
        assert dev.event("after", b"2").code == code(2, 4)
        topics = [w.get(timeout=5).topic for _ in range(2)]
        assert topics == ["devices/%s/events/dup" % d["id"], "devices/%s/events/after" % d["id"]]
    finally:
        dev.close()
        w.disconnect()


def test_ping_and_bad_input(coap_server):
    d = new_device(coap_server)
    dev = dev_for(coap_server, d)
    try:
        dev.event("hello", b"1")
        assert dev.ping().type == RST
        # token length 9: a format error; a CON is rejected with RST
        mid = dev.next_mid()
        dev.send_raw(bytes([0x49, 0x01, mid >> 8, mid & 255]) + b"123456789")
        assert dev.wait_mid(mid).type == RST
        # garbage and a version-2 header: ignored, and the device is still served
        dev.send_raw(b"\x00")
        dev.send_raw(bytes([0x80, 0x01, 0, 1]))
        # an unknown critical option (number 9)
        r = dev.request(POST, "e/x", b"1", extra=[(9, b"x")])
        assert r.code == code(4, 2), r
        # an unknown resource, a wrong method
        assert dev.request(POST, "nope", b"").code == code(4, 4)
        assert dev.request(coapdev.GET, "e/x").code == code(4, 5)
        # an event with no name; a describe that is not JSON
        assert dev.request(POST, "e", b"1").code == code(4, 0)
        assert dev.request(coapdev.PUT, "d", b"not json").code == code(4, 0)
        # more options than cyan takes
        r = dev.request(POST, "e/x", b"1", extra=[(2000, b"")] * 50)
        assert r.code == code(4, 2), r
        # a datagram over coap_max_message
        r = dev.request(POST, "e/big", b"x" * 3000)
        assert r.code == code(4, 13), r
        assert r.opt(coapdev.SIZE1)
        assert dev.ping().type == RST
    finally:
        dev.close()


def test_non_event_is_qos0_and_no_response_is_honoured(coap_open_server):
    srv = coap_open_server
    d = new_device(srv)
    w = mqtt_watch(srv, "devices/%s/events/#" % d["id"])
    dev = dev_for(srv, d)
    try:
        r = dev.event("n", b"1", con=False)
        assert r.type == NON and r.code == code(2, 4)
        m = w.get(timeout=5)
        assert m.topic.endswith("/events/n") and m.qos == 0
        # No-Response for 2.xx on a CON: an empty ACK only
        mid = dev.next_mid()
        dev.send_raw(encode(CON, POST, mid, b"\x07",
                            [(URI_PATH, "e"), (URI_PATH, "q"), (URI_QUERY, "id=" + d["id"]),
                             (coapdev.NO_RESPONSE, 2)], b"x"))
        a = dev.wait_mid(mid)
        assert a.type == ACK and a.code == 0
        assert w.get(timeout=5).topic.endswith("/events/q")
    finally:
        dev.close()
        w.disconnect()


def _read_all(proc, out):
    """Collect what proc writes (coap-client prints payloads without newlines)."""
    import os
    while True:
        b = os.read(proc.stdout.fileno(), 4096)
        if not b:
            return
        out[0] += b.decode("utf-8", "replace")


def test_observe_with_coap_client(coap_open_server):
    """RFC 7641 with a client nobody here wrote: coap-client observes a
    device topic; the registration answers with the retained state, and
    each message after it arrives as a notification."""
    import threading
    srv = coap_open_server
    d = new_device(srv)
    topic = "devices/%s/led" % d["id"]
    c = Client(srv, client_id="pub-%d" % time.monotonic_ns(), version=5)
    c.connect()
    c.publish(topic, b"initial", qos=1, retain=True)
    proc = subprocess.Popen([COAP_CLIENT, "-s", "20", "-B", "20", "-m", "get",
                             "coap://127.0.0.1:%d/s/%s?id=%s" % (srv.coap_port, topic, d["id"])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = [""]
    t = threading.Thread(target=_read_all, args=(proc, out), daemon=True)
    t.start()
    try:
        wait_until(lambda: "initial" in out[0], 10, "the registration's answer")
        for i in range(3):
            c.publish(topic, b"state-%d" % i, qos=1)
            wait_until(lambda: "state-%d" % i in out[0], 10, "notification %d" % i)
    finally:
        proc.kill()
        proc.wait(5)
        c.disconnect()


def test_observe_notifications_and_rst_cancel(coap_open_server):
    srv = coap_open_server
    d = new_device(srv)
    topic = "devices/%s/cfg" % d["id"]
    dev = dev_for(srv, d)
    c = Client(srv, client_id="pub-%d" % time.monotonic_ns(), version=5)
    c.connect()
    try:
        token = b"\x0b\x5e"
        mid = dev.next_mid()
        dev.send_raw(encode(CON, coapdev.GET, mid, token,
                            [(URI_PATH, "s"), (URI_PATH, "devices"), (URI_PATH, d["id"]),
                             (URI_PATH, "cfg"), (URI_QUERY, "id=" + d["id"]),
                             (coapdev.OBSERVE, 0)]))
        r = dev.wait_mid(mid)
        assert r.code == code(2, 5) and r.opt(coapdev.OBSERVE), r
        c.publish(topic, b"v1", qos=1)
        n = dev.notifications.get(timeout=10)
        assert n.token == token and n.payload == b"v1" and n.opt(coapdev.OBSERVE)
        assert n.type == CON  # QoS 1: confirmable; the device ACKs it
        # The device refuses the next one with RST: the observation ends.
        dev.rst_notifications = True
        c.publish(topic, b"v2", qos=1)
        assert dev.notifications.get(timeout=10).payload == b"v2"
        dev.rst_notifications = False
        # After it, messages on the topic do not come; a later subscription's do.
        assert dev.subscribe("devices/%s/other" % d["id"]).code == code(2, 4)
        c.publish(topic, b"v3", qos=1)
        c.publish("devices/%s/other" % d["id"], b"later", qos=1)
        assert dev.messages.get(timeout=10) == ("devices/%s/other" % d["id"], b"later")
        assert dev.notifications.empty()
    finally:
        dev.close()
        c.disconnect()


def test_block1_describe_larger_than_a_message(server_factory):
    srv = server_factory(_template=False, coap_insecure=True, coap_max_message=256)
    srv.wait_api_healthy()
    d = new_device(srv)
    names = ["function_number_%02d" % i for i in range(20)]
    dev = dev_for(srv, d, functions={n: (lambda arg: b"1") for n in names})
    try:
        body = json.dumps({"functions": names}).encode()
        assert len(body) > 256
        size, szx = 64, 2
        nblocks = (len(body) + size - 1) // size
        for num in range(nblocks):
            more = num < nblocks - 1
            r = dev.request(coapdev.PUT, "d", body[num * size:(num + 1) * size],
                            extra=[(coapdev.BLOCK1, num << 4 | more << 3 | szx)])
            assert r.code == (code(2, 31) if more else code(2, 4)), (num, r)
            assert r.opt(coapdev.BLOCK1)
        r = api(srv, "POST", "/v1/devices/%s/functions/%s" % (d["id"], names[-1]),
                json={"arg": ""})
        assert r.status == 200, r.text
        # A block out of order: 4.08, start again.
        r = dev.request(coapdev.PUT, "d", body[:size],
                        extra=[(coapdev.BLOCK1, 3 << 4 | 1 << 3 | szx)])
        assert r.code == code(4, 8), r
    finally:
        dev.close()


def test_block2_and_echo_for_a_large_retained_message(coap_open_server):
    """A retained message larger than a CoAP message comes in Block2 blocks;
    and since the answer is many times the request, an address that has not
    proved itself gets 4.01 with an Echo value first (RFC 9175)."""
    srv = coap_open_server
    d = new_device(srv)
    topic = "devices/%s/blob" % d["id"]
    big = bytes(range(256)) * 12  # 3072 bytes
    c = Client(srv, client_id="pub-%d" % time.monotonic_ns(), version=5)
    c.connect()
    c.publish(topic, big, qos=1, retain=True)
    c.disconnect()
    dev = dev_for(srv, d)
    try:
        r = dev.request(coapdev.GET, "s/" + topic)
        assert r.code == code(4, 1) and r.opt(coapdev.ECHO), r
        echo = r.opt(coapdev.ECHO)[0]
        got, num = b"", 0
        while True:
            r = dev.request(coapdev.GET, "s/" + topic,
                            extra=[(coapdev.ECHO, echo), (coapdev.BLOCK2, num << 4 | 6)])
            assert r.code == code(2, 5), r
            b2 = int.from_bytes(r.opt(coapdev.BLOCK2)[0], "big")
            assert b2 >> 4 == num
            got += r.payload
            if not b2 & 8:
                break
            num += 1
        assert got == big
    finally:
        dev.close()


def test_coap_client_reads_a_large_retained_message(coap_open_server):
    srv = coap_open_server
    d = new_device(srv)
    topic = "devices/%s/blob" % d["id"]
    big = (b"0123456789abcdef" * 200)
    c = Client(srv, client_id="pub-%d" % time.monotonic_ns(), version=5)
    c.connect()
    c.publish(topic, big, qos=1, retain=True)
    c.disconnect()
    cp = subprocess.run([COAP_CLIENT, "-m", "get", "-B", "10",
                         "coap://127.0.0.1:%d/s/%s?id=%s" % (srv.coap_port, topic, d["id"])],
                        capture_output=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert big in cp.stdout, cp.stdout[:200]


def test_coap_event_reaches_the_api_event_stream(coap_server):
    from apidevice import SseStream
    srv = coap_server
    d = new_device(srv)
    dev = dev_for(srv, d)
    try:
        with SseStream(srv, "/v1/devices/%s/events" % d["id"]) as s:
            assert s.status == 200
            assert dev.event("door/open", b'{"n":1}').code == code(2, 4)
            ev = s.next(timeout=10)
            assert ev.json["name"] == "door/open", ev
            assert ev.json["device_id"] == d["id"], ev
            assert ev.json["data"] == '{"n":1}', ev
    finally:
        dev.close()


def test_coap_event_reaches_a_webhook(api_server_factory):
    """A CoAP event is an event like any other: on disk before its 2.04,
    delivered to webhooks from the event log."""
    from whsink import Sink
    srv = api_server_factory(coap_insecure=True, webhook_allow_private=True)
    d = new_device(srv)
    dev = dev_for(srv, d)
    with Sink() as sink:
        try:
            r = api(srv, "POST", "/v1/webhooks", json={"url": sink.url + "/hook", "event": "door"})
            assert r.status == 201, r.text
            assert dev.event("door/open", b"1").code == code(2, 4)
            req = sink.wait_for(1, timeout=15)[0]
            body = json.loads(req.body)
            assert body["name"] == "door/open" and body["device_id"] == d["id"], body
            assert body["data"] == "1", body
        finally:
            dev.close()
