"""What the CoAP integration tests share (test_coap, test_coaps,
test_coap_npm, test_coap_drill): devices made through the API, presence,
bounded waits, an MQTT watcher, the owner shard of a device, and the check
that a CoAP device answers a function call and a variable read through the
API exactly as an MQTT device does. The servers they run on are fixtures in
conftest.py (coap_server, coap_open_server)."""

import time

from apidevice import api
from coapdev import code
from helpers import Client
from test_shards import shard_of


def new_device(srv, prefix="coap"):
    """A device made through the API: its JSON (id, name, secret, psk)."""
    r = api(srv, "POST", "/v1/devices", json={"name": "%s-%d" % (prefix, time.monotonic_ns())})
    assert r.status == 201, r.text
    assert len(r.body["psk"]) == 32, r.body
    return r.body


def presence(srv, device_id):
    r = api(srv, "GET", "/v1/devices/%s" % device_id)
    assert r.status == 200, r.text
    return r.body.get("presence", r.body)


def wait_until(fn, timeout, what):
    """fn()'s first true value within timeout seconds, else AssertionError."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError("timed out (%.0fs) waiting for %s (last %r)" % (timeout, what, last))


def mqtt_watch(srv, topic):
    """An anonymous MQTT 5 client subscribed to topic at QoS 1."""
    c = Client(srv, client_id="watch-%d" % time.monotonic_ns(), version=5)
    c.connect()
    c.subscribe(topic, 1)
    return c


def owner_of(device_id, nshards):
    """cy_shard_of: the shard that owns a device."""
    return shard_of(device_id, nshards) if nshards > 1 else 0


def check_call_and_read(srv, d, dev, protocol):
    """dev (a coapdev.Device of device d with function led -> "on:<arg>" and
    variable temp = 21.5) describes itself; a call and a read through the
    API return its values; its presence says protocol and a round trip."""
    assert dev.describe().code == code(2, 4)
    r = api(srv, "POST", "/v1/devices/%s/functions/led" % d["id"], json={"arg": "x"})
    assert r.status == 200, r.text
    assert r.body["return_value"] == "on:x"
    r = api(srv, "GET", "/v1/devices/%s/variables/temp" % d["id"])
    assert r.status == 200, r.text
    assert r.body["value"] == 21.5
    p = presence(srv, d["id"])
    assert p["online"] is True and p["protocol"] == protocol, p
    assert p["last_round_trip"], p


def check_messages(srv, d, dev):
    """dev, a coapdev.Device of device d, subscribes devices/<id>/cmd/#: a
    QoS 1 and a QoS 0 message published over MQTT both reach it."""
    assert dev.subscribe("devices/%s/cmd/#" % d["id"]).code == code(2, 4)
    c = Client(srv, client_id="pub-%d" % time.monotonic_ns(), version=5)
    c.connect()
    try:
        c.publish("devices/%s/cmd/a" % d["id"], b"one", qos=1)
        c.publish("devices/%s/cmd/b" % d["id"], b"two", qos=0)
        got = [dev.messages.get(timeout=10) for _ in range(2)]
        assert sorted(got) == [("devices/%s/cmd/a" % d["id"], b"one"),
                               ("devices/%s/cmd/b" % d["id"], b"two")]
    finally:
        c.disconnect()
