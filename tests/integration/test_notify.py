"""cyan under systemd's notification protocol, with the test as systemd: a
unix datagram socket of the test's own is NOTIFY_SOCKET, WATCHDOG_USEC asks
for the watchdog, and every datagram is recorded with the time it came.

What must hold (docs/operations.md, "Running under systemd"):
- READY=1 comes once, only when every shard accepts clients: not while a
  shard cannot start (a broken shard file), and then as soon as it can;
- WATCHDOG=1 every half WATCHDOG_USEC, not more seldom, and never for a
  WATCHDOG_PID that is not the supervisor's;
- the pings come from the supervisor's own loop: none while it is stopped
  (SIGSTOP), again after SIGCONT;
- and only while it supervises: they go on while a shard hangs and is
  replaced (one shard's fault must not restart the node), and they stop
  while its loop still turns but it can no longer do its job (its
  scoreboard removed: no new shard could start), which a timer feeding
  systemd regardless would not do;
- STATUS= lines, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 at SIGTERM;
- the shards inherit none of the variables.
"""

import os
import signal
import socket
import tempfile
import threading
import time

import pytest

from conftest import SHARDS

pytestmark = pytest.mark.cyan_only

WATCHDOG_USEC = 1000000  # WatchdogSec=1: a ping every 0.5 s


class Systemd:
    """The notify socket: datagrams as (monotonic time, text), in order."""

    def __init__(self, abstract=False):
        self.dir = tempfile.mkdtemp(prefix="cysd", dir="/tmp")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            self.name = "@cyan-test-notify-%d-%d" % (os.getpid(), id(self))
            self.sock.bind("\0" + self.name[1:])
        else:
            self.name = os.path.join(self.dir, "notify")
            self.sock.bind(self.name)
        self.sock.settimeout(0.1)
        self.msgs = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.msgs.append((time.monotonic(), data.decode("utf-8", "replace")))

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()
        if not self.name.startswith("@"):
            os.unlink(self.name)
        os.rmdir(self.dir)

    def all(self):
        with self.lock:
            return list(self.msgs)

    def with_field(self, field, since=0.0):
        """[(t, message)] of the messages holding field (e.g. "READY=1")."""
        return [(t, m) for t, m in self.all() if t >= since and field in m.split("\n")]

    def pings(self, since=0.0, until=None):
        return [t for t, m in self.with_field("WATCHDOG=1", since)
                if until is None or t <= until]

    def wait(self, field, timeout, since=0.0):
        """The time of the first message with field after since, or fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.with_field(field, since)
            if found:
                return found[0][0]
            time.sleep(0.02)
        raise AssertionError("no %s within %.1f s; got: %r" % (field, timeout, self.all()[-20:]))

    def statuses(self, since=0.0):
        out = []
        for t, m in self.all():
            if t < since:
                continue
            for line in m.split("\n"):
                if line.startswith("STATUS="):
                    out.append(line[7:])
        return out


@pytest.fixture
def systemd(request):
    sd = Systemd()
    yield sd
    sd.close()


def start(server_factory, monkeypatch, sd, usec=WATCHDOG_USEC, pid=None, **settings):
    monkeypatch.setenv("NOTIFY_SOCKET", sd.name)
    monkeypatch.setenv("WATCHDOG_USEC", str(usec))
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(pid))
    srv = server_factory(_template=False, **settings)
    monkeypatch.delenv("NOTIFY_SOCKET")
    monkeypatch.delenv("WATCHDOG_USEC")
    return srv


def max_gap(times):
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def test_ready_pings_status_reload_stop(server_factory, monkeypatch, systemd):
    srv = start(server_factory, monkeypatch, systemd)
    t_ready = systemd.wait("READY=1", 20)
    # Ready means every shard accepts: the supervisor says so in one line.
    assert srv.wait_log("supervisor: ready in"), srv.log_tail()
    ready_msg = systemd.with_field("READY=1")[0][1]
    assert "STATUS=%d of %d shard" % (SHARDS, SHARDS) in ready_msg, ready_msg
    assert any(s.startswith("starting") for s in systemd.statuses()), systemd.all()

    # Pings every half WATCHDOG_USEC, from then on (a gap must stay under
    # WATCHDOG_USEC itself, what systemd would act on, on a loaded machine).
    time.sleep(3.0)
    pings = systemd.pings(since=t_ready)
    assert 4 <= len(pings) <= 8, pings
    assert max_gap(pings) < 0.95, pings

    # No child inherits the variables (they are not systemd's main process).
    pids = list(srv.wait_shard_pids().values()) + [srv.monitor_pid()]
    for pid in pids:
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = f.read()
        for name in (b"NOTIFY_SOCKET", b"WATCHDOG_USEC", b"WATCHDOG_PID"):
            assert name not in env, (pid, name)

    # A reload: RELOADING=1 (with the monotonic clock), then READY=1 again.
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGHUP)
    t_rel = systemd.wait("RELOADING=1", 5, since=t0)
    msg = systemd.with_field("RELOADING=1", t0)[0][1]
    assert any(l.startswith("MONOTONIC_USEC=") and int(l[15:]) > 0 for l in msg.split("\n")), msg
    systemd.wait("READY=1", 5, since=t_rel)
    assert len(systemd.with_field("READY=1")) == 2

    # SIGTERM: STOPPING=1 first.
    t0 = time.monotonic()
    assert srv.stop() == 0
    systemd.wait("STOPPING=1", 2, since=t0)


def test_ready_waits_for_every_shard(server_factory, monkeypatch, systemd, tmp_path):
    """A shard that cannot start (its file is not a database) holds READY=1
    back; STATUS says which; once it can start, READY=1 comes."""
    broken = {}

    def prepare(srv):
        path = os.path.join(srv.data_dir, "shard-0.db")
        with open(path, "wb") as f:
            f.write(b"this is not a SQLite database\n" * 100)
        broken["path"] = path

    monkeypatch.setenv("NOTIFY_SOCKET", systemd.name)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    srv = server_factory(_template=False, _prepare=prepare)
    monkeypatch.delenv("NOTIFY_SOCKET")
    monkeypatch.delenv("WATCHDOG_USEC")
    # Shard 0 exits at start, again and again (its crash-loop backoff grows).
    assert srv.wait_log("shard 0 (pid", timeout=10) and srv.wait_log("respawning in", 10), \
        srv.log_tail()
    time.sleep(2.0)
    assert not systemd.with_field("READY=1"), systemd.all()
    statuses = systemd.statuses()
    assert any("starting" in s and "shard 0 down" in s for s in statuses), statuses
    # The supervisor supervises (a crash loop is handled): it keeps pinging.
    assert len(systemd.pings()) >= 3, systemd.all()
    assert "supervisor: ready" not in srv.log()
    os.unlink(broken["path"])
    t_ready = systemd.wait("READY=1", 40)
    assert srv.wait_log("supervisor: ready in"), srv.log_tail()
    assert t_ready > 0


def test_pings_stop_while_supervisor_stopped(server_factory, monkeypatch, systemd):
    srv = start(server_factory, monkeypatch, systemd)
    systemd.wait("READY=1", 20)
    time.sleep(1.2)
    t_stop = time.monotonic()
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)
    finally:
        t_cont = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGCONT)
    # At most one ping was on its way when the stop landed.
    during = systemd.pings(since=t_stop + 0.05, until=t_cont)
    assert not during, (during, t_stop, t_cont)
    t_next = systemd.wait("WATCHDOG=1", 2.0, since=t_cont)
    assert t_next - t_cont < 1.0
    time.sleep(1.5)
    assert max_gap(systemd.pings(since=t_next)) < 0.95


def test_pings_go_on_while_a_shard_is_replaced(server_factory, monkeypatch, systemd):
    """A hung shard is the supervisor's job, not systemd's: pings go on."""
    srv = start(server_factory, monkeypatch, systemd, watchdog_timeout=1000)
    systemd.wait("READY=1", 20)
    victim = srv.wait_shard_pids()[0]
    t0 = time.monotonic()
    srv.cli("shard", "stop", "0")
    assert srv.wait_log("shard 0 (pid %d) no heartbeat" % victim, timeout=6), srv.log_tail()
    new = srv.wait_shard_pids(timeout=10)[0]
    assert new != victim
    time.sleep(1.0)
    pings = systemd.pings(since=t0)
    assert max_gap(pings) < 0.95, pings
    assert "not healthy" not in srv.log()


def test_pings_stop_when_supervision_is_broken(server_factory, monkeypatch, systemd):
    """The loop turns (it still answers SIGHUP) but no shard could be
    started any more: pings stop, and the log and STATUS say why."""
    srv = start(server_factory, monkeypatch, systemd)
    systemd.wait("READY=1", 20)
    time.sleep(1.2)
    assert systemd.pings()
    t0 = time.monotonic()
    os.unlink(os.path.join(srv.data_dir, "run", "scoreboard"))
    assert srv.wait_log("supervisor: not healthy: the scoreboard", timeout=3), srv.log_tail()
    t_bad = time.monotonic()
    time.sleep(2.5)
    late = systemd.pings(since=t_bad)
    assert not late, late
    # At most the ping of the second before the judgement came after t0.
    assert len(systemd.pings(since=t0)) <= 2
    assert any(s.startswith("NOT HEALTHY") for s in systemd.statuses(since=t0)), \
        systemd.statuses(since=t0)
    # Its loop turns: a reload is still taken and announced.
    t1 = time.monotonic()
    srv.proc.send_signal(signal.SIGHUP)
    systemd.wait("RELOADING=1", 5, since=t1)
    systemd.wait("READY=1", 5, since=t1)
    assert not systemd.pings(since=t_bad)


def test_watchdog_of_another_pid_and_abstract_socket(server_factory, monkeypatch):
    """WATCHDOG_PID names another process: cyan sends no WATCHDOG=1 (the
    rest is for it still). The socket is abstract ("@name")."""
    sd = Systemd(abstract=True)
    try:
        srv = start(server_factory, monkeypatch, sd, pid=1)
        t = sd.wait("READY=1", 20)
        assert t > 0
        # The supervisor says what it decided (rather than this test
        # waiting and finding no ping, which proves nothing).
        assert srv.wait_log("under systemd (notify socket @"), srv.log_tail()
        assert "no watchdog" in srv.log(), srv.log_tail()
        assert not sd.pings(), sd.all()
    finally:
        sd.close()


def test_malformed_watchdog_usec_is_said(server_factory, monkeypatch, systemd):
    """A WATCHDOG_USEC that is no positive number was ignored without a
    word, and systemd (if WatchdogSec= is set) restarts a node that never
    pings it: the supervisor says so at start."""
    srv = start(server_factory, monkeypatch, systemd, usec="12x")
    assert systemd.wait("READY=1", 20) > 0
    assert srv.wait_log("WATCHDOG_USEC is not a positive number"), srv.log_tail()
    assert not systemd.pings(), systemd.all()
