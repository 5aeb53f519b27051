"""Webhooks (docs/api.md, "Webhooks"): device events reach a receiver at
least once, signed the Standard Webhooks way, rendered from templates,
retried, dead-lettered and replayed, across the death of a shard and of the
whole node, without a slow receiver holding up anything else; and the
figures of every webhook add up (matched = delivered + queued + in flight +
dead) after each of these.

The receiver is whsink.Sink on 127.0.0.1; signatures are checked with
stdwebhooks.verify, written from the specification, not from cyan's code.
"""

import json
import os
import signal
import time
import urllib.parse

import pytest

from apidevice import ISO_MS_RE, api, online_device
from stdwebhooks import verify
from whsink import Answer, Sink

pytestmark = pytest.mark.cyan_only

FIGURES = ("matched", "delivered", "queued", "in_flight", "dead")


def start(api_server_factory, **settings):
    settings.setdefault("webhook_allow_private", True)
    settings.setdefault("webhook_retry_base", 100)
    return api_server_factory(**settings)


def make_hook(srv, sink, path="/hook", **fields):
    body = {"url": sink.url + path}
    body.update(fields)
    r = api(srv, "POST", "/v1/webhooks", json=body)
    assert r.status == 201, r
    assert r.body["secret"].startswith("whsec_"), r
    return r.body


def stats(srv, hook_id):
    r = api(srv, "GET", "/v1/webhooks/%s" % hook_id)
    assert r.status == 200, r
    return r.body.get("stats") or {}


def wait_stats(srv, hook_id, pred, timeout=15.0, what="figures"):
    """The webhook's figures once pred holds; they must always add up."""
    deadline = time.monotonic() + timeout
    s = None
    while time.monotonic() < deadline:
        s = stats(srv, hook_id)
        if all(k in s for k in FIGURES):
            assert s["matched"] == sum(s[k] for k in FIGURES[1:]), \
                "figures do not add up: %r" % s
            if pred(s):
                return s
        time.sleep(0.1)
    raise AssertionError("webhook %s: %s not reached within %.0fs: %r" % (hook_id, what, timeout, s))


def wait_hook_seen(srv, dev, hook, sink, name="ping"):
    """Each shard learns of a new webhook within half a second, and delivers
    only what is logged after that: publish probes until a request for one
    arrives (whatever its body's shape)."""
    deadline = time.monotonic() + 10
    n = 0
    before = sink.count
    while time.monotonic() < deadline:
        n += 1
        dev.publish_event(name, b"probe-%d" % n)
        try:
            sink.wait(lambda rs: len(rs) > before, timeout=0.6, what="a probe")
            return n
        except AssertionError:
            continue
    raise AssertionError("the webhook never delivered a probe")


def rj(r):
    """A request's JSON body, or None (a form or text body)."""
    try:
        return json.loads(r.body)
    except (ValueError, UnicodeDecodeError):
        return None


def bodies(rs, name):
    """The JSON bodies of requests rs about event `name`. Inside a sink.wait
    predicate pass its argument (the sink's lock is held there)."""
    out = []
    for r in rs:
        j = rj(r)
        if isinstance(j, dict) and j.get("name") == name:
            out.append(j)
    return out


# ================================================================ delivery

def test_delivery_default_body_signed(api_server_factory):
    srv = start(api_server_factory)
    with Sink() as sink:
        dev = online_device(srv)
        try:
            hook = make_hook(srv, sink, event="")
            wait_hook_seen(srv, dev, hook, sink)
            sink.clear()
            t0 = time.time()
            dev.publish_event("temp", b'{"c": 21.5}')
            reqs = sink.wait_for(1)
            r = reqs[0]
            assert r.method == "POST", r
            verify(hook["secret"], r.headers, r.body)
            body = rj(r)
            assert body["name"] == "temp", body
            assert body["data"] == '{"c": 21.5}', body
            assert body["device_id"] == dev.info["id"], body
            assert ISO_MS_RE.match(body["published_at"]), body
            assert body["event_id"] == r.webhook_id, (body, r.headers)
            shard, _, seq = r.webhook_id.partition("-")
            assert shard.isdigit() and seq.isdigit(), r.webhook_id
            assert r.headers.get("content-type", "").startswith("application/json"), r.headers
            # The trace says where it went.
            tr = api(srv, "GET", "/v1/events/%s/trace" % r.webhook_id)
            assert tr.status == 200, tr
            assert tr.body["name"] == "temp" and tr.body["in_log"] is True, tr.body
            mine = [w for w in tr.body["webhooks"] if w["webhook_id"] == hook["id"]]
            assert mine and mine[0]["state"] in ("delivered", "pending"), tr.body
            s = wait_stats(srv, hook["id"], lambda s: s["delivered"] >= 2 and not s["queued"]
                           and not s["in_flight"])
            assert s["status"] == "healthy", s
            assert s["dead"] == 0, s
            assert t0 - 5 < time.time()
        finally:
            dev.close()


def test_templates_json_form_headers_url(api_server_factory):
    srv = start(api_server_factory)
    with Sink() as sink:
        dev = online_device(srv)
        try:
            j = make_hook(srv, sink, path="/j/{{device_id}}", event="meas",
                          json={"t": "{{data.temp}}", "who": "{{device_id}}", "n": "{{name}}"},
                          headers={"X-Key": "k-{{name}}"})
            f = make_hook(srv, sink, path="/f", event="meas", form={"v": "{{data}}", "e": "{{name}}"},
                          method="PUT")
            wait_hook_seen(srv, dev, j, sink, name="meas/probe")
            sink.clear()
            dev.publish_event("meas/x", b'{"temp": 19}')
            def is_x(r):
                j = rj(r)
                return (isinstance(j, dict) and j.get("n") == "meas/x") or \
                    (r.path == "/f" and b"e=meas%2Fx" in r.body)
            reqs = sink.wait(lambda rs: len([r for r in rs if is_x(r)]) >= 2,
                             what="both webhooks")
            reqs = [r for r in reqs if is_x(r)]
            jr = [r for r in reqs if r.path.startswith("/j/")][-1]
            fr = [r for r in reqs if r.path == "/f"][-1]
            assert jr.path == "/j/%s" % dev.info["id"], jr
            verify(j["secret"], jr.headers, jr.body)
            assert json.loads(jr.body) == {"t": 19, "who": dev.info["id"], "n": "meas/x"}, jr.body
            assert jr.headers["x-key"] == "k-meas/x", jr.headers
            assert fr.method == "PUT", fr
            verify(f["secret"], fr.headers, fr.body)
            assert fr.headers["content-type"].startswith("application/x-www-form-urlencoded")
            assert urllib.parse.parse_qs(fr.body.decode()) == {"v": ['{"temp": 19}'],
                                                               "e": ["meas/x"]}, fr.body
        finally:
            dev.close()


# ================================================================ failures

def test_receiver_down_then_up_loses_nothing(api_server_factory):
    srv = start(api_server_factory)
    sink = Sink().start()
    dev = online_device(srv)
    try:
        hook = make_hook(srv, sink, event="batch")
        wait_hook_seen(srv, dev, hook, sink, name="batch/probe")
        sink.down()
        sent = []
        for i in range(30):
            dev.publish_event("batch/n", b"%d" % i)
            sent.append(b"%d" % i)
        wait_stats(srv, hook["id"], lambda s: s["matched"] >= 31 and s["status"] != "healthy",
                   what="the failures seen")
        sink.up()
        sink.wait(lambda rs: {b["data"] for b in bodies(rs, "batch/n")} >= {x.decode() for x in sent},
                  timeout=30, what="every queued event")
        s = wait_stats(srv, hook["id"], lambda s: s["queued"] == 0 and s["in_flight"] == 0,
                       timeout=20)
        assert s["dead"] == 0, s
        assert s["delivered"] == s["matched"], s
    finally:
        dev.close()
        sink.stop()


def test_retry_500_then_success_with_growing_gaps(api_server_factory):
    srv = start(api_server_factory, webhook_retry_base=50)
    with Sink() as sink:
        dev = online_device(srv)
        try:
            hook = make_hook(srv, sink, event="r5")
            wait_hook_seen(srv, dev, hook, sink, name="r5/probe")
            sink.clear()
            sink.sequence([500, 503], then=200)
            dev.publish_event("r5/x", b"1")
            reqs = sink.wait(lambda rs: len([r for r in rs if (rj(r) or {}).get("name") == "r5/x"]) >= 3,
                             timeout=20, what="three attempts")
            mine = [r for r in reqs if (rj(r) or {}).get("name") == "r5/x"]
            assert len({r.webhook_id for r in mine}) == 1, [r.webhook_id for r in mine]
            g1, g2 = mine[1].t - mine[0].t, mine[2].t - mine[1].t
            assert g2 > g1, "the second wait (%.3fs) is not longer than the first (%.3fs)" % (g2, g1)
            for r in mine:
                verify(hook["secret"], r.headers, r.body)
            s = wait_stats(srv, hook["id"], lambda s: s["queued"] == 0 and s["in_flight"] == 0)
            assert s["dead"] == 0, s
            tr = api(srv, "GET", "/v1/events/%s/trace" % mine[0].webhook_id).body
            w = [x for x in tr["webhooks"] if x["webhook_id"] == hook["id"]][0]
            assert w["state"] in ("delivered", "pending"), tr
        finally:
            dev.close()


def test_retry_after_is_honoured(api_server_factory):
    srv = start(api_server_factory, webhook_retry_base=10)
    with Sink() as sink:
        dev = online_device(srv)
        try:
            hook = make_hook(srv, sink, event="ra")
            wait_hook_seen(srv, dev, hook, sink, name="ra/probe")
            sink.clear()
            sink.sequence([Answer(429, retry_after="2")], then=200)
            dev.publish_event("ra/x", b"1")
            reqs = sink.wait(lambda rs: len([r for r in rs if (rj(r) or {}).get("name") == "ra/x"]) >= 2,
                             timeout=10, what="the retry")
            mine = [r for r in reqs if (rj(r) or {}).get("name") == "ra/x"]
            assert mine[1].t - mine[0].t >= 1.8, mine[1].t - mine[0].t
        finally:
            dev.close()


def test_400_dead_letter_then_replay(api_server_factory):
    srv = start(api_server_factory)
    with Sink() as sink:
        dev = online_device(srv)
        try:
            hook = make_hook(srv, sink, event="dl")
            wait_hook_seen(srv, dev, hook, sink, name="dl/probe")
            sink.answer(400)
            dev.publish_event("dl/x", b"lost?")
            s = wait_stats(srv, hook["id"], lambda s: s["dead"] >= 1, what="a dead letter")
            r = api(srv, "GET", "/v1/webhooks/%s/dead-letters" % hook["id"])
            assert r.status == 200, r
            letters = [d for d in r.body["dead_letters"] if d["name"] == "dl/x"]
            assert len(letters) == 1, r.body
            d = letters[0]
            assert d["data"] == "lost?" and d["attempts"] == 1, d
            assert d["trail"][0]["status"] == 400, d
            tr = api(srv, "GET", "/v1/events/%s/trace" % d["event_id"]).body
            w = [x for x in tr["webhooks"] if x["webhook_id"] == hook["id"]][0]
            assert w["state"] == "dead_lettered" and w["attempts"] == 1, tr
            # Fixed receiver: replay.
            sink.answer(200)
            sink.clear()
            r = api(srv, "POST", "/v1/webhooks/%s/dead-letters/%s/replay" % (hook["id"], d["event_id"]))
            assert r.status == 202, r
            reqs = sink.wait(lambda rs: any(q.webhook_id == d["event_id"] for q in rs),
                             what="the replayed event")
            verify(hook["secret"], reqs[-1].headers, reqs[-1].body)
            s = wait_stats(srv, hook["id"], lambda s: s["dead"] == 0 and s["queued"] == 0
                           and s["in_flight"] == 0, what="the letter gone")
            r = api(srv, "GET", "/v1/webhooks/%s/dead-letters" % hook["id"])
            assert not [x for x in r.body["dead_letters"] if x["name"] == "dl/x"], r.body
        finally:
            dev.close()


def test_410_disables_the_webhook(api_server_factory):
    srv = start(api_server_factory)
    with Sink() as sink:
        dev = online_device(srv)
        try:
            hook = make_hook(srv, sink, event="gone")
            wait_hook_seen(srv, dev, hook, sink, name="gone/probe")
            sink.answer(410)
            dev.publish_event("gone/x", b"1")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                w = api(srv, "GET", "/v1/webhooks/%s" % hook["id"]).body
                if w["enabled"] is False:
                    break
                time.sleep(0.1)
            assert w["enabled"] is False and "410" in (w.get("disabled_reason") or ""), w
            wait_stats(srv, hook["id"], lambda s: s["dead"] >= 1 and s["status"] == "disabled")
        finally:
            dev.close()


# ================================================================ crashes

@pytest.mark.parametrize("what", ["shard", "node"])
def test_kill_during_delivery_loses_nothing(api_server_factory, what):
    srv = start(api_server_factory)
    with Sink() as sink:
        dev = online_device(srv)
        hook = make_hook(srv, sink, event="k")
        try:
            wait_hook_seen(srv, dev, hook, sink, name="k/probe")
            # A slow receiver, so that deliveries are in flight at the kill.
            sink.answer(Answer(200, delay=0.05))
            n = 60
            for i in range(n):
                dev.publish_event("k/n", b"%d" % i)   # each acknowledged (QoS 1)
            sink.wait(lambda rs: len(bodies(rs, "k/n")) >= 5, what="deliveries under way")
        finally:
            dev.close()
        if what == "shard":
            old = srv.shard_pids()
            for pid in old.values():
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                now = srv.shard_pids()
                if len(now) == len(old) and not set(now.values()) & set(old.values()):
                    break
                time.sleep(0.05)
        else:
            srv.restart(kill=True)
        srv.wait_api_healthy()
        sink.answer(200)
        sink.wait(lambda rs: {b["data"] for b in bodies(rs, "k/n")} >= {str(i) for i in range(n)},
                  timeout=40, what="every acknowledged event")
        # Every copy of one event carries the same webhook-id.
        by_data = {}
        for r in sink.requests:
            j = rj(r)
            if j and j.get("name") == "k/n":
                by_data.setdefault(j["data"], set()).add(r.webhook_id)
        assert all(len(ids) == 1 for ids in by_data.values()), by_data
        wait_stats(srv, hook["id"], lambda s: s["queued"] == 0 and s["in_flight"] == 0
                   and s["delivered"] >= n, timeout=20)


# ================================================================ bulkheads

def test_black_hole_does_not_slow_others(api_server_factory):
    srv = start(api_server_factory, webhook_timeout=30)
    with Sink() as hole, Sink() as good:
        hole.black_hole()
        dev = online_device(srv)
        try:
            bad = make_hook(srv, hole, event="bh")
            ok = make_hook(srv, good, event="bh")
            wait_hook_seen(srv, dev, ok, good, name="bh/probe")
            good.clear()
            t0 = time.monotonic()
            for i in range(100):
                dev.publish_event("bh/n", b"%d" % i)
            good.wait(lambda rs: len(bodies(rs, "bh/n")) >= 100, timeout=10,
                      what="the good receiver's events")
            elapsed = time.monotonic() - t0
            assert elapsed < 10, elapsed
            s = stats(srv, bad["id"])
            assert s["in_flight"] >= 1, s
            # MQTT routing is not held either: a call round trip still works.
            r = api(srv, "GET", "/v1/devices/%s" % dev.info["id"])
            assert r.status == 200 and r.body["online"] is True, r
        finally:
            dev.close()


# ================================================================ the log

def test_stream_resumes_across_restart(api_server_factory):
    from apidevice import SseStream
    srv = start(api_server_factory)
    dev = online_device(srv)
    try:
        with SseStream(srv, "/v1/events/lr") as s:
            dev.publish_event("lr/a", b"1")
            first = s.next(timeout=5)
            assert first.event == "lr/a", first
        dev.publish_event("lr/b", b"2")
        dev.publish_event("lr/c", b"3")
    finally:
        dev.close()
    srv.restart(kill=True)
    srv.wait_api_healthy()
    with SseStream(srv, "/v1/events/lr", last_event_id=first.id) as s:
        got = [s.next(timeout=5).event, s.next(timeout=5).event]
    assert got == ["lr/b", "lr/c"], got


# ================================================================ more

def wait_messages(dev, pred, timeout=10.0, what="a message"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [m for m in list(dev.messages) if pred(m)]
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("%s never came; messages: %r" % (what, dev.messages[-5:]))


def test_hook_response_and_error_back_to_the_device(api_server_factory):
    srv = start(api_server_factory)
    with Sink() as sink:
        dev = online_device(srv)
        try:
            hook = make_hook(srv, sink, event="hr",
                             response_topic="devices/{{device_id}}/hook-response/{{name}}",
                             error_topic="devices/{{device_id}}/hook-error/{{name}}")
            dev.c.subscribe("devices/%s/hook-response/#" % dev.id, 1)
            dev.c.subscribe("devices/%s/hook-error/#" % dev.id, 1)
            wait_hook_seen(srv, dev, hook, sink, name="hr/probe")
            sink.answer(Answer(200, body=b'{"ok": 42}'))
            dev.publish_event("hr/x", b"1")
            got = wait_messages(dev, lambda m: m[0] == "devices/%s/hook-response/hr/x" % dev.id,
                                what="the hook response")
            assert got[0][1] == b'{"ok": 42}', got
            sink.answer(404)
            dev.publish_event("hr/y", b"2")
            got = wait_messages(dev, lambda m: m[0] == "devices/%s/hook-error/hr/y" % dev.id,
                                what="the hook error")
            err = json.loads(got[0][1])
            assert err["status"] == 404 and err["event_id"], err
        finally:
            dev.close()


def test_ordered_webhook_keeps_log_order_through_failures(api_server_factory):
    srv = start(api_server_factory, webhook_retry_base=20)
    with Sink() as sink:
        dev = online_device(srv)
        try:
            hook = make_hook(srv, sink, event="ord", ordered=True)
            wait_hook_seen(srv, dev, hook, sink, name="ord/probe")
            sink.clear()
            sink.sequence([503, 503], then=200)
            for i in range(20):
                dev.publish_event("ord/n", b"%d" % i)
            sink.wait(lambda rs: len({b["data"] for b in bodies(rs, "ord/n")}) >= 20, timeout=20,
                      what="all twenty")
            reqs = [r for r in sink.requests if (rj(r) or {}).get("name") == "ord/n"]
            # First attempts in log order, the failing head retried before the rest.
            seq = [rj(r)["data"] for r in reqs]
            firsts = []
            for d in seq:
                if d not in firsts:
                    firsts.append(d)
            assert firsts == [str(i) for i in range(20)], seq
            assert seq[:3] == ["0", "0", "0"], seq  # the head is retried in place
        finally:
            dev.close()


def test_private_address_by_name_refused_at_connect(api_server_factory):
    srv = start(api_server_factory, webhook_allow_private=False)
    with Sink() as sink:
        r = api(srv, "POST", "/v1/webhooks", json={"url": "http://127.0.0.1:%d/x" % sink.port})
        assert r.status == 400, r
        # A name is judged by what it resolves to, when connecting.
        r = api(srv, "POST", "/v1/webhooks",
                json={"url": "http://localhost:%d/x" % sink.port, "event": "ssrf"})
        assert r.status == 201, r
        hook = r.body
        dev = online_device(srv)
        try:
            deadline = time.monotonic() + 15
            n = 0
            s = {}
            while time.monotonic() < deadline:
                n += 1
                dev.publish_event("ssrf/x", b"%d" % n)
                s = stats(srv, hook["id"])
                if (s.get("last_error") or {}).get("error", "").startswith("address not allowed"):
                    break
                time.sleep(0.5)
            assert (s.get("last_error") or {}).get("error", "").startswith("address not allowed"), s
            assert sink.count == 0, sink.requests
        finally:
            dev.close()
