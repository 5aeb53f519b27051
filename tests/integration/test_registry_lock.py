"""A registry (registry.db) locked by another process must not get a healthy
shard killed as hung (docs/operations.md, "The registry and its lock").

Another process (here python's sqlite3, as a `sqlite3` shell or a slow admin
script would) holds the registry's write lock for longer than
watchdog_timeout while devices connect and API requests arrive. A shard
never waits on that lock longer than a fraction of the watchdog: an API
write answers 503 registry_unavailable at once, reads (token checks,
device checks) keep working (WAL readers do not wait for a writer, and the
shard's cache holds what it has seen), no shard is killed, and once the
lock is released everything works again.
"""

import os
import sqlite3
import time
import types

import pytest

from apidevice import api, create_device, new_name
from helpers import Client, wait_until

pytestmark = pytest.mark.cyan_only

HOLD_S = 3.0  # longer than watchdog_timeout (2 s) plus a sweep


def device(body):
    return types.SimpleNamespace(id=body["id"], secret=body["secret"])


def test_registry_write_lock_does_not_kill_shards(api_server_factory):
    srv = api_server_factory(watchdog_timeout=2000)
    known = [device(create_device(srv)) for _ in range(3)]
    # Each known device connects once, so every shard has seen it.
    for d in known:
        c = Client(srv, d, client_id=d.id)
        c.connect(expect_rc=0)
        c.close()
    pids = srv.shard_pids()
    assert pids, srv.log_tail()

    db = sqlite3.connect(os.path.join(srv.data_dir, "registry.db"), timeout=10,
                         isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO devices(id, name, salt, hash, created_at)"
               " VALUES('%s', 'held', x'00', x'00', 0)" % ("f" * 24))
    t0 = time.monotonic()
    refused = ok_reads = connects = 0
    try:
        while time.monotonic() - t0 < HOLD_S:
            # A write waits on the lock: a clear refusal, quickly.
            r = api(srv, "POST", "/v1/devices", json={"name": new_name("locked")}, timeout=10)
            assert r.status == 503 and r.body["error"] == "registry_unavailable", r
            assert r.elapsed < 1.5, "a write waited %.2fs on the lock" % r.elapsed
            refused += 1
            # Reads still work: the token check and a listing.
            r = api(srv, "GET", "/v1/devices", timeout=10)
            assert r.status == 200, r
            ok_reads += 1
            # Known devices still connect.
            for d in known:
                c = Client(srv, d, client_id=d.id)
                c.connect(expect_rc=0)
                c.close()
                connects += 1
    finally:
        db.execute("ROLLBACK")
        db.close()
    print("\nunder the lock for %.1fs: %d writes refused, %d reads, %d connects"
          % (time.monotonic() - t0, refused, ok_reads, connects))
    # After the release: writes work again and new devices connect.
    got = []
    assert wait_until(lambda: got.append(
        api(srv, "POST", "/v1/devices", json={"name": new_name("after")})) or
        got[-1].status == 201, timeout=5.0), got[-1]
    d = device(got[-1].body)
    c = Client(srv, d, client_id=d.id)
    c.connect(expect_rc=0)
    c.close()
    assert srv.shard_pids() == pids, "a shard was replaced:\n%s" % srv.log_tail()
    log = srv.log()
    assert "killed" not in log and "SIGKILL" not in log and "hung" not in log, srv.log_tail()
