"""Presence (docs/device-protocol.md "Status events", docs/api.md "Status
events", docs/operations.md "Presence"): a device's owner shard publishes
an event of the device named cyan/status when it goes online or offline,
with the reason (disconnect, keep-alive timeout, takeover, a lost
connection, a shard restart, ...), the protocol and the time; it reaches
event streams and webhooks like any event; flapping is folded; last_heard
and last_round_trip survive restarts; GET /v1/devices?online= filters; a
describe's version and model are shown.

Every wait is for something that must come: an event on a stream opened
before the change, a webhook request, a device state through the API.
The test servers turn status events off unless asked (conftest.py): here
they run at cyan's default rate.
"""

import json
import os
import signal
import sqlite3
import time

import pytest

import coapdev
import rawmqtt as rm
from apidevice import (ISO_MS_RE, ApiDevice, SseStream, api, call, create_device, get_device,
                       online_device, parse_time, wait_device)
from conftest import SHARDS
from helpers import raw, wait_until
from whsink import Sink

pytestmark = pytest.mark.cyan_only

PROTOCOL = {4: "mqtt3.1.1", 5: "mqtt5"}
RATE = 500  # presence_event_rate's default


@pytest.fixture
def srv(api_server_factory):
    """cyan with its API, isolated devices and status events on."""
    return api_server_factory(presence_event_rate=RATE)
FIELDS = {"status", "reason", "protocol", "at", "last_heard", "coalesced"}


def stream(srv, dev_id=None, last_event_id=None):
    """The status events of one device (or of every device)."""
    path = "/v1/devices/%s/events/cyan/status" % dev_id if dev_id else "/v1/events/cyan/status"
    s = SseStream(srv, path, last_event_id=last_event_id)
    assert s.status == 200, (s.status, s.body)
    return s


def next_status(s, dev_id, timeout=5.0):
    """The next status event of dev_id on s: (SSE event, its data parsed)."""
    deadline = time.monotonic() + timeout
    while True:
        ev = s.next(max(0.0, deadline - time.monotonic()))
        assert ev.name == "cyan/status" and ev.event == "cyan/status", ev
        if ev.json["device_id"] != dev_id:
            continue
        assert ev.json["shared"] is False, ev
        data = json.loads(ev.payload)
        assert set(data) == FIELDS, data
        assert ISO_MS_RE.match(data["at"]), data
        return ev, data


def mqtt_connect(srv, info, version=5, keepalive=60):
    c = raw(srv, version)
    ack = c.connect(info["id"], username=info["id"], password=info["secret"],
                    keepalive=keepalive)
    assert ack.rc == 0, ack
    return c


@pytest.mark.parametrize("version", [4, 5])
def test_online_then_offline_on_disconnect(srv, version):
    info = create_device(srv)
    did = info["id"]
    with stream(srv, did) as s:
        t0 = time.time()
        c = mqtt_connect(srv, info, version)
        ev, on = next_status(s, did)
        assert (on["status"], on["reason"], on["protocol"], on["coalesced"]) == \
            ("online", "connect", PROTOCOL[version], 0), on
        assert t0 - 1 <= parse_time(on["at"]) <= time.time() + 1, on
        assert parse_time(ev.json["published_at"]) >= parse_time(on["at"]), ev
        c.send(rm.disconnect(version=version))
        c.wait_closed()
        _, off = next_status(s, did)
        assert (off["status"], off["reason"], off["protocol"]) == \
            ("offline", "disconnect", PROTOCOL[version]), off
        assert parse_time(off["at"]) >= parse_time(on["at"]), (on, off)
        # (a link's time, seen through the wall clock: a few ms of slack)
        assert parse_time(off["last_heard"]) >= parse_time(on["at"]) - 0.5, off
    # The whole node's stream has them too, by prefix.
    with stream(srv, last_event_id=ev.id) as s:
        _, again = next_status(s, did)
        assert again == off


def test_keepalive_timeout(srv):
    info = create_device(srv)
    did = info["id"]
    with stream(srv, did) as s:
        c = mqtt_connect(srv, info, 5, keepalive=1)
        _, on = next_status(s, did)
        assert on["status"] == "online", on
        # Silent from here on: closed after 1.5 s, told as a keep-alive timeout.
        _, off = next_status(s, did, timeout=6)
        assert (off["status"], off["reason"]) == ("offline", "keepalive_timeout"), off
        assert parse_time(off["at"]) - parse_time(on["at"]) >= 1.4, (on, off)
        c.close()


def test_takeover_and_lost_connection(srv):
    info = create_device(srv)
    did = info["id"]
    with stream(srv, did) as s:
        a = mqtt_connect(srv, info, 5)
        assert next_status(s, did)[1]["status"] == "online"
        b = mqtt_connect(srv, info, 4)
        got = a.wait_closed()
        assert any(isinstance(p, rm.Disconnect) and p.rc == 0x8E for p in got), got
        _, off = next_status(s, did)
        assert (off["status"], off["reason"], off["protocol"]) == \
            ("offline", "takeover", "mqtt5"), off
        _, on = next_status(s, did)
        assert (on["status"], on["reason"], on["protocol"]) == \
            ("online", "connect", "mqtt3.1.1"), on
        b.abort()  # a TCP reset: no DISCONNECT
        _, off = next_status(s, did)
        assert (off["status"], off["reason"]) == ("offline", "connection_lost"), off


def test_coap_device_online_and_idle(api_server_factory):
    srv = api_server_factory(coap_insecure=True, coap_idle_timeout=5, presence_event_rate=RATE)
    info = create_device(srv)
    did = info["id"]
    dev = coapdev.Device(srv.host, srv.coap_port, did)
    try:
        with stream(srv, did) as s:
            assert dev.event("hello", b"1").code == coapdev.code(2, 4)
            _, on = next_status(s, did)
            assert (on["status"], on["reason"], on["protocol"]) == ("online", "connect", "coap")
            # The server's name space is refused to it, as to any device.
            assert dev.event("cyan/status", b"{}").code == coapdev.code(4, 3)
            _, off = next_status(s, did, timeout=10)
            assert (off["status"], off["reason"]) == ("offline", "keepalive_timeout"), off
    finally:
        dev.close()


def test_webhook_gets_status_events(api_server_factory):
    srv = api_server_factory(webhook_allow_private=True, webhook_retry_base=100,
                             presence_event_rate=RATE)
    with Sink() as sink:
        r = api(srv, "POST", "/v1/webhooks", json={"url": sink.url + "/status",
                                                   "event": "cyan/status"})
        assert r.status == 201, r
        r = api(srv, "POST", "/v1/webhooks", json={"url": sink.url + "/all"})
        assert r.status == 201, r
        dev = online_device(srv, functions={"f": lambda a: "1"})
        did = dev.id
        try:
            # Each shard sees new webhooks within half a second: once the
            # device's shard delivers one of its events to /all, it has both.
            deadline = time.monotonic() + 10
            n = 0
            while True:
                n += 1
                dev.publish_event("probe", b"%d" % n)
                try:
                    sink.wait(lambda rs: any(q.path == "/all" for q in rs), timeout=0.6)
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, "no webhook request for a probe"
            before = len(sink.requests)
            dev.close()  # a DISCONNECT

            def status(rs, st):
                for q in rs[before:]:
                    if q.path != "/status":
                        continue
                    body = q.json()
                    data = json.loads(body["data"])
                    if body["device_id"] == did and data["status"] == st:
                        return body, data
                return None
            sink.wait(lambda rs: status(rs, "offline"), timeout=10, what="the offline event")
            body, data = status(sink.requests, "offline")
            assert body["name"] == "cyan/status", body
            assert (data["reason"], data["protocol"]) == ("disconnect", "mqtt5"), data
            dev = ApiDevice(srv, dev.info, functions={"f": lambda a: "1"})
            dev.start()
            sink.wait(lambda rs: status(rs, "online"), timeout=10, what="the online event")
            _, data = status(sink.requests, "online")
            assert data["reason"] == "connect", data
            # The filter held: the status webhook got nothing else.
            for q in sink.requests:
                if q.path == "/status":
                    assert q.json()["name"] == "cyan/status", q.body
        finally:
            dev.close()


@pytest.mark.parametrize("kill", [False, True])
def test_last_heard_survives_restart(srv, kill):
    info = create_device(srv)
    did = info["id"]
    with stream(srv, did) as s:
        dev = ApiDevice(srv, info, functions={"ping": lambda a: "pong"})
        dev.start()
        try:
            assert next_status(s, did)[1]["status"] == "online"
            wait_device(srv, did, lambda d: d["functions"] == ["ping"], what="described")
            assert call(srv, did, "ping").status == 200
        finally:
            dev.close()
        # Logged, with its row: from here on a SIGKILL loses nothing of it.
        _, off = next_status(s, did)
        assert off["status"] == "offline", off
    d1 = get_device(srv, did)
    assert d1["online"] is False and d1["last_heard"] and d1["last_round_trip"], d1
    assert d1["last_heard"] == off["last_heard"], (d1, off)
    srv.restart(kill=kill)
    srv.wait_api_healthy()
    d2 = get_device(srv, did)
    assert d2["online"] is False, d2
    assert (d2["last_heard"], d2["last_round_trip"]) == (d1["last_heard"],
                                                         d1["last_round_trip"]), (d1, d2)
    assert d2["functions"] == ["ping"], d2


def test_clean_stop_says_shutdown(srv):
    """A device online when cyan stops cleanly is told offline (shutdown) in
    the stop's last commit, and the next start has nothing more to say of
    it: its next status event is its reconnection's."""
    info = create_device(srv)
    did = info["id"]
    with stream(srv, did) as s:
        c = mqtt_connect(srv, info, 5)
        ev, on = next_status(s, did)
        assert on["status"] == "online", on
    srv.restart()
    c.close()
    srv.wait_api_healthy()
    with stream(srv, did, last_event_id=ev.id) as s:
        _, off = next_status(s, did, timeout=10)
        assert (off["status"], off["reason"], off["protocol"]) == \
            ("offline", "shutdown", "mqtt5"), off
        c = mqtt_connect(srv, info, 4)
        _, on = next_status(s, did, timeout=10)  # not a shard_restart: it was told
        assert (on["status"], on["reason"], on["protocol"]) == \
            ("online", "connect", "mqtt3.1.1"), on
        c.close()


def test_shard_restart_is_told(srv):
    """The device's shard is killed while the device is online: once it is
    back the device gets an offline event (shard_restart), then, as it
    reconnects by itself, an online one."""
    info = create_device(srv)
    did = info["id"]
    dev = ApiDevice(srv, info, functions={"f": lambda a: "1"})
    try:
        with stream(srv, did) as s:
            dev.start()
            ev, on = next_status(s, did)
            assert on["status"] == "online", on
        shard = get_device(srv, did)["shard"]
        pids = srv.wait_shard_pids()
        os.kill(pids[shard], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while srv.shard_pids().get(shard) in (None, pids[shard]):
            assert time.monotonic() < deadline, "shard %d not respawned" % shard
            time.sleep(0.05)
        srv.wait_api_healthy(timeout=20)
        with stream(srv, did, last_event_id=ev.id) as s:
            _, off = next_status(s, did, timeout=15)
            assert (off["status"], off["reason"], off["protocol"]) == \
                ("offline", "shard_restart", "mqtt5"), off
            assert parse_time(off["last_heard"]) >= parse_time(on["at"]) - 0.5, (on, off)
            _, on2 = next_status(s, did, timeout=15)
            assert (on2["status"], on2["reason"]) == ("online", "connect"), on2
        wait_device(srv, did, lambda d: d["online"] is True, timeout=10, what="back")
    finally:
        dev.close()


def presence_row(srv, shard, dev_id):
    """Whether dev_id has a presence row in shard's file."""
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(srv.data_dir, "shard-%d.db" % shard),
                         uri=True, timeout=2)
    try:
        return db.execute("SELECT 1 FROM presence WHERE id = ?", (dev_id,)).fetchone() is not None
    finally:
        db.close()


def test_device_deleted_while_its_shard_is_down(srv):
    """A device deleted while its owner shard is frozen, then killed: at
    the restart its presence row is removed and it gets no shard_restart
    event (it had one, for a device that no longer exists, and kept its row
    for good). Another device of that shard, online at the kill, gets its
    own; a marker event published after that one must come after any
    event of the deleted device."""
    if SHARDS < 2:
        pytest.skip("needs a shard frozen while another serves the API")
    by_shard = {}
    while True:  # two devices of one shard
        info = create_device(srv)
        shard = get_device(srv, info["id"])["shard"]
        by_shard.setdefault(shard, []).append(info)
        if len(by_shard[shard]) == 2:
            gone, kept = by_shard[shard]
            break
    clients = []
    try:
        with stream(srv) as s:
            for info in (gone, kept):
                clients.append(mqtt_connect(srv, info))
            seen = set()
            while len(seen) < 2:
                ev = s.next(5)
                did = ev.json["device_id"]
                if did in (gone["id"], kept["id"]) and json.loads(ev.payload)["status"] == "online":
                    seen.add(did)
                    last = ev  # the stream's order: the later of the two
        # its row, written in the commit after its status event
        assert wait_until(lambda: presence_row(srv, shard, gone["id"]), timeout=5)
        pids = srv.wait_shard_pids()
        os.kill(pids[shard], signal.SIGSTOP)
        try:
            r = api(srv, "DELETE", "/v1/devices/%s" % gone["id"], timeout=15)
        finally:
            try:
                os.kill(pids[shard], signal.SIGKILL)
            except ProcessLookupError:
                pass  # the watchdog replaced it first
        assert r.status in (200, 204), r
        deadline = time.monotonic() + 20
        while srv.shard_pids().get(shard) in (None, pids[shard]):
            assert time.monotonic() < deadline, "shard %d not respawned" % shard
            time.sleep(0.05)
        srv.wait_api_healthy(timeout=20)
        with SseStream(srv, "/v1/events", last_event_id=last.id) as s:
            assert s.status == 200, (s.status, s.body)
            marked = False
            while True:
                ev = s.next(15)
                assert ev.json.get("device_id") != gone["id"], ev
                if ev.name == "marker":
                    break
                if ev.name == "cyan/status" and ev.json["device_id"] == kept["id"]:
                    off = json.loads(ev.payload)
                    assert (off["status"], off["reason"]) == ("offline", "shard_restart"), off
                    assert not marked
                    r = api(srv, "POST", "/v1/events", json={"name": "marker", "data": "m"})
                    assert r.status == 202, r
                    marked = True
        assert not presence_row(srv, shard, gone["id"])
    finally:
        for c in clients:
            c.close()


def test_flapping_is_folded(api_server_factory):
    srv = api_server_factory(presence_flap_interval=5, presence_event_rate=RATE)
    info = create_device(srv)
    did = info["id"]
    with stream(srv, did) as s:
        # on off on off on off on: 7 changes in well under 5 s
        for i in range(4):
            c = mqtt_connect(srv, info, 5)
            if i < 3:
                c.send(rm.disconnect())
                c.wait_closed()
        got = []
        while not got or got[-1]["coalesced"] == 0:
            got.append(next_status(s, did, timeout=10)[1])
            assert len(got) <= 7, got
        assert [g["status"] for g in got[:4]] == ["online", "offline"] * 2, got
        assert got[-1]["status"] == "online", got
        assert sum(1 + g["coalesced"] for g in got) == 7, got
        c.send(rm.disconnect())
        c.wait_closed()
        # Its next change is told, with its own reason, when its limit allows.
        _, off = next_status(s, did, timeout=10)
        assert (off["status"], off["reason"], off["coalesced"]) == ("offline", "disconnect", 0)


def test_online_filter(srv):
    dev = online_device(srv)
    other = create_device(srv)
    try:
        r = api(srv, "GET", "/v1/devices?online=true")
        assert r.status == 200, r
        ids = [d["id"] for d in r.body]
        assert dev.id in ids and other["id"] not in ids, r.body
        assert all(d["online"] is True for d in r.body), r.body
        r = api(srv, "GET", "/v1/devices?online=false")
        assert r.status == 200, r
        ids = [d["id"] for d in r.body]
        assert other["id"] in ids and dev.id not in ids, r.body
        assert all(d["online"] is False for d in r.body), r.body
        r = api(srv, "GET", "/v1/devices")
        assert {dev.id, other["id"]} <= {d["id"] for d in r.body}, r.body
        for bad in ("yes", "1", "TRUE", ""):
            r = api(srv, "GET", "/v1/devices?online=" + bad)
            assert r.status == 400 and r.body["error"] == "bad_request", (bad, r)
    finally:
        dev.close()


def test_describe_fields_and_reserved_names(srv):
    info = create_device(srv)
    did = info["id"]
    desc = {"functions": ["f"], "version": "1.4.2", "model": "boron-lte"}
    dev = ApiDevice(srv, info, functions={"f": lambda a: "1"}, describe=desc)
    dev.start()
    try:
        d = wait_device(srv, did, lambda d: d["version"] == "1.4.2", what="described")
        assert (d["model"], d["functions"]) == ("boron-lte", ["f"]), d
        listed = [x for x in api(srv, "GET", "/v1/devices").body if x["id"] == did]
        assert listed and listed[0]["version"] == "1.4.2", listed
    finally:
        dev.close()
    c = mqtt_connect(srv, info, 5)
    try:
        too_long = json.dumps({"functions": ["f"], "version": "v" * 65}).encode()
        ack = c.publish("devices/%s/describe" % did, too_long, qos=1, pid=1)
        assert ack.rc == 0x99, ack
        ack = c.publish("devices/%s/describe" % did, b'{"model": "a\\u0007b"}', qos=1, pid=2)
        assert ack.rc == 0x99, ack
        # cyan/... events are the server's
        ack = c.publish("devices/%s/events/cyan/status" % did, b'{"status":"offline"}', qos=1,
                        pid=3)
        assert ack.rc == 0x87, ack
        ack = c.publish("events/cyan/x", b"1", qos=1, pid=4)
        assert ack.rc == 0x87, ack
    finally:
        c.close()
    d = get_device(srv, did)
    assert d["version"] == "1.4.2", d  # the refused describes left it as it was
    r = api(srv, "POST", "/v1/events", json={"name": "cyan/status", "data": "x"})
    assert r.status == 400 and "cyan/" in r.body["message"], r
