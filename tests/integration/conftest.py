"""Fixtures for the integration tests: the real cyan binary on a free port of
127.0.0.1, its devices, and clients (paho, mosquitto_pub/sub, raw sockets).

Environment:
  CYAN_BIN    the binary (default: <repo>/build/cyan; `make integration` sets the
              ASan build).
  CYAN_SHARDS how many shard processes cyan runs (default 1); `make integration`
              runs the suite with 1 and again with 4, so every MQTT behaviour
              holds across shards as on one.
  CYAN_PEER   "mosquitto": run the generic tests against Debian's mosquitto
              instead, to validate the tests' own logic. Tests marked cyan_only
              are skipped then.

HTTP API: every cyan server also serves the API on a free port of 127.0.0.1
(server.http_port, server.api_url) and is ready once that port accepts too.
Servers run with isolate_devices=false unless the test's settings say
otherwise: the generic MQTT tests use free client ids and topics, as on any
broker. Likewise status events (cyan/status, a device online or offline)
are off (presence_event_rate=0) unless the settings turn them on: tests
that count or order the events of a stream or a webhook predate them, and
test_presence.py turns them on. The API tests use api_server_factory / api_server:
isolate_devices=true, an empty data dir, all shards healthy.

Every server is started in its own short temporary directory (unix socket
paths must stay short), with its stdout+stderr in server.log there. A server
stopped with SIGTERM must exit 0 within 5 s: under ASan a leak makes the exit
code non-zero, and the test errors in teardown. When a test fails, the log of
each server it started is attached to the report.
"""

import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from helpers import Device

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CYAN_BIN = os.environ.get("CYAN_BIN") or os.path.join(REPO, "build", "cyan")
PEER = os.environ.get("CYAN_PEER", "")
SHARDS = int(os.environ.get("CYAN_SHARDS", "1"))
MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"

READY_TIMEOUT = 10.0
# Devices pre-registered once per run in a template data dir that each cyan
# server starts from (`cyan device add` costs ~0.1 s under ASan; tests use
# several devices each). add_device() hands these out first, then runs the CLI.
POOL_SIZE = 6
STOP_TIMEOUT = 5.0
LOG_TAIL_CHARS = 40000


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cyan_only: cyan-specific behaviour (credentials, CLI, $SYS/cyan, "
        "cyan limits, restart persistence); skipped with CYAN_PEER=mosquitto")
    if PEER and PEER != "mosquitto":
        raise pytest.UsageError("CYAN_PEER must be empty or 'mosquitto'")


def pytest_report_header(config):
    if PEER:
        return "integration: peer %s (%s)" % (PEER, MOSQUITTO)
    return "integration: cyan binary %s" % CYAN_BIN


def pytest_collection_modifyitems(config, items):
    if PEER != "mosquitto":
        return
    skip = pytest.mark.skip(reason="cyan-only behaviour (CYAN_PEER=mosquitto)")
    for item in items:
        if "cyan_only" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "_rep_" + rep.when, rep)
    if rep.failed:
        for srv in getattr(item, "_cyan_servers", []):
            rep.sections.append(("server log %s" % srv.log_path, srv.log_tail()))


def free_port(kind=socket.SOCK_STREAM):
    """A free TCP (or, with kind SOCK_DGRAM, UDP) port of HOST."""
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def free_udp_port():
    return free_port(socket.SOCK_DGRAM)


def child_env():
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    return env


# Settings that have a mosquitto equivalent in peer mode (cyan name ->
# mosquitto global option). Others are cyan-only and ignored by the peer.
_MOSQ_GLOBAL = {
    "max_keepalive": "max_keepalive",
    "max_packet_size": "max_packet_size",
    "max_queued": "max_queued_messages",
    "max_inflight": "max_inflight_messages",
    "sys_interval": "sys_interval",
}


class _PortTaken(Exception):
    """cyan could not bind a port free_port() had found free."""


class Server:
    """One broker process (cyan, or mosquitto in peer mode) on HOST:port with
    its own data directory. restart() keeps the port and the data dir."""

    def __init__(self, workdir, settings, template=None):
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data")
        self.pool = []
        if template is not None and PEER != "mosquitto":
            tpl_dir, devices = template
            shutil.copytree(tpl_dir, self.data_dir)
            self.pool = list(devices)
        os.makedirs(self.data_dir, exist_ok=True)
        self.log_path = os.path.join(workdir, "server.log")
        self.host = HOST
        self.port = free_port()
        self.settings = dict(settings)
        self.proc = None
        self.starts = 0
        self.nofile = None  # RLIMIT_NOFILE (soft and hard) for the server, or None
        self.peer = PEER
        self._devno = 0
        # The HTTP API: on a free port unless the settings choose (or, with
        # an empty http_listen, turn it off).
        self.http_port = None
        self.api_url = None
        self._admin_token = None
        if self.peer != "mosquitto":
            listen = self.settings.get("http_listen")
            if listen is None:
                self.http_port = free_port()
            elif listen:
                self.http_port = int(str(listen).rsplit(":", 1)[1])
            if self.http_port is not None:
                self.api_url = "http://%s:%d" % (self.host, self.http_port)
        # The operations listener (the monitor process): likewise.
        self.ops_port = None
        self.ops_url = None
        if self.peer != "mosquitto":
            listen = self.settings.get("ops_listen")
            if listen is None:
                self.ops_port = free_port()
            elif listen:
                self.ops_port = int(str(listen).rsplit(":", 1)[1])
            if self.ops_port is not None:
                self.ops_url = "http://%s:%d" % (self.host, self.ops_port)
        # CoAP (UDP) and CoAP over DTLS: likewise, on free UDP ports.
        self.coap_port = self.coaps_port = None
        if self.peer != "mosquitto":
            for key in ("coap_listen", "coaps_listen"):
                listen = self.settings.get(key)
                port = free_udp_port() if listen is None else \
                    int(str(listen).rsplit(":", 1)[1]) if listen else None
                setattr(self, key.replace("_listen", "_port"), port)
        # MQTT over TLS: on a free port when the settings give a certificate.
        self.mqtts_port = None
        if self.peer != "mosquitto" and self.settings.get("tls_cert"):
            listen = self.settings.get("mqtts_listen")
            self.mqtts_port = free_port() if listen is None else \
                int(str(listen).rsplit(":", 1)[1]) if listen else None

    # ---- process
    def argv(self):
        if self.peer == "mosquitto":
            return [MOSQUITTO, "-c", self._mosquitto_conf()]
        argv = [CYAN_BIN, "--data_dir=%s" % self.data_dir,
                "--mqtt_listen=%s:%d" % (self.host, self.port),
                "--log_level=debug", "--sys_interval=1"]
        if "shards" not in self.settings:
            argv.append("--shards=%d" % SHARDS)
        if "http_listen" not in self.settings and self.http_port is not None:
            argv.append("--http_listen=%s:%d" % (self.host, self.http_port))
        if "ops_listen" not in self.settings and self.ops_port is not None:
            argv.append("--ops_listen=%s:%d" % (self.host, self.ops_port))
        for key in ("coap_listen", "coaps_listen"):
            port = getattr(self, key.replace("_listen", "_port"))
            if key not in self.settings and port is not None:
                argv.append("--%s=%s:%d" % (key, self.host, port))
        if "mqtts_listen" not in self.settings and self.mqtts_port is not None:
            argv.append("--mqtts_listen=%s:%d" % (self.host, self.mqtts_port))
        if "isolate_devices" not in self.settings:
            argv.append("--isolate_devices=false")
        if "presence_event_rate" not in self.settings:
            argv.append("--presence_event_rate=0")
        for k, v in self.settings.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            argv.append("--%s=%s" % (k, v))
        return argv

    def _mosquitto_conf(self):
        path = os.path.join(self.workdir, "mosquitto.conf")
        lines = [
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence true",
            "persistence_location %s/" % self.data_dir,
            "autosave_interval 1",
            "autosave_on_changes true",
            "user root",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            "sys_interval 1",
        ]
        listener = ["listener %d %s" % (self.port, self.host)]
        for k, v in self.settings.items():
            if k in _MOSQ_GLOBAL and k != "sys_interval":
                lines.append("%s %s" % (_MOSQ_GLOBAL[k], v))
            elif k == "max_connections":
                listener.append("max_connections %s" % v)
            elif k == "topic_alias_max":
                listener.append("max_topic_alias %s" % v)
        with open(path, "w") as f:
            f.write("\n".join(lines + listener) + "\n")
        return path

    def start(self):
        """Start and wait until ready. A port taken between free_port() and
        cyan's bind (by another test's server, or as a client socket's
        ephemeral port) is not this test's failure: the ports we chose are
        chosen again, up to 3 times, on the first start only."""
        for attempt in range(3):
            try:
                return self._start_once()
            except _PortTaken:
                if self.starts > 1 + attempt:  # a restart keeps its ports
                    raise
                self.port = free_port()
                if "http_listen" not in self.settings and self.http_port is not None:
                    self.http_port = free_port()
                    self.api_url = "http://%s:%d" % (self.host, self.http_port)
                if "ops_listen" not in self.settings and self.ops_port is not None:
                    self.ops_port = free_port()
                    self.ops_url = "http://%s:%d" % (self.host, self.ops_port)
                for key in ("coap_listen", "coaps_listen"):
                    attr = key.replace("_listen", "_port")
                    if key not in self.settings and getattr(self, attr) is not None:
                        setattr(self, attr, free_udp_port())
                if "mqtts_listen" not in self.settings and self.mqtts_port is not None:
                    self.mqtts_port = free_port()
                self.starts -= 1
        return self._start_once()

    def _start_once(self):
        assert self.proc is None, "already running"
        if self.peer != "mosquitto" and not os.access(CYAN_BIN, os.X_OK):
            pytest.fail("cyan binary not found: %s (set CYAN_BIN or build it)" % CYAN_BIN)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(("==== start #%d: %s\n" % (self.starts, " ".join(self.argv()))).encode())
            log.flush()
            limits = None
            if self.nofile:
                import resource
                n = self.nofile
                limits = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=child_env(),
                                         cwd=self.workdir, preexec_fn=limits)
        self._wait_ready()
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                tail = self.log_tail()
                if "Address already in use" in tail.rsplit("==== start #", 1)[-1]:
                    raise _PortTaken()
                pytest.fail("server exited with %s before accepting connections\n%s"
                            % (rc, tail))
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                if self.http_port is not None:
                    socket.create_connection((self.host, self.http_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.kill()
        pytest.fail("server not accepting on %s:%d%s after %.0fs\n%s"
                    % (self.host, self.port,
                       " and HTTP %d" % self.http_port if self.http_port else "",
                       READY_TIMEOUT, self.log_tail()))

    def stop(self, check=True):
        """SIGTERM, wait up to 5 s (then SIGKILL). With check, the exit code
        must be 0 (a leak under ASan makes it non-zero)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            if check:
                pytest.fail("server did not exit within %.0fs of SIGTERM\n%s"
                            % (STOP_TIMEOUT, self.log_tail()))
            return None
        self._log_note("exited with %d after SIGTERM" % rc)
        if check and rc != 0:
            pytest.fail("server exited with %d after SIGTERM (leak or crash?)\n%s"
                        % (rc, self.log_tail()))
        return rc

    def kill(self):
        """SIGKILL: no chance to flush anything."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.kill()
        proc.wait(5)
        self._log_note("killed with SIGKILL")
        self._wait_shards_gone()

    def _wait_shards_gone(self, timeout=10.0):
        """After the supervisor's SIGKILL its shards die with it (the kernel
        kills them), still holding the listening sockets for a moment.
        A restart must not begin before they are gone: its readiness probe
        would reach the old sockets."""
        if self.peer == "mosquitto":
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.shard_pids():
                break
            time.sleep(0.02)
        else:
            pytest.fail("shards of the killed server still running after %.0fs\n%s"
                        % (timeout, self.log_tail()))
        # A shard killed mid-exit shows no command line any more but keeps
        # its files, the listening sockets among them, until it is gone (an
        # ASan process takes a while to unmap): the data folder's lock, which
        # every process of a run holds, is free only then.
        lock = os.path.join(self.data_dir, "run", "lock")
        if not os.path.exists(lock):
            return
        with open(lock, "rb") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.02)
        pytest.fail("processes of the killed server still hold %s after %.0fs\n%s"
                    % (lock, timeout, self.log_tail()))

    def _procs(self, kind):
        """{slot index: pid} of this server's `cyan KIND INDEX ...` processes
        now (kind "shard" or "monitor"), from /proc, zombies left out."""
        needle = ("--data_dir=%s" % self.data_dir).encode()
        found = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    args = f.read().split(b"\0")
                with open("/proc/%s/stat" % pid) as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2] in "ZX":
                continue
            if len(args) > 3 and args[1] == kind.encode() and needle in args:
                found[int(args[2])] = int(pid)
        return found

    def shard_pids(self):
        """{shard index: pid} of this server's shard processes now."""
        return self._procs("shard")

    def monitor_pid(self):
        """The pid of this server's monitor process now, or None."""
        pids = list(self._procs("monitor").values())
        return pids[0] if pids else None

    def ops_get(self, path, token=None, timeout=3.0):
        """GET path on the operations listener: (status, headers dict, body
        bytes), or (None, {}, repr of the error) if it does not answer."""
        import http.client
        conn = http.client.HTTPConnection(self.host, self.ops_port, timeout=timeout)
        try:
            headers = {"Authorization": "Bearer " + token} if token else {}
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        except (OSError, http.client.HTTPException) as e:
            return None, {}, repr(e).encode()
        finally:
            conn.close()

    def metrics(self, timeout=3.0):
        """{(name, labels text): value} from GET /metrics (waits, bounded,
        for the monitor to serve it)."""
        deadline = time.monotonic() + timeout
        while True:
            status, _, body = self.ops_get("/metrics")
            if status == 200 or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        assert status == 200, "GET /metrics: %r %r\n%s" % (status, body[:300], self.log_tail())
        out = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            series, value = line.rsplit(" ", 1)
            if "{" in series:
                name, labels = series[:-1].split("{", 1)
            else:
                name, labels = series, ""
            out[(name, labels)] = float(value)
        return out

    def wait_shard_pids(self, timeout=10.0):
        """shard_pids() once every shard of this server runs (a shard's pid is
        in /proc as soon as it is forked, its command line only once it has
        started)."""
        n = int(self.settings.get("shards", SHARDS))
        deadline = time.monotonic() + timeout
        while True:
            pids = self.shard_pids()
            if len(pids) == n or time.monotonic() >= deadline:
                assert len(pids) == n, "%d of %d shards running\n%s" % (
                    len(pids), n, self.log_tail())
                return pids
            time.sleep(0.02)

    def restart(self, kill=False, **settings):
        """Stop (SIGTERM and check exit 0, or SIGKILL) and start again on the
        same port and data dir; settings update the command line."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.settings.update(settings)
        return self.start()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- HTTP API
    @property
    def admin_token_path(self):
        return os.path.join(self.data_dir, "admin-token")

    def admin_token(self, timeout=3.0):
        """The full-access token the first start wrote to data_dir/admin-token
        ("<token>\\n"); waits for the file (bounded), cached."""
        if self._admin_token is None:
            deadline = time.monotonic() + timeout
            text = ""
            while True:
                try:
                    with open(self.admin_token_path) as f:
                        text = f.read()
                except OSError:
                    text = ""
                if text.endswith("\n") or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            if not text.strip():
                pytest.fail("no admin token in %s within %.1fs\n%s"
                            % (self.admin_token_path, timeout, self.log_tail()))
            self._admin_token = text.strip()
        return self._admin_token

    def wait_api_healthy(self, timeout=READY_TIMEOUT):
        """Wait until GET /v1/health answers 200 (every shard healthy)."""
        import http.client
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection(self.host, self.http_port, timeout=2)
            try:
                conn.request("GET", "/v1/health")
                r = conn.getresponse()
                last = (r.status, r.read()[:500])
                if r.status == 200:
                    return
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            finally:
                conn.close()
            time.sleep(0.05)
        pytest.fail("GET /v1/health not 200 within %.0fs (last: %r)\n%s"
                    % (timeout, last, self.log_tail()))

    # ---- logs
    def _log_note(self, text):
        with open(self.log_path, "ab") as f:
            f.write(("==== %s\n" % text).encode())

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=LOG_TAIL_CHARS):
        text = self.log()
        if len(text) > n:
            text = "...(%d chars cut)...\n" % (len(text) - n) + text[-n:]
        return text

    def wait_log(self, needle, timeout=3.0):
        """True once needle appears in the log (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log():
                return True
            time.sleep(0.05)
        return needle in self.log()

    # ---- cli
    def cli(self, *args, timeout=20, check=True, data_dir=True):
        """Run `cyan ARGS --data_dir=DIR`; returns CompletedProcess (text)."""
        argv = [CYAN_BIN] + list(args) + (["--data_dir=%s" % self.data_dir] if data_dir else [])
        cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout, env=child_env())
        if check and cp.returncode != 0:
            pytest.fail("%s exited %d\nstdout:\n%s\nstderr:\n%s"
                        % (" ".join(argv), cp.returncode, cp.stdout, cp.stderr))
        return cp

    def add_device(self, name=None):
        """A new device (id, secret, name). In peer mode mosquitto accepts
        anyone, so credentials are made up with the same shape."""
        self._devno += 1
        if name is None and self.pool:
            return self.pool.pop(0)
        if name is None:
            name = "dev%d-%s" % (self._devno, secrets.token_hex(3))
        if self.peer == "mosquitto":
            return Device(secrets.token_hex(12), secrets.token_hex(16), name)
        cp = self.cli("device", "add", name)
        return Device.parse(cp.stdout, name)


@pytest.fixture(scope="session")
def device_template():
    """(data dir holding POOL_SIZE registered devices, [Device]) or None."""
    if PEER == "mosquitto" or not os.access(CYAN_BIN, os.X_OK):
        yield None
        return
    workdir = tempfile.mkdtemp(prefix="cytpl", dir="/tmp")
    data_dir = os.path.join(workdir, "data")
    os.makedirs(data_dir)
    devices = []
    for i in range(POOL_SIZE):
        name = "pool%d" % i
        cp = subprocess.run([CYAN_BIN, "device", "add", name, "--data_dir=%s" % data_dir],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=20, env=child_env())
        if cp.returncode != 0:
            shutil.rmtree(workdir, ignore_errors=True)
            yield None  # each test then registers its own and reports the failure
            return
        devices.append(Device.parse(cp.stdout, name))
    yield data_dir, devices
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def server_factory(request, device_template):
    """server_factory(**settings) -> a started Server. Settings become
    --key=value options of cyan; _prepare(srv), if given, runs before the
    start. All are stopped (exit code checked) at
    teardown; their work dirs are removed when the test passed."""
    servers = []
    request.node._cyan_servers = servers

    def start(_template=True, _prepare=None, **settings):
        workdir = tempfile.mkdtemp(prefix="cy", dir="/tmp")
        srv = Server(workdir, settings, device_template if _template else None)
        servers.append(srv)
        if _prepare is not None:  # e.g. a config file for -c, before the start
            _prepare(srv)
        return srv.start()

    yield start
    failed = []
    for srv in servers:
        try:
            srv.stop(check=True)
        except BaseException as e:  # keep stopping the others
            failed.append(e)
    rep = getattr(request.node, "_rep_call", None)
    if not failed and (rep is None or rep.passed):
        for srv in servers:
            shutil.rmtree(srv.workdir, ignore_errors=True)
    if failed:
        raise failed[0]


@pytest.fixture
def api_server_factory(server_factory):
    """api_server_factory(**settings) -> a started cyan with its HTTP API, on
    an empty data dir (the first start writes admin-token), with
    isolate_devices=true unless settings say otherwise, once GET /v1/health
    says every shard is healthy."""
    if PEER == "mosquitto":
        pytest.skip("the HTTP API is cyan's")
    def start(**settings):
        settings.setdefault("isolate_devices", True)
        srv = server_factory(_template=False, **settings)
        srv.wait_api_healthy()
        return srv

    return start


@pytest.fixture
def api_server(api_server_factory):
    """cyan with its HTTP API, defaults (isolate_devices=true)."""
    return api_server_factory()


@pytest.fixture
def coap_server(api_server_factory):
    """cyan with its API, isolate_devices=true, and plain CoAP taken."""
    return api_server_factory(coap_insecure=True)


@pytest.fixture
def coap_open_server(server_factory):
    """No isolation, anonymous MQTT (to watch any topic), plain CoAP taken."""
    if PEER == "mosquitto":
        pytest.skip("CoAP is cyan's")
    srv = server_factory(_template=False, coap_insecure=True, allow_anonymous=True)
    srv.wait_api_healthy()
    return srv


@pytest.fixture
def server(server_factory):
    """cyan with its defaults (allow_anonymous=false)."""
    return server_factory()


@pytest.fixture
def device(server):
    """One registered device of `server`."""
    return server.add_device()


@pytest.fixture
def new_device(server):
    """Factory: new_device(name=None) -> Device of `server`."""
    return server.add_device
