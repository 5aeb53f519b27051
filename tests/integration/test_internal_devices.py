"""Internal devices and tokens (store.h, "Internal devices and tokens"):
cyan's own synthetic devices, the canaries, never show to users.

The internal devices here are the real ones: those `cyan canary` ensures
for itself ("cyan:probe:<shard>", with the token "cyan:probe"), so the test
needs nothing but the product. Asserted:
  - they are in no device list (`GET /v1/devices`, `cyan device list`) and
    cannot be read, called, streamed or deleted by id or name with a user's
    token, nor removed with `cyan device remove`; a user's device beside
    them is untouched, and the probe keeps working after all that;
  - their events reach no event stream, live or replayed: the streams are
    open while a probe publishes, then a user device on the same shard
    publishes an event of the same name; events of one origin shard reach
    every stream in order, so the user's event is the barrier: had a
    canary event been streamed, it would have come first;
  - `cyan token list` shows the probe's token with the scope "internal";
  - an internal token (a row made here the way the registry stores one,
    since a real one's secret lives only in the process that asked for it)
    calls internal devices' functions and does nothing else.
"""

import hashlib
import hmac
import os
import secrets
import sqlite3
import time

import pytest

from apidevice import ApiDevice, SseStream, api, create_device
from conftest import SHARDS
from test_canary_client import nshards, probe
from test_shards import shard_of

pytestmark = pytest.mark.cyan_only


def run_probe(srv, *args):
    p = probe(srv, *args)
    assert p.status == 0, p
    return p


def user_device_on(srv, shard):
    """A device made through the API whose id hashes to shard, connected."""
    n = nshards(srv)
    for _ in range(200):
        info = create_device(srv)
        if shard_of(info["id"], n) == shard:
            dev = ApiDevice(srv, info, version=4)
            dev.start()
            return dev
        r = api(srv, "DELETE", "/v1/devices/%s" % info["id"])
        assert r.status == 200, r
    raise AssertionError("no device id on shard %d in 200 tries" % shard)


def test_internal_devices_hidden(api_server_factory):
    srv = api_server_factory()
    user = create_device(srv, "lamp")
    p = run_probe(srv)
    probes = set(p.devices.values())
    assert len(probes) == nshards(srv)

    r = api(srv, "GET", "/v1/devices")
    assert r.status == 200, r
    assert [d["id"] for d in r.body] == [user["id"]], r
    out = srv.cli("device", "list").stdout
    assert out.split() == [user["id"], "lamp"], out
    for dev in probes:
        for ref in (dev, "cyan:probe:0"):
            for method, path, body in (("GET", "/v1/devices/%s", None),
                                       ("GET", "/v1/devices/%s/variables/x", None),
                                       ("POST", "/v1/devices/%s/functions/ping", {"arg": "1"}),
                                       ("GET", "/v1/devices/%s/events", None),
                                       ("DELETE", "/v1/devices/%s", None)):
                r = api(srv, method, path % ref, json=body)
                assert r.status == 404, r
                assert r.body["error"] == "device_not_found", r
        cp = srv.cli("device", "remove", dev, check=False)
        assert cp.returncode == 1 and "no device" in cp.stderr, cp
    # The user's device is there, and named names cannot be taken.
    assert api(srv, "GET", "/v1/devices/lamp").status == 200
    r = api(srv, "POST", "/v1/devices", json={"name": "cyan:probe:0"})
    assert r.status == 400, r
    rows = [line.split() for line in srv.cli("token", "list").stdout.splitlines()]
    assert [row[1:3] for row in rows if row[1] == "cyan:probe"] == [["cyan:probe", "internal"]], \
        rows
    # Nothing above touched them: the probe walks the same devices again.
    q = run_probe(srv)
    assert q.devices == p.devices, (p, q)


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/cyan"])
def test_internal_events_not_streamed(api_server_factory, path):
    srv = api_server_factory()
    n = nshards(srv)
    shard = n - 1
    dev = user_device_on(srv, shard)
    try:
        with SseStream(srv, path) as s:
            assert s.status == 200, s.body
            first = run_probe(srv, "--shard", str(shard), "--count", "2")
            canary = first.devices[shard]
            # The barrier: a user's event of the same name, from the same shard.
            dev.publish_event("cyan-canary", b"user", qos=1)
            ev = s.next(5.0)
            assert ev.json["device_id"] == dev.id, (ev, canary)
            assert ev.event == "cyan-canary" and ev.json["data"] == "user", ev
            # Replayed from the start: only users' events were buffered.
            cursor = ".".join(["0"] * n)
            with SseStream(srv, path, last_event_id=cursor) as r:
                assert r.status == 200, r.body
                dev.publish_event("cyan-canary", b"user2", qos=1)
                got = r.take(2, 5.0)
                assert [(e.json["device_id"], e.json["data"]) for e in got] == \
                    [(dev.id, "user"), (dev.id, "user2")], got
            ev = s.next(5.0)
            assert (ev.json["device_id"], ev.json["data"]) == (dev.id, "user2"), ev
            assert all(e.json["device_id"] != canary for e in s.events()), s.events()
    finally:
        dev.close()


def forge_internal_token(srv, name="cyan:test"):
    """An internal token row, stored as the registry stores tokens (a salt
    and HMAC-SHA256(salt, the secret's 32 hex characters)); returns its text."""
    tid, secret = secrets.token_hex(6), secrets.token_hex(16)
    salt = os.urandom(16)
    digest = hmac.new(salt, secret.encode(), hashlib.sha256).digest()
    db = sqlite3.connect(os.path.join(srv.data_dir, "registry.db"), timeout=5)
    try:
        db.execute("INSERT INTO tokens(id, name, scope, salt, hash, created_at)"
                   " VALUES(?, ?, 64, ?, ?, ?)", (tid, name, salt, digest, int(time.time() * 1000)))
        db.commit()
    finally:
        db.close()
    return "cyt_%s_%s" % (tid, secret)


def test_internal_token_only_calls_internal_devices(api_server_factory):
    srv = api_server_factory()
    user = create_device(srv, "lamp")
    p = run_probe(srv, "--shard", "0")
    canary = p.devices[0]
    tok = forge_internal_token(srv)
    # Its one route: a call of an internal device (offline now: the probe
    # has ended, so 409, which only a found device gets).
    r = api(srv, "POST", "/v1/devices/%s/functions/ping" % canary, token=tok, json={"arg": "1"})
    assert r.status == 409 and r.body["error"] == "device_offline", r
    # A user's device does not exist for it.
    r = api(srv, "POST", "/v1/devices/%s/functions/ping" % user["id"], token=tok, json={})
    assert r.status == 404 and r.body["error"] == "device_not_found", r
    # Nothing else.
    for method, path, body in (("GET", "/v1/devices", None),
                               ("GET", "/v1/devices/%s" % canary, None),
                               ("GET", "/v1/devices/%s" % user["id"], None),
                               ("POST", "/v1/devices", {"name": "x"}),
                               ("DELETE", "/v1/devices/%s" % canary, None),
                               ("GET", "/v1/devices/%s/variables/x" % canary, None),
                               ("GET", "/v1/events", None),
                               ("POST", "/v1/events", {"name": "x"})):
        r = api(srv, method, path, token=tok, json=body)
        assert r.status == 403 and r.body["error"] == "forbidden", r
    s = SseStream(srv, "/v1/devices/%s/events" % canary, token=tok)
    assert s.status == 403, s.body
    # Health needs no token at all, as for everyone.
    assert api(srv, "GET", "/v1/health", token=tok).status == 200
    # The canary still runs, and the user's devices are as they were.
    run_probe(srv, "--shard", "0")
    r = api(srv, "GET", "/v1/devices")
    assert [d["id"] for d in r.body] == [user["id"]], r
