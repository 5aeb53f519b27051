"""The example devices in examples/ (Python, JavaScript, C) against cyan.

Each example runs as its own process, as a user would start it, with the
credentials of a device the test adds. Through the HTTP API the test then
calls its functions and reads its variables, sees its temperature events on
the device's event stream, and restarts cyan to see it come back by itself
(its reconnect with backoff) and answer again.

The JavaScript example uses the MQTT.js the tests pin (tests/integration/node,
the same version as examples/js/package.json); the C example is the binary
CMake builds beside cyan (example_device) when libmosquitto is installed
(scripts/deps.sh test installs libmosquitto-dev).
"""
import json
import os
import queue
import shutil
import subprocess
import threading
import time

import pytest

from apidevice import SseStream, api
from conftest import CYAN_BIN
from test_coap_npm import NODE_DIR, node_coap  # noqa: F401 (npm ci on first use)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = os.path.join(ROOT, "examples")
C_DEVICE = os.path.join(os.path.dirname(os.path.abspath(CYAN_BIN)), "example_device")


class Example:
    """One example device's process; its stdout lines in a queue."""

    def __init__(self, argv, env, cwd=ROOT):
        self.lines = queue.Queue()
        self.p = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.out.append(line)
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, prefix, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.p.poll() is not None and self.lines.empty():
                pytest.fail("no line starting %r within %.0fs (exit %r); output:\n%s"
                            % (prefix, timeout, self.p.poll(), "".join(self.out)[-3000:]))
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def start_example(kind, srv, dev):
    env = dict(os.environ, CYAN_DEVICE_ID=dev.id, CYAN_DEVICE_SECRET=dev.secret,
               CYAN_HOST=srv.host, CYAN_PORT=str(srv.port), INTERVAL="1",
               CYAN_URL="mqtt://%s:%d" % (srv.host, srv.port))
    if kind == "python":
        return Example(["/usr/bin/python3", "-u", os.path.join(EXAMPLES, "python", "device.py")],
                       env)
    if kind == "js":
        env["NODE_PATH"] = os.path.join(NODE_DIR, "node_modules")
        return Example(["node", os.path.join(EXAMPLES, "js", "device.js")], env)
    env.pop("ASAN_OPTIONS", None)
    return Example([C_DEVICE], env)


def call_when_described(srv, dev_id, path, body=None, timeout=10.0):
    """The API request, again while the describe has not arrived (404)."""
    deadline = time.monotonic() + timeout
    while True:
        r = api(srv, "POST" if body is not None else "GET", path, json=body)
        if r.status != 404 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


@pytest.fixture(params=["python", "js", "c"])
def example_kind(request):
    if request.param == "js" and shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/deps.sh test installs it)")
    if request.param == "c" and not os.access(C_DEVICE, os.X_OK):
        pytest.fail("%s was not built: is libmosquitto-dev installed? (scripts/deps.sh test)"
                    % C_DEVICE)
    return request.param


@pytest.mark.usefixtures("node_coap")
def test_example_device_answers_calls_reads_and_publishes(api_server, example_kind):
    srv = api_server
    dev = srv.add_device()
    stream = SseStream(srv, "/v1/devices/%s/events" % dev.id)
    assert stream.status == 200, stream.body
    ex = start_example(example_kind, srv, dev)
    try:
        ex.wait_line("online as %s" % dev.id)
        base = "/v1/devices/%s" % dev.id
        r = call_when_described(srv, dev.id, base + "/functions/led", {"arg": "on"})
        assert r.status == 200 and r.body["return_value"] == 1, (r.status, r.body)
        r = api(srv, "POST", base + "/functions/led", json={"arg": "sideways"})
        assert r.status == 200 and r.body["return_value"] == 0, (r.status, r.body)
        r = api(srv, "POST", base + "/functions/echo", json={"arg": "hello"})
        assert r.status == 200 and r.body["return_value"] == "hello", (r.status, r.body)
        r = api(srv, "GET", base + "/variables/temperature")
        assert r.status == 200 and r.body["value"] == 21.5, (r.status, r.body)
        r = api(srv, "GET", base + "/variables/led")
        assert r.status == 200 and r.body["value"] == "on", (r.status, r.body)
        r = api(srv, "GET", base + "/variables/uptime")
        assert r.status == 200 and isinstance(r.body["value"], int), (r.status, r.body)
        r = api(srv, "POST", base + "/functions/reboot", json={})
        assert r.status == 404, (r.status, r.body)  # not described
        ev = stream.next(timeout=10.0)  # the first temperature event (every second)
        assert ev.json and ev.json["name"] == "temperature", ev.data
        assert json.loads(ev.json["data"]) == 21.5, ev.data
        stream.close()

        # cyan goes away and comes back: the example reconnects by itself.
        srv.restart()
        deadline = time.monotonic() + 30
        while True:
            r = api(srv, "POST", base + "/functions/led", json={"arg": "off"})
            if r.status == 200 or time.monotonic() > deadline:
                break
            assert r.status in (404, 409, 503), (r.status, r.body)
            time.sleep(0.2)
        assert r.status == 200 and r.body["return_value"] == 1, (r.status, r.body, ex.out[-5:])
        assert ex.p.poll() is None, "".join(ex.out)
    finally:
        ex.stop()
