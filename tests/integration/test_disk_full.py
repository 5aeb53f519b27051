"""Disk full: with the data folder on a small tmpfs, cyan refuses new durable
work before acknowledging it, keeps serving what it can, loses nothing it
acknowledged, and takes durable work again by itself when space returns.

- QoS 1 publishes are acknowledged until the disk is nearly full, then
  refused with 0x97 Quota exceeded (MQTT 5); a 3.1.1 publisher is
  disconnected; a CONNECT making a new persistent session gets CONNACK 0x97
  (3.1.1: return code 3); a SUBSCRIBE of a persistent session gets 0x97.
- Meanwhile QoS 0 still flows, and no shard is restarted (same pids).
- A filler file removed, QoS 1 is accepted again within a bounded wait,
  without a restart.
- After a restart every message that got PUBACK 0 is delivered to the
  persistent subscriber.

Before the fix the commit that found no room ended the shard (exit 3), its
clients were dropped, and it did so again at every restart.

Needs root (mount -t tmpfs); skipped otherwise. Runs with 1 and 2 shards
whatever CYAN_SHARDS says.
"""

import os
import subprocess
import tempfile
import time

import pytest

import rawmqtt
from conftest import Server
from helpers import CYAN, wait_until

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's store and reason codes"),
]

MIB = 1 << 20
TMPFS_MIB = 64           # the whole file system
FREE_MIB = 28            # left free by the filler before the publishes start
LOW_FREE_MIB = 5         # left free once refused (CY_DISK_LOW is 8 MiB)
PAYLOAD = 60 * 1024      # per message: about 2 MiB of queue per 35 messages
QUOTA_EXCEEDED = 0x97


def mount_tmpfs(path, mib):
    """Mount a tmpfs of mib MiB at path, or skip the test with the reason."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % mib, "tmpfs", path],
                        capture_output=True, text=True, timeout=20)
    if cp.returncode != 0:
        pytest.skip("mount -t tmpfs not permitted here: %s" % cp.stderr.strip())


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, nbytes):
    with open(path, "wb") as f:
        chunk = b"f" * MIB
        while nbytes > 0:
            n = min(nbytes, len(chunk))
            f.write(chunk[:n])
            nbytes -= n


def connect(srv, client_id, version=5, expiry=None, clean=True):
    c = rawmqtt.RawClient(srv.host, srv.port, version=version)
    props = {rawmqtt.SESSION_EXPIRY_INTERVAL: expiry} if version == 5 and expiry else None
    ack = c.connect(client_id, clean=clean, props=props)
    return c, ack


@pytest.mark.parametrize("shards", [1, 2])
def test_disk_full_refuses_then_recovers(shards):
    workdir = tempfile.mkdtemp(prefix="cydisk", dir="/tmp")
    data = os.path.join(workdir, "data")
    os.makedirs(data)
    mount_tmpfs(data, TMPFS_MIB)
    srv = None
    clients = []
    passed = False
    try:
        srv = Server(workdir, {"shards": shards, "allow_anonymous": True, "max_queued": 100000},
                     None)
        srv.start()
        used = TMPFS_MIB * MIB - free_bytes(data)
        print("an empty data dir with %d shard(s) uses %d KiB" % (shards, used >> 10))
        filler = os.path.join(data, "filler")
        fill(filler, free_bytes(data) - FREE_MIB * MIB)
        pids = srv.wait_shard_pids()
        assert len(pids) == shards

        # The persistent subscriber: subscribes, then goes offline so that
        # what it is sent is queued on disk.
        sub, ack = connect(srv, "disk-sub", expiry=3600)
        assert ack.rc == 0
        assert sub.subscribe([("dt/#", 1)]).codes == [1]
        sub.disconnect()
        # A persistent session that stays connected (its SUBSCRIBE is
        # refused while full) and a QoS 0 listener.
        sub2, ack = connect(srv, "disk-sub2", expiry=3600)
        assert ack.rc == 0
        live, ack = connect(srv, "disk-live")
        assert ack.rc == 0
        assert live.subscribe([("q0/#", 0)]).codes == [0]
        pub, ack = connect(srv, "disk-pub")
        assert ack.rc == 0
        clients += [sub2, live, pub]

        # Publish QoS 1 until refused.
        acked = []
        payload = b"x" * PAYLOAD
        limit = 2 * FREE_MIB * MIB // PAYLOAD
        refused = None
        for i in range(1, limit + 1):
            topic = "dt/%d" % i
            try:
                r = pub.publish(topic, payload, qos=1, pid=i % 65535 or 1)
            except (rawmqtt.Closed, rawmqtt.Timeout) as e:
                pytest.fail("publisher lost at message %d (%r) after %d acknowledged\n%s"
                            % (i, e, len(acked), srv.log_tail()))
            if r.rc == 0:
                acked.append(topic)
                continue
            assert r.rc == QUOTA_EXCEEDED, "PUBACK %r" % r
            refused = i
            break
        assert refused is not None, "no refusal after %d messages" % limit
        assert len(acked) > 10, "refused too early: %d acknowledged" % len(acked)
        print("%d messages of %d KiB acknowledged, then refused; %.1f MiB free"
              % (len(acked), PAYLOAD >> 10, free_bytes(data) / MIB))
        # The refusal may come from the publisher's shard's estimate while
        # the disk still has about CY_DISK_LOW (8 MiB) free, and a WAL
        # checkpoint can give a little back: keep every shard's own look
        # at the disk well below the mark for the checks that follow.
        filler2 = os.path.join(data, "filler2")
        fill(filler2, max(0, free_bytes(data) - LOW_FREE_MIB * MIB))

        # Full: QoS 0 still flows (a later QoS 0 message must arrive).
        pub.publish("q0/still", b"zero", qos=0)
        p = live.expect(rawmqtt.PUBLISH, timeout=5)
        assert (p.topic, p.payload) == ("q0/still", b"zero")
        # A SUBSCRIBE of a persistent session is refused per filter.
        assert sub2.subscribe([("other/#", 1)]).codes == [QUOTA_EXCEEDED]
        # A new persistent session is refused; MQTT 5 0x97, 3.1.1 code 3.
        c, ack = connect(srv, "disk-new5", expiry=60)
        assert ack.rc == QUOTA_EXCEEDED
        c.close()
        c, ack = connect(srv, "disk-new3", version=4, clean=False)
        assert ack.rc == 3
        c.close()
        # A clean 3.1.1 client connects, and is disconnected for a QoS 1
        # publish it cannot be told was refused.
        c3, ack = connect(srv, "disk-pub3", version=4)
        assert ack.rc == 0
        c3.send(rawmqtt.publish("dt/v3", payload, qos=1, pid=7, version=4))
        assert c3.wait_closed(timeout=5) == []
        # The publisher is still connected and refused, not dropped.
        r = pub.publish("dt/again", payload, qos=1, pid=2)
        assert r.rc == QUOTA_EXCEEDED
        assert srv.shard_pids() == pids, "a shard was restarted while the disk was full"
        assert "store commit failed" not in srv.log()
        assert srv.wait_log("disk full")

        # Space returns: QoS 1 is taken again within a bounded wait, with
        # no restart.
        os.unlink(filler)
        os.unlink(filler2)
        deadline = time.monotonic() + 10
        n = 0
        while True:
            n += 1
            topic = "dt/back-%d" % n
            r = pub.publish(topic, payload, qos=1, pid=100 + n)
            if r.rc == 0:
                acked.append(topic)
                break
            assert r.rc == QUOTA_EXCEEDED, "PUBACK %r" % r
            assert time.monotonic() < deadline, "QoS 1 still refused 10 s after space returned"
            time.sleep(0.2)
        assert srv.wait_log("disk space back")
        assert srv.shard_pids() == pids, "a shard was restarted"
        # The persistent subscription can be made again, too, once its own
        # shard has seen the space back (each shard checks its disk on its
        # own; the log line above may be another shard's).
        deadline = time.monotonic() + 10
        while True:
            codes = sub2.subscribe([("other/#", 1)]).codes
            if codes == [1]:
                break
            assert codes == [QUOTA_EXCEEDED], codes
            assert time.monotonic() < deadline, "subscription still refused 10 s after space returned"
            time.sleep(0.2)
        for c in clients:
            c.close()
        clients = []

        # Nothing acknowledged is lost, across a restart.
        srv.restart()
        sub, ack = connect(srv, "disk-sub", expiry=3600, clean=False)
        clients.append(sub)
        assert ack.rc == 0 and ack.session_present
        want = set(acked)
        got = set()
        for _ in range(len(want) * 3):
            if want <= got:
                break
            try:
                p = sub.recv_publish(timeout=10)
            except rawmqtt.Timeout:
                break
            got.add(p.topic)
            assert len(p.payload) == PAYLOAD
        missing = sorted(want - got)
        assert not missing, "%d acknowledged messages never delivered: %s" % (
            len(missing), missing[:10])
        passed = True
    finally:
        for c in clients:
            c.close()
        if srv is not None:
            srv.stop(check=passed)
        subprocess.run(["umount", data], capture_output=True, timeout=20)
        if passed:
            subprocess.run(["rm", "-rf", workdir], timeout=20)


def test_shard_starts_on_a_full_disk():
    """A node started (or a shard restarted after a commit that found no
    room) on a disk already nearly full comes up refusing durable work from
    the first client instead of failing again, and takes it once space
    returns."""
    workdir = tempfile.mkdtemp(prefix="cydisk", dir="/tmp")
    data = os.path.join(workdir, "data")
    os.makedirs(data)
    mount_tmpfs(data, 32)
    srv = None
    passed = False
    pub = None
    try:
        filler = os.path.join(data, "filler")
        fill(filler, free_bytes(data) - 4 * MIB)  # under the 8 MiB mark
        srv = Server(workdir, {"shards": 1, "allow_anonymous": True}, None)
        srv.start()
        assert srv.wait_log("disk full at start")
        pids = srv.wait_shard_pids()
        pub, ack = connect(srv, "start-pub")
        assert ack.rc == 0
        for i in range(1, 4):
            assert pub.publish("s/%d" % i, b"x" * 1000, qos=1, pid=i).rc == QUOTA_EXCEEDED
        os.unlink(filler)
        assert wait_until(lambda: pub.publish("s/back", b"y", qos=1, pid=9).rc == 0,
                          timeout=10, interval=0.2)
        assert srv.shard_pids() == pids
        passed = True
    finally:
        if pub is not None:
            pub.close()
        if srv is not None:
            srv.stop(check=passed)
        subprocess.run(["umount", data], capture_output=True, timeout=20)
        if passed:
            subprocess.run(["rm", "-rf", workdir], timeout=20)
