"""The HTTP API (docs/api.md): tokens, devices, presence, functions,
variables, errors, health; and the MQTT side of the device convention
(docs/device-protocol.md, "The device convention"): isolation of devices'
topic spaces, client id = device id, describe validation.

Requests go through curl (apidevice.api), a new connection each; devices are
apidevice.ApiDevice (paho) or raw MQTT clients where reason codes matter.
Servers run with isolate_devices=true (api_server fixtures).
"""

import json
import os
import re
import sqlite3
import stat
import time

import pytest

import rawmqtt as rm
from apidevice import (FUNCTIONS, ISO_MS_RE, VARIABLES, ApiDevice, api, call, create_device,
                       get_device, new_name, online_device, parse_time, read_var,
                       token_create, wait_device)
from conftest import SHARDS
from helpers import raw, wait_until
from test_shards import shard_of

pytestmark = pytest.mark.cyan_only

DEVICE_KEYS = {"id", "name", "created_at", "shard", "shard_healthy", "online", "protocol",
               "connected_since", "last_heard", "last_round_trip", "functions", "variables",
               "version", "model"}
PROTOCOL = {4: "mqtt3.1.1", 5: "mqtt5"}
# Refusals of the convention, by MQTT version: SUBACK code / CONNACK code.
SUB_REFUSED = {4: 0x80, 5: 0x87}
BAD_CLIENT_ID = {4: 2, 5: 0x85}
BAD_CREDENTIALS = {4: 4, 5: 0x86}



def nshards(srv):
    return int(srv.settings.get("shards", SHARDS))


def assert_error(r, status, error):
    """An error answer as docs/api.md says: JSON {"error", "message"}."""
    assert r.status == status and r.error == error, "expected %d %s; got %r" % (status, error, r)
    assert isinstance(r.body.get("message"), str) and r.body["message"], r
    assert r.headers.get("content-type", "").startswith("application/json"), r


def assert_time(text, lo=None, hi=None):
    assert isinstance(text, str) and ISO_MS_RE.match(text), "not an API time: %r" % (text,)
    t = parse_time(text)
    if lo is not None:
        assert t >= lo - 0.002, "%s is before %.3f" % (text, lo)
    if hi is not None:
        assert t <= hi + 0.002, "%s is after %.3f" % (text, hi)
    return t


@pytest.fixture
def dev5(api_server):
    d = online_device(api_server, 5, FUNCTIONS, VARIABLES)
    yield d
    d.close()


# ================================================================== health

def test_health_needs_no_token(api_server):
    r = api(api_server, "GET", "/v1/health", token=None)
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("application/json"), r
    assert r.body["status"] == "ok", r
    shards = r.body["shards"]
    assert [s["shard"] for s in shards] == list(range(nshards(api_server))), r
    for s in shards:
        assert s["state"] == "running" and s["healthy"] is True, r


# ================================================================== tokens

def test_admin_token_file(api_server):
    """The first start writes data_dir/admin-token, mode 0600, one line, and
    says so in the log; a restart keeps it (and it still works)."""
    path = api_server.admin_token_path
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    with open(path) as f:
        text = f.read()
    assert re.fullmatch(r"cyt_[0-9a-f]{12}_[0-9a-f]{32}\n", text), repr(text)
    assert "admin-token" in api_server.log(), "the log does not mention admin-token"
    assert api(api_server, "GET", "/v1/devices").status == 200
    api_server.restart()
    api_server.wait_api_healthy()
    with open(path) as f:
        assert f.read() == text, "admin-token changed on restart"
    r = api(api_server, "GET", "/v1/devices", token=text.strip())
    assert r.status == 200, r


BAD_AUTH = [
    None,                                        # no header
    "Bearer",                                    # no token
    "Bearer nonsense",                           # malformed
    "Bearer cyt_0123456789ab_0123",              # malformed (short)
    "Basic dXNlcjpwYXNzd29yZA==",                # another scheme
    "Bearer cyt_000000000000_" + "0" * 32,       # well formed, unknown
    "Bearer CYT_000000000000_" + "0" * 32,       # wrong case
]


def check_cases(cases, check):
    """Run check(case) for every case; report every failing one at once."""
    bad = []
    for case in cases:
        try:
            check(case)
        except AssertionError as e:
            bad.append("%r: %s" % (case, str(e)[:1500]))
    assert not bad, "%d of %d cases failed:\n%s" % (len(bad), len(cases), "\n".join(bad))


def test_bad_token_unauthorized(api_server):
    def check(auth):
        headers = {} if auth is None else {"Authorization": auth}
        for method, path, body in (("GET", "/v1/devices", None),
                                   ("POST", "/v1/devices", {"name": "nope"}),
                                   ("GET", "/v1/devices/nope/variables/x", None),
                                   ("GET", "/v1/nothing-here", None)):
            r = api(api_server, method, path, token=None, headers=headers, json=body)
            if path == "/v1/nothing-here" and r.status == 404:
                continue  # unknown path before authentication: either order is fine
            assert_error(r, 401, "unauthorized")
            assert r.headers.get("www-authenticate", "").startswith("Bearer"), r
    check_cases(BAD_AUTH, check)
    # Nothing was created by the refused POSTs.
    r = api(api_server, "GET", "/v1/devices")
    assert r.status == 200 and r.body == [], r


def test_wrong_secret_of_a_real_token_unauthorized(api_server):
    token = api_server.admin_token()
    last = token[-1]
    wrong = token[:-1] + ("0" if last != "0" else "1")
    r = api(api_server, "GET", "/v1/devices", token=wrong)
    assert_error(r, 401, "unauthorized")
    assert r.headers.get("www-authenticate", "").startswith("Bearer"), r


def test_cli_token_and_revocation(api_server):
    tid, token = token_create(api_server, "ci")
    assert re.fullmatch(r"[0-9a-f]{12}", tid), tid
    r = api(api_server, "GET", "/v1/devices", token=token)
    assert r.status == 200, r
    # A full token may write.
    r = api(api_server, "POST", "/v1/devices", token=token, json={"name": new_name("ci")})
    assert r.status == 201, r
    out = api_server.cli("token", "list").stdout
    assert tid in out and "ci" in out, out
    assert token not in out, "token list shows the secret:\n%s" % out
    api_server.cli("token", "revoke", tid)
    t0 = time.monotonic()
    got = []
    assert wait_until(lambda: got.append(api(api_server, "GET", "/v1/devices", token=token))
                      or got[-1].status == 401, timeout=3.0), got[-1]
    assert_error(got[-1], 401, "unauthorized")
    print("revocation effective after %.2fs" % (time.monotonic() - t0))
    # The admin token is untouched.
    assert api(api_server, "GET", "/v1/devices").status == 200


def test_read_only_token(api_server):
    """A read-only token (devices:read + events:read): devices and event
    streams; no function call, variable read (devices:call), event,
    creation or deletion (403 forbidden naming the scope, and nothing
    happens)."""
    _, ro = token_create(api_server, "viewer", read_only=True)
    dev = online_device(api_server, 5, FUNCTIONS, VARIABLES)
    try:
        did = dev.id
        r = api(api_server, "GET", "/v1/devices", token=ro)
        assert r.status == 200 and [d["id"] for d in r.body] == [did], r
        assert api(api_server, "GET", "/v1/devices/%s" % did, token=ro).status == 200
        r = read_var(api_server, did, "temperature", token=ro)
        assert_error(r, 403, "forbidden")
        assert r.body["scope"] == "devices:call", r
        assert "devices:call" in r.headers.get("www-authenticate", ""), r
        assert api(api_server, "GET", "/v1/health", token=ro).status == 200
        from apidevice import SseStream
        with SseStream(api_server, "/v1/events", token=ro) as s:
            assert s.status == 200, (s.status, s.body)
        with SseStream(api_server, "/v1/devices/%s/events" % did, token=ro) as s:
            assert s.status == 200, (s.status, s.body)
        n_calls = len(dev.calls)

        r = call(api_server, did, "num", token=ro)
        assert_error(r, 403, "forbidden")
        assert r.body["scope"] == "devices:call", r
        r = api(api_server, "POST", "/v1/events", token=ro, json={"name": "x", "data": "y"})
        assert_error(r, 403, "forbidden")
        assert r.body["scope"] == "events:publish", r
        r = api(api_server, "POST", "/v1/devices", token=ro, json={"name": "ro-made"})
        assert_error(r, 403, "forbidden")
        assert r.body["scope"] == "admin", r
        r = api(api_server, "DELETE", "/v1/devices/%s" % did, token=ro)
        assert_error(r, 403, "forbidden")
        sealed = stored_psk(api_server, did)
        r = api(api_server, "POST", "/v1/devices/%s/psk" % did, token=ro)
        assert_error(r, 403, "forbidden")
        assert stored_psk(api_server, did) == sealed, "a read-only token issued a PSK"

        time.sleep(0.2)
        assert len(dev.calls) == n_calls, dev.calls  # the refused call never reached it
        r = api(api_server, "GET", "/v1/devices")
        assert [d["id"] for d in r.body] == [did], r
        assert r.body[0]["online"] is True, r
        assert dev.disconnects == 0
    finally:
        dev.close()


# ================================================================== devices

def test_create_device_then_it_connects(api_server):
    name = new_name("kitchen")
    r = api(api_server, "POST", "/v1/devices", json={"name": name})
    assert r.status == 201, r
    assert r.headers.get("content-type", "").startswith("application/json"), r
    assert set(r.body) == {"id", "name", "secret", "psk"}, r
    assert re.fullmatch(r"[0-9a-f]{24}", r.body["id"]), r
    assert re.fullmatch(r"[0-9a-f]{32}", r.body["secret"]), r
    assert re.fullmatch(r"[0-9a-f]{32}", r.body["psk"]), r
    assert r.body["psk"] != r.body["secret"], r
    assert r.body["name"] == name
    # The secret and the PSK are shown only at creation.
    g = get_device(api_server, r.body["id"])
    for k in ("secret", "psk"):
        assert k not in g and r.body[k] not in json.dumps(g), g
    listed = api(api_server, "GET", "/v1/devices").text
    assert r.body["psk"] not in listed and '"psk"' not in listed, listed
    for version in (4, 5):
        with raw(api_server, version) as c:
            ack = c.connect(r.body["id"], username=r.body["id"], password=r.body["secret"])
            assert ack.rc == 0, ack
            c.disconnect()
    wrong = r.body["secret"][:-1] + ("0" if r.body["secret"][-1] != "0" else "1")
    with raw(api_server, 5) as c:
        ack = c.connect(r.body["id"], username=r.body["id"], password=wrong)
        assert ack.rc == BAD_CREDENTIALS[5], ack


def test_create_duplicate_name(api_server):
    name = new_name("twin")
    create_device(api_server, name)
    r = api(api_server, "POST", "/v1/devices", json={"name": name})
    assert_error(r, 409, "name_taken")
    r = api(api_server, "GET", "/v1/devices")
    assert [d["name"] for d in r.body].count(name) == 1, r


def test_create_device_bad_json(api_server):
    def check(body):
        r = api(api_server, "POST", "/v1/devices", data=body,
                headers={"Content-Type": "application/json"})
        assert_error(r, 400, "bad_json")
    check_cases(["not json", "{", "[]", "[{\"name\": \"a\"}]", "\"kitchen\"", "42", "null",
                 "{\"name\": 5}", "{\"name\": null}", "{\"name\": [\"a\"]}", ""], check)
    assert api(api_server, "GET", "/v1/devices").body == [], "a device was created"


def test_create_device_bad_name(api_server):
    def check(name):
        r = api(api_server, "POST", "/v1/devices", json={"name": name})
        assert_error(r, 400, "bad_request")
    check_cases(["", "has space", "x" * 65, "a/b", "caf\u00e9", "tab\there",
                 "5b0c9f3e2a7d41c6e8f01a2b"], check)
    assert api(api_server, "GET", "/v1/devices").body == [], "a device was created"


def test_create_device_name_rules_accept(api_server):
    for name in ("a", "x" * 64, "Kitchen_Sensor-2.b"):
        r = api(api_server, "POST", "/v1/devices", json={"name": name})
        assert r.status == 201 and r.body["name"] == name, r


def test_create_device_without_name(api_server):
    r = api(api_server, "POST", "/v1/devices", json={})
    assert r.status == 400 and r.error in ("bad_json", "bad_request"), r


def test_list_devices_fields_and_order(api_server):
    made = [create_device(api_server, new_name("l%d" % i)) for i in range(4)]
    t_end = time.time()
    r = api(api_server, "GET", "/v1/devices")
    assert r.status == 200 and isinstance(r.body, list), r
    assert r.headers.get("content-type", "").startswith("application/json"), r
    assert [d["id"] for d in r.body] == [m["id"] for m in made], r
    prev = 0
    for d, m in zip(r.body, made):
        assert set(d) == DEVICE_KEYS, "fields %r" % sorted(d)
        assert d["name"] == m["name"]
        t = assert_time(d["created_at"], hi=t_end + 1)
        assert t >= prev - 0.002, "creation times out of order: %r" % r.body
        prev = t
        assert d["shard"] == shard_of(d["id"], nshards(api_server)), d
        assert d["shard_healthy"] is True, d
        # Never connected: offline, nothing known.
        assert d["online"] is False, d
        for k in ("protocol", "connected_since", "last_heard", "last_round_trip"):
            assert d[k] is None, d
        assert d["functions"] == [] and d["variables"] == [], d


def test_get_device_by_id_and_by_name(api_server):
    m = create_device(api_server, new_name("pair"))
    by_id = get_device(api_server, m["id"])
    by_name = get_device(api_server, m["name"])
    assert set(by_id) == DEVICE_KEYS, by_id
    assert by_id == by_name
    assert by_id["id"] == m["id"] and by_id["name"] == m["name"]
    listed = [d for d in api(api_server, "GET", "/v1/devices").body if d["id"] == m["id"]]
    assert listed == [by_id]


def test_unknown_device(api_server):
    create_device(api_server)
    unknown = "0123456789abcdef01234567"
    for method, path, body in (
            ("GET", "/v1/devices/%s" % unknown, None),
            ("GET", "/v1/devices/no-such-device", None),
            ("DELETE", "/v1/devices/%s" % unknown, None),
            ("DELETE", "/v1/devices/no-such-device", None),
            ("POST", "/v1/devices/%s/functions/led" % unknown, {"arg": "on"}),
            ("GET", "/v1/devices/%s/variables/temperature" % unknown, None)):
        r = api(api_server, method, path, json=body)
        assert_error(r, 404, "device_not_found")


@pytest.mark.parametrize("by", ["id", "name"])
def test_delete_device(api_server, by):
    """DELETE: 200 {"id", "deleted": true}; its live connection is closed,
    it can no longer connect, and the API no longer knows it."""
    keep = online_device(api_server, 5, {"num": FUNCTIONS["num"]})
    dev = online_device(api_server, 5, {"num": FUNCTIONS["num"]}, reconnect=False)
    try:
        did, name, secret = dev.id, dev.info["name"], dev.secret
        ref = did if by == "id" else name
        r = api(api_server, "DELETE", "/v1/devices/%s" % ref)
        assert r.status == 200, r
        assert r.body == {"id": did, "deleted": True}, r
        assert dev.wait_gone(3.0), "the deleted device's connection is still open"
        assert_error(api(api_server, "GET", "/v1/devices/%s" % did), 404, "device_not_found")
        assert_error(api(api_server, "GET", "/v1/devices/%s" % name), 404, "device_not_found")
        assert_error(call(api_server, did, "num"), 404, "device_not_found")
        assert [d["id"] for d in api(api_server, "GET", "/v1/devices").body] == [keep.id]
        # Every shard refuses it within about a second: a shard's registry
        # cache sees another shard's deletion at its next recheck (200 ms,
        # docs/operations.md "The registry and its lock").
        for version in (4, 5):
            acks = []

            def refused():
                with raw(api_server, version) as c:
                    acks.append(c.connect(did, username=did, password=secret))
                    if acks[-1].rc != BAD_CREDENTIALS[version]:
                        return False
                    c.wait_closed(2.0)
                    return True
            assert wait_until(refused, timeout=1.5), acks[-1]
        assert_error(api(api_server, "DELETE", "/v1/devices/%s" % ref), 404, "device_not_found")
        # The name is free again, the other device unaffected.
        r = api(api_server, "POST", "/v1/devices", json={"name": name})
        assert r.status == 201 and r.body["id"] != did, r
        assert call(api_server, keep.id, "num").body["return_value"] == 42
        assert keep.disconnects == 0
    finally:
        dev.close()
        keep.close()


def stored_psk(srv, did):
    """What the registry keeps of device did's PSK (sealed bytes, or None)."""
    db = sqlite3.connect(os.path.join(srv.data_dir, "registry.db"))
    try:
        rows = db.execute("SELECT psk FROM devices WHERE id = ?", (did,)).fetchall()
    finally:
        db.close()
    assert len(rows) == 1, rows
    return rows[0][0]


def test_device_psk_rotate(api_server):
    """POST /v1/devices/{id}/psk: 200 {"id", "psk"}, a new PSK each time
    (by id or name), stored sealed (never its text), never shown by GET;
    404 for an unknown device, 405 for another method."""
    m = create_device(api_server, new_name("coap"))
    did, first = m["id"], m["psk"]
    sealed = stored_psk(api_server, did)
    assert isinstance(sealed, bytes) and len(sealed) == 60, sealed
    seen = {first}
    for ref in (did, m["name"]):
        r = api(api_server, "POST", "/v1/devices/%s/psk" % ref)
        assert r.status == 200, r
        assert r.headers.get("content-type", "").startswith("application/json"), r
        assert set(r.body) == {"id", "psk"} and r.body["id"] == did, r
        assert re.fullmatch(r"[0-9a-f]{32}", r.body["psk"]), r
        assert r.body["psk"] not in seen, r
        seen.add(r.body["psk"])
        now = stored_psk(api_server, did)
        assert len(now) == 60 and now != sealed, (now, sealed)
        assert r.body["psk"].encode() not in now
        sealed = now
    g = get_device(api_server, did)
    assert "psk" not in g and not any(p in json.dumps(g) for p in seen), g
    # The secret still works: only the PSK changed.
    with raw(api_server, 5) as c:
        ack = c.connect(did, username=did, password=m["secret"])
        assert ack.rc == 0, ack
        c.disconnect()
    for ref in ("0123456789abcdef01234567", "no-such-device"):
        assert_error(api(api_server, "POST", "/v1/devices/%s/psk" % ref), 404,
                     "device_not_found")
    r = api(api_server, "GET", "/v1/devices/%s/psk" % did)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers.get("allow") == "POST", r
    # Gone with its device.
    assert api(api_server, "DELETE", "/v1/devices/%s" % did).status == 200
    assert_error(api(api_server, "POST", "/v1/devices/%s/psk" % did), 404, "device_not_found")


# ================================================================== presence

@pytest.mark.parametrize("version", [4, 5])
def test_presence(api_server, version):
    info = create_device(api_server)
    did = info["id"]
    d = get_device(api_server, did)
    assert (d["online"], d["protocol"], d["connected_since"], d["last_heard"],
            d["last_round_trip"]) == (False, None, None, None, None), d
    t0 = time.time()
    dev = ApiDevice(api_server, info, version=version, functions={"ping": lambda a: "pong"},
                    variables={"temp": lambda: 20})
    dev.start()
    try:
        d = wait_device(api_server, did, lambda d: d["online"] is True and d["functions"],
                        what="online")
        t1 = time.time()
        assert d["protocol"] == PROTOCOL[version], d
        since = assert_time(d["connected_since"], t0 - 1, t1 + 1)
        heard = assert_time(d["last_heard"], since, t1 + 1)
        assert d["last_round_trip"] is None, d
        assert d["functions"] == ["ping"] and d["variables"] == ["temp"], d
        assert d["shard_healthy"] is True

        r = call(api_server, did, "ping")
        assert r.status == 200 and r.body["return_value"] == "pong", r
        t2 = time.time()
        d = get_device(api_server, did)
        rt = assert_time(d["last_round_trip"], since, t2 + 1)
        assert rt >= t1 - 1, d
        heard2 = assert_time(d["last_heard"], heard, t2 + 1)
        # The reply is a packet the device sent: last_heard moved with it.
        assert heard2 > heard and heard2 >= rt - 0.5, \
            "last_heard %s not updated by the reply (last_round_trip %s)" % (
                d["last_heard"], d["last_round_trip"])
        assert d["connected_since"] == get_device(api_server, did)["connected_since"]

        r = read_var(api_server, did, "temp")
        assert r.status == 200 and r.body["value"] == 20, r
        d2 = get_device(api_server, did)
        assert parse_time(d2["last_round_trip"]) >= rt, (d, d2)
        dev.close()
        d3 = wait_device(api_server, did, lambda d: d["online"] is False, what="offline")
        assert d3["protocol"] is None, d3
        assert d3["last_heard"] is not None and parse_time(d3["last_heard"]) >= \
            parse_time(d2["last_heard"]), (d2, d3)
        assert d3["last_round_trip"] == d2["last_round_trip"], (d2, d3)
        # The describe stays (retained); a call now finds the device offline.
        assert d3["functions"] == ["ping"], d3
        assert_error(call(api_server, did, "ping"), 409, "device_offline")
    finally:
        dev.close()


def test_empty_client_id_is_the_device_id(api_server):
    info = create_device(api_server)
    with raw(api_server, 5) as c:
        ack = c.connect("", username=info["id"], password=info["secret"])
        assert ack.rc == 0, ack
        assigned = ack.props.get("assigned_client_identifier")
        assert assigned == info["id"], ack
        d = wait_device(api_server, info["id"], lambda d: d["online"] is True, what="online")
        assert d["protocol"] == "mqtt5"
        c.disconnect()
    with raw(api_server, 4) as c:
        ack = c.connect("", username=info["id"], password=info["secret"])
        assert ack.rc == 0, ack
        d = wait_device(api_server, info["id"], lambda d: d["protocol"] == "mqtt3.1.1",
                        what="online over 3.1.1")
        assert d["online"] is True
        c.disconnect()


def test_describe_changes(api_server):
    dev = online_device(api_server, 5, {"f1": lambda a: "1"}, {"v1": lambda: 1})
    try:
        dev.describe(functions={"f2": lambda a: "2", "f3": lambda a: "3"},
                     variables={})
        d = wait_device(api_server, dev.id, lambda d: d["functions"] == ["f2", "f3"],
                        what="new describe")
        assert d["variables"] == [], d
        assert_error(call(api_server, dev.id, "f1"), 404, "function_not_found")
        assert_error(read_var(api_server, dev.id, "v1"), 404, "variable_not_found")
        assert call(api_server, dev.id, "f3").body["return_value"] == 3
        assert [c.name for c in dev.calls] == ["f3"], dev.calls
        # An empty retained describe clears it.
        dev.describe(payload=b"")
        d = wait_device(api_server, dev.id, lambda d: d["functions"] == [],
                        what="describe cleared")
        assert d["variables"] == [], d
        assert_error(call(api_server, dev.id, "f2"), 404, "function_not_found")
    finally:
        dev.close()


# ================================================================== functions

@pytest.mark.parametrize("version", [4, 5])
def test_function_calls(api_server, version):
    dev = online_device(api_server, version, FUNCTIONS, VARIABLES)
    try:
        did = dev.id
        cases = [  # (function, arg, expected return_value)
            ("num", None, 42),
            ("float", "", 21.5),
            ("obj", None, {"a": [1, 2], "b": "x"}),
            ("str", None, "hello world"),
            ("quoted", None, "quoted"),
            ("echo", "on", "on"),
            ("echo", "h\u00e9llo w\u00f6rld \u2713", "h\u00e9llo w\u00f6rld \u2713"),
            ("echo", "[1, 2", "[1, 2"),
            ("echo", "{\"k\": true}", {"k": True}),
            ("echo", "a" * 1024, "a" * 1024),    # the largest argument
            ("echo", "123456.78", 123456.78),     # numbers keep their digits
            ("echo", "3.14159265358979", 3.14159265358979),
        ]
        for fn, arg, want in cases:
            r = call(api_server, did, fn, arg=arg)
            assert r.status == 200, r
            assert r.headers.get("content-type", "").startswith("application/json"), r
            assert set(r.body) == {"id", "name", "return_value", "round_trip_ms"}, r
            assert r.body["id"] == did and r.body["name"] == fn, r
            assert r.body["return_value"] == want, r
            rtt = r.body["round_trip_ms"]
            assert isinstance(rtt, (int, float)) and 0 <= rtt <= r.elapsed * 1000 + 50, r
        calls = dev.wait_calls(len(cases))
        assert [(c.kind, c.name, c.arg) for c in calls] == \
            [("call", fn, arg or "") for fn, arg, _ in cases], calls
        assert dev.errors == [], dev.errors
        if version == 5:
            for c in calls:
                assert c.response_topic == "devices/%s/reply" % did, c
                assert c.request_id, c
                assert c.topic == "devices/%s/call/%s" % (did, c.name), c
        else:
            for c in calls:
                assert c.topic == "devices/%s/call/%s/%s" % (did, c.name, c.request_id), c
        ids = [c.request_id for c in calls]
        assert len(set(ids)) == len(ids), "request ids reused: %r" % ids
    finally:
        dev.close()


def test_function_default_arg_and_timeout(api_server, dev5):
    """No body fields: empty argument, default deadline (the device answers)."""
    r = api(api_server, "POST", "/v1/devices/%s/functions/echo" % dev5.id, json={})
    assert r.status == 200 and r.body["return_value"] == "", r
    assert dev5.wait_calls(1)[0].arg == ""


def test_function_not_found(api_server, dev5):
    r = call(api_server, dev5.id, "reboot", arg="now")
    assert_error(r, 404, "function_not_found")
    r = call(api_server, dev5.id, "temperature")  # a variable, not a function
    assert_error(r, 404, "function_not_found")
    time.sleep(0.3)
    assert dev5.calls == [], "the device was bothered: %r" % dev5.calls


@pytest.mark.parametrize("version", [4, 5])
def test_function_device_offline(api_server, version):
    dev = online_device(api_server, version, {"num": FUNCTIONS["num"]})
    did = dev.id
    dev.close()
    wait_device(api_server, did, lambda d: d["online"] is False, what="offline")
    r = call(api_server, did, "num", timeout=5)
    assert_error(r, 409, "device_offline")
    assert r.elapsed < 2.0, r


@pytest.mark.parametrize("version", [4, 5])
def test_function_timeout(api_server, version):
    dev = online_device(api_server, version, FUNCTIONS)
    try:
        r = call(api_server, dev.id, "silent", arg="x", timeout=1)
        assert_error(r, 504, "device_timeout")
        assert 0.9 <= r.elapsed <= 3.0, "504 after %.2fs for a 1 s deadline" % r.elapsed
        (c,) = dev.wait_calls(1)
        assert (c.name, c.arg) == ("silent", "x")
        # A late answer to that request is ignored, and the next call gets
        # its own answer.
        if version == 5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            p = Properties(PacketTypes.PUBLISH)
            p.CorrelationData = c.request_id
            dev.c.publish(c.response_topic, b"\"late\"", 1, properties=p).wait_for_publish(3)
        else:
            dev.publish("devices/%s/reply/%s" % (dev.id, c.request_id), b"\"late\"")
        r = call(api_server, dev.id, "num")
        assert r.status == 200 and r.body["return_value"] == 42, r
        # A reply to a request id that never existed is ignored too.
        dev.publish("devices/%s/reply/%s" % (dev.id, "ffff0000"), b"1")
        r = call(api_server, dev.id, "quoted")
        assert r.status == 200 and r.body["return_value"] == "quoted", r
        assert dev.disconnects == 0
    finally:
        dev.close()


def test_function_bad_request(api_server, dev5):
    path = "/v1/devices/%s/functions/echo" % dev5.id

    def check(case):
        body, error = case
        if isinstance(body, str):
            r = api(api_server, "POST", path, data=body,
                    headers={"Content-Type": "application/json"})
        else:
            r = api(api_server, "POST", path, json=body)
        assert_error(r, 400, error)
    check_cases([
        ({"timeout": 0}, "bad_request"),
        ({"timeout": 61}, "bad_request"),
        ({"timeout": -1}, "bad_request"),
        ({"timeout": "x"}, "bad_json"),
        ({"timeout": "10"}, "bad_json"),
        ({"arg": "a" * 1025}, "bad_request"),
        ({"arg": 5}, "bad_json"),
        ({"arg": ["on"]}, "bad_json"),
        ("not json", "bad_json"),
        ("[]", "bad_json"),
        ("\"on\"", "bad_json"),
    ], check)
    time.sleep(0.1)
    assert dev5.calls == [], dev5.calls


def test_body_too_large(api_server_factory):
    srv = api_server_factory(http_max_body=1024)
    dev = online_device(srv, 5, {"echo": FUNCTIONS["echo"]})
    try:
        big = json.dumps({"arg": "a" * 1000, "pad": "b" * 1000})  # about 2000 bytes
        assert len(big) > 1024
        r = api(srv, "POST", "/v1/devices/%s/functions/echo" % dev.id, data=big,
                headers={"Content-Type": "application/json"})
        assert_error(r, 413, "body_too_large")
        r = api(srv, "POST", "/v1/devices", data=json.dumps({"name": "x" * 2000}),
                headers={"Content-Type": "application/json"})
        assert_error(r, 413, "body_too_large")
        # Chunked (no Content-Length): judged while it arrives.
        r = api(srv, "POST", "/v1/devices/%s/functions/echo" % dev.id, data=big,
                headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        assert_error(r, 413, "body_too_large")
        assert dev.calls == []
        # Under the limit: fine.
        r = call(srv, dev.id, "echo", arg="a" * 900)
        assert r.status == 200 and r.body["return_value"] == "a" * 900, r
    finally:
        dev.close()


def test_method_not_allowed(api_server, dev5):
    did = dev5.id
    cases = [  # (method, path, methods Allow must list)
        ("GET", "/v1/devices/%s/functions/num" % did, {"POST"}),
        ("DELETE", "/v1/devices/%s/functions/num" % did, {"POST"}),
        ("PUT", "/v1/devices", {"GET", "POST"}),
        ("DELETE", "/v1/devices", {"GET", "POST"}),
        ("POST", "/v1/devices/%s" % did, {"GET", "DELETE"}),
        ("PUT", "/v1/devices/%s" % did, {"GET", "DELETE"}),
        ("POST", "/v1/devices/%s/variables/temperature" % did, {"GET"}),
        ("PUT", "/v1/events", {"GET", "POST"}),
        ("POST", "/v1/health", {"GET"}),
    ]
    for method, path, allowed in cases:
        r = api(api_server, method, path, json={} if method in ("POST", "PUT") else None)
        assert_error(r, 405, "method_not_allowed")
        allow = {m.strip().upper() for m in r.headers.get("allow", "").split(",") if m.strip()}
        assert allowed <= allow, "%s %s: Allow %r" % (method, path, r.headers.get("allow"))
    assert dev5.calls == []
    assert get_device(api_server, did)["online"] is True


def test_unknown_path(api_server, dev5):
    def check(path):
        path = path % {"id": dev5.id}
        r = api(api_server, "GET", path)
        assert_error(r, 404, "not_found")
        r = api(api_server, "POST", path, json={})
        assert_error(r, 404, "not_found")
    # (/v1/devices/{id}/nothing is Particle's path of a function or variable
    # "nothing": test_particle_paths.py.)
    check_cases(["/", "/v1", "/v1/", "/v1/nothing", "/v2/devices", "/v1/devicesx",
                 "/v1/devices/%(id)s/functions", "/v1/devices/%(id)s/functions/num/extra"], check)
    assert dev5.calls == []


def test_headers_too_large(api_server):
    r = api(api_server, "GET", "/v1/devices", headers={"X-Pad": "a" * 17000})
    assert_error(r, 431, "headers_too_large")
    r = api(api_server, "GET", "/v1/devices", headers={"X-Pad": "a" * 8000})
    assert r.status == 200, r


def test_keepalive_and_idle_timeout(api_server_factory):
    """Several requests on one connection; an idle connection is closed after
    http_idle_timeout seconds."""
    import http.client
    import socket
    srv = api_server_factory(http_idle_timeout=1)
    auth = {"Authorization": "Bearer %s" % srv.admin_token()}
    conn = http.client.HTTPConnection(srv.host, srv.http_port, timeout=5)
    try:
        conn.request("GET", "/v1/health")
        r = conn.getresponse()
        r.read()
        assert r.status == 200 and not r.will_close, r.getheaders()
        sock = conn.sock
        conn.request("GET", "/v1/devices", headers=auth)
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read()) == []
        conn.request("POST", "/v1/devices", body=json.dumps({"name": "ka"}),
                     headers=dict(auth, **{"Content-Type": "application/json"}))
        r = conn.getresponse()
        assert r.status == 201, r.read()
        r.read()
        assert conn.sock is sock, "the connection was not kept alive"
        # Idle now: closed within about a second.
        t0 = time.monotonic()
        sock.settimeout(4)
        assert sock.recv(1) == b"", "data on an idle connection?"
        idle = time.monotonic() - t0
        assert 0.5 <= idle <= 3.0, "idle connection closed after %.2fs (http_idle_timeout=1)" % idle
    finally:
        conn.close()
    # A connection that never sends a request is closed the same way.
    s = socket.create_connection((srv.host, srv.http_port), timeout=4)
    t0 = time.monotonic()
    try:
        assert s.recv(1) == b""
    finally:
        s.close()
    assert time.monotonic() - t0 <= 3.0


def test_max_connections(api_server_factory):
    """http_max_connections per shard: a connection over the limit is not
    served (closed at accept, or left waiting) while the others are open;
    once one closes, a new one is served."""
    import socket
    srv = api_server_factory(shards=1, http_max_connections=2)
    held = [socket.create_connection((srv.host, srv.http_port), timeout=3) for _ in range(2)]
    extra = None
    try:
        time.sleep(0.2)  # both accepted
        extra = socket.create_connection((srv.host, srv.http_port), timeout=3)
        try:
            extra.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            pass
        extra.settimeout(1.0)
        try:
            data = extra.recv(65536)
            state = "closed" if data == b"" else "served"
        except socket.timeout:
            state = "waiting"
        except ConnectionResetError:
            state = "closed"
        assert state != "served", "a connection over http_max_connections was served"
        print("the connection over the limit was %s" % state)
        held.pop().close()
        if state == "waiting":
            extra.settimeout(3.0)
            data = extra.recv(65536)
            assert data.startswith(b"HTTP/1.1 200"), data[:200]
        extra.close()
        extra = None
        ok = []
        assert wait_until(lambda: ok.append(api(srv, "GET", "/v1/health", token=None))
                          or ok[-1].status == 200, timeout=3.0), ok[-1:]
    finally:
        for s in held:
            s.close()
        if extra is not None:
            extra.close()


# ================================================================== variables

@pytest.mark.parametrize("version", [4, 5])
def test_variables(api_server, version):
    dev = online_device(api_server, version, FUNCTIONS, VARIABLES)
    try:
        cases = [("temperature", 21.5), ("status", "ok"), ("config", {"x": 1, "y": [True, None]})]
        for name, want in cases:
            r = read_var(api_server, dev.id, name, timeout=5)
            assert r.status == 200, r
            assert set(r.body) == {"id", "name", "value", "round_trip_ms"}, r
            assert (r.body["id"], r.body["name"], r.body["value"]) == (dev.id, name, want), r
            assert isinstance(r.body["round_trip_ms"], (int, float)), r
        r = read_var(api_server, dev.id, "temperature")  # the default deadline
        assert r.status == 200 and r.body["value"] == 21.5, r
        calls = dev.wait_calls(4)
        assert [(c.kind, c.name, c.arg) for c in calls] == \
            [("get", n, "") for n, _ in cases] + [("get", "temperature", "")], calls
        if version == 5:
            assert all(c.topic == "devices/%s/get/%s" % (dev.id, c.name) and c.request_id
                       and c.response_topic == "devices/%s/reply" % dev.id for c in calls), calls
        else:
            assert all(c.topic == "devices/%s/get/%s/%s" % (dev.id, c.name, c.request_id)
                       for c in calls), calls
        assert dev.errors == []

        assert_error(read_var(api_server, dev.id, "humidity"), 404, "variable_not_found")
        assert_error(read_var(api_server, dev.id, "num"), 404, "variable_not_found")
        time.sleep(0.2)
        assert len(dev.calls) == 4, dev.calls

        r = read_var(api_server, dev.id, "silent", timeout=1)
        assert_error(r, 504, "device_timeout")
        assert 0.9 <= r.elapsed <= 3.0, r.elapsed
    finally:
        dev.close()


def test_variable_bad_timeout(api_server, dev5):
    def check(case):
        q, errors = case
        r = api(api_server, "GET", "/v1/devices/%s/variables/temperature?timeout=%s"
                % (dev5.id, q))
        assert r.status == 400 and r.error in errors, r
    check_cases([("0", ("bad_request",)), ("61", ("bad_request",)),
                 ("x", ("bad_request", "bad_json"))], check)
    time.sleep(0.1)
    assert dev5.calls == []


def test_variable_device_offline(api_server):
    dev = online_device(api_server, 4, variables={"t": lambda: 1})
    did = dev.id
    dev.close()
    wait_device(api_server, did, lambda d: d["online"] is False, what="offline")
    assert_error(read_var(api_server, did, "t"), 409, "device_offline")


# ================================================================== isolation (MQTT)

def raw_device(srv, info, version, client_id=None):
    c = raw(srv, version)
    ack = c.connect(info["id"] if client_id is None else client_id, username=info["id"],
                    password=info["secret"])
    assert ack.rc == 0, ack
    return c


@pytest.mark.parametrize("version", [4, 5])
def test_isolation_subscribe(api_server, version):
    a, b = create_device(api_server), create_device(api_server)
    A, B = a["id"], b["id"]
    no = SUB_REFUSED[version]
    filters = [
        ("devices/%s/#" % B, no),
        ("devices/%s/#" % A, 1),
        ("#", no),
        ("devices/+/events/#", no),
        ("devices/#", no),
        ("+/%s/#" % A, no),
        ("events/#", 1),
        ("events/alarm/+", 1),
        ("devices/%s/events/+" % A, 1),
        ("devices/%s/call/x" % B, no),
        ("elsewhere/topic", no),
        ("devices", no),
    ]
    with raw_device(api_server, a, version) as c:
        sub = c.subscribe([(f, 1) for f, _ in filters])
        assert sub.codes == [code for _, code in filters], list(zip(
            [f for f, _ in filters], ["0x%02x" % x for x in sub.codes]))
        assert c.is_open(0.2)
        # What a granted filter gets: its own space, the shared one.
        with raw_device(api_server, b, 5) as cb:
            cb.publish("devices/%s/events/x" % B, b"b-own", qos=1, pid=1)
            cb.publish("events/alarm/door", b"shared", qos=1, pid=2)
        p = c.recv_publish(3.0)
        assert (p.topic, p.payload) == ("events/alarm/door", b"shared"), p
        c.expect_nothing(0.3)


def test_isolation_publish_v5(api_server):
    """MQTT 5: QoS 1 outside its spaces -> PUBACK 0x87; QoS 0 dropped; the
    target device never sees a forged call."""
    a = create_device(api_server)
    victim = online_device(api_server, 5, {"led": lambda arg: "1"})
    V = victim.id
    try:
        with raw_device(api_server, a, 5) as c:
            for i, topic in enumerate(["devices/%s/call/led/1234" % V,
                                       "devices/%s/call/led" % V,
                                       "devices/%s/describe" % V,
                                       "devices/%s/events/x" % V,
                                       "somewhere/else", "devices"], start=1):
                ack = c.publish(topic, b"on", qos=1, pid=i)
                assert ack.rc == 0x87, "%s: PUBACK %r" % (topic, ack)
            c.publish("devices/%s/call/led/99" % V, b"on", qos=0)
            assert c.is_open(0.2), "a refused MQTT 5 publish must not close the connection"
            ack = c.publish("devices/%s/events/ok" % a["id"], b"mine", qos=1, pid=20)
            assert ack.rc == 0, ack
            ack = c.publish("events/ok", b"shared", qos=1, pid=21)
            assert ack.rc == 0, ack
        time.sleep(0.3)
        assert victim.calls == [] and victim.messages == [], (victim.calls, victim.messages)
        d = get_device(api_server, V)
        assert d["functions"] == ["led"], "the describe was overwritten: %r" % d
    finally:
        victim.close()


@pytest.mark.parametrize("qos", [0, 1])
def test_isolation_publish_v311_disconnects(api_server, qos):
    a = create_device(api_server)
    victim = online_device(api_server, 5, {"led": lambda arg: "1"})
    try:
        with raw_device(api_server, a, 4) as c:
            c.send(rm.publish("devices/%s/call/led/1234" % victim.id, b"on", qos=qos,
                              pid=1 if qos else None, version=4))
            got = c.wait_closed(3.0)
            assert not any(isinstance(p, rm.Ack) for p in got), got
        time.sleep(0.2)
        assert victim.calls == [], victim.calls
        # Its own spaces are fine.
        with raw_device(api_server, a, 4) as c:
            assert c.publish("devices/%s/events/x" % a["id"], b"1", qos=1, pid=1).rc == 0
            assert c.publish("events/x", b"1", qos=1, pid=2).rc == 0
            assert c.is_open(0.2)
    finally:
        victim.close()


@pytest.mark.parametrize("version", [4, 5])
def test_client_id_must_be_device_id(api_server, version):
    a, b = create_device(api_server), create_device(api_server)
    for cid in ("other-client", b["id"], a["id"] + "x", a["name"]):
        with raw(api_server, version) as c:
            ack = c.connect(cid, username=a["id"], password=a["secret"])
            assert ack.rc == BAD_CLIENT_ID[version], "client id %r: %r" % (cid, ack)
            c.wait_closed(2.0)
    assert get_device(api_server, b["id"])["online"] is False
    with raw_device(api_server, a, version) as c:
        assert c.is_open(0.1)


def test_events_space_both_ways(api_server):
    """events/... is open to every device: publish and subscribe, both
    protocol versions; a device's own events reach its own space only."""
    listener = online_device(api_server, 5, events=True)
    b = create_device(api_server)
    try:
        with raw_device(api_server, b, 4) as c:
            assert c.subscribe([("events/#", 1)]).codes == [1]
            # Its own subscription matches too: the PUBACK and the PUBLISH
            # may come in either order.
            c.send(rm.publish("events/alarm", b"from-b", qos=1, pid=1, version=4))
            got = [c.read(3.0), c.read(3.0)]
            acks = [p for p in got if isinstance(p, rm.Ack)]
            pubs = [p for p in got if isinstance(p, rm.Publish)]
            assert len(acks) == 1 and acks[0].pid == 1 and acks[0].rc == 0, got
            assert len(pubs) == 1 and (pubs[0].topic, pubs[0].payload) == \
                ("events/alarm", b"from-b"), got
            c.send(rm.puback(pubs[0].pid, version=4))
            assert listener.wait_events(1) == [("events/alarm", b"from-b")]
            listener.publish_shared("status/up", b"from-listener")
            p = c.recv_publish(3.0)
            assert (p.topic, p.payload) == ("events/status/up", b"from-listener"), p
            listener.publish_event("private", b"own")  # devices/<id>/events/private
            c.expect_nothing(0.3)
    finally:
        listener.close()


INVALID_DESCRIBES = [
    b"not json",
    b"[\"led\"]",
    b"{\"functions\": \"led\"}",
    b"{\"functions\": [\"bad name!\"]}",
    b"{\"functions\": [\"\"]}",
    b"{\"functions\": [\"" + b"x" * 65 + b"\"]}",
    b"{\"functions\": [1]}",
    b"{\"variables\": [\"a/b\"]}",
    json.dumps({"functions": ["f%d" % i for i in range(65)]}).encode(),
    json.dumps({"functions": ["f%03d" % i for i in range(60)],
                "variables": ["v%s" % ("x" * 60 + "%02d" % i) for i in range(60)]}).encode(),
]


def test_invalid_describe_refused_v5(api_server):
    assert len(INVALID_DESCRIBES[-1]) > 4096
    info = create_device(api_server)
    with raw_device(api_server, info, 5) as c:
        ok = json.dumps({"functions": ["led"], "variables": ["t"]}).encode()
        assert c.publish("devices/%s/describe" % info["id"], ok, qos=1, pid=1).rc == 0
        wait_device(api_server, info["id"], lambda d: d["functions"] == ["led"],
                    what="described")
        for i, bad in enumerate(INVALID_DESCRIBES, start=2):
            ack = c.publish("devices/%s/describe" % info["id"], bad, qos=1, retain=True, pid=i)
            assert ack.rc == 0x99, "describe %r: %r" % (bad[:80], ack)
        assert c.is_open(0.1)
        d = get_device(api_server, info["id"])
        assert (d["functions"], d["variables"]) == (["led"], ["t"]), d
        # Limits that are fine: 64 names of 64 characters, within 4 KiB.
        fine = json.dumps({"functions": ["f%02d" % i for i in range(64)],
                           "variables": ["v" * 64]}).encode()
        assert len(fine) <= 4096
        assert c.publish("devices/%s/describe" % info["id"], fine, qos=1, pid=99).rc == 0
        d = wait_device(api_server, info["id"], lambda d: len(d["functions"]) == 64,
                        what="64 functions")
        assert d["variables"] == ["v" * 64], d


def test_invalid_describe_qos0_dropped_v5_and_v311_disconnected(api_server):
    """An invalid describe is not kept: at QoS 0 from MQTT 5 it is dropped
    (the connection stays); from MQTT 3.1.1 the device is disconnected (it
    has no other way to hear it)."""
    info = create_device(api_server)
    topic = "devices/%s/describe" % info["id"]
    with raw_device(api_server, info, 5) as c:
        ok = json.dumps({"functions": ["led"]}).encode()
        assert c.publish(topic, ok, qos=1, pid=1).rc == 0
        wait_device(api_server, info["id"], lambda d: d["functions"] == ["led"],
                    what="described")
        c.publish(topic, b"{\"functions\": 7}", qos=0)
        assert c.is_open(0.3), "an invalid QoS 0 describe from MQTT 5 is dropped, not a disconnect"
        c.disconnect()
    with raw_device(api_server, info, 4) as c:
        c.send(rm.publish(topic, b"{\"functions\": 7}", qos=1, pid=2, version=4))
        got = c.wait_closed(3.0)
        assert not any(isinstance(p, rm.Ack) for p in got), got
    d = get_device(api_server, info["id"])
    assert d["functions"] == ["led"], d
