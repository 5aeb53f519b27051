"""What a second attack pass on issue 15's surfaces found, each a case that
failed before its fix: Particle's paths, the CLI client and config --check,
presence (status events across reloads, the flush interval), webhooks'
response topics (no forged status events or calls), paths that are not
UTF-8.

Each test names the defect it pins in its docstring. Fast: one server per
test at most, every wait bounded by an event that must come.
"""

import json
import os
import signal
import sqlite3
import threading
import time

import pytest

from apidevice import SseStream, api, online_device, wait_device
from conftest import SHARDS
from helpers import wait_until
from test_cli_client import answer, cyan, fake, running  # noqa: F401 (fixtures)
from whsink import Answer, Sink

pytestmark = pytest.mark.cyan_only


def echo_device(srv):
    return online_device(srv, 5, {"echo": lambda arg: arg}, {})


def pcall(srv, ref, function, **kw):
    return api(srv, "POST", "/v1/devices/%s/%s" % (ref, function), timeout=20, **kw)


def test_particle_call_takes_args_and_params(api_server):
    """particle-api-js (and so particle-cli) sends a call's argument as
    {"args": ...}, Spark-era scripts as params=...: both were ignored, the
    function called with an empty argument and a 200."""
    dev = echo_device(api_server)
    try:
        cases = [
            (dict(json={"args": "coffee"}), "coffee"),
            (dict(data="args=tea"), "tea"),
            (dict(data="params=D7%2CHIGH"), "D7,HIGH"),
            (dict(json={"params": "x", "timeout": 5}), "x"),
            (dict(json={"args": None}), ""),
        ]
        for kw, want in cases:
            r = pcall(api_server, dev.id, "echo", **kw)
            assert r.status == 200 and r.body["return_value"] == want, (kw, r)
            assert dev.calls[-1].arg == want, (kw, dev.calls[-1])
        n = len(dev.calls)
        # Two names for the argument: which one was meant? Refused.
        for kw, code in ((dict(data="arg=a&args=b"), "bad_request"),
                         (dict(json={"args": "a", "params": "b"}), "bad_json"),
                         (dict(json={"args": 5}), "bad_json")):
            r = pcall(api_server, dev.id, "echo", **kw)
            assert r.status == 400 and r.error == code, (kw, r)
        assert "args" in r.body["message"], r
        r = pcall(api_server, dev.id, "echo", data="arg=last")
        assert r.status == 200, r
        dev.wait_calls(n + 1)
        assert [c.arg for c in dev.calls[n:]] == ["last"], dev.calls[n:]
    finally:
        dev.close()


def conf_server(api_server_factory, text):
    """An API server that reads presence_event_rate from a file (-c), so a
    SIGHUP changes it (conftest's --presence_event_rate=0 taken out: a flag
    would win over the file)."""
    def prepare(srv):
        srv.conf = os.path.join(srv.workdir, "cyan.conf")
        with open(srv.conf, "w") as f:
            f.write(text)
        base = type(srv).argv
        srv.argv = lambda: [a for a in base(srv) if not a.startswith("--presence_event_rate=")] + \
            ["-c", srv.conf]
    return api_server_factory(_prepare=prepare)


def reload(srv, text, what):
    with open(srv.conf, "w") as f:
        f.write(text)
    mark = len(srv.log())
    os.kill(srv.proc.pid, signal.SIGHUP)
    n = int(srv.settings.get("shards", SHARDS))
    assert wait_until(lambda: all("shard %d: reload applied: %s" % (i, what) in srv.log()[mark:]
                                  for i in range(n)), 5.0), srv.log_tail()


def status_of(s, dev_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        ev = s.next(max(0.0, deadline - time.monotonic()))
        if ev.json["device_id"] == dev_id:
            return json.loads(ev.payload)


def test_status_events_turned_back_on_tell_what_changed_while_off(api_server_factory):
    """presence_event_rate 500 -> 0 -> 500 by SIGHUP: a device that went
    offline while events were off was never told, so its last status event
    said online for good (and one that came online then, never online)."""
    srv = conf_server(api_server_factory, "presence_event_rate = 500\n")
    s = SseStream(srv, "/v1/events/cyan/status")
    assert s.status == 200, s.body
    a = echo_device(srv)
    assert status_of(s, a.id)["status"] == "online"
    reload(srv, "presence_event_rate = 0\n", "presence_event_rate 500 -> 0")
    a.close()
    wait_device(srv, a.id, lambda d: d["online"] is False)
    b = echo_device(srv)  # online while events are off: never announced
    reload(srv, "presence_event_rate = 500\n", "presence_event_rate 0 -> 500")
    got = {}
    for _ in range(2):
        ev = s.next(5.0)
        got[ev.json["device_id"]] = json.loads(ev.payload)
    assert got[a.id]["status"] == "offline" and got[a.id]["reason"] == "disconnect", got
    assert got[b.id]["status"] == "online" and got[b.id]["reason"] == "connect", got
    b.close()
    assert status_of(s, b.id)["status"] == "offline"  # and on as before
    s.close()


def test_subscribe_cleans_c1_and_ids_and_reads_no_date_as_seconds(fake, running):
    """Against a fake stream: C1 control characters (U+009B is CSI) in an
    event's name and data reached the terminal as they came; the id, the
    server's text, was echoed raw on stderr at the reconnect; and a proxy's
    503 with Retry-After as an HTTP date was read as its digits run
    together, 3600 s (the cap) of waiting instead of the backoff."""
    head = ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            "Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
    hold = threading.Event()
    event = ('event: x\ndata: {"name":"n\u009b2J","data":"d\u009b31m\u0085",'
             '"published_at":"2026-12-04T10:00:00.000Z","device_id":null}\n\n')

    def handler(conn, req, n):
        if n == 0:
            conn.sendall((head + "id: 7\x1b]0;title\x07\n" + event).encode())
            time.sleep(0.2)
            return  # dropped
        if n == 1:
            answer(conn, "503 Service Unavailable", '{"error":"busy","message":"later"}',
                   extra="Retry-After: Wed, 21 Oct 2026 07:28:00 GMT\r\n")
            return
        conn.sendall((head + event).encode())
        hold.wait(20)
    f = fake(handler)
    sub = running("subscribe", "--url", f.url, "--token", "t0k")
    try:
        sub.wait_err(lambda l: "HTTP 503 busy" in l)
        sub.wait_err(lambda l: "retrying in" in l)
        assert "retrying in 1.0 s" in sub.err_lines[-1], sub.err_lines
        sub.wait_err(lambda l: "resuming after event" in l)
        out = [sub.wait_out(lambda l: True)]
        out.append(sub.next_out())
        assert sub.stop() == 0
    finally:
        hold.set()
    for line in out + sub.err_lines:
        assert not any(c < " " or "\x7f" <= c <= "\x9f" for c in line), (line, out,
                                                                         sub.err_lines)
    assert out[0] == '2026-12-04T10:00:00.000Z  -  n?2J  "d\\u009B31m\\u0085"', out
    assert "resuming after event 7?]0;title?" in "\n".join(sub.err_lines), sub.err_lines


def test_config_check_of_a_folder_and_a_bom(tmp_path):
    """`cyan config --check DIR` said "Input/output error"; a file saved
    with a UTF-8 byte order mark was "unknown setting 'shards'" (the mark
    invisible in the name), for `cyan serve -c` too."""
    cp = cyan("config", "--check", str(tmp_path))
    assert cp.returncode == 1 and "Is a directory" in cp.stderr, cp.stderr
    conf = tmp_path / "bom.conf"
    conf.write_bytes(b"\xef\xbb\xbfshards = 2\nlog_level = loud\n")
    cp = cyan("config", "--check", str(conf))
    assert cp.returncode == 1, cp.stderr
    assert cp.stderr.strip() == "cyan: %s:2: log_level: expected debug, info, warn or error, " \
        "got 'loud'" % conf, cp.stderr


def test_cli_takes_negative_numbers_and_words_after_dashdash(api_server):
    """`cyan call DEV setTemp -5` and `cyan publish temp -3.5` were
    "unknown option '-5'"; and a "-c" after "--" (a word) was still taken
    as the configuration's option ("-c needs a file")."""
    dev = echo_device(api_server)
    try:
        target = ["--url", api_server.api_url, "--token", api_server.admin_token()]
        for arg in ("-5", "-0.5", "-.5"):
            cp = cyan("call", dev.id, "echo", arg, *target)
            assert cp.returncode == 0, cp.stderr
            assert dev.calls[-1].arg == arg, (arg, dev.calls[-1])
        cp = cyan("call", dev.id, "echo", *target, "--", "-c")
        assert cp.returncode == 0 and cp.stdout == "-c\n", (cp.stdout, cp.stderr)
        assert dev.calls[-1].arg == "-c"
        # Not a number: still an unknown option, saying how to pass it.
        cp = cyan("call", dev.id, "echo", "-x", *target)
        assert cp.returncode == 2 and "unknown option '-x'" in cp.stderr, cp.stderr
        assert "goes after --" in cp.stderr and len(cp.stderr.splitlines()) == 1, cp.stderr
    finally:
        dev.close()


def test_call_prints_a_devices_control_characters_as_json(api_server):
    """A device's return value reached the terminal raw through `cyan call`
    and `cyan get`: ESC, BEL and C1 (U+009B is CSI) set the title or cleared
    the screen. A value holding them is printed as a JSON string in ASCII;
    a plain one is printed as it is."""
    dev = echo_device(api_server)
    try:
        target = ["--url", api_server.api_url, "--token", api_server.admin_token()]
        nasty = "\x1b]0;PWNED\x07\x1b[2J\u009b1mX"
        cp = cyan("call", dev.id, "echo", nasty, *target)
        assert cp.returncode == 0, cp.stderr
        assert dev.calls[-1].arg == nasty
        out = cp.stdout.encode()
        assert b"\x1b" not in out and b"\x07" not in out and b"\xc2\x9b" not in out, out
        assert json.loads(cp.stdout) == nasty, cp.stdout
        cp = cyan("call", dev.id, "echo", "plain words", *target)
        assert cp.returncode == 0 and cp.stdout == "plain words\n", cp.stdout
    finally:
        dev.close()


def test_webhook_answers_cannot_forge_status_events_nor_calls(api_server_factory):
    """A webhook's response_topic is a template: devices/{{device_id}}/events/
    cyan/status put the receiver's answer (a third party's text) on the
    stream as a status event of any device that triggered it, and
    devices/<another>/call/... made it a function call to another device
    (the webhooks:manage scope calling devices without devices:call); with
    {{data}} in it, the device chose. cyan/... events are cyan's word alone,
    and only the API calls devices."""
    srv = api_server_factory(webhook_allow_private=True)
    with Sink() as sink:
        sink.answer(Answer(200, body='{"status":"offline","reason":"forged"}'))
        victim = echo_device(srv)
        dev = echo_device(srv)
        s = None
        try:
            r = api(srv, "POST", "/v1/webhooks",
                    json={"event": "ping", "url": sink.url, "ordered": True,
                          "response_topic": "{{data}}"})
            assert r.status == 201, r
            s = SseStream(srv, "/v1/events")
            assert s.status == 200, s.body
            for data in (b"events/cyan/status", b"devices/%s/events/cyan/status" % dev.id.encode(),
                         b"devices/%s/call/echo/0123456789abcdef" % victim.id.encode(),
                         b"devices/%s/x" % victim.id.encode(), b"events/ok"):
                dev.publish_event("ping", data)  # the device's choice of topic
            names = []
            deadline = time.monotonic() + 10
            while "ok" not in names:
                names.append(s.next(max(0.0, deadline - time.monotonic())).name)
            assert not [n for n in names if n.startswith("cyan/")], names
            assert names.count("ping") == 5, names
            # A call through the API after them: the victim's first call.
            r = api(srv, "POST", "/v1/devices/%s/functions/echo" % victim.id,
                    json={"arg": "barrier"}, timeout=15)
            assert r.status == 200, r
            assert [c.arg for c in victim.calls] == ["barrier"], victim.calls
            # Such topics are refused when the webhook is made, too.
            for topic in ("devices/{{device_id}}/events/cyan/status",
                          "devices/%s/call/echo/0123456789abcdef" % victim.id,
                          "devices/{{device_id}}/call/echo/0123456789abcdef",
                          "devices/{{device_id}}/describe",
                          "devices/{{data}}/x"):
                r = api(srv, "POST", "/v1/webhooks",
                        json={"event": "ping", "url": sink.url, "response_topic": topic})
                assert r.status == 400 and r.error == "bad_request", (topic, r)
        finally:
            dev.close()
            victim.close()
            if s:
                s.close()


def rtt_in_file(srv, shard, dev_id):
    """last_rtt of dev_id's presence row in shard's file (None: no row)."""
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(srv.data_dir, "shard-%d.db" % shard),
                         uri=True, timeout=2)
    try:
        row = db.execute("SELECT last_rtt FROM presence WHERE id = ?", (dev_id,)).fetchone()
        return row[0] if row else None
    finally:
        db.close()


def test_a_shorter_flush_interval_applies_at_once(api_server_factory):
    """presence_flush_interval 3600 -> 1 by SIGHUP: the next write of moved
    presence times still waited for the hour the old interval had set, so
    a crash in that hour lost them (a last_round_trip came back null)."""
    srv = conf_server(api_server_factory,
                      "presence_event_rate = 500\npresence_flush_interval = 3600\n")
    reload(srv, "presence_event_rate = 500\npresence_flush_interval = 1\n",
           "presence_flush_interval 3600 -> 1")
    dev = online_device(srv, 5, {"echo": lambda arg: arg}, {}, reconnect=False)
    try:
        shard = wait_device(srv, dev.id, lambda d: True)["shard"]
        # Its online event logged, with its row: the round trip comes after.
        assert wait_until(lambda: rtt_in_file(srv, shard, dev.id) == 0, timeout=5)
        r = api(srv, "POST", "/v1/devices/%s/functions/echo" % dev.id, json={"arg": "a"},
                timeout=15)
        assert r.status == 200, r
        d1 = wait_device(srv, dev.id, lambda d: d["last_round_trip"] is not None)
        assert wait_until(lambda: rtt_in_file(srv, shard, dev.id), timeout=5), \
            "not written within 5 s of a 1 s flush interval"
        srv.restart(kill=True)
        srv.wait_api_healthy()
        d2 = wait_device(srv, dev.id, lambda d: True)
        assert d2["last_round_trip"] == d1["last_round_trip"], (d1, d2)
    finally:
        dev.close()


def test_bytes_that_are_not_utf8_in_a_path(api_server):
    """GET /v1/devices/dev/%ff (Particle's read, and cyan's own
    .../variables/%ff) answered 500 with a body of {}; GET /v1/devices/%ff
    a 404 whose body said "internal: out of memory": the error's message
    held the path's bytes, which no JSON can carry."""
    dev = echo_device(api_server)
    try:
        for method, path, code in (
                ("GET", "/v1/devices/%s/%%ff" % dev.id, "variable_not_found"),
                ("POST", "/v1/devices/%s/%%ff" % dev.id, "function_not_found"),
                ("GET", "/v1/devices/%s/variables/%%ff" % dev.id, "variable_not_found"),
                ("POST", "/v1/devices/%s/functions/a%%C3%%A9" % dev.id, "function_not_found"),
                ("GET", "/v1/devices/%ff", "device_not_found"),
                ("PATCH", "/v1/devices/%ff", "device_not_found"),
                ("DELETE", "/v1/tokens/%ff", "not_found")):
            kw = {"json": {"name": "x"}} if method == "PATCH" else \
                {"data": "arg=1"} if method == "POST" else {}
            r = api(api_server, method, path, timeout=15, **kw)
            assert r.status == 404 and r.error == code, (method, path, r)
            assert r.body["message"], r
        assert dev.calls == [], dev.calls  # never asked
    finally:
        dev.close()
