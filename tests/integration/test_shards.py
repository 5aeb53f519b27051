"""Fault injection for shards and the progress watchdog (GUIDE section 6).

Each test runs cyan with 4 shards (explicitly, whatever CYAN_SHARDS says),
breaks one shard the way the drills of `cyan shard ...` do (SIGSTOP, SIGKILL,
a spinning loop, a stalled loop) or makes it fail at start, and asserts how
fast the supervisor notices and replaces it, that the other shards' devices
never notice, and that no acknowledged QoS 1 message is lost.

The load is raw MQTT 3.1.1 over sockets, all driven from one thread by a
selector (Fleet below): ~200 persistent subscribers, each on its own topic
d/<client id>, with client ids picked so every shard owns the same number,
and one publisher per shard that sends numbered QoS 1 messages only to
subscribers of other shards. A message counts as acknowledged when its PUBACK
arrived; every acknowledged message must reach its subscriber.

Measured times are printed (pytest -s shows them).
"""

import collections
import datetime
import os
import re
import selectors
import subprocess
import time

import pytest

import rawmqtt
from conftest import CYAN_BIN, child_env
from helpers import CYAN

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's shards and watchdog"),
]

NSHARDS = 4
DEFAULT_WATCHDOG_MS = 2000
FAST_WATCHDOG_MS = 1000
# Acknowledgements wait for a peer at most 1 s (cluster.c, CY_HOLD_MS); a
# healthy shard's devices must never wait for a broken peer longer than that.
HEALTHY_LATENCY_S = 1.5
READY_WAIT_S = 5.0  # a starting shard accepts clients once its peers run, or after this

# ------------------------------------------------------------------ ids


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def shard_of(client_id, nshards=NSHARDS):
    return fnv1a64(client_id.encode()) % nshards


def test_shard_of_matches_fnv1a_reference():
    # FNV-1a 64 reference values (the empty string is the offset basis).
    assert fnv1a64(b"") == 0xcbf29ce484222325
    assert fnv1a64(b"a") == 0xaf63dc4c8601ec8c
    assert fnv1a64(b"foobar") == 0x85944171f73967e8


def ids_by_shard(prefix, per_shard, nshards=NSHARDS):
    """{shard: [client ids]} with per_shard ids for every shard."""
    out = {i: [] for i in range(nshards)}
    for n in range(per_shard * nshards * 20):
        cid = "%s%d" % (prefix, n)
        s = shard_of(cid, nshards)
        if len(out[s]) < per_shard:
            out[s].append(cid)
        if all(len(v) == per_shard for v in out.values()):
            return out
    raise AssertionError("could not spread ids over shards")


# ------------------------------------------------------------------ cyan status

Row = collections.namedtuple(
    "Row", "shard pid state gen up beat progress backlog conns canary exit sig hung stuck "
    "canary_restarts last reason")

_HEAD = re.compile(r"^supervisor pid (\d+), heartbeat \S+ ago, watchdog_timeout (\d+) ms, "
                   r"(\d+) shards$", re.M)
_ROW = re.compile(r"^(\d+)\s+(\d+|-)\s+([A-Z?]+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\d+)\s+"
                  r"(\d+)\s+(\S+)\s+(\d+)/(\d+)/(\d+)/(\d+)/(\d+)\s*(.*)$")
_LAST = re.compile(r"^\S+ ago: (.*?)(?: \(respawn after [\d.]+s\))?$")


class Status:
    def __init__(self, cp):
        self.rc = cp.returncode
        self.out = cp.stdout
        self.err = cp.stderr
        m = _HEAD.search(cp.stdout)
        self.supervisor = int(m.group(1)) if m else None
        self.watchdog_ms = int(m.group(2)) if m else None
        self.rows = {}
        for line in cp.stdout.splitlines():
            r = _ROW.match(line.strip())
            if not r:
                continue
            g = r.groups()
            last = g[15].strip()
            lm = _LAST.match(last)
            self.rows[int(g[0])] = Row(
                int(g[0]), None if g[1] == "-" else int(g[1]), g[2], int(g[3]), g[4], g[5],
                int(g[6]), int(g[7]), int(g[8]), g[9], int(g[10]), int(g[11]), int(g[12]),
                int(g[13]), int(g[14]), last, lm.group(1) if lm else None)

    def __getitem__(self, i):
        return self.rows[i]

    def __repr__(self):
        return "rc=%s\n%s%s" % (self.rc, self.out, self.err)


def status(srv):
    return Status(srv.cli("status", check=False, timeout=20))


class StatusPoller:
    """`cyan status` in the background, so a Fleet keeps driving its sockets
    while it runs (the CLI takes ~0.1 s under ASan). tick() starts one when
    none runs and returns (Status, monotonic time it finished) when one did."""

    def __init__(self, srv):
        self.argv = [CYAN_BIN, "status", "--data_dir=%s" % srv.data_dir]
        self.proc = None
        self.started = 0.0

    def tick(self, now):
        if self.proc is None:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, env=child_env())
            self.started = now
            return None
        if self.proc.poll() is None:
            if now - self.started > 20:
                self.proc.kill()
                self.proc.communicate(timeout=5)
                self.proc = None
            return None
        out, err = self.proc.communicate(timeout=5)
        rc, self.proc = self.proc.returncode, None
        return Status(subprocess.CompletedProcess(self.argv, rc, out, err)), time.monotonic()

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate(timeout=5)
            self.proc = None


def wait_all_running(srv, timeout=15.0, nshards=NSHARDS):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = status(srv)
        if st.rc == 0 and len(st.rows) == nshards and \
                all(r.state == "RUNNING" and r.pid for r in st.rows.values()):
            return st
        time.sleep(0.1)
    raise AssertionError("not every shard RUNNING within %.0fs:\n%r" % (timeout, st))


def pid_gone(pid):
    """True once pid has exited (absent, or a zombie nobody reaped yet)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


# ------------------------------------------------------------------ server log

_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ")


def log_lines_since(srv, wall):
    """(wall time, line) of the current run's log lines stamped at or after wall."""
    text = srv.log()
    start = text.rfind("==== start #")
    out = []
    for line in text[start:].splitlines():
        m = _TS.match(line)
        if not m:
            continue
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        if t >= wall - 0.005:
            out.append((t, line))
    return out


def current_run_log(srv):
    text = srv.log()
    return text[text.rfind("==== start #"):]


# ------------------------------------------------------------------ many devices, one thread

RETRY_S = 0.2          # between reconnect attempts (after a close or a refusal)
CONNACK_TIMEOUT = 3.0  # a CONNECT without answer is abandoned and retried
KEEPALIVE = 300
PUB_INFLIGHT = 100     # unacknowledged QoS 1 publishes per publisher
SUB_CHUNK = 100        # filters per SUBSCRIBE


class Target(collections.namedtuple("Target", "cid topic shard")):
    """Where a publisher sends: a topic one subscriber (cid, on shard) holds."""


class Dev:
    """One simulated device: a subscriber (persistent session, clean session 0,
    subscribed QoS 1 to d/<id> once) or a publisher (clean session)."""

    def __init__(self, cid, role):
        self.cid = cid
        self.shard = shard_of(cid)
        self.role = role
        self.topic = "d/" + cid
        self.filters = [self.topic]  # what a subscriber subscribes to (QoS 1)
        self.pending_subacks = 0
        self.conn = None        # rawmqtt.RawClient (non-blocking socket) or None
        self.out = bytearray()  # bytes not yet written
        self.writing = False
        self.state = "down"     # down, connecting, subscribing, up
        self.deadline = 0.0
        self.retry_at = None    # when to (re)connect; None: stay down
        self.gen = 0            # successful CONNACKs
        self.connacks = []      # (t, session_present)
        self.refused = []       # (t, return code)
        self.errors = []        # (t, why): failures before a session was up
        self.closes = []        # (t, why): an established connection lost
        self.anomalies = []
        self.got = []           # (seq, dup, gen, t)
        # publisher
        self.targets = []
        self.ti = 0
        self.credit = 0.0
        self.next_pid = 0
        self.inflight = {}      # pid -> seq

    def filters_set(self):
        if getattr(self, "_fset", None) is None or len(self._fset) != len(self.filters):
            self._fset = set(self.filters)
        return self._fset

    def __repr__(self):
        return "<%s %s shard %d %s gen %d>" % (self.role, self.cid, self.shard, self.state,
                                               self.gen)


class Fleet:
    """Many raw MQTT 3.1.1 connections driven by one selector. Every wait is
    bounded; nothing blocks longer than a local TCP connect."""

    def __init__(self, srv, device):
        self.srv = srv
        self.user, self.password = device.id, device.secret
        self.sel = selectors.DefaultSelector()
        self.devs = []
        self.seq = 0
        self.sent = {}    # seq -> (target cid, t sent, publisher cid)
        self.acked = {}   # seq -> (target cid, t acked)
        self.rate = 0.0   # messages per second per publisher; 0: not publishing
        self._last = time.monotonic()

    def add(self, cid, role="sub"):
        d = Dev(cid, role)
        self.devs.append(d)
        return d

    def subs(self, shard=None):
        return [d for d in self.devs if d.role == "sub" and (shard is None or d.shard == shard)]

    def pubs(self):
        return [d for d in self.devs if d.role == "pub"]

    def start(self):
        now = time.monotonic()
        for d in self.devs:
            d.retry_at = now

    # -- connections
    def _open(self, d, now):
        d.retry_at = None
        try:
            c = rawmqtt.RawClient(self.srv.host, self.srv.port, version=4, timeout=2.0)
        except OSError as e:
            d.errors.append((now, "tcp connect: %s" % e))
            d.retry_at = now + RETRY_S
            return
        c.sock.setblocking(False)
        d.conn, d.out, d.writing = c, bytearray(), False
        d.state, d.deadline = "connecting", now + CONNACK_TIMEOUT
        self.sel.register(c.sock, selectors.EVENT_READ, d)
        self._send(d, rawmqtt.connect(d.cid, version=4, clean=d.role == "pub",
                                      keepalive=KEEPALIVE, username=self.user,
                                      password=self.password))

    def _drop(self, d, why, now, retry=True):
        if d.conn is None:
            return
        try:
            self.sel.unregister(d.conn.sock)
        except (KeyError, ValueError):
            pass
        d.conn.close()
        d.conn = None
        if d.state in ("up", "subscribing"):
            d.closes.append((now, why))
        elif why:
            d.errors.append((now, why))
        d.state = "down"
        d.inflight.clear()  # never acknowledged: not counted as sent
        d.retry_at = now + RETRY_S if retry else None

    def _send(self, d, data):
        d.out += data
        self._flush(d, time.monotonic())

    def _flush(self, d, now):
        while d.out and d.conn is not None:
            try:
                n = d.conn.sock.send(d.out)
            except BlockingIOError:
                break
            except OSError as e:
                self._drop(d, "send: %s" % e, now)
                return
            del d.out[:n]
        if d.conn is None:
            return
        want = bool(d.out)
        if want != d.writing:
            d.writing = want
            ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.sel.modify(d.conn.sock, ev, d)

    def _readable(self, d, now):
        for _ in range(64):
            try:
                data = d.conn.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as e:
                self._drop(d, "recv: %s" % e, now)
                return
            if not data:
                self._drop(d, "EOF", now)
                return
            d.conn.buf += data
            if len(data) < 65536:
                break
        for _ in range(100000):
            if d.conn is None:
                return
            p = d.conn.take_packet()
            if p is None:
                return
            self._packet(d, p, now)

    def _packet(self, d, p, now):
        if p.type == rawmqtt.CONNACK and d.state == "connecting":
            ack = rawmqtt.decode_connack(p.body, 4)
            if ack.rc != 0:
                d.refused.append((now, ack.rc))
                self._drop(d, None, now)
                return
            d.gen += 1
            d.connacks.append((now, ack.session_present))
            if d.role == "sub" and not ack.session_present:
                if d.gen > 1:
                    d.anomalies.append("session lost: CONNACK #%d without session present"
                                       % d.gen)
                d.state = "subscribing"
                chunks = [d.filters[k:k + SUB_CHUNK] for k in range(0, len(d.filters), SUB_CHUNK)]
                d.pending_subacks = len(chunks)
                for k, chunk in enumerate(chunks):
                    self._send(d, rawmqtt.subscribe(k + 1, [(f, 1) for f in chunk], version=4))
            else:
                d.state = "up"
        elif p.type == rawmqtt.SUBACK and d.state == "subscribing":
            sa = rawmqtt.decode_suback(p.body, 4)
            if set(sa.codes) != {1}:
                d.anomalies.append("SUBACK %r" % sa)
            d.pending_subacks -= 1
            if d.pending_subacks <= 0:
                d.state = "up"
        elif p.type == rawmqtt.PUBLISH and d.state in ("up", "subscribing"):
            m = rawmqtt.decode_publish(p.flags, p.body, 4)
            if m.qos:
                self._send(d, rawmqtt.puback(m.pid, version=4))
            try:
                seq = int(m.payload)
            except ValueError:
                seq = None
            if m.topic not in d.filters_set() or seq not in self.sent or m.qos != 1:
                d.anomalies.append("unexpected %r" % m)
            d.got.append((seq, m.dup, d.gen, now))
        elif p.type == rawmqtt.PUBACK and d.role == "pub":
            a = rawmqtt.decode_ack(p.type, p.body, 4)
            seq = d.inflight.pop(a.pid, None)
            if seq is None:
                d.anomalies.append("PUBACK for unknown packet id %d" % a.pid)
            else:
                self.acked[seq] = (self.sent[seq][0], now)
        else:
            d.anomalies.append("unexpected %r in state %s" % (p, d.state))

    # -- load
    def _publish(self, now, dt):
        if self.rate <= 0:
            return
        for d in self.devs:
            if d.role != "pub" or d.state != "up" or not d.targets:
                continue
            d.credit = min(d.credit + self.rate * dt, max(1.0, self.rate * 0.2))
            for _ in range(1000):
                if d.credit < 1 or len(d.inflight) >= PUB_INFLIGHT or d.conn is None:
                    break
                d.credit -= 1
                t = d.targets[d.ti % len(d.targets)]
                d.ti += 1
                self._publish_one(d, t, now)

    def _publish_one(self, d, t, now):
        for _ in range(65536):
            d.next_pid = d.next_pid % 65535 + 1
            if d.next_pid not in d.inflight:
                break
        self.seq += 1
        d.inflight[d.next_pid] = self.seq
        self.sent[self.seq] = (t.cid, now, d.cid)
        self._send(d, rawmqtt.publish(t.topic, b"%d" % self.seq, qos=1, pid=d.next_pid,
                                      version=4))

    # -- driving
    def step(self, timeout=0.01):
        now = time.monotonic()
        dt = now - self._last
        self._last = now
        for d in self.devs:
            if d.state == "down" and d.retry_at is not None and now >= d.retry_at:
                self._open(d, now)
            elif d.state == "connecting" and now > d.deadline:
                self._drop(d, "no CONNACK within %.0fs" % CONNACK_TIMEOUT, now)
        self._publish(now, dt)
        for key, ev in self.sel.select(timeout):
            d = key.data
            now = time.monotonic()
            if ev & selectors.EVENT_WRITE and d.conn is not None:
                self._flush(d, now)
            if ev & selectors.EVENT_READ and d.conn is not None:
                self._readable(d, now)

    def run(self, seconds, until=None, every=None, period=0.1):
        """Drive everything for at most `seconds`; stop early once until()
        holds. every(now) is called about each `period` s. True if until held."""
        deadline = time.monotonic() + seconds
        next_tick = 0.0
        for _ in range(int(seconds * 100000) + 10):
            now = time.monotonic()
            if every is not None and now >= next_tick:
                next_tick = now + period
                every(now)
            if until is not None and until():
                return True
            if now >= deadline:
                break
            self.step(min(0.01, max(0.0, deadline - now)))
        return until is not None and until()

    def all_up(self, devs=None):
        return all(d.state == "up" for d in (self.devs if devs is None else devs))

    def close(self):
        """Close every socket; the devices' records (state included) stay as
        they were, for the verdicts."""
        for d in self.devs:
            d.retry_at = None
            if d.conn is not None:
                d.conn.close()
                d.conn = None
        self.sel.close()

    # -- verdicts
    def expected(self):
        per = collections.defaultdict(set)
        for seq, (cid, _) in self.acked.items():
            per[cid].add(seq)
        return per

    def missing(self, devs):
        """{cid: sorted acknowledged seqs not received}."""
        exp = self.expected()
        out = {}
        for d in devs:
            got = {g[0] for g in d.got}
            miss = exp.get(d.cid, set()) - got
            if miss:
                out[d.cid] = sorted(miss)
        return out

    def delivered(self, devs):
        return not self.missing(devs)

    @staticmethod
    def duplicates(d, allow_redelivery):
        """Copies of a message beyond the first. With allow_redelivery a copy
        is fine if it has DUP set or came on a later connection."""
        first = {}
        bad = []
        for seq, dup, gen, _ in d.got:
            if seq not in first:
                first[seq] = gen
            elif not allow_redelivery or not (dup or gen > first[seq]):
                bad.append((seq, dup, gen, first[seq]))
        return bad

    def burst(self, shard, n):
        """Each publisher of another shard sends n messages at once to the
        subscribers of `shard`."""
        now = time.monotonic()
        for d in self.pubs():
            if d.shard == shard or d.state != "up":
                continue
            targets = [t for t in d.targets if t.shard == shard]
            for k in range(n):
                self._publish_one(d, targets[k % len(targets)], now)

    def pubs_idle(self):
        return all(not d.inflight for d in self.pubs())


# ------------------------------------------------------------------ a drill under load


class DrillResult:
    pass


def age_s(text):
    """Seconds from a `cyan status` duration (0.4s, 12.0s, 5m03s, ...); -1 for '-'."""
    m = re.match(r"^([\d.]+)s$", text)
    if m:
        return float(m.group(1))
    m = re.match(r"^(\d+)m(\d+)s$", text)
    if m:
        return int(m.group(1)) * 60 + int(m.group(2))
    return -1.0


def drill_under_load(srv, device, drill, victim, per_shard, rate, warmup, expect_s,
                     check_default_timeout=None, min_uptime=0.0, burst=0):
    """Run `per_shard` persistent subscribers per shard and one publisher per
    shard (rate messages/s each, to subscribers of the other shards), run the
    drill `cyan shard <drill> <victim>` after warmup seconds, keep the load
    until the victim's devices are back and a little longer, then stop
    publishing and wait until every acknowledged message is delivered.
    Returns a DrillResult with the fleet, the statuses and the times; the
    caller asserts. expect_s bounds the wait for the replacement (generously:
    the caller asserts the measured time)."""
    r = DrillResult()
    r.victim = victim
    st0 = wait_all_running(srv)
    if check_default_timeout is not None:
        assert st0.watchdog_ms == check_default_timeout, st0
    r.watchdog_ms = st0.watchdog_ms
    fleet = Fleet(srv, device)
    r.fleet = fleet
    ids = ids_by_shard("dev", per_shard)
    for s in range(NSHARDS):
        for cid in ids[s]:
            fleet.add(cid, "sub")
    pids = ids_by_shard("pub", 1)
    for s in range(NSHARDS):
        fleet.add(pids[s][0], "pub")
    for p in fleet.pubs():
        p.targets = [d for d in fleet.subs() if d.shard != p.shard]
    fleet.start()
    t = time.monotonic()
    assert fleet.run(30, until=fleet.all_up), "not every device connected and subscribed " \
        "within 30 s: %r" % [d for d in fleet.devs if d.state != "up"][:10]
    r.connect_s = time.monotonic() - t
    fleet.rate = rate
    fleet.run(warmup)
    r.before = status(srv)
    for _ in range(100):  # the victim must have run min_uptime (bounded: ~10 s)
        if age_s(r.before[victim].up) >= min_uptime:
            break
        fleet.run(0.1)
        r.before = status(srv)
    assert all(row.state == "RUNNING" for row in r.before.rows.values()), r.before
    old_pid = r.before[victim].pid
    r.old_pid = old_pid
    r.acked_before = len(fleet.acked)

    # The drill. Poll the scoreboard while the load goes on.
    r.t_drill = time.monotonic()
    r.wall_drill = time.time()
    srv.cli("shard", drill, str(victim))
    if burst:
        fleet.burst(victim, burst)
    marks = {}
    polls = []
    poller = StatusPoller(srv)

    def poll(now):
        got = poller.tick(now)
        if got is None:
            return
        st, now = got
        polls.append((now - r.t_drill, st))
        row = st.rows.get(victim)
        if row is None:
            return
        if "down" not in marks and (row.pid != old_pid or row.state != "RUNNING"):
            marks["down"] = now
        if row.pid not in (None, old_pid) and row.state == "RUNNING":
            marks.setdefault("up", now)
            marks["up_status"] = st

    try:
        fleet.run(expect_s, until=lambda: "up" in marks, every=poll, period=0.01)
    finally:
        poller.close()
    r.polls = polls
    r.down_s = marks["down"] - r.t_drill if "down" in marks else None
    r.up_s = marks["up"] - r.t_drill if "up" in marks else None
    r.t_up = marks.get("up")
    r.up_status = marks.get("up_status")
    if r.t_up is None:
        r.after = status(srv)
        fleet.close()
        return r

    # The victim's devices come back (they retry on refusal), while the load goes on.
    vdevs = fleet.subs(victim)
    t = time.monotonic()
    fleet.run(15, until=lambda: all(d.gen >= 2 and d.state == "up" for d in vdevs))
    r.back_s = time.monotonic() - r.t_drill
    r.all_back = all(d.gen >= 2 and d.state == "up" for d in vdevs)
    fleet.run(1.5)

    # Stop publishing, let the acknowledgements come in, wait for delivery.
    fleet.rate = 0
    fleet.run(10, until=fleet.pubs_idle)
    t = time.monotonic()
    fleet.run(20, until=lambda: fleet.delivered(fleet.subs()))
    r.drain_s = time.monotonic() - t
    fleet.run(0.3)  # late duplicates, if any
    r.after = status(srv)
    # Messages acknowledged to their publisher while the victim was away.
    r.while_away = sum(1 for seq, (cid, _) in fleet.acked.items()
                       if shard_of(cid) == victim and r.t_drill <= fleet.sent[seq][1] <= r.t_up)
    # Latencies during the outage, for the healthy shards' devices: PUBACKs to
    # their publishers, and deliveries to their subscribers.
    healthy_pubs = {d.cid for d in fleet.pubs() if d.shard != victim}
    r.puback_lat = [ta - fleet.sent[seq][1] for seq, (_, ta) in fleet.acked.items()
                    if fleet.sent[seq][2] in healthy_pubs
                    and r.t_drill <= fleet.sent[seq][1] <= r.t_up]
    r.deliver_lat = [tr - fleet.sent[seq][1] for d in fleet.subs() if d.shard != victim
                     for seq, _, _, tr in d.got
                     if fleet.sent[seq][2] in healthy_pubs
                     and r.t_drill <= fleet.sent[seq][1] <= r.t_up]
    vpub = [d.cid for d in fleet.pubs() if d.shard == victim]
    r.victim_pub_acked_after = sum(1 for seq, (_, ta) in fleet.acked.items()
                                   if fleet.sent[seq][2] in vpub and fleet.sent[seq][1] > r.t_up)
    new_gen = r.before[victim].gen + 1
    r.log = [(t - r.wall_drill, line) for t, line in log_lines_since(srv, r.wall_drill)]
    r.kill_log = [(t, line) for t, line in r.log
                  if ("shard %d (pid %d)" % (victim, old_pid)) in line]
    r.timeline = [(t, line) for t, line in r.log if (
        "shard %d (pid %d)" % (victim, old_pid) in line
        or re.search(r"shard %d \(pid \d+\) started, generation %d$" % (victim, new_gen), line)
        or re.search(r"shard=%d shard %d/\d+ serving MQTT" % (victim, victim), line))]
    fleet.close()
    return r


def report(name, r):
    f = r.fleet
    lines = [
        "[%s] watchdog_timeout %s ms; %d devices connected in %.2fs" % (
            name, r.watchdog_ms, len(f.devs), r.connect_s),
        "[%s] drill -> victim seen down/killed after %s s, new pid RUNNING after %s s, "
        "all its devices back after %.2f s" % (
            name, "%.2f" % r.down_s if r.down_s is not None else "never",
            "%.2f" % r.up_s if r.up_s is not None else "never", getattr(r, "back_s", -1)),
    ]
    for dt, line in getattr(r, "timeline", []):
        lines.append("[%s]   +%.3fs %s" % (name, dt, line))
    lines.append("[%s] %d messages published, %d acknowledged (%d for the victim's devices "
                 "while it was away); delivery complete %.2fs after the load stopped" % (
                     name, f.seq, len(f.acked), getattr(r, "while_away", 0),
                     getattr(r, "drain_s", -1)))
    vdevs = [d for d in f.devs if d.shard == getattr(r, "victim", -1)]
    refused = collections.Counter(rc for d in vdevs for _, rc in d.refused)
    lines.append("[%s] the victim's %d devices: %d CONNACK refusals %s, %d other connect "
                 "failures before they were back" % (
                     name, len(vdevs), sum(refused.values()),
                     dict(("rc %d" % k, v) for k, v in refused.items()),
                     sum(len(d.errors) for d in vdevs)))
    if getattr(r, "puback_lat", None):
        lines.append("[%s] during the outage, healthy shards: %d PUBACKs, max latency %.3fs; "
                     "%d deliveries, max latency %.3fs" % (
                         name, len(r.puback_lat), max(r.puback_lat), len(r.deliver_lat),
                         max(r.deliver_lat) if r.deliver_lat else -1))
    print("\n" + "\n".join(lines))


def assert_delivery(r, victim):
    f = r.fleet
    healthy = [d for d in f.devs if d.shard != victim]
    # Devices of the healthy shards never noticed anything.
    noticed = [(d, d.closes, d.refused, d.errors) for d in healthy
               if d.gen != 1 or d.closes or d.refused or d.errors or d.state != "up"]
    assert not noticed, "devices of healthy shards were disturbed: %r" % noticed[:10]
    anomalies = [(d.cid, d.anomalies[:3]) for d in f.devs if d.anomalies]
    assert not anomalies, "protocol anomalies: %r" % anomalies[:10]
    # No loss: every acknowledged message arrived.
    miss = f.missing(f.subs())
    assert not miss, "acknowledged messages never delivered (%d devices; victim shard %d): " \
        "%r" % (len(miss), victim, {c: (shard_of(c), v[:10]) for c, v in
                                   list(miss.items())[:10]})
    # No duplicates for healthy-shard subscribers; for the victim's only QoS 1
    # redeliveries (DUP set, or after the reconnect).
    dups = {d.cid: Fleet.duplicates(d, False)[:5] for d in f.subs() if d.shard != victim
            and Fleet.duplicates(d, False)}
    assert not dups, "duplicates on healthy shards: %r" % dups
    vdups = {d.cid: Fleet.duplicates(d, True)[:5] for d in f.subs(victim)
             if Fleet.duplicates(d, True)}
    assert not vdups, "duplicates without DUP on the same connection: %r" % vdups
    # The victim's devices noticed (closed), came back, found their session.
    for d in f.subs(victim):
        assert d.closes, "%r was never disconnected" % d
        assert d.gen >= 2 and d.state == "up", "%r did not come back: refused %r errors %r" % (
            d, d.refused[-3:], d.errors[-3:])
        assert all(sp for _, sp in d.connacks[1:]), "%r lost its session: %r" % (d, d.connacks)
    assert r.while_away > 0, "nothing was published to the victim's devices while it was away"
    # The healthy shards' publishers kept being acknowledged during the outage,
    # without waiting for the victim; their subscribers kept receiving.
    assert r.puback_lat and r.deliver_lat, "no traffic on the healthy shards during the outage"
    assert max(r.puback_lat) < HEALTHY_LATENCY_S, "a healthy publisher waited %.2fs for a " \
        "PUBACK during the outage" % max(r.puback_lat)
    assert max(r.deliver_lat) < HEALTHY_LATENCY_S, "a healthy subscriber waited %.2fs for a " \
        "message during the outage" % max(r.deliver_lat)
    # The victim's own publisher came back and publishes through the new shard.
    vpub = [d for d in f.pubs() if d.shard == victim]
    assert all(d.gen >= 2 and d.state == "up" for d in vpub), vpub
    assert r.victim_pub_acked_after > 0, "no PUBACK for the victim's publisher after its return"


# ------------------------------------------------------------------ tests


def test_sigstop_shard_replaced_others_unaffected(server_factory):
    """SIGSTOP one shard under load: found hung (no heartbeat) and replaced
    within watchdog_timeout + 2 s; nobody else notices; nothing acknowledged
    is lost, including what was published to the stopped shard's devices."""
    srv = server_factory(shards=NSHARDS)  # default watchdog_timeout (2000 ms)
    dev = srv.add_device()
    victim = 1
    r = drill_under_load(srv, dev, "stop", victim, per_shard=50, rate=50, warmup=3.0,
                         expect_s=DEFAULT_WATCHDOG_MS / 1000 + 6,
                         check_default_timeout=DEFAULT_WATCHDOG_MS)
    report("sigstop", r)
    limit = DEFAULT_WATCHDOG_MS / 1000 + 2
    assert r.up_s is not None, "shard %d not replaced within %.0fs; polls:\n%r" % (
        victim, DEFAULT_WATCHDOG_MS / 1000 + 6, r.polls[-1:])
    assert r.up_s <= limit, "replacement took %.2fs > %.1fs" % (r.up_s, limit)
    # Not before the watchdog could know (sanity of the measurement).
    assert r.down_s >= DEFAULT_WATCHDOG_MS / 1000 * 0.9, r.down_s
    row = r.after[victim]
    assert (row.exit, row.sig, row.hung, row.stuck) == (0, 0, 1, 0), r.after
    assert row.reason and row.reason.startswith("no heartbeat for "), r.after
    assert row.gen == r.before[victim].gen + 1, r.after
    log = "\n".join(line for _, line in r.kill_log)
    assert re.search(r"shard %d \(pid %d\) no heartbeat for [\d.]+ s: killed" % (
        victim, r.old_pid), log), log
    for s in range(NSHARDS):
        if s != victim:
            assert r.after[s].pid == r.before[s].pid, "shard %d was replaced too:\n%r" % (
                s, r.after)
            assert (r.after[s].exit, r.after[s].sig, r.after[s].hung, r.after[s].stuck) == \
                (0, 0, 0, 0), r.after
    assert_delivery(r, victim)


def test_sigkill_shard_replaced(server_factory):
    """SIGKILL one shard under load: respawned within 2 s (no watchdog wait),
    counted as killed by a signal, same delivery guarantees."""
    srv = server_factory(shards=NSHARDS, watchdog_timeout=FAST_WATCHDOG_MS)
    dev = srv.add_device()
    victim = 2
    # A shard that ran 5 s or more is respawned at once (less: crash-loop backoff).
    # The burst: messages for the victim's devices right after the kill, while
    # it is being replaced (its replacement takes well under a poll period).
    r = drill_under_load(srv, dev, "kill", victim, per_shard=50, rate=50, warmup=2.0,
                         expect_s=6, min_uptime=5.5, burst=10)
    report("sigkill", r)
    assert r.up_s is not None, "shard %d not replaced within 6s; polls:\n%r" % (
        victim, r.polls[-1:])
    assert r.up_s <= 2.0, "replacement took %.2fs > 2s" % r.up_s
    row = r.after[victim]
    assert (row.exit, row.sig, row.hung, row.stuck) == (0, 1, 0, 0), r.after
    assert row.reason == "exited with signal 9 (SIGKILL)", r.after
    log = "\n".join(line for _, line in r.kill_log)
    assert re.search(r"shard %d \(pid %d\) exited with signal 9 \(SIGKILL\) after [\d.]+ s; "
                     r"respawning$" % (victim, r.old_pid), log, re.M), log
    for s in range(NSHARDS):
        if s != victim:
            assert r.after[s].pid == r.before[s].pid, r.after
    assert_delivery(r, victim)


def test_stall_detected_as_stuck(server_factory):
    """A shard whose loop turns (heartbeat fresh) but that ignores its input is
    killed as stuck once work is queued for it, and its persistent subscribers
    get what was acknowledged for them meanwhile."""
    srv = server_factory(shards=NSHARDS, watchdog_timeout=FAST_WATCHDOG_MS)
    dev = srv.add_device()
    victim = 3
    r = drill_under_load(srv, dev, "stall", victim, per_shard=5, rate=20, warmup=1.0,
                         expect_s=FAST_WATCHDOG_MS / 1000 + 5)
    report("stall", r)
    limit = FAST_WATCHDOG_MS / 1000 + 2
    assert r.up_s is not None, "stalled shard %d not replaced; last polls:\n%r" % (
        victim, [p[1] for p in r.polls[-2:]])
    assert r.up_s <= limit, "replacement took %.2fs > %.1fs" % (r.up_s, limit)
    row = r.after[victim]
    assert (row.exit, row.sig, row.hung, row.stuck) == (0, 0, 0, 1), r.after
    assert row.reason and re.match(r"no progress for [\d.]+ s with \d+ queued$", row.reason), \
        r.after
    for s in range(NSHARDS):
        if s != victim:
            assert r.after[s].pid == r.before[s].pid, r.after
    assert_delivery(r, victim)


def test_spin_detected_as_hung(server_factory):
    """A shard whose loop spins forever stops beating: killed as hung within
    watchdog_timeout + 2 s."""
    srv = server_factory(shards=NSHARDS, watchdog_timeout=FAST_WATCHDOG_MS)
    dev = srv.add_device()
    victim = 0
    r = drill_under_load(srv, dev, "spin", victim, per_shard=3, rate=10, warmup=0.5,
                         expect_s=FAST_WATCHDOG_MS / 1000 + 5)
    report("spin", r)
    limit = FAST_WATCHDOG_MS / 1000 + 2
    assert r.up_s is not None, "spinning shard %d not replaced; last poll:\n%r" % (
        victim, r.polls[-1:])
    assert r.up_s <= limit, "replacement took %.2fs > %.1fs" % (r.up_s, limit)
    row = r.after[victim]
    assert (row.exit, row.sig, row.hung, row.stuck) == (0, 0, 1, 0), r.after
    assert row.reason and row.reason.startswith("no heartbeat for "), r.after
    assert "drill: spinning the event loop forever" in current_run_log(srv)
    assert_delivery(r, victim)


def test_crash_at_start_backs_off(server_factory):
    """A shard that cannot open its SQLite file exits at start, again and
    again: respawned with growing delays, never in a tight loop; the other
    shards serve; its own devices are refused at once."""
    srv = server_factory(shards=NSHARDS, watchdog_timeout=FAST_WATCHDOG_MS)
    dev = srv.add_device()
    wait_all_running(srv)
    srv.stop()
    # shard-2.db as a directory: SQLite cannot open it.
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = os.path.join(srv.data_dir, "shard-2.db" + suffix)
        if os.path.exists(path):
            os.remove(path)
    os.mkdir(os.path.join(srv.data_dir, "shard-2.db"))
    wall = time.time()
    srv.start()
    t0 = time.monotonic()
    try:
        # While the node starts, the healthy shards wait up to READY_WAIT_S for
        # every peer before they accept anyone (broker.c, CY_READY_WAIT_MS), so a
        # device of shard 2 connecting now waits in the listen backlog until then,
        # and is refused after that.
        cid2 = ids_by_shard("bad", 3)[2]
        with rawmqtt.RawClient(srv.host, srv.port, version=5, timeout=5) as c:
            ack = c.connect(cid2[2], username=dev.id, password=dev.secret,
                            timeout=READY_WAIT_S + 3)
            first_refusal = time.monotonic() - t0
            assert ack.rc == 0x88, ack
        print("\n[crash-at-start] a device of shard 2 connecting at start refused after %.2fs"
              % first_refusal)
        assert first_refusal <= READY_WAIT_S + 1.5, first_refusal

        # Shard 0 serves: a device of shard 0 publishes to itself and gets it.
        # The shards' start timers run out a few ms apart: a shard that already
        # accepts may refuse shard 0's device for that long (0x88), so retry.
        cid0 = ids_by_shard("ok", 1)[0][0]
        refusals = []
        for _ in range(60):
            c = rawmqtt.RawClient(srv.host, srv.port, version=5, timeout=5)
            ack = c.connect(cid0, username=dev.id, password=dev.secret, timeout=3)
            if ack.rc == 0 or ack.rc != 0x88 or time.monotonic() - t0 > READY_WAIT_S + 3:
                break
            refusals.append(time.monotonic() - t0)
            c.close()
            time.sleep(0.05)
        with c:
            serving = time.monotonic() - t0
            assert ack.rc == 0, "device of shard 0 refused: %r (after %d refusals)" % (
                ack, len(refusals))
            assert c.subscribe([("d/" + cid0, 1)]).codes == [1]
            c.send(rawmqtt.publish("d/" + cid0, b"hello", qos=1, pid=7))
            got = {}
            for _ in range(2):  # PUBACK and the message itself, in either order
                p = c.read(timeout=3)
                got[type(p).__name__] = p
                if isinstance(p, rawmqtt.Publish):
                    c.send(rawmqtt.puback(p.pid))
            assert got["Ack"].pid == 7 and got["Ack"].rc == 0, got
            assert (got["Publish"].topic, got["Publish"].payload) == \
                ("d/" + cid0, b"hello"), got
            c.disconnect()
        print("[crash-at-start] shard 0 served a device %.2fs after the start (refused "
              "before at %r)" % (serving, [round(t, 3) for t in refusals]))
        assert serving <= READY_WAIT_S + 2, serving

        # Devices of shard 2 are now refused at once, in both protocol versions.
        for version, cid, want in ((5, cid2[0], 0x88), (4, cid2[1], 3)):
            with rawmqtt.RawClient(srv.host, srv.port, version=version, timeout=5) as c:
                t = time.monotonic()
                ack = c.connect(cid, username=dev.id, password=dev.secret, timeout=1.0,
                                clean=False, props={rawmqtt.SESSION_EXPIRY_INTERVAL: 60}
                                if version == 5 else None)
                took = time.monotonic() - t
                assert ack.rc == want, "CONNACK %r for a device of the broken shard (v%d)" % (
                    ack, version)
                assert took < 1.0, took
                print("[crash-at-start] v%d device of shard 2 refused (rc 0x%02x) in %.3fs" % (
                    version, ack.rc, took))

        # The crash loop so far (READY_WAIT_S and a little more since the start).
        st = status(srv)
        elapsed = time.monotonic() - t0
        lines = [line for _, line in log_lines_since(srv, wall)]
        delays = [float(m.group(1)) for m in (
            re.search(r"shard 2 \(pid \d+\) exited with status \d+ after [\d.]+ s; "
                      r"respawning in ([\d.]+) s \(crash loop\)", line) for line in lines) if m]
        starts = [line for line in lines if re.search(r"shard 2 \(pid \d+\) started", line)]
        print("[crash-at-start] in %.1fs: %d starts of shard 2, respawn delays %r; status %s" % (
            elapsed, len(starts), delays, st.rows.get(2)))
        assert elapsed < 8.0, elapsed
        row = st[2]
        assert row.state in ("DOWN", "STARTING"), st
        assert 2 <= row.exit < 8 and row.sig == row.hung == row.stuck == 0, \
            "restarts of shard 2 in %.1f s: %r" % (elapsed, st)
        assert row.reason and row.reason.startswith("exited with status "), st
        assert len(starts) < 9, "tight loop: %d starts in %.1f s" % (len(starts), elapsed)
        assert len(delays) >= 3, "no crash-loop backoff logged: %r\n%s" % (
            delays, "\n".join(lines))
        assert all(b > a for a, b in zip(delays, delays[1:])), "delays do not grow: %r" % delays
        assert delays[0] <= 0.5, delays
        for s in (0, 1, 3):
            assert st[s].state == "RUNNING" and (st[s].exit, st[s].sig, st[s].hung,
                                                 st[s].stuck) == (0, 0, 0, 0), st
    finally:
        # A node with a shard down does not stop cleanly: the supervisor says so
        # (exit 1) but must still stop in time (the fixture would insist on 0).
        rc = srv.stop(check=False)
    assert rc is not None, "supervisor did not stop within 5 s of SIGTERM"


def test_supervisor_death_takes_shards(server_factory):
    """SIGKILL the supervisor: every shard exits within ~2 s (none outlives it)
    and the port closes."""
    srv = server_factory(shards=NSHARDS, watchdog_timeout=FAST_WATCHDOG_MS)
    st = wait_all_running(srv)
    pids = [st[s].pid for s in range(NSHARDS)]
    assert st.supervisor == srv.proc.pid
    t = time.monotonic()
    srv.kill()  # the fixture's process; teardown then has nothing to stop
    left = pids
    for _ in range(100):
        left = [p for p in pids if not pid_gone(p)]
        if not left or time.monotonic() - t > 2.5:
            break
        time.sleep(0.02)
    took = time.monotonic() - t
    print("\n[supervisor-death] shards gone %.2fs after SIGKILL of the supervisor" % took)
    assert not left, "shards %r still alive %.1fs after the supervisor died" % (left, took)
    with pytest.raises(OSError):
        rawmqtt.RawClient(srv.host, srv.port, timeout=1).close()
    cp = srv.cli("status", check=False)
    assert cp.returncode == 1 and "not running" in cp.stderr, (cp.stdout, cp.stderr)


def test_status_reports_reasons(server_factory):
    """After a kill drill (twice) and a stop drill, `cyan status` counts the
    restarts by reason and shows the last reason."""
    srv = server_factory(shards=NSHARDS, watchdog_timeout=FAST_WATCHDOG_MS)
    st0 = wait_all_running(srv)
    assert st0.watchdog_ms == FAST_WATCHDOG_MS

    def replaced(idx, old_pid, timeout):
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            st = status(srv)
            row = st.rows.get(idx)
            if row and row.pid not in (None, old_pid) and row.state == "RUNNING":
                return st
            time.sleep(0.05)
        raise AssertionError("shard %d not replaced within %.1fs:\n%r" % (idx, timeout, st))

    srv.cli("shard", "kill", "1")
    st = replaced(1, st0[1].pid, 3)
    pid1 = st[1].pid
    srv.cli("shard", "kill", "1")
    st = replaced(1, pid1, 3)
    # Let shard 2 redial the new shard 1 before stopping it. Stopped within
    # ~100 ms of a peer's restart, a shard cannot yet acknowledge the peer's
    # first frame, so the progress clock may start while it still beats, and
    # the stop is then sometimes counted as "stuck" rather than "hung" (about
    # 1 run in 12; reported, not what this test is about).
    assert srv.wait_log("shard=2 bus: shard 2: link to shard 1 up (generation %d)" % st[1].gen,
                        timeout=3), current_run_log(srv)[-3000:]
    time.sleep(0.3)
    srv.cli("shard", "stop", "2")
    st = replaced(2, st0[2].pid, FAST_WATCHDOG_MS / 1000 + 3)
    st = status(srv)
    assert st.rc == 0, st
    r1, r2 = st[1], st[2]
    assert (r1.exit, r1.sig, r1.hung, r1.stuck) == (0, 2, 0, 0), st
    assert r1.reason == "exited with signal 9 (SIGKILL)", st
    assert r1.gen == st0[1].gen + 2, st
    assert (r2.exit, r2.sig, r2.hung, r2.stuck) == (0, 0, 1, 0), st
    assert re.match(r"no heartbeat for [\d.]+ s$", r2.reason or ""), st
    secs = float(re.search(r"([\d.]+) s", r2.reason).group(1))
    assert FAST_WATCHDOG_MS / 1000 <= secs < FAST_WATCHDOG_MS / 1000 + 1, st
    for s in (0, 3):
        assert (st[s].exit, st[s].sig, st[s].hung, st[s].stuck) == (0, 0, 0, 0), st
        assert st[s].last == "-" and st[s].pid == st0[s].pid, st
    # The drill on a shard that is not there.
    cp = srv.cli("shard", "kill", "9", check=False)
    assert cp.returncode == 2 and "no shard 9" in cp.stderr, (cp.stdout, cp.stderr)


def test_peer_restart_keeps_routing_to_its_subscriptions(server_factory):
    """A replaced shard re-announces its sessions' filters to every peer: one
    INTEREST_RESET frame, then one INTEREST_ADD per filter. QoS 1 messages the
    peers acknowledge meanwhile for those filters must still reach the
    subscriber (no window in which a peer forgot the interest)."""
    nfilters = 5000
    srv = server_factory(shards=NSHARDS, watchdog_timeout=FAST_WATCHDOG_MS, max_queued=100000,
                         max_subscriptions=nfilters)
    dev = srv.add_device()
    wait_all_running(srv)
    victim = 2
    fleet = Fleet(srv, dev)
    sub = fleet.add(ids_by_shard("many", 1)[victim][0], "sub")
    sub.filters = ["m/%s/%d" % ("x" * 40, k) for k in range(nfilters)]
    pub_ids = ids_by_shard("mpub", 1)
    for s in range(NSHARDS):
        if s != victim:
            p = fleet.add(pub_ids[s][0], "pub")
            p.targets = [Target(sub.cid, f, victim) for f in sub.filters]
            p.ti = s * nfilters // NSHARDS
    fleet.start()
    assert fleet.run(30, until=fleet.all_up), [d for d in fleet.devs if d.state != "up"]
    fleet.rate = 300
    fleet.run(1.0)
    before = status(srv)
    wall = time.time()
    t0 = time.monotonic()
    srv.cli("shard", "kill", str(victim))
    poller = StatusPoller(srv)
    marks = {}

    def poll(now):
        got = poller.tick(now)
        if got is not None:
            row = got[0].rows.get(victim)
            if row and row.pid not in (None, before[victim].pid) and row.state == "RUNNING":
                marks.setdefault("up", got[1])

    try:
        fleet.run(6, until=lambda: "up" in marks, every=poll, period=0.01)
    finally:
        poller.close()
    assert "up" in marks, "shard %d not replaced within 6 s" % victim
    assert fleet.run(10, until=lambda: sub.gen >= 2 and sub.state == "up"), sub
    fleet.run(1.5)
    fleet.rate = 0
    fleet.run(10, until=fleet.pubs_idle)
    fleet.run(8, until=lambda: fleet.delivered([sub]))
    fleet.close()
    miss = fleet.missing([sub]).get(sub.cid, [])
    around = [(seq, fleet.sent[seq][1] - t0) for seq in miss]
    by_pub = collections.Counter("shard %d" % shard_of(fleet.sent[seq][2]) for seq in miss)
    print("\n[interest-resync] %d messages acknowledged for %d filters of shard %d; "
          "replaced after %.2fs; %d never delivered (publishers on %s), sent at (s after "
          "the kill) %r" % (
              sum(1 for c, _ in fleet.acked.values() if c == sub.cid), nfilters, victim,
              marks["up"] - t0, len(miss), dict(by_pub), [round(t, 3) for _, t in around[:20]]))
    for t, line in log_lines_since(srv, wall):
        if re.search(r"replaying|started, generation|serving MQTT|link to shard %d up|"
                     r"shard=%d bus: shard %d: link to" % (victim, victim, victim), line):
            print("[interest-resync]   +%.3fs %s" % (t - wall, line))
    anomalies = [(d.cid, d.anomalies[:3]) for d in fleet.devs if d.anomalies]
    assert not anomalies, anomalies
    assert not miss, "%d acknowledged messages for the replaced shard's subscriber never " \
        "arrived (sent %r s after the kill)" % (len(miss), [round(t, 3) for _, t in around[:20]])
    assert not Fleet.duplicates(sub, True), Fleet.duplicates(sub, True)[:5]


STOP_ROUNDS = 12


def test_stop_with_handovers_in_flight_exits_clean(server_factory):
    """SIGTERM while CONNECTs are being handed to their owner shards: a
    handover the closing bus cancels is refused (server unavailable), and
    that refusal is written and its socket closed although the shard's last
    flush has run. Before, the connection and its output outlived the loop
    (ASan: 1,224 bytes leaked at the stop, exit status 1), in about one stop
    in six; the rounds vary how far into the burst the SIGTERM lands."""
    import signal
    import socket
    for r in range(STOP_ROUNDS):
        srv = server_factory(shards=NSHARDS)
        proc = srv.proc
        deadline = time.monotonic() + 10
        while srv.log().count("serving MQTT on") < NSHARDS and time.monotonic() < deadline:
            time.sleep(0.02)  # every shard takes clients: the handovers begin
        assert srv.log().count("serving MQTT on") == NSHARDS, srv.log_tail()
        socks = []
        term_at = 40 + 60 * (r % 5)
        try:
            for k in range(term_at + 100):
                if k == term_at:
                    proc.send_signal(signal.SIGTERM)
                try:
                    s = socket.create_connection((srv.host, srv.port), 1)
                    s.sendall(rawmqtt.connect("stop%d-%d" % (r, k), version=4, keepalive=30))
                    socks.append(s)
                except OSError:
                    pass  # the node is closing its listener
            rc = proc.wait(30)
        finally:
            for s in socks:
                s.close()
        srv.proc = None  # stopped here: one SIGTERM (a second kills the shards)
        assert rc == 0, "round %d: exit status %d after SIGTERM\n%s" % (r, rc, srv.log_tail())
