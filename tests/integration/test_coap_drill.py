"""The CoAP fault drill (issue 13): SIGSTOP the shard of some CoAP devices,
the others carry on.

Four shards (set explicitly, whatever CYAN_SHARDS says). A device's owner
is cy_shard_of(id) = FNV-1a 64 of its id modulo 4; device ids come from the
API, so the test sorts them by owner. The victim shard S is the owner of
plain device A. Running all the time, one thread per device, each sending
a CON event every 0.2 s:
  - plain devices owned by each other shard: every event answered 2.04
    within HEALTHY_LATENCY_S, all through the stop (several rounds);
  - plain device A: while S is stopped no 2.04 can come; once S is judged
    unhealthy (heartbeat older than min(watchdog_timeout / 2, 1 s)) the
    shard that reads A's datagram answers 5.03 with Max-Age at once; after
    SIGCONT ("cont") or the supervisor's replacement ("replace") A works
    again, and none of A's events answered 5.03 is ever published.
Over DTLS the session lives on its terminator, the shard whose SO_REUSEPORT
socket the client's address hashes to ("DTLS session from" is logged there,
at debug level), which may not be the owner (src/coap/coap.c, the header
comment). So what is guaranteed, and asserted:
  - D1, terminator and owner both healthy: carries on like the plain ones;
  - D2, owner S, terminator healthy: 5.03 once S is judged unhealthy, then
    works again after the recovery;
  - D3, terminator S, owner healthy: nothing (its records wait in S's
    socket); after SIGCONT the same session works again. After a
    replacement the new process has no DTLS state, so the session is gone:
    what happens to it is printed, and a new handshake must work.
A second test kills (SIGKILL) the terminator of a DTLS device owned by
another shard: the session died with that process, so the owner must take
the device offline and refuse calls at once (409), not keep it online and
retransmit into a session that is gone.
Each DTLS device gets a proxy (tests/tools/coaps_proxy) whose source port
lands it on the wanted terminator: proxies are started until one does.

Absence is never proven by waiting: "no 2.04 while S is stopped" is checked
on answers that arrived before the resume, and "never published" by A's
later event being the next message after the last one published before.
Measured latencies are printed (pytest -s shows them)."""

import re
import threading
import time

import pytest

import coapdev
from apidevice import api
from coapdev import code
from helpers import CYAN, Client
from coaptest import new_device, presence, wait_until
from test_coaps import proxy_on
from test_shards import age_s, pid_gone, shard_of, status, wait_all_running

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's shards and watchdog"),
]

NSHARDS = 4
HEALTHY_LATENCY_S = 1.5   # as test_shards.py: a healthy shard never waits longer on a broken peer
JUDGED_S = 1.0            # cy_cluster_shard_ready: heartbeat older than min(wt / 2, 1 s)
STOP_S = 5.0              # the "cont" drill: how long S stays stopped
VICTIM_TIMEOUT_S = 1.5    # a victim's request: no retransmission, this long for an answer
MIN_UPTIME_S = 5.5        # a shard that ran 5 s is respawned without the crash-loop delay
RECOVER_S = 20.0          # from the resume until A (and D2) answer 2.04 again


class Worker:
    """One device sending a CON event every `period` s on its own thread;
    records (t_sent, t_answered or None, code or None). victim=True: no
    retransmission and a short timeout (its answer may never come)."""

    def __init__(self, name, dev, victim=False, period=0.2):
        self.name, self.dev, self.victim, self.period = name, dev, victim, period
        self.records = []
        self.seq = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        while self.running:
            self.seq += 1
            t = time.monotonic()
            try:
                if self.victim:
                    r = self.dev.event("drill", b"%d" % self.seq, timeout=VICTIM_TIMEOUT_S,
                                       retransmit=False)
                else:
                    r = self.dev.event("drill", b"%d" % self.seq, timeout=10)
                rec = (t, time.monotonic(), r.code, self.seq, r)
            except TimeoutError:
                rec = (t, None, None, self.seq, None)
            self.records.append(rec)
            time.sleep(self.period)

    def stop(self):
        self.running = False
        self.thread.join(15)

    def between(self, t0, t1):
        return [r for r in self.records if t0 <= r[0] < t1]

    def ok_after(self, t):
        """The time of the first 2.04 for an event sent at or after t, or None."""
        for r in self.records:
            if r[0] >= t and r[2] == code(2, 4):
                return r[1]
        return None


def devices_by_owner(srv, need):
    """Registered devices (POST /v1/devices bodies) until need(by_owner) holds."""
    by = {i: [] for i in range(NSHARDS)}
    for _ in range(200):
        d = new_device(srv)
        by[shard_of(d["id"], NSHARDS)].append(d)
        if need(by):
            return by
    raise AssertionError("could not spread devices over shards: %r" % {
        k: len(v) for k, v in by.items()})


@pytest.mark.parametrize("recovery", ["cont", "replace"])
def test_sigstop_one_shard_the_other_coap_devices_carry_on(server_factory, recovery):
    # cont: a watchdog long enough, and no canaries (a failing canary gets a
    # shard replaced after canary_timeout), so that S is SIGCONTed before it
    # is replaced; replace: the defaults, the supervisor kills S ~2 s in.
    extra = dict(watchdog_timeout=30000, canary_timeout=0) if recovery == "cont" else {}
    srv = server_factory(_template=False, shards=NSHARDS, coap_insecure=True,
                         allow_anonymous=True, **extra)
    srv.wait_api_healthy()
    # Per shard: 3 devices (plain, DTLS D1/D3 candidates); S: A and D2 too.
    by = devices_by_owner(srv, lambda b: all(len(v) >= 3 for v in b.values()))
    a = by[0][0]
    S = 0
    others = [i for i in range(NSHARDS) if i != S]
    plain = {i: by[i][0] for i in others}
    d1, d3, d2 = by[others[0]][1], by[others[1]][1], by[S][1]

    workers, proxies, devs = [], [], []
    watch = None
    try:
        # DTLS: D1 terminated on a healthy shard, D2 (owner S) on a healthy
        # one, D3 (owner healthy) on S.
        px1, t1 = proxy_on(srv, d1, lambda t: t != S)
        px2, t2 = proxy_on(srv, d2, lambda t: t != S)
        px3, t3 = proxy_on(srv, d3, lambda t: t == S)
        proxies += [px1, px2, px3]

        dev_a = coapdev.Device(srv.host, srv.coap_port, a["id"])
        plain_devs = {i: coapdev.Device(srv.host, srv.coap_port, d["id"])
                      for i, d in plain.items()}
        dv1, dv2, dv3 = (px.device(d["id"]) for px, d in ((px1, d1), (px2, d2), (px3, d3)))
        devs += [dev_a, dv1, dv2, dv3] + list(plain_devs.values())
        for dv in devs:
            assert dv.event("hello", b"0").code == code(2, 4)

        # A watcher for A's events on a healthy shard: the evidence that no
        # event answered 5.03 was published.
        wid = next("watch%d" % n for n in range(1000) if shard_of("watch%d" % n, NSHARDS) != S)
        watch = Client(srv, client_id=wid, version=5)
        watch.connect()
        watch.subscribe("devices/%s/events/#" % a["id"], 1)
        assert dev_a.event("mark", b"before").code == code(2, 4)
        assert watch.get(timeout=5).payload == b"before"

        wait_all_running(srv, nshards=NSHARDS)
        wait_until(lambda: age_s(status(srv).rows[S].up) >= MIN_UPTIME_S, 15,
                   "shard %d up %.1f s" % (S, MIN_UPTIME_S))
        old = srv.shard_pids()[S]

        healthy = [Worker("plain@%d" % i, dv) for i, dv in plain_devs.items()]
        healthy.append(Worker("D1(o%d,t%d)" % (shard_of(d1["id"], NSHARDS), t1), dv1))
        wa = Worker("A", dev_a, victim=True)
        w2 = Worker("D2(o%d,t%d)" % (S, t2), dv2, victim=True)
        w3 = Worker("D3(o%d,t%d)" % (shard_of(d3["id"], NSHARDS), t3), dv3, victim=True)
        workers = healthy + [wa, w2, w3]
        for w in workers:
            w.start()
        wait_until(lambda: all(w.ok_after(0) for w in workers), 10, "every device answered")

        t_stop = time.monotonic()
        srv.cli("shard", "stop", str(S))
        if recovery == "cont":
            time.sleep(STOP_S)  # the devices' threads keep sending meanwhile
            t_resume = time.monotonic()
            srv.cli("shard", "cont", str(S))
            assert srv.shard_pids().get(S) == old, "shard %d replaced in the cont drill" % S
        else:
            wait_until(lambda: pid_gone(old), 15, "the supervisor to kill shard %d" % S)
            t_resume = time.monotonic()  # no process of S can answer before this
            wait_until(lambda: srv.shard_pids().get(S) not in (None, old), 15,
                       "a new shard %d" % S)
        t_a = wait_until(lambda: wa.ok_after(t_resume), RECOVER_S, "A to work again")
        t_d2 = wait_until(lambda: w2.ok_after(t_resume), RECOVER_S, "D2 to work again")
        t_d3 = w3.ok_after(t_resume)
        if recovery == "cont":
            t_d3 = wait_until(lambda: w3.ok_after(t_resume), RECOVER_S, "D3 to work again")
        else:
            # The session D3 had lived in the killed process: wait for one more
            # of its requests, then see whether it got anything.
            n3 = len(w3.records)
            wait_until(lambda: len(w3.records) > n3 + 2, 10, "D3's requests after the respawn")
            t_d3 = w3.ok_after(t_resume)
        t_end = time.monotonic()
        for w in workers:
            w.stop()

        # ---- what each saw
        lines = ["[coap drill %s] S=%d stopped at 0.00 s, resumed %.2f s, A back %.2f s, "
                 "D2 back %.2f s, D3 back %s" % (
                     recovery, S, t_resume - t_stop, t_a - t_stop, t_d2 - t_stop,
                     "%.2f s" % (t_d3 - t_stop) if t_d3 else "never (session lost)")]
        for w in workers:
            recs = w.between(t_stop, t_end)
            codes = {}
            for r in recs:
                k = coapdev.code_text(r[2]) if r[2] is not None else "none"
                codes[k] = codes.get(k, 0) + 1
            lat = [r[1] - r[0] for r in recs if r[1] is not None and r[2] == code(2, 4)]
            lines.append("  %-14s %3d requests %s; 2.04 max latency %s" % (
                w.name, len(recs), codes, "%.3f s" % max(lat) if lat else "-"))
        print("\n" + "\n".join(lines))

        # ---- the others carried on, within normal time, through the whole stop
        for w in healthy:
            recs = w.between(t_stop, t_a)
            assert len(recs) >= 5, (w.name, recs)
            for t0, t1, c, seq, r in recs:
                assert c == code(2, 4), (w.name, t0 - t_stop, r, "\n".join(lines))
                assert t1 - t0 <= HEALTHY_LATENCY_S, (w.name, t0 - t_stop, t1 - t0,
                                                      "\n".join(lines))
        # ---- A and D2: never 2.04 while S was stopped, 5.03 once judged
        for w in (wa, w2):
            answered_while_stopped = [r for r in w.records
                                      if r[0] >= t_stop and r[1] is not None and r[1] < t_resume]
            assert all(r[2] != code(2, 4) for r in answered_while_stopped), (w.name, lines)
            unavailable = [r for r in w.between(t_stop + JUDGED_S + 0.2, t_resume)
                           if r[2] == code(5, 3)]
            assert unavailable, "%s: no 5.03 while shard %d was stopped\n%s" % (
                w.name, S, "\n".join(lines))
            assert all(r[4].opt(coapdev.MAX_AGE) for r in unavailable)
            # Once judged, the answer is immediate: the front answers it.
            assert all(r[1] - r[0] <= HEALTHY_LATENCY_S for r in unavailable)
        # ---- D3 (terminator S): no answer can come through a stopped terminator
        assert all(r[1] is None or r[1] >= t_resume for r in w3.between(t_stop, t_resume))

        # ---- none of A's 5.03 events was published: A's next event follows
        # only what was answered 2.04 (or never answered, and so perhaps
        # handled by S after its resume).
        refused = {b"%d" % r[3] for r in wa.records if r[2] == code(5, 3)}
        assert dev_a.event("mark", b"after").code == code(2, 4)
        seen = []
        for _ in range(10000):
            m = watch.get(timeout=10)
            if m.payload == b"after":
                break
            seen.append(m.payload)
        assert not refused & set(seen), ("events answered 5.03 were published",
                                         sorted(refused & set(seen)))

        if recovery == "replace" and not t_d3:
            # The lost session: a new handshake (a new proxy) works.
            proxies.remove(px3)
            px3.stop()
            w3.dev.close()
            px3b, _ = proxy_on(srv, d3, lambda t: True)
            proxies.append(px3b)
            dv3b = px3b.device(d3["id"])
            devs.append(dv3b)
            assert dv3b.event("again", b"1").code == code(2, 4)
    finally:
        for w in workers:
            w.stop()
        for dv in devs:
            dv.close()
        for px in proxies:
            px.stop()
        if watch is not None:
            watch.disconnect()
        if recovery == "cont":
            srv.cli("shard", "cont", str(S), check=False)


def test_dtls_devices_of_a_killed_terminator_go_offline(api_server_factory):
    """A DTLS session lives in its terminator's process: when that process
    dies (SIGKILL, then replaced) the session is gone, no down hook runs, and
    the owner (another, healthy shard) must still stop calling the device
    online: presence online false, and a call answered 409 device_offline
    at once rather than retransmitted into a session that no longer exists.
    A new handshake then brings it back."""
    srv = api_server_factory(shards=NSHARDS)
    by = devices_by_owner(srv, lambda b: len(b[1]) >= 1)
    d = by[1][0]
    px, t = proxy_on(srv, d, lambda t: t != 1)
    dev = px.device(d["id"], functions={"f": lambda arg: b"ok"})
    px2 = dev2 = None
    try:
        assert dev.describe().code == code(2, 4)
        p = presence(srv, d["id"])
        assert p["online"] is True and p["protocol"] == "coaps", p
        old = srv.wait_shard_pids()[t]
        srv.cli("shard", "kill", str(t))
        wait_until(lambda: srv.shard_pids().get(t) not in (None, old), 15, "a new shard %d" % t)
        srv.wait_api_healthy()
        # The owner must learn that the session is gone: presence offline
        # within a few seconds of the replacement, and a call refused at once.
        try:
            wait_until(lambda: not presence(srv, d["id"])["online"], 5,
                       "presence online false")
            offline = True
        except AssertionError:
            offline = False
        t0 = time.monotonic()
        r = api(srv, "POST", "/v1/devices/%s/functions/f" % d["id"], json={"arg": ""},
                timeout=60)
        took = time.monotonic() - t0
        print("\n[terminator %d killed] device owned by shard 1: offline within 5 s: %s; "
              "a call answered %d %s after %.1f s" % (t, offline, r.status, r.text[:120], took))
        assert offline, ("still online 5 s after its terminator (shard %d) was replaced; a "
                         "call then: %d %s after %.1f s" % (t, r.status, r.text, took))
        assert r.status == 409 and took < 5, (r.status, r.text, took)
        # A new handshake brings it back.
        px2, _ = proxy_on(srv, d, lambda t: True)
        dev2 = px2.device(d["id"], functions={"f": lambda arg: b"ok"})
        assert dev2.describe().code == code(2, 4)
        r = api(srv, "POST", "/v1/devices/%s/functions/f" % d["id"], json={"arg": ""})
        assert r.status == 200 and r.body["return_value"] == "ok", r.text
    finally:
        dev.close()
        px.stop()
        if dev2 is not None:
            dev2.close()
        if px2 is not None:
            px2.stop()


def test_stalled_single_shard_with_coap_traffic_is_replaced(api_server_factory):
    """`cyan shard stall`: the loop turns and beats but reads nothing. With
    one shard nobody else reads the plain CoAP socket, so the datagrams
    waiting there are work it owes (cy_coap_owed): the supervisor replaces
    it within the watchdog's bound, and the device is answered again."""
    srv = api_server_factory(shards=1, coap_insecure=True, watchdog_timeout=1000,
                             canary_timeout=0)
    d = new_device(srv)
    dev = coapdev.Device(srv.host, srv.coap_port, d["id"])
    w = Worker("stall", dev, victim=True, period=0.1)
    try:
        w.start()
        wait_until(lambda: w.ok_after(0), 10, "a first 2.04")
        old = wait_all_running(srv, nshards=1).rows[0].pid
        t_drill = time.monotonic()
        srv.cli("shard", "stall", "0")
        wait_until(lambda: srv.shard_pids().get(0) not in (None, old), 15, "shard 0 replaced")
        t_new = time.monotonic()
        back = wait_until(lambda: w.ok_after(t_new), 20, "a 2.04 from the new shard")
        print("\n[stall, 1 shard] replaced %.2f s after the drill; answered again %.2f s after"
              % (t_new - t_drill, back - t_new))
        owed = [int(m.group(1)) for m in re.finditer(
            r"owed work has not moved .* (\d+) CoAP datagrams unread", srv.log_tail(20000))]
        assert any(n >= 1 for n in owed), srv.log_tail(4000)
    finally:
        w.stop()
        dev.close()
