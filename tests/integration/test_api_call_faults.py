"""Device calls under faults (device/requests.c, api.c wait_on): the HTTP
client leaves while the call waits on the device, the device answers after
the deadline, the device is deleted while a call waits. Every case ends
with a call that must succeed (the barrier), and the server must stop
cleanly (ASan: no use after free, no leak)."""

import json
import socket
import threading
import time

import pytest

from apidevice import ApiDevice, api, call, create_device, online_device
from helpers import CYAN

pytestmark = [pytest.mark.cyan_only, pytest.mark.skipif(not CYAN, reason="cyan's API")]


def late_reply(dev, c, value=b"late"):
    """Answer call c now (the device's own reply form)."""
    if dev.version == 5:
        from paho.mqtt.properties import Properties
        from paho.mqtt.packettypes import PacketTypes
        p = Properties(PacketTypes.PUBLISH)
        p.CorrelationData = c.request_id
        dev.c.publish(c.response_topic or (dev.base + "reply"), value, 1, False, properties=p)
    else:
        dev.c.publish(dev.base + "reply/" + c.request_id, value, 1, False)


def post_and_leave(srv, dev_id, fn, timeout_s):
    s = socket.create_connection((srv.host, srv.http_port), timeout=5)
    body = json.dumps({"timeout": timeout_s}).encode()
    s.sendall(("POST /v1/devices/%s/functions/%s HTTP/1.1\r\nHost: x\r\n"
               "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
               "Content-Length: %d\r\n\r\n" % (dev_id, fn, srv.admin_token(), len(body))).encode()
              + body)
    return s


@pytest.mark.parametrize("version", [4, 5])
def test_client_leaves_then_device_answers(api_server, version):
    dev = online_device(api_server, version=version,
                        functions={"hang": lambda a: None, "ping": lambda a: "pong"})
    try:
        socks = []
        for i in range(3):
            socks.append(post_and_leave(api_server, dev.id, "hang", 3))
        dev.wait_calls(3, timeout=5)
        for s in socks:
            s.close()
        # Let the server see them gone, then answer every call.
        time.sleep(0.3)
        for c in list(dev.calls):
            late_reply(dev, c)
        r = call(api_server, dev.id, "ping", timeout=5)
        assert r.status == 200, r
    finally:
        dev.close()
    assert api_server.stop(check=True) == 0


def test_reply_after_deadline(api_server):
    dev = online_device(api_server, functions={"hang": lambda a: None, "ping": lambda a: "pong"})
    try:
        r = call(api_server, dev.id, "hang", timeout=1)
        assert r.status == 504 and r.error == "device_timeout", r
        c = dev.calls[-1]
        late_reply(dev, c)
        r = call(api_server, dev.id, "ping", timeout=5)
        assert r.status == 200, r
    finally:
        dev.close()
    assert api_server.stop(check=True) == 0


def test_device_deleted_while_call_waits(api_server):
    dev = online_device(api_server, functions={"hang": lambda a: None})
    other = online_device(api_server, functions={"ping": lambda a: "pong"})
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", call(api_server, dev.id, "hang",
                                                                  timeout=3)))
    try:
        t.start()
        dev.wait_calls(1, timeout=5)
        r = api(api_server, "DELETE", "/v1/devices/%s" % dev.id)
        assert r.status == 200, r
        t.join(10)
        r = out["r"]
        assert r.status in (404, 409, 504), r
        r = call(api_server, other.id, "ping", timeout=5)
        assert r.status == 200, r
    finally:
        dev.close()
        other.close()
    assert api_server.stop(check=True) == 0
