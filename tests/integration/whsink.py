"""A webhook receiver for the integration tests: an HTTP/1.1 keep-alive
server on 127.0.0.1 (a free port unless one is given), run by threads of the
test process, that records every request and answers as the test scripts it.

    with Sink() as sink:                     # started; sink.url = "http://127.0.0.1:<port>"
        sink.answer(200)                     # every request: 200 (the default)
        sink.sequence([500, 500], then=200)  # the next two get 500, then 200 for good
        sink.sequence([Answer(503, retry_after=2)])
        sink.answer(Answer(200, delay=1.5))  # answer after 1.5 s
        sink.black_hole()                    # read requests, never answer
        sink.answer(410)
        sink.down(); ...; sink.up()          # stop listening and cut every connection; listen again, same port
        reqs = sink.wait_for(3, timeout=10)  # >= 3 requests, or SinkTimeout with what did arrive
        sink.ids(), sink.duplicates()        # distinct webhook-id values; {id: count} of those seen twice or more

The idea needed to read it: each request takes its answer when it has been
read whole (headers and body), under the sink's lock, so concurrent requests
consume a sequence in arrival order; the Request it records carries the
answer it got (status None: never answered). A black-holed or delayed request
holds its connection until down() or stop() cuts it (a delay ends early then,
without an answer). Requests are recorded in arrival order with their arrival
time (time.monotonic() and time.time()) and the number of the TCP connection
they came on (connection reuse shows as repeated numbers).

Thread: every method may be called from any thread. Every wait is bounded.
`python3 whsink.py` runs its self-test.
"""

import http.server
import json
import socket
import threading
import time

__all__ = ["Sink", "Answer", "Request", "SinkTimeout"]


class SinkTimeout(AssertionError):
    """A wait of the sink ended without what it waited for."""


class Answer:
    """How to answer one request. status None = never answer (black hole).
    retry_after: seconds (int) or an HTTP date (str) for Retry-After.
    delay: seconds before answering. body: bytes or str; headers: dict."""

    def __init__(self, status=200, *, delay=0.0, retry_after=None, body=b"", headers=None):
        self.status = status
        self.delay = float(delay)
        self.retry_after = retry_after
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.headers = dict(headers or {})

    def __repr__(self):
        return "Answer(%r, delay=%r, retry_after=%r)" % (self.status, self.delay, self.retry_after)


def _answer(a):
    return a if isinstance(a, Answer) else Answer(int(a))


class Request:
    """One request as the sink read it. headers: lower-case names (repeated
    names joined with ", "); raw_headers: [(name, value)] as sent."""

    def __init__(self, method, path, raw_headers, body, conn, t, wall):
        self.method = method
        self.path = path
        self.raw_headers = raw_headers
        self.headers = {}
        for k, v in raw_headers:
            k = k.lower()
            self.headers[k] = self.headers[k] + ", " + v if k in self.headers else v
        self.body = body
        self.conn = conn   # number of the TCP connection, from 1
        self.t = t         # time.monotonic() when read whole
        self.wall = wall   # time.time() likewise
        self.status = None  # the status answered (None: not, or not yet)

    @property
    def webhook_id(self):
        return self.headers.get("webhook-id")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%s %s id=%s conn=%d status=%s %dB>" % (self.method, self.path, self.webhook_id,
                                                        self.conn, self.status, len(self.body))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says close

    def setup(self):
        super().setup()
        self.conn_no = self.server.sink._conn_opened(self.connection, self.server)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.sink._conn_closed(self.connection)

    def log_message(self, format, *args):
        pass

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            body = bytearray()
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ConnectionError("eof in a chunked body")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline(1024)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if len(body) != n:
            raise ConnectionError("eof in the body")
        return body

    def _serve(self):
        sink = self.server.sink
        try:
            body = self._read_body()
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        req = Request(self.command, self.path, list(self.headers.items()), body, self.conn_no,
                      time.monotonic(), time.time())
        a, cut = sink._arrived(req)
        if a.status is None or (a.delay > 0 and cut.wait(a.delay)):
            cut.wait(sink.HOLD_MAX)  # black hole (or cut mid-delay): until down()/stop()
            self.close_connection = True
            return
        self.send_response(a.status)
        if a.retry_after is not None:
            self.send_header("Retry-After", str(a.retry_after))
        for k, v in a.headers.items():
            self.send_header(k, v)
        no_body = a.status in (204, 304) or a.status < 200 or self.command == "HEAD"
        if not no_body:
            self.send_header("Content-Length", str(len(a.body)))
        self.end_headers()
        if not no_body:
            self.wfile.write(a.body)
        req.status = a.status

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128


class Sink:
    """The receiver. Sink(port=0) picks a free port; start() (or `with`)
    listens and serves; stop() cuts everything and joins the server thread."""

    HOLD_MAX = 120.0  # a black-holed request is cut after this many seconds at most

    def __init__(self, host="127.0.0.1", port=0):
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests = []
        self._default = Answer(200)
        self._queue = []
        self._conns = {}  # socket -> connection number
        self._conn_count = 0
        self._cut = threading.Event()  # set on down()/stop(): held requests end
        self._server = None
        self._thread = None

    # ---- life
    def start(self):
        assert self._server is None, "sink already listening"
        srv = _Server((self.host, self.port), _Handler)
        srv.sink = self
        th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              name="whsink-%d" % srv.server_address[1], daemon=True)
        with self._lock:
            self._cut = threading.Event()
            self._server, self._thread = srv, th
            self.port = srv.server_address[1]
        th.start()
        return self

    def down(self):
        """Stop listening (new connections are refused) and cut every open
        connection, answering nothing more."""
        with self._lock:  # from here on, a connection of this server cuts itself
            srv, th, self._server, self._thread = self._server, self._thread, None, None
            conns = list(self._conns)
        if srv is None:
            return
        srv.shutdown()
        srv.server_close()
        th.join(5)
        self._cut.set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def up(self):
        """Listen again on the same port."""
        return self.start()

    stop = down

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    @property
    def listening(self):
        return self._server is not None

    # ---- script
    def answer(self, a=200):
        """Every request from now on (after any sequence): a status or an Answer."""
        with self._lock:
            self._default = _answer(a)

    def sequence(self, answers, then=None):
        """The next requests get these answers, one each, in arrival order;
        after them the default (replaced by `then` when given)."""
        with self._lock:
            self._queue = [_answer(a) for a in answers]
            if then is not None:
                self._default = _answer(then)

    def black_hole(self):
        """Read every request, never answer (until down() or stop())."""
        self.answer(Answer(None))

    # ---- records
    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    @property
    def count(self):
        with self._lock:
            return len(self._requests)

    @property
    def connections(self):
        """How many TCP connections were accepted so far."""
        with self._lock:
            return self._conn_count

    def clear(self):
        with self._lock:
            self._requests = []

    def wait(self, pred, timeout=10.0, what="the condition"):
        """Wait until pred(requests) is true; returns the requests then.
        SinkTimeout after timeout seconds, naming what and what arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(list(self._requests)):
                left = deadline - time.monotonic()
                if left <= 0:
                    rs = self._requests
                    raise SinkTimeout("whsink %s: waited %.1f s for %s; got %d requests%s%s" % (
                        self.url, timeout, what, len(rs), ": " if rs else "",
                        ", ".join(repr(r) for r in rs[-10:])))
                self._cond.wait(left)
            return list(self._requests)

    def wait_for(self, n, timeout=10.0):
        """At least n requests (returns them all)."""
        return self.wait(lambda rs: len(rs) >= n, timeout, "%d requests" % n)

    def wait_for_ids(self, n, timeout=10.0):
        """At least n distinct webhook-id values (returns all requests)."""
        return self.wait(lambda rs: len(_ids(rs)) >= n, timeout, "%d distinct webhook-ids" % n)

    def ids(self):
        """The distinct webhook-id values, in order of first arrival."""
        return _ids(self.requests)

    def duplicates(self):
        """{webhook-id: count} of the ids that arrived more than once."""
        seen = {}
        for r in self.requests:
            if r.webhook_id is not None:
                seen[r.webhook_id] = seen.get(r.webhook_id, 0) + 1
        return {k: v for k, v in seen.items() if v > 1}

    # ---- from the handler threads
    def _arrived(self, req):
        with self._cond:
            a = self._queue.pop(0) if self._queue else self._default
            self._requests.append(req)
            self._cond.notify_all()
            return a, self._cut

    def _conn_opened(self, s, server):
        with self._lock:
            self._conn_count += 1
            self._conns[s] = self._conn_count
            if server is not self._server:  # accepted as down() began
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return self._conn_count

    def _conn_closed(self, s):
        with self._lock:
            self._conns.pop(s, None)


def _ids(rs):
    out, seen = [], set()
    for r in rs:
        i = r.webhook_id
        if i is not None and i not in seen:
            seen.add(i)
            out.append(i)
    return out


def _selftest():
    """The sink against http.client and a raw socket (python3 whsink.py)."""
    import http.client

    def post(c, wid):
        c.request("POST", "/h", body=b"{}", headers={"webhook-id": wid})
        r = c.getresponse()
        return r.status, r.getheader("Retry-After"), r.read()

    threads = threading.active_count()
    with Sink() as s:
        c = http.client.HTTPConnection(s.host, s.port, timeout=5)
        s.sequence([500, Answer(503, retry_after=7)], then=Answer(204))
        got = [post(c, w) for w in ("a", "b", "a", "c")]
        assert got == [(500, None, b""), (503, "7", b""), (204, None, b""), (204, None, b"")], got
        assert s.ids() == ["a", "b", "c"] and s.duplicates() == {"a": 2}
        assert {r.conn for r in s.requests} == {1}, "keep-alive: one connection"
        s.answer(Answer(200, delay=0.3, body="ok"))
        t0 = time.monotonic()
        assert post(c, "d")[2] == b"ok" and time.monotonic() - t0 >= 0.3
        raw = socket.create_connection((s.host, s.port))  # pipelined, chunked, split
        msg = (b"POST /x HTTP/1.1\r\nwebhook-id: e\r\nContent-Length: 3\r\n\r\nabc"
               b"POST /y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n1;k=v\r\nz\r\n0\r\n\r\n")
        for i in range(0, len(msg), 5):
            raw.sendall(msg[i:i + 5])
        rs = s.wait_for(7, timeout=2)  # a b a c d, then the two raw ones
        assert [r.body for r in rs[-2:]] == [b"abc", b"xyz"], rs
        s.black_hole()
        c2 = http.client.HTTPConnection(s.host, s.port, timeout=0.3)
        try:
            post(c2, "f")
            raise AssertionError("a black hole answered")
        except socket.timeout:
            pass
        try:
            s.wait_for(100, timeout=0.1)
            raise AssertionError("wait_for did not time out")
        except SinkTimeout as e:
            assert "100 requests" in str(e)
        s.down()  # cuts the held request and the idle keep-alive connections: their threads end
        deadline = time.monotonic() + 2
        while threading.active_count() > threads and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() == threads, threading.enumerate()
        try:
            socket.create_connection((s.host, s.port), timeout=1)
            raise AssertionError("still listening while down")
        except ConnectionRefusedError:
            pass
        s.up()
        s.answer(410)
        assert post(http.client.HTTPConnection(s.host, s.port, timeout=5), "g")[0] == 410
    print("whsink self-test passed")


if __name__ == "__main__":
    _selftest()
