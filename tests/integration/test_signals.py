"""Signals to a running node, and a start that cannot work.

- SIGHUP to the supervisor re-reads the config file given with -c (the
  command line's --name=value stay on top), applies the settings that can
  change at runtime (log level, limits read at each use) in the supervisor
  and in every shard, without restarting any, and names each other change
  as not applied. Before: SIGHUP stopped the whole node, with no line from
  the supervisor.
- A config file with an error changes nothing: one error line.
- A shard respawned after a reload runs with the reloaded settings.
- SIGUSR1, SIGUSR2 (what log-rotation tools send) and SIGHUP to a shard, and
  SIGUSR1/SIGUSR2 to the supervisor, do nothing but log once. Before:
  SIGUSR1 stalled a shard, SIGUSR2 made it spin (the drills sat on them),
  SIGHUP killed it, and SIGUSR1/SIGUSR2 killed the supervisor.
- A data_dir so long that the bus sockets (data_dir/run/shard-N.sock) do not
  fit a unix socket path is refused at start, before anything is created.
  Before: every shard aborted at start (uv_close on handles never
  initialised) and was respawned forever.

The drills themselves (`cyan shard spin|stall`, now a realtime signal with a
token) are exercised by test_shards.py and test_orphans.py.
"""

import os
import re
import signal
import subprocess
import tempfile
import time
import shutil

import pytest

from conftest import CYAN_BIN, SHARDS, Server, child_env
from helpers import CYAN, Client, raw_connected, uniq, wait_until

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's supervisor and signals"),
]


@pytest.fixture
def conf_server(server_factory):
    """conf_server(conf_text, **settings) -> a started Server that reads the
    config file srv.conf (-c) and has no --log_level on its command line, so
    the file's log_level counts."""

    def start(conf_text, **settings):
        def prepare(srv):
            srv.conf = os.path.join(srv.workdir, "cyan.conf")
            with open(srv.conf, "w") as f:
                f.write(conf_text)
            base = Server.argv
            srv.argv = lambda: [a for a in base(srv) if not a.startswith("--log_level=")] + \
                ["-c", srv.conf]

        return server_factory(_prepare=prepare, **settings)

    return start


def nshards(srv):
    return int(srv.settings.get("shards", SHARDS))


def shard_pids(srv, timeout=10.0):
    """{index: pid} of srv's shards, from `cyan status`, once all are RUNNING."""
    found = {}

    def scan():
        found.clear()
        out = srv.cli("status", check=False).stdout
        for line in out.splitlines():
            m = re.match(r"\s*(\d+)\s+(\d+)\s+RUNNING\b", line)
            if m:
                found[int(m.group(1))] = int(m.group(2))
        return len(found) == nshards(srv)

    assert wait_until(scan, timeout), "shards not all up: %r\n%s" % (found, srv.log_tail())
    return dict(found)


def hup(srv, conf_text):
    with open(srv.conf, "w") as f:
        f.write(conf_text)
    srv._log_note("SIGHUP with:\n" + conf_text)
    mark = len(srv.log())
    os.kill(srv.proc.pid, signal.SIGHUP)
    return mark


def since(srv, mark):
    return srv.log()[mark:]


def wait_reloaded(srv, mark, what):
    """Until the supervisor and every shard logged this reload."""
    n = nshards(srv)
    ok = wait_until(lambda: "supervisor: SIGHUP: reloaded the config" in since(srv, mark) and
                    all(("shard %d: reload applied: %s" % (i, what)) in since(srv, mark)
                        for i in range(n)), 5.0)
    assert ok, "reload not logged by all %d shards:\n%s" % (n, srv.log_tail())


def subscribe_code(srv, device, topic_filter):
    """The SUBACK code for one filter; also the barrier for the debug line."""
    c, _ = raw_connected(srv, device, client_id=uniq("sig"))
    with c:
        ack = c.subscribe([(topic_filter, 1)])
        c.disconnect()
    return ack.codes[0]


def round_trip(srv, device, timeout=5.0):
    """A publish that must come back through the node."""
    c = Client(srv, device)
    c.connect()
    try:
        topic = "rt/" + uniq("x")
        c.subscribe(topic, 1)
        c.publish(topic, b"ping", qos=1)
        m = c.get(timeout=timeout)
        assert m is not None and m.payload == b"ping"
    finally:
        c.disconnect()


BASE = "log_level = info\nmax_topic_length = 512\n"


def test_sighup_reloads_log_level_and_limit_without_restarting(conf_server):
    srv = conf_server(BASE)
    dev = srv.add_device()
    assert srv.wait_log("supervisor: all %d shards running" % nshards(srv), 10.0)
    before = shard_pids(srv)
    long_filter = "f/" + "a" * 40  # 42 bytes

    # info: no debug line for a subscription (the SUBACK is the barrier).
    f1 = long_filter[:-6] + uniq("")[-6:]
    assert subscribe_code(srv, dev, f1) == 1
    assert "subscribed to %s" % f1 not in srv.log()

    mark = hup(srv, "log_level = debug\nmax_topic_length = 20\nmax_inflight = 64\n")
    wait_reloaded(srv, mark, "log_level info -> debug, max_topic_length 512 -> 20")
    assert "max_inflight changed (32 -> 64) but cannot change at runtime" in since(srv, mark)
    assert "max_inflight" not in "".join(l for l in since(srv, mark).splitlines()
                                         if "reload applied" in l)

    # The limit: the same length of filter is refused now; debug lines show.
    f2 = long_filter[:-6] + uniq("")[-6:]
    assert subscribe_code(srv, dev, f2) >= 0x80
    f3 = "ok/" + uniq("")[-6:]
    assert subscribe_code(srv, dev, f3) == 1
    assert srv.wait_log("subscribed to %s" % f3, 3.0)
    round_trip(srv, dev)

    # And back: debug lines disappear again.
    mark = hup(srv, BASE)
    wait_reloaded(srv, mark, "log_level debug -> info, max_topic_length 20 -> 512")
    f4 = long_filter[:-6] + uniq("")[-6:]
    assert subscribe_code(srv, dev, f4) == 1
    assert "subscribed to %s" % f4 not in srv.log()
    round_trip(srv, dev)

    assert shard_pids(srv) == before, "a shard was restarted by a reload"
    assert srv.proc.poll() is None


def test_sighup_with_a_broken_config_changes_nothing(conf_server):
    srv = conf_server(BASE)
    dev = srv.add_device()
    assert srv.wait_log("supervisor: all %d shards running" % nshards(srv), 10.0)
    before = shard_pids(srv)
    mark = hup(srv, "log_level = debug\nmax_topic_length = banana\n")
    assert wait_until(lambda: "config not reloaded" in since(srv, mark), 5.0), srv.log_tail()
    # A later reload with a good file is the barrier: by the time its lines
    # are in, the broken one would have had its effect.
    lines = since(srv, mark)
    assert lines.count("config not reloaded, nothing changed") == 1, lines
    assert "cyan.conf:2" in lines and "max_topic_length" in lines
    f = "f/" + "a" * 34 + uniq("")[-6:]
    assert subscribe_code(srv, dev, f) == 1  # limit still 512
    assert "subscribed to %s" % f not in srv.log()  # still info
    assert "reload applied" not in since(srv, mark)
    round_trip(srv, dev)
    assert shard_pids(srv) == before


def test_a_shard_respawned_after_a_reload_has_the_reloaded_settings(conf_server):
    srv = conf_server(BASE, shards=1)
    dev = srv.add_device()
    first = shard_pids(srv)
    mark = hup(srv, "log_level = info\nmax_topic_length = 20\n")
    wait_reloaded(srv, mark, "max_topic_length 512 -> 20")
    # The file is broken now: the new shard must not read it.
    with open(srv.conf, "w") as f:
        f.write("max_topic_length = banana\n")
    srv.cli("shard", "kill", "0")
    assert wait_until(lambda: shard_pids(srv) != first, 10.0), srv.log_tail()
    srv.wait_api_healthy()
    assert subscribe_code(srv, dev, "f/" + "a" * 30) >= 0x80
    assert subscribe_code(srv, dev, "f/short") == 1


def test_sigusr_and_sighup_to_a_shard_do_nothing_harmful(conf_server):
    timeout_ms = 500
    srv = conf_server(BASE, watchdog_timeout=timeout_ms)
    dev = srv.add_device()
    assert srv.wait_log("supervisor: all %d shards running" % nshards(srv), 10.0)
    before = shard_pids(srv)
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        for pid in before.values():
            os.kill(pid, sig)
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1):
        os.kill(srv.proc.pid, sig)
    t0 = time.monotonic()
    # Publishes keep coming back for well over the watchdog's timeout: no
    # shard stalls, spins or is replaced meanwhile.
    trips = 0
    while time.monotonic() < t0 + 4 * timeout_ms / 1000.0 or trips < 3:
        round_trip(srv, dev)
        trips += 1
    assert shard_pids(srv) == before, srv.log_tail()
    assert srv.proc.poll() is None
    log = srv.log()
    for i in before:
        for name in ("SIGUSR1", "SIGUSR2", "SIGHUP"):
            assert log.count("shard %d: %s ignored (logged once)" % (i, name)) == 1, log
    assert log.count("supervisor: SIGUSR1 ignored") == 1
    assert log.count("supervisor: SIGUSR2 ignored") == 1
    assert "drill:" not in log
    assert "respawning" not in log


def test_a_data_dir_too_long_for_the_bus_is_refused_at_start():
    base = tempfile.mkdtemp(prefix="cy", dir="/tmp")
    try:
        data_dir = os.path.join(base, "d" * (110 - len(base)))
        t0 = time.monotonic()
        cp = subprocess.run([CYAN_BIN, "--data_dir=%s" % data_dir, "--shards=2",
                             "--mqtt_listen=127.0.0.1:0", "--http_listen=",
                             "--coap_listen=", "--coaps_listen="],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=20, env=child_env())
        out = cp.stdout + cp.stderr
        assert cp.returncode != 0, out
        assert "107" in out and "sun_path" in out and "data_dir" in out, out
        assert "started, generation" not in out, out
        assert not os.path.exists(data_dir), "created before refusing"
        assert time.monotonic() - t0 < 10
    finally:
        shutil.rmtree(base, ignore_errors=True)
