"""What a second attack pass on issue 15's surfaces found, each a case that
failed before its fix: Particle's paths, the CLI client, presence.

Each test names the defect it pins in its docstring. Fast: one server per
test at most, every wait bounded by an event that must come.
"""

import pytest

from apidevice import api, online_device

pytestmark = pytest.mark.cyan_only


def echo_device(srv):
    return online_device(srv, 5, {"echo": lambda arg: arg}, {})


def pcall(srv, ref, function, **kw):
    return api(srv, "POST", "/v1/devices/%s/%s" % (ref, function), timeout=20, **kw)


def test_particle_call_takes_args_and_params(api_server):
    """particle-api-js (and so particle-cli) sends a call's argument as
    {"args": ...}, Spark-era scripts as params=...: both were ignored, the
    function called with an empty argument and a 200."""
    dev = echo_device(api_server)
    try:
        cases = [
            (dict(json={"args": "coffee"}), "coffee"),
            (dict(data="args=tea"), "tea"),
            (dict(data="params=D7%2CHIGH"), "D7,HIGH"),
            (dict(json={"params": "x", "timeout": 5}), "x"),
            (dict(json={"args": None}), ""),
        ]
        for kw, want in cases:
            r = pcall(api_server, dev.id, "echo", **kw)
            assert r.status == 200 and r.body["return_value"] == want, (kw, r)
            assert dev.calls[-1].arg == want, (kw, dev.calls[-1])
        n = len(dev.calls)
        # Two names for the argument: which one was meant? Refused.
        for kw, code in ((dict(data="arg=a&args=b"), "bad_request"),
                         (dict(json={"args": "a", "params": "b"}), "bad_json"),
                         (dict(json={"args": 5}), "bad_json")):
            r = pcall(api_server, dev.id, "echo", **kw)
            assert r.status == 400 and r.error == code, (kw, r)
        assert "args" in r.body["message"], r
        r = pcall(api_server, dev.id, "echo", data="arg=last")
        assert r.status == 200, r
        dev.wait_calls(n + 1)
        assert [c.arg for c in dev.calls[n:]] == ["last"], dev.calls[n:]
    finally:
        dev.close()
