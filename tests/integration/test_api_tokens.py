"""API tokens with scopes and expiry, CORS, and stream tokens (docs/api.md,
"Tokens"; issue 14).

- Scopes: every route of the API, walked with a token of each scope alone:
  the route's own scope gets past the door (whatever the route answers
  then), every other scope gets 403 naming the missing one; the table of
  routes here is docs/api.md's (and tests/unit/test_api_routes.c holds the
  server's table to the same docs).
- Tokens through the API (admin): create with scopes and expiry, refusals
  that name the bad field or scope, list with last use, revoke.
- Expiry: a token made to live 2 s is refused (401 token_expired) once
  that has passed, its open event stream ends, and both lists say so.
- Last use: shown by the API and `cyan token list` once the token is used.
- CORS: preflights answered without a token, the allowed origin echoed
  and no other, headers on refusals too; nothing without cors_origins.
- Stream tokens: open a stream from a URL and receive an event, on any
  shard; expired, tampered or misused ones refused; long-lived tokens in a
  URL refused; revoking the parent ends the stream; no token reaches the log.

Runs with any CYAN_SHARDS (requests land on whichever shard accepts).
"""

import json
import re
import time

import pytest

from apidevice import SseStream, api, create_device, token_create
from helpers import wait_until

pytestmark = pytest.mark.cyan_only

SCOPES = ["devices:read", "devices:call", "events:read", "events:publish", "webhooks:manage",
          "admin"]
HOOK_URL = "http://127.0.0.1:9/never"  # loopback discard port; its filter matches no event
ORIGIN = "https://app.example.com"
STREAM_TOKEN_RE = re.compile(r"cys_[0-9a-f]{12}_[0-9a-f]{12}_[0-9a-f]{32}")


def assert_error(r, status, error):
    assert r.status == status and r.error == error, "expected %d %s; got %r" % (status, error, r)
    assert isinstance(r.body.get("message"), str) and r.body["message"], r


@pytest.fixture
def srv(api_server_factory):
    return api_server_factory(webhook_allow_private=True,
                              cors_origins="%s, http://localhost:3000" % ORIGIN)


def new_hook(srv):
    r = api(srv, "POST", "/v1/webhooks", json={"url": HOOK_URL, "event": "zz-no-such-event/"})
    assert r.status == 201, r
    return r.body["id"]


def new_token_id(srv):
    r = api(srv, "POST", "/v1/tokens", json={"name": "victim", "scopes": ["events:read"]})
    assert r.status == 201, r
    return r.body["id"]


# Every route but GET /v1/health, as docs/api.md names it, with the request
# the walk makes of it: (method, docs path, request path, body, scope, kind).
# {dev} a device, {fresh_dev} a device made for this request (it may be
# deleted), {hook}/{fresh_hook} a webhook, {fresh_token} a token. kind
# "stream": an event stream (opened raw, then closed).
ROUTES = [
    ("GET", "/v1/devices", "/v1/devices", None, "devices:read", None),
    ("POST", "/v1/devices", "/v1/devices", "new-device", "admin", None),
    ("GET", "/v1/devices/{id}", "/v1/devices/{dev}", None, "devices:read", None),
    ("DELETE", "/v1/devices/{id}", "/v1/devices/{fresh_dev}", None, "admin", None),
    ("PATCH", "/v1/devices/{id}", "/v1/devices/{fresh_dev}", "new-device", "admin", None),
    ("POST", "/v1/devices/{id}/psk", "/v1/devices/{dev}/psk", None, "admin", None),
    ("POST", "/v1/devices/{id}/functions/{name}", "/v1/devices/{dev}/functions/led",
     {"arg": "on", "timeout": 1}, "devices:call", None),
    ("GET", "/v1/devices/{id}/variables/{name}", "/v1/devices/{dev}/variables/temp?timeout=1",
     None, "devices:call", None),
    ("GET", "/v1/devices/{id}/events", "/v1/devices/{dev}/events", None, "events:read",
     "stream"),
    ("GET", "/v1/devices/{id}/events/{prefix}", "/v1/devices/{dev}/events/temp", None,
     "events:read", "stream"),
    ("POST", "/v1/devices/{id}/{function}", "/v1/devices/{dev}/led", {"arg": "on", "timeout": 1},
     "devices:call", None),
    ("GET", "/v1/devices/{id}/{variable}", "/v1/devices/{dev}/temp?timeout=1", None,
     "devices:call", None),
    ("GET", "/v1/events", "/v1/events", None, "events:read", "stream"),
    ("POST", "/v1/events", "/v1/events", {"name": "scope-walk", "data": "x"}, "events:publish",
     None),
    ("POST", "/v1/events/stream-token", "/v1/events/stream-token", None, "events:read", None),
    ("GET", "/v1/events/{event id}/trace", "/v1/events/0-1/trace", None, "events:read", None),
    ("GET", "/v1/events/{prefix}", "/v1/events/temp/inside", None, "events:read", "stream"),
    ("GET", "/v1/webhooks", "/v1/webhooks", None, "webhooks:manage", None),
    ("POST", "/v1/webhooks", "/v1/webhooks", {"url": HOOK_URL, "event": "zz-no-such-event/"},
     "webhooks:manage", None),
    ("GET", "/v1/webhooks/{id}", "/v1/webhooks/{hook}", None, "webhooks:manage", None),
    ("PATCH", "/v1/webhooks/{id}", "/v1/webhooks/{hook}", {"enabled": True}, "webhooks:manage",
     None),
    ("DELETE", "/v1/webhooks/{id}", "/v1/webhooks/{fresh_hook}", None, "webhooks:manage", None),
    ("POST", "/v1/webhooks/{id}/secret", "/v1/webhooks/{hook}/secret", None, "webhooks:manage",
     None),
    ("GET", "/v1/webhooks/{id}/dead-letters", "/v1/webhooks/{hook}/dead-letters", None,
     "webhooks:manage", None),
    ("POST", "/v1/webhooks/{id}/dead-letters/replay", "/v1/webhooks/{hook}/dead-letters/replay",
     None, "webhooks:manage", None),
    ("POST", "/v1/webhooks/{id}/dead-letters/{event id}/replay",
     "/v1/webhooks/{hook}/dead-letters/0-1/replay", None, "webhooks:manage", None),
    ("GET", "/v1/tokens", "/v1/tokens", None, "admin", None),
    ("POST", "/v1/tokens", "/v1/tokens", {"name": "made", "scopes": ["events:read"]}, "admin",
     None),
    ("DELETE", "/v1/tokens/{id}", "/v1/tokens/{fresh_token}", None, "admin", None),
]


def docs_routes():
    """The scopes table of docs/api.md as {(method, path): scope}."""
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "api.md")
    rows = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"\| `(\w+) (/v1/[^`]*)` \| `([a-z:]+)` \|", line)
        if m and (m.group(3) in SCOPES or m.group(3) == "none"):
            rows[(m.group(1), m.group(2))] = m.group(3)
    return rows


def test_routes_here_are_the_docs():
    """The walk below covers every route docs/api.md lists, with its scope."""
    docs = docs_routes()
    docs.pop(("GET", "/v1/health"))
    here = {(m, p): scope for m, p, _, _, scope, _ in ROUTES}
    assert here == docs


def walk_request(srv, method, path, body, kind, token, fixtures):
    """One request of the walk; returns (status, error body or None)."""
    fill = dict(fixtures)
    if "{fresh_dev}" in path:
        fill["fresh_dev"] = create_device(srv)["id"]
    if "{fresh_hook}" in path:
        fill["fresh_hook"] = new_hook(srv)
    if "{fresh_token}" in path:
        fill["fresh_token"] = new_token_id(srv)
    path = path.format(**fill)
    if body == "new-device":
        body = {"name": "walk-%d" % (time.monotonic_ns() % 10 ** 12)}
    if kind == "stream":
        with SseStream(srv, path, token=token) as s:
            return s.status, getattr(s, "json", None)
    r = api(srv, method, path, token=token, json=body)
    return r.status, r.body if r.status >= 400 else None


def test_each_scope_opens_its_routes_only(srv):
    dev = create_device(srv)["id"]
    fixtures = {"dev": dev, "hook": new_hook(srv)}
    tokens = {s: token_create(srv, s.replace(":", "-"), scopes=s)[1] for s in SCOPES}
    checked = 0
    for scope, tok in tokens.items():
        for method, _, path, body, need, kind in ROUTES:
            status, err = walk_request(srv, method, path, body, kind, tok, fixtures)
            what = "%s %s with %s" % (method, path, scope)
            if scope == need:
                assert status not in (401, 403), (what, status, err)
            else:
                assert status == 403, (what, status, err)
                assert err["error"] == "forbidden" and err["scope"] == need, (what, err)
                assert need in err["message"], (what, err)
            checked += 1
    assert checked == len(SCOPES) * len(ROUTES)
    # The walk's refused writes changed nothing: the device and the webhook stand.
    assert api(srv, "GET", "/v1/devices/%s" % dev).status == 200
    assert api(srv, "GET", "/v1/webhooks/%s" % fixtures["hook"]).status == 200
    # And GET /v1/health needs no token at all.
    assert api(srv, "GET", "/v1/health", token=None).status in (200, 503)


def test_tokens_through_the_api(srv):
    r = api(srv, "POST", "/v1/tokens", json={"name": "ci", "scopes": ["events:read", "admin"],
                                             "expires_in": "30d"})
    assert r.status == 201, r
    assert r.headers.get("cache-control") == "no-store", r
    t = r.body
    assert re.fullmatch(r"cyt_%s_[0-9a-f]{32}" % t["id"], t["token"]), t
    assert t["scopes"] == ["events:read", "admin"] and t["name"] == "ci", t
    assert t["last_used_at"] is None and t["expired"] is False, t
    exp = time.mktime(time.strptime(t["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(exp - (time.time() + 30 * 86400)) < 120, t
    # It works, within its scopes.
    assert api(srv, "GET", "/v1/tokens", token=t["token"]).status == 200
    assert_error(api(srv, "GET", "/v1/devices", token=t["token"]), 403, "forbidden")
    # The list never shows a token's text; it shows the last use.
    def listed():
        r = api(srv, "GET", "/v1/tokens")
        assert r.status == 200, r
        assert t["token"] not in r.text and t["token"][17:] not in r.text
        return {x["id"]: x for x in r.body}
    assert wait_until(lambda: listed()[t["id"]]["last_used_at"] is not None, timeout=5.0), \
        listed()[t["id"]]
    row = listed()[t["id"]]
    assert row["scopes"] == ["events:read", "admin"] and row["expires_at"] == t["expires_at"], row
    # `cyan token list` shows it too (each shard writes a first use at once).
    def cli_used():
        for line in srv.cli("token", "list").stdout.splitlines():
            f = line.split()
            if f and f[0] == t["id"]:
                return f[-1] != "-"
        return False
    assert wait_until(cli_used, timeout=5.0), srv.cli("token", "list").stdout
    # expires_at given as a time.
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    r = api(srv, "POST", "/v1/tokens", json={"scopes": ["devices:read"], "expires_at": when})
    assert r.status == 201 and r.body["expires_at"].startswith(when[:19]), r
    assert r.body["name"] == "token", r
    # Refusals name what is wrong.
    bad = [({"scopes": ["events:read", "bogus"]}, 400, "bad_request", "bogus"),
           ({"scopes": ["internal"]}, 400, "bad_request", "internal"),
           ({"scopes": []}, 400, "bad_request", "scopes"),
           ({"name": "x"}, 400, "bad_request", "scopes"),
           ({"scopes": "admin"}, 400, "bad_json", "scopes"),
           ({"scopes": [1]}, 400, "bad_json", "scopes"),
           ({"scopes": ["admin"], "expires_in": 0}, 400, "bad_request", "expires_in"),
           ({"scopes": ["admin"], "expires_in": "soon"}, 400, "bad_json", "expires_in"),
           ({"scopes": ["admin"], "expires_in": 5, "expires_at": when}, 400, "bad_request",
            "expires_at"),
           ({"scopes": ["admin"], "expires_at": "2001-01-01T00:00:00Z"}, 400, "bad_request",
            "future"),
           ({"scopes": ["admin"], "expires_at": "tomorrow"}, 400, "bad_request", "expires_at"),
           ({"scopes": ["admin"], "name": "bad name"}, 400, "bad_request", "name"),
           ({"scopes": ["admin"], "colour": "red"}, 400, "bad_request", "colour")]
    before = len(listed())
    for body, status, error, word in bad:
        r = api(srv, "POST", "/v1/tokens", json=body)
        assert_error(r, status, error)
        assert word in r.body["message"], (body, r)
    assert len(listed()) == before
    # Revoke: the token stops working (on every shard within moments).
    r = api(srv, "DELETE", "/v1/tokens/%s" % t["id"])
    assert r.status == 200 and r.body == {"id": t["id"], "revoked": True}, r
    assert wait_until(lambda: api(srv, "GET", "/v1/tokens", token=t["token"]).status == 401,
                      timeout=3.0)
    assert t["id"] not in listed()
    assert_error(api(srv, "DELETE", "/v1/tokens/%s" % t["id"]), 404, "not_found")


def test_expiry(srv):
    """A 2 s token (CLI) and a 2 s token (API): accepted, then 401
    token_expired; the open stream of one ends; the lists say expired."""
    tid, tok = token_create(srv, "brief", scopes="events:read,devices:read", expires="2s")
    r = api(srv, "POST", "/v1/tokens", json={"scopes": ["devices:read"], "expires_in": 2})
    assert r.status == 201, r
    tok2 = r.body["token"]
    assert api(srv, "GET", "/v1/devices", token=tok).status == 200
    assert api(srv, "GET", "/v1/devices", token=tok2).status == 200
    with SseStream(srv, "/v1/events", token=tok) as s:
        assert s.status == 200, s.body
        got = []
        assert wait_until(lambda: got.append(api(srv, "GET", "/v1/devices", token=tok))
                          or got[-1].status == 401, timeout=6.0), got[-1]
        assert_error(got[-1], 401, "token_expired")
        assert "expired" in got[-1].body["message"], got[-1]
        assert "invalid_token" in got[-1].headers.get("www-authenticate", ""), got[-1]
        # The stream ends within about a second of the expiry.
        assert s.wait_eof(5.0), s.items[-5:]
        assert any("token expired" in c for c in s.comments), s.comments
    assert wait_until(lambda: api(srv, "GET", "/v1/devices", token=tok2).status == 401,
                      timeout=6.0)
    r = api(srv, "GET", "/v1/tokens")
    row = [x for x in r.body if x["id"] == tid][0]
    assert row["expired"] is True, row
    line = [ln for ln in srv.cli("token", "list").stdout.splitlines() if ln.startswith(tid)][0]
    assert "(expired)" in line, line
    # An expired token opens no stream and makes no stream token.
    r = api(srv, "GET", "/v1/events", token=tok, timeout=5)
    assert_error(r, 401, "token_expired")
    assert_error(api(srv, "POST", "/v1/events/stream-token", token=tok), 401, "token_expired")


def test_cors(srv):
    # A preflight: no token, 204, the origin echoed, methods of the path.
    r = api(srv, "OPTIONS", "/v1/devices", token=None,
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status == 204, r
    h = r.headers
    assert h.get("access-control-allow-origin") == ORIGIN, r
    assert h.get("vary") == "Origin", r
    assert h.get("access-control-allow-methods") == "GET, POST", r
    allowed = {x.strip().lower() for x in h.get("access-control-allow-headers", "").split(",")}
    assert {"authorization", "content-type", "last-event-id"} <= allowed, r
    assert int(h.get("access-control-max-age", "0")) > 0, r
    assert h.get("allow") == "GET, POST", r
    r = api(srv, "OPTIONS", "/v1/events", token=None,
            headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"})
    assert r.status == 204 and r.headers.get("access-control-allow-origin") == \
        "http://localhost:3000", r
    # An origin not listed: answered, but no CORS header (never reflected).
    for origin in ("https://evil.example.com", "https://app.example.com.evil.com", "null"):
        r = api(srv, "OPTIONS", "/v1/devices", token=None,
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert r.status == 204, r
        assert not [k for k in r.headers if k.startswith("access-control-")], r
        r = api(srv, "GET", "/v1/devices", headers={"Origin": origin})
        assert r.status == 200 and "access-control-allow-origin" not in r.headers, r
    # An actual request from the allowed origin, and a refused one.
    r = api(srv, "GET", "/v1/devices", headers={"Origin": ORIGIN})
    assert r.status == 200, r
    assert r.headers.get("access-control-allow-origin") == ORIGIN, r
    assert r.headers.get("vary") == "Origin", r
    r = api(srv, "GET", "/v1/devices", token=None, headers={"Origin": ORIGIN})
    assert r.status == 401 and r.headers.get("access-control-allow-origin") == ORIGIN, r
    r = api(srv, "GET", "/v1/devices", headers={"Origin": ORIGIN.upper().replace("HTTPS", "https")})
    assert r.status == 200, r
    # An event stream carries it too.
    with SseStream(srv, "/v1/events", headers={"Origin": ORIGIN}) as s:
        assert s.status == 200 and s.headers.get("access-control-allow-origin") == ORIGIN
    # OPTIONS of no route is 404; with a body it is refused unread.
    r = api(srv, "OPTIONS", "/v1/nothing", token=None, headers={"Origin": ORIGIN})
    assert r.status == 404, r
    r = api(srv, "OPTIONS", "/v1/devices", token=None, data="x" * 10, headers={"Origin": ORIGIN})
    assert_error(r, 400, "bad_request")


def test_no_cors_by_default(api_server_factory):
    srv = api_server_factory()
    r = api(srv, "OPTIONS", "/v1/devices", token=None,
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert r.status == 204 and r.headers.get("allow") == "GET, POST", r
    assert not [k for k in r.headers if k.startswith("access-control-")], r
    r = api(srv, "GET", "/v1/devices", headers={"Origin": ORIGIN})
    assert r.status == 200 and not [k for k in r.headers if k.startswith("access-control-")], r


def test_cors_any_origin(api_server_factory):
    srv = api_server_factory(cors_origins="*")
    r = api(srv, "GET", "/v1/devices", headers={"Origin": "https://whoever.example"})
    assert r.status == 200 and r.headers.get("access-control-allow-origin") == "*", r


def mint(srv, token=None, **body):
    kw = {} if token is None else {"token": token}
    r = api(srv, "POST", "/v1/events/stream-token", json=body or None, **kw)
    assert r.status == 201, r
    assert r.headers.get("cache-control") == "no-store", r
    assert STREAM_TOKEN_RE.fullmatch(r.body["stream_token"]), r
    return r.body


def test_stream_token_opens_a_stream(srv):
    dev = create_device(srv)
    st = mint(srv)
    assert 55 <= st["expires_in"] <= 60, st
    tok = st["stream_token"]
    # Several streams: with N shards they land on several, and each takes a
    # stream token any shard made.
    streams = [SseStream(srv, "/v1/events?stream_token=%s" % tok, token=None) for _ in range(6)]
    try:
        for s in streams:
            assert s.status == 200, (s.status, s.body)
        shards = set()
        for s in streams:
            c = s.wait_comment(lambda t: "cyan event stream" in t, 3.0)
            shards.add(c)
        print("\nstreams opened on: %s" % sorted(shards))
        r = api(srv, "POST", "/v1/events", json={"name": "via-url", "data": "hello"})
        assert r.status == 202, r
        for s in streams:
            e = s.next(5.0)
            assert e.event == "via-url" and e.payload == "hello", e
    finally:
        for s in streams:
            s.close()
    # A device's stream too, and resuming with last_event_id in the URL.
    with SseStream(srv, "/v1/devices/%s/events?stream_token=%s" % (dev["id"], tok),
                   token=None) as s:
        assert s.status == 200, s.body
    # Given in the Authorization header it works as well.
    with SseStream(srv, "/v1/events", token=tok) as s:
        assert s.status == 200, s.body


def test_stream_token_refusals(srv):
    admin = srv.admin_token()
    st = mint(srv, expires_in=1)["stream_token"]
    # Not for any other route, whether in the URL or the header.
    assert_error(api(srv, "GET", "/v1/devices?stream_token=%s" % st, token=None), 401,
                 "unauthorized")
    r = api(srv, "GET", "/v1/devices", token=st)
    assert_error(r, 401, "unauthorized")
    assert "stream" in r.body["message"], r
    r = api(srv, "POST", "/v1/events/stream-token", token=st)
    assert r.status == 401, r
    # Tampered: refused.
    forged = st[:-1] + ("0" if st[-1] != "0" else "1")
    with SseStream(srv, "/v1/events?stream_token=%s" % forged, token=None) as s:
        assert s.status == 401 and s.json["error"] == "unauthorized", (s.status, s.body)
    later = st[:17] + "%012x" % (int(st[17:29], 16) + 3600000) + st[29:]
    with SseStream(srv, "/v1/events?stream_token=%s" % later, token=None) as s:
        assert s.status == 401, (s.status, s.body)
    # Expired (1 s): refused, and says so.
    def refused():
        with SseStream(srv, "/v1/events?stream_token=%s" % st, token=None) as s:
            return s.status == 401 and s.json["error"] == "token_expired"
    assert wait_until(refused, timeout=5.0)
    # A long-lived token is never taken from the URL.
    for q in ("access_token=%s" % admin, "stream_token=%s" % admin):
        with SseStream(srv, "/v1/events?%s" % q, token=None) as s:
            assert s.status == 400 and s.json["error"] == "token_in_url", (q, s.status, s.body)
            assert "Authorization" in s.json["message"] or "URL" in s.json["message"], s.json
    r = api(srv, "GET", "/v1/devices?access_token=%s" % admin)  # even with a header
    assert_error(r, 400, "token_in_url")
    # Only a token with events:read makes one.
    _, dr = token_create(srv, "dr", scopes="devices:read")
    r = api(srv, "POST", "/v1/events/stream-token", token=dr)
    assert_error(r, 403, "forbidden")
    assert r.body["scope"] == "events:read"
    for body in ({"expires_in": 0}, {"expires_in": 61}, {"expires_in": "5"}, {"other": 1}):
        assert_error(api(srv, "POST", "/v1/events/stream-token", json=body), 400, "bad_request")
    # None of these tokens reached the log (the query string is never logged).
    log = srv.log()
    for t in (st, forged, later, admin):
        assert t not in log and t[17:] not in log, t


def test_revoking_the_parent_ends_the_stream(srv):
    tid, parent = token_create(srv, "page", scopes="events:read")
    st = mint(srv, token=parent)
    with SseStream(srv, "/v1/events?stream_token=%s" % st["stream_token"], token=None) as s, \
            SseStream(srv, "/v1/events") as keeper:
        assert s.status == 200 and keeper.status == 200
        r = api(srv, "POST", "/v1/events", json={"name": "before", "data": "1"})
        assert r.status == 202, r
        assert s.next(5.0).event == "before"
        assert keeper.next(5.0).event == "before"
        srv.cli("token", "revoke", tid)
        t0 = time.monotonic()
        assert s.wait_eof(5.0), s.items[-5:]
        assert any("token revoked" in c for c in s.comments), s.comments
        print("\nstream of a stream token ended %.2f s after its parent's revocation"
              % (time.monotonic() - t0))
        r = api(srv, "POST", "/v1/events", json={"name": "after", "data": "2"})
        assert keeper.next(5.0).event == "after"
    # The stream token opens nothing more.
    with SseStream(srv, "/v1/events?stream_token=%s" % st["stream_token"], token=None) as s:
        assert s.status == 401, (s.status, s.body)
    # A stream token dies with its parent's expiry at the latest: a parent
    # that expires sooner than 60 s caps its stream tokens.
    _, brief = token_create(srv, "brief", scopes="events:read", expires="5s")
    st = mint(srv, token=brief)
    assert st["expires_in"] <= 5, st
