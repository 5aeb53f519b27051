#!/bin/bash
# bench/fleet_bench.sh: a fleet of N idle devices (default 150,000) on one
# cyan node, and the same generator against mosquitto (issue 16, "150k
# connected devices on one node").
#
# Builds cyan and bench/fleet_bench.c (RelWithDebInfo), then four runs:
#   cyan        N devices on SHARDS shards (default: one per 15,000 devices,
#               so that each shard stays under the 20,000 descriptors one
#               process may hold here): the fleet connects, is measured
#               quiet (SETTLE s), keeps alive for HOLD s, and then cyan is
#               restarted (SIGTERM, started again on the same data folder)
#               and the time for the whole fleet to come back is taken
#   mosq-limit  mosquitto (one process) with the same N devices: it stops at
#               its descriptor limit (ulimit -n); the generator shows where
#               and what it saw there (refused, reset, timeouts), and its
#               memory per connection up to there (no hold: the devices it
#               refused keep retrying, which is not keep-alive traffic)
#   mosq        mosquitto with M devices (what it can hold: its limit less
#               1,000), with the keep-alive hold
#   cyan-m      cyan with the same M devices (SHARDS_M shards): the
#               like-for-like ratios
# Both servers run anonymous (cyan: allow_anonymous=true; mosquitto:
# allow_anonymous true), no persistence of sessions (clean sessions), no
# TLS. cyan's per-address connection rate limit is off
# (max_connect_rate_per_address=0: the generator's 16 source addresses each
# open N/16 connections in seconds) and max_connections is raised to
# N + 10%. Anonymous clients are not registered devices: no presence
# records and no status events (a registered device adds about 190 B of
# memory: docs/benchmarks.md). Readiness:
# cyan when `cyan status --json` says every shard accepts; mosquitto when its
# port accepts. Servers and generator are not pinned (2 cores, shared): the
# figures are indicative; the generator is on the same machine.
#
# System limits: the script checks fs.file-max (both ends of every
# connection are on this machine: 2 N descriptors) and each shard's share
# against ulimit -Hn, and, as root, raises net.netfilter.nf_conntrack_max to
# at least 4 N for the run and restores it at exit (if conntrack tracks
# loopback, each connection is an entry, and a restart leaves N of them in
# TIME_WAIT for 2 minutes; on the machine of docs/benchmarks.md it did not:
# nf_conntrack_count stayed 0). The generator's own limits: see
# bench/fleet_bench.c (source addresses, processes).
#
# Part of `make bench` (and alone: `make bench-fleet`); about 6 minutes
# with the defaults (QUICK=1: 2). Environment:
#   N=150000        devices
#   QUICK=1         N=20000, KEEPALIVE=10, HOLD=10 (a couple of minutes)
#   KEEPALIVE=60    seconds between a device's PINGREQs (HOLD defaults to it)
#   SERVERS="cyan mosq-limit mosq cyan-m"   which runs
#   M=              the like-for-like fleet (default: ulimit -n - 1000, at most N)
#   SETTLE=         quiet seconds before the hold (default KEEPALIVE/6, at least 2)
#   RESTART=1       0: no restart of cyan (HOLD=0: no keep-alive hold)
#   SHARDS=         cyan's shard count (default ceil(N/15000))
#   BUILD=build KEEP=1 (keep the work folder) NICE=5 (nice of everything)
#
# Everything it starts is stopped on exit (trap), whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROOT=$PWD

if [ "${QUICK:-0}" = 1 ]; then
    N=${N:-20000}
    KEEPALIVE=${KEEPALIVE:-10}
fi
N=${N:-150000}
KEEPALIVE=${KEEPALIVE:-60}
HOLD=${HOLD:-$KEEPALIVE}
SETTLE=${SETTLE:-$((KEEPALIVE / 6 > 2 ? KEEPALIVE / 6 : 2))}
SERVERS=${SERVERS:-cyan mosq-limit mosq cyan-m}
RESTART=${RESTART:-1}
SHARDS=${SHARDS:-$(((N + 14999) / 15000))}
# M: the fleet mosquitto can hold (its descriptor limit, less a margin), where
# the two are compared like for like
M=${M:-$(($(ulimit -n) - 1000 < N ? $(ulimit -n) - 1000 : N))}
SHARDS_M=${SHARDS_M:-$(((M + 14999) / 15000))}
NICE=${NICE:-5}
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
MOSQ=/usr/sbin/mosquitto

log() { printf '%s fleet-bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "$*"
    exit 1
}

bench_build fleet-bench cyan fleet_bench
CYAN=$BUILD/cyan
GEN=$BUILD/fleet_bench
[ -x "$MOSQ" ] || die "mosquitto not installed ($MOSQ); run scripts/deps.sh bench"

bench_workdir fleet-bench
CT_OLD=""
bench_on_exit() {
    # cyan is started detached (restart.sh starts its successor): by its pid file
    stop_cyan
    if [ -n "$CT_OLD" ]; then
        echo "$CT_OLD" >/proc/sys/net/netfilter/nf_conntrack_max && log "nf_conntrack_max restored to $CT_OLD"
    fi
}

# ---- system limits ---------------------------------------------------------------------
HARD=$(ulimit -Hn)
log "descriptors per process: $HARD (ulimit -Hn); file-max $(cat /proc/sys/fs/file-max)"
[ "$(cat /proc/sys/fs/file-max)" -gt $((3 * N)) ] || die "fs.file-max under 3 N: raise it (sysctl fs.file-max)"
[ $((N / SHARDS + 500)) -lt "$HARD" ] || die "$SHARDS shards hold $((N / SHARDS)) devices each: over $HARD descriptors; raise SHARDS"
if [ -r /proc/sys/net/netfilter/nf_conntrack_max ]; then
    ct=$(cat /proc/sys/net/netfilter/nf_conntrack_max)
    if [ "$ct" -lt $((4 * N)) ]; then
        if [ "$(id -u)" = 0 ]; then
            CT_OLD=$ct
            echo $((4 * N)) >/proc/sys/net/netfilter/nf_conntrack_max
            log "nf_conntrack_max $ct -> $((4 * N)) for this run (restored at exit)"
        else
            log "warning: nf_conntrack_max $ct < 4 N and not root: a loaded conntrack may drop connections"
        fi
    fi
fi

PORT_MOSQ=$(free_port)

cyan_accepting() {
    "$CYAN" status --json --data_dir="$1" 2>/dev/null | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["running"] and d["shards"] and all(s["accepting"] for s in d["shards"]) else 1)' 2>/dev/null
}

# The start and the restart of cyan, scripts of their own (one pair per
# run, in WORK/NAME/): the generator runs restart.sh (--restart_cmd) and
# times the lines it prints. cyan is started detached (its pid in
# cyan.pid), so that a stopped one is gone, not a zombie of this shell.
CYAN_RUN=""
cyan_scripts() { # NAME SHARDS DEVICES
    local d=$WORK/$1 port
    port=$(free_port)
    mkdir -p "$d/data"
    cat >"$d/start.sh" <<EOF
#!/bin/bash
# start cyan detached on $d/data; its pid into $d/cyan.pid
( nice -n $NICE "$CYAN" --data_dir="$d/data" --mqtt_listen=127.0.0.1:$port --shards=$2 \\
    --allow_anonymous=true --max_connections=$(($3 + $3 / 10 + 100)) --max_connect_rate_per_address=0 \\
    --http_listen= --ops_listen= --coap_listen= --coaps_listen= --log_level=warn --sys_interval=0 \\
    >>"$d/cyan.log" 2>&1 </dev/null & echo \$! >"$d/cyan.pid" )
EOF
    cat >"$d/restart.sh" <<EOF
#!/bin/bash
# SIGTERM to cyan, wait until it is gone, start it again on the same data;
# prints "stopped", "accepting" and "pid N" as they happen
p=\$(cat "$d/cyan.pid")
kill -TERM "\$p"
while kill -0 "\$p" 2>/dev/null; do sleep 0.01; done
echo stopped
"$d/start.sh"
for i in \$(seq 1 3000); do
    "$CYAN" status --json --data_dir="$d/data" 2>/dev/null | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["running"] and d["shards"] and all(s["accepting"] for s in d["shards"]) else 1)' 2>/dev/null && break
    sleep 0.02
done
echo accepting
echo "pid \$(cat "$d/cyan.pid")"
EOF
    chmod +x "$d/start.sh" "$d/restart.sh"
    echo "$port"
}
stop_cyan() {
    local p
    [ -n "$CYAN_RUN" ] && [ -s "$WORK/$CYAN_RUN/cyan.pid" ] || return 0
    p=$(cat "$WORK/$CYAN_RUN/cyan.pid")
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 200); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$p" 2>/dev/null || true
    CYAN_RUN=""
}

cat >"$WORK/mosquitto.conf" <<EOF
listener $PORT_MOSQ 127.0.0.1
allow_anonymous true
persistence false
log_type error
log_type warning
EOF
[ "$(id -u)" = 0 ] && echo "user root" >>"$WORK/mosquitto.conf"

run_gen() { # NAME DEVICES ARGS...
    local s=$1 n=$2 rc=0
    shift 2
    nice -n "$NICE" "$GEN" --server "$s" --conns "$n" --keepalive "$KEEPALIVE" --hold "$HOLD" \
        --settle "$SETTLE" "$@" >>"$RESULTS" 2>>"$WORK/gen-$s.log" || rc=$?
    tail -n 30 "$WORK/gen-$s.log" | grep -v '^$' >&2 || true
    [ "$rc" = 0 ] || die "fleet_bench failed on $s (exit $rc; log $WORK/gen-$s.log)"
}

# run_cyan NAME SHARDS DEVICES RESTART(0/1)
run_cyan() {
    local name=$1 shards=$2 n=$3 port restart=()
    log "$name: cyan, $shards shards, $n devices, keep-alive $KEEPALIVE s"
    port=$(cyan_scripts "$name" "$shards" "$n")
    CYAN_RUN=$name
    "$WORK/$name/start.sh"
    for _ in $(seq 1 400); do
        cyan_accepting "$WORK/$name/data" && break
        sleep 0.05
    done
    cyan_accepting "$WORK/$name/data" || {
        tail -n 20 "$WORK/$name/cyan.log" >&2
        die "cyan did not accept clients within 20 s"
    }
    [ "$4" = 1 ] && restart=(--restart_cmd "$WORK/$name/restart.sh")
    run_gen "$name" "$n" --port "$port" --server_pid "$(cat "$WORK/$name/cyan.pid")" "${restart[@]}"
    stop_cyan
}

# run_mosq NAME DEVICES ARGS...
run_mosq() {
    local name=$1 n=$2
    shift 2
    log "$name: mosquitto, $n devices (one process, descriptor limit $(ulimit -n)), keep-alive $KEEPALIVE s"
    nice -n "$NICE" "$MOSQ" -c "$WORK/mosquitto.conf" >>"$WORK/mosq.log" 2>&1 &
    SPID["mosq"]=$!
    wait_port "$PORT_MOSQ" || die "mosquitto did not open its port (log: $WORK/mosq.log)"
    run_gen "$name" "$n" --port "$PORT_MOSQ" --server_pid "${SPID["mosq"]}" "$@"
    stop_server mosq
}

for s in $SERVERS; do
    case $s in
    cyan) run_cyan cyan "$SHARDS" "$N" "$RESTART" ;;
    mosq-limit) HOLD=0 run_mosq mosq-limit "$N" --stall 10 ;;
    mosq) run_mosq mosq "$M" --stall 10 ;;
    cyan-m) run_cyan cyan-m "$SHARDS_M" "$M" 0 ;;
    *) die "unknown run $s" ;;
    esac
done

# ---- table -----------------------------------------------------------------------------
/usr/bin/python3 - "$RESULTS" "$N" "$M" "$SHARDS" "$SHARDS_M" <<'EOF'
import sys
rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("RESULT "):
        continue
    kv = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
    rows[(kv["server"], kv["what"])] = kv
n, m, shards, shards_m = (int(a) for a in sys.argv[2:6])
def g(s, w, k="value"):
    v = rows.get((s, w), {}).get(k)
    return float(v) if v not in (None, "") else None
def f(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)
def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else "{:.2f}".format(a / b)
def line(label, a, b, fmt="{:,.0f}", r=True):
    print("| %s | %s | %s | %s |" % (label, f(a, fmt), f(b, fmt), ratio(a, b) if r else ""))
def block(c, mq, title_c, title_m, ratios):
    print("| %s | %s | %s | %s |" % ("", title_c, title_m, "cyan / mosquitto" if ratios else ""))
    print("|---|---:|---:|---:|")
    line("connected", g(c, "connect_rate", "connected"), g(mq, "connect_rate", "connected"), r=False)
    line("connect rate, conn/s (to the last CONNACK)", g(c, "connect_rate"), g(mq, "connect_rate"), r=ratios)
    line("time to connect, s", g(c, "connect_rate", "time_s"), g(mq, "connect_rate", "time_s"), "{:.1f}", r=False)
    line("server CPU per connect, µs", g(c, "connect_rate", "cpu_per_conn_us"), g(mq, "connect_rate", "cpu_per_conn_us"), "{:.1f}", r=ratios)
    line("memory per connection, B (PSS)", g(c, "memory"), g(mq, "memory"), r=ratios)
    line("memory per connection, B (RSS)", g(c, "memory", "rss_per_conn_b"), g(mq, "memory", "rss_per_conn_b"), r=ratios)
    line("kernel slab per connection, both ends, B", g(c, "memory", "kernel_slab_per_pair_b"), g(mq, "memory", "kernel_slab_per_pair_b"), r=False)
    line("server CPU while quiet (no pings), share of a core", g(c, "quiet_cpu"), g(mq, "quiet_cpu"), "{:.3f}", r=ratios)
    line("keep-alive: PINGREQ/s", g(c, "keepalive"), g(mq, "keepalive"), r=False)
    line("keep-alive: server CPU, share of a core", g(c, "keepalive", "server_core"), g(mq, "keepalive", "server_core"), "{:.3f}", r=ratios)
    line("keep-alive: server CPU per PINGREQ (all of it), µs", g(c, "keepalive", "cpu_per_ping_us"), g(mq, "keepalive", "cpu_per_ping_us"), "{:.1f}", r=ratios)
    line("memory per connection after a keep-alive round, B (PSS)", g(c, "keepalive", "pss_per_conn_after_b"), g(mq, "keepalive", "pss_per_conn_after_b"), r=ratios)
if ("cyan-m", "connect_rate") in rows or ("mosq", "connect_rate") in rows:
    print("Like for like, %d devices (what mosquitto's one process can hold):" % m)
    print()
    block("cyan-m", "mosq", "cyan, %d shards" % shards_m, "mosquitto", True)
    print()
if ("cyan", "connect_rate") in rows or ("mosq-limit", "connect_rate") in rows:
    print("%d devices:" % n)
    print()
    block("cyan", "mosq-limit", "cyan, %d shards" % shards, "mosquitto (stops at its limit)", False)
    r = rows.get(("cyan", "reconnect_all"))
    if r:
        print("| restart (SIGTERM, start again): old server gone, s | %s | | |" % r["stopped_s"])
        print("| restart: new server accepting, s | %s | | |" % r["accepting_s"])
        print("| restart: 50%% / 90%% / 99%% / all of the fleet back, s | %s / %s / %s / %s | | |" % (
            r["p50_s"], r["p90_s"], r["p99_s"], r["value"]))
        print("| restart: connect attempts (refused / timed out / reset or closed) | %s (%s / %s / %s) | | |" % (
            r["attempts"], r["refused"], r["timeout"], int(r["reset"]) + int(r["closed_before_connack"]) + int(r["connack_refusing"])))
    q = rows.get(("mosq-limit", "connect_rate"))
    if q:
        print()
        print("mosquitto's stop: %s of %d connected; the generator saw refused=%s reset=%s timeout=%s "
              "closed_before_connack=%s other=%s over %s attempts" % (
                  q["connected"], n, q["refused"], q["reset"], q["timeout"], q["closed_before_connack"],
                  q["other"], q["attempts"]))
EOF
log "raw results:"
cat "$RESULTS" >&2
