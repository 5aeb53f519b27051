"""Events through the HTTP API (docs/api.md, "Events"): POST /v1/events to
devices and streams; devices' own events to the server-sent event streams
(GET /v1/events, /v1/events/<prefix>, /v1/devices/<id>/events[/<prefix>]);
the SSE format, heartbeats, and resuming with Last-Event-ID, on one shard and
across four (each reconnection is a new connection, landing on any shard),
with a ': gap' comment when the buffer no longer holds what was missed.

Ordering is asserted per publisher: the events of one device come from its
shard in the order it published them (each publish waits for its PUBACK);
events of different shards have no order among themselves.
"""

import re
import time

import pytest

from apidevice import (ISO_MS_RE, ApiDevice, SseStream, api, create_device, get_device, online_device,
                       parse_time)
from test_shards import shard_of

pytestmark = pytest.mark.cyan_only

EVENT_KEYS = {"name", "data", "published_at", "device_id", "shared"}


def check_event(ev, name, data, device_id, t0=None, t1=None):
    """ev is an SSE event as docs/api.md shows it."""
    assert ev.id, "event without an id: %r" % ev
    assert ev.event == name, ev
    assert isinstance(ev.json, dict), "data is not a JSON object: %r" % ev
    assert set(ev.json) == EVENT_KEYS, ev
    assert ev.json["name"] == name, ev
    assert ev.json["data"] == data, ev
    assert ev.json["device_id"] == device_id, ev
    assert ev.json["shared"] is (device_id is None), ev
    assert ISO_MS_RE.match(ev.json["published_at"] or ""), ev
    if t0 is not None:
        t = parse_time(ev.json["published_at"])
        assert t0 - 1 <= t <= t1 + 1, (ev, t0, t1)


def stream(srv, path, **kw):
    s = SseStream(srv, path, **kw)
    assert s.status == 200, "GET %s -> %d %r" % (path, s.status, s.body)
    assert s.headers.get("content-type", "").startswith("text/event-stream"), s.headers
    return s


# ================================================================== POST /v1/events

def test_post_event_reaches_devices_and_streams(api_server):
    d5 = online_device(api_server, 5, events=True)
    d4 = online_device(api_server, 4, events=True)
    try:
        with stream(api_server, "/v1/events") as s, \
                stream(api_server, "/v1/events/firmware") as sp:
            t0 = time.time()
            r = api(api_server, "POST", "/v1/events",
                    json={"name": "firmware/available", "data": "1.4.2"})
            t1 = time.time()
            assert r.status == 202, r
            assert r.body == {"name": "firmware/available", "published": True}, r
            for dev in (d5, d4):
                assert dev.wait_events(1) == [("events/firmware/available", b"1.4.2")]
            for st in (s, sp):
                ev = st.next(3.0)
                check_event(ev, "firmware/available", "1.4.2", None, t0, t1)
            # No data: an empty payload.
            r = api(api_server, "POST", "/v1/events", json={"name": "ping"})
            assert r.status == 202, r
            for dev in (d5, d4):
                assert dev.wait_events(2)[1] == ("events/ping", b"")
            ev = s.next(3.0)
            assert ev.event == "ping" and ev.json["shared"] is True, ev
            sp.expect_no_event(0.3)
            s.expect_no_event(0.1)
    finally:
        d5.close()
        d4.close()


def test_post_event_bad(api_server):
    cases = [
        ({}, ("bad_json", "bad_request")),
        ({"name": ""}, ("bad_request",)),
        ({"name": "a/+"}, ("bad_request",)),
        ({"name": "a/#"}, ("bad_request",)),
        ({"name": 5}, ("bad_json",)),
        ({"name": "x", "data": 5}, ("bad_json",)),
        ({"name": "x", "data": {"a": 1}}, ("bad_json",)),
        ("[]", ("bad_json",)),
        ("nope", ("bad_json",)),
    ]
    bad = []
    with stream(api_server, "/v1/events") as s:
        for body, error in cases:
            if isinstance(body, str):
                r = api(api_server, "POST", "/v1/events", data=body,
                        headers={"Content-Type": "application/json"})
            else:
                r = api(api_server, "POST", "/v1/events", json=body)
            if not (r.status == 400 and r.error in error):
                bad.append("%r: want 400 %s, got %r" % (body, "/".join(error), r))
        s.expect_no_event(0.3)
    assert not bad, "\n".join(bad)


def test_post_event_data_limit(api_server_factory):
    """data: at most 64 KiB (with a body limit large enough to say so)."""
    srv = api_server_factory(http_max_body=262144)
    with stream(srv, "/v1/events") as s:
        r = api(srv, "POST", "/v1/events", json={"name": "big", "data": "d" * 65536})
        assert r.status == 202, r
        ev = s.next(3.0)
        assert ev.json["data"] == "d" * 65536
        r = api(srv, "POST", "/v1/events", json={"name": "big", "data": "d" * 65537})
        assert r.status == 400 and r.error == "bad_request", r
        s.expect_no_event(0.3)


# ================================================================== streams

def test_device_event_format(api_server):
    dev = online_device(api_server, 5)
    try:
        with stream(api_server, "/v1/events") as s:
            t0 = time.time()
            dev.publish_event("temperature", b"21.5")
            dev.publish_event("door/front/open", b"{\"by\": \"key\"}")
            dev.publish_shared("alarm", b"on")  # events/alarm from a device: shared
            t1 = time.time()
            evs = s.take(3, 3.0)
            check_event(evs[0], "temperature", "21.5", dev.id, t0, t1)
            check_event(evs[1], "door/front/open", "{\"by\": \"key\"}", dev.id, t0, t1)
            check_event(evs[2], "alarm", "on", None, t0, t1)
            ids = [e.id for e in evs]
            assert len(set(ids)) == 3, ids
            s.expect_no_event(0.3)
        # The text: "id:", "event:", "data:" lines, a blank line after each.
        text = bytes(s.text)
        assert re.search(rb"(^|\n)id: [^\r\n]+\r?\nevent: temperature\r?\ndata: \{[^\r\n]*\}"
                         rb"\r?\n\r?\n", text), text[:2000]
    finally:
        dev.close()


def test_stream_filters(api_server):
    a = online_device(api_server, 5)
    b = online_device(api_server, 4)
    A = a.id
    paths = {
        "all": "/v1/events",
        "alarm": "/v1/events/alarm",
        "door": "/v1/events/alarm/door",
        "a": "/v1/devices/%s/events" % A,
        "a_alarm": "/v1/devices/%s/events/alarm" % A,
    }
    streams = {}
    try:
        for k, p in paths.items():
            streams[k] = stream(api_server, p)
        a.publish_event("alarm/door", b"1")
        a.publish_event("status", b"2")
        b.publish_event("alarm/window", b"3")
        r = api(api_server, "POST", "/v1/events", json={"name": "alarm/fire", "data": "4"})
        assert r.status == 202, r
        b.publish_event("status", b"5")
        a.publish_shared("alarm/x", b"6")
        want = {
            "all": {"1", "2", "3", "4", "5", "6"},
            "alarm": {"1", "3", "4", "6"},
            "door": {"1"},
            "a": {"1", "2"},
            "a_alarm": {"1"},
        }
        for k, s in streams.items():
            evs = s.take(len(want[k]), 3.0)
            got = [e.json["data"] for e in evs]
            assert set(got) == want[k] and len(got) == len(want[k]), (k, paths[k], evs)
            s.expect_no_event(0.3 if k == "all" else 0.05)
            for e in evs:
                src = {"1": A, "2": A, "3": b.id, "4": None, "5": b.id, "6": None}[e.json["data"]]
                assert e.json["device_id"] == src, (k, e)
        # One publisher's events keep their order.
        all_a = [e.json["data"] for e in streams["all"].events() if e.json["device_id"] == A]
        assert all_a == ["1", "2"], all_a
    finally:
        for s in streams.values():
            s.close()
        a.close()
        b.close()


def test_stream_auth_and_unknown_device(api_server):
    s = SseStream(api_server, "/v1/events", token=None)
    assert s.status == 401, (s.status, s.body)
    assert s.headers.get("www-authenticate", "").startswith("Bearer"), s.headers
    assert s.json and s.json.get("error") == "unauthorized", s.body
    s = SseStream(api_server, "/v1/devices/0123456789abcdef01234567/events")
    assert s.status == 404, (s.status, s.body)
    assert s.json and s.json.get("error") == "device_not_found", s.body


def test_heartbeat(api_server_factory):
    srv = api_server_factory(sse_heartbeat=1)
    with stream(srv, "/v1/events") as s:
        t0 = time.monotonic()
        beats = []
        deadline = t0 + 4.0
        while len(beats) < 2 and time.monotonic() < deadline:
            got = s.next_item(deadline - time.monotonic())
            if got is None or got[0] == "eof":
                break
            if got == ("comment", "heartbeat"):
                beats.append(time.monotonic())
        assert len(beats) == 2, "heartbeats in 4 s with sse_heartbeat=1: %d; items %r" % (
            len(beats), s.items)
        assert beats[0] - t0 <= 2.5, "first heartbeat after %.2fs" % (beats[0] - t0)
        assert 0.4 <= beats[1] - beats[0] <= 2.5, "heartbeats %.2fs apart" % (beats[1] - beats[0])
        assert s.events() == []
    assert re.search(rb"(^|\n): heartbeat\r?\n", bytes(s.text)), bytes(s.text)[:500]


# ================================================================== resuming

def matches(kind, dev_id, ev):
    if kind == "all":
        return True
    if kind == "prefix":
        return ev["name"].startswith("r")
    return ev["device_id"] == dev_id


@pytest.mark.parametrize("kind", ["all", "prefix", "device"])
def test_resume_with_last_event_id(api_server, kind):
    dev = online_device(api_server, 5)
    path = {"all": "/v1/events", "prefix": "/v1/events/r",
            "device": "/v1/devices/%s/events" % dev.id}[kind]
    published = []
    seq = [0]

    def publish(n):
        """n events of the device, alternating names r/<i> and x/<i>, and a
        shared one every third."""
        for _ in range(n):
            i = seq[0]
            seq[0] += 1
            if i % 3 == 2:
                dev.publish_shared("r/s%d" % i, b"%d" % i)
                published.append({"name": "r/s%d" % i, "data": str(i), "device_id": None})
            else:
                name = ("r/%d" if i % 2 == 0 else "x/%d") % i
                dev.publish_event(name, b"%d" % i)
                published.append({"name": name, "data": str(i), "device_id": dev.id})

    def expected(lo, hi):
        return [p["data"] for p in published[lo:hi] if matches(kind, dev.id, p)]

    try:
        s = stream(api_server, path)
        publish(6)
        want = expected(0, 6)
        evs = s.take(len(want), 3.0)
        assert [e.json["data"] for e in evs] == want, evs
        last = evs[-1].id
        s.close()

        publish(9)   # missed while away
        s = stream(api_server, path, last_event_id=last)
        want = expected(6, 15)
        evs = s.take(len(want), 3.0)
        assert [e.json["data"] for e in evs] == want, evs
        publish(3)   # live, after the replay
        want = expected(15, 18)
        evs2 = s.take(len(want), 3.0)
        assert [e.json["data"] for e in evs2] == want, evs2
        s.expect_no_event(0.4)
        assert not [c for c in s.comments if c.startswith("gap")], s.comments
        last = (evs + evs2)[-1].id
        s.close()

        # The query form, ?last_event_id=
        publish(4)
        sep = "&" if "?" in path else "?"
        s = stream(api_server, path + sep + "last_event_id=" + last)
        want = expected(18, 22)
        evs = s.take(len(want), 3.0)
        assert [e.json["data"] for e in evs] == want, evs
        s.expect_no_event(0.3)
        s.close()
    finally:
        dev.close()


def test_resume_across_shards(api_server_factory):
    """Four shards, one publishing device on each; a client reconnects again
    and again (each time a new connection, on whichever shard takes it), with
    the last id it got; events are published while it is away and while it
    reads. Every event arrives exactly once, each device's in order."""
    nsh = 4
    srv = api_server_factory(shards=nsh)
    infos = {}
    for _ in range(80):
        info = create_device(srv)
        sh = shard_of(info["id"], nsh)
        if sh not in infos:
            infos[sh] = info
        if len(infos) == nsh:
            break
    assert len(infos) == nsh, "no device on every shard after 80 creations"
    devs = []
    try:
        for sh, info in sorted(infos.items()):
            assert get_device(srv, info["id"])["shard"] == sh
            d = ApiDevice(srv, info, version=5 if sh % 2 else 4)
            d.start()
            devs.append(d)
        sent = {d.id: 0 for d in devs}
        got = {d.id: [] for d in devs}

        def publish_round(k):
            for _ in range(k):
                for d in devs:
                    d.publish_event("seq", b"%d" % sent[d.id])
                    sent[d.id] += 1

        def read(s, n):
            for e in s.take(n, 5.0):
                got[e.json["device_id"]].append(int(e.json["data"]))
            return e.id

        served_by = []  # what the streams' greetings say, if they do (informative)
        s = stream(srv, "/v1/events")
        publish_round(2)
        last = read(s, 2 * nsh)
        s.close()
        for rnd in range(8):
            publish_round(2)                       # missed
            s = stream(srv, "/v1/events", last_event_id=last)
            publish_round(1)                       # live, perhaps during the replay
            last = read(s, 3 * nsh)
            if rnd % 3 == 2:
                s.expect_no_event(0.2)
            assert not [c for c in s.comments if c.startswith("gap")], s.comments
            served_by.extend(m.group(1) for c in s.comments
                             for m in [re.search(r"shard (\d+)", c)] if m)
            s.close()
        s = stream(srv, "/v1/events", last_event_id=last)
        s.expect_no_event(0.5)
        s.close()
        print("resumed streams served by shards %s" % (",".join(served_by) or "?"))
        for d in devs:
            assert got[d.id] == list(range(sent[d.id])), \
                "device %s (shard %d): got %r" % (d.id, shard_of(d.id, nsh), got[d.id])
    finally:
        for d in devs:
            d.close()


def test_resume_gap(api_server_factory):
    """event_buffer=5: missing 10 events gives ': gap' (naming the shard whose
    events were lost) first, then the 5 still buffered; missing 3 gives them
    all, no gap."""
    srv = api_server_factory(event_buffer=5)
    dev = online_device(srv, 5)
    try:
        shard = get_device(srv, dev.id)["shard"]
        witness = stream(srv, "/v1/events")
        s = stream(srv, "/v1/events")
        dev.publish_event("g", b"0")
        last = s.next(3.0).id
        assert witness.next(3.0).json["data"] == "0"
        s.close()
        for i in range(1, 4):
            dev.publish_event("g", b"%d" % i)
        assert [e.json["data"] for e in witness.take(3, 3.0)] == ["1", "2", "3"]
        s = stream(srv, "/v1/events", last_event_id=last)
        assert [e.json["data"] for e in s.take(3, 3.0)] == ["1", "2", "3"]
        s.expect_no_event(0.2)
        assert not [c for c in s.comments if c.startswith("gap")], s.comments
        last = s.events()[-1].id
        s.close()

        for i in range(4, 14):
            dev.publish_event("g", b"%d" % i)
        assert [e.json["data"] for e in witness.take(10, 3.0)] == [str(i) for i in range(4, 14)]
        time.sleep(0.2)  # every shard's buffer has them
        s = stream(srv, "/v1/events", last_event_id=last)
        # ': gap' before any event (other comments, such as a greeting, may
        # come first).
        gap = None
        for _ in range(20):
            item = s.next_item(3.0)
            assert item is not None and item[0] == "comment", \
                "expected ': gap' before any event, got %r (items %r)" % (item, s.items)
            if item[1].startswith("gap"):
                gap = item[1]
                break
        assert gap is not None, s.items
        assert str(shard) in gap, "the gap comment does not name shard %d: %r" % (shard, gap)
        evs = s.take(5, 3.0)
        assert [e.json["data"] for e in evs] == [str(i) for i in range(9, 14)], evs
        s.expect_no_event(0.3)
        s.close()
        witness.close()
    finally:
        dev.close()


def test_slow_reader_disconnected_and_resumes(api_server):
    """A client that stops reading is disconnected once over 1 MiB is unread
    (not kept forever, not blocking anyone), and resumes with its last id:
    nothing lost, nothing twice."""
    dev = online_device(api_server, 5)
    other = None
    try:
        slow = stream(api_server, "/v1/events", paused=True, rcvbuf=4096)
        other = stream(api_server, "/v1/events")
        # More than the server's backlog (1 MiB) plus what the kernel may
        # buffer on its side of the socket (tcp_wmem max) plus a margin.
        try:
            with open("/proc/sys/net/ipv4/tcp_wmem") as f:
                wmem = int(f.read().split()[2])
        except (OSError, ValueError, IndexError):
            wmem = 4 << 20
        size = 50000
        n = min(400, (wmem + (3 << 20)) // size + 1)
        # Paced to the reader that keeps up (its own thread shares this
        # process with the publisher: unpaced, a loaded machine let it fall
        # a megabyte behind, and the server rightly cut it too), so only the
        # paused one goes over the backlog.
        taken = 0
        for i in range(n):
            dev.publish_event("big", (b"%04d" % i) + b"x" * (size - 4))
            if (i + 1) % 8 == 0:
                taken += len(other.take(8, 10.0))
        taken += len(other.take(n - taken, 10.0))
        assert taken == n  # a reader that keeps up gets everything
        slow.resume()
        assert slow.wait_eof(10.0), "a client with %.1f MB unread still connected" % (
            n * size / 1e6)
        got = [e.json["data"][:4] for e in slow.events()]
        assert len(got) < n, "the slow client got everything: no disconnect?"
        assert got == ["%04d" % i for i in range(len(got))], got
        slow.close()
        n_slow = len(got)
        last = slow.events()[-1].id if got else None
        if last is None:
            pytest.skip("the slow client got no whole event before its disconnect")
        # Resume, reading at full speed: the replay of what it missed (about
        # 6 MB) and then the live stream, on one connection. (Should the server
        # cut it, resume again, to tell what else holds: no loss, no duplicate.)
        rounds = 0
        cuts = []
        for rounds in range(1, 21):
            s = stream(api_server, "/v1/events", last_event_id=last)
            try:
                for _ in range(10 * n):
                    if len(got) == n:
                        break
                    item = s.next_item(5.0)
                    if item is None or item[0] == "eof":
                        cuts.append((rounds, len(got), item))
                        break
                    if item[0] == "event":
                        got.append(item[1].json["data"][:4])
                        last = item[1].id
                assert not [c for c in s.comments if c.startswith("gap")], s.comments
                if len(got) == n:
                    s.expect_no_event(0.3)
            finally:
                s.close()
            assert got == ["%04d" % i for i in range(len(got))], got
            if len(got) == n:
                break
        print("slow client: %d of %d events after %d resumptions" % (len(got), n, rounds))
        assert len(got) == n, "after 20 resumptions, %d of %d events" % (len(got), n)
        assert rounds == 1, ("a client resuming after a disconnect, reading at full speed, "
                             "had its stream ended %d times (after event counts %r): the "
                             "replay of %d missed events of %d bytes is cut"
                             % (len(cuts), [c[1] for c in cuts], n - n_slow, size))
    finally:
        if other is not None:
            other.close()
        dev.close()
