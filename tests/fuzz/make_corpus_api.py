#!/usr/bin/python3
"""Write the seed corpus of fuzz_api to tests/fuzz/corpus/api/.

Each seed is one to eight HTTP-shaped requests separated by NUL bytes:
"METHOD TARGET\\n", header lines, a blank line, the body. The fuzzer puts
real tokens and ids for @FULL@, @READ@, @INT@ (tokens), @DEV0@, @DEV1@
(the user devices dev-0 and dev-1), @IDEV@ (an internal device), @HOOK@
(a webhook) and @EVENT@ (the newest event's id). The requests follow
docs/api.md: every route, each body with good and bad fields, scopes,
limits, and paths that are not routes.
Run: /usr/bin/python3 tests/fuzz/make_corpus_api.py
"""
import json
import os

from make_corpus import write_seeds

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "api")


def req(method, target, body=None, token="@FULL@", headers=()):
    out = f"{method} {target} HTTP/1.1\n"
    if token:
        out += f"Authorization: Bearer {token}\n"
    for name, value in headers:
        out += f"{name}: {value}\n"
    if body is not None:
        if not isinstance(body, (str, bytes)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        return out.encode() + b"\n" + body
    return out.encode()


FORM = "application/x-www-form-urlencoded"


def seq(*reqs):
    return b"\0".join(reqs)


HOOK = {
    "event": "temp",
    "url": "https://example.com/t/{{device_id}}?n={{name}}",
    "method": "PUT",
    "headers": {"X-Token": "abc-{{device_id}}", "Content-Type": "application/json"},
    "json": {"value": "{{data.t}}", "at": "{{published_at}}", "list": ["{{data.o.k.0}}", 1]},
    "device_id": None,
    "response_topic": "hook-response/{{name}}",
    "error_topic": "",
    "ordered": True,
    "enabled": True,
}

SEEDS = {
    "health": req("GET", "/v1/health", token=None),
    "health_post": req("POST", "/v1/health", token=None),
    "no_token": req("GET", "/v1/devices", token=None),
    "not_bearer": req("GET", "/v1/devices", token=None, headers=[("Authorization", "Basic eDp5")]),
    "bad_token": req("GET", "/v1/devices", token="cyt_000000000000_00000000000000000000000000000000"),
    "devices_list": req("GET", "/v1/devices"),
    "devices_list_read": req("GET", "/v1/devices", token="@READ@"),
    "tokens": seq(req("GET", "/v1/tokens"),
                  req("POST", "/v1/tokens", {"name": "t1", "scopes": ["devices:read",
                                                                      "events:read"],
                                             "expires_in": 60}),
                  req("POST", "/v1/tokens", {"name": "t2", "scopes": ["nope"]}),
                  req("POST", "/v1/tokens", {"name": "t3", "expires_at": "2020-01-01T00:00:00Z"}),
                  req("POST", "/v1/tokens", {"name": "t4", "scopes": "admin"}),
                  req("GET", "/v1/tokens", token="@READ@"),
                  req("DELETE", "/v1/tokens/000000000000"),
                  req("DELETE", "/v1/tokens/x")),
    "stream_token": seq(req("POST", "/v1/events/stream-token", {"expires_in": 30}),
                        req("POST", "/v1/events/stream-token", {"expires_in": 61}),
                        req("GET", "/v1/events?stream_token=cys_000000000000_1_00", token=None),
                        req("GET", "/v1/events?access_token=@FULL@", token=None),
                        req("GET", "/v1/events?stream_token=@FULL@", token=None),
                        req("GET", "/v1/devices?stream_token=cys_x", token=None)),
    "websocket": seq(req("GET", "/mqtt", token=None,
                         headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                  ("Sec-WebSocket-Version", "13"),
                                  ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                  ("Sec-WebSocket-Protocol", "mqtt")]),
                     req("GET", "/mqtt", token=None, headers=[("Upgrade", "websocket")]),
                     req("POST", "/mqtt", "x", token=None),
                     req("GET", "/mqtt", token=None,
                         headers=[("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade"),
                                  ("Sec-WebSocket-Version", "13"),
                                  ("Sec-WebSocket-Key", "short"),
                                  ("Sec-WebSocket-Protocol", "mqttv3.1, mqtt")])),
    "cors_preflight": seq(req("OPTIONS", "/v1/devices", token=None,
                              headers=[("Origin", "https://a.example"),
                                       ("Access-Control-Request-Method", "POST")]),
                          req("OPTIONS", "/v1/nothing", token=None),
                          req("OPTIONS", "/v1/events", "x", token=None),
                          req("GET", "/v1/devices", headers=[("Origin", "https://a.example")])),
    "device_get": seq(req("GET", "/v1/devices/@DEV0@"), req("GET", "/v1/devices/dev-1")),
    "device_create": seq(req("POST", "/v1/devices", {"name": "new-1"}),
                         req("POST", "/v1/devices", {"name": "dev-0"}),
                         req("POST", "/v1/devices", {"name": "bad name!"}),
                         req("POST", "/v1/devices", {"name": "0123456789abcdef01234567"}),
                         req("POST", "/v1/devices", {"name": 5}),
                         req("POST", "/v1/devices", '{"name":"a\\u0000b"}'),
                         req("POST", "/v1/devices", "[1,2]"),
                         req("POST", "/v1/devices", '{"name":"x","name":"y"}')),
    "device_create_read_only": req("POST", "/v1/devices", {"name": "ro"}, token="@READ@"),
    "device_delete": seq(req("DELETE", "/v1/devices/@DEV1@"), req("GET", "/v1/devices/@DEV1@"),
                         req("DELETE", "/v1/devices/dev-0", token="@READ@")),
    "device_psk": seq(req("POST", "/v1/devices/@DEV0@/psk"), req("GET", "/v1/devices/@DEV0@/psk")),
    "call": seq(req("POST", "/v1/devices/@DEV0@/functions/led", {"arg": "on", "timeout": 5}),
                req("POST", "/v1/devices/@DEV1@/functions/led", {"arg": None}),
                req("POST", "/v1/devices/@DEV0@/functions/led", {"arg": 5}),
                req("POST", "/v1/devices/@DEV0@/functions/led", {"timeout": 61}),
                req("POST", "/v1/devices/@DEV0@/functions/led", {"timeout": "5"}),
                req("POST", "/v1/devices/@DEV0@/functions/led", {"arg": "x" * 1025}),
                req("POST", "/v1/devices/@DEV0@/functions/" + "f" * 65, {}),
                req("GET", "/v1/devices/@DEV0@/functions/led")),
    "read": seq(req("GET", "/v1/devices/@DEV0@/variables/temp?timeout=3"),
                req("GET", "/v1/devices/@DEV1@/variables/temp?timeout=0"),
                req("GET", "/v1/devices/@DEV0@/variables/temp?timeout=abc"),
                req("POST", "/v1/devices/@DEV0@/variables/temp")),
    "internal": seq(req("POST", "/v1/devices/@IDEV@/functions/ping", {"arg": "1"}, token="@INT@"),
                    req("GET", "/v1/devices", token="@INT@"),
                    req("POST", "/v1/devices/@DEV0@/functions/led", {}, token="@INT@"),
                    req("GET", "/v1/devices/@IDEV@")),
    "events_publish": seq(req("POST", "/v1/events", {"name": "temp", "data": "21.5"}),
                          req("POST", "/v1/events", {"name": "a/+"}),
                          req("POST", "/v1/events", {"name": "", "data": None}),
                          req("POST", "/v1/events", {"name": "x", "data": 5}),
                          req("POST", "/v1/events", {"name": "t" * 200}),
                          req("POST", "/v1/events", {"name": "read"}, token="@READ@"),
                          req("PUT", "/v1/events")),
    "stream_then_publish": seq(req("GET", "/v1/events/te"),
                               req("GET", "/v1/devices/@DEV0@/events/temp"),
                               req("POST", "/v1/events", {"name": "temp", "data": "{\"t\":1}"}),
                               req("POST", "/v1/events", {"name": "temperature", "data": "2"})),
    "stream_resume": seq(*[req("POST", "/v1/events", {"name": f"e{i}", "data": str(i)})
                           for i in range(6)],
                         req("GET", "/v1/events", headers=[("Last-Event-ID", "0.0")]),
                         req("GET", "/v1/events?last_event_id=2.0")),
    "stream_limits": seq(req("GET", "/v1/events"), req("GET", "/v1/events"),
                         req("GET", "/v1/events"), req("GET", "/v1/events", token="@READ@"),
                         req("HEAD", "/v1/events")),
    "stream_bad_cursor": seq(req("GET", "/v1/events", headers=[("Last-Event-ID", "1.x")]),
                             req("GET", "/v1/events?last_event_id=99999999999999999999999.1")),
    "webhooks_list": seq(req("GET", "/v1/webhooks"), req("GET", "/v1/webhooks/@HOOK@"),
                         req("GET", "/v1/webhooks", token="@READ@")),
    "webhook_create": seq(req("POST", "/v1/webhooks", HOOK), req("GET", "/v1/webhooks")),
    "webhook_create_form": req("POST", "/v1/webhooks", {
        "url": "http://93.184.216.34:8080/f", "form": {"a": "{{data}}", "b c": "d&e"}}),
    "webhook_create_text": req("POST", "/v1/webhooks", {
        "url": "https://h.example/x", "body": "{{name}}={{{data}}}", "method": "POST",
        "device_id": "0123456789abcdef01234567"}),
    "webhook_bad_fields": seq(
        req("POST", "/v1/webhooks", {"url": "http://127.0.0.1/x"}),
        req("POST", "/v1/webhooks", {"url": "ftp://x/y"}),
        req("POST", "/v1/webhooks", {"url": "https://x/{{name"}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "method": "TRACE"}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "headers": {"Host": "y"}}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "headers": {"a b": "y"}}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "headers": {"A": "1", "a": "2"}}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "headers": {"A": "1\r\nB: 2"}})),
    "webhook_bad_fields_2": seq(
        req("POST", "/v1/webhooks", {"url": "https://x/", "json": {"a": 1}, "body": "x"}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "form": ["a"]}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "body": "{{#s}}{{/s}}"}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "event": "a/#"}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "device_id": "XYZ"}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "response_topic": "$SYS/x"}),
        req("POST", "/v1/webhooks", {"url": "https://x/", "ordered": 1})),
    "webhook_bad_fields_3": seq(
        req("POST", "/v1/webhooks", {"url": "https://x/", "nope": 1}),
        req("POST", "/v1/webhooks", {"url": "https://[::1]:99999/"}),
        req("POST", "/v1/webhooks", ""),
        req("POST", "/v1/webhooks", {"url": "https://x/"}, token="@READ@")),
    "webhook_patch": seq(req("PATCH", "/v1/webhooks/@HOOK@", {"enabled": False}),
                         req("PATCH", "/v1/webhooks/@HOOK@", {"enabled": True, "json": None,
                                                              "headers": None}),
                         req("PATCH", "/v1/webhooks/@HOOK@", {"url": ""}),
                         req("PATCH", "/v1/webhooks/nosuch", {"enabled": True}),
                         req("PUT", "/v1/webhooks/@HOOK@", {})),
    "webhook_delete_rotate": seq(req("POST", "/v1/webhooks/@HOOK@/secret"),
                                 req("GET", "/v1/webhooks/@HOOK@/secret"),
                                 req("DELETE", "/v1/webhooks/@HOOK@"),
                                 req("DELETE", "/v1/webhooks/@HOOK@")),
    "dead_letters": seq(req("GET", "/v1/webhooks/@HOOK@/dead-letters?limit=10"),
                        req("GET", "/v1/webhooks/@HOOK@/dead-letters?limit=0"),
                        req("POST", "/v1/webhooks/@HOOK@/dead-letters/replay"),
                        req("POST", "/v1/webhooks/@HOOK@/dead-letters/0-7/replay"),
                        req("POST", "/v1/webhooks/@HOOK@/dead-letters/9-7/replay"),
                        req("POST", "/v1/webhooks/@HOOK@/dead-letters/replay", token="@READ@"),
                        req("GET", "/v1/webhooks/nosuch/dead-letters")),
    "trace": seq(req("POST", "/v1/events", {"name": "temp", "data": "1"}),
                 req("GET", "/v1/events/@EVENT@/trace"),
                 req("GET", "/v1/events/0-1/trace"), req("GET", "/v1/events/1-99/trace"),
                 req("POST", "/v1/events/0-1/trace"), req("GET", "/v1/events/x-1/trace")),
    "paths": seq(req("GET", "/v2/devices"), req("GET", "/v1/"), req("GET", "/v1//devices"),
                 req("GET", "/v1/devices/a/b/c/d/e/f/g/h/i/j"),
                 req("GET", "/v1/devices/%2e%2e/variables/x"), req("GET", "/v1/nothing"),
                 req("GET", "/v1/devices/dev-0/unknown"), req("OPTIONS", "/v1/devices")),
    # Particle's paths (docs/api.md, "Particle compatibility").
    "particle_call": seq(
        req("POST", "/v1/devices/@DEV0@/led", "arg=on", headers=[("Content-Type", FORM)]),
        req("POST", "/v1/devices/@DEV1@/led", {"arg": "on", "timeout": 2},
            headers=[("Content-Type", "application/json; charset=utf-8")]),
        req("POST", "/v1/devices/dev-0/led", "arg=a%20b+c%C3%A9&timeout=5&x"),
        req("POST", "/v1/devices/@DEV0@/led", "arg=%zz&arg=%00%FF&timeout=0"),
        req("POST", "/v1/devices/@DEV0@/led", "arg=x", headers=[("Content-Type", "text/plain")]),
        req("POST", "/v1/devices/@DEV0@/led?timeout=1", "arg=on&access_token=@FULL@", token=None,
            headers=[("Content-Type", FORM)]),
        req("POST", "/v1/devices/@DEV0@/events", "arg=x", headers=[("Content-Type", FORM)]),
        req("POST", "/v1/devices/@DEV0@/psk", "arg=x", token="@READ@")),
    "particle_read": seq(
        req("GET", "/v1/devices/@DEV0@/temp?timeout=3"),
        req("GET", "/v1/devices/dev-1/temp?format=raw"),
        req("GET", "/v1/devices/@DEV0@/temp?format=json"),
        req("GET", "/v1/devices/@DEV0@/psk"),
        req("GET", "/v1/devices/@DEV0@/functions"),
        req("GET", "/v1/devices/@DEV0@/temp", token="@READ@"),
        req("GET", "/v1/devices/@IDEV@/temp", token="@INT@")),
    "control_in_path": seq(req("GET", "/v1/devices%00x"), req("GET", "/v1/devices?x=%0a")),
    "body_too_large": req("POST", "/v1/events", '{"name":"big","data":"' + "x" * 9000 + '"}'),
}


def main():
    write_seeds(OUT, SEEDS)


if __name__ == "__main__":
    main()
