#!/usr/bin/python3
"""bench/table.py: the table of medians from bench/run.sh's results.

Reads the RESULT lines run.sh collected ($RESULTS), takes the median of each
(workload, unit, server), prints the table and, unless DOC=0, writes it into
docs/benchmarks.md between the bench:begin and bench:end markers (creating
the file with a skeleton if it does not exist). Text outside the markers is
left alone: that is where the hand-written explanation lives.
"""
import os
import statistics
import sys
from collections import defaultdict

BEGIN = "<!-- bench:begin (written by bench/run.sh; edit outside these markers) -->"
END = "<!-- bench:end -->"

env = os.environ
results = env["RESULTS"]
lat_rate = env.get("LAT_RATE", "?")
tool = {"perf": "perf stat", "strace": "strace -c"}.get(env.get("COUNT_TOOL", ""), "?")

# (workload, unit, label, direction): direction +1 higher is better, -1 lower
ROWS = [
    ("o2o_q0_16", "msg/s", "one-to-one QoS 0, 16 B (msg/s)", 1),
    ("o2o_q0_16_single", "msg/s", "one-to-one QoS 0, 16 B, one message per write (msg/s)", 1),
    ("o2o_q0_1k", "msg/s", "one-to-one QoS 0, 1 KiB (msg/s)", 1),
    ("o2o_q1_16", "msg/s", "one-to-one QoS 1, 16 B (msg/s)", 1),
    ("fanout_100", "deliveries/s", "fan-out 1→100 (deliveries/s)", 1),
    ("fanout_1000", "deliveries/s", "fan-out 1→1000 (deliveries/s)", 1),
    ("fanin_1000", "msg/s", "fan-in 1000→1 (msg/s)", 1),
    ("latency", "us_p50", f"latency p50 at {lat_rate} msg/s (µs, lower is better)", -1),
    ("latency", "us_p99", f"latency p99 at {lat_rate} msg/s (µs, lower is better)", -1),
    ("latency", "us_p999", f"latency p99.9 at {lat_rate} msg/s (µs, lower is better)", -1),
    ("idle", "bytes/conn", f"memory per idle connection, {env.get('IDLE_CONNS', '?')} conns "
     "(bytes PSS, lower is better)", -1),
    ("storm", "conn/s", "connect storm, 64 at a time (connections/s)", 1),
    ("sys_batched", "syscalls/msg", f"syscalls per routed message, batched ({tool}; lower is better)", -1),
    ("sys_paced", "syscalls/msg", f"syscalls per routed message, paced 5,000 msg/s ({tool}; lower is better)", -1),
    ("sys_strace", "syscalls/msg", "syscalls per routed message, paced 500 msg/s (strace -c; lower is better)", -1),
    ("o2o_q0_16_tls", "msg/s", "TLS: one-to-one QoS 0, 16 B (msg/s)", 1),
    ("storm_tls", "conn/s", "TLS: connect storm, full handshakes, 64 at a time (connections/s)", 1),
]
TLS_ROWS = ("o2o_q0_16_tls", "storm_tls")
SERVERS = ["cyan1", "cyan2", "mosq", "cyan2u", "cyan1b"]


def parse(line):
    f = {}
    for tok in line.split()[1:]:
        if "=" in tok:
            k, v = tok.split("=", 1)
            f[k] = v
    return f


vals = defaultdict(list)      # (workload, unit, server) -> [value]
lost = defaultdict(int)       # (workload, server) -> messages lost over all runs
busy = defaultdict(list)      # (workload, server) -> [server CPU s / wall s]
gbusy = defaultdict(list)     # (workload, server) -> [generator CPU s / wall s]
percost = defaultdict(list)   # (workload, server) -> [server CPU ns per message, us per connection]
fails = []
crashes = []
notes_run = []                # NOTE lines: what run.sh skipped and why
negotiated = {}               # server -> "TLSv1.3 TLS_AES_256_GCM_SHA384, X25519"
tls_conns = defaultdict(int)  # "handshakes", "resumed": over every TLS run

with open(results) as fh:
    for line in fh:
        if line.startswith("RESULT "):
            f = parse(line)
            try:
                v = float(f["value"])
            except (KeyError, ValueError):
                continue
            key = (f.get("workload"), f.get("unit"), f.get("server"))
            vals[key].append(v)
            if "gen_busy" in f:
                gbusy[(f["workload"], f["server"])].append(float(f["gen_busy"]))
            # the server's CPU while the generator measured (it reads /proc itself)
            if f.get("unit") in ("msg/s", "deliveries/s", "conn/s"):
                k = (f["workload"], f["server"])
                for field in ("server_ns_per_msg", "server_us_per_conn"):
                    if field in f:
                        percost[k].append(float(f[field]))
                if "server_busy" in f:
                    busy[k].append(float(f["server_busy"]))
            if f.get("unit") in ("msg/s", "deliveries/s", "us_p50", "conn/s"):
                lost[(f["workload"], f["server"])] += int(f.get("lost", "0"))
            if f.get("workload") in TLS_ROWS and "tls" in f:
                if f["server"] not in negotiated:
                    negotiated[f["server"]] = (f"{f['tls']} {f.get('cipher', '?')}, "
                                               f"key exchange {f.get('group', '?')}")
                for k in ("handshakes", "resumed"):
                    tls_conns[k] += int(f.get(k, "0"))
        elif line.startswith("FAIL "):
            fails.append(line.strip())
        elif line.startswith("CRASH "):
            crashes.append(line.strip())
        elif line.startswith("NOTE "):
            notes_run.append(line[5:].strip())


def med(w, u, s):
    v = vals.get((w, u, s))
    return statistics.median(v) if v else None


SATURATED = 0.9
saturated = []


def gen_saturated(w, s):
    g = gbusy.get((w, s))
    return bool(g) and statistics.median(g) >= SATURATED


def cell(w, u, s):
    v = med(w, u, s)
    text = fmt(v, u)
    if v is not None and u in ("msg/s", "deliveries/s", "conn/s") and gen_saturated(w, s):
        saturated.append((w, s))
        return "≥ " + text
    return text


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "syscalls/msg":
        return f"{v:.2f}"
    if unit.startswith("us_"):
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    return f"{v:,.0f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    r = a / b
    if r >= 10:
        return f"{r:.1f}"
    if r >= 0.1:
        return f"{r:.2f}"
    return f"{r:.2g}"


have_u = any(k[2] == "cyan2u" for k in vals)
have_b = any(k[2] == "cyan1b" for k in vals)
busy_poll = env.get("BUSY_POLL", "?")
lines = []
hdr = "| workload | cyan 1 shard | cyan 2 shards | mosquitto | cyan 1 / mosquitto | cyan 2 / mosquitto |"
sep = "|---|---:|---:|---:|---:|---:|"
if have_u:
    hdr += " cyan 2 shards, 2 cores † |"
    sep += "---:|"
if have_b:
    hdr += f" cyan 1 shard, busy_poll_us={busy_poll} ‡ | ‡ / mosquitto |"
    sep += "---:|---:|"
lines += [hdr, sep]
for w, u, label, _d in ROWS:
    c1, c2, m = med(w, u, "cyan1"), med(w, u, "cyan2"), med(w, u, "mosq")
    row = (f"| {label} | {cell(w, u, 'cyan1')} | {cell(w, u, 'cyan2')} | {cell(w, u, 'mosq')} "
           f"| {ratio(c1, m)} | {ratio(c2, m)} |")
    if have_u:
        cu = med(w, u, "cyan2u")
        row += f" {cell(w, u, 'cyan2u') if cu is not None else ''} |"
    if have_b:
        cb = med(w, u, "cyan1b")
        row += (f" {cell(w, u, 'cyan1b')} | {ratio(cb, m)} |" if cb is not None else " | |")
    lines.append(row)
table = "\n".join(lines)

# server CPU use during the throughput runs, and CPU per unit of work
cpu_lines = ["| workload | cyan 1 shard | cyan 2 shards | mosquitto | CPU per unit: cyan 1 shard "
             "| cyan 2 shards | mosquitto |", "|---|---:|---:|---:|---:|---:|---:|"]
for w, u, label, _d in ROWS[:7] + [r for r in ROWS if r[0] in ("storm",) + TLS_ROWS]:
    cells = []
    for s in ("cyan1", "cyan2", "mosq"):
        b = busy.get((w, s))
        cells.append(f"{statistics.median(b):.2f}" if b else "n/a")
    unit = "µs/conn" if w.startswith("storm") else "ns/msg"
    for s in ("cyan1", "cyan2", "mosq"):
        c = percost.get((w, s))
        cells.append(f"{statistics.median(c):,.0f} {unit}" if c else "n/a")
    cpu_lines.append(f"| {label.split(' (')[0]} | " + " | ".join(cells) + " |")
cpu_table = "\n".join(cpu_lines)

notes = []
if saturated:
    notes.append("- ≥: the load generator used over 90% of its core (median), so it, not the server, "
                 "set the pace; the server's figure is a lower bound: "
                 + ", ".join(f"{w} on {s}" for w, s in saturated) + ".")
for (w, s), n in sorted(lost.items()):
    if n:
        notes.append(f"- {w} on {s}: {n:,} messages not delivered over all runs "
                     "(QoS 0 dropped by the server; throughput counts only delivered messages).")
for f in fails:
    notes.append(f"- failed run: `{f}`")
for c in crashes:
    notes.append(f"- server crashed and was restarted: `{c}`")
for n in notes_run:
    notes.append(f"- {n}.")

NAMES = {"cyan1": "cyan 1 shard", "cyan2": "cyan 2 shards", "mosq": "mosquitto"}
tls_line = ""
if negotiated or any(k[0] in TLS_ROWS for k in vals):
    got = "; ".join(f"{NAMES.get(s, s)} {negotiated[s]}" for s in ("cyan1", "cyan2", "mosq")
                    if s in negotiated)
    tls_line = ("\n- TLS rows: MQTT over TLS to each server's TLS listener (mosquitto: a `listener` with "
                "`certfile` and `keyfile`; cyan: `--mqtts_listen` with `--tls_cert` and `--tls_key`, beside "
                "its plain listener), every server presenting the same certificate for 127.0.0.1 (EC P-256, "
                "ECDSA with SHA-256, from a CA made for the run), which the generator verifies (OpenSSL, "
                "TLS 1.2 or 1.3, its defaults otherwise); settings and credentials as in the plain rows. "
                "One-to-one: as the plain row, over TLS. Storm: every connection a full handshake (the "
                "generator sends no session ticket and keeps no session), then CONNECT, CONNACK, "
                f"DISCONNECT, server close; {tls_conns['handshakes']:,} handshakes in all, "
                f"{tls_conns['resumed']:,} resumed. Negotiated: "
                + (got or "nothing (no TLS run succeeded)") + ".")

runs_lines = []
for w, u, label, _d in ROWS:
    for s in SERVERS:
        v = vals.get((w, u, s))
        if v:
            runs_lines.append(f"{w:12s} {u:13s} {s:7s} " + " ".join(fmt(x, u) for x in v))

strace_parts = []
for s, name in (("cyan1", "cyan, 1 shard"), ("cyan2", "cyan, 2 shards"), ("mosq", "mosquitto")):
    path = os.path.join(env.get("WORK", ""), f"strace-{s}.txt")
    if os.path.exists(path):
        with open(path) as fh:
            body = [ln.rstrip() for ln in fh if ln.strip()]
        head = [ln for ln in body if not ln.startswith("-")]
        total = [ln for ln in body if ln.endswith(" total")]
        strace_parts.append(f"{name}:\n" + "\n".join(head[:9] + total))
strace_block = ""
if strace_parts:
    strace_block = ("\n<details><summary>strace -c of each server, 1,000 messages at 500 msg/s"
                    "</summary>\n\n```\n" + "\n\n".join(strace_parts) + "\n```\n</details>")

quick = env.get("QUICK") == "1"
dirty = env.get("DIRTY", "0") != "0"
block = f"""{BEGIN}
Run of {env.get('DATE')}{' (QUICK smoke run: not for comparison)' if quick else ''}: median of {env.get('RUNS')} runs per cell, {env.get('DURATION')} s measured per run after {env.get('WARMUP')} s of warm-up; `make bench` took {int(env.get('ELAPSED', '0')) // 60} min {int(env.get('ELAPSED', '0')) % 60} s.

{table}

{"† cyan with 2 shards allowed on both cores (taskset 0,1) while the generator also runs on core 1: not like-for-like, shown only to see what a second core does." if have_u else ""}
{f"‡ cyan 1 shard with `busy_poll_us = {busy_poll}` (latency rows only): after a pass that did work the shard polls without sleeping for {busy_poll} µs, so it pays no wake-up from idle for a message that follows within it, and spins its core while traffic flows (server CPU in its RESULT lines); mosquitto has no such setting. See docs/operations.md, Latency and busy polling." if have_b else ""}

- Machine: {env.get('NPROC')} cores, {env.get('CPU_MODEL')}, Linux {env.get('KERNEL')}; load average at the end {env.get('LOADAVG')}.
- Versions: {env.get('CYAN_VERSION')} (commit {env.get('COMMIT')}{', with uncommitted changes in src/' if dirty else ''}, RelWithDebInfo), {env.get('MOSQ_VERSION')} (Debian package).
- Pinning: every server on core 0 (`taskset -c 0`; cyan's shards inherit the supervisor's affinity), the load generator on core 1.
- cyan: `--shards=1` or `--shards=2 --log_level=warn --sys_interval=0 --isolate_devices=false --http_listen=` (a plain broker like mosquitto: every connection uses the one bench device with its own client id and topics, which device isolation would refuse; the HTTP API off, `make bench-api` measures it), other settings default (max_inflight 32, max_queued 1000, store_sync normal; clean sessions, so nothing touches the disk). Clients authenticate as a device (username = device id, password = secret), the production path; mosquitto checks the same username and password against a `password_file` written by `mosquitto_passwd` (`allow_anonymous false`): both servers check a password at every CONNECT, each with its own hash (cyan HMAC-SHA256 of a random secret, mosquitto its default PBKDF2-SHA512).
- mosquitto: `persistence false`, `max_queued_messages 1000`, `max_inflight_messages 32`, logging of errors and warnings only. cyan sets TCP_NODELAY on client sockets; mosquitto only with `set_tcp_nodelay true`, which costs it about a quarter of its throughput here but without which its latency is milliseconds (Nagle's algorithm against delayed ACKs). So mosquitto gets its better setting for each figure: the default for throughput, storm, memory and syscalls, `set_tcp_nodelay true` for latency.
- Load: MQTT 3.1.1, clean sessions, {env.get('PAIRS')} publisher→subscriber pairs on `bench/<i>` for one-to-one, with client ids chosen so that on cyan with 2 shards publishers and subscribers are spread evenly over the shards and half of the pairs cross shards (as devices placed at random would); every payload carries its send time (CLOCK_MONOTONIC ns), counted where the subscriber receives it. Publishers write up to 64 KiB of PUBLISHes per write(2), with at most a window of messages sent but not yet delivered (one-to-one: 64 KiB worth; fan-out 1→100: 64 messages; 1→1000: 16; fan-in: 16 per publisher) and at QoS 1 at most 32 without PUBACK. Subscribers read 64 KiB at a time.
- Latency: {env.get('PAIRS')} pairs at {lat_rate} msg/s in total, each message its own write, timed from the publisher's write to the subscriber's read. The rate is half of mosquitto's maximum in the same shape (one-to-one QoS 0, one message per write, with set_tcp_nodelay): {float(env.get('MOSQ_MAX', '0')):,.0f} msg/s, median of {env.get('STRACE_RUNS')} runs in this run.
- Idle memory: PSS (`/proc/<pid>/smaps_rollup`) of every server process (cyan: supervisor and shards) before and after {env.get('IDLE_CONNS')} connections (keepalive 3600 s), over the count, on a freshly started server.
- Connect storm: 64 concurrent clients, each TCP connect, CONNECT, CONNACK, DISCONNECT, server close; counted per second.{tls_line}
- Syscalls: every system call of every server process (cyan: supervisor and shards) over the messages delivered, while {env.get('PAIRS')} pairs route 200,000 messages in batches (up to 256 per write), or 10,000 paced at 5,000 msg/s (each alone), counted with {tool} (median of {env.get('STRACE_RUNS')} runs){"; perf stat counts the raw_syscalls:sys_enter tracepoint without slowing the server" if tool == "perf stat" else ""}. Once more with `strace -c -f` on 1,000 messages at 500 msg/s (strace stops the server at every call, so it only runs on a load it cannot distort); its breakdown is below.

Server CPU while measuring (user and system time of every server process, read from `/proc` by the generator at the start and end of the measured seconds): the share of core 0 used (1.00 = all of it), and CPU time per delivered message (per completed connection for the storm). Where a server is well below 1.00, the generator's window or its own core set the pace, and CPU per unit compares the servers better than the rate does. (Kernel network work done in softirq context is not always charged to the process that caused it, so these are approximate.)

{cpu_table}

{chr(10).join(notes) if notes else 'No message was lost in any run.'}

<details><summary>Every run</summary>

```
{chr(10).join(runs_lines)}
```
</details>
{strace_block}
{END}"""

print()
print(table)
print()
if notes:
    print("\n".join(notes))

if env.get("DOC", "1") == "1":
    path = env.get("DOC_PATH") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                               "docs", "benchmarks.md")
    path = os.path.normpath(path)
    if os.path.exists(path):
        with open(path) as fh:
            doc = fh.read()
    else:
        doc = ("# Benchmarks: cyan and mosquitto side by side\n\n"
               "`make bench` (or `bench/run.sh`) produces the table below.\n\n"
               f"{BEGIN}\n{END}\n")
    if BEGIN in doc and END in doc:
        a = doc.index(BEGIN)
        b = doc.index(END) + len(END)
        doc = doc[:a] + block + doc[b:]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as fh:
        fh.write(doc)
    print(f"wrote {path}", file=sys.stderr)
