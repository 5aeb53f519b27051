"""An acknowledgement never leaves before the store commit of its pass, even
when the connection closes in that pass (shard.c: replies leave after the
commit; conn.c: a closing connection's last output waits for that flush).

A client sends a retained QoS 1 PUBLISH (a store write) and a malformed
packet in one segment: the PUBLISH is acknowledged, then the connection is
closed for the bad packet in the same read. The shard is traced with strace
(system calls write/sendto/pwrite64): SQLite's commit writes the WAL with
pwrite64, and the PUBACK must reach the socket (sendto(2)) after it. Before the fix, closing flushed
`out` at once, and the PUBACK left before the commit."""

import os
import shutil
import subprocess
import time

import pytest

import rawmqtt
from helpers import CYAN, raw_connected

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's store"),
    pytest.mark.skipif(not shutil.which("strace"), reason="needs strace"),
]

PUBACK_7 = "\\x40\\x02\\x00\\x07"  # as strace -xx prints it


def test_puback_after_commit_when_the_connection_closes(server_factory, tmp_path):
    server = server_factory(shards=1)  # one shard process to trace
    device = server.add_device()
    (pid,) = server.wait_shard_pids().values()
    out = str(tmp_path / "strace.txt")
    st = subprocess.Popen(["strace", "-p", str(pid), "-e", "trace=write,writev,sendto,pwrite64",
                           "-xx", "-s", "8", "-o", out],
                          stderr=subprocess.PIPE)
    try:
        line = st.stderr.readline().decode()
        if "attached" not in line:
            pytest.skip("strace cannot attach: %s" % line.strip())
        c, _ = raw_connected(server, device, version=5)
        topic = "devices/%s/x" % device.id
        c.send(rawmqtt.publish(topic, b"kept", qos=1, retain=True, pid=7) + b"\x00\x00")
        ack = rawmqtt.decode(c.read_packet(timeout=5))
        assert isinstance(ack, rawmqtt.Ack) and ack.pid == 7, ack
        c.close()
    finally:
        st.terminate()
        st.wait(10)
    calls = open(out).read().splitlines()
    at = [i for i, l in enumerate(calls)
          if l.startswith(("write(", "writev(", "sendto(")) and PUBACK_7 in l]
    assert at, "PUBACK not seen in the trace:\n%s" % "\n".join(calls[-20:])
    before = calls[:at[0]]
    assert any(l.startswith("pwrite64(") for l in before), (
        "the PUBACK left before the store commit of its pass:\n%s" % "\n".join(calls[-20:]))
