#!/usr/bin/python3
"""Write the seed corpus of fuzz_bus to tests/fuzz/corpus/bus/.

Each seed is what a peer shard writes on its link to shard 0: a HELLO
(from shard 1, 2 or 3), then frames, each a 4-byte big-endian length word
(bit 31: a descriptor comes with it), a type byte and a body. The bodies
are encoded here from the comments of src/cluster/cluster.c (interest,
PUBLISH, ACK), src/device/requests.c (API_REQ, API_RESP) and
src/coap/coap.c (COAP_IN, COAP_OUT, COAP_KICK), and the CoAP datagrams
inside with make_corpus_coap.py's writer, following
docs/device-protocol.md. "@DEVICE-0@@@@@@@@@@@@@@@" and
"@DEVICE-1@@@@@@@@@@@@@@@" stand for the ids of the fuzzer's two devices,
and in a device's answer message id 0xFFFF and a token of 0xFF bytes for
those of cyan's last request to it.
Run: /usr/bin/python3 tests/fuzz/make_corpus_bus.py
"""
import os
import struct

from make_corpus import write_seeds
from make_corpus_coap import (ACCEPT, ACK, BLOCK1, BLOCK2, CHANGED, CON, CONTENT,
                              CONTENT_FORMAT, GET, NON, OBSERVE, POST, PUT, RST, URI_PATH,
                              URI_QUERY, block, code, header, msg)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "bus")

DEV0 = b"@DEVICE-0@@@@@@@@@@@@@@@"
DEV1 = b"@DEVICE-1@@@@@@@@@@@@@@@"
DELETE = code(0, 4)

# frame types (cluster.c, cluster.h)
RESET, ADD, DEL, PUBLISH, ACKF, HANDOVER, END = 1, 2, 3, 4, 5, 6, 7
API_REQ, API_RESP, COAP_IN, COAP_OUT, COAP_KICK = 8, 9, 10, 11, 12
# PUBLISH flags
RETAIN, ROUTE, SET_RETAINED, EVENT = 4, 8, 16, 32
# device operations (device.h)
PRESENCE, PRESENCE_ALL, CALL, GETV, KICK = 1, 2, 3, 4, 5
# CoAP address heads (coap_int.h)
VIA_PLAIN, VIA_DTLS, VIA_CLOSED = 0, 1, 2


def frame(t, body=b"", handle=False):
    return struct.pack(">I", (1 + len(body)) | (0x80000000 if handle else 0)) + bytes([t]) + body


def hello(index=1, gen=7):
    return frame(0, struct.pack(">IQ", index, gen))


def u16(n):
    return struct.pack(">H", n)


def u32(n):
    return struct.pack(">I", n)


def u64(n):
    return struct.pack(">Q", n)


def publish(topic, payload=b"", seq=0, flags=ROUTE, expiry=0, retain_ts=0, event_seq=None,
            props=b"", groups=()):
    if isinstance(topic, str):
        topic = topic.encode()
    body = u64(seq) + bytes([flags]) + struct.pack(">qq", expiry, retain_ts)
    if flags & EVENT:
        body += u64(event_seq or 1)
    body += u16(len(topic)) + topic + u32(len(props)) + props + bytes([len(groups)])
    for g in groups:
        body += u16(len(g)) + g
    return frame(PUBLISH, body + payload)


def api_req(rid, op, dev=DEV0, name=b"", arg=b"", timeout=1000):
    return frame(API_REQ, u32(rid) + bytes([op]) + u32(timeout) + bytes([len(dev)]) + dev
                 + bytes([len(name)]) + name + arg)


def sockaddr_in(port=40001, ip=(127, 0, 0, 1)):
    return struct.pack("<H", 2) + struct.pack(">H", port) + bytes(ip) + bytes(8)


def sockaddr_in6(port=40002):
    return struct.pack("<H", 10) + struct.pack(">H", port) + bytes(4) + bytes(15) + b"\x01" + bytes(4)


def addr_head(via, term, addr):
    return bytes([via, term, len(addr)]) + addr


def coap_in(datagram, dev=DEV0, via=VIA_DTLS, term=1, addr=None):
    addr = sockaddr_in() if addr is None else addr
    return frame(COAP_IN, addr_head(via, term, addr) + bytes([len(dev)]) + dev + datagram)


def path(*segs):
    return [(URI_PATH, s) for s in segs]


EVENT_POST = msg(CON, POST, 0x100, b"\x01", path("e", "temp"), b"21.5")
DESCRIBE = msg(CON, PUT, 0x101, b"\x02", path("d") + [(CONTENT_FORMAT, 50)],
               b'{"functions":["led","reboot"],"variables":["temp"]}')
SUBSCRIBE = msg(CON, POST, 0x102, b"\x03", path("s", "devices", "+", "events", "#")
                + [(URI_QUERY, "qos=1")])
OBSERVE_REG = msg(CON, GET, 0x103, b"\x04", [(OBSERVE, 0)] + path("s", "events", "x")
                  + [(ACCEPT, 0)])
PING = header(CON, 0, 0x104)

SEEDS = {
    "hello_only": hello(),
    "interest_snapshot": hello(2) + frame(RESET, u64(1)) + frame(ADD, b"a/+/c")
    + frame(ADD, b"#") + frame(ADD, b"$share/g/x/y") + frame(END) + frame(DEL, b"a/+/c"),
    "interest_resync": hello(3) + frame(RESET, u64(1)) + frame(ADD, b"x/#") + frame(END)
    + frame(RESET, u64(9)) + frame(ADD, b"y") + frame(END),
    "publish_qos0": hello() + frame(ADD, b"t/#") + publish("t/1", b"hello"),
    "publish_durable": hello() + publish("t/2", b"q1", seq=1, flags=ROUTE | 1)
    + publish("t/2", b"again", seq=1, flags=ROUTE | 1)
    + publish("t/3", b"q2", seq=2, flags=ROUTE | 2, expiry=4102444800000),
    "publish_retained": hello() + publish("r/a", b"kept", seq=1, flags=SET_RETAINED | RETAIN | 1,
                                          retain_ts=1764855332123)
    + publish("r/a", b"", seq=2, flags=SET_RETAINED | RETAIN | 1),
    "publish_event": hello() + publish(b"devices/" + DEV1 + b"/events/temp", b"22",
                                       flags=ROUTE | EVENT | 1, seq=1, event_seq=42),
    "publish_shared": hello() + publish("s/1", b"x", groups=(b"$share/g/s/#", b"$share/h/+/1")),
    "publish_props": hello() + publish("p/1", b"{}", props=b"\x01\x01\x03\x00\x10application/json"
                                       b"\x26\x00\x01k\x00\x01v"),
    "publish_malformed": hello() + frame(PUBLISH, u64(1) + b"\x00")
    + publish("", b"empty topic"),
    "ack": hello() + frame(ACKF, u64(3) + u64(2)) + frame(ACKF, u64(1)),
    "api_presence": hello() + api_req(1, PRESENCE) + api_req(2, PRESENCE_ALL, dev=b""),
    "api_call": hello() + api_req(3, CALL, name=b"led", arg=b"on") + api_req(4, GETV, name=b"temp")
    + api_req(5, CALL, dev=b"no-such-device", name=b"x"),
    "api_kick": hello() + api_req(6, KICK, dev=DEV1) + api_req(7, 99),
    "api_malformed": hello() + frame(API_REQ, u32(8) + b"\x03") + api_req(9, CALL, name=b"n" * 65),
    "api_resp": hello() + frame(API_RESP, u32(1) + u16(200) + b'{"online":true}')
    + frame(API_RESP, b"\x00"),
    "coap_event_dtls": hello() + coap_in(EVENT_POST) + coap_in(PING),
    "coap_event_plain": hello() + coap_in(msg(NON, POST, 0x200, b"", path("e", "door")
                                              + [(URI_QUERY, b"id=" + DEV0)], b"open"),
                                          via=VIA_PLAIN, term=0),
    "coap_describe_call": hello() + coap_in(DESCRIBE) + api_req(10, CALL, name=b"led", arg=b"on")
    + api_req(11, GETV, name=b"temp") + coap_in(msg(ACK, 0, 0x2345, b"")),
    # A device's answers: 0xFFFF and a token of 0xFF bytes stand for the
    # message id and token cyan drew for its last request (fuzz_bus.c).
    "call_piggybacked": hello() + coap_in(DESCRIBE) + api_req(12, CALL, name=b"led", arg=b"on")
    + coap_in(msg(ACK, CONTENT, 0xFFFF, b"\xff" * 5, [(CONTENT_FORMAT, 0)], b"done"))
    + api_req(13, GETV, name=b"temp") + coap_in(msg(ACK, CONTENT, 0xFFFF, b"\xff" * 5, [], b"21")),
    "call_separate": hello() + coap_in(DESCRIBE) + api_req(14, CALL, name=b"reboot")
    + coap_in(header(ACK, 0, 0xFFFF))
    + coap_in(msg(CON, CONTENT, 0x4242, b"\xff" * 5, [], b"rebooting")),
    "call_refused": hello() + coap_in(DESCRIBE) + api_req(15, CALL, name=b"led")
    + coap_in(header(RST, 0, 0xFFFF)) + api_req(16, CALL, name=b"led")
    + coap_in(msg(ACK, code(4, 4), 0xFFFF, b"\xff" * 5, [], b"no")),
    "call_block2": hello() + coap_in(DESCRIBE) + api_req(17, GETV, name=b"temp")
    + coap_in(msg(ACK, CONTENT, 0xFFFF, b"\xff" * 5, [(BLOCK2, block(0, True, 0))], b"A" * 16))
    + coap_in(msg(ACK, CONTENT, 0xFFFF, b"\xff" * 5, [(BLOCK2, block(1, False, 0))], b"B" * 7)),
    "delivery_ack": hello() + coap_in(msg(CON, POST, 0x109, b"\x07", path("s", "events", "#")
                                          + [(URI_QUERY, "qos=1")]))
    + publish("events/x", b"q1", seq=1, flags=ROUTE | 1) + coap_in(header(ACK, 0, 0xFFFF))
    + publish("events/y", b"q1", seq=2, flags=ROUTE | 1) + coap_in(header(RST, 0, 0xFFFF)),
    "coap_subscribe": hello() + coap_in(SUBSCRIBE) + publish(b"devices/" + DEV1 + b"/events/a",
                                                             b"1", seq=1, flags=ROUTE | 1)
    + coap_in(msg(CON, DELETE, 0x105, b"\x05", path("s", "devices", "+", "events", "#"))),
    "coap_observe": hello() + coap_in(OBSERVE_REG) + publish("events/x", b"v", flags=ROUTE)
    + coap_in(msg(CON, GET, 0x106, b"\x04", [(OBSERVE, 1)] + path("s", "events", "x"))),
    "coap_block1": hello() + coap_in(msg(CON, POST, 0x107, b"\x06", path("e", "big")
                                         + [(BLOCK1, block(0, True, 0))], b"A" * 16))
    + coap_in(msg(CON, POST, 0x108, b"\x06", path("e", "big") + [(BLOCK1, block(1, False, 0))],
                  b"B" * 5)),
    "coap_two_devices_v6": hello() + coap_in(EVENT_POST, dev=DEV1, addr=sockaddr_in6())
    + coap_in(EVENT_POST, dev=DEV0, addr=sockaddr_in6()),
    "coap_closed": hello() + coap_in(EVENT_POST) + frame(COAP_IN, addr_head(VIA_CLOSED, 1,
                                                                           sockaddr_in())
                                                         + bytes([len(DEV0)]) + DEV0),
    "coap_unknown_device": hello() + coap_in(EVENT_POST, dev=b"0123456789abcdef01234567"),
    "coap_out_kick": hello() + frame(COAP_OUT, addr_head(VIA_DTLS, 0, sockaddr_in())
                                     + msg(CON, POST, 9, b"\x00", path("m", "x"), b"1"))
    + frame(COAP_KICK, DEV0) + frame(COAP_KICK, b""),
    "coap_response": hello() + coap_in(msg(ACK, CONTENT, 0x300, b"\x00\x01\x02\x03", [], b"42"))
    + coap_in(msg(CON, CHANGED, 0x301, b"\x01", [], b"ok")),
    "coap_bad_head": hello() + frame(COAP_IN, b"\x01\x09\xff") + frame(COAP_IN, b"\x00\x00\x00"),
    "unknown_type": hello() + frame(13, b"?") + frame(255),
    "handle_without_fd": hello() + frame(HANDOVER, b"\x10\x00", handle=True) + frame(ADD, b"a"),
    "type0_after_hello": hello() + frame(0, b"x") + frame(ADD, b"a"),
    "bad_length": hello() + b"\x00\x00\x00\x00\x01" + frame(ADD, b"a"),
    "partial_frame": hello() + frame(ADD, b"abc")[:-1],
    "hello_bad_index": hello(0) + frame(ADD, b"a") + hello(64),
    "hello_too_short": frame(0, b"\x00\x00\x00\x01") + frame(ADD, b"a"),
}


def main():
    write_seeds(OUT, SEEDS)


if __name__ == "__main__":
    main()
