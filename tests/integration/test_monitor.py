"""The monitor process (issue 11): /metrics on the operations listener,
served by a process that no shard's hang can stop, with the figures of a
hung shard still served and marked stale; the monitor itself watched and
replaced by the supervisor like a shard.
"""

import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers import CYAN

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's monitor"),
]


def wait_for(pred, timeout, what, srv):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail("%s: not within %.1fs\n%s" % (what, timeout, srv.log_tail()))
        time.sleep(0.05)


def shard_label(i):
    return 'shard="%d"' % i


def wait_metrics(srv, pred, timeout, what):
    """The first /metrics for which pred(metrics) is true (bounded)."""
    return wait_for(lambda: (lambda m: m if pred(m) else None)(srv.metrics()), timeout, what,
                    srv)


def all_up(srv, n):
    """/metrics once it shows every shard up and fresh (the monitor's first
    snapshot may predate the shards' start)."""
    return wait_metrics(srv, lambda m: all(
        m.get(("cyan_shard_up", shard_label(i))) == 1
        and m.get(("cyan_shard_stale", shard_label(i))) == 0 for i in range(n)), 10,
        "every shard up in /metrics")


def test_metrics_served_and_valid(server_factory):
    srv = server_factory(shards=2)
    m = all_up(srv, 2)
    for i in range(2):
        assert m[("cyan_shard_up", shard_label(i))] == 1
        assert m[("cyan_shard_stale", shard_label(i))] == 0
        assert m[("cyan_shard_restarts_total", 'reason="hung",' + shard_label(i))] == 0
        # Every per-shard registry metric is there, with its companion.
        assert ("cyan_publish_received_total", shard_label(i)) in m
        assert ("cyan_publish_received_last_change_timestamp_seconds", shard_label(i)) in m
        assert ("cyan_shard_last_progress_timestamp_seconds", shard_label(i)) in m
    for i in range(2):
        for h in ("cyan_api_request_duration_seconds", "cyan_device_call_duration_seconds"):
            count = m[(h + "_count", shard_label(i))]
            assert m[(h + "_bucket", 'le="+Inf",' + shard_label(i))] == count
            assert (h + "_sum", shard_label(i)) in m
    builds = [k for k in m if k[0] == "cyan_build_info"]
    assert len(builds) == 1 and 'version="' in builds[0][1] and 'commit="' in builds[0][1]
    assert ("cyan_process_cpu_seconds_total", 'process="supervisor"') in m
    assert ("cyan_process_resident_memory_bytes", 'process="shard",shard="0"') in m
    # promtool (Debian's prometheus package) accepts the exposition.
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run scripts/deps.sh test"
    status, headers, body = srv.ops_get("/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    cp = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                        timeout=20)
    assert cp.returncode == 0, cp.stdout.decode() + cp.stderr.decode()


def test_change_times_follow_traffic(server_factory, new_device):
    """A counter's companion moves when the counter does, and not otherwise."""
    srv = server_factory(shards=1)
    m0 = all_up(srv, 1)
    key = ("cyan_connects_total", shard_label(0))
    comp = ("cyan_connects_last_change_timestamp_seconds", shard_label(0))
    before = m0[key]
    dev = new_device()
    t0 = time.time()
    cp = subprocess.run(["mosquitto_pub", "-h", srv.host, "-p", str(srv.port), "-u", dev.id,
                         "-P", dev.secret, "-i", dev.id, "-t", "events/x", "-m", "1"],
                        capture_output=True, timeout=10)
    assert cp.returncode == 0, cp.stderr
    m1 = wait_for(lambda: (lambda m: m if m[key] > before else None)(srv.metrics()), 5,
                  "connects_total moves", srv)
    assert m1[("cyan_publish_received_qos0_total", shard_label(0))] >= 1
    assert m1[comp] >= t0 - 1.0
    assert m1[comp] <= time.time() + 1.0
    # An unchanged counter keeps its change time across snapshots.
    other = ("cyan_limit_outbox_last_change_timestamp_seconds", shard_label(0))
    evals = m1[("cyan_monitor_evaluations_total", "")]
    m2 = wait_for(lambda: (lambda m: m if m[("cyan_monitor_evaluations_total", "")] > evals + 1
                           else None)(srv.metrics()), 5, "two more snapshots", srv)
    assert m2[other] == m1[other]
    assert m2[comp] == m1[comp]


def test_stopped_shard_served_stale_then_replaced(server_factory):
    srv = server_factory(shards=2, watchdog_timeout=1000)
    pids = srv.wait_shard_pids()
    all_up(srv, 2)
    os.kill(pids[1], signal.SIGSTOP)
    try:
        # Its figures are still served, marked stale, while it is stopped.
        m = wait_for(lambda: (lambda m: m if m.get(("cyan_shard_stale", shard_label(1))) == 1
                              or m[("cyan_shard_restarts_total",
                                    'reason="hung",' + shard_label(1))] >= 1
                              else None)(srv.metrics()), 5, "shard 1 stale", srv)
        if m[("cyan_shard_restarts_total", 'reason="hung",' + shard_label(1))] == 0:
            assert m[("cyan_shard_stale", shard_label(0))] == 0
            assert m[("cyan_shard_heartbeat_age_seconds", shard_label(1))] > 1.0
            assert ("cyan_publish_received_total", shard_label(1)) in m
        # The supervisor replaces it; the counter says why.
        m = wait_for(lambda: (lambda m: m if m[("cyan_shard_restarts_total",
                                                'reason="hung",' + shard_label(1))] == 1
                              and m[("cyan_shard_up", shard_label(1))] == 1
                              and m[("cyan_shard_stale", shard_label(1))] == 0
                              else None)(srv.metrics()), 10, "shard 1 replaced", srv)
        assert m[("cyan_shard_restarts_total", 'reason="hung",' + shard_label(0))] == 0
    finally:
        try:
            os.kill(pids[1], signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_monitor_killed_is_replaced(server_factory):
    srv = server_factory(shards=2)
    shard_pids = srv.wait_shard_pids()
    srv.metrics()
    pid = wait_for(srv.monitor_pid, 5, "monitor running", srv)
    os.kill(pid, signal.SIGKILL)
    new = wait_for(lambda: (lambda p: p if p and p != pid else None)(srv.monitor_pid()), 10,
                   "a new monitor", srv)
    assert new != pid
    m = srv.metrics(timeout=10)
    assert m[("cyan_shard_up", shard_label(0))] == 1
    # Shards never noticed.
    assert srv.shard_pids() == shard_pids
    assert srv.wait_log("monitor (pid %d) exited with signal 9" % pid, 5), srv.log_tail()


def test_ops_public_false_needs_a_token(server_factory):
    srv = server_factory(shards=1, ops_public=False)
    status, _, _ = wait_for(lambda: (lambda r: r if r[0] is not None else None)(
        srv.ops_get("/metrics")), 5, "ops listener answers", srv)
    assert status == 401
    status, _, body = srv.ops_get("/metrics", token=srv.admin_token())
    assert status == 200, body
    status, _, body = srv.ops_get("/-/healthy")
    assert status == 200 and body == b"ok\n"


def test_monitor_off(server_factory):
    srv = server_factory(shards=1, monitor=False)
    srv.wait_shard_pids()
    assert srv.wait_log("all 1 shards running", 10)
    assert srv.monitor_pid() is None
    status, _, _ = srv.ops_get("/metrics", timeout=1)
    assert status is None


def ops_post(srv, path, body, token=None):
    import http.client
    import json
    conn = http.client.HTTPConnection(srv.host, srv.ops_port, timeout=5)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        conn.request("POST", path, body=json.dumps(body) if not isinstance(body, bytes)
                     else body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data
    finally:
        conn.close()


def ops_json(srv, path):
    import json
    status, _, body = srv.ops_get(path)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def test_status_page_and_timeline(server_factory):
    srv = server_factory(shards=2)
    pids = srv.wait_shard_pids()
    all_up(srv, 2)
    s = ops_json(srv, "/api/v2/summary.json")
    ids = [c["id"] for c in s["components"]]
    assert ids[:2] == ["mqtt", "api"] and "shard-0" in ids and "shard-1" in ids, ids
    assert all(c["status"] == "operational" for c in s["components"]), s
    assert s["status"]["indicator"] == "none"
    # The node's start is on the timeline as a deploy (the first start recorded).
    tl = ops_json(srv, "/api/v2/timeline.json")
    kinds = [e["kind"] for e in tl["events"]]
    assert "deploy" in kinds and "start" in kinds, tl
    # A shard killed: its restart is on the timeline, with the reason.
    os.kill(pids[1], signal.SIGKILL)
    ev = wait_for(lambda: [e for e in ops_json(srv, "/api/v2/timeline.json")["events"]
                           if e["kind"] == "restart"], 10, "the restart on the timeline", srv)
    assert ev[0]["component"] == "shard-1", ev
    assert ev[0]["details"]["reason"] == "signal", ev
    assert "signal 9" in ev[0]["text"], ev
    status, headers, body = srv.ops_get("/status")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"<script" not in body
    assert b"shard-1" in body or b"Shard 1" in body


def test_incidents_by_operators(server_factory):
    srv = server_factory(shards=1)
    all_up(srv, 1)
    token = srv.admin_token()
    body = {"name": "Drill <b>", "component": "shard-0", "body": "practising the outage"}
    status, r = ops_post(srv, "/v1/incidents", body)
    assert status == 401, r
    status, r = ops_post(srv, "/v1/incidents", dict(body, component="shard-9"), token)
    assert status == 400, r
    status, r = ops_post(srv, "/v1/incidents", b"{not json", token)
    assert status == 400, r
    status, r = ops_post(srv, "/v1/incidents", body, token)
    assert status == 201, r
    iid = r["id"]
    status, r = ops_post(srv, "/v1/incidents/%s/updates" % iid,
                         {"status": "identified", "body": "found it"}, token)
    assert status == 201, r
    status, r = ops_post(srv, "/v1/incidents/%s/updates" % iid,
                         {"status": "bogus", "body": "x"}, token)
    assert status == 400, r
    status, r = ops_post(srv, "/v1/incidents/999/updates",
                         {"status": "resolved", "body": "x"}, token)
    assert status == 404, r
    inc = ops_json(srv, "/api/v2/incidents.json")["incidents"]
    assert inc[0]["name"] == "Drill <b>" and inc[0]["status"] == "identified", inc
    assert [u["status"] for u in inc[0]["incident_updates"]] == ["identified", "investigating"]
    # Unresolved incidents are on the summary; the HTML escapes the name.
    assert ops_json(srv, "/api/v2/summary.json")["incidents"][0]["id"] == inc[0]["id"]
    status, _, page = srv.ops_get("/status")
    assert b"Drill &lt;b&gt;" in page and b"Drill <b>" not in page
    status, r = ops_post(srv, "/v1/incidents/%s/updates" % iid,
                         {"status": "resolved", "body": "over"}, token)
    assert status == 201, r
    assert ops_json(srv, "/api/v2/summary.json")["incidents"] == []
    # Kept across a restart of the node (monitor.db).
    srv.restart()
    inc = wait_for(lambda: ops_json(srv, "/api/v2/incidents.json")["incidents"]
                   if srv.ops_get("/-/healthy")[0] == 200 else None, 10, "monitor back", srv)
    assert inc[0]["status"] == "resolved", inc


def test_canary_invisible_to_other_clients(server_factory, new_device):
    """Canaries walk a private $cyan/canary/<id> topic: a `#` subscriber of a
    plain broker (isolate_devices = false) never sees them, and no other
    client may publish or subscribe there."""
    from helpers import Client
    srv = server_factory(shards=1)
    key = ("cyan_canary_success_total", 'shard="0",step="publish"')
    wait_metrics(srv, lambda m: m.get(key, 0) >= 1, 15, "the canary walks")
    dev = new_device()
    with Client(srv, dev, version=5) as c:
        c.connect()
        assert c.subscribe("#", 1) == [1]
        assert c.subscribe("$cyan/canary/" + dev.id, 1) != [1]
        m0 = srv.metrics()[key]
        # Two more canary rounds while subscribed, then a barrier of our own.
        wait_metrics(srv, lambda m: m[key] >= m0 + 2, 10, "two canary rounds")
        c.publish("after/canary", b"barrier", qos=1)
        got = []
        for _ in range(100):
            msg = c.get(timeout=5)
            assert msg is not None, got
            got.append(msg.topic)
            if msg.topic == "after/canary":
                break
        assert got[-1] == "after/canary", got
        assert [t for t in got if t != "after/canary"] == [], got
