"""A real browser against the API (issue 14, "Browsers"; docs/api.md,
"CORS" and "Event streams in a browser: stream tokens").

Headless Chromium loads a page from another origin (a small HTTP server of
the test's own). The page asks cyan for a stream token with fetch() and an
Authorization header (so the browser sends a CORS preflight and checks
the answers' CORS headers itself), opens an EventSource with that stream
token, and reports to the page server what happens: "open" when the stream
is open, then the event the test publishes. A page from an origin that is
not in cors_origins reports "blocked": its browser refused the answer.

The page gets the API's address and a token in its URL fragment, which a
browser never sends to a server.

A second page is a device in the browser: it loads MQTT.js (the npm
package's browser bundle, served by the page server) and connects over
WebSocket to ws://<http_listen>/mqtt with the device's id and secret,
subscribes to a topic of the shared event space, and reports what a TCP
client publishes there.
"""

import http.server
import json
import queue
import shutil
import subprocess
import tempfile
import threading

import os

import pytest

from apidevice import api, create_device, token_create
from helpers import Client
from test_coap_npm import NODE_DIR, node_coap  # noqa: F401 (npm ci on first use)

pytestmark = pytest.mark.cyan_only

PAGE = """<!doctype html>
<html><body><pre id="log"></pre><script>
const p = new URLSearchParams(location.hash.slice(1));
const api = p.get("api"), token = p.get("token"), name = p.get("name");
function report(kind, data) {
  document.getElementById("log").textContent += kind + " " + data + "\\n";
  fetch("/report", {method: "POST", body: JSON.stringify({kind: kind, data: data})});
}
fetch(api + "/v1/events/stream-token", {
  method: "POST",
  headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
  body: "{}",
}).then(r => r.json()).then(j => {
  const es = new EventSource(api + "/v1/events?stream_token=" + encodeURIComponent(j.stream_token));
  es.onopen = () => report("open", "");
  es.addEventListener(name, e => report("event", e.data));
  es.onerror = () => report("error", String(es.readyState));
}).catch(e => report("blocked", String(e)));
</script></body></html>
"""


MQTT_PAGE = """<!doctype html>
<html><body><pre id="log"></pre><script src="/mqtt.min.js"></script><script>
const p = new URLSearchParams(location.hash.slice(1));
function report(kind, data) {
  document.getElementById("log").textContent += kind + " " + data + "\\n";
  fetch("/report", {method: "POST", body: JSON.stringify({kind: kind, data: data})});
}
const c = mqtt.connect(p.get("url"), {protocolVersion: 5, clientId: p.get("id"),
  username: p.get("id"), password: p.get("secret"), reconnectPeriod: 0});
c.on("connect", () => c.subscribe(p.get("topic"), {qos: 1}, (err) =>
  report(err ? "error" : "subscribed", err ? String(err) : "")));
c.on("message", (t, m) => report("message", t + " " + m.toString()));
c.on("error", (e) => report("error", String(e)));
</script></body></html>
"""


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("chromium is not installed (scripts/deps.sh test installs it)")


class PageServer:
    """Serves PAGE at / on 127.0.0.1 and queues what the page reports."""

    def __init__(self):
        self.reports = queue.Queue()
        reports = self.reports

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                ctype = "text/html; charset=utf-8"
                if self.path.startswith("/mqtt.min.js"):
                    with open(os.path.join(NODE_DIR, "node_modules", "mqtt", "dist",
                                           "mqtt.min.js"), "rb") as f:
                        body = f.read()
                    ctype = "text/javascript"
                elif self.path.startswith("/mqtt.html"):
                    body = MQTT_PAGE.encode()
                else:
                    body = PAGE.encode()
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                reports.put(json.loads(self.rfile.read(n) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def next(self, timeout=30.0):
        try:
            return self.reports.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the page reported nothing within %.0f s" % timeout)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Browser:
    """Headless Chromium showing url until closed."""

    def __init__(self, url):
        self.profile = tempfile.mkdtemp(prefix="cychrome")
        self.proc = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             "--user-data-dir=" + self.profile, url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def close(self):
        self.proc.kill()
        _, err = self.proc.communicate(timeout=20)
        shutil.rmtree(self.profile, ignore_errors=True)
        return err.decode("utf-8", "replace")


def open_page(page, srv, token, name):
    frag = "api=%s&token=%s&name=%s" % (srv.api_url, token, name)
    return Browser(page.origin + "/#" + frag)


def test_pages_of_allowed_and_other_origins(api_server_factory):
    """The allowed page streams an event; a page of another origin, against
    the same server a moment later, is refused by its own browser."""
    page, other = PageServer(), PageServer()
    browsers = []
    try:
        srv = api_server_factory(cors_origins=page.origin)
        _, token = token_create(srv, "browser", scopes=["events:read"])
        browsers.append(open_page(page, srv, token, "browser-hello"))
        first = page.next()
        assert first["kind"] == "open", (first, srv.log_tail())
        r = api(srv, "POST", "/v1/events", json={"name": "browser-hello", "data": "from the test"})
        assert r.status == 202, r.body
        got = page.next()
        assert got["kind"] == "event", got
        ev = json.loads(got["data"])
        assert ev["name"] == "browser-hello" and ev["data"] == "from the test", ev

        browsers.append(open_page(other, srv, token, "browser-hello"))
        got = other.next()
        assert got["kind"] == "blocked", (got, srv.log_tail())
    finally:
        for b in browsers:
            b.close()
        page.close()
        other.close()


@pytest.mark.usefixtures("node_coap")
def test_mqttjs_device_in_the_browser(api_server_factory):
    """MQTT.js in headless Chromium logs in as a device over WebSocket and
    gets the message a TCP client publishes."""
    page = PageServer()
    browser = None
    try:
        srv = api_server_factory()
        dev = create_device(srv)
        topic = "events/%s/to-browser" % dev["id"]
        frag = "url=ws://%s:%d/mqtt&id=%s&secret=%s&topic=%s" % (
            srv.host, srv.http_port, dev["id"], dev["secret"], topic)
        browser = Browser(page.origin + "/mqtt.html#" + frag)
        got = page.next()
        assert got["kind"] == "subscribed", (got, srv.log_tail())
        other = create_device(srv)
        c = Client(srv, client_id=other["id"], username=other["id"], password=other["secret"])
        c.connect()
        c.publish(topic, b"hello browser", qos=1)
        c.disconnect()
        got = page.next()
        assert got == {"kind": "message", "data": topic + " hello browser"}, got
    finally:
        if browser:
            browser.close()
        page.close()
