#!/usr/bin/python3
"""Write the seed corpus of fuzz_mqtt_codec to tests/fuzz/corpus/mqtt/.

One file per packet: every packet type in MQTT 3.1.1 and 5.0 (with
properties), and a few malformed ones. Encoded here by hand from the
specification, independently of src/mqtt, so the seeds also cross-check the
codec. Run: /usr/bin/python3 tests/fuzz/make_corpus.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "mqtt")


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def s(x):  # string or binary data: two length bytes, then the bytes
    if isinstance(x, str):
        x = x.encode()
    return struct.pack(">H", len(x)) + x


def u16(n):
    return struct.pack(">H", n)


def u32(n):
    return struct.pack(">I", n)


def props(*items):
    body = b"".join(items)
    return varint(len(body)) + body


def p_byte(i, v):
    return bytes([i, v])


def p_u16(i, v):
    return bytes([i]) + u16(v)


def p_u32(i, v):
    return bytes([i]) + u32(v)


def p_str(i, v):
    return bytes([i]) + s(v)


def p_var(i, v):
    return bytes([i]) + varint(v)


def p_user(k, v):
    return b"\x26" + s(k) + s(v)


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(level, flags, keep, cid, name="MQTT", prop=b"", rest=b""):
    return packet(0x10, s(name) + bytes([level, flags]) + u16(keep) + prop + s(cid) + rest)


SEEDS = {
    # ---- MQTT 3.1.1 (and 3.1) ----
    "v4_connect_min": connect(4, 0x02, 60, ""),
    "v4_connect_full": connect(4, 0xEE, 30, "dev-1",
                               rest=s("will/t") + s(b"\x00bye") + s("user") + s(b"pw")),
    "v3_connect": connect(3, 0x02, 10, "old", name="MQIsdp"),
    "v4_connack": packet(0x20, b"\x01\x00"),
    "v4_publish_q0": packet(0x30, s("a/b") + b"hello"),
    "v4_publish_q1_retain": packet(0x33, s("sensors/\u20ac/t") + u16(7) + b"\x00\x01\x02"),
    "v4_publish_q2_dup": packet(0x3C, s("x") + u16(65535)),
    "v4_puback": packet(0x40, u16(1)),
    "v4_pubrec": packet(0x50, u16(2)),
    "v4_pubrel": packet(0x62, u16(3)),
    "v4_pubcomp": packet(0x70, u16(4)),
    "v4_subscribe": packet(0x82, u16(10) + s("a/+/c") + b"\x00" + s("#") + b"\x01"
                           + s("$share/g/x") + b"\x02"),
    "v4_suback": packet(0x90, u16(10) + b"\x00\x01\x02\x80"),
    "v4_unsubscribe": packet(0xA2, u16(11) + s("a/+/c") + s("#")),
    "v4_unsuback": packet(0xB0, u16(11)),
    "pingreq": packet(0xC0, b""),
    "pingresp": packet(0xD0, b""),
    "v4_disconnect": packet(0xE0, b""),
    # ---- MQTT 5.0 ----
    "v5_connect_props": connect(
        5, 0xCE, 60, "v5-dev",
        prop=props(p_u32(0x11, 3600), p_u16(0x21, 20), p_u32(0x27, 1 << 20),
                   p_u16(0x22, 10), p_byte(0x19, 1), p_byte(0x17, 0), p_str(0x15, "PLAIN"),
                   p_str(0x16, b"\x00\x01"), p_user("k", "v")),
        rest=props(p_u32(0x18, 5), p_byte(0x01, 1), p_u32(0x02, 60), p_str(0x03, "text/plain"),
                   p_str(0x08, "reply/to"), p_str(0x09, b"\x01\x02"), p_user("w", "x"))
        + s("will/topic") + s(b"gone") + s("user") + s(b"secret")),
    "v5_connect_password_only": connect(5, 0x42, 0, "", prop=props(), rest=s(b"pw")),
    "v5_connack_props": packet(0x20, b"\x00\x00" + props(
        p_u32(0x11, 0), p_u16(0x21, 100), p_byte(0x24, 1), p_byte(0x25, 0),
        p_u32(0x27, 65536), p_str(0x12, "auto-1"), p_u16(0x22, 5), p_str(0x1F, "ok"),
        p_byte(0x28, 1), p_byte(0x29, 1), p_byte(0x2A, 0), p_u16(0x13, 30),
        p_str(0x1A, "resp/"), p_str(0x1C, "srv2"), p_user("a", "b"))),
    "v5_connack_refused": packet(0x20, b"\x00\x87" + props(p_str(0x1F, "no"))),
    "v5_publish_props": packet(0x32, s("a/b") + u16(9) + props(
        p_byte(0x01, 1), p_u32(0x02, 30), p_str(0x03, "application/json"),
        p_str(0x08, "r/1"), p_str(0x09, b"id"), p_var(0x0B, 1), p_var(0x0B, 268435455),
        p_user("k1", "v1"), p_user("k2", "")) + b'{"t":21.5}'),
    "v5_publish_alias": packet(0x30, s("") + props(p_u16(0x23, 1)) + b"x"),
    "v5_publish_q0": packet(0x31, s("t") + props() + b"payload"),
    "v5_puback_short": packet(0x40, u16(5)),
    "v5_puback_reason": packet(0x40, u16(5) + b"\x10"),
    "v5_pubrec_props": packet(0x50, u16(6) + b"\x80" + props(p_str(0x1F, "err"), p_user("x", "y"))),
    "v5_pubrel_reason": packet(0x62, u16(7) + b"\x92"),
    "v5_pubcomp_props": packet(0x70, u16(8) + b"\x00" + props(p_user("x", "y"))),
    "v5_subscribe": packet(0x82, u16(12) + props(p_var(0x0B, 77), p_user("s", "t"))
                           + s("a/#") + b"\x2D" + s("$share/g/b") + b"\x12"),
    "v5_suback": packet(0x90, u16(12) + props(p_str(0x1F, "partial")) + b"\x01\x02\xA1\x8F"),
    "v5_unsubscribe": packet(0xA2, u16(13) + props(p_user("u", "v")) + s("a/#") + s("b")),
    "v5_unsuback": packet(0xB0, u16(13) + props() + b"\x00\x11"),
    "v5_disconnect_props": packet(0xE0, b"\x04" + props(
        p_u32(0x11, 0), p_str(0x1F, "bye"), p_str(0x1C, "elsewhere"), p_user("k", "v"))),
    "v5_disconnect_reason": packet(0xE0, b"\x8E"),
    "v5_auth": packet(0xF0, b"\x18" + props(p_str(0x15, "SCRAM-SHA-1"), p_str(0x16, b"\x00\x01"))),
    # ---- malformed ----
    "bad_connect_level6": connect(6, 0x02, 60, "x"),
    "bad_publish_qos3": packet(0x36, s("t") + u16(1)),
    "bad_publish_wildcard": packet(0x30, s("a/+")),
    "bad_remaining_length": b"\x30\xFF\xFF\xFF\xFF\x01",
    "bad_props_duplicate": packet(0x30, s("t") + props(p_byte(0x01, 0), p_byte(0x01, 1))),
    "bad_truncated_publish": packet(0x30, s("a/b") + b"xyz")[:-2],
    "bad_subscribe_options": packet(0x82, u16(1) + s("a") + b"\xC0"),
    "bad_utf8_surrogate": packet(0x30, s(b"\xED\xA0\x80")),
}


def write_seeds(out, seeds):
    """Write each seed {name: bytes} as a file of folder out (made if needed)."""
    os.makedirs(out, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {out}")


def main():
    write_seeds(OUT, SEEDS)


if __name__ == "__main__":
    main()
