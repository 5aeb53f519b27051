"""The outbox to a peer shard is bounded in bytes, and the bound is kept
before the acknowledgement, never after it (cluster.c, max_outbox_bytes).

Two shards. A subscriber owned by shard 1, a publisher owned by shard 0.
Shard 1 is stopped (SIGSTOP; watchdog_timeout at its maximum so that the
supervisor does not replace it), so it acknowledges nothing, and the
publisher sends numbered QoS 1 messages until far more bytes than
max_outbox_bytes would have been kept for shard 1. Then shard 1 resumes
(SIGCONT) and a last message, published after it, is the barrier: once it
has arrived, every message published before it that was acknowledged with
reason 0 must have arrived too (one publisher, one peer: the outbox keeps
their order). A message refused (MQTT 5 0x97 Quota exceeded, or a 3.1.1
publisher disconnected without its PUBACK) must not arrive.

Before the fix the outbox counted frames (CY_OUTBOX_MAX 200,000) and dropped
durable frames past it, after their PUBACK had gone: with the constant
lowered to 20 (a build made for that check), the acknowledged messages past
the 20th never arrived.
"""

import os
import signal

import pytest

import rawmqtt as rm
from helpers import CYAN, raw_connected, uniq
from test_shards import ids_by_shard, wait_all_running

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's shards and outbox"),
]

NSHARDS = 2
MAX_OUTBOX = 4096        # bytes: about 16 frames of the payload below
PAYLOAD = 200
COUNT = 60               # about 4 times what the bound holds


def run_outbox(srv, dev, version):
    """Publish COUNT QoS 1 messages to a subscriber on a stopped shard.
    Returns (acked, refused, delivered, closed_at): lists of numbers, and
    the number the publisher was disconnected at (3.1.1) or None."""
    wait_all_running(srv, nshards=NSHARDS)
    sub_id = ids_by_shard(uniq("osub"), 1, NSHARDS)[1][0]
    pub_id = ids_by_shard(uniq("opub"), 1, NSHARDS)[0][0]
    topic = uniq("ob/")
    sub, _ = raw_connected(srv, dev, client_id=sub_id, clean=False,
                           props=[(rm.SESSION_EXPIRY_INTERVAL, 300)])
    pub, _ = raw_connected(srv, dev, client_id=pub_id, version=version)
    acked, refused, delivered, closed_at = [], [], [], None
    victim = srv.shard_pids()[1]
    stopped = False
    try:
        sub.subscribe([(topic, rm.sub_options(qos=1))])
        # Barrier: shard 0 knows the interest once a message from it arrives.
        for k in range(50):
            pub.publish(topic, b"ready", qos=1, pid=1)
            try:
                p = sub.recv_publish(timeout=0.5)
                assert p.payload == b"ready"
                break
            except rm.Timeout:
                continue
        else:
            pytest.fail("shard 0 never learnt the subscriber's interest")
        while True:  # the repeats of "ready" that were still on their way
            try:
                p = sub.recv_publish(timeout=0.3)
                assert p.payload == b"ready"
            except rm.Timeout:
                break
        os.kill(victim, signal.SIGSTOP)
        stopped = True
        for n in range(COUNT):
            body = b"%06d:" % n + b"x" * PAYLOAD
            try:
                ack = pub.publish(topic, body, qos=1, pid=n + 2, timeout=10.0)
            except rm.Closed:
                closed_at = n
                break
            if ack.rc == 0:
                acked.append(n)
            else:
                assert ack.rc == 0x97, "PUBACK reason 0x%02x for message %d" % (ack.rc, n)
                refused.append(n)
        os.kill(victim, signal.SIGCONT)
        stopped = False
        # The barrier: published after the peer resumed, so it can only
        # arrive after everything acknowledged before it. Refused (a 3.1.1
        # publisher disconnected) until the outbox has room again.
        end = b"end"
        for k in range(100):
            if closed_at is not None:
                pub.close()
                pub, _ = raw_connected(srv, dev, client_id=pub_id, version=version)
            try:
                ack = pub.publish(topic, end, qos=1, pid=1, timeout=10.0)
                if ack.rc == 0:
                    break
                assert ack.rc == 0x97
            except rm.Closed:
                assert version == 4
            try:
                p = sub.recv_publish(timeout=0.2)
                delivered.append(int(p.payload.split(b":")[0]))
            except rm.Timeout:
                pass
        else:
            pytest.fail("the outbox never had room again after SIGCONT")
        for _ in range(COUNT + 10):
            p = sub.recv_publish(timeout=30.0)
            if p.payload == end:
                break
            delivered.append(int(p.payload.split(b":")[0]))
        else:
            pytest.fail("the barrier message never arrived")
    finally:
        if stopped:
            os.kill(victim, signal.SIGCONT)
        pub.close()
        sub.close()
    return acked, refused, delivered, closed_at


@pytest.mark.parametrize("version", [5, 4], ids=["mqtt5", "mqtt311"])
def test_outbox_full_never_loses_acknowledged(server_factory, version):
    srv = server_factory(shards=NSHARDS, watchdog_timeout=600000, max_outbox_bytes=MAX_OUTBOX)
    dev = srv.add_device()
    acked, refused, delivered, closed_at = run_outbox(srv, dev, version)
    print("\n[outbox] v%d: %d acknowledged, %d refused, closed at %r, %d delivered"
          % (version, len(acked), len(refused), closed_at, len(delivered)))
    lost = sorted(set(acked) - set(delivered))
    assert not lost, "%d acknowledged messages never delivered: %r" % (len(lost), lost[:20])
    assert not set(refused) & set(delivered), "a refused message was delivered"
    if closed_at is not None:
        assert closed_at not in delivered or closed_at in acked
    assert len(delivered) == len(set(delivered)), "duplicates"


@pytest.mark.parametrize("version", [5, 4], ids=["mqtt5", "mqtt311"])
def test_outbox_full_refuses_publishes(server_factory, version):
    """Past the bound a publish that needs the full peer is refused: MQTT 5
    gets PUBACK 0x97, a 3.1.1 publisher is disconnected without its PUBACK;
    no more is acknowledged than the bound holds (plus one message)."""
    srv = server_factory(shards=NSHARDS, watchdog_timeout=600000, max_outbox_bytes=MAX_OUTBOX)
    dev = srv.add_device()
    acked, refused, delivered, closed_at = run_outbox(srv, dev, version)
    if version == 5:
        assert refused, "nothing refused: %d of %d acknowledged" % (len(acked), COUNT)
        assert refused == list(range(refused[0], COUNT))
    else:
        assert closed_at is not None, "3.1.1 publisher never disconnected"
    assert len(acked) <= MAX_OUTBOX // PAYLOAD + 1
