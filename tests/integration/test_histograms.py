"""Latency histograms (health/metrics.h, CY_HISTS) as `cyan status --json`
shows them: every shard publishes api_request_duration_seconds (every HTTP
API answer, from the end of the request's head) and
device_call_duration_seconds (function calls and variable reads, from the
API request to the device's answer or the timeout) into its scoreboard
slot; the monitor's /metrics renders the same words.

The figures are read node-wide (summed over the shards: with several shards
each curl request may land on any of them) as deltas from a baseline taken
once nothing else talks to the API, so every request a test makes must
appear exactly once.
"""

import json

import pytest

from apidevice import SseStream, api, call, online_device, read_var
from helpers import wait_until

pytestmark = pytest.mark.cyan_only

API = "api_request_duration_seconds"
CALLS = "device_call_duration_seconds"
LE = ["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
      "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]


@pytest.fixture
def api_server(api_server_factory):
    """cyan with its API and no canaries: nothing but the test makes API
    requests or device calls (a canary calls a function through the API)."""
    return api_server_factory(canary_timeout=0)


def status_json(srv):
    cp = srv.cli("status", "--json")
    return json.loads(cp.stdout)


def node_hists(doc):
    """{name: {"count", "sum", "buckets": [cumulative per LE]}} summed over
    the shards, after checking each shard's histogram is well formed."""
    out = {}
    for sh in doc["shards"]:
        for name, h in sh["histograms"].items():
            assert list(h["buckets"]) == LE, h
            cum = [h["buckets"][le] for le in LE]
            assert cum == sorted(cum), "cumulative buckets must grow with le: %r" % h
            assert cum[-1] == h["count"], h
            assert h["sum_seconds"] >= 0, h
            if h["count"] == 0:
                assert h["sum_seconds"] == 0 and h["last_observed_ms_ago"] is None, h
            else:
                assert h["last_observed_ms_ago"] >= 0, h
            o = out.setdefault(name, {"count": 0, "sum": 0.0, "buckets": [0] * len(LE)})
            o["count"] += h["count"]
            o["sum"] += h["sum_seconds"]
            o["buckets"] = [a + b for a, b in zip(o["buckets"], cum)]
    return out


def delta(now, base, name):
    n, b = now[name], base[name]
    return {"count": n["count"] - b["count"], "sum": n["sum"] - b["sum"],
            "buckets": [x - y for x, y in zip(n["buckets"], b["buckets"])]}


def wait_counts(srv, base, want, timeout=10.0):
    """Poll `cyan status --json` until each histogram of want has moved by
    at least its count; returns the deltas."""
    seen = {}

    def moved():
        seen["doc"] = status_json(srv)
        h = node_hists(seen["doc"])
        seen["d"] = {name: delta(h, base, name) for name in h}
        return all(seen["d"][name]["count"] >= n for name, n in want.items())

    assert wait_until(moved, timeout=timeout, interval=0.1), (want, seen.get("d"))
    return seen["d"]


def test_status_json_shape(api_server):
    """`cyan status --json`: the node, every shard with its metrics and
    both histograms; the plain table is unchanged beside it."""
    doc = status_json(api_server)
    assert doc["running"] is True and doc["supervisor_pid"] > 0, doc
    n = doc["nshards"]
    assert len(doc["shards"]) == n and [s["shard"] for s in doc["shards"]] == list(range(n))
    for sh in doc["shards"]:
        assert sh["state"] == "RUNNING" and sh["pid"] > 0, sh
        assert sh["accepting"] is True, sh  # the fixture waited for /v1/health
        assert set(sh["histograms"]) == {API, CALLS}, sh
        assert "api_requests" in sh["metrics"] and "publish_sent" in sh["metrics"], sh
        assert set(sh["restarts"]) == {"exit", "signal", "hung", "stuck", "canary"}, sh
    assert doc["totals_shards"] == n
    assert doc["totals"]["api_requests"] == sum(s["metrics"]["api_requests"]
                                                for s in doc["shards"])
    node_hists(doc)
    # The table is still what `cyan status` prints without the flag.
    assert "node totals over" in api_server.cli("status").stdout
    # The flag is status's only.
    cp = api_server.cli("device", "list", "--json", check=False)
    assert cp.returncode == 2 and "unknown option '--json'" in cp.stderr, cp


def test_api_requests_and_calls_are_timed(api_server):
    """Each API answer is one observation of api_request_duration_seconds
    (refusals by the pre-body check included), each call or read one of
    device_call_duration_seconds, whatever its end (a reply, a timeout);
    the API's counter of answers moves with the histogram."""
    dev = online_device(api_server, 5, functions={"num": lambda arg: "42",
                                                  "silent": lambda arg: None},
                        variables={"temperature": lambda: 21.5})
    try:
        base_doc = status_json(api_server)
        base = node_hists(base_doc)
        base_answers = base_doc["totals"]["api_requests"]
        made = 0
        for _ in range(4):
            assert api(api_server, "GET", "/v1/health", token=None).status == 200
            made += 1
        r = api(api_server, "GET", "/v1/devices", token=None)  # refused by the check
        assert r.status == 401, r
        made += 1
        r = api(api_server, "GET", "/v1/nowhere")
        assert r.status == 404, r
        made += 1
        r = call(api_server, dev.id, "num")
        assert r.status == 200 and r.body["return_value"] == 42, r
        made += 1
        r = read_var(api_server, dev.id, "temperature")
        assert r.status == 200 and r.body["value"] == 21.5, r
        made += 1
        # The device never answers: 504 after about 0.9 s (the owner's
        # deadline, the caller's less its margin).
        r = call(api_server, dev.id, "silent", timeout=1)
        assert r.status == 504 and r.error == "device_timeout", r
        slow = r.elapsed
        made += 1
        d = wait_counts(api_server, base, {API: made, CALLS: 3})
        doc = status_json(api_server)
        d = {name: delta(node_hists(doc), base, name) for name in (API, CALLS)}
        assert d[API]["count"] == made, d
        assert d[CALLS]["count"] == 3, d
        assert doc["totals"]["api_requests"] - base_answers == made, doc["totals"]
        # The silent call is one slow observation in each: between 0.5 s
        # and 2.5 s (about 0.9 s); the other calls took far less than 0.5 s.
        i05, i25 = LE.index("0.5"), LE.index("2.5")
        for name in (API, CALLS):
            b = d[name]["buckets"]
            assert b[-1] == d[name]["count"], d
            assert b[i25] - b[i05] == 1, (name, d)
            assert b[i05] == d[name]["count"] - 1, (name, d)
            assert 0.8 <= d[name]["sum"] <= slow + 1.0, (name, d, slow)
        # The device call is part of its API request: never longer.
        assert d[CALLS]["sum"] <= d[API]["sum"], d
        # Fast answers land in the fast buckets: the health checks and the
        # refusals took under 0.25 s each.
        assert d[API]["buckets"][LE.index("0.25")] >= made - 3, d
    finally:
        dev.close()


def test_event_streams_are_not_timed(api_server):
    """An event stream is not an answer of a duration: opening one adds no
    observation (the next ordinary request is the only one counted); a
    refused stream is an answer and is timed."""
    base = node_hists(status_json(api_server))
    s = SseStream(api_server, "/v1/events")
    try:
        assert s.status == 200, s.status
        assert api(api_server, "GET", "/v1/health", token=None).status == 200
        d = wait_counts(api_server, base, {API: 1})
        assert d[API]["count"] == 1, d
        # An unknown device's stream is a 404 answer: timed.
        r = api(api_server, "GET", "/v1/devices/0123456789abcdef01234567/events")
        assert r.status == 404, r
        d = wait_counts(api_server, base, {API: 2})
        assert d[API]["count"] == 2, d
        assert d[CALLS]["count"] == 0, d
    finally:
        s.close()
