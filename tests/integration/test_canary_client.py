"""`cyan canary` (docs/operations.md, "Canaries"): the canary client of
src/monitor/canary.c run from the command line against a running node.

Each shard gets a synthetic internal device whose id hashes to it; each
attempt publishes a QoS 1 event to itself (PUBACK and delivery back) and
answers a function call made through the HTTP API with an internal token.
Asserted: every step succeeds on every shard (with CYAN_SHARDS=1 and 4),
the devices really live on their shards, --shard and --count do what they
say, bad arguments exit 2, and with one shard stopped (SIGSTOP, the
watchdog held off) that shard's steps fail within the timeout while every
other shard's succeed, and all succeed again once it runs.

Why SIGSTOP and not `cyan shard stall`: a stalled shard still accepts TCP
connections (MQTT and HTTP) and serves what other shards hand over to it,
so which shards' probes fail depends on where the kernel puts each new
connection; a stopped shard accepts nothing, so the result is exact.
"""

import re
import subprocess
import time

import pytest

from conftest import CYAN_BIN, SHARDS, child_env
from test_shards import shard_of

pytestmark = pytest.mark.cyan_only

TIMEOUT_S = 3.0  # CY_CANARY_TIMEOUT_MS
LINE_RE = re.compile(r"^shard (\d+) device ([0-9a-f]{24}): (publish|call)\s+#(\d+) "
                     r"(?:ok ([0-9.]+) ms|FAILED after ([0-9.]+) ms: (.*))$")


class Probe:
    """The parsed output of one `cyan canary` run."""

    def __init__(self, cp, elapsed):
        self.cp = cp
        self.elapsed = elapsed
        self.status = cp.returncode
        self.results = []   # (shard, device, step, seq, ok, ms, error)
        self.devices = {}   # shard -> device id
        self.summary = None
        for line in cp.stdout.splitlines():
            m = LINE_RE.match(line)
            if m:
                shard, dev, step, seq = int(m.group(1)), m.group(2), m.group(3), int(m.group(4))
                ok = m.group(5) is not None
                ms = float(m.group(5) if ok else m.group(6))
                self.results.append((shard, dev, step, seq, ok, ms, m.group(7)))
                assert self.devices.setdefault(shard, dev) == dev, cp.stdout
            elif line.startswith("canary: "):
                self.summary = line
            else:
                raise AssertionError("unexpected output line %r\n%s" % (line, cp.stdout))

    def of(self, shard, step=None):
        return [r for r in self.results if r[0] == shard and (step is None or r[2] == step)]

    def __repr__(self):
        return "exit %d after %.2fs\nstdout:\n%s\nstderr:\n%s" % (
            self.status, self.elapsed, self.cp.stdout, self.cp.stderr[-3000:])


def nshards(srv):
    return int(srv.settings.get("shards", SHARDS))


def probe(srv, *args, timeout=60):
    """Run `cyan canary ARGS` against srv (its listeners, shard count, data dir)."""
    argv = [CYAN_BIN, "canary"] + list(args) + [
        "--data_dir=%s" % srv.data_dir, "--mqtt_listen=%s:%d" % (srv.host, srv.port),
        "--http_listen=%s:%d" % (srv.host, srv.http_port), "--shards=%d" % nshards(srv),
        "--coap_listen=", "--coaps_listen="]
    t0 = time.monotonic()
    cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=timeout, env=child_env())
    return Probe(cp, time.monotonic() - t0)


def assert_all_ok(p, shards, count, n):
    """Every attempt of shards (of n) succeeded, numbered 1..count."""
    assert p.status == 0, p
    assert p.summary == "canary: all %d attempts succeeded" % (2 * count * len(shards)), p
    assert sorted(p.devices) == sorted(shards), p
    for s in shards:
        # The device's session lives on the shard it probes.
        assert shard_of(p.devices[s], n) == s, (s, p)
        for step in ("publish", "call"):
            got = p.of(s, step)
            assert [r[3] for r in got] == list(range(1, count + 1)), p
            for r in got:
                assert r[4], p
                assert 0 < r[5] < TIMEOUT_S * 1000, p


def test_probe_every_shard(api_server_factory):
    srv = api_server_factory()
    n = nshards(srv)
    p = probe(srv, "--count", "3")
    assert_all_ok(p, range(n), 3, n)
    # Three attempts, one interval (1 s) apart, after connecting.
    assert 1.5 < p.elapsed < 10, p
    # Again: the same devices (rotated secrets), and it works at once.
    q = probe(srv, "--count=1")
    assert_all_ok(q, range(n), 1, n)
    assert q.devices == p.devices, (p, q)


def test_probe_one_shard(api_server_factory):
    srv = api_server_factory()
    n = nshards(srv)
    p = probe(srv, "--shard", str(n - 1))
    assert_all_ok(p, [n - 1], 1, n)
    p = probe(srv, "--shard=0", "--count", "2")
    assert_all_ok(p, [0], 2, n)


def test_probe_bad_arguments(api_server_factory):
    srv = api_server_factory()
    n = nshards(srv)
    for args in (["--shard", str(n)], ["--shard", "-1"], ["--count", "0"], ["--count", "x"],
                 ["--shard"], ["--count=86401"], ["extra"], ["--read-only"]):
        p = probe(srv, *args)
        assert p.status == 2, (args, p)
        assert p.results == [], (args, p)
    # The flags are the canary's only.
    cp = srv.cli("device", "list", "--count", "1", check=False)
    assert cp.returncode == 2, cp


def test_probe_without_a_node(api_server_factory):
    """Nothing listens: every attempt fails, within the timeout, exit 1."""
    srv = api_server_factory()
    srv.stop()
    p = probe(srv, "--shard", "0")
    assert p.status == 1, p
    assert p.summary == "canary: 2 of 2 attempts failed", p
    for r in p.of(0):
        assert not r[4] and "not connected" in r[6], p
    assert p.elapsed < TIMEOUT_S + 3, p


def test_probe_stopped_shard_fails_others_succeed(api_server_factory):
    n = 4
    victim = 2
    # The watchdog is held off: the stopped shard must stay stopped for the run.
    srv = api_server_factory(shards=n, watchdog_timeout=60000)
    assert_all_ok(probe(srv), range(n), 1, n)
    srv.cli("shard", "stop", str(victim))
    try:
        p = probe(srv, "--count", "2")
        assert p.status == 1, p
        for s in range(n):
            for step in ("publish", "call"):
                got = p.of(s, step)
                assert len(got) == 2, p
                if s == victim:
                    assert not any(r[4] for r in got), p
                    for r in got:
                        assert r[5] <= TIMEOUT_S * 1000 + 500, p  # late is failure, not later
                else:
                    assert all(r[4] for r in got), p
        # Two rounds of a shard that never comes up: the first at the
        # timeout, the second one interval later.
        assert p.elapsed < 2 * TIMEOUT_S + 4, p
    finally:
        srv.cli("shard", "cont", str(victim))
    srv.wait_api_healthy()
    assert_all_ok(probe(srv), range(n), 1, n)
