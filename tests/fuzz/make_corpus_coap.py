#!/usr/bin/python3
"""Write the seed corpus of fuzz_coap_codec to tests/fuzz/corpus/coap/.

One file per datagram: requests and responses of RFC 7252, empty ACK, RST
and ping, an Observe registration (RFC 7641), Block1/Block2 transfers (RFC
7959), Echo and Request-Tag (RFC 9175), No-Response (RFC 7967), options at
the edges of the delta and length extensions, and malformed ones. Encoded
here by hand from the specifications, independently of src/coap, so the
seeds also cross-check the codec. Run: /usr/bin/python3 tests/fuzz/make_corpus_coap.py
"""
import os
import struct

from make_corpus import write_seeds

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "coap")

CON, NON, ACK, RST = 0, 1, 2, 3


def code(c, dd):
    return c << 5 | dd


GET, POST, PUT = code(0, 1), code(0, 2), code(0, 3)
CHANGED, CONTENT, CONTINUE = code(2, 4), code(2, 5), code(2, 31)
UNAUTHORIZED, NOT_FOUND = code(4, 1), code(4, 4)

IF_MATCH, URI_HOST, ETAG, OBSERVE, URI_PATH, CONTENT_FORMAT = 1, 3, 4, 6, 11, 12
MAX_AGE, URI_QUERY, ACCEPT, BLOCK2, BLOCK1, SIZE2, PROXY_URI, SIZE1 = 14, 15, 17, 23, 27, 28, 35, 60
ECHO, NO_RESPONSE, REQUEST_TAG = 252, 258, 292


def header(t, c, mid, token=b""):
    return bytes([0x40 | t << 4 | len(token), c]) + struct.pack(">H", mid) + token


def ext(v):
    """The nibble and extension bytes for an option delta or length."""
    if v < 13:
        return v, b""
    if v < 269:
        return 13, bytes([v - 13])
    return 14, struct.pack(">H", v - 269)


def uint(v):
    """An unsigned option value in its shortest form (0 is empty)."""
    out = b""
    while v:
        out = bytes([v & 0xFF]) + out
        v >>= 8
    return out


def options(*opts):
    """opts: (number, value) pairs in ascending order."""
    out, last = b"", 0
    for num, val in opts:
        if isinstance(val, str):
            val = val.encode()
        elif isinstance(val, int):
            val = uint(val)
        dn, dx = ext(num - last)
        ln, lx = ext(len(val))
        out += bytes([dn << 4 | ln]) + dx + lx + val
        last = num
    return out


def msg(t, c, mid, token=b"", opts=(), payload=b""):
    return header(t, c, mid, token) + options(*opts) + (b"\xff" + payload if payload else b"")


def block(num, more, szx):
    return num << 4 | (8 if more else 0) | szx


SEEDS = {
    # ---- RFC 7252 ----
    "get_temperature": msg(CON, GET, 0x7D34, b"\x71\x72", [(URI_PATH, "temperature")]),
    "ack_content": msg(ACK, CONTENT, 0x7D34, b"\x71\x72", [(CONTENT_FORMAT, 0)], b"22.3 C"),
    "empty_ack": header(ACK, 0, 0x7D34),
    "empty_rst": header(RST, 0, 0x0001),
    "ping": header(CON, 0, 0xBEEF),
    "non_post_json": msg(NON, POST, 0x0102, b"\x01\x02\x03\x04",
                         [(URI_PATH, "devices"), (URI_PATH, "d-1"), (URI_PATH, "telemetry"),
                          (CONTENT_FORMAT, 50), (URI_QUERY, "qos=1"), (URI_QUERY, "retain")],
                         b'{"t":21.5,"h":40}'),
    "put_full": msg(CON, PUT, 0xFFFF, b"12345678",
                    [(IF_MATCH, b"\x01\x02"), (URI_HOST, "cyan.example"), (ETAG, b"abcd"),
                     (URI_PATH, "a"), (URI_PATH, ""), (CONTENT_FORMAT, 42), (MAX_AGE, 60),
                     (ACCEPT, 50)], b"\x00\x01\x02"),
    "not_found": msg(ACK, NOT_FOUND, 7, b"\x09", [], b"no such device"),
    "path_utf8": msg(NON, POST, 9, b"", [(URI_PATH, "temp\u00e9rature"), (URI_PATH, "\u20ac"),
                                         (URI_PATH, "\U0001f600")], b"1"),
    "path_refused": msg(NON, POST, 10, b"", [(URI_PATH, b"\xc0\xaf"), (URI_PATH, "+")], b"1"),
    "proxy_uri_long": msg(CON, GET, 8, b"", [(PROXY_URI, "coap://h/" + "p" * 1000)]),
    # ---- RFC 7641, 7959, 9175, 7967 ----
    "observe_register": msg(CON, GET, 0x0A0B, b"\xaa\xbb",
                            [(OBSERVE, 0), (URI_PATH, "events"), (ACCEPT, 50)]),
    "observe_notify": msg(NON, CONTENT, 0x0A0C, b"\xaa\xbb",
                          [(OBSERVE, 0x12345), (CONTENT_FORMAT, 50), (MAX_AGE, 30)], b'{"v":1}'),
    "block1_first": msg(CON, PUT, 0x1234, b"\x05",
                        [(URI_PATH, "fw"), (BLOCK1, block(0, True, 3)), (SIZE1, 4000)],
                        b"B" * 128),
    "block1_continue": msg(ACK, CONTINUE, 0x1234, b"\x05", [(BLOCK1, block(0, True, 3))]),
    "block2_last": msg(ACK, CONTENT, 0x2000, b"\x06",
                       [(BLOCK2, block(0x12345, False, 6)), (SIZE2, 0x12345 * 1024 + 17)],
                       b"C" * 17),
    "echo_challenge": msg(ACK, UNAUTHORIZED, 0x3000, b"\x07",
                          [(ECHO, b"\x01\x02\x03\x04\x05\x06\x07\x08")]),
    "echo_request_tag": msg(CON, POST, 0x3001, b"\x07",
                            [(URI_PATH, "t"), (ECHO, b"\x01\x02\x03\x04\x05\x06\x07\x08"),
                             (NO_RESPONSE, 26), (REQUEST_TAG, b"\x99")], b"x"),
    "edges_12_13_268_269": msg(NON, CHANGED, 5, b"",
                               [(12, b"a" * 12), (25, b"b" * 13), (293, b"c" * 268),
                                (562, b"d" * 269), (65535, b"")]),
    "many_options": msg(CON, GET, 6, b"\x01", [(URI_QUERY, "k%d=v" % i) for i in range(40)]),
    # ---- malformed ----
    "bad_version": bytes([0x80, GET, 0, 1]),
    "bad_tkl9": bytes([0x49, GET, 0, 2]) + b"123456789",
    "bad_delta15": header(CON, GET, 3) + b"\xf0",
    "bad_marker_no_payload": header(CON, GET, 4) + options((URI_PATH, "a")) + b"\xff",
    "bad_empty_with_token": bytes([0x41, 0, 0, 5, 0x01]),
    "bad_option_past_end": header(NON, POST, 6) + b"\xbd\x05abc",
    "too_many_options": msg(CON, GET, 7, b"", [(URI_QUERY, "k%d" % i) for i in range(41)]),
    "too_long_option": msg(CON, GET, 8, b"\x08", [(PROXY_URI, "q" * 1035)]),
}


def main():
    write_seeds(OUT, SEEDS)


if __name__ == "__main__":
    main()
