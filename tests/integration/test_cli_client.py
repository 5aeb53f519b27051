"""The HTTP API's client commands of the cyan binary (issue 15, "A CLI in the
spirit of particle-cli"; src/cli/cli.h): `cyan call`, `get`, `publish`,
`subscribe`, `list`, `device rename` (and PATCH /v1/devices/{id}, the route
it uses), with --json, the address and token from flags, the environment or
the data folder, and `cyan config --check`.

- call/get against a live device (by name and by id), its errors one line
  each: 504 for a device that does not answer, 404, 409, 403 for a token
  without the scope;
- publish, then the event on `cyan subscribe` (a subprocess read line by
  line until the event arrives, then ended with SIGINT: exit 0), a prefix,
  --device, --json lines that parse;
- subscribe reconnects with Last-Event-ID: against a fake server that
  drops the stream (the header is checked), and across a restart of cyan;
- list and rename (the device stays online and answers under its new name);
- precedence: --url over CYAN_URL over the configuration, --token over
  CYAN_TOKEN over DATA_DIR/admin-token, which is never sent to another node;
- usage errors: one line pointing to `cyan help`; `cyan help` lists the
  commands; a data folder that does not exist is an error for every
  command but serve, and nothing is created;
- config --check: "ok", or the first error with its line;
- attacks: bad URLs, a node that is down, one that never answers, a huge
  answer, a non-JSON error page, HTTPS (the data folder's certificate, or
  --cacert) and plain HTTP mixed up.
"""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from apidevice import (api, create_device, get_device, online_device, token_create,
                       wait_device)
from conftest import CYAN_BIN, HOST, child_env, free_port
from tlscerts import CA

pytestmark = pytest.mark.cyan_only

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def env_of(extra=None):
    env = child_env()
    env.pop("CYAN_URL", None)
    env.pop("CYAN_TOKEN", None)
    env.update(extra or {})
    return env


def local_args(srv):
    """The settings that make the CLI find srv through its data folder."""
    return ["--data_dir=%s" % srv.data_dir, "--http_listen=%s:%d" % (srv.host, srv.http_port)]


def cyan(*args, env=None, cwd=None, timeout=30):
    t0 = time.monotonic()
    cp = subprocess.run([CYAN_BIN] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                        capture_output=True, text=True, timeout=timeout, env=env_of(env), cwd=cwd)
    cp.elapsed = time.monotonic() - t0
    return cp


def local(srv, *args, **kw):
    """cyan with srv's data folder and address as settings (first: a "--"
    among args ends the options)."""
    return cyan(*(local_args(srv) + list(args)), **kw)


def ok(cp):
    assert cp.returncode == 0, "exit %d\nstdout: %s\nstderr: %s" % (cp.returncode, cp.stdout,
                                                                   cp.stderr)
    return cp


def one_line_error(cp, code=1, *needles):
    """Exit code `code`, nothing on stdout, one line on stderr holding each
    needle."""
    assert cp.returncode == code, "exit %d, not %d\nstdout: %s\nstderr: %s" % (
        cp.returncode, code, cp.stdout, cp.stderr)
    assert cp.stdout == "", cp.stdout
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---------------------------------------------------------------- a subprocess read line by line

class Running:
    """A cyan command running, its stdout and stderr lines read by threads."""

    def __init__(self, args, env=None):
        self.proc = subprocess.Popen([CYAN_BIN] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env_of(env))
        self.out, self.err = queue.Queue(), queue.Queue()
        self.out_lines, self.err_lines = [], []
        for stream, q in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, q), daemon=True).start()

    @staticmethod
    def _pump(stream, q):
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    def _wait(self, q, seen, pred, timeout, what):
        deadline = time.monotonic() + timeout
        for line in seen:
            if pred(line):
                return line
        while True:
            try:
                line = q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = False
            if line is None or line is False or time.monotonic() > deadline + 1:
                raise AssertionError("%s: no line %s within %.1fs (%s)\nstdout: %r\nstderr: %r"
                                     % (self.proc.args[1], what, timeout,
                                        "ended" if line is None else "timeout",
                                        self.out_lines, self.err_lines))
            if seen is not self.out_lines and q is self.out:
                self.out_lines.append(line)
            seen.append(line)
            if pred(line):
                return line

    def next_out(self, timeout=10.0):
        """The next stdout line not read yet (by this or by wait_out)."""
        return self._wait(self.out, [], lambda l: True, timeout, "more on stdout")

    def wait_out(self, pred, timeout=10.0, what="on stdout"):
        return self._wait(self.out, self.out_lines, pred, timeout, what)

    def wait_err(self, pred, timeout=10.0, what="on stderr"):
        return self._wait(self.err, self.err_lines, pred, timeout, what)

    def drain_out(self):
        """The stdout lines arrived so far (no wait)."""
        while True:
            try:
                line = self.out.get_nowait()
            except queue.Empty:
                return self.out_lines
            if line is not None:
                self.out_lines.append(line)

    def stop(self, timeout=10.0):
        """SIGINT (Ctrl-C): the exit code, which must come within timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("%s did not end within %.0fs of SIGINT" % (self.proc.args,
                                                                           timeout))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def running():
    procs = []

    def start(*args, env=None):
        r = Running(args, env)
        procs.append(r)
        return r
    yield start
    for r in procs:
        r.kill()


# ---------------------------------------------------------------- a fake HTTP server

class Fake:
    """A TCP server on HOST whose handler(conn, request_head, n) answers each
    connection (n counts them from 0); the heads it got are kept."""

    def __init__(self, handler):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = "http://%s:%d" % (HOST, self.port)
        self.heads = []
        self.handler = handler
        self.closing = False
        self.conns = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        n = 0
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn, n), daemon=True).start()
            n += 1

    def _one(self, conn, n):
        buf = b""
        conn.settimeout(10)
        try:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            self.heads.append(head)
            self.handler(conn, head, n)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def header(self, i, name):
        for line in self.heads[i].split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == name.lower():
                return v.strip()
        return None

    def close(self):
        self.closing = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def fake():
    made = []

    def start(handler):
        f = Fake(handler)
        made.append(f)
        return f
    yield start
    for f in made:
        f.close()


def answer(conn, status, body, ctype="application/json", extra=""):
    body = body.encode() if isinstance(body, str) else body
    conn.sendall(("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s"
                  "Connection: close\r\n\r\n" % (status, ctype, len(body), extra)).encode() + body)


# ---------------------------------------------------------------- call and get

def test_call_and_get_by_name_and_id(api_server):
    srv = api_server
    led = {"state": "off"}

    def set_led(arg):
        led["state"] = arg
        return 1 if arg == "on" else 0
    dev = online_device(srv, functions={"led": set_led, "echo": lambda a: a},
                        variables={"temperature": lambda: 21.5,
                                   "greeting": lambda: "hello world",
                                   "config": lambda: {"a": [1, 2]}})
    name, did = dev.info["name"], dev.id
    try:
        cp = ok(local(srv, "call", name, "led", "on"))
        assert cp.stdout == "1\n" and led["state"] == "on", (cp.stdout, led)
        cp = ok(local(srv, "call", did, "led", "off", "--json"))
        body = json.loads(cp.stdout)
        assert body["return_value"] == 0 and body["id"] == did and body["name"] == "led", body
        assert isinstance(body["round_trip_ms"], (int, float)), body
        # An argument with blanks, quotes and non-ASCII, as it is; none at all.
        arg = 'say "hi" to caf\u00e9 -- now'
        cp = ok(local(srv, "call", name, "echo", arg))
        assert cp.stdout == arg + "\n", cp.stdout
        cp = ok(local(srv, "call", name, "echo", "--", "-5"))
        assert cp.stdout == "-5\n", cp.stdout
        calls = [c for c in dev.calls if c.name == "echo"]
        assert [c.arg for c in calls] == [arg, "-5"], calls
        ok(local(srv, "call", name, "led"))
        assert led["state"] == "", led
        # Variables: a number, a string (as it is), JSON (compact).
        assert ok(local(srv, "get", name, "temperature")).stdout == "21.5\n"
        assert ok(local(srv, "get", did, "greeting", "--timeout", "3")).stdout == "hello world\n"
        assert ok(local(srv, "get", name, "config")).stdout == '{"a":[1,2]}\n'
        body = json.loads(ok(local(srv, "get", name, "temperature", "--json")).stdout)
        assert body["value"] == 21.5 and body["name"] == "temperature", body
    finally:
        dev.close()


def test_call_errors_one_line_each(api_server):
    srv = api_server
    dev = online_device(srv, functions={"slow": lambda a: None, "led": lambda a: 1})
    gone = online_device(srv, functions={"led": lambda a: 1})  # described, then offline
    gone.close()
    wait_device(srv, gone.id, lambda d: d["online"] is False, what="offline")
    try:
        # A device that does not answer: 504 within the call's own timeout.
        cp = local(srv, "call", dev.id, "slow", "x", "--timeout", "1")
        line = one_line_error(cp, 1, "HTTP 504", "device_timeout")
        assert cp.elapsed < 6, (cp.elapsed, line)
        one_line_error(local(srv, "get", dev.id, "nothing", "--timeout=1"), 1, "HTTP 404",
                       "variable_not_found")
        one_line_error(local(srv, "call", dev.id, "nothing"), 1, "HTTP 404", "function_not_found")
        one_line_error(local(srv, "call", "no-such-device", "led"), 1, "HTTP 404",
                       "device_not_found")
        one_line_error(local(srv, "call", gone.info["name"], "led"), 1, "HTTP 409",
                       "device_offline")
        for bad in ("0", "61", "abc", "1.5"):
            one_line_error(local(srv, "call", dev.id, "led", "--timeout", bad), 2,
                           "--timeout takes 1 to 60 seconds", "cyan help")
        one_line_error(local(srv, "call", dev.id, "led", "x" * 1025), 1, "HTTP 400",
                       "bad_request")
        # --json changes nothing of an error: stdout stays empty.
        one_line_error(local(srv, "call", "no-such-device", "led", "--json"), 1, "HTTP 404")
    finally:
        dev.close()


def test_tokens_without_the_scope_get_403(api_server):
    srv = api_server
    dev = online_device(srv, functions={"led": lambda a: 1}, variables={"v": lambda: 1})
    _, ro = token_create(srv, "viewer", read_only=True)
    _, caller = token_create(srv, "caller", scopes="devices:call")
    try:
        one_line_error(local(srv, "call", dev.id, "led", "--token", ro), 1, "HTTP 403",
                       "forbidden", "devices:call")
        one_line_error(local(srv, "get", dev.id, "v", "--token", ro), 1, "HTTP 403",
                       "devices:call")
        one_line_error(local(srv, "publish", "x", "--token", ro), 1, "HTTP 403", "events:publish")
        one_line_error(local(srv, "device", "rename", dev.id, "x", "--token", ro), 1, "HTTP 403",
                       "admin")
        one_line_error(local(srv, "list", "--token", caller), 1, "HTTP 403", "devices:read")
        # The right scope is enough.
        assert ok(local(srv, "call", dev.id, "led", "--token", caller)).stdout == "1\n"
        assert dev.info["name"] in ok(local(srv, "list", "--token", ro)).stdout
        one_line_error(local(srv, "list", "--token", "cyt_000000000000_" + "0" * 32), 1,
                       "HTTP 401", "unauthorized")
    finally:
        dev.close()


# ---------------------------------------------------------------- publish and subscribe

def test_publish_seen_on_subscribe_then_ctrl_c(api_server, running):
    srv = api_server
    dev = online_device(srv)
    try:
        sub = running("subscribe", *local_args(srv))
        sub.wait_err(lambda l: "subscribed to every event" in l, what="'subscribed'")
        cp = ok(local(srv, "publish", "hello", "big world"))
        assert cp.stdout == "published hello\n", cp.stdout
        line = sub.wait_out(lambda l: "hello" in l, what="with the event")
        assert re.fullmatch(r"%s  -  hello  big world" % ISO, line), line
        # A device's own event carries its id; data that is not one line is
        # shown as a JSON string.
        dev.publish_event("temp", b"21.5")
        line = sub.wait_out(lambda l: "temp" in l, what="with the device's event")
        assert re.fullmatch(r"%s  %s  temp  21\.5" % (ISO, dev.id), line), line
        ok(local(srv, "publish", "multi", "a\nb"))
        line = sub.wait_out(lambda l: "multi" in l)
        assert line.endswith('  multi  "a\\nb"'), line
        ok(local(srv, "publish", "empty"))
        line = sub.wait_out(lambda l: "empty" in l)
        assert re.fullmatch(r"%s  -  empty  " % ISO, line), repr(line)
        assert sub.stop() == 0
    finally:
        dev.close()


def test_subscribe_prefix_device_and_json(api_server, running):
    srv = api_server
    a, b = online_device(srv), online_device(srv)
    try:
        pre = running("subscribe", "temp", "--json", *local_args(srv))
        mine = running("subscribe", "--device", a.info["name"], *local_args(srv))
        pre.wait_err(lambda l: "subscribed to every event starting with 'temp'" in l)
        mine.wait_err(lambda l: "subscribed to the events of %s" % a.info["name"] in l)
        b.publish_event("humidity", b"40")   # neither
        b.publish_event("temperature", b"19")  # pre only
        a.publish_event("light", b"on")      # mine only
        ok(local(srv, "publish", "temp/shared", "x"))  # pre only
        got = [json.loads(pre.next_out()) for _ in range(2)]
        names = sorted(e["name"] for e in got)
        assert names == ["temp/shared", "temperature"], got
        t = [e for e in got if e["name"] == "temperature"][0]
        assert t["data"] == "19" and t["device_id"] == b.id and t["shared"] is False, t
        line = mine.next_out()
        assert line.endswith("%s  light  on" % a.id), line
        # Nothing else came to either (the last publish is a marker).
        a.publish_event("end", b"")
        ok(local(srv, "publish", "temp-end"))
        pre.wait_out(lambda l: "temp-end" in l)
        mine.wait_out(lambda l: "  end  " in l)
        assert len(pre.out_lines) == 3 and len(mine.out_lines) == 2, (pre.out_lines,
                                                                       mine.out_lines)
        assert pre.stop() == 0 and mine.stop() == 0
        # A device that does not exist: 404 at once, not a wait.
        cp = local(srv, "subscribe", "--device", "nobody", timeout=20)
        one_line_error(cp, 1, "HTTP 404", "device_not_found")
    finally:
        a.close()
        b.close()


def test_subscribe_reconnects_with_last_event_id(fake, running):
    """Against a fake stream: the first connection sends an event and
    drops; the second must ask for what follows it (Last-Event-ID) and gets
    the next event; a 503 meanwhile is waited out."""
    head = ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            "Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
    hold = threading.Event()

    def handler(conn, req, n):
        if n == 0:
            conn.sendall((head + ": cyan event stream, shard 0\n\n"
                          'id: 0-7\nevent: a\ndata: {"name":"a","data":"1",'
                          '"published_at":"2026-12-04T10:00:00.000Z","device_id":null}\n\n'
                          ).encode())
            time.sleep(0.2)
            return  # dropped
        if n == 1:
            answer(conn, "503 Service Unavailable",
                   '{"error":"shard_unavailable","message":"restarting"}',
                   extra="Retry-After: 1\r\n")
            return
        conn.sendall((head + ": gap: events from shard(s) 1 are no longer buffered\n\n"
                      'id: 0-8\nevent: b\ndata: {"name":"b","data":"2",'
                      '"published_at":"2026-12-04T10:00:01.000Z","device_id":null}\n\n'
                      ).encode())
        hold.wait(20)
    f = fake(handler)
    sub = running("subscribe", "--url", f.url, "--token", "t0k")
    try:
        sub.wait_out(lambda l: "  a  1" in l)
        sub.wait_err(lambda l: "stream was lost" in l and "reconnecting in 0.5 s" in l)
        sub.wait_err(lambda l: "HTTP 503 shard_unavailable" in l)
        sub.wait_err(lambda l: "retrying in 1.0 s" in l)
        sub.wait_out(lambda l: "  b  2" in l)
        sub.wait_err(lambda l: "resuming after event 0-7" in l)
        sub.wait_err(lambda l: "the stream says: gap" in l)
        assert f.header(0, "Last-Event-ID") is None, f.heads[0]
        assert f.header(1, "Last-Event-ID") == "0-7", f.heads[1]
        assert f.header(2, "Last-Event-ID") == "0-7", f.heads[2]
        assert f.header(2, "Authorization") == "Bearer t0k", f.heads[2]
        assert f.header(2, "Accept") == "text/event-stream", f.heads[2]
        t0 = time.monotonic()
        assert sub.stop() == 0
        assert time.monotonic() - t0 < 3
        assert sub.drain_out() == ["2026-12-04T10:00:00.000Z  -  a  1",
                                   "2026-12-04T10:00:01.000Z  -  b  2"], sub.out_lines
    finally:
        hold.set()


def test_subscribe_survives_a_restart_of_cyan(api_server, running):
    srv = api_server
    sub = running("subscribe", "--json", *local_args(srv))
    sub.wait_err(lambda l: "subscribed to" in l)
    ok(local(srv, "publish", "before", "1"))
    sub.wait_out(lambda l: '"before"' in l)
    srv.restart()
    srv.wait_api_healthy()
    sub.wait_err(lambda l: "stream was lost" in l)
    ok(local(srv, "publish", "after", "2"))
    sub.wait_out(lambda l: '"after"' in l, timeout=20)
    sub.wait_err(lambda l: "resuming after event" in l)
    assert sub.stop() == 0
    names = [json.loads(l)["name"] for l in sub.drain_out()]
    assert names == ["before", "after"], names  # once each: none repeated, none lost


def test_subscribe_errors(api_server, fake):
    srv = api_server
    _, pub = token_create(srv, "pub", scopes="events:publish")
    one_line_error(local(srv, "subscribe", "--token", pub), 1, "HTTP 403", "events:read")
    # Not an event stream: said, not parsed.
    f = fake(lambda conn, req, n: answer(conn, "200 OK", "<html>hi</html>", "text/html"))
    one_line_error(cyan("subscribe", "--url", f.url, "--token", "x"), 1,
                   "not an event stream")
    # A node that is down: at once, not a wait.
    cp = cyan("subscribe", "--url", "http://127.0.0.1:%d" % free_port(), "--token", "x")
    one_line_error(cp, 1, "is cyan running there")
    assert cp.elapsed < 5, cp.elapsed


# ---------------------------------------------------------------- list and rename

def test_list_table_and_json(api_server):
    srv = api_server
    dev = online_device(srv, functions={"led": lambda a: 1})
    off = create_device(srv)
    try:
        ok(local(srv, "call", dev.id, "led"))
        cp = ok(local(srv, "list"))
        lines = cp.stdout.rstrip("\n").split("\n")
        assert re.match(r"NAME +ID +ONLINE +PROTOCOL +LAST HEARD +LAST ROUND TRIP$", lines[0]), \
            lines
        row = re.compile(r"(\S+) +([0-9a-f]{24}) +(yes|no|\?) +(\S+) +(now|\d+[smhd] ago|-) +"
                         r"(now|\d+[smhd] ago|-)")
        rows = {}
        for l in lines[1:]:
            m = row.fullmatch(l)
            assert m, l
            rows[m.group(1)] = m.groups()[1:]
        assert set(rows) == {dev.info["name"], off["name"]}, lines
        on = rows[dev.info["name"]]
        assert on[:3] == (dev.id, "yes", "mqtt5") and "-" not in on[3:], on
        assert rows[off["name"]] == (off["id"], "no", "-", "-", "-"), rows[off["name"]]
        # The columns line up: every row's id starts where the header's does.
        col = lines[0].index("ID")
        assert all(l[col:col + 24] in (dev.id, off["id"]) for l in lines[1:]), lines
        body = json.loads(ok(local(srv, "list", "--json")).stdout)
        assert sorted(d["id"] for d in body) == sorted([dev.id, off["id"]]), body
        assert [d for d in body if d["id"] == dev.id][0]["online"] is True
    finally:
        dev.close()


def test_list_empty(api_server):
    cp = ok(local(api_server, "list"))
    assert cp.stdout.startswith("NAME") and cp.stdout.count("\n") == 1, cp.stdout
    assert "no devices yet" in cp.stderr, cp.stderr


def test_device_rename(api_server):
    srv = api_server
    dev = online_device(srv, functions={"led": lambda a: 1})
    other = create_device(srv)
    old = dev.info["name"]
    try:
        cp = ok(local(srv, "device", "rename", old, "porch-light"))
        assert cp.stdout == "renamed %s to porch-light (%s)\n" % (old, dev.id), cp.stdout
        assert get_device(srv, "porch-light")["id"] == dev.id
        assert api(srv, "GET", "/v1/devices/%s" % old).status == 404
        # Still connected, answering under its new name; by id, --json.
        assert ok(local(srv, "call", "porch-light", "led")).stdout == "1\n"
        body = json.loads(ok(local(srv, "device", "rename", dev.id, "porch.2", "--json")).stdout)
        assert body == {"id": dev.id, "name": "porch.2", "previous_name": "porch-light"}, body
        assert get_device(srv, dev.id)["online"] is True
        one_line_error(local(srv, "device", "rename", "porch.2", other["name"]), 1, "HTTP 409",
                       "name_taken")
        one_line_error(local(srv, "device", "rename", "porch.2", "bad name"), 1, "HTTP 400",
                       "bad_request")
        one_line_error(local(srv, "device", "rename", "nobody", "x"), 1, "HTTP 404",
                       "device_not_found")
        one_line_error(local(srv, "device", "rename", "porch.2"), 2, "usage: cyan device rename")
        # The old name is free again.
        assert create_device(srv, old)["name"] == old
    finally:
        dev.close()


def test_patch_device_route(api_server):
    srv = api_server
    d = create_device(srv)
    r = api(srv, "PATCH", "/v1/devices/%s" % d["id"], json={"name": "n1"})
    assert r.status == 200 and r.body == {"id": d["id"], "name": "n1",
                                          "previous_name": d["name"]}, r
    for body, status, code in (({"name": 5}, 400, "bad_json"), ({}, 400, "bad_json"),
                               ({"name": "n2", "id": "x"}, 400, "bad_request"),
                               ({"name": "0123456789abcdef01234567"}, 400, "bad_request"),
                               ({"name": "a\u0000b"}, 400, "bad_json")):
        r = api(srv, "PATCH", "/v1/devices/n1", json=body)
        assert (r.status, r.error) == (status, code), (body, r)
    r = api(srv, "PATCH", "/v1/devices/n1", data="not json",
            headers={"Content-Type": "application/json"})
    assert (r.status, r.error) == (400, "bad_json"), r
    # Its own name is fine; the method is in Allow.
    assert api(srv, "PATCH", "/v1/devices/n1", json={"name": "n1"}).status == 200
    r = api(srv, "PUT", "/v1/devices/n1", json={"name": "n1"})
    assert r.status == 405 and "PATCH" in r.headers.get("allow", ""), r


# ---------------------------------------------------------------- where the API is

def test_env_and_flag_precedence(api_server, fake, tmp_path):
    srv = api_server
    token = srv.admin_token()
    _, ro = token_create(srv, "ro", read_only=True)
    dead = "http://127.0.0.1:%d" % free_port()
    d = create_device(srv)
    # Environment alone: no data folder needed (run where there is none).
    env = {"CYAN_URL": srv.api_url, "CYAN_TOKEN": token}
    assert d["id"] in ok(cyan("list", env=env, cwd=str(tmp_path))).stdout
    assert not os.path.exists(tmp_path / "data")
    # --url over CYAN_URL, either way round.
    ok(cyan("list", "--url", srv.api_url, env={"CYAN_URL": dead, "CYAN_TOKEN": token},
            cwd=str(tmp_path)))
    one_line_error(cyan("list", "--url=" + dead, env=env, cwd=str(tmp_path)), 1, dead)
    # --token over CYAN_TOKEN, either way round.
    ok(cyan("list", "--token", token, env={"CYAN_URL": srv.api_url, "CYAN_TOKEN": "bogus"}))
    one_line_error(cyan("list", "--token=bogus", env=env), 1, "HTTP 401")
    # CYAN_TOKEN over the data folder's token: a read-only one cannot publish.
    one_line_error(local(srv, "publish", "x", env={"CYAN_TOKEN": ro}), 1, "HTTP 403")
    ok(local(srv, "publish", "x"))
    # CYAN_URL over the configuration's own address.
    one_line_error(local(srv, "list", env={"CYAN_URL": dead}), 1, dead)
    # The data folder's token goes to its own node only, however it is
    # written, and never elsewhere.
    for same in (srv.api_url + "/", "http://localhost:%d" % srv.http_port):
        ok(local(srv, "list", "--url", same))
    f = fake(lambda conn, req, n: answer(conn, "200 OK", "[]"))
    one_line_error(local(srv, "list", "--url", f.url), 1, "no token for %s" % f.url,
                   "give --token")
    assert f.heads == [], "a request reached the other node"
    ok(local(srv, "list", "--url", f.url, "--token", "mine"))
    assert f.header(0, "Authorization") == "Bearer mine", f.heads
    # A configuration file (-c) names the data folder and the address.
    conf = tmp_path / "cyan.conf"
    conf.write_text("data_dir = %s\nhttp_listen = %s:%d\n" % (srv.data_dir, srv.host,
                                                               srv.http_port))
    assert d["id"] in ok(cyan("-c", conf, "list", cwd=str(tmp_path))).stdout
    # No API in the configuration, no token anywhere.
    one_line_error(cyan("list", "--data_dir=%s" % srv.data_dir, "--http_listen="), 1,
                   "serves no API")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(cyan("list", "--data_dir=%s" % empty, "--http_listen=%s:%d"
                        % (srv.host, srv.http_port)), 1, "admin-token")


# ---------------------------------------------------------------- usage

def test_unknown_command_flag_and_help(tmp_path):
    for args, needles in ((["frob"], ["unknown command 'frob'", "`cyan help`"]),
                          (["list", "--frob"], ["unknown option '--frob'", "`cyan help`"]),
                          (["--frob"], ["unknown option '--frob'"]),
                          (["--frob=1"], ["unknown setting 'frob'", "`cyan help`"]),
                          (["call", "d", "f", "--device", "x"],
                           ["--device is not an option of `cyan call`", "`cyan help`"]),
                          (["status", "--url", "x"], ["--url is not an option of `cyan status`"]),
                          (["call", "d"], ["usage: cyan call DEVICE FUNCTION", "`cyan help`"]),
                          (["get", "d", "v", "x"], ["usage: cyan get DEVICE VARIABLE"]),
                          (["list", "x"], ["usage: cyan list"]),
                          (["subscribe", "a", "b"], ["usage: cyan subscribe"]),
                          (["publish"], ["usage: cyan publish NAME"]),
                          (["call", "d", "f", "--url"], ["--url needs a value"]),
                          (["call", "d", "f", "--url", "a", "--url", "b"], ["given twice"]),
                          (["call", "", "f"], ["an empty word"])):
        cp = cyan(*args, cwd=str(tmp_path))
        one_line_error(cp, 2, *needles)
    cp = ok(cyan("help"))
    for cmd in ("cyan call DEVICE FUNCTION [ARG]", "cyan get DEVICE VARIABLE",
                "cyan publish NAME [DATA]", "cyan subscribe [PREFIX] [--device DEVICE]",
                "cyan list", "cyan device rename DEVICE NEWNAME", "cyan config --check [FILE]",
                "--url URL", "--token TOKEN", "--json", "CYAN_URL", "cyan token create"):
        assert cmd in cp.stdout, (cmd, cp.stdout)
    assert ok(cyan("--help")).stdout == cp.stdout
    assert os.listdir(tmp_path) == []


def test_nonexistent_data_folder_is_never_made(tmp_path):
    none = tmp_path / "none"
    for args in (["device", "list"], ["device", "add", "x"], ["device", "remove", "x"],
                 ["device", "psk", "x"], ["device", "cert", "x"], ["token", "list"],
                 ["token", "create", "t"], ["token", "revoke", "x"], ["status"],
                 ["status", "--json"], ["canary"], ["shard", "stop", "0"], ["list"],
                 ["call", "d", "f"], ["get", "d", "v"], ["publish", "x"], ["subscribe"],
                 ["device", "rename", "a", "b"]):
        cp = cyan(*(args + ["--data_dir=%s" % none]), cwd=str(tmp_path), timeout=20)
        one_line_error(cp, 1, "data folder '%s' does not exist" % none)
        assert not none.exists(), args
    # Without --data_dir: the default ./data is not made either.
    one_line_error(cyan("device", "list", cwd=str(tmp_path)), 1,
                   "data folder 'data' does not exist")
    one_line_error(cyan("token", "list", cwd=str(tmp_path)), 1, "does not exist")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- config --check

def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_config_check(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert ok(cyan("config", "--check", os.path.join(repo, "etc", "cyan.conf"))).stdout == "ok\n"
    good = write(tmp_path, "good.conf", "# mine\nshards = 2\nhttp_listen = 127.0.0.1:18080\n")
    assert ok(cyan("config", "--check", good)).stdout == "ok\n"
    assert ok(cyan("-c", good, "config", "--check")).stdout == "ok\n"
    assert ok(cyan("config", good, "--check")).stdout == "ok\n"
    acl = write(tmp_path, "acl", "user x\ntopic raed a/b\n")
    cases = [
        ("a\nb\nshards = 100\n", 1, "expected name = value"),
        ("# c\n\nshards = 100\n", 3, "shards: bad number 100"),
        ("log_level = info\nnonsense_setting = 1\n", 2, "unknown setting 'nonsense_setting'"),
        ("allow_anonymous = maybe\n", 1, "expected true or false"),
        ("\n\n\nlog_level = loud\n", 4, "log_level: expected debug, info, warn or error"),
        ("mqtt_listen = nohost\n", 1, "mqtt_listen: 'nohost' is not an address"),
        ("mqtt_listen = 127.0.0.1:18080\n# x\nhttp_listen = 127.0.0.1:18080\n", 3,
         "mqtt_listen and http_listen are both on port 18080"),
        ("http_listen = 0.0.0.0:1883\n", 1, "both on port 1883"),
        ("mqtt_listen = 127.0.0.1:8080\n", 1, "mqtt_listen and http_listen are both on port 8080"),
        ("ops_listen = 127.0.0.1:8080\nmonitor = false\n", 0, ""),
        ("coap_listen = 127.0.0.1:5700\ncoaps_listen = 127.0.0.1:5700\n", 2, "(UDP)"),
        ("tls_cert = %s\n" % good, 1, "tls_cert and tls_key go together"),
        ("tls_cert = /no/such.pem\ntls_key = /no/such.key\n", 1, "tls_cert:"),
        ("acl_file = /no/such/acl\n", 1, "acl_file:"),
        ("shards = 2\nacl_file = %s\n" % acl, 2, "acl:2"),
        ("alert_webhooks = https://a.example/x, ftp://b\n", 1, "'ftp://b' is not an http"),
        ("alert_rules = /no/such/rules\n", 1, "alert_rules:"),
        ("data_dir = %s\n" % good, 1, "is not a folder"),
        ("shards = 4\ndata_dir = /%s\n" % ("d" * 120), 2, "too long for 4 shards"),
        # Two problems: the one on the earlier line is reported.
        ("log_level = loud\nmqtt_listen = nohost\n", 1, "log_level"),
        ("mqtt_listen = nohost\nlog_level = loud\n", 1, "mqtt_listen"),
    ]
    for i, (text, line, needle) in enumerate(cases):
        path = write(tmp_path, "bad%d.conf" % i, text)
        cp = cyan("config", "--check", path)
        if not needle:
            assert cp.returncode == 0 and cp.stdout == "ok\n", (text, cp)
            continue
        err = one_line_error(cp, 1, needle)
        if line:
            assert err.startswith("cyan: %s:%d: " % (path, line)), (text, err)
        else:
            assert err.startswith("cyan: %s: " % path), (text, err)
    # The same errors through -c.
    bad = write(tmp_path, "bad.conf", "shards = 1\n\nlog_level = loud\n")
    one_line_error(cyan("-c", bad, "config", "--check"), 1, "%s:3: log_level" % bad)
    one_line_error(cyan("config", "--check", str(tmp_path / "missing.conf")), 1,
                   "missing.conf: No such file")
    one_line_error(cyan("config", "--check", good, good), 2, "one file at a time")
    one_line_error(cyan("config", "extra"), 2, "cyan config --check")
    # Without a file: the defaults and the command line's settings.
    assert ok(cyan("config", "--check")).stdout == "ok\n"
    one_line_error(cyan("config", "--check", "--http_listen=127.0.0.1:1883"), 1,
                   "http_listen: mqtt_listen and http_listen are both on port 1883")


# ---------------------------------------------------------------- attacks

def test_bad_urls(tmp_path):
    for url in ("127.0.0.1:8080", "ftp://127.0.0.1", "http://u:p@127.0.0.1", "http://h/?q=1",
                "http://h:99999", "http://", "http://a b", "file:///etc/passwd"):
        one_line_error(cyan("list", "--url", url, "--token", "x"), 2, "bad --url")
        one_line_error(cyan("list", env={"CYAN_URL": url, "CYAN_TOKEN": "x"}), 2, "bad CYAN_URL")
    one_line_error(cyan("list", "--url", "http://127.0.0.1:1", "--token", "a b"), 2, "bad --token")
    # A password in a refused URL is not echoed.
    cp = cyan("list", "--url", "http://me:hunter2@127.0.0.1", "--token", "x")
    one_line_error(cp, 2, "bad --url")
    assert "hunter2" not in cp.stderr + cp.stdout, cp.stderr


def test_server_down_silent_huge_and_not_json(fake):
    # Down: refused at once.
    dead = "http://127.0.0.1:%d" % free_port()
    cp = cyan("list", "--url", dead, "--token", "x")
    one_line_error(cp, 1, dead, "is cyan running there")
    assert cp.elapsed < 5, cp.elapsed
    # Accepts and never answers: the call's timeout plus 5 s, then a clear line.
    silent = fake(lambda conn, req, n: time.sleep(30))
    cp = cyan("call", "d", "f", "--timeout", "1", "--url", silent.url, "--token", "x")
    one_line_error(cp, 1, "no answer from %s/v1/devices/d/functions/f within 6 s" % silent.url)
    assert cp.elapsed < 15, cp.elapsed
    # A huge answer, announced or not, is refused, not read forever.
    def huge(conn, req, n):
        if n == 0:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000000000\r\n\r\n[")
            time.sleep(5)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\n\r\n")
        chunk = b" " * (1 << 20)
        for _ in range(100):
            conn.sendall(chunk)
    big = fake(huge)
    for _ in range(2):
        cp = cyan("list", "--url", big.url, "--token", "x")
        one_line_error(cp, 1, "larger than 64 MiB")
        assert cp.elapsed < 15, cp.elapsed
    # An error page that is not the API's: its status and a cleaned start.
    page = fake(lambda conn, req, n: answer(conn, "502 Bad Gateway",
                                            "<html>\x1b[31mproxy error</html>", "text/html"))
    err = one_line_error(cyan("list", "--url", page.url, "--token", "x"), 1, "HTTP 502",
                         "<html>?[31mproxy error</html>")
    assert "\x1b" not in err
    # A 200 that is not JSON.
    odd = fake(lambda conn, req, n: answer(conn, "200 OK", "hello", "text/plain"))
    one_line_error(cyan("list", "--url", odd.url, "--token", "x"), 1, "not JSON")
    # Redirects are not followed (the token stays where it was sent).
    moved = fake(lambda conn, req, n: answer(conn, "302 Found", "", extra="Location: %s/\r\n"
                                             % dead))
    one_line_error(cyan("list", "--url", moved.url, "--token", "x"), 1, "HTTP 302")


def test_https_api(server_factory, tmp_path):
    ca = CA(str(tmp_path / "ca"))
    cert, key = ca.issue("cyan-1")
    srv = server_factory(_template=False, tls_cert=cert, tls_key=key, isolate_devices=True)
    tls = ["--tls_cert=%s" % cert, "--tls_key=%s" % key]
    https = "https://%s:%d" % (srv.host, srv.http_port)
    token = srv.admin_token()
    # The data folder's node over HTTPS: its own certificate is trusted.
    deadline = time.monotonic() + 15
    while True:
        cp = local(srv, "list", *tls)
        if cp.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert cp.returncode == 0 and cp.stdout.startswith("NAME"), cp
    # Another address: with the CA, or refused with a hint.
    ok(cyan("list", "--url", https, "--token", token, "--cacert", ca.cert))
    one_line_error(cyan("list", "--url", https, "--token", token), 1, "--cacert")
    other = CA(str(tmp_path / "other"), name="someone else")
    one_line_error(cyan("list", "--url", https, "--token", token, "--cacert", other.cert), 1,
                   "--cacert")
    # Plain HTTP to an HTTPS API: said so.
    one_line_error(cyan("list", "--url", https.replace("https", "http"), "--token", token,
                        timeout=30), 1, "HTTPS")
