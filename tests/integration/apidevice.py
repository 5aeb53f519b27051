"""Both sides of cyan's HTTP API for the integration tests.

The device side: ApiDevice, a paho-mqtt device following the convention of
docs/device-protocol.md ("The device convention"), for MQTT 3.1.1 and 5.0:

    dev = ApiDevice(server, device, version=5,
                    functions={"led": lambda arg: "1"},
                    variables={"temperature": lambda: 21.5})
    dev.start()            # connect, subscribe call/# and get/#, describe
    ...
    dev.close()

It connects with client id = device id, subscribes devices/<id>/call/# and
devices/<id>/get/# at QoS 1, publishes its describe (retained, QoS 1) after
every connect, and answers: MQTT 3.1.1 requests (devices/<id>/call/<f>/<req>)
on devices/<id>/reply/<req>, MQTT 5 requests (devices/<id>/call/<f>) on their
Response Topic with their Correlation Data. A function returning None does
not answer (the caller then gets 504). It records every request it got
(calls), every shared event it got (events, with events=True), and
reconnects by itself when its connection is lost (a shard killed or
restarted), with a short backoff.

The application side: api() (one HTTP request with curl, a new connection
each time, so with several shards requests land on different shards) and
SseStream (a server-sent event stream read by a thread over a raw socket).

Every wait here is bounded in time.
"""

import json
import os
import queue
import re
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers import rc_value

__all__ = ["ApiDevice", "Call", "api", "Response", "SseStream", "SseEvent", "TOKEN_RE",
           "ISO_MS_RE", "parse_time"]

TOKEN_RE = re.compile(r"cyt_[0-9a-f]{12}_[0-9a-f]{32}")
# UTC, ISO 8601 with milliseconds (docs/api.md).
ISO_MS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# A device's functions and variables for the API tests (test_api,
# test_particle_paths), each answering one kind of value.
FUNCTIONS = {
    "num": lambda arg: "42",
    "float": lambda arg: "21.5",
    "tenth": lambda arg: "0.1",                # 0.1, not 0.1000000000000000055511
    "obj": lambda arg: '{"a": [1, 2], "b": "x"}',
    "str": lambda arg: "hello world",          # not JSON: returned as a string
    "quoted": lambda arg: '"quoted"',          # a JSON string
    "echo": lambda arg: arg,                   # its arg back: JSON if it parses, else a string
    "led": lambda arg: "1" if arg == "on" else "0",
    "silent": lambda arg: None,                # never answers
}
VARIABLES = {
    "temperature": lambda: 21.5,
    "status": lambda: "ok",                    # not JSON: a string
    "config": lambda: {"x": 1, "y": [True, None]},
    "silent": lambda: None,
}


def parse_time(text):
    """Seconds since the epoch from an API time ("2026-11-24T06:00:00.000Z")."""
    import datetime
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def _payload(value):
    """What a device publishes for a return value / variable value."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


class Call:
    """One request a device received: kind "call" or "get", the function or
    variable name, the argument (str), the request id (3.1.1: last topic
    level; 5.0: the Correlation Data, bytes), and the response topic (5.0)."""

    def __init__(self, kind, name, arg, request_id, response_topic, topic, at):
        self.kind = kind
        self.name = name
        self.arg = arg
        self.request_id = request_id
        self.response_topic = response_topic
        self.topic = topic
        self.at = at

    def __repr__(self):
        return "Call(%s %s arg=%r req=%r resp=%r)" % (self.kind, self.name, self.arg[:40],
                                                      self.request_id, self.response_topic)


class ApiDevice:
    """A device speaking the convention (see the module docstring).

    device: an object with .id and .secret (helpers.Device, or the dict the
    API returns on creation: {"id", "secret", ...}), or a (id, secret) pair.
    functions: {name: callable(arg: str) -> bytes | str | JSON-able | None}
    variables: {name: callable() -> bytes | str | JSON-able}
    describe: True (publish {"functions": [...], "variables": [...]} from the
    dicts after each connect), False (publish nothing), or bytes/str/dict
    published as is.
    events: also subscribe to events/# (shared events land in .events).
    reconnect: reconnect by itself when the connection is lost.
    """

    def __init__(self, server, device, version=5, functions=None, variables=None,
                 describe=True, events=False, reconnect=True, keepalive=30, client_id=None,
                 reply_qos=1):
        if isinstance(device, dict):
            self.id, self.secret = device["id"], device["secret"]
        elif isinstance(device, (tuple, list)) and len(device) == 2:
            self.id, self.secret = device
        else:
            self.id, self.secret = device.id, device.secret
        self.server = server
        self.version = version
        self.functions = dict(functions or {})
        self.variables = dict(variables or {})
        self.describe_payload = describe
        self.want_events = events
        self.reconnect = reconnect
        self.keepalive = keepalive
        self.reply_qos = reply_qos
        self.client_id = self.id if client_id is None else client_id
        self.base = "devices/%s/" % self.id

        self.calls = []           # [Call]
        self.events = []          # [(topic, payload bytes)] of shared events (events=True)
        self.messages = []        # every other message received: (topic, payload)
        self.errors = []          # convention violations seen from the server
        self.connacks = []        # CONNACK reason codes, in order
        self.connects = 0         # successful CONNACKs
        self.disconnects = 0      # connections lost or closed
        self._cv = threading.Condition()
        self._ready = False       # connected, subscribed and described (this connection)
        self._pending = {}        # mid -> what (subscribe / describe) for this connection
        self._stop = threading.Event()
        self._thread = None
        self._sock_ok = False

        proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        if version == 5:
            self.c = mqtt.Client(client_id=self.client_id, protocol=proto)
        else:
            self.c = mqtt.Client(client_id=self.client_id, protocol=proto, clean_session=True)
        self.c.username_pw_set(self.id, self.secret)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect

    # ------------------------------------------------------------ describe
    def describe_bytes(self):
        d = self.describe_payload
        if d is True:
            return json.dumps({"functions": sorted(self.functions),
                               "variables": sorted(self.variables)}).encode()
        if d is False or d is None:
            return None
        if isinstance(d, dict):
            return json.dumps(d).encode()
        return _payload(d)

    def describe(self, functions=None, variables=None, payload=None, timeout=5.0):
        """Publish a new describe now (retained, QoS 1) and wait for its
        PUBACK. With functions/variables (dicts name -> callable) the device
        also serves them from now on; with payload, that is published as is."""
        if functions is not None:
            self.functions = dict(functions)
        if variables is not None:
            self.variables = dict(variables)
        if payload is not None:
            self.describe_payload = payload
        elif functions is not None or variables is not None:
            self.describe_payload = True
        data = self.describe_bytes()
        info = self.c.publish(self.base + "describe", data or b"", 1, True)
        info.wait_for_publish(timeout)
        assert info.is_published(), "describe of %s not acknowledged within %.1fs" % (
            self.id, timeout)

    # ------------------------------------------------------------ callbacks (loop thread)
    def _on_connect(self, c, ud, flags, rc, props=None):
        rc = rc_value(rc)
        with self._cv:
            self.connacks.append(rc)
            self._cv.notify_all()
        if rc != 0:
            return
        subs = [(self.base + "call/#", 1), (self.base + "get/#", 1)]
        if self.want_events:
            subs.append(("events/#", 1))
        pending = {}
        if self.version == 5:
            from paho.mqtt.subscribeoptions import SubscribeOptions
            _, mid = c.subscribe([(t, SubscribeOptions(qos=q)) for t, q in subs])
        else:
            _, mid = c.subscribe(subs)
        pending[mid] = "subscribe"
        data = self.describe_bytes()
        if data is not None:
            info = c.publish(self.base + "describe", data, 1, True)
            pending[info.mid] = "describe"
        with self._cv:
            self.connects += 1
            self._ready = False
            self._pending = pending
            self._cv.notify_all()

    def _done(self, mid):
        with self._cv:
            if self._pending.pop(mid, None) is not None and not self._pending:
                self._ready = True
            self._cv.notify_all()

    def _on_subscribe(self, c, ud, mid, granted, props=None):
        codes = [rc_value(g) for g in granted]
        if any(g >= 0x80 for g in codes):
            self.errors.append("SUBACK refused %r" % codes)
        self._done(mid)

    def _on_publish(self, c, ud, mid):
        self._done(mid)

    def _on_disconnect(self, c, ud, rc, props=None):
        with self._cv:
            self.disconnects += 1
            self._ready = False
            self._cv.notify_all()

    def _on_message(self, c, ud, msg):
        topic = msg.topic
        if topic.startswith("events/"):
            with self._cv:
                self.events.append((topic, bytes(msg.payload)))
                self._cv.notify_all()
            return
        for kind in ("call", "get"):
            prefix = self.base + kind + "/"
            if topic.startswith(prefix):
                self._request(kind, topic, topic[len(prefix):], msg)
                return
        with self._cv:
            self.messages.append((topic, bytes(msg.payload)))
            self._cv.notify_all()

    def _request(self, kind, topic, rest, msg):
        levels = rest.split("/")
        props = getattr(msg, "properties", None)
        resp_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        try:
            arg = bytes(msg.payload).decode("utf-8")
        except UnicodeDecodeError:
            arg = bytes(msg.payload).decode("latin-1")
            self.errors.append("non UTF-8 argument on %s" % topic)
        if self.version == 5:
            if len(levels) != 1 or resp_topic is None or corr is None:
                self.errors.append("MQTT 5 request without Response Topic / Correlation Data "
                                   "or with extra levels: %s %r %r" % (topic, resp_topic, corr))
            name, req = levels[0], corr
        else:
            if len(levels) != 2:
                self.errors.append("MQTT 3.1.1 request topic without a request id: %s" % topic)
                name, req = levels[0], None
            else:
                name, req = levels
        call = Call(kind, name, arg, req, resp_topic, topic, time.monotonic())
        with self._cv:
            self.calls.append(call)
            self._cv.notify_all()
        if kind == "call":
            fn = self.functions.get(name)
            value = fn(arg) if fn is not None else None
        else:
            fn = self.variables.get(name)
            value = fn() if fn is not None else None
        data = _payload(value)
        if data is None or req is None:
            return
        if self.version == 5:
            p = Properties(PacketTypes.PUBLISH)
            p.CorrelationData = corr
            self.c.publish(resp_topic or (self.base + "reply"), data, self.reply_qos, False,
                           properties=p)
        else:
            self.c.publish(self.base + "reply/" + req, data, self.reply_qos, False)

    # ------------------------------------------------------------ loop thread
    def _run(self):
        backoff = 0.1
        for _ in range(10 ** 8):
            if self._stop.is_set():
                return
            if self._sock_ok:
                try:
                    rc = self.c.loop(timeout=0.05)
                except (OSError, ValueError, AttributeError):
                    rc = mqtt.MQTT_ERR_CONN_LOST
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    self._sock_ok = False
                    with self._cv:
                        self._ready = False
                        self._cv.notify_all()
                    if not self.reconnect:
                        return
                continue
            if self._stop.wait(backoff):
                return
            try:
                self.c.reconnect()
                self._sock_ok = True
                backoff = 0.1
            except (OSError, ValueError):
                backoff = min(backoff * 2, 0.5)

    # ------------------------------------------------------------ api
    def start(self, timeout=5.0, wait_ready=True):
        """Connect (CONNACK 0 expected), subscribe, describe; with wait_ready,
        wait until the SUBACK and the describe's PUBACK arrived."""
        kw = {}
        if self.version == 5:
            kw = dict(clean_start=True)
        self._stop.clear()
        self.c.connect(self.server.host, self.server.port, self.keepalive, **kw)
        self._sock_ok = True
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="apidevice-%s" % self.id[:8])
        self._thread.start()
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self.connacks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("device %s: no CONNACK within %.1fs" % (self.id, timeout))
                self._cv.wait(left)
            if self.connacks[0] != 0:
                rc = self.connacks[0]
                self._stop.set()
                raise AssertionError("device %s: CONNACK 0x%02x" % (self.id, rc))
        if wait_ready:
            self.wait_ready(max(0.1, deadline - time.monotonic()))
        return self

    def wait_ready(self, timeout=5.0):
        """Connected, subscribed and described (on the current connection)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self._ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("device %s not ready within %.1fs (connacks %r, "
                                         "errors %r)" % (self.id, timeout, self.connacks,
                                                         self.errors))
                self._cv.wait(left)

    @property
    def ready(self):
        with self._cv:
            return self._ready

    def wait_reconnected(self, after, timeout=10.0):
        """Wait until connects > after and the device is ready again."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not (self.connects > after and self._ready):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("device %s did not reconnect within %.1fs "
                                         "(connacks %r)" % (self.id, timeout, self.connacks))
                self._cv.wait(left)

    def wait_gone(self, timeout=3.0):
        """True once the connection was lost or closed (disconnects > 0)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.disconnects == 0 and self._sock_ok:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
            return True

    def _wait_first(self, what, items, n, timeout):
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(items) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("device %s got %d of %d %s within %.1fs: %r" % (
                        self.id, len(items), n, what, timeout, items))
                self._cv.wait(left)
            return list(items[:n])

    def wait_calls(self, n, timeout=3.0):
        """The first n requests received (AssertionError after timeout)."""
        return self._wait_first("requests", self.calls, n, timeout)

    def wait_events(self, n, timeout=3.0):
        """The first n shared events received: [(topic, payload)]."""
        return self._wait_first("events", self.events, n, timeout)

    def publish(self, topic, payload=b"", qos=1, retain=False, timeout=5.0):
        info = self.c.publish(topic, payload, qos, retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, "publish failed locally: %d" % info.rc
        if qos > 0:
            info.wait_for_publish(timeout)
            assert info.is_published(), "publish on %s not acknowledged within %.1fs" % (
                topic, timeout)
        return info

    def publish_event(self, name, data=b"", qos=1, timeout=5.0):
        """An event of this device: devices/<id>/events/<name>."""
        return self.publish(self.base + "events/" + name, data, qos, False, timeout)

    def publish_shared(self, name, data=b"", qos=1, timeout=5.0):
        """An event of the shared space: events/<name>."""
        return self.publish("events/" + name, data, qos, False, timeout)

    def close(self, timeout=3.0):
        """Normal DISCONNECT (if connected), stop the loop thread. Bounded."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None
        if self._sock_ok:
            try:
                self.c.disconnect()
                for _ in range(20):  # let the DISCONNECT leave
                    if self.c.loop(timeout=0.01) != mqtt.MQTT_ERR_SUCCESS:
                        break
            except Exception:
                pass
        self._sock_ok = False
        try:
            sock = self.c.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass

    def kill(self):
        """Drop the TCP connection without DISCONNECT, and stop."""
        import struct
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3.0)
            self._thread = None
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            sock.close()
        self._sock_ok = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ==================================================================== HTTP

class _Default:
    def __repr__(self):
        return "<admin token>"


ADMIN = _Default()
_MARK = "\n@@cyan-test@@"


class Response:
    """status (int), headers ({lowercase name: value}), body (the JSON value,
    or None if the body is not JSON), text (the raw body), elapsed (s)."""

    def __init__(self, status, headers, text, elapsed, request):
        self.status = status
        self.headers = headers
        self.text = text
        self.elapsed = elapsed
        self.request = request
        try:
            self.body = json.loads(text) if text else None
        except ValueError:
            self.body = None

    def __iter__(self):  # (status, headers, body) = api(...)
        return iter((self.status, self.headers, self.body))

    @property
    def error(self):
        return self.body.get("error") if isinstance(self.body, dict) else None

    def __repr__(self):
        return "%s -> %s in %.3fs: %r; headers %r" % (self.request, self.status, self.elapsed,
                                                     self.text[:600], self.headers)


def api(server, method, path, token=ADMIN, json_body=None, data=None, headers=None,
        timeout=10.0, **kw):
    """One HTTP request with curl (a new connection). token: ADMIN (the
    server's admin token), None (no Authorization header) or a token string.
    json=... sends that value as JSON; data=... sends bytes/str as is.
    Returns a Response; curl failures (no answer within timeout, connection
    refused, empty reply) raise AssertionError."""
    if "json" in kw:
        json_body = kw.pop("json")
    assert not kw, "unknown arguments %r" % kw
    argv = ["curl", "-s", "-S", "-o", "-", "-D", "-", "-w", _MARK + "%{http_code} %{time_total}",
            "--max-time", "%g" % timeout, "-X", method, "-H", "Expect:"]
    if token is ADMIN:
        token = server.admin_token()
    if token is not None:
        argv += ["-H", "Authorization: Bearer %s" % token]
    body = None
    if json_body is not None:
        body = json.dumps(json_body).encode()
        argv += ["-H", "Content-Type: application/json"]
    elif data is not None:
        body = data.encode() if isinstance(data, str) else bytes(data)
    if body is not None:
        argv += ["--data-binary", "@-"]
    for k, v in (headers or {}).items():
        argv += ["-H", "%s: %s" % (k, v)]
    argv.append(server.api_url + path)
    req = "%s %s" % (method, path)
    t0 = time.monotonic()
    cp = subprocess.run(argv, input=body if body is not None else b"", capture_output=True,
                        timeout=timeout + 5)
    elapsed = time.monotonic() - t0
    out = cp.stdout.decode("utf-8", "replace")
    if cp.returncode != 0 or _MARK not in out:
        raise AssertionError("%s: curl exited %d after %.2fs: %s\n%s" % (
            req, cp.returncode, elapsed, cp.stderr.decode("utf-8", "replace").strip(), out[:2000]))
    out, mark = out.rsplit(_MARK, 1)
    status = int(mark.split()[0])
    # Header blocks (1xx ones first), then the body.
    headers = {}
    for _ in range(10):
        head, sep, rest = out.partition("\r\n\r\n")
        if not sep:
            head, rest = out, ""
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        out = rest
        if not re.match(r"HTTP/\S+ 1\d\d", lines[0]):
            break
    return Response(status, headers, out, elapsed, req)


# -------------------------------------------------------------------- SSE

class SseEvent:
    """One server-sent event: id, event (the SSE type), data (the raw text)
    and json (data parsed, or None)."""

    def __init__(self, id, event, data):
        self.id = id
        self.event = event
        self.data = data
        try:
            self.json = json.loads(data)
        except ValueError:
            self.json = None

    @property
    def name(self):
        return self.json.get("name") if isinstance(self.json, dict) else None

    @property
    def payload(self):
        return self.json.get("data") if isinstance(self.json, dict) else None

    def __repr__(self):
        return "SseEvent(id=%r, event=%r, data=%s)" % (self.id, self.event, self.data[:300])


class SseStream:
    """GET path as text/event-stream on a raw socket, read by a thread.

    s = SseStream(server, "/v1/events", token, last_event_id=None)
    s.status, s.headers     the answer (if not 200, body holds its text)
    s.next(timeout)         the next event (comments are skipped, kept in
                            s.comments and also in s.items in order)
    s.close()
    """

    def __init__(self, server, path, token=ADMIN, last_event_id=None, headers=None,
                 timeout=5.0, paused=False, rcvbuf=None):
        """paused: the reader does not read the body until resume() (a slow
        client); rcvbuf: SO_RCVBUF of the socket, set before connecting."""
        if token is ADMIN:
            token = server.admin_token()
        self.path = path
        self.items = []       # ("event", SseEvent) / ("comment", text), in arrival order
        self.comments = []
        self.raw = bytearray()    # the body as received (chunked framing included)
        self.text = bytearray()   # the body, de-chunked
        self.times = []           # monotonic arrival time of each of items
        self.eof = False
        self.error = None
        self._q = queue.Queue()
        self._closed = False
        lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (server.host, server.http_port),
                 "Accept: text/event-stream", "Cache-Control: no-cache"]
        if token is not None:
            lines.append("Authorization: Bearer %s" % token)
        if last_event_id is not None:
            lines.append("Last-Event-ID: %s" % last_event_id)
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        self._go = threading.Event()
        if not paused:
            self._go.set()
        if rcvbuf is None:
            self.sock = socket.create_connection((server.host, server.http_port),
                                                 timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((server.host, server.http_port))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        deadline = time.monotonic() + timeout
        buf = bytearray()
        try:
            while b"\r\n\r\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("GET %s: no response headers within %.1fs (got %r)" % (
                        path, timeout, bytes(buf)))
                self.sock.settimeout(left)
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    raise AssertionError("GET %s: connection closed before the headers (%r)" % (
                        path, bytes(buf)))
                buf += data
        except BaseException:
            self.sock.close()
            raise
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        hl = head.decode("latin-1").split("\r\n")
        self.status = int(hl[0].split()[1])
        self.headers = {}
        for line in hl[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.body = b""
        if self.status != 200:
            # An error answer: read its (small) body, bounded.
            n = int(self.headers.get("content-length", "0") or 0)
            body = bytearray(rest)
            end = time.monotonic() + 2
            while len(body) < n and time.monotonic() < end:
                self.sock.settimeout(max(0.01, end - time.monotonic()))
                try:
                    data = self.sock.recv(65536)
                except (socket.timeout, OSError):
                    break
                if not data:
                    break
                body += data
            self.body = bytes(body[:n]) if n else bytes(body)
            try:
                self.json = json.loads(self.body)
            except ValueError:
                self.json = None
            self.sock.close()
            self._closed = True
            return
        self.sock.settimeout(0.2)  # the reader's poll period
        self._thread = threading.Thread(target=self._read, args=(bytes(rest),), daemon=True)
        self._thread.start()

    # ---- reader thread
    def _read(self, rest):
        dechunk = _Dechunker() if self.chunked else None
        parser = _SseParser()
        data = rest
        for _ in range(10 ** 6):
            if self._go.wait(0.1) or self._closed:
                break
        for _ in range(10 ** 8):
            if data:
                self.raw += data
                text = dechunk.feed(data) if dechunk else data
                self.text += text
                for kind, item in parser.feed(text):
                    self._q.put((kind, item))
                if dechunk is not None and dechunk.done:
                    break
            if self._closed:
                return
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                data = b""
                continue
            except OSError as e:
                self.error = e
                break
            if not data:
                break
        self.eof = True
        self._q.put(("eof", None))

    # ---- reading
    def _get(self, timeout):
        try:
            kind, item = self._q.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if kind == "eof":
            self._q.put((kind, item))  # stays at the end
            return ("eof", None)
        self.items.append((kind, item))
        self.times.append(time.monotonic())
        if kind == "comment":
            self.comments.append(item)
        return kind, item

    def next(self, timeout=3.0):
        """The next event; AssertionError on timeout or end of stream."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            got = self._get(deadline - time.monotonic())
            if got is None:
                raise AssertionError("GET %s: no event within %.1fs (items so far: %r)" % (
                    self.path, timeout, self.items[-10:]))
            kind, item = got
            if kind == "eof":
                raise AssertionError("GET %s: stream ended (items: %r)" % (self.path,
                                                                           self.items[-10:]))
            if kind == "event":
                return item
        raise AssertionError("too many comments")

    def next_item(self, timeout=3.0):
        """The next event or comment: ("event", SseEvent) / ("comment", text);
        None on timeout, ("eof", None) at the end of the stream."""
        return self._get(timeout)

    def take(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        return [self.next(max(0.0, deadline - time.monotonic())) for _ in range(n)]

    def wait_comment(self, pred, timeout=3.0):
        """The first comment (already received or arriving) for which
        pred(text) holds, or None after timeout. Events read meanwhile are
        kept in items."""
        for c in self.comments:
            if pred(c):
                return c
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            got = self._get(deadline - time.monotonic())
            if got is None or got[0] == "eof":
                return None
            if got[0] == "comment" and pred(got[1]):
                return got[1]
        return None

    def expect_no_event(self, timeout=0.5):
        """Assert no event arrives within timeout (comments are fine)."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            got = self._get(deadline - time.monotonic())
            if got is None or got[0] == "eof":
                return
            if got[0] == "event":
                raise AssertionError("GET %s: unexpected event %r" % (self.path, got[1]))

    def events(self):
        return [item for kind, item in self.items if kind == "event"]

    def resume(self):
        """Start reading (a stream opened with paused=True)."""
        self._go.set()

    def wait_eof(self, timeout=5.0):
        """Read on until the server ends the stream: True, or False after
        timeout. Everything read meanwhile lands in items."""
        deadline = time.monotonic() + timeout
        for _ in range(10 ** 6):
            got = self._get(deadline - time.monotonic())
            if got is None:
                return False
            if got[0] == "eof":
                return True
        return False

    def close(self):
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        t = getattr(self, "_thread", None)
        if t is not None:
            t.join(2.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Dechunker:
    """HTTP/1.1 chunked transfer decoding, incremental."""

    def __init__(self):
        self.buf = bytearray()
        self.state = "size"  # size, data, crlf
        self.left = 0
        self.done = False

    def feed(self, data):
        self.buf += data
        out = bytearray()
        for _ in range(10 ** 6):
            if self.done:
                break
            if self.state == "size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(bytes(self.buf[:i]).split(b";")[0].strip() or b"0", 16)
                del self.buf[:i + 2]
                if size == 0:
                    self.done = True
                    break
                self.left, self.state = size, "data"
            elif self.state == "data":
                take = min(self.left, len(self.buf))
                if take == 0:
                    break
                out += self.buf[:take]
                del self.buf[:take]
                self.left -= take
                if self.left == 0:
                    self.state = "crlf"
            else:
                if len(self.buf) < 2:
                    break
                del self.buf[:2]
                self.state = "size"
        return bytes(out)


class _SseParser:
    """text/event-stream parsing (the WHATWG rules, enough for tests):
    yields ("event", SseEvent) at each blank line after data, and
    ("comment", text) for each ':' line."""

    def __init__(self):
        self.buf = b""
        self.id = None
        self.event = None
        self.data = []

    def feed(self, data):
        self.buf += data
        out = []
        for _ in range(10 ** 6):
            i = self.buf.find(b"\n")
            if i < 0:
                break
            line = self.buf[:i].decode("utf-8", "replace")
            self.buf = self.buf[i + 1:]
            if line.endswith("\r"):
                line = line[:-1]
            if line == "":
                if self.data or self.event is not None:
                    out.append(("event", SseEvent(self.id, self.event, "\n".join(self.data))))
                # id: only what this event carried (a test wants each event to
                # name its own id; a browser would keep the last one).
                self.id = None
                self.event = None
                self.data = []
                continue
            if line.startswith(":"):
                out.append(("comment", line[1:].strip()))
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "id":
                self.id = value
            elif field == "event":
                self.event = value
            elif field == "data":
                self.data.append(value)
        return out


# ==================================================================== conveniences

_names = [0]


def new_name(prefix="dev"):
    _names[0] += 1
    return "%s-%d-%s" % (prefix, _names[0], os.urandom(3).hex())


def create_device(server, name=None, token=ADMIN):
    """POST /v1/devices; returns the 201 body {"id", "name", "secret"}."""
    r = api(server, "POST", "/v1/devices", token=token, json={"name": name or new_name()})
    assert r.status == 201, r
    assert isinstance(r.body, dict) and set(r.body) >= {"id", "name", "secret"}, r
    return r.body


def get_device(server, ref, token=ADMIN):
    r = api(server, "GET", "/v1/devices/%s" % ref, token=token)
    assert r.status == 200, r
    return r.body


def wait_device(server, ref, pred, timeout=3.0, what="condition"):
    """GET /v1/devices/<ref> until pred(device) holds; returns the device.
    AssertionError (with the last answer) after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(10000):
        last = get_device(server, ref)
        if pred(last):
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise AssertionError("device %s: %s not reached within %.1fs; last: %r" % (
        ref, what, timeout, last))


def online_device(server, version=5, functions=None, variables=None, name=None, **kw):
    """Create a device through the API, connect it as an ApiDevice and wait
    until the API shows it online with its describe. Returns the ApiDevice
    (its .info is the creation answer)."""
    info = create_device(server, name)
    dev = ApiDevice(server, info, version=version, functions=functions, variables=variables,
                    **kw)
    dev.info = info
    dev.start()
    want_f = sorted(dev.functions) if kw.get("describe", True) is True else None
    want_v = sorted(dev.variables) if kw.get("describe", True) is True else None

    def ok(d):
        if d.get("online") is not True:
            return False
        if want_f is not None and sorted(d.get("functions") or []) != want_f:
            return False
        if want_v is not None and sorted(d.get("variables") or []) != want_v:
            return False
        return True
    try:
        wait_device(server, info["id"], ok, what="online with its describe")
    except BaseException:
        dev.close()
        raise
    return dev


def token_create(server, name="t", read_only=False, scopes=None, expires=None):
    """`cyan token create [--read-only] [--scope S,S] [--expires E] NAME`;
    returns (id, token). scopes: a list of scope names or a comma-separated
    string; read_only: devices:read,events:read."""
    args = ["token", "create"] + (["--read-only"] if read_only else []) + [name]
    if scopes is not None:
        args += ["--scope", scopes if isinstance(scopes, str) else ",".join(scopes)]
    if expires is not None:
        args += ["--expires", str(expires)]
    cp = server.cli(*args)
    m = TOKEN_RE.search(cp.stdout)
    assert m, "no token in `cyan %s` output:\n%s\n%s" % (" ".join(args), cp.stdout, cp.stderr)
    token = m.group(0)
    return token.split("_")[1], token


def call(server, dev_id, function, arg=None, timeout=None, token=ADMIN, http_timeout=None):
    """POST /v1/devices/<id>/functions/<function>; returns the Response."""
    body = {}
    if arg is not None:
        body["arg"] = arg
    if timeout is not None:
        body["timeout"] = timeout
    t = http_timeout or ((timeout if isinstance(timeout, (int, float)) else 10) + 5)
    return api(server, "POST", "/v1/devices/%s/functions/%s" % (dev_id, function), token=token,
               json=body, timeout=t)


def read_var(server, dev_id, variable, timeout=None, token=ADMIN):
    q = "" if timeout is None else "?timeout=%s" % timeout
    t = (timeout if isinstance(timeout, (int, float)) else 10) + 5
    return api(server, "GET", "/v1/devices/%s/variables/%s%s" % (dev_id, variable, q),
               token=token, timeout=t)
