"""A node's processes live and die together, and one data folder has one node.

- A supervisor SIGKILLed while its shards are in any state (one stopped with
  SIGSTOP, one spinning in the spin drill) takes them all with it, so a new
  start on the same ports and data folder comes up (before: the stopped shard
  kept the listening port and the next start failed with "Address already in
  use", naming nobody).
- A second start on a running node's data folder is refused, naming the
  running supervisor's pid, and leaves the running node alone.

That a shard which outlived its supervisor anyway is named and killed at the
next start is tested in tests/unit/test_supervisor_run.c, where a fake shard
can be made to survive.

Runs with 2 shards whatever CYAN_SHARDS says.
"""

import os
import signal
import subprocess

import pytest

import rawmqtt
from conftest import CYAN_BIN, child_env, free_port
from helpers import CYAN, wait_until

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's supervisor"),
]

NSHARDS = 2


def shard_pids(srv, timeout=10.0):
    """{index: pid} of the running shards of srv (from /proc), once all are up."""
    found = {}

    def scan():
        found.clear()
        found.update(srv.shard_pids())
        return len(found) == NSHARDS

    assert wait_until(scan, timeout), "shards not all up: %r\n%s" % (found, srv.log_tail())
    return dict(found)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def proc_state(pid):
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2]


def test_killed_supervisor_takes_stopped_and_spinning_shards(server_factory):
    srv = server_factory(shards=NSHARDS)
    # Signal handlers installed (before, the drill signal would simply kill a shard).
    assert srv.wait_log("supervisor: all %d shards running" % NSHARDS, 10.0), srv.log_tail()
    first = shard_pids(srv)
    sv = srv.proc.pid
    # Serving: a client connects.
    rawmqtt.RawClient(srv.host, srv.port, timeout=2).close()

    os.kill(first[0], signal.SIGSTOP)
    srv.cli("shard", "spin", "1")  # the spin drill: its loop never turns again
    assert wait_until(lambda: proc_state(first[0]) == "T", 2.0)
    assert srv.wait_log("drill: spinning the event loop forever")

    proc, srv.proc = srv.proc, None
    proc.kill()
    proc.wait(5)
    srv._log_note("supervisor killed with SIGKILL (shard 0 stopped, shard 1 spinning)")

    try:
        left = list(first.values())
        wait_until(lambda: not [p for p in left if alive(p)], 5.0)
        left = [p for p in left if alive(p)]
        assert not left, "shards %r of the killed supervisor %d still alive:\n%s" % (
            left, sv, srv.log_tail())

        srv.start()  # the same ports and data folder; fails the test if it does not come up
        second = shard_pids(srv)
        assert not set(second.values()) & set(first.values())
        assert "Address already in use" not in srv.log()
        rawmqtt.RawClient(srv.host, srv.port, timeout=2).close()
        assert not [p for p in first.values() if alive(p)]
    finally:
        for p in first.values():  # what this test made must not outlive it
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_second_start_on_a_running_data_dir_is_refused(server_factory):
    srv = server_factory(shards=NSHARDS)
    pids = shard_pids(srv)
    argv = [CYAN_BIN, "--data_dir=%s" % srv.data_dir, "--shards=%d" % NSHARDS,
            "--mqtt_listen=127.0.0.1:%d" % free_port(),
            "--http_listen=127.0.0.1:%d" % free_port(), "--coap_listen=", "--coaps_listen="]
    cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=20, env=child_env())
    assert cp.returncode == 1, (cp.returncode, cp.stdout, cp.stderr)
    msg = "another cyan (supervisor pid %d) is running on %s" % (srv.proc.pid, srv.data_dir)
    assert msg in cp.stderr, cp.stderr
    # The running node was left alone.
    assert srv.running()
    assert shard_pids(srv) == pids
    rawmqtt.RawClient(srv.host, srv.port, timeout=2).close()
    with open(os.path.join(srv.data_dir, "run", "lock")) as f:
        assert f.read().strip() == str(srv.proc.pid)
