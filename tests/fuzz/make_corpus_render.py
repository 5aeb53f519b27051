#!/usr/bin/python3
"""Write the seed corpus of fuzz_render to tests/fuzz/corpus/render/.

One file per case: a kind byte (bits 0-1: 0 default, 1 JSON, 2 form,
3 text; bit 2: a shared event, no device id), published_at as 8 bytes big
endian (wall ms), then the template, the event name and the device id,
each ended by a NUL byte, and the event data (the rest). Templates use
every variable of render.h, Particle's aliases, data fields of objects and
arrays, the triple and '&' forms, and malformed tags.
Run: /usr/bin/python3 tests/fuzz/make_corpus_render.py
"""
import os
import struct

from make_corpus import write_seeds

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "render")

DEFAULT, JSON, FORM, TEXT = 0, 1, 2, 3
SHARED = 4
WHEN = 1764855332123  # 2025-12-04T13:35:32.123Z
DEV = b"0123456789abcdef01234567"
DATA = b'{"t":21.5,"o":{"k":[1,"x",null,true]},"s":"a\\"b","n":-0.0,"big":1e300}'


def case(kind, template, name=b"temp", dev=DEV, data=DATA, when=WHEN):
    if isinstance(template, str):
        template = template.encode()
    return (bytes([kind]) + struct.pack(">q", when) + template + b"\0" + name + b"\0" + dev
            + b"\0" + data)


SEEDS = {
    "default": case(DEFAULT, ""),
    "default_shared_binary": case(DEFAULT | SHARED, "", data=b"\xff\x00\xfe\x01"),
    "default_bad_utf8_name": case(DEFAULT, "", name=b"t\xc3(", data=b""),
    "default_negative_time": case(DEFAULT, "", when=-1),
    "json_fields": case(JSON, '{"id":"{{event_id}}","v":"{{data.t}}","o":"{{data.o}}",'
                              '"k1":"{{data.o.k.1}}","all":["{{name}}","{{{device_id}}}",'
                              '"{{published_at}}",1,2.5,null,false]}'),
    "json_keys": case(JSON,  # once NULL + 0 in cy_buf_head (UBSan)
                      '{"{{name}}":"{{data}}","{{ data.s }}":"x{{data.t}}y"}'),
    "json_scalar": case(JSON, '"{{data.big}}"'),
    "json_particle": case(JSON, '{"e":"{{PARTICLE_EVENT_NAME}}","v":"{{PARTICLE_EVENT_VALUE}}",'
                                '"d":"{{PARTICLE_DEVICE_ID}}","t":"{{PARTICLE_PUBLISHED_AT}}"}'),
    "form": case(FORM, '{"device":"{{device_id}}","value":"{{data.t}}","a b":"c&d=e"}'),
    "form_not_object": case(FORM, '["x"]'),
    "form_empty": case(FORM, '{"":""}'),  # once NULL + 0 in put_esc (UBSan)
    "text": case(TEXT, "{{name}}: {{ data.t }} {{{device_id}}} {{& name}}\r\n{{data}}"),
    "text_paths": case(TEXT, "({{data.o.}})({{data.}})({{data.o.k.x}})({{data.o.k.01}})"
                             "{{data.o.k.0}}{{nope}}"),
    "text_lone_braces": case(TEXT, "}} { } {{name}}}"),
    "text_binary_data": case(TEXT | SHARED, "{{data}}|{{data.a}}|{{device_id}}",
                             data=b"\xff\xfe\xfd"),
    "bad_section": case(TEXT, "{{#list}}x{{/list}}"),
    "bad_unclosed": case(TEXT, "{{name"),
    "bad_triple": case(TEXT, "{{{name}}"),
    "bad_empty_tag": case(TEXT, "{{ }}"),
    "bad_json": case(JSON, '{"a":'),
    "bad_json_dup": case(JSON, '{"a":1,"a":2}'),
    "url": case(TEXT, "https://example.com/hook/{{device_id}}?e={{name}}&v={{data.s}}"),
}


def main():
    write_seeds(OUT, SEEDS)


if __name__ == "__main__":
    main()
