"""The progress watchdog sees work a shard owes to its own clients (issue 11).

Before, the supervisor found a stalled shard only through its peers: the bus
frames they sent it and it did not acknowledge. A shard whose work is local
(one shard, or devices that only talk to each other on one shard) owed
nothing as far as the scoreboard knew, so `cyan shard stall` left it
RUNNING forever. Now each shard sums what it owes into its slot's `queued`
(docs/supervision.md, "What a shard owes"): input it does not read, messages
its devices have window for, acknowledgements due, calls past their
deadline, frames for live peers.

These tests use a short watchdog_timeout (1 s) and assert:
  1. one shard, steady QoS 1 traffic between two of its clients, stall it:
     replaced within watchdog_timeout + 1 s of the drill, counted as stuck,
     and the traffic flows again after the clients reconnect;
  2. four shards, two devices on one shard talking only to each other (no
     bus frame owed to it), stall that shard: the same, and the other
     shards (each with its own local pair) are not touched;
  3. an idle shard with idle connected clients owes nothing and is left
     alone: several timeouts later a round trip on the same connections
     still works, with no restart;
  4. a stalled shard that nobody sends anything owes nothing and is left
     alone, by design; the first client that sends it a CONNECT makes it
     owe work, and it is replaced within the bound.
No test sleeps and then asserts that nothing happened: each waits for a
later event that must arrive (a round trip, a replacement).

Measured times are printed (pytest -s shows them).
"""

import re
import time

import pytest

import rawmqtt
from helpers import CYAN, Client
from test_shards import Fleet, age_s, ids_by_shard, pid_gone, status, wait_all_running

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's shards and watchdog"),
]

WATCHDOG_MS = 1000
# Replaced (a new shard process for the index) within this of the drill.
BOUND_S = WATCHDOG_MS / 1000 + 1.0
# A shard that ran 5 s or more is respawned at once, without the crash-loop
# delay (docs/supervision.md): the victim must have run that long.
MIN_UPTIME_S = 5.5
RATE = 20  # QoS 1 messages per second per publisher
STUCK_REASON = re.compile(r"no progress for [\d.]+ s with (\d+) queued$")
OWED_LINE = (r"shard=%d owed work has not moved for [\d.]+ s: (\d+) sockets with "
             r"unread input")


def run_until_uptime(srv, fleet, victim, nshards):
    """Drive the fleet until the victim has run MIN_UPTIME_S (bounded)."""
    st = wait_all_running(srv, nshards=nshards)
    for _ in range(200):
        if age_s(st[victim].up) >= MIN_UPTIME_S:
            return st
        fleet.run(0.1)
        st = status(srv)
    raise AssertionError("shard %d never ran %.1fs:\n%r" % (victim, MIN_UPTIME_S, st))


def stall_and_wait_replaced(srv, fleet, victim, timeout):
    """`cyan shard stall victim` while the fleet keeps going; returns
    (old pid, seconds from just before the drill until the old process was
    gone, until a new shard process for the index existed)."""
    old = srv.shard_pids()[victim]
    marks = {}

    def watch(now):
        if "gone" not in marks:
            if pid_gone(old):
                marks["gone"] = now
            return
        pid = srv.shard_pids().get(victim)
        if pid not in (None, old):
            marks["new"] = now

    t0 = time.monotonic()
    srv.cli("shard", "stall", str(victim))
    fleet.run(timeout, until=lambda: "new" in marks, every=watch, period=0.005)
    gone = marks["gone"] - t0 if "gone" in marks else None
    new = marks["new"] - t0 if "new" in marks else None
    return old, gone, new


def wait_running_again(srv, victim, old_pid, nshards, timeout=10.0):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = status(srv)
        row = st.rows.get(victim)
        if row and row.pid not in (None, old_pid) and row.state == "RUNNING" and \
                len(st.rows) == nshards:
            return st
        time.sleep(0.05)
    raise AssertionError("shard %d not RUNNING again within %.0fs:\n%r" % (victim, timeout, st))


def assert_stuck_once(before, after, victim):
    b, a = before[victim], after[victim]
    assert (a.exit - b.exit, a.sig - b.sig, a.hung - b.hung, a.stuck - b.stuck) == (0, 0, 0, 1), \
        "restart reasons of shard %d, before:\n%r\nafter:\n%r" % (victim, before, after)
    m = STUCK_REASON.match(a.reason or "")
    assert m and int(m.group(1)) > 0, after


def pair(fleet, sub_cid, pub_cid):
    """A persistent subscriber and a publisher that sends only to it."""
    sub = fleet.add(sub_cid, "sub")
    pub = fleet.add(pub_cid, "pub")
    pub.targets = [sub]
    return sub, pub


def traffic_back(fleet, devs, t_new):
    """The devs reconnect, and messages published after t_new are
    acknowledged and delivered; then the load stops and everything
    acknowledged arrives (bounded waits)."""
    assert fleet.run(15, until=lambda: all(d.gen >= 2 and d.state == "up" for d in devs)), \
        "not back after the replacement: %r" % devs
    pubs = [d.cid for d in devs if d.role == "pub"]

    def acked_after():
        return sum(1 for seq in fleet.acked
                   if fleet.sent[seq][2] in pubs and fleet.sent[seq][1] > t_new)

    assert fleet.run(10, until=lambda: acked_after() >= 10), \
        "only %d messages acknowledged after the replacement" % acked_after()
    fleet.rate = 0
    assert fleet.run(10, until=fleet.pubs_idle), "PUBACKs missing after the load stopped"
    assert fleet.run(20, until=lambda: fleet.delivered(fleet.subs())), \
        "acknowledged messages never delivered: %r" % fleet.missing(fleet.subs())
    anomalies = [(d.cid, d.anomalies[:3]) for d in fleet.devs if d.anomalies]
    assert not anomalies, anomalies


def owed_inputs(srv, victim):
    """Sockets with unread input named by the victim's "owed work has not
    moved" lines of this run."""
    text = srv.log()
    return [int(m.group(1)) for m in
            re.finditer(OWED_LINE % victim, text[text.rfind("==== start #"):])]


def test_one_shard_stalled_under_local_traffic_is_replaced(server_factory):
    srv = server_factory(shards=1, watchdog_timeout=WATCHDOG_MS)
    dev = srv.add_device()
    fleet = Fleet(srv, dev)
    sub, pub = pair(fleet, "local-sub", "local-pub")
    fleet.start()
    assert fleet.run(30, until=fleet.all_up), fleet.devs
    fleet.rate = RATE
    before = run_until_uptime(srv, fleet, 0, 1)
    assert fleet.acked, "no traffic before the drill"

    old, gone, new = stall_and_wait_replaced(srv, fleet, 0, BOUND_S + 5)
    print("\n[one shard] stalled under local QoS 1 traffic: old pid %d gone after %s s, "
          "new shard after %s s (bound %.1f s)" % (old, gone, new, BOUND_S))
    assert new is not None, "shard 0 not replaced within %.1fs:\n%s" % (
        BOUND_S + 5, srv.log_tail(4000))
    assert new <= BOUND_S, "replaced after %.2fs > %.1fs" % (new, BOUND_S)
    # Not before the watchdog could know: progress stopped at the drill.
    assert gone >= WATCHDOG_MS / 1000, gone
    t_new = time.monotonic()
    after = wait_running_again(srv, 0, old, 1)
    assert_stuck_once(before, after, 0)
    # The shard said what it owed before it was killed: its clients' input.
    assert any(n >= 1 for n in owed_inputs(srv, 0)), srv.log_tail(4000)
    traffic_back(fleet, [sub, pub], t_new)
    fleet.close()


def test_local_pair_on_one_of_four_shards_stalled_is_replaced(server_factory):
    nshards = 4
    victim = 2
    srv = server_factory(shards=nshards, watchdog_timeout=WATCHDOG_MS)
    dev = srv.add_device()
    fleet = Fleet(srv, dev)
    ids = ids_by_shard("loc", 2, nshards)
    pairs = {s: pair(fleet, ids[s][0], ids[s][1]) for s in range(nshards)}
    fleet.start()
    assert fleet.run(30, until=fleet.all_up), fleet.devs
    fleet.rate = RATE
    before = run_until_uptime(srv, fleet, victim, nshards)
    acked0 = len(fleet.acked)

    old, gone, new = stall_and_wait_replaced(srv, fleet, victim, BOUND_S + 5)
    print("\n[four shards] shard %d stalled with a local pair: old pid %d gone after %s s, "
          "new shard after %s s (bound %.1f s)" % (victim, old, gone, new, BOUND_S))
    assert new is not None, "shard %d not replaced within %.1fs:\n%s" % (
        victim, BOUND_S + 5, srv.log_tail(4000))
    assert new <= BOUND_S, "replaced after %.2fs > %.1fs" % (new, BOUND_S)
    assert gone >= WATCHDOG_MS / 1000, gone
    t_new = time.monotonic()
    after = wait_running_again(srv, victim, old, nshards)
    assert_stuck_once(before, after, victim)
    for s in range(nshards):
        if s == victim:
            continue
        assert after[s].pid == before[s].pid, "shard %d was replaced too:\n%r" % (s, after)
        assert (after[s].exit, after[s].sig, after[s].hung, after[s].stuck) == \
            (before[s].exit, before[s].sig, before[s].hung, before[s].stuck), after
    # The other shards' local pairs kept working and never noticed.
    others = [d for s in range(nshards) if s != victim for d in pairs[s]]
    assert all(d.gen == 1 and not d.closes and d.state == "up" for d in others), others
    healthy_pubs = {d.cid for d in others if d.role == "pub"}
    assert sum(1 for seq in list(fleet.acked)[acked0:]
               if fleet.sent[seq][2] in healthy_pubs) > 0, "no traffic on the other shards"
    traffic_back(fleet, list(pairs[victim]), t_new)
    assert all(d.gen == 1 and not d.closes for d in others), others
    fleet.close()


def test_idle_shard_with_idle_clients_is_left_alone(server_factory):
    srv = server_factory(shards=1, watchdog_timeout=WATCHDOG_MS)
    dev = srv.add_device()
    st0 = wait_all_running(srv, nshards=1)
    # Idle but alive: they say nothing but PINGREQs (keep-alive 1 s).
    clients = [Client(srv, dev, client_id="idle%d" % i, keepalive=1) for i in range(3)]
    try:
        for c in clients:
            c.connect()
        clients[0].subscribe("idle/t", 1)
        t0 = time.monotonic()
        # Several timeouts of supervisor judgements: every `cyan status` on
        # the way must show the shard RUNNING, the same process, owing 0.
        polls = 0
        for _ in range(1000):
            st = status(srv)
            polls += 1
            row = st[0]
            assert row.pid == st0[0].pid and row.state == "RUNNING", st
            assert row.backlog == 0, "an idle shard owes work:\n%r" % st
            if time.monotonic() - t0 >= 3 * WATCHDOG_MS / 1000:
                break
            time.sleep(0.1)
        # The later event that must arrive: a round trip on the connections
        # made before, none of which was closed meanwhile.
        clients[1].publish("idle/t", b"still here", qos=1)
        m = clients[0].get(timeout=5)
        assert m.payload == b"still here"
        assert not any(c.wait_gone(0) for c in clients), "a connection was closed"
        st = status(srv)
        row = st[0]
        print("\n[idle] %d polls over %.1fs: backlog always 0, pid %d kept" % (
            polls, time.monotonic() - t0, row.pid))
        assert row.pid == st0[0].pid, st
        assert (row.exit, row.sig, row.hung, row.stuck) == (0, 0, 0, 0), st
    finally:
        for c in clients:
            c.close()


def test_stalled_shard_that_owes_nothing_is_left_alone_until_sent_work(server_factory):
    """By design: a stalled shard that nobody sends anything owes nothing,
    harms no one, and is not killed (finding such a shard needs someone to
    give it work: a client, a peer, a canary). The first CONNECT sent to it
    is work it owes, and it is replaced within the bound from then. The
    monitor's canary is exactly such a client (its message every second is
    work the stalled shard owes), so it is off here to see the watchdog
    alone; test_drill.py plays the stall with canaries on."""
    srv = server_factory(shards=1, watchdog_timeout=WATCHDOG_MS, canary_timeout=0)
    st0 = wait_all_running(srv, nshards=1)
    dev = srv.add_device()
    for _ in range(100):  # no crash-loop delay for the respawn (bounded: ~10 s)
        if age_s(st0[0].up) >= MIN_UPTIME_S:
            break
        time.sleep(0.1)
        st0 = status(srv)
    old = st0[0].pid
    srv.cli("shard", "stall", "0")
    assert srv.wait_log("drill: stalling", timeout=3), srv.log_tail(3000)
    t0 = time.monotonic()
    polls = 0
    for _ in range(1000):
        st = status(srv)
        polls += 1
        assert st[0].pid == old and st[0].state == "RUNNING", st
        assert st[0].backlog == 0, "a stalled shard that was sent nothing owes work:\n%r" % st
        if time.monotonic() - t0 >= 3 * WATCHDOG_MS / 1000:
            break
        time.sleep(0.1)
    # The later event: a client sends it a CONNECT (accepted, never read).
    t1 = time.monotonic()
    c = rawmqtt.RawClient(srv.host, srv.port, version=4, timeout=2.0)
    try:
        c.sock.sendall(rawmqtt.connect("late", version=4, username=dev.id, password=dev.secret))
        marks = {}
        for _ in range(int((BOUND_S + 5) / 0.005)):
            now = time.monotonic()
            if "gone" not in marks and pid_gone(old):
                marks["gone"] = now
            if "gone" in marks:
                pid = srv.shard_pids().get(0)
                if pid not in (None, old):
                    marks["new"] = now
                    break
            if now - t1 > BOUND_S + 5:
                break
            time.sleep(0.005)
    finally:
        c.close()
    new = marks["new"] - t1 if "new" in marks else None
    print("\n[stalled, idle] %d polls over %.1fs: backlog 0, pid kept; after a CONNECT: "
          "new shard after %s s (bound %.1f s)" % (polls, t1 - t0, new, BOUND_S))
    assert new is not None, "not replaced after a CONNECT:\n%s" % srv.log_tail(4000)
    assert new <= BOUND_S, "replaced after %.2fs > %.1fs" % (new, BOUND_S)
    after = wait_running_again(srv, 0, old, 1)
    assert_stuck_once(st0, after, 0)
