"""Byte-exact MQTT 3.1.1 / 5.0 packets for the integration tests.

A deliberately small codec: encoders for the packets a client sends, a bounded
reader that splits the stream into (type, flags, body) and decoders for the
packets a server sends (CONNACK, PUBLISH, PUBACK/PUBREC/PUBREL/PUBCOMP, SUBACK,
UNSUBACK, DISCONNECT), v5 properties included. Every socket operation has a
timeout; no loop here runs without a bound in count and time.

Properties are given as a list of (id, value) pairs (or a dict) so that repeated
properties (user properties, subscription identifiers) keep their order. They
are decoded into a Props dict: name -> value, except 'user_property' and
'subscription_identifier' which are lists.
"""

import socket
import struct
import time

# Packet types.
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP = 8, 9, 10, 11, 12, 13
DISCONNECT, AUTH = 14, 15

TYPE_NAMES = {
    0: "RESERVED", 1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
    6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE",
    11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

# Property identifiers (MQTT 5.0 section 2.2.2.2).
PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_IDENTIFIER = 0x0B
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTHENTICATION_METHOD = 0x15
AUTHENTICATION_DATA = 0x16
REQUEST_PROBLEM_INFORMATION = 0x17
WILL_DELAY_INTERVAL = 0x18
REQUEST_RESPONSE_INFORMATION = 0x19
RESPONSE_INFORMATION = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
SHARED_SUBSCRIPTION_AVAILABLE = 0x2A

# id -> (name, kind); kinds: byte, u16, u32, varint, str, bin, pair
PROPERTY_TABLE = {
    0x01: ("payload_format_indicator", "byte"),
    0x02: ("message_expiry_interval", "u32"),
    0x03: ("content_type", "str"),
    0x08: ("response_topic", "str"),
    0x09: ("correlation_data", "bin"),
    0x0B: ("subscription_identifier", "varint"),
    0x11: ("session_expiry_interval", "u32"),
    0x12: ("assigned_client_identifier", "str"),
    0x13: ("server_keep_alive", "u16"),
    0x15: ("authentication_method", "str"),
    0x16: ("authentication_data", "bin"),
    0x17: ("request_problem_information", "byte"),
    0x18: ("will_delay_interval", "u32"),
    0x19: ("request_response_information", "byte"),
    0x1A: ("response_information", "str"),
    0x1C: ("server_reference", "str"),
    0x1F: ("reason_string", "str"),
    0x21: ("receive_maximum", "u16"),
    0x22: ("topic_alias_maximum", "u16"),
    0x23: ("topic_alias", "u16"),
    0x24: ("maximum_qos", "byte"),
    0x25: ("retain_available", "byte"),
    0x26: ("user_property", "pair"),
    0x27: ("maximum_packet_size", "u32"),
    0x28: ("wildcard_subscription_available", "byte"),
    0x29: ("subscription_identifier_available", "byte"),
    0x2A: ("shared_subscription_available", "byte"),
}
_REPEATABLE = {0x26, 0x0B}


class ProtocolError(Exception):
    """The server sent bytes this codec cannot decode."""


class Closed(Exception):
    """The connection was closed (EOF or reset) while reading."""


class Timeout(Exception):
    """Nothing (or not enough) arrived within the allotted time."""


# ---------------------------------------------------------------- encoding

def varint(n):
    if n < 0 or n > 268435455:
        raise ValueError("varint out of range: %r" % n)
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def _b(s):
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)


def mstr(s):
    """A length-prefixed UTF-8 string (bytes pass through unchecked, so tests
    can send invalid UTF-8)."""
    b = _b(s)
    return struct.pack("!H", len(b)) + b


def encode_props(props):
    """props: None, dict {id: value} or list of (id, value). Returns the
    property block with its varint length prefix."""
    if props is None:
        items = []
    elif isinstance(props, dict):
        items = list(props.items())
    else:
        items = list(props)
    body = bytearray()
    for pid, value in items:
        if pid not in PROPERTY_TABLE:
            raise ValueError("unknown property id 0x%02x (use raw bytes)" % pid)
        kind = PROPERTY_TABLE[pid][1]
        body += varint(pid)
        if kind == "byte":
            body += struct.pack("!B", value)
        elif kind == "u16":
            body += struct.pack("!H", value)
        elif kind == "u32":
            body += struct.pack("!I", value)
        elif kind == "varint":
            body += varint(value)
        elif kind == "str":
            body += mstr(value)
        elif kind == "bin":
            body += mstr(_b(value))
        elif kind == "pair":
            body += mstr(value[0]) + mstr(value[1])
    return varint(len(body)) + bytes(body)


def packet(ptype, flags, body):
    """A whole packet: fixed header (type, flags, remaining length) + body."""
    return bytes([(ptype << 4) | (flags & 0x0F)]) + varint(len(body)) + bytes(body)


def connect(client_id="", version=5, clean=True, keepalive=60, username=None,
            password=None, will=None, props=None, protocol_name="MQTT", level=None):
    """CONNECT. version 5 or 4 (3.1.1); level overrides the protocol level byte.
    will: dict(topic=, payload=b"", qos=0, retain=False, props=None)."""
    if level is None:
        level = 5 if version == 5 else 4
    flags = 0
    if clean:
        flags |= 0x02
    if will is not None:
        flags |= 0x04 | ((will.get("qos", 0) & 3) << 3)
        if will.get("retain"):
            flags |= 0x20
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = bytearray(mstr(protocol_name) + bytes([level, flags]) + struct.pack("!H", keepalive))
    if version == 5:
        body += encode_props(props)
    body += mstr(client_id)
    if will is not None:
        if version == 5:
            body += encode_props(will.get("props"))
        body += mstr(will["topic"]) + mstr(_b(will.get("payload", b"")))
    if username is not None:
        body += mstr(username)
    if password is not None:
        body += mstr(_b(password))
    return packet(CONNECT, 0, body)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None, props=None,
            version=5):
    flags = (0x08 if dup else 0) | ((qos & 3) << 1) | (0x01 if retain else 0)
    body = bytearray(mstr(topic))
    if qos > 0:
        if pid is None:
            raise ValueError("QoS > 0 needs a packet id")
        body += struct.pack("!H", pid)
    if version == 5:
        body += encode_props(props)
    body += _b(payload)
    return packet(PUBLISH, flags, body)


def _ack(ptype, flags, pid, rc, props, version):
    body = bytearray(struct.pack("!H", pid))
    if version == 5 and (rc is not None or props):
        body.append(rc or 0)
        if props:
            body += encode_props(props)
    return packet(ptype, flags, body)


def puback(pid, rc=None, props=None, version=5):
    return _ack(PUBACK, 0, pid, rc, props, version)


def pubrec(pid, rc=None, props=None, version=5):
    return _ack(PUBREC, 0, pid, rc, props, version)


def pubrel(pid, rc=None, props=None, version=5):
    return _ack(PUBREL, 0x02, pid, rc, props, version)


def pubcomp(pid, rc=None, props=None, version=5):
    return _ack(PUBCOMP, 0, pid, rc, props, version)


def subscribe(pid, filters, props=None, version=5):
    """filters: list of (filter, options) where options is the v5 options byte
    (QoS in bits 0-1, NL 0x04, RAP 0x08, retain handling << 4) or, for 3.1.1,
    the requested QoS."""
    body = bytearray(struct.pack("!H", pid))
    if version == 5:
        body += encode_props(props)
    for f, opts in filters:
        body += mstr(f) + bytes([opts])
    return packet(SUBSCRIBE, 0x02, body)


def sub_options(qos=0, no_local=False, rap=False, retain_handling=0):
    return (qos & 3) | (0x04 if no_local else 0) | (0x08 if rap else 0) | ((retain_handling & 3) << 4)


def unsubscribe(pid, filters, props=None, version=5):
    body = bytearray(struct.pack("!H", pid))
    if version == 5:
        body += encode_props(props)
    for f in filters:
        body += mstr(f)
    return packet(UNSUBSCRIBE, 0x02, body)


def pingreq():
    return packet(PINGREQ, 0, b"")


def disconnect(rc=None, props=None, version=5):
    body = bytearray()
    if version == 5 and (rc is not None or props):
        body.append(rc or 0)
        if props:
            body += encode_props(props)
    return packet(DISCONNECT, 0, body)


# ---------------------------------------------------------------- decoding

class Props(dict):
    """Decoded properties: name -> value; user_property and
    subscription_identifier are lists."""

    def get_list(self, name):
        return list(self.get(name, []))


def decode_varint(buf, pos):
    value, mult = 0, 1
    for i in range(4):
        if pos + i >= len(buf):
            raise ProtocolError("truncated varint")
        b = buf[pos + i]
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos + i + 1
        mult *= 128
    raise ProtocolError("varint longer than 4 bytes")


def _u16(buf, pos):
    if pos + 2 > len(buf):
        raise ProtocolError("truncated u16")
    return struct.unpack_from("!H", buf, pos)[0], pos + 2


def _str(buf, pos, binary=False):
    n, pos = _u16(buf, pos)
    if pos + n > len(buf):
        raise ProtocolError("truncated string")
    raw = bytes(buf[pos:pos + n])
    return (raw if binary else raw.decode("utf-8")), pos + n


def decode_props(buf, pos):
    length, pos = decode_varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise ProtocolError("property block longer than packet")
    props = Props()
    while pos < end:
        pid, pos = decode_varint(buf, pos)
        if pid not in PROPERTY_TABLE:
            raise ProtocolError("unknown property 0x%02x" % pid)
        name, kind = PROPERTY_TABLE[pid]
        if kind == "byte":
            v = buf[pos]
            pos += 1
        elif kind == "u16":
            v, pos = _u16(buf, pos)
        elif kind == "u32":
            v = struct.unpack_from("!I", buf, pos)[0]
            pos += 4
        elif kind == "varint":
            v, pos = decode_varint(buf, pos)
        elif kind == "str":
            v, pos = _str(buf, pos)
        elif kind == "bin":
            v, pos = _str(buf, pos, binary=True)
        else:
            k, pos = _str(buf, pos)
            val, pos = _str(buf, pos)
            v = (k, val)
        if pid in _REPEATABLE:
            props.setdefault(name, []).append(v)
        else:
            if name in props:
                raise ProtocolError("property %s repeated" % name)
            props[name] = v
    if pos != end:
        raise ProtocolError("property block overrun")
    return props, end


class Packet:
    def __init__(self, ptype, flags, body):
        self.type, self.flags, self.body = ptype, flags, bytes(body)

    def __repr__(self):
        return "<%s flags=0x%x len=%d %s>" % (TYPE_NAMES.get(self.type, self.type), self.flags,
                                             len(self.body), self.body[:40].hex())


class Connack:
    def __init__(self, session_present, rc, props):
        self.session_present, self.rc, self.props = session_present, rc, props

    def __repr__(self):
        return "<CONNACK sp=%d rc=0x%02x %r>" % (self.session_present, self.rc, dict(self.props))


class Publish:
    def __init__(self, topic, payload, qos, retain, dup, pid, props):
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.dup, self.pid, self.props = dup, pid, props

    def __repr__(self):
        return "<PUBLISH %r q%d r%d d%d pid=%s %r %r>" % (
            self.topic, self.qos, self.retain, self.dup, self.pid, self.payload[:40],
            dict(self.props))


class Ack:
    def __init__(self, ptype, pid, rc, props):
        self.type, self.pid, self.rc, self.props = ptype, pid, rc, props

    def __repr__(self):
        return "<%s pid=%d rc=0x%02x>" % (TYPE_NAMES[self.type], self.pid, self.rc)


class Suback:
    def __init__(self, pid, codes, props):
        self.pid, self.codes, self.props = pid, codes, props

    def __repr__(self):
        return "<SUBACK pid=%d %s>" % (self.pid, ["0x%02x" % c for c in self.codes])


class Disconnect:
    def __init__(self, rc, props):
        self.rc, self.props = rc, props

    def __repr__(self):
        return "<DISCONNECT rc=0x%02x %r>" % (self.rc, dict(self.props))


def decode_connack(body, version=5):
    if len(body) < 2:
        raise ProtocolError("short CONNACK")
    props = Props()
    if version == 5 and len(body) > 2:
        props, _ = decode_props(body, 2)
    return Connack(body[0] & 1, body[1], props)


def decode_publish(flags, body, version=5):
    qos = (flags >> 1) & 3
    topic, pos = _str(body, 0)
    pid = None
    if qos:
        pid, pos = _u16(body, pos)
    props = Props()
    if version == 5:
        props, pos = decode_props(body, pos)
    return Publish(topic, bytes(body[pos:]), qos, bool(flags & 1), bool(flags & 8), pid, props)


def decode_ack(ptype, body, version=5):
    pid, pos = _u16(body, 0)
    rc, props = 0, Props()
    if version == 5 and len(body) > 2:
        rc = body[2]
        if len(body) > 3:
            props, _ = decode_props(body, 3)
    return Ack(ptype, pid, rc, props)


def decode_suback(body, version=5):
    pid, pos = _u16(body, 0)
    props = Props()
    if version == 5:
        props, pos = decode_props(body, pos)
    return Suback(pid, list(body[pos:]), props)


def decode_disconnect(body, version=5):
    rc, props = 0, Props()
    if len(body) >= 1:
        rc = body[0]
        if len(body) > 1:
            props, _ = decode_props(body, 1)
    return Disconnect(rc, props)


def decode(pkt, version=5):
    """Decode a packet read from the server into its object (or the Packet
    itself for types without a decoder)."""
    t = pkt.type
    if t == CONNACK:
        return decode_connack(pkt.body, version)
    if t == PUBLISH:
        return decode_publish(pkt.flags, pkt.body, version)
    if t in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
        if t == UNSUBACK:
            return decode_suback(pkt.body, version)
        return decode_ack(t, pkt.body, version)
    if t == SUBACK:
        return decode_suback(pkt.body, version)
    if t == DISCONNECT:
        return decode_disconnect(pkt.body, version)
    return pkt


# ---------------------------------------------------------------- client

class RawClient:
    """One TCP connection speaking raw MQTT. All reads are bounded by a
    timeout; the reader keeps a buffer so partial packets are never lost."""

    def __init__(self, host, port, version=5, timeout=5.0):
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed = False

    # -- io
    def send(self, data):
        self.sock.sendall(data)

    def try_send(self, data):
        """Send, ignoring errors from a connection the server already closed."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def abort(self):
        """Close with a TCP RST (no FIN handshake, no DISCONNECT)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("no data")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout("no data")
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            self.closed = True
            raise Closed("connection reset")
        if not data:
            self.closed = True
            raise Closed("EOF")
        self.buf += data

    def _take_packet(self):
        """Return a complete Packet from the buffer or None."""
        if len(self.buf) < 2:
            return None
        length, mult, i = 0, 1, 1
        while True:
            if i >= len(self.buf):
                return None
            b = self.buf[i]
            length += (b & 0x7F) * mult
            i += 1
            if not b & 0x80:
                break
            mult *= 128
            if i > 4:
                raise ProtocolError("bad remaining length from server")
        if len(self.buf) < i + length:
            return None
        first = self.buf[0]
        body = bytes(self.buf[i:i + length])
        del self.buf[:i + length]
        return Packet(first >> 4, first & 0x0F, body)

    def take_packet(self):
        """A complete packet already in the buffer (Packet), or None; never
        reads. For callers that do their own non-blocking reads into buf
        (many connections driven by one selector)."""
        return self._take_packet()

    def read_packet(self, timeout=5.0):
        """Next packet as Packet(type, flags, body); raises Timeout or Closed."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            p = self._take_packet()
            if p is not None:
                return p
            self._fill(deadline)
        raise Timeout("too many reads")

    def read(self, timeout=5.0):
        """Next packet, decoded."""
        return decode(self.read_packet(timeout), self.version)

    def expect(self, ptype, timeout=5.0, skip=()):
        """Read until a packet of ptype arrives (packets whose type is in skip
        are dropped; anything else is an assertion error). Returns it decoded."""
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            p = self.read_packet(max(0.0, deadline - time.monotonic()))
            if p.type == ptype:
                return decode(p, self.version)
            if p.type in skip:
                continue
            raise AssertionError("expected %s, got %r (decoded %r)" % (
                TYPE_NAMES[ptype], p, decode(p, self.version)))
        raise Timeout("too many packets")

    def expect_nothing(self, timeout=0.5):
        """Assert no packet arrives within timeout (the connection may stay open)."""
        try:
            p = self.read_packet(timeout)
        except Timeout:
            return
        raise AssertionError("expected nothing, got %r" % (decode(p, self.version),))

    def wait_closed(self, timeout=3.0):
        """Wait until the server closes the connection; return the packets
        (decoded) received before the close. Raises AssertionError if the
        connection is still open after timeout."""
        got = []
        deadline = time.monotonic() + timeout
        for _ in range(10000):
            try:
                p = self.read_packet(max(0.0, deadline - time.monotonic()))
            except Closed:
                return got
            except Timeout:
                raise AssertionError("connection still open after %.1fs (got %r)" % (timeout, got))
            got.append(decode(p, self.version))
        raise AssertionError("too many packets while waiting for close")

    def is_open(self, timeout=0.2):
        """True if the connection is still open (no EOF within timeout). Any
        packets that arrive meanwhile stay in the buffer."""
        try:
            self._fill(time.monotonic() + timeout)
        except Timeout:
            return True
        except Closed:
            return False
        return True

    # -- protocol helpers
    def connect(self, client_id="", timeout=5.0, **kw):
        """Send CONNECT and return the decoded CONNACK."""
        kw.setdefault("version", self.version)
        self.send(connect(client_id, **kw))
        return self.expect(CONNACK, timeout)

    def subscribe(self, filters, pid=1, props=None, timeout=5.0):
        """filters: list of (filter, options). Returns the decoded SUBACK."""
        self.send(subscribe(pid, filters, props, self.version))
        return self.expect(SUBACK, timeout)

    def publish(self, topic, payload=b"", qos=0, retain=False, pid=None, props=None, dup=False,
                timeout=5.0):
        """Publish and complete the QoS flow. Returns the final ack (PUBACK or
        PUBCOMP) or None for QoS 0."""
        self.send(publish(topic, payload, qos, retain, dup, pid, props, self.version))
        if qos == 0:
            return None
        if qos == 1:
            return self.expect(PUBACK, timeout)
        rec = self.expect(PUBREC, timeout)
        if rec.rc >= 0x80:
            return rec
        self.send(pubrel(pid, version=self.version))
        return self.expect(PUBCOMP, timeout)

    def recv_publish(self, timeout=5.0, ack=True):
        """Next PUBLISH (decoded); for QoS 1 sends PUBACK and for QoS 2 runs
        PUBREC/PUBREL/PUBCOMP when ack is set."""
        p = self.expect(PUBLISH, timeout)
        if ack and p.qos == 1:
            self.send(puback(p.pid, version=self.version))
        elif ack and p.qos == 2:
            self.send(pubrec(p.pid, version=self.version))
            self.expect(PUBREL, timeout)
            self.send(pubcomp(p.pid, version=self.version))
        return p

    def disconnect(self, rc=None, props=None):
        self.try_send(disconnect(rc, props, self.version))
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
