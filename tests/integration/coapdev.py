"""A CoAP device for the tests: a minimal RFC 7252 encoder/decoder and a
device on one UDP socket that speaks cyan's device convention
(docs/device-protocol.md): it sends requests (events, describe,
subscriptions) and serves the cloud's requests (POST /c/<function>,
GET /v/<variable>, POST /m/<topic>) from a background thread.

Raw datagrams for malformed input are built with encode() and sent with
Device.send_raw(). Everything waits with deadlines; nothing sleeps to
prove that something did not happen."""

import os
import queue
import random
import socket
import struct
import threading
import time

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, PUT, DELETE = 1, 2, 3, 4
URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY, SIZE1, NO_RESPONSE = 11, 12, 14, 15, 60, 258
OBSERVE, BLOCK2, BLOCK1, SIZE2, ECHO = 6, 23, 27, 28, 252


def code(c, dd):
    return (c << 5) | dd


def code_text(c):
    return "%d.%02d" % (c >> 5, c & 31)


def _ext(v):
    if v < 13:
        return v, b""
    if v < 269:
        return 13, bytes([v - 13])
    return 14, struct.pack("!H", v - 269)


def encode(mtype, mcode, mid, token=b"", options=(), payload=b""):
    """options: (number, bytes) pairs, in any order (sorted here, stable)."""
    out = bytearray([0x40 | (mtype << 4) | len(token), mcode, mid >> 8 & 255, mid & 255])
    out += token
    last = 0
    for num, val in sorted(options, key=lambda o: o[0]):
        if isinstance(val, str):
            val = val.encode()
        if isinstance(val, int):
            val = val.to_bytes((val.bit_length() + 7) // 8, "big") if val else b""
        d, dx = _ext(num - last)
        ln, lx = _ext(len(val))
        out.append(d << 4 | ln)
        out += dx + lx + val
        last = num
    if payload:
        out += b"\xff" + (payload.encode() if isinstance(payload, str) else payload)
    return bytes(out)


class Msg:
    def __init__(self, mtype, mcode, mid, token, options, payload):
        self.type, self.code, self.mid, self.token = mtype, mcode, mid, token
        self.options, self.payload = options, payload

    def opt(self, num):
        return [v for n, v in self.options if n == num]

    def path(self):
        return "/".join(v.decode() for v in self.opt(URI_PATH))

    def __repr__(self):
        return "Msg(type=%d code=%s mid=%d token=%s opts=%r payload=%r)" % (
            self.type, code_text(self.code), self.mid, self.token.hex(), self.options,
            self.payload)


def decode(b):
    if len(b) < 4 or b[0] >> 6 != 1:
        raise ValueError("not CoAP")
    mtype, tkl = b[0] >> 4 & 3, b[0] & 15
    mcode, mid = b[1], b[2] << 8 | b[3]
    token = b[4:4 + tkl]
    i, num, options, payload = 4 + tkl, 0, [], b""
    while i < len(b):
        if b[i] == 0xFF:
            payload = b[i + 1:]
            break
        d, ln = b[i] >> 4, b[i] & 15
        i += 1
        for which in ("d", "l"):
            v = d if which == "d" else ln
            if v == 13:
                v = b[i] + 13
                i += 1
            elif v == 14:
                v = (b[i] << 8 | b[i + 1]) + 269
                i += 2
            if which == "d":
                d = v
            else:
                ln = v
        num += d
        options.append((num, bytes(b[i:i + ln])))
        i += ln
    return Msg(mtype, mcode, mid, bytes(token), options, bytes(payload))


def path_opts(path):
    return [(URI_PATH, seg) for seg in path.strip("/").split("/")] if path.strip("/") else []


class Device:
    """A CoAP device on its own UDP socket. functions: {name: fn(arg bytes)
    -> bytes}; variables: {name: bytes or fn() -> bytes}. separate: answer
    calls with an empty ACK first and the response as its own CON;
    "response first": the CON response before the empty ACK (a reordering
    RFC 7252 5.2.2 allows for)."""

    def __init__(self, host, port, device_id=None, functions=None, variables=None,
                 separate=False, query_id=True):
        self.addr = (host, port)
        self.id = device_id
        self.query_id = query_id and device_id is not None
        self.functions = functions or {}
        self.variables = variables or {}
        self.separate = separate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.mid = random.randrange(65536)
        self.responses = {}   # mid or token -> Msg
        self.cond = threading.Condition()
        self.messages = queue.Queue()  # (topic, payload) of POST /m/...
        self.calls = queue.Queue()     # (kind, name, arg) served
        self.drop_next_acks = 0        # tests of retransmission: ignore n cloud requests
        self.seen = {}                 # cloud mids answered: mid -> response bytes
        self.notifications = queue.Queue()  # Msg of Observe notifications
        self.rst_notifications = False      # answer notifications with RST (cancel)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()

    # ---- sending
    def next_mid(self):
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def send_raw(self, data):
        self.sock.sendto(data, self.addr)

    def _opts(self, path, extra=()):
        opts = path_opts(path) + list(extra)
        if self.query_id:
            opts.append((URI_QUERY, "id=" + self.id))
        return opts

    def request(self, method, path, payload=b"", con=True, extra=(), timeout=10.0,
                retransmit=True):
        """Send a request; return the response Msg (piggybacked or separate),
        retransmitting a CON as RFC 7252 does (2 s, doubling)."""
        mid, token = self.next_mid(), os.urandom(4)
        data = encode(CON if con else NON, method, mid, token, self._opts(path, extra), payload)
        deadline = time.monotonic() + timeout
        wait = 2.0
        self.send_raw(data)
        next_send = time.monotonic() + wait
        with self.cond:
            while True:
                r = self.responses.pop(token, None)
                if r is not None:
                    return r
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError("no response to %s %s" % (method, path))
                if retransmit and con and now >= next_send:
                    self.send_raw(data)
                    wait *= 2
                    next_send = now + wait
                self.cond.wait(min(0.1, deadline - now))

    def ping(self, timeout=5.0):
        mid = self.next_mid()
        self.send_raw(encode(CON, 0, mid))
        return self.wait_mid(mid, timeout)

    def wait_mid(self, mid, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                r = self.responses.pop(("mid", mid), None)
                if r is not None:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("nothing for mid %d" % mid)
                self.cond.wait(min(0.1, left))

    def event(self, name, data=b"", con=True, **kw):
        return self.request(POST, "e/" + name, data, con=con, **kw)

    def describe(self, functions=None, variables=None):
        import json
        body = json.dumps({"functions": list(functions or self.functions),
                           "variables": list(variables or self.variables)})
        return self.request(PUT, "d", body)

    def subscribe(self, filt, qos=1):
        return self.request(POST, "s/" + filt, extra=[(URI_QUERY, "qos=%d" % qos)])

    # ---- receiving
    def _run(self):
        while self.running:
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                m = decode(data)
            except (ValueError, IndexError):
                continue
            if m.opt(OBSERVE) and m.type in (CON, NON) and m.code >> 5 == 2:
                self.notifications.put(m)
                if m.type == CON:
                    self.sock.sendto(encode(RST if self.rst_notifications else ACK, 0, m.mid), addr)
                continue
            if m.type in (ACK, RST) or (m.code >> 5) in (2, 4, 5):
                with self.cond:
                    if m.type in (ACK, RST):
                        self.responses[("mid", m.mid)] = m
                    if m.code != 0:
                        self.responses[m.token] = m
                    self.cond.notify_all()
                if m.type == CON and m.code >> 5 in (2, 4, 5):  # a separate response
                    self.sock.sendto(encode(ACK, 0, m.mid), addr)
                continue
            if m.code >> 5 == 0 and m.code != 0:
                self._serve(m, addr)

    def _serve(self, m, addr):
        if m.type == CON and m.mid in self.seen:  # a retransmission: same answer
            self.sock.sendto(self.seen[m.mid], addr)
            return
        if self.drop_next_acks > 0:
            self.drop_next_acks -= 1
            return
        parts = [v.decode() for v in m.opt(URI_PATH)]
        rcode, body = code(4, 4), b""
        if parts and parts[0] == "m":
            self.messages.put(("/".join(parts[1:]), m.payload))
            rcode = code(2, 4)
        elif parts and parts[0] == "c" and len(parts) == 2 and parts[1] in self.functions:
            self.calls.put(("call", parts[1], m.payload))
            body = self.functions[parts[1]](m.payload)
            rcode = code(2, 4)
        elif parts and parts[0] == "v" and len(parts) == 2 and parts[1] in self.variables:
            self.calls.put(("get", parts[1], b""))
            v = self.variables[parts[1]]
            body = v() if callable(v) else v
            rcode = code(2, 5)
        if isinstance(body, str):
            body = body.encode()
        if m.type == CON and self.separate and parts and parts[0] in ("c", "v"):
            ack = encode(ACK, 0, m.mid)
            self.seen[m.mid] = ack
            resp = encode(CON, rcode, self.next_mid(), m.token, (), body)
            for d in ((resp, ack) if self.separate == "response first" else (ack, resp)):
                self.sock.sendto(d, addr)
            return
        resp = encode(ACK if m.type == CON else NON, rcode,
                      m.mid if m.type == CON else self.next_mid(), m.token, (), body)
        if m.type == CON:
            self.seen[m.mid] = resp
        self.sock.sendto(resp, addr)
