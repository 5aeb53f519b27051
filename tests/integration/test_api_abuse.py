"""The HTTP API against clients that misbehave on purpose (docs/api.md,
"Limits"): slow request heads and bodies, bodies without a token, bodies
far over the limit, framing that two parsers could read two ways, control
characters in paths, event streams that would take every connection, and
failed tokens in the log.

Everything here is raw sockets on 127.0.0.1 (curl would not misbehave), with
bounded waits. Limits are set small through the server's settings
(http_max_connections, http_request_timeout, http_max_body) so that a few
sockets show what thousands would.
"""

import json
import re
import socket
import time

import pytest

from apidevice import SseStream, api, create_device
from conftest import SHARDS
from helpers import wait_until

pytestmark = pytest.mark.cyan_only


# ------------------------------------------------------------------ raw HTTP

def connect(srv, source=None, timeout=3.0):
    """A TCP connection to the API; source: a 127.x.y.z address to send from
    (all of 127/8 is loopback), so that a test can be several sources."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect((srv.host, srv.http_port))
    return s


def head(method, path, token=None, extra=()):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: x"]
    if token:
        lines.append("Authorization: Bearer %s" % token)
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Answer:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.text = status, headers, body
        try:
            self.body = json.loads(body) if body else None
        except ValueError:
            self.body = None

    def __repr__(self):
        return "%d %r %r" % (self.status, self.headers, self.text[:300])


def read_answer(s, timeout=3.0):
    """One response with a Content-Length body, or None if the server closed
    (or reset) the connection without one. socket.timeout if neither came
    within timeout."""
    s.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
        h, _, rest = buf.partition(b"\r\n\r\n")
        lines = h.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return Answer(status, headers, rest[:n].decode("utf-8", "replace"))
    except ConnectionResetError:
        return None


def sees_close(s, timeout=3.0):
    """The server closes the connection (EOF or reset) within timeout."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def health(srv, timeout=3.0):
    return api(srv, "GET", "/v1/health", token=None, timeout=timeout)


# ------------------------------------------------------------------ tests

def test_body_without_token_refused_before_it_is_read(api_server):
    """401 as soon as the headers are in: the server does not wait for (or
    keep) a stranger's body, and closes the connection."""
    cases = [
        ("no token", head("POST", "/v1/events", None, ["Content-Length: 60000"])),
        ("unknown token", head("POST", "/v1/events", "cyt_000000000000_" + "0" * 32,
                               ["Content-Length: 60000"])),
        ("malformed token", head("POST", "/v1/devices", "cyt_nope",
                                 ["Transfer-Encoding: chunked"])),
        ("another scheme", b"PUT /v1/devices/x HTTP/1.1\r\nHost: x\r\n"
                           b"Authorization: Basic dXNlcjpwYXNz\r\nContent-Length: 9000\r\n\r\n"),
    ]
    for what, data in cases:
        s = connect(api_server)
        try:
            s.sendall(data + b"x")  # one byte of a long body, then nothing
            a = read_answer(s, timeout=3.0)
            assert a is not None, "%s: closed without an answer" % what
            assert a.status == 401, (what, a)
            assert a.body and a.body.get("error") == "unauthorized", (what, a)
            assert a.headers.get("www-authenticate", "").startswith("Bearer"), (what, a)
            assert a.headers.get("connection", "").lower() == "close", (what, a)
            assert sees_close(s), "%s: connection left open" % what
        finally:
            s.close()
    # /v1/health needs no token; another method on it is refused unread too.
    s = connect(api_server)
    try:
        s.sendall(head("POST", "/v1/health", None, ["Content-Length: 60000"]))
        a = read_answer(s)
        assert a is not None and a.status == 405, a
    finally:
        s.close()
    assert health(api_server).status == 200


def test_slow_bodies_without_token_do_not_take_the_api(api_server_factory):
    """The reproducer of issue 9 (3), with http_max_connections small: every
    connection trickling a body without a token is refused at once, so
    /v1/health answers while they keep trying."""
    srv = api_server_factory(shards=1, http_max_connections=6, http_request_timeout=30)
    socks = []
    try:
        for _ in range(6):
            s = connect(srv)
            s.sendall(head("POST", "/v1/events", None, ["Content-Length: 60000"]))
            socks.append(s)
        answers = []
        for s in socks:
            for _ in range(3):
                try:
                    s.send(b"x")
                except OSError:
                    break
            answers.append(read_answer(s, timeout=3.0))
        assert all(a is not None and a.status == 401 for a in answers), answers
        r = health(srv)
        assert r.status == 200, r
    finally:
        for s in socks:
            s.close()


def test_slow_authenticated_bodies_cut_at_the_deadline(api_server_factory):
    """With a valid token, a body trickled one byte at a time (each byte
    would restart an idle clock) is cut at http_request_timeout, with a 408;
    then the connections are free again and /v1/health answers."""
    srv = api_server_factory(shards=1, http_max_connections=4, http_request_timeout=2,
                             http_idle_timeout=60)
    token = srv.admin_token()
    socks = []
    try:
        t0 = time.monotonic()
        for _ in range(4):
            s = connect(srv)
            s.sendall(head("POST", "/v1/events", token,
                           ["Content-Length: 60000", "Content-Type: application/json"]))
            socks.append(s)
        cut = {}
        deadline = t0 + 10.0
        while len(cut) < len(socks) and time.monotonic() < deadline:
            for i, s in enumerate(socks):
                if i in cut:
                    continue
                try:
                    s.send(b" ")
                except OSError:
                    cut[i] = None
                    continue
                s.settimeout(0)
                try:
                    data = s.recv(65536, socket.MSG_PEEK)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                cut[i] = data
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        assert len(cut) == len(socks), "%d of %d slow bodies still open after %.1fs" % (
            len(socks) - len(cut), len(socks), elapsed)
        assert 1.5 <= elapsed <= 6.0, "cut after %.2fs (http_request_timeout=2)" % elapsed
        # The answer, where it got through before the close: a 408.
        got = [d for d in cut.values() if d]
        assert got, "no slow body got an answer"
        assert all(d.startswith(b"HTTP/1.1 408") and b"request_timeout" in d for d in got), got
        r = health(srv)
        assert r.status == 200, r
        # A request in time is served as ever.
        r = api(srv, "POST", "/v1/events", json={"name": "after"})
        assert r.status == 202, r
    finally:
        for s in socks:
            s.close()


def test_chunked_body_far_over_the_limit_gets_413(api_server_factory):
    srv = api_server_factory(http_max_body=1024)
    token = srv.admin_token()
    chunk = b"400\r\n" + b"a" * 1024 + b"\r\n"
    for n in (2, 8):  # just over; far over (it was closed unanswered past twice the limit)
        s = connect(srv)
        try:
            s.sendall(head("POST", "/v1/events", token, ["Transfer-Encoding: chunked"]))
            for _ in range(n):
                try:
                    s.sendall(chunk)
                except OSError:
                    break
            try:
                s.sendall(b"0\r\n\r\n")
            except OSError:
                pass
            a = read_answer(s)
            assert a is not None, "%d KiB chunked: closed without an answer" % n
            assert a.status == 413 and a.body.get("error") == "body_too_large", a
            assert sees_close(s)
        finally:
            s.close()
    assert health(srv).status == 200


def test_content_length_with_transfer_encoding_refused(api_server):
    """Which header frames the body is what request smuggling plays on."""
    token = api_server.admin_token()
    body = json.dumps({"name": "smuggled"}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    s = connect(api_server)
    try:
        s.sendall(head("POST", "/v1/events", token,
                       ["Content-Type: application/json", "Content-Length: %d" % len(chunked),
                        "Transfer-Encoding: chunked"]) + chunked)
        a = read_answer(s)
        assert a is not None and a.status == 400, a
        assert a.body.get("error") == "bad_request", a
        assert sees_close(s)
    finally:
        s.close()
    # Either alone is served.
    s = connect(api_server)
    try:
        s.sendall(head("POST", "/v1/events", token,
                       ["Content-Type: application/json", "Transfer-Encoding: chunked"]) + chunked)
        a = read_answer(s)
        assert a is not None and a.status == 202, a
    finally:
        s.close()


def test_control_characters_in_path_refused(api_server):
    """%00 cut the path short: /v1/devices/ID%00/x answered as /v1/devices/ID."""
    dev = create_device(api_server)
    for path in ("/v1/devices/%s%%00/x" % dev["id"], "/v1/devices/%s%%00" % dev["id"],
                 "/v1/devices/%s%%0a" % dev["id"],
                 "/v1/devices/%s/variables/t?timeout=5%%00" % dev["id"]):
        r = api(api_server, "GET", path)
        assert r.status == 400 and r.error == "bad_request", (path, r)
    r = api(api_server, "GET", "/v1/devices/%s" % dev["id"])
    assert r.status == 200, r


def test_streams_leave_connections_for_other_requests(api_server_factory):
    """http_max_connections=5 keeps one connection from event streams: the
    fifth stream is refused with 503 streams_full, while /v1/health and the
    other routes are still served."""
    srv = api_server_factory(shards=1, http_max_connections=5)
    streams = []
    try:
        for i in range(4):
            st = SseStream(srv, "/v1/events")
            streams.append(st)
            assert st.status == 200, (i, st.status, getattr(st, "body", None))
        r = api(srv, "GET", "/v1/events", timeout=3)
        assert r.status == 503 and r.error == "streams_full", r
        assert r.headers.get("retry-after"), r
        assert health(srv).status == 200
        r = api(srv, "GET", "/v1/devices")
        assert r.status == 200, r
        # One stream ends: its place is free again.
        streams.pop().close()
        ok = []
        assert wait_until(lambda: ok.append(SseStream(srv, "/v1/events")) or
                          ok[-1].status == 200 or ok.pop().close(), timeout=3.0)
        streams.extend(ok)
    finally:
        for st in streams:
            st.close()


def test_failed_tokens_logged_per_source_without_the_token(api_server):
    """One line per source address per window, naming the address and the
    reason; never the token. Sources are told apart by their 127.x address."""
    secret = "cyt_00000000abcd_" + "7" * 32
    cases = [("127.0.0.2", None, "no token"), ("127.0.0.3", "cyt_zzz", "malformed token"),
             ("127.0.0.4", secret, "unknown or revoked token")]
    for source, token, _ in cases:
        for _ in range(15):
            s = connect(api_server, source=source)
            try:
                s.sendall(head("GET", "/v1/devices", token))
                a = read_answer(s)
                assert a is not None and a.status == 401, a
            finally:
                s.close()
    for source, _, why in cases:
        pat = re.compile(r"api: GET /v1/devices from %s refused: %s" % (re.escape(source), why))
        assert wait_until(lambda: pat.search(api_server.log()), timeout=3.0), \
            "no log line for %s (%s)" % (source, why)
        n = len(pat.findall(api_server.log()))
        # Each shard has its own window; a window may end during the burst.
        assert 1 <= n <= 2 * SHARDS, "%d lines for 15 failures from %s" % (n, source)
    log = api_server.log()
    assert secret not in log and "7" * 32 not in log, "the token is in the log"


# ------------------------------------------- idle, silent and finished sockets

MAXC = 40  # http_max_connections in the tests below: a few sockets fill a shard


def test_finished_keepalive_connections_do_not_take_the_api(api_server_factory):
    """Issue 9 (3), r4 after200: every connection asks one authenticated
    question, reads its 200, and stays open and silent (keep-alive). More of
    them than every shard has places: each still gets its answer (an idle
    one is closed to make room, the oldest first), and /v1/health and a new
    authenticated request answer at once."""
    srv = api_server_factory(http_max_connections=MAXC, http_idle_timeout=60,
                             http_max_per_address=0)
    tok = srv.admin_token()
    socks = []
    try:
        for i in range(MAXC * SHARDS + 10):
            s = connect(srv)
            socks.append(s)
            s.sendall(head("GET", "/v1/devices", tok))
            try:
                a = read_answer(s, timeout=5.0)
            except socket.timeout:
                a = "no answer within 5 s"
            assert a is not None and a != "no answer within 5 s" and a.status == 200, (i, a)
        r = health(srv, timeout=5.0)
        assert r.status == 200, r
        r = api(srv, "GET", "/v1/devices", timeout=5.0)
        assert r.status == 200, r
    finally:
        for s in socks:
            s.close()


def test_silent_connections_do_not_take_the_api(api_server_factory):
    """Issue 9 (3), r4 idle: sockets that connect and send nothing, more
    than every shard has places, opened while /v1/health is asked: a new
    request is never stuck behind them for http_request_timeout (each
    shard closes the oldest silent socket to make room, and gives silent
    sockets 2 s when places are short)."""
    srv = api_server_factory(http_max_connections=MAXC, http_request_timeout=30,
                             http_max_per_address=0)
    socks = []
    try:
        for _ in range(MAXC * SHARDS + 10):
            socks.append(connect(srv))
        r = health(srv, timeout=5.0)
        assert r.status == 200, r
        r = api(srv, "GET", "/v1/devices", timeout=5.0)
        assert r.status == 200, r
        # More silent sockets while they are cut: still answered.
        for _ in range(MAXC):
            socks.append(connect(srv))
        r = health(srv, timeout=5.0)
        assert r.status == 200, r
        # The server closes silent sockets well before http_request_timeout.
        assert sees_close(socks[0], timeout=10.0)
    finally:
        for s in socks:
            s.close()


def test_connections_per_address_limited(api_server_factory):
    """http_max_per_address: past it a connection from that address is
    closed at accept, unanswered (logged, rate-limited); another address is
    served, and so is the first one once it closes some."""
    srv = api_server_factory(shards=1, http_max_per_address=3, http_max_connections=MAXC)
    tok = srv.admin_token()
    socks = []
    try:
        for _ in range(3):
            s = connect(srv, source="127.0.0.7")
            s.sendall(head("GET", "/v1/devices", tok))
            a = read_answer(s)
            assert a is not None and a.status == 200, a
            socks.append(s)
        extra = connect(srv, source="127.0.0.7")
        socks.append(extra)
        extra.sendall(head("GET", "/v1/devices", tok))
        assert read_answer(extra) is None  # closed without an answer
        other = connect(srv, source="127.0.0.8")
        socks.append(other)
        other.sendall(head("GET", "/v1/devices", tok))
        a = read_answer(other)
        assert a is not None and a.status == 200, a
        assert wait_until(lambda: "from 127.0.0.7 refused" in srv.log(), timeout=3.0)
        socks.pop(0).close()

        def again():
            s = connect(srv, source="127.0.0.7")
            socks.append(s)
            s.sendall(head("GET", "/v1/devices", tok))
            a = read_answer(s)
            return a is not None and a.status == 200
        assert wait_until(again, timeout=3.0)
    finally:
        for s in socks:
            s.close()
