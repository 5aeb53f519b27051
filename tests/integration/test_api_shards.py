"""The HTTP API when a shard fails (docs/api.md: "A shard that is down or hung
costs only requests about its own devices, and those get 503 at once or
within their deadline, never a hang").

cyan runs 4 shards; a device belongs to shard FNV-1a-64(device id) % 4 (the
API says so in its "shard" field). One device per shard, each an ApiDevice
that reconnects by itself. A shard is stopped with the drill `cyan shard stop
N` (SIGSTOP), then either continued (`cyan shard cont N`, with a watchdog too
slow to act meanwhile) or left to the watchdog, which replaces it. Every HTTP
request is a new curl connection, so requests land on every shard, the
stopped one excepted (it accepts nothing).
"""

import re
import time

import pytest

from apidevice import (ApiDevice, SseStream, api, call, create_device, read_var,
                       wait_device)
from helpers import CYAN
from test_shards import shard_of, status, wait_all_running

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's shards"),
]

NSHARDS = 4
PRESENCE = ("online", "protocol", "connected_since", "last_heard", "last_round_trip")


def one_device_per_shard(srv):
    """{shard: creation answer}, one device per shard (created via the API)."""
    out = {}
    for _ in range(100):
        info = create_device(srv)
        sh = shard_of(info["id"], NSHARDS)
        out.setdefault(sh, info)
        if len(out) == NSHARDS:
            return out
    raise AssertionError("no device on every shard after 100 creations: %r" % sorted(out))


def start_fleet(srv):
    infos = one_device_per_shard(srv)
    devs = {}
    for sh, info in sorted(infos.items()):
        d = ApiDevice(srv, info, version=5 if sh % 2 else 4, events=True,
                      functions={"ping": lambda arg, sh=sh: "pong%d" % sh},
                      variables={"shard": lambda sh=sh: sh})
        d.start()
        devs[sh] = d
    for sh, d in devs.items():
        g = wait_device(srv, d.id, lambda g: g["online"] is True and g["functions"] == ["ping"],
                        what="online and described")
        assert g["shard"] == sh, g
    return devs


def assert_503(r, limit=3.0):
    assert r.status == 503 and r.error == "shard_unavailable", r
    ra = r.headers.get("retry-after")
    assert ra is not None and re.fullmatch(r"\d+", ra), "Retry-After %r: %r" % (ra, r)
    assert r.elapsed < limit, "503 after %.2fs (deadline 5 s; want < %.1fs)" % (r.elapsed, limit)


def health(srv):
    return api(srv, "GET", "/v1/health", token=None, timeout=5)


def test_stopped_shard_costs_only_its_devices(api_server_factory):
    srv = api_server_factory(shards=NSHARDS, watchdog_timeout=30000)
    wait_all_running(srv)
    devs = start_fleet(srv)
    victim = 2
    others = [sh for sh in devs if sh != victim]
    try:
        for sh, d in devs.items():
            r = call(srv, d.id, "ping", timeout=5)
            assert r.status == 200 and r.body["return_value"] == "pong%d" % sh, r

        t_stop = time.monotonic()
        srv.cli("shard", "stop", str(victim))
        try:
            # Calls to the stopped shard's device: 503 within the deadline,
            # again and again (the first may wait for the shard to not answer).
            for i in range(3):
                r = call(srv, devs[victim].id, "ping", timeout=5, http_timeout=10)
                assert_503(r)
                print("call %d to the stopped shard: 503 in %.3fs" % (i, r.elapsed))
            r = read_var(srv, devs[victim].id, "shard", timeout=5)
            assert_503(r)
            # Everybody else: business as usual.
            for _ in range(3):
                for sh in others:
                    r = call(srv, devs[sh].id, "ping", timeout=5)
                    assert r.status == 200 and r.body["return_value"] == "pong%d" % sh, r
                    assert r.elapsed < 1.5, r
                    r = read_var(srv, devs[sh].id, "shard", timeout=5)
                    assert r.status == 200 and r.body["value"] == sh, r
            # The device list: answered, with the stopped shard's presence unknown.
            r = api(srv, "GET", "/v1/devices", timeout=10)
            assert r.status == 200, r
            assert r.elapsed < 3.0, r
            by_id = {d["id"]: d for d in r.body}
            for sh, d in devs.items():
                g = by_id[d.id]
                assert g["shard"] == sh, g
                if sh == victim:
                    assert g["shard_healthy"] is False, g
                    assert all(g[k] is None for k in PRESENCE), g
                else:
                    assert g["shard_healthy"] is True and g["online"] is True, g
                    assert g["protocol"] == ("mqtt5" if sh % 2 else "mqtt3.1.1"), g
                    assert g["connected_since"] and g["last_heard"] and g["last_round_trip"], g
            r = api(srv, "GET", "/v1/devices/%s" % devs[victim].id, timeout=10)
            assert r.status == 200 and r.elapsed < 3.0, r
            assert r.body["shard_healthy"] is False, r
            assert all(r.body[k] is None for k in PRESENCE), r
            # Health says which shard is not.
            last = None
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                last = health(srv)
                if last.status == 503:
                    break
                time.sleep(0.1)
            assert last.status == 503 and last.body["status"] == "degraded", last
            hs = {s["shard"]: s for s in last.body["shards"]}
            assert hs[victim]["healthy"] is False, last
            assert all(hs[sh]["healthy"] is True for sh in others), last
            # Events still flow between the others, and to streams.
            with SseStream(srv, "/v1/events", timeout=5) as s:
                assert s.status == 200, (s.status, s.body)
                r = api(srv, "POST", "/v1/events", json={"name": "during", "data": "x"},
                        timeout=10)
                assert r.status == 202 and r.elapsed < 1.5, r
                for sh in others:
                    assert ("events/during", b"x") in devs[sh].wait_events(1, 3.0)
                devs[others[0]].publish_event("alive", b"1")
                names = {e.event for e in s.take(2, 3.0)}
                assert names == {"during", "alive"}, s.items
            elapsed = time.monotonic() - t_stop
            print("checks while stopped took %.2fs" % elapsed)
            assert elapsed < 25, "too slow: the watchdog (30 s) may have acted"
        finally:
            srv.cli("shard", "cont", str(victim))
        t_cont = time.monotonic()

        # Back: the device answers again within a bounded wait.
        last = None
        for _ in range(100):
            last = call(srv, devs[victim].id, "ping", timeout=2, http_timeout=8)
            assert last.elapsed < 4.0, last
            if last.status == 200:
                break
            assert last.status in (503, 409), last
            assert time.monotonic() - t_cont < 10, "not back 10 s after SIGCONT: %r" % last
            time.sleep(0.1)
        assert last.status == 200 and last.body["return_value"] == "pong%d" % victim, last
        print("calls answered again %.2fs after SIGCONT" % (time.monotonic() - t_cont))
        g = wait_device(srv, devs[victim].id,
                        lambda g: g["shard_healthy"] is True and g["online"] is True,
                        timeout=5, what="healthy and online")
        assert g["protocol"] == "mqtt3.1.1", g
        assert health(srv).status == 200
        st = status(srv)
        assert all(row.state == "RUNNING" for row in st.rows.values()), st
        for sh in others:
            assert devs[sh].disconnects == 0, "device on shard %d lost its connection" % sh
    finally:
        for d in devs.values():
            d.close()


def test_replaced_shard_serves_its_devices_again(api_server_factory):
    """Left stopped, the shard is replaced by the watchdog; its device
    reconnects, and calls to it succeed again. Meanwhile each call is
    answered (503 while down, perhaps 409 before the device is back), never
    hangs, and the other shards' devices answer throughout."""
    srv = api_server_factory(shards=NSHARDS, watchdog_timeout=1000)
    st0 = wait_all_running(srv)
    devs = start_fleet(srv)
    victim = 1
    other = 3
    before = devs[victim].connects
    t_stop = time.monotonic()
    srv.cli("shard", "stop", str(victim))
    r = call(srv, devs[victim].id, "ping", timeout=5, http_timeout=10)
    assert_503(r)
    seen = []  # (time since the stop, which, status, error, elapsed)
    last = None

    def trace(which, r):
        seen.append("%.2fs %s %s %s %.2fs" % (time.monotonic() - t_stop, which, r.status,
                                              r.error or "", r.elapsed))
        return "\n".join(seen)
    try:
        for _ in range(200):
            last = call(srv, devs[victim].id, "ping", timeout=2, http_timeout=8)
            tr = trace("victim", last)
            assert last.elapsed < 3.0, "%r\ntrace:\n%s" % (last, tr)
            if last.status == 200:
                break
            # 503 while the shard is away; 409 until the device reconnected;
            # 504 for a call that reached its new session before the device
            # subscribed again (a call to a clean session is not kept).
            assert (last.status, last.error) in ((503, "shard_unavailable"),
                                                 (409, "device_offline"),
                                                 (504, "device_timeout")), \
                "%r\ntrace:\n%s\ndevice calls %r" % (last, tr, devs[victim].calls)
            r = call(srv, devs[other].id, "ping", timeout=5)
            tr = trace("other", r)
            assert r.status == 200 and r.elapsed < 1.5, "%r\ntrace:\n%s" % (r, tr)
            assert time.monotonic() - t_stop < 15, "not back within 15 s: %r" % last
            time.sleep(0.1)
        assert last.status == 200 and last.body["return_value"] == "pong%d" % victim, last
        print("victim answered again %.2fs after SIGSTOP; trace:\n%s"
              % (time.monotonic() - t_stop, "\n".join(seen)))
        for _ in range(3):  # and from now on, every time
            r = call(srv, devs[victim].id, "ping", timeout=2, http_timeout=8)
            assert r.status == 200 and r.body["return_value"] == "pong%d" % victim, r
        assert devs[victim].connects > before, "the device never reconnected?"
        st = status(srv)
        assert st[victim].pid != st0[victim].pid, st
        g = wait_device(srv, devs[victim].id,
                        lambda g: g["shard_healthy"] is True and g["online"] is True,
                        timeout=5, what="healthy and online")
        assert g["protocol"] == "mqtt5", g
        assert g["last_round_trip"] is not None, g
        for sh, d in devs.items():
            if sh != victim:
                assert d.disconnects == 0, "device on shard %d lost its connection" % sh
        deadline = time.monotonic() + 5
        while health(srv).status != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health(srv).status == 200
    finally:
        for d in devs.values():
            d.close()
