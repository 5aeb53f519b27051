"""A shard out of file descriptors (EMFILE). What waits in its accept queue
is refused (accepted with the descriptor it keeps in reserve and closed at
once, counted in limit_connections, one log line per window); the
connections it has go on working, and it takes new ones as soon as
descriptors are free again. Without the reserve, the listening socket
would stay readable with nothing the shard can take: the loop would spin
and the queue fill."""

import os
import socket
import time

import pytest

from helpers import Client, SysWatcher, raw_connected, uniq, wait_until

NOFILE = 256


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


@pytest.mark.cyan_only
def test_out_of_descriptors(server_factory):
    def prepare(srv):
        srv.nofile = NOFILE
    srv = server_factory(_prepare=prepare, shards=1)
    dev = srv.add_device()
    watch = SysWatcher(srv, srv.add_device())
    sub = Client(srv, dev, version=5)
    pub = Client(srv, srv.add_device(), version=5)
    flood = []
    try:
        base = watch.wait("limit_connections", timeout=4.0)
        sub.connect()
        pub.connect()
        topic = uniq("fd/")
        sub.subscribe(topic, 1)
        pid = srv.wait_shard_pids()[0]
        # Sockets that never send CONNECT: each holds one of the shard's
        # descriptors until connect_timeout. Open more than it has left.
        spare = NOFILE - open_fds(pid)
        assert spare > 0
        for _ in range(spare + 40):
            s = socket.create_connection((srv.host, srv.port), timeout=5)
            flood.append(s)
        assert wait_until(lambda: open_fds(pid) >= NOFILE - 1, timeout=10), open_fds(pid)
        assert srv.wait_log("Too many open files", timeout=5), srv.log_tail()
        # The ones over the limit were closed at once: a read sees the end
        # (or a reset), not silence.
        for s in flood:
            s.setblocking(False)

        def ended(s):
            try:
                return s.recv(1) == b""
            except BlockingIOError:
                return False
            except ConnectionResetError:
                return True
        assert wait_until(lambda: sum(ended(s) for s in flood) >= 1, timeout=5)
        # The clients it had still work, and the refusals were counted.
        pub.publish(topic, b"still here", qos=1)
        m = sub.get(timeout=5)
        assert m.payload == b"still here"
        watch.wait("limit_connections", lambda v: v >= base + 1, timeout=4.0)
        # Descriptors free again: a new client gets in.
        for s in flood:
            s.close()
        flood = []
        ok = None
        for _ in range(50):
            try:
                c, ack = raw_connected(srv, srv.add_device())
            except (OSError, AssertionError):
                time.sleep(0.1)
                continue
            with c:
                ok = ack
                c.disconnect()
            break
        assert ok is not None and ok.rc == 0, srv.log_tail()
    finally:
        for s in flood:
            s.close()
        sub.close()
        pub.close()
        watch.close()
