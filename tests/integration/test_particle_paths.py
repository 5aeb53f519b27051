"""Particle's paths for function calls and variable reads (docs/api.md,
"Particle compatibility"): POST /v1/devices/{id}/{function} with a form
(arg=...) or JSON body, GET /v1/devices/{id}/{variable}[?format=raw], with
Particle's reply fields; the same scopes, deadlines, limits and errors as
cyan's own routes; cyan's own sub-paths (psk, events, functions, variables)
winning over a function or variable of that name.

Requests go through curl (apidevice.api: a new connection each, so with
several shards they land on different shards from their device's owner);
a few that curl would not send (no Content-Type) go over a raw socket.
"""

import re
import time

import pytest

from apidevice import (FUNCTIONS, ISO_MS_RE, VARIABLES, api, call, online_device,
                       parse_time, token_create, wait_device)
from test_api_abuse import connect, head, read_answer

pytestmark = pytest.mark.cyan_only



@pytest.fixture
def dev(api_server):
    d = online_device(api_server, 5, FUNCTIONS, VARIABLES)
    yield d
    d.close()


def assert_error(r, status, error):
    assert r.status == status and r.error == error, "expected %d %s; got %r" % (status, error, r)
    assert isinstance(r.body.get("message"), str) and r.body["message"], r


def pcall(srv, ref, function, data=None, json_body=None, token=None, query="", **kw):
    """POST /v1/devices/<ref>/<function>: data (a form, sent as curl -d
    sends it) or json_body."""
    kw.setdefault("timeout", 20)
    args = dict(data=data) if json_body is None else dict(json=json_body)
    if token is not None:
        args["token"] = token
    return api(srv, "POST", "/v1/devices/%s/%s%s" % (ref, function, query), **args, **kw)


def pget(srv, ref, variable, query="", **kw):
    kw.setdefault("timeout", 20)
    return api(srv, "GET", "/v1/devices/%s/%s%s" % (ref, variable, query), **kw)


def marker(srv, d):
    """A good call after refused ones: once the device has it, it has every
    request sent before it (the owner sends a device's requests in order),
    so its list of requests shows whether a refused one reached it."""
    n = len(d.calls)
    r = pcall(srv, d.id, "led", data="arg=marker")
    assert r.status == 200, r
    d.wait_calls(n + 1)
    return [(c.kind, c.name, c.arg) for c in d.calls]


# ================================================================== calls

def test_call_form_and_json(api_server, dev):
    want = {"id": dev.id, "name": dev.info["name"], "connected": True, "return_value": 1}
    for r in (pcall(api_server, dev.id, "led", data="arg=on"),
              pcall(api_server, dev.id, "led", json_body={"arg": "on"}),
              pcall(api_server, dev.info["name"], "led", data="arg=on"),
              pcall(api_server, dev.id, "led", data="arg=on",
                    headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}),
              pcall(api_server, dev.id, "led", data='{"arg": "on"}',
                    headers={"Content-Type": "Application/JSON"}),
              # curl -d '{"arg":"on"}' says it is a form: it is the JSON it looks like
              pcall(api_server, dev.id, "led", data=' {"arg": "on"}',
                    headers={"Content-Type": "application/x-www-form-urlencoded"})):
        assert r.status == 200, r
        assert r.headers.get("content-type", "").startswith("application/json"), r
        assert r.body == want, r
    assert [c.arg for c in dev.calls] == ["on"] * 6, dev.calls
    assert all(c.name == "led" and c.kind == "call" for c in dev.calls), dev.calls
    # Another arg: another return value, an int as Particle's.
    r = pcall(api_server, dev.id, "led", data="arg=off")
    assert r.status == 200 and r.body["return_value"] == 0, r
    # No body at all, an empty form, an empty JSON object: an empty arg.
    for kw in (dict(), dict(data=""), dict(json_body={}), dict(data="timeout=5")):
        r = pcall(api_server, dev.id, "echo", **kw)
        assert r.status == 200 and r.body["return_value"] == "", (kw, r)
        assert dev.calls[-1].arg == "", (kw, dev.calls[-1])


def test_call_percent_encoding(api_server, dev):
    cases = [
        ("arg=a%20b%2Bc+d%26e%3Df", "a b+c d&e=f"),
        ("arg=caf%C3%A9", "caf\u00e9"),
        ("arg=%7B%22k%22%3A1%7D", '{"k":1}'),
        ("x=1&arg=two&y=%41", "two"),                  # other fields are ignored
        ("arg", ""),                                    # a field without '='
        ("&&arg=z&&", "z"),
        ("ARG=no&arg=yes", "yes"),                      # names are case-sensitive
        ("arg=100%25", "100%"),
    ]
    for form, want in cases:
        r = pcall(api_server, dev.id, "echo", data=form)
        assert r.status == 200, (form, r)
        assert dev.calls[-1].arg == want, (form, dev.calls[-1])
    # The return value is the device's: JSON when it parses, else a string.
    assert pcall(api_server, dev.id, "echo", data="arg=hello").body["return_value"] == "hello"
    assert pcall(api_server, dev.id, "echo", data="arg=%7B%22k%22%3A1%7D").body[
        "return_value"] == {"k": 1}
    r = pcall(api_server, dev.id, "tenth")
    assert r.status == 200 and re.search(r'"return_value":0\.1[,}]', r.text), r  # not 0.1000...01


def test_call_bad_bodies(api_server, dev):
    """Refused before the device is asked: 400 for a form that does not
    decode or says a thing twice, 415 for a body that is neither form nor
    JSON, the JSON errors of cyan's own route."""
    bad = [
        (dict(data="arg=%zz"), 400, "bad_request"),
        (dict(data="arg=%4"), 400, "bad_request"),
        (dict(data="arg=a&arg=b"), 400, "bad_request"),
        (dict(data="arg=%00"), 400, "bad_request"),
        (dict(data="arg=%FF%FE"), 400, "bad_request"),
        (dict(data="arg=1&timeout=0"), 400, "bad_request"),
        (dict(data="arg=1&timeout=61"), 400, "bad_request"),
        (dict(data="arg=1&timeout=soon"), 400, "bad_request"),
        (dict(data="arg=hi", headers={"Content-Type": "text/plain"}), 415,
         "unsupported_media_type"),
        (dict(json_body={"arg": 5}), 400, "bad_json"),
        (dict(json_body={"arg": "x", "timeout": "5"}), 400, "bad_json"),
        (dict(data="{nope", headers={"Content-Type": "application/json"}), 400, "bad_json"),
        (dict(data="arg=" + "a" * 1025), 400, "bad_request"),
        (dict(data="arg=on", query="?timeout=0"), 400, "bad_request"),
    ]
    for kw, status, error in bad:
        r = pcall(api_server, dev.id, "echo", **kw)
        assert r.status == status and r.error == error, (kw, r)
    r = pcall(api_server, dev.id, "echo", data="arg=a&arg=b")
    assert "arg" in r.body["message"], r
    # 1024 bytes is the limit, as on cyan's route (percent-encoded: counted decoded).
    r = pcall(api_server, dev.id, "echo", data="arg=" + "%41" * 1024)
    assert r.status == 200 and r.body["return_value"] == "A" * 1024, r
    assert marker(api_server, dev) == [("call", "echo", "A" * 1024), ("call", "led", "marker")]


def test_call_without_content_type(api_server, dev):
    """No Content-Type (not what curl sends): a body that starts with '{' is
    JSON, anything else a form."""
    for body, want in ((b"arg=raw%20form", "raw form"), (b' {"arg": "raw json"}', "raw json")):
        s = connect(api_server)
        try:
            s.sendall(head("POST", "/v1/devices/%s/echo" % dev.id, api_server.admin_token(),
                           ["Content-Length: %d" % len(body)]) + body)
            a = read_answer(s, timeout=10)
        finally:
            s.close()
        assert a is not None and a.status == 200, (body, a)
        assert a.body["return_value"] == want and dev.calls[-1].arg == want, (body, a)


def test_call_deadline(api_server, dev):
    """timeout as in cyan's route (seconds, 1 to 60): from the body, else
    from the query."""
    for kw in (dict(data="timeout=1"), dict(json_body={"timeout": 1}),
               dict(data="", query="?timeout=1")):
        t0 = time.monotonic()
        r = pcall(api_server, dev.id, "silent", **kw)
        took = time.monotonic() - t0
        assert_error(r, 504, "device_timeout")
        assert 0.9 <= took < 3.0, (kw, took, r)


# ================================================================== variables

def test_variable_read(api_server, dev):
    for ref in (dev.id, dev.info["name"]):
        t0 = time.time()
        r = pget(api_server, ref, "temperature")
        t1 = time.time()
        assert r.status == 200, r
        b = r.body
        assert set(b) == {"cmd", "name", "result", "coreInfo"}, r
        assert b["cmd"] == "VarReturn" and b["name"] == "temperature" and b["result"] == 21.5, r
        info = b["coreInfo"]
        assert set(info) == {"deviceID", "name", "connected", "last_heard"}, r
        assert info["deviceID"] == dev.id and info["name"] == dev.info["name"], r
        assert info["connected"] is True, r
        assert ISO_MS_RE.match(info["last_heard"]), r
        assert t0 - 0.01 <= parse_time(info["last_heard"]) <= t1 + 0.01, (t0, t1, r)
    assert pget(api_server, dev.id, "status").body["result"] == "ok"
    assert pget(api_server, dev.id, "config").body["result"] == {"x": 1, "y": [True, None]}
    assert [c.kind for c in dev.calls] == ["get"] * 4, dev.calls


def test_variable_raw_format(api_server, dev):
    for var, text in (("temperature", "21.5"), ("status", "ok"),
                      ("config", '{"x":1,"y":[true,null]}')):
        r = pget(api_server, dev.id, var, "?format=raw")
        assert r.status == 200 and r.text == text, (var, r)
        assert r.headers.get("content-type", "").startswith("text/plain"), r
    r = pget(api_server, dev.id, "temperature", "?format=json")
    assert_error(r, 400, "bad_request")
    # Errors stay JSON.
    assert_error(pget(api_server, dev.id, "humidity", "?format=raw"), 404, "variable_not_found")


def test_variable_deadline(api_server, dev):
    t0 = time.monotonic()
    r = pget(api_server, dev.id, "silent", "?timeout=1")
    took = time.monotonic() - t0
    assert_error(r, 504, "device_timeout")
    assert 0.9 <= took < 3.0, (took, r)
    for q in ("0", "61", "x"):
        assert_error(pget(api_server, dev.id, "temperature", "?timeout=" + q), 400, "bad_request")


# ================================================================== errors

def test_not_found(api_server, dev):
    for ref in ("0123456789abcdef01234567", "no-such-device"):
        assert_error(pcall(api_server, ref, "led", data="arg=on"), 404, "device_not_found")
        assert_error(pget(api_server, ref, "temperature"), 404, "device_not_found")
    assert_error(pcall(api_server, dev.id, "reboot", data="arg=now"), 404, "function_not_found")
    assert_error(pcall(api_server, dev.id, "temperature"), 404, "function_not_found")
    assert_error(pget(api_server, dev.id, "humidity"), 404, "variable_not_found")
    assert_error(pget(api_server, dev.id, "led"), 404, "variable_not_found")
    assert_error(pget(api_server, dev.id, "x" * 65), 404, "variable_not_found")
    assert marker(api_server, dev) == [("call", "led", "marker")]


def test_device_offline(api_server):
    d = online_device(api_server, 4, {"led": FUNCTIONS["led"]}, {"t": lambda: 1})
    did = d.id
    d.close()
    wait_device(api_server, did, lambda x: x["online"] is False, what="offline")
    assert_error(pcall(api_server, did, "led", data="arg=on"), 409, "device_offline")
    assert_error(pget(api_server, did, "t"), 409, "device_offline")


def test_scopes(api_server, dev):
    """devices:call, as cyan's own routes; no token, or a token where
    Particle would also look (the URL, the form body), is refused."""
    _, ro = token_create(api_server, "ro", read_only=True)
    _, calls = token_create(api_server, "calls", scopes="devices:call")
    for r in (pcall(api_server, dev.id, "led", data="arg=on", token=ro),
              pget(api_server, dev.id, "temperature", token=ro)):
        assert_error(r, 403, "forbidden")
        assert r.body["scope"] == "devices:call", r
    assert pcall(api_server, dev.id, "led", data="arg=on", token=calls).status == 200
    assert pget(api_server, dev.id, "temperature", token=calls).status == 200
    admin = api_server.admin_token()
    # Particle's access_token in a form body is not read: 401 saying so.
    r = api(api_server, "POST", "/v1/devices/%s/led" % dev.id, token=None,
            data="arg=on&access_token=%s" % admin)
    assert_error(r, 401, "unauthorized")
    assert "access_token" in r.body["message"], r
    # In the URL: refused as everywhere.
    r = api(api_server, "GET", "/v1/devices/%s/temperature?access_token=%s" % (dev.id, admin),
            token=None)
    assert_error(r, 400, "token_in_url")
    r = api(api_server, "POST", "/v1/devices/%s/led?access_token=%s" % (dev.id, admin),
            token=None, json={"arg": "on"})
    assert_error(r, 400, "token_in_url")
    assert_error(pget(api_server, dev.id, "temperature", token=None), 401, "unauthorized")
    assert marker(api_server, dev) == [("call", "led", "on"), ("get", "temperature", ""),
                                       ("call", "led", "marker")]


def test_body_over_the_limit(api_server_factory):
    srv = api_server_factory(http_max_body=4096)
    d = online_device(srv, 5, FUNCTIONS, VARIABLES)
    try:
        assert_error(pcall(srv, d.id, "echo", data="arg=" + "b" * 5000), 413, "body_too_large")
        assert_error(pcall(srv, d.id, "echo", json_body={"arg": "b" * 5000}), 413,
                     "body_too_large")
        assert pcall(srv, d.id, "echo", data="arg=fits&pad=" + "c" * 3000).status == 200
        assert [c.arg for c in d.calls] == ["fits"], d.calls
    finally:
        d.close()


# ================================================================== shadowing

SUBPATHS = ["psk", "events", "functions", "variables"]


def test_cyan_sub_paths_win(api_server):
    """A device may describe a function or variable named like one of cyan's
    own sub-paths: Particle's path never reaches it (cyan's route answers,
    or a 404/405 naming cyan's path for it), cyan's own path does."""
    d = online_device(api_server, 5, {n: (lambda arg, n=n: '"f-%s"' % n) for n in SUBPATHS},
                      {n: (lambda n=n: "v-%s" % n) for n in SUBPATHS})
    try:
        _, calls = token_create(api_server, "calls", scopes="devices:call")
        # POST .../psk is cyan's (admin): this token may not.
        r = pcall(api_server, d.id, "psk", data="arg=x", token=calls)
        assert_error(r, 403, "forbidden")
        assert r.body["scope"] == "admin", r
        # With the admin token, a body there is refused: the key stays.
        r = pcall(api_server, d.id, "psk", data="arg=x")
        assert_error(r, 400, "bad_request")
        assert "/functions/psk" in r.body["message"], r
        r = api(api_server, "POST", "/v1/devices/%s/psk" % d.id, json_body={})
        assert r.status == 200 and r.body["psk"], r  # no body, or {}: a new key
        cases = [("GET", "psk", 405, "POST"), ("POST", "events", 405, "GET"),
                 ("GET", "functions", 404, None), ("POST", "functions", 404, None),
                 ("GET", "variables", 404, None), ("POST", "variables", 404, None)]
        for method, sub, status, allow in cases:
            r = api(api_server, method, "/v1/devices/%s/%s" % (d.id, sub),
                    data="arg=x" if method == "POST" else None)
            assert_error(r, status, "method_not_allowed" if status == 405 else "not_found")
            if allow:
                assert r.headers.get("allow") == allow, r
            where = "%s /v1/devices/{id}/%s/%s" % (
                method, "functions" if method == "POST" else "variables", sub)
            assert where in r.body["message"], (where, r)
        # cyan's own paths reach them.
        for n in SUBPATHS:
            r = call(api_server, d.id, n, arg="y")
            assert r.status == 200 and r.body["return_value"] == "f-%s" % n, r
            r = api(api_server, "GET", "/v1/devices/%s/variables/%s" % (d.id, n))
            assert r.status == 200 and r.body["value"] == "v-%s" % n, r
        assert [(c.kind, c.name) for c in d.calls] == \
            [x for n in SUBPATHS for x in (("call", n), ("get", n))], d.calls
    finally:
        d.close()
    # Names that only start like a sub-path are names.
    d = online_device(api_server, 5, {"pskx": lambda arg: "1"}, {"eventsy": lambda: 2})
    try:
        assert pcall(api_server, d.id, "pskx").body["return_value"] == 1
        assert pget(api_server, d.id, "eventsy").body["result"] == 2
    finally:
        d.close()


# ================================================================== shards

def test_devices_on_every_shard(api_server):
    """Devices owned by different shards, asked on connections that land on
    any shard: the answer is reshaped where it is asked."""
    devs = [online_device(api_server, 5, {"led": FUNCTIONS["led"]}, {"t": lambda: 7})
            for _ in range(3)]
    try:
        for d in devs:
            for _ in range(2):
                r = pcall(api_server, d.id, "led", data="arg=on")
                assert r.status == 200 and r.body["id"] == d.id and \
                    r.body["return_value"] == 1, r
                r = pget(api_server, d.info["name"], "t")
                assert r.status == 200 and r.body["coreInfo"]["deviceID"] == d.id and \
                    r.body["result"] == 7, r
    finally:
        for d in devs:
            d.close()
