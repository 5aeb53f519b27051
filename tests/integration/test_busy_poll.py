"""busy_poll_us: after a loop pass that did work a shard polls without
sleeping for that long (shard.c); messages still flow in order at QoS 0
and 1, the shards spin while traffic keeps coming inside the window, and
they sleep again once it stops (a spin that never ended would hold a core
for good). CPU time is read from /proc/<pid>/stat of every shard."""

import os
import time

import pytest

from helpers import CYAN, Client, uniq

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="a cyan setting"),
]

TICK = os.sysconf("SC_CLK_TCK")


def shards_cpu(server):
    """CPU seconds (user + system) used so far by all shards of server."""
    total = 0
    for pid in server.wait_shard_pids().values():
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def test_busy_poll_delivers_spins_while_busy_and_then_sleeps(server_factory):
    srv = server_factory(busy_poll_us=10000)  # a 10 ms window (the most allowed)
    topic = uniq("bp/")
    with Client(srv, srv.add_device()) as sub, Client(srv, srv.add_device()) as pub:
        sub.connect()
        assert sub.subscribe(topic, 1) == [1]
        pub.connect()
        for qos in (0, 1):
            for i in range(20):
                pub.publish(topic, b"%d-%d" % (qos, i), qos=qos)
            got = sub.get_n(20)
            assert [m.payload for m in got] == [b"%d-%d" % (qos, i) for i in range(20)]
        # Traffic every 3 ms, inside the window: the shard never sleeps.
        c0, t0 = shards_cpu(srv), time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.0:
            pub.publish(topic, b"tick", qos=0)
            n += 1
            time.sleep(0.003)
        busy = (shards_cpu(srv) - c0) / (time.monotonic() - t0)
        assert len(sub.get_n(n)) == n
        assert busy > 0.3, "shards used %.2f of a core while spinning" % busy
        # Quiet: one window later every shard sleeps in the kernel.
        time.sleep(0.2)
        c0, t0 = shards_cpu(srv), time.monotonic()
        time.sleep(1.0)
        idle = (shards_cpu(srv) - c0) / (time.monotonic() - t0)
        assert idle < 0.15, "shards used %.2f of a core with no traffic" % idle


def test_without_busy_poll_a_shard_sleeps_between_messages(server_factory):
    """The default (0): the same paced traffic costs a fraction of a core."""
    srv = server_factory()
    topic = uniq("bp/")
    with Client(srv, srv.add_device()) as sub, Client(srv, srv.add_device()) as pub:
        sub.connect()
        assert sub.subscribe(topic, 0) == [0]
        pub.connect()
        c0, t0 = shards_cpu(srv), time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.0:
            pub.publish(topic, b"tick", qos=0)
            n += 1
            time.sleep(0.005)
        busy = (shards_cpu(srv) - c0) / (time.monotonic() - t0)
        assert len(sub.get_n(n)) == n
        assert busy < 0.3, "shards used %.2f of a core at 200 msg/s" % busy
