#!/bin/bash
# bench/coap_bench.sh: confirmable CoAP event posts per second from many
# devices, cyan against libcoap's coap-server-notls, beside cyan's MQTT
# QoS 1 ingest of the same shape (issue 13, "Benchmark").
#
# Builds cyan and the load generator bench/coap_bench.c (RelWithDebInfo),
# starts cyan (1 shard, coap_insecure, monitor off) and Debian's
# coap-server-notls (libcoap 4.3.1), both pinned to core 0, registers
# 2 x CLIENTS devices through the API (one set for CoAP, one for MQTT), and
# drives from core 1, RUNS rounds, the servers in rotating order each round:
#   cyan_coap     CLIENTS devices, each its own UDP socket, each keeping
#                 WINDOW CON "POST /e/bench?id=<device id>" (16 B) outstanding:
#                 a QoS 1 event, answered 2.04 after it is on disk
#   libcoap       the same requests to coap-server-notls -d 10 (started
#                 afresh for each run): its dynamic resources, so POST
#                 /e/bench is answered 2.04 (the first POST, made before
#                 timing, creates it: 2.01); it keeps nothing and writes
#                 nothing: a bare CoAP stack's bound. With the receive
#                 buffer cyan asks for its own socket (SO_RCVBUF 4 MiB, set
#                 by a small LD_PRELOAD shim at bind(2), built here): with
#                 the kernel's default (208 KiB, about 190 of these
#                 datagrams) 2000 outstanding requests overflow it, and
#                 what is dropped waits 2-3 s for its retransmission
#   cyan_mqtt     CLIENTS other devices over MQTT 3.1.1, each keeping WINDOW
#                 QoS 1 PUBLISHes on devices/<id>/events/bench outstanding:
#                 the same events, PUBACKed after they are on disk
#   libcoap_default  (informative, DEFAULT_DURATION s each round)
#                 coap-server-notls as shipped: the kernel's default buffer
# Each run: WARMUP s of traffic, DURATION s measured, then at most 1 s for
# the last answers. Reported per run (the generator's RESULT line): answers
# per second, round trip p50/p99/p99.9, retransmissions, errors by code,
# the server's CPU over the measured window (its processes, from /proc) and
# the generator's; and the kernel's UDP receive-buffer drops over the run
# (Udp RcvbufErrors of /proc/net/snmp: for the whole machine, so another
# program's drops would count too). The medians of the rounds and the
# ratios go to stdout as a Markdown table; docs/benchmarks.md ("CoAP") is
# written by hand from it.
#
# Part of `make bench` (and alone: `make bench-coap`). About 2.5 minutes.
#
# Environment:
#   RUNS=3 DURATION=10 WARMUP=1     rounds; measured and warm-up seconds per run
#   CLIENTS=2000 WINDOW=1           devices; requests outstanding per device (NSTART)
#   DEFAULT_DURATION=5              the informative libcoap_default run (0: none)
#   SERVER_CORE=0 GEN_CORE=1        taskset cores of the servers and of the generator
#   BUILD=build KEEP=1 (keep the work folder)
#
# Everything it starts is stopped on exit (trap), whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROOT=$PWD

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
CLIENTS=${CLIENTS:-2000}
WINDOW=${WINDOW:-1}
DEFAULT_DURATION=${DEFAULT_DURATION:-5}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
PY=/usr/bin/python3
LIBCOAP=$(command -v coap-server-notls || true)

log() { printf '%s coap-bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "$*"
    exit 1
}

# ---- build -------------------------------------------------------------------------
bench_build coap-bench cyan coap_bench
CYAN=$BUILD/cyan
GEN=$BUILD/coap_bench
[ -n "$LIBCOAP" ] || die "coap-server-notls missing: scripts/deps.sh bench (libcoap3-bin)"
command -v taskset >/dev/null || die "taskset missing (util-linux)"

# ---- work folder, cleanup ----------------------------------------------------------
bench_workdir coap-bench

# A port of 127.0.0.1 free for both TCP and UDP (coap-server-notls takes both).
free_port2() {
    $PY -c '
import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
'
}
udp_drops() { awk '$1=="Udp:" && $2 ~ /^[0-9]/ {print $6}' /proc/net/snmp; }

# ---- cyan, and its devices ----------------------------------------------------------------
P_MQTT=$(free_port2)
P_HTTP=$(free_port2)
P_COAP=$(free_port2)
P_LIBCOAP=$(free_port2)
DATA=$WORK/data
mkdir -p "$DATA"
log "cyan: 1 shard on core $SERVER_CORE, coap :$P_COAP, mqtt :$P_MQTT, http :$P_HTTP; libcoap :$P_LIBCOAP; generator on core $GEN_CORE; work folder $WORK"
taskset -c "$SERVER_CORE" "$CYAN" --data_dir="$DATA" --shards=1 --coap_insecure=true \
    --coap_listen="127.0.0.1:$P_COAP" --coaps_listen= --mqtt_listen="127.0.0.1:$P_MQTT" \
    --http_listen="127.0.0.1:$P_HTTP" --ops_listen= --monitor=false --log_level=warn \
    --sys_interval=0 >>"$WORK/cyan.log" 2>&1 &
SPID[cyan]=$!
for _ in $(seq 1 100); do
    n=$( (pgrep -P "${SPID[cyan]}" 2>/dev/null || true) | wc -l)
    [ "$n" -ge 1 ] && [ -s "$DATA/admin-token" ] && break
    kill -0 "${SPID[cyan]}" 2>/dev/null || break
    sleep 0.1
done
if ! kill -0 "${SPID[cyan]}" 2>/dev/null || ! wait_port "$P_MQTT" || ! wait_port "$P_HTTP"; then
    tail -n 20 "$WORK/cyan.log" >&2 || true
    die "cyan did not start (log above)"
fi
# 2 x CLIENTS devices over one keep-alive connection: "<id> <secret>" lines
$PY - "$P_HTTP" "$DATA/admin-token" "$CLIENTS" "$WORK/coap-ids.txt" "$WORK/mqtt-ids.txt" <<'PY' ||
import http.client, json, sys, time
port, token, n = int(sys.argv[1]), open(sys.argv[2]).read().strip(), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
t0 = time.time()
for k, path in enumerate(sys.argv[4:6]):
    with open(path, "w") as f:
        for i in range(n):
            c.request("POST", "/v1/devices", json.dumps({"name": "coapbench-%d-%d" % (k, i)}),
                      {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
            r = c.getresponse()
            b = r.read()
            if r.status != 201:
                sys.exit("POST /v1/devices: HTTP %d %s" % (r.status, b[:200]))
            d = json.loads(b)
            f.write("%s %s\n" % (d["id"], d["secret"]))
print("%d devices in %.1f s" % (2 * n, time.time() - t0), file=sys.stderr)
PY
    die "could not register the devices"
sleep 0.3

# ---- libcoap -----------------------------------------------------------------------------
# A fresh coap-server-notls for every run: it keeps a session per source
# address for 300 s, and its cost per request grows with the sessions it
# holds, so the sessions of the runs before would slow the next.
cat >"$WORK/rcvbuf.c" <<'C'
/* LD_PRELOAD shim: a UDP socket gets SO_RCVBUF RCVBUF before its bind(2). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>
int bind(int fd, const struct sockaddr *a, socklen_t l)
{
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    int type = 0, size = RCVBUF;
    socklen_t tl = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_DGRAM)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    return real(fd, a, l);
}
C
cc -O2 -shared -fPIC -DRCVBUF=$((4 << 20)) -o "$WORK/rcvbuf.so" "$WORK/rcvbuf.c" -ldl ||
    die "could not build the SO_RCVBUF shim"
# start_libcoap [default]: with the 4 MiB buffer, or as shipped
start_libcoap() {
    local pre=LD_PRELOAD=$WORK/rcvbuf.so
    [ "${1:-}" = default ] && pre=COAP_BENCH_SHIM=none
    env "$pre" taskset -c "$SERVER_CORE" "$LIBCOAP" -A 127.0.0.1 -p "$P_LIBCOAP" -d 10 -v 0 \
        >>"$WORK/libcoap.log" 2>&1 &
    SPID[libcoap]=$!
    wait_port "$P_LIBCOAP" || die "coap-server-notls did not open port $P_LIBCOAP"
    # its dynamic resource: the first POST creates it (2.01), the next are 2.04
    coap-client-notls -m post -e 0 "coap://127.0.0.1:$P_LIBCOAP/e/bench" >/dev/null 2>&1 ||
        die "coap-client-notls could not create /e/bench on coap-server-notls"
}

# ---- runs ---------------------------------------------------------------------------------
# gen NAME ARGS...: one generator run on the generator core, its RESULT
# line (with the round and the UDP drops) appended to $RESULTS
ROUND=0
gen() {
    local name=$1 out rc=0 d0 d1
    shift
    d0=$(udp_drops)
    out=$(taskset -c "$GEN_CORE" "$GEN" --server "$name" --warmup "$WARMUP" --drain 1 \
        --clients "$CLIENTS" --window "$WINDOW" "$@" 2>>"$WORK/gen.log") || rc=$?
    d1=$(udp_drops)
    if [ "$rc" != 0 ] || ! printf '%s\n' "$out" | grep -q '^RESULT'; then
        tail -n 5 "$WORK/gen.log" >&2 || true
        log "run failed: $name (exit $rc)"
        echo "FAIL round=$ROUND server=$name rc=$rc" >>"$RESULTS"
        return 0
    fi
    out=$(printf '%s\n' "$out" | grep '^RESULT' |
        sed "s/^RESULT /RESULT round=$ROUND udp_rcvbuf_drops=$((d1 - d0)) /")
    printf '%s\n' "$out" >>"$RESULTS"
    printf '%s\n' "$out" | awk '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        printf "    %-13s %7s req/s  p50 %6.1f ms  p99 %7.1f ms  retx %s  errors %s  server %.2f core, %s us/req  gen %.2f  udp drops %s\n",
            f["server"], f["value"], f["p50_us"] / 1000, f["p99_us"] / 1000, f["retx"], f["errors"],
            f["server_core"], f["server_us_per_req"], f["gen_busy"], f["udp_rcvbuf_drops"] }' >&2
}
run_one() {
    case $1 in
    cyan_coap)
        # message ids apart from the last round's: cyan answers an id it saw
        # within EXCHANGE_LIFETIME (247 s) with its saved answer
        gen cyan_coap --proto coap --port "$P_COAP" --ids "$WORK/coap-ids.txt" --path e/bench \
            --mid_base $((ROUND * 8192)) --duration "$DURATION" --server_pid "${SPID[cyan]}"
        ;;
    libcoap)
        start_libcoap
        gen libcoap --proto coap --port "$P_LIBCOAP" --ids "$WORK/coap-ids.txt" --path e/bench \
            --duration "$DURATION" --server_pid "${SPID[libcoap]}"
        stop_server libcoap
        ;;
    cyan_mqtt)
        gen cyan_mqtt --proto mqtt --port "$P_MQTT" --ids "$WORK/mqtt-ids.txt" --path e/bench \
            --duration "$DURATION" --server_pid "${SPID[cyan]}"
        ;;
    libcoap_default)
        start_libcoap default
        gen libcoap_default --proto coap --port "$P_LIBCOAP" --ids "$WORK/coap-ids.txt" \
            --path e/bench --duration "$DEFAULT_DURATION" --server_pid "${SPID[libcoap]}"
        stop_server libcoap
        ;;
    esac
}
SERVERS=(cyan_coap libcoap cyan_mqtt)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$(date +%s)
for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
    log "round $ROUND/$RUNS: $CLIENTS devices, $WINDOW outstanding each, ${DURATION}s measured after ${WARMUP}s"
    for ((k = 0; k < ${#SERVERS[@]}; k++)); do
        run_one "${SERVERS[$(((k + ROUND - 1) % ${#SERVERS[@]}))]}"
    done
    [ "$DEFAULT_DURATION" != 0 ] && run_one libcoap_default
done
T1=$(date +%s)
for s in "${!SPID[@]}"; do stop_server "$s"; done

# ---- the table ---------------------------------------------------------------------------
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$((T1 - T0))
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# (coap-server-notls -h prints its version and exits 1)
LIBCOAP_VERSION=$({ "$LIBCOAP" -h 2>&1 || true; } | sed -n 's/^coap-server-notls \(v[0-9.]*\).*/\1/p' | head -n 1)
export RESULTS RUNS DURATION WARMUP CLIENTS WINDOW DEFAULT_DURATION LOAD0 LOAD1 ELAPSED \
    DATE COMMIT LIBCOAP_VERSION
$PY - <<'PY'
import os, statistics as st

rows = {}
fails = 0
for line in open(os.environ["RESULTS"]):
    if line.startswith("FAIL"):
        fails += 1
        continue
    if not line.startswith("RESULT"):
        continue
    f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    rows.setdefault(f["server"], []).append(f)


def med(s, key):
    v = [float(r[key]) for r in rows.get(s, [])]
    return st.median(v) if v else None


def spread(s, key):
    v = [float(r[key]) for r in rows.get(s, [])]
    return (min(v), max(v)) if v else (0, 0)


def fmt(x, d=0):
    if x is None:
        return "-"
    return f"{x:,.{d}f}"


cols = [("cyan_coap", "cyan, CoAP CON"), ("libcoap", "coap-server-notls, 4 MiB buffer"),
        ("cyan_mqtt", "cyan, MQTT QoS 1")]
W = os.environ
print()
print(f"Run of {W['DATE']} (commit {W['COMMIT']}): median of {W['RUNS']} runs, {W['DURATION']} s "
      f"measured after {W['WARMUP']} s; {W['CLIENTS']} devices, {W['WINDOW']} request outstanding "
      f"each; load average {W['LOAD0']} at the start, {W['LOAD1']} at the end; "
      f"{W['ELAPSED']} s of runs.")
print()
print("| | " + " | ".join(n for _, n in cols) + " | cyan CoAP / libcoap | cyan CoAP / MQTT |")
print("|---|" + "---:|" * (len(cols) + 2))


def line(label, key, d=0, scale=1.0, ratio=True, lower=False):
    vals = [med(s, key) for s, _ in cols]
    vals = [None if v is None else v / scale for v in vals]
    cells = [fmt(v, d) for v in vals]
    r1 = r2 = ""
    if ratio and vals[0] and vals[1]:
        r1 = f"{vals[0] / vals[1]:.2f}"
    if ratio and vals[0] and vals[2]:
        r2 = f"{vals[0] / vals[2]:.2f}"
    print(f"| {label} | " + " | ".join(cells) + f" | {r1} | {r2} |")


line("requests answered 2.xx per second", "value")
line("round trip p50 (ms, lower is better)", "p50_us", 1, 1000)
line("round trip p99 (ms, lower is better)", "p99_us", 1, 1000)
line("round trip p99.9 (ms, lower is better)", "p999_us", 1, 1000)
line("retransmissions in the measured window", "retx", 0, 1, False)
line("errors (non-2.xx answers)", "errors", 0, 1, False)
line("UDP receive-buffer drops over the run (whole machine)", "udp_rcvbuf_drops", 0, 1, False)
line("server CPU over the window (share of its core)", "server_core", 2, 1, False)
line("server CPU per request (µs, lower is better)", "server_us_per_req", 2)
line("generator CPU (share of its core)", "gen_busy", 2, 1, False)
print()
for s, n in cols + [("libcoap_default", "coap-server-notls as shipped (%s s runs)"
                     % W["DEFAULT_DURATION"])]:
    if s not in rows:
        continue
    lo, hi = spread(s, "value")
    r = rows[s]
    print(f"- {n}: " + ", ".join(f"{float(x['value']):,.0f}" for x in r) + f" req/s per run "
          f"(spread {100 * (hi - lo) / hi if hi else 0:.0f}% of the best); retransmissions "
          + ", ".join(x["retx"] for x in r) + "; server CPU "
          + ", ".join(x["server_core"] for x in r) + " of a core, "
          + ", ".join(x["server_us_per_req"] for x in r) + " µs/request"
          + (f"; p50 {med(s, 'p50_us') / 1000:.1f} ms, p99 {med(s, 'p99_us') / 1000:.1f} ms; "
             "UDP drops " + ", ".join(x["udp_rcvbuf_drops"] for x in r)
             if s == "libcoap_default" else "")
          + ".")
print(f"- coap-server-notls {W['LIBCOAP_VERSION']} (Debian libcoap3-bin).")
if fails:
    print(f"- {fails} run(s) failed (see the log above).")
PY
