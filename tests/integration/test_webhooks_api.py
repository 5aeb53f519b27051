"""Webhook definitions through the HTTP API (docs/api.md, "Webhooks"):
create, list, get, change, delete, secret rotation; the answers to bad
fields (400 naming the field), unknown ids (404), the webhook_max limit
(409 limit); scopes (reads with any token but cyan's internal one, writes
with a full one); private addresses refused unless webhook_allow_private;
hostile bodies (a huge headers object, long and broken templates, values
of the wrong type); and definitions that outlive a restart and are the
same from every shard.

Delivery is not tested here (no request is ever sent to these URLs).
"""

import json
import re
import time

import pytest

from apidevice import ISO_MS_RE, api, parse_time, token_create
from conftest import SHARDS
from test_internal_devices import forge_internal_token

pytestmark = pytest.mark.cyan_only

OBJECT_KEYS = {"id", "event", "url", "method", "headers", "device_id", "response_topic",
               "error_topic", "ordered", "enabled", "disabled_reason", "created_at", "updated_at"}
ID_RE = re.compile(r"^wh_[0-9a-f]{16}$")
SECRET_RE = re.compile(r"^whsec_[A-Za-z0-9+/]{32}$")  # base64 of 24 bytes
DEV = "0123456789abcdef01234567"
URL = "https://example.com/hook/{{device_id}}"
DAY = 24 * 3600

FULL = {
    "event": "temp",
    "url": URL,
    "method": "PUT",
    "headers": {"X-Key": "abc", "X-Device": "{{device_id}}"},
    "json": {"t": "{{data.temp}}", "n": [1, 2.5, None, True], "o": {"k": "{{name}}"}},
    "device_id": DEV,
    "response_topic": "devices/{{device_id}}/hook-response/{{name}}",
    "error_topic": "devices/{{device_id}}/hook-error/{{name}}",
    "ordered": True,
    "enabled": True,
}


def assert_error(r, status, error, field=None):
    assert r.status == status and r.error == error, "expected %d %s; got %r" % (status, error, r)
    msg = r.body.get("message")
    assert isinstance(msg, str) and msg, r
    if field is not None:
        assert field in msg, "the message does not name %r: %r" % (field, r)


def create(srv, body, token=None):
    kw = {} if token is None else {"token": token}
    r = api(srv, "POST", "/v1/webhooks", json=body, **kw)
    assert r.status == 201, r
    return r.body


def nostats(o):
    """The definition alone: its delivery figures ("stats") move by
    themselves and are tested in test_webhooks.py."""
    return {k: v for k, v in o.items() if k != "stats"}


def listed(srv):
    r = api(srv, "GET", "/v1/webhooks")
    assert r.status == 200 and isinstance(r.body, list), r
    return [nostats(w) for w in r.body]


def get(srv, wid):
    r = api(srv, "GET", "/v1/webhooks/%s" % wid)
    assert r.status == 200, r
    assert isinstance(r.body.get("stats"), dict), r
    return nostats(r.body)


def assert_object(o, secret=False):
    keys = set(o)
    want = OBJECT_KEYS | ({"secret"} if secret else set())
    bodies = keys & {"json", "form", "body"}
    assert len(bodies) <= 1, o
    assert keys - bodies - {"stats"} == want, "keys %r" % sorted(keys)
    assert ID_RE.match(o["id"]), o
    assert ISO_MS_RE.match(o["created_at"]) and ISO_MS_RE.match(o["updated_at"]), o
    if secret:
        assert SECRET_RE.match(o["secret"]), o


def no_secret_in(text, *secrets):
    for s in secrets:
        assert s not in text, "a secret leaked into %r" % text[:300]
    assert "whsec_" not in text, text[:300]


@pytest.fixture
def srv(api_server_factory):
    """A server whose webhooks may target private addresses (the tests'
    own setting); example.com URLs are never contacted here."""
    return api_server_factory(webhook_allow_private=True)


# ================================================================== CRUD

def test_create_get_list_patch_delete(srv):
    t0 = time.time()
    r = api(srv, "POST", "/v1/webhooks", json=FULL)
    assert r.status == 201, r
    o = r.body
    assert_object(o, secret=True)
    assert r.headers.get("location") == "/v1/webhooks/%s" % o["id"], r
    for k, v in FULL.items():
        assert o[k] == v, (k, o[k], v)
    assert o["disabled_reason"] is None
    created = parse_time(o["created_at"])
    assert t0 - 1 <= created <= time.time() + 1, o
    assert o["updated_at"] == o["created_at"]
    secret = o["secret"]

    g = get(srv, o["id"])
    assert_object(g)
    assert g == {k: v for k, v in nostats(o).items() if k != "secret"}, (g, o)
    lst = listed(srv)
    assert lst == [g], lst
    no_secret_in(json.dumps(lst), secret)

    time.sleep(0.01)
    r = api(srv, "PATCH", "/v1/webhooks/%s" % o["id"],
            json={"event": "other/", "url": "http://example.org/x", "headers": None,
                  "body": "v={{data}}", "device_id": None, "response_topic": None,
                  "ordered": False})
    assert r.status == 200, r
    p = r.body
    assert_object(p)
    assert p["event"] == "other/" and p["url"] == "http://example.org/x", p
    assert p["headers"] == {} and p["body"] == "v={{data}}" and "json" not in p, p
    assert p["device_id"] is None and p["response_topic"] is None, p
    assert p["error_topic"] == FULL["error_topic"], p  # untouched
    assert p["method"] == "PUT" and p["ordered"] is False, p
    assert p["created_at"] == o["created_at"], p
    assert parse_time(p["updated_at"]) > parse_time(o["updated_at"]), p
    no_secret_in(r.text, secret)
    assert get(srv, o["id"]) == nostats(p)

    r = api(srv, "DELETE", "/v1/webhooks/%s" % o["id"])
    assert r.status == 204 and r.text == "", r
    assert_error(api(srv, "GET", "/v1/webhooks/%s" % o["id"]), 404, "not_found")
    assert_error(api(srv, "DELETE", "/v1/webhooks/%s" % o["id"]), 404, "not_found")
    assert_error(api(srv, "PATCH", "/v1/webhooks/%s" % o["id"], json={"event": "x"}),
                 404, "not_found")
    assert listed(srv) == []


def test_defaults(srv):
    o = create(srv, {"url": "http://example.com/"})
    assert_object(o, secret=True)
    assert o["event"] == "" and o["method"] == "POST" and o["headers"] == {}, o
    assert not {"json", "form", "body"} & set(o), o  # the default body
    assert o["device_id"] is None and o["response_topic"] is None and o["error_topic"] is None
    assert o["ordered"] is False and o["enabled"] is True and o["disabled_reason"] is None


def test_body_kinds(srv):
    o = create(srv, {"url": URL, "form": {"a": "{{name}}", "b": "x y"}})
    assert o["form"] == {"a": "{{name}}", "b": "x y"} and "json" not in o, o
    wid = o["id"]
    path = "/v1/webhooks/%s" % wid
    # Any JSON value is a JSON template: an array, a bare string, a number.
    for doc in ([1, "{{data}}", {"x": None}], "{{data}}", 42, {"deep": {"er": [{"a": "b"}]}}):
        r = api(srv, "PATCH", path, json={"json": doc})
        assert r.status == 200 and r.body["json"] == doc and "form" not in r.body, r
    r = api(srv, "PATCH", path, json={"body": "plain {{data}}"})
    assert r.status == 200 and r.body["body"] == "plain {{data}}" and "json" not in r.body, r
    # Another field alone leaves the body as it is.
    r = api(srv, "PATCH", path, json={"method": "POST"})
    assert r.status == 200 and r.body["body"] == "plain {{data}}", r
    # null: back to the default body.
    r = api(srv, "PATCH", path, json={"body": None})
    assert r.status == 200 and not {"json", "form", "body"} & set(r.body), r
    assert get(srv, wid) == nostats(r.body)


def test_enable_disable(srv):
    o = create(srv, {"url": URL, "enabled": False})
    assert o["enabled"] is False and o["disabled_reason"] == "by the API", o
    path = "/v1/webhooks/%s" % o["id"]
    r = api(srv, "PATCH", path, json={"enabled": True})
    assert r.status == 200 and r.body["enabled"] is True and r.body["disabled_reason"] is None, r
    r = api(srv, "PATCH", path, json={"enabled": False})
    assert r.status == 200 and r.body["enabled"] is False, r
    assert r.body["disabled_reason"] == "by the API", r
    assert get(srv, o["id"])["enabled"] is False


def test_list_in_creation_order(srv):
    ids = [create(srv, {"url": URL, "event": "e%d" % i})["id"] for i in range(5)]
    assert [w["id"] for w in listed(srv)] == ids
    assert api(srv, "DELETE", "/v1/webhooks/%s" % ids[2]).status == 204
    assert [w["id"] for w in listed(srv)] == ids[:2] + ids[3:]


# ================================================================== rotation

def test_secret_rotation(srv):
    o = create(srv, {"url": URL})
    s1 = o["secret"]
    path = "/v1/webhooks/%s/secret" % o["id"]
    t0 = time.time()
    r = api(srv, "POST", path)
    assert r.status == 200, r
    assert set(r.body) == {"secret", "old_secret_valid_until"}, r
    s2 = r.body["secret"]
    assert SECRET_RE.match(s2) and s2 != s1, r
    until = parse_time(r.body["old_secret_valid_until"])
    assert t0 + DAY - 2 <= until <= time.time() + DAY + 2, r
    r = api(srv, "POST", path, json={})
    assert r.status == 200 and r.body["secret"] not in (s1, s2), r
    s3 = r.body["secret"]
    # Shown there and nowhere else.
    no_secret_in(api(srv, "GET", "/v1/webhooks/%s" % o["id"]).text, s1, s2, s3)
    no_secret_in(api(srv, "GET", "/v1/webhooks").text, s1, s2, s3)
    r = api(srv, "PATCH", "/v1/webhooks/%s" % o["id"], json={"event": "x"})
    assert r.status == 200, r
    no_secret_in(r.text, s1, s2, s3)
    for s in (s1, s2, s3):
        assert s not in srv.log(), "a secret is in the log"
    assert_error(api(srv, "POST", "/v1/webhooks/wh_0000000000000000/secret"), 404, "not_found")
    r = api(srv, "GET", path)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers.get("allow") == "POST", r


# ================================================================== validation

BAD_CREATE = [  # (body, error, the field the message names)
    ({}, "bad_json", "url"),
    ({"url": None}, "bad_json", "url"),
    ({"url": 5}, "bad_json", "url"),
    ({"url": ""}, "bad_request", "url"),
    ({"url": "ftp://example.com/"}, "bad_request", "url"),
    ({"url": "example.com/hook"}, "bad_request", "url"),
    ({"url": "https://example.com/" + "a" * 2100}, "bad_request", "url"),
    ({"url": "https://example.com/{{device_id"}, "bad_request", "url"),
    # said in cyan's words (jansson's text names its JSON_ALLOW_NUL flag)
    ({"url": "https://example.com/\u0000x"}, "bad_json", "\\u0000, which cyan does not take"),
    ({"url": URL, "method": "HEAD"}, "bad_request", "method"),
    ({"url": URL, "method": "post"}, "bad_request", "method"),
    ({"url": URL, "method": "POSTPOSTPOST"}, "bad_request", "method"),
    ({"url": URL, "method": 1}, "bad_json", "method"),
    ({"url": URL, "event": 3}, "bad_json", "event"),
    ({"url": URL, "event": "a/+/b"}, "bad_request", "event"),
    ({"url": URL, "event": "#"}, "bad_request", "event"),
    ({"url": URL, "event": "e" * 257}, "bad_request", "event"),
    ({"url": URL, "headers": ["X-A", "b"]}, "bad_json", "headers"),
    ({"url": URL, "headers": "X-A: b"}, "bad_json", "headers"),
    ({"url": URL, "headers": {"X-A": 1}}, "bad_json", "X-A"),
    ({"url": URL, "headers": {"X-A": None}}, "bad_json", "X-A"),
    ({"url": URL, "headers": {"X-A": {"b": "c"}}}, "bad_json", "X-A"),
    ({"url": URL, "headers": {"X-A": ["b"]}}, "bad_json", "X-A"),
    ({"url": URL, "headers": {"X A": "b"}}, "bad_request", "headers"),
    ({"url": URL, "headers": {"X-A:": "b"}}, "bad_request", "headers"),
    ({"url": URL, "headers": {"": "b"}}, "bad_request", "headers"),
    ({"url": URL, "headers": {"X-A": "b\r\nX-Injected: 1"}}, "bad_request", "X-A"),
    ({"url": URL, "headers": {"X-A": "{{data"}}, "bad_request", "headers"),
    ({"url": URL, "headers": {"webhook-signature": "v1,forged"}}, "bad_request", "headers"),
    ({"url": URL, "headers": {"Webhook-Id": "1"}}, "bad_request", "headers"),
    ({"url": URL, "headers": {"Content-Length": "1"}}, "bad_request", "headers"),
    ({"url": URL, "headers": {"Host": "internal"}}, "bad_request", "headers"),
    ({"url": URL, "headers": {"Transfer-Encoding": "chunked"}}, "bad_request", "headers"),
    ({"url": URL, "headers": {"X-A": "1", "x-a": "2"}}, "bad_request", "headers"),
    ({"url": URL, "json": {}, "body": "x"}, "bad_request", "body"),
    ({"url": URL, "json": None, "form": None}, "bad_request", "form"),
    ({"url": URL, "form": ["a"]}, "bad_json", "form"),
    ({"url": URL, "form": {"a": 1}}, "bad_json", "form"),
    ({"url": URL, "body": 5}, "bad_json", "body"),
    ({"url": URL, "body": {"a": "b"}}, "bad_json", "body"),
    ({"url": URL, "body": "{{data"}, "bad_request", "body"),
    ({"url": URL, "body": "x" * 16385}, "bad_request", "body"),
    ({"url": URL, "json": {"k": "v" * 16385}}, "bad_request", "json"),
    ({"url": URL, "device_id": "kitchen"}, "bad_request", "device_id"),
    ({"url": URL, "device_id": DEV.upper()}, "bad_request", "device_id"),
    ({"url": URL, "device_id": DEV + "00"}, "bad_request", "device_id"),
    ({"url": URL, "device_id": 7}, "bad_json", "device_id"),
    ({"url": URL, "response_topic": "a/#"}, "bad_request", "response_topic"),
    ({"url": URL, "response_topic": "$cyan/canary/x"}, "bad_request", "response_topic"),
    ({"url": URL, "error_topic": "a/+/b"}, "bad_request", "error_topic"),
    ({"url": URL, "error_topic": "t" * 257}, "bad_request", "error_topic"),
    ({"url": URL, "error_topic": ["x"]}, "bad_json", "error_topic"),
    ({"url": URL, "ordered": 1}, "bad_json", "ordered"),
    ({"url": URL, "enabled": "yes"}, "bad_json", "enabled"),
    ({"url": URL, "enabled": None}, "bad_json", "enabled"),
    ({"url": URL, "evnt": "typo"}, "bad_request", "evnt"),
    ({"url": URL, "id": "wh_0000000000000000"}, "bad_request", "id"),
    ({"url": URL, "secret": "whsec_mine"}, "bad_request", "secret"),
]


def check_cases(cases, check):
    """Run check(case) for every case; report every failing one at once."""
    bad = []
    for case in cases:
        try:
            check(case)
        except AssertionError as e:
            bad.append("%r: %s" % (case, str(e)[:800]))
    assert not bad, "%d of %d cases failed:\n%s" % (len(bad), len(cases), "\n".join(bad))


def test_bad_fields_refused(srv):
    def check(case):
        body, error, field = case
        r = api(srv, "POST", "/v1/webhooks", json=body)
        assert_error(r, 400, error, field)
    check_cases(BAD_CREATE, check)
    assert listed(srv) == [], "a refused webhook was stored"


def test_bad_bodies_refused(srv):
    for data in ("", "[]", "\"x\"", "{", "{\"url\": \"%s\", \"url\": \"%s\"}" % (URL, URL),
                 "{\"url\": \"%s\"} trailing" % URL, "\xff\xfe"):
        r = api(srv, "POST", "/v1/webhooks", data=data,
                headers={"Content-Type": "application/json"})
        assert_error(r, 400, "bad_json")
    assert listed(srv) == []


def test_bad_patch_changes_nothing(srv):
    o = create(srv, FULL)
    del o["secret"]
    path = "/v1/webhooks/%s" % o["id"]

    def check(case):
        body, error, field = case
        if body == {}:
            return  # an empty PATCH is fine (below)
        body = dict(body)
        if "url" in body and body["url"] == URL:
            del body["url"]  # the URL as it is; the other field is the bad one
            if not body:
                return
        r = api(srv, "PATCH", path, json=body)
        assert_error(r, 400, error, field)
    check_cases(BAD_CREATE, check)
    assert get(srv, o["id"]) == nostats(o)
    # An empty PATCH changes nothing but updated_at.
    r = api(srv, "PATCH", path, json={})
    assert r.status == 200, r
    assert {k: v for k, v in nostats(r.body).items() if k != "updated_at"} == \
        {k: v for k, v in nostats(o).items() if k != "updated_at"}, r


def test_unknown_and_malformed_ids(srv):
    for wid in ("wh_0000000000000000", "nope", "wh_", "WH_0000000000000000",
                "wh_000000000000000g", "wh_" + "0" * 100, "%27%20OR%201%3D1"):
        for method, body in (("GET", None), ("PATCH", {"event": "x"}), ("DELETE", None)):
            r = api(srv, method, "/v1/webhooks/%s" % wid, json=body)
            assert_error(r, 404, "not_found")


def test_routes_and_methods(srv):
    o = create(srv, {"url": URL})
    cases = [  # (method, path, Allow)
        ("PUT", "/v1/webhooks", {"GET", "POST"}),
        ("DELETE", "/v1/webhooks", {"GET", "POST"}),
        ("PATCH", "/v1/webhooks", {"GET", "POST"}),
        ("POST", "/v1/webhooks/%s" % o["id"], {"GET", "PATCH", "DELETE"}),
        ("PUT", "/v1/webhooks/%s" % o["id"], {"GET", "PATCH", "DELETE"}),
        ("DELETE", "/v1/webhooks/%s/secret" % o["id"], {"POST"}),
    ]
    for method, path, allowed in cases:
        r = api(srv, method, path, json={} if method in ("POST", "PUT", "PATCH") else None)
        assert_error(r, 405, "method_not_allowed")
        allow = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
        assert allow == allowed, (method, path, r)
    for path in ("/v1/webhooks/%s/nothing" % o["id"], "/v1/webhooks/%s/secret/x" % o["id"],
                 "/v1/webhooksx"):
        assert_error(api(srv, "GET", path), 404, "not_found")
    assert [w["id"] for w in listed(srv)] == [o["id"]]


# ================================================================== scopes

def test_scopes(srv):
    """Every webhook route needs webhooks:manage, reads too (a webhook's URL
    and headers often hold the receiver's credentials): a read-only token,
    or one with every other scope, gets 403 naming it; a token with
    webhooks:manage alone may read and write them (and nothing else)."""
    o = create(srv, {"url": URL})
    wid = o["id"]
    _, ro = token_create(srv, "viewer", read_only=True)
    _, others = token_create(srv, "others", scopes="devices:read,devices:call,events:read,"
                                                   "events:publish,admin")
    _, wm = token_create(srv, "hooks", scopes="webhooks:manage")
    reads = [("GET", "/v1/webhooks", None), ("GET", "/v1/webhooks/%s" % wid, None),
             ("GET", "/v1/webhooks/%s/dead-letters" % wid, None)]
    writes = [("POST", "/v1/webhooks", {"url": URL}),
              ("PATCH", "/v1/webhooks/%s" % wid, {"event": "changed"}),
              ("DELETE", "/v1/webhooks/%s" % wid, None),
              ("POST", "/v1/webhooks/%s/secret" % wid, None),
              ("POST", "/v1/webhooks/%s/dead-letters/replay" % wid, None)]
    for tok in (ro, others):
        for method, path, body in reads + writes:
            r = api(srv, method, path, token=tok, json=body)
            assert_error(r, 403, "forbidden")
            assert r.body["scope"] == "webhooks:manage", r
            no_secret_in(r.text, o["secret"])
            assert URL not in r.text, r
    r = api(srv, "GET", "/v1/webhooks/%s" % wid, token=wm)
    assert r.status == 200 and r.body["id"] == wid, r
    no_secret_in(r.text, o["secret"])
    assert api(srv, "GET", "/v1/webhooks", token=wm).status == 200
    assert_error(api(srv, "GET", "/v1/devices", token=wm), 403, "forbidden")
    for method, path, body in writes + [("GET", "/v1/webhooks", None)]:
        assert_error(api(srv, method, path, token=None, json=body), 401, "unauthorized")
    # cyan's internal token (the canaries') does not even read them.
    internal = forge_internal_token(srv)
    for method, path, body in writes + [("GET", "/v1/webhooks", None),
                                        ("GET", "/v1/webhooks/%s" % wid, None)]:
        assert_error(api(srv, method, path, token=internal, json=body), 403, "forbidden")
    # Nothing changed.
    assert [w["id"] for w in listed(srv)] == [wid]
    g = get(srv, wid)
    assert g["event"] == "" and g["updated_at"] == o["updated_at"], g
    # A full token of the CLI may write.
    _, full = token_create(srv, "ci")
    assert create(srv, {"url": URL}, token=full)["id"] != wid


# ================================================================== limits

def test_webhook_max(api_server_factory):
    srv = api_server_factory(webhook_max=2)
    a = create(srv, {"url": URL})
    create(srv, {"url": URL})
    r = api(srv, "POST", "/v1/webhooks", json={"url": URL})
    assert_error(r, 409, "limit")
    assert len(listed(srv)) == 2
    assert api(srv, "DELETE", "/v1/webhooks/%s" % a["id"]).status == 204
    create(srv, {"url": URL})
    assert_error(api(srv, "POST", "/v1/webhooks", json={"url": URL}), 409, "limit")


def test_webhook_max_zero(api_server_factory):
    srv = api_server_factory(webhook_max=0)
    assert_error(api(srv, "POST", "/v1/webhooks", json={"url": URL}), 409, "limit")
    # A bad body is still a 400: the body is judged first.
    assert_error(api(srv, "POST", "/v1/webhooks", json={"url": 1}), 400, "bad_json")


# ================================================================== SSRF

PRIVATE_URLS = ["http://127.0.0.1:8080/hook", "http://10.1.2.3/", "http://192.168.1.1/x",
                "http://169.254.169.254/latest/meta-data/", "http://[::1]:9000/",
                "https://172.16.0.1/"]


def test_private_url_refused_by_default(api_server):
    def check(url):
        r = api(api_server, "POST", "/v1/webhooks", json={"url": url})
        assert_error(r, 400, "bad_request", "url")
    check_cases(PRIVATE_URLS, check)
    assert api(api_server, "GET", "/v1/webhooks").body == []
    # A public one is fine; changing it to a private one is refused too.
    o = create(api_server, {"url": "https://example.com/hook"})
    r = api(api_server, "PATCH", "/v1/webhooks/%s" % o["id"],
            json={"url": "http://127.0.0.1/x"})
    assert_error(r, 400, "bad_request", "url")
    assert get(api_server, o["id"])["url"] == "https://example.com/hook"


def test_private_url_allowed_by_setting(srv):
    for url in PRIVATE_URLS:
        assert create(srv, {"url": url})["url"] == url


# ================================================================== attacks

def test_hostile_bodies(srv):
    # A huge headers object: many names, within http_max_body (64 KiB).
    many = {"X-H%d" % i: "v" for i in range(3000)}
    assert len(json.dumps(many)) < 60000
    assert_error(api(srv, "POST", "/v1/webhooks", json={"url": URL, "headers": many}),
                 400, "bad_request", "headers")
    # Few headers, long values: the object is at most 16 KiB.
    big = {"X-A%d" % i: "v" * 5000 for i in range(10)}
    assert_error(api(srv, "POST", "/v1/webhooks", json={"url": URL, "headers": big}),
                 400, "bad_request", "headers")
    # Values of every wrong type.
    for v in (1, 1.5, True, None, [], {}, ["a"], {"a": "b"}):
        r = api(srv, "POST", "/v1/webhooks", json={"url": URL, "headers": {"X-A": v}})
        assert_error(r, 400, "bad_json", "X-A")
    # Long templates: 10,000 characters are a fine body, not a fine URL.
    r = api(srv, "POST", "/v1/webhooks", json={"url": URL, "body": "x{{data}}" * 1111})
    assert r.status == 201, r
    assert api(srv, "DELETE", "/v1/webhooks/%s" % r.body["id"]).status == 204
    assert_error(api(srv, "POST", "/v1/webhooks",
                     json={"url": "https://example.com/" + "{{data}}" * 1250}),
                 400, "bad_request", "url")
    # 10,000 characters of unbalanced braces, in every template.
    braces = "{{" * 5000
    for body in ({"url": URL, "body": braces}, {"url": URL, "json": {"k": braces}},
                 {"url": URL, "form": {"k": braces}}, {"url": URL, "headers": {"X": braces}},
                 {"url": URL, "response_topic": braces[:200]}):
        r = api(srv, "POST", "/v1/webhooks", json=body)
        assert r.status == 400, r
    # Deep JSON.
    deep = "[" * 5000 + "]" * 5000
    r = api(srv, "POST", "/v1/webhooks", data='{"url": "%s", "json": %s}' % (URL, deep),
            headers={"Content-Type": "application/json"})
    assert r.status == 400, r
    # A NUL in a key, escaped.
    r = api(srv, "POST", "/v1/webhooks", data='{"url": "%s", "headers": {"X\\u0000A": "b"}}' % URL,
            headers={"Content-Type": "application/json"})
    assert r.status == 400, r
    # The server is fine, and nothing was stored.
    assert api(srv, "GET", "/v1/health", token=None).status == 200
    assert listed(srv) == []


def test_body_over_http_max_body(api_server_factory):
    srv = api_server_factory(webhook_allow_private=True, http_max_body=4096)
    r = api(srv, "POST", "/v1/webhooks", json={"url": URL, "body": "x" * 5000})
    assert_error(r, 413, "body_too_large")
    assert listed(srv) == []


# ================================================================== durability, shards

def test_survives_restart(srv):
    o = create(srv, FULL)
    del o["secret"]
    srv.restart()
    srv.wait_api_healthy()
    assert get(srv, o["id"]) == nostats(o)
    assert listed(srv) == [nostats(o)]


def test_same_from_every_shard(api_server_factory):
    """Each request is a new connection, so with several shards they land on
    different ones: every shard sees every change at once (one registry)."""
    srv = api_server_factory(webhook_allow_private=True, shards=max(SHARDS, 2))
    ids = []
    for i in range(6):
        ids.append(create(srv, {"url": URL, "event": "e%d" % i})["id"])
        assert [w["id"] for w in listed(srv)] == ids
    for wid in ids[:3]:
        r = api(srv, "PATCH", "/v1/webhooks/%s" % wid, json={"enabled": False})
        assert r.status == 200, r
        assert get(srv, wid)["enabled"] is False
    for wid in ids:
        assert api(srv, "DELETE", "/v1/webhooks/%s" % wid).status == 204
        assert_error(api(srv, "GET", "/v1/webhooks/%s" % wid), 404, "not_found")
    assert listed(srv) == []
