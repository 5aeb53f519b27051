#!/bin/bash
# bench/fleet_bench.sh: a fleet of N idle devices (default 150,000) on one
# cyan node, and the same generator against mosquitto (issue 16, "150k
# connected devices on one node").
#
# Builds cyan and bench/fleet_bench.c (RelWithDebInfo), then:
#   cyan   SHARDS shards (default: one per 15,000 devices, so that each shard
#          stays under the 20,000 descriptors one process may hold here);
#          the fleet connects, is measured idle, keeps alive for HOLD s, and
#          then cyan is restarted (SIGTERM, started again on the same data
#          folder) and the time for the whole fleet to come back is taken
#   mosq   Debian's mosquitto, one process: it stops at its descriptor limit
#          (ulimit -n); the generator shows where and what it saw there
#          (refused, reset, timeouts); memory per connection up to there and
#          the same keep-alive hold; no restart
# Both servers run anonymous (cyan: allow_anonymous=true; mosquitto:
# allow_anonymous true), no persistence of sessions (clean sessions), no
# TLS. cyan's per-address connection rate limit is off
# (max_connect_rate_per_address=0: the generator's 16 source addresses each
# open N/16 connections in seconds) and max_connections is raised to
# N + 10%; status events stay on (presence_event_rate default). Readiness:
# cyan when `cyan status --json` says every shard accepts; mosquitto when its
# port accepts. Servers and generator are not pinned (2 cores, shared): the
# figures are indicative; the generator is on the same machine.
#
# System limits: the script checks fs.file-max and fs.nr_open, and, as
# root, raises net.netfilter.nf_conntrack_max to at least 4 N (each loopback
# connection is one conntrack entry when conntrack is loaded, and a restart
# leaves N of them in TIME_WAIT for 2 minutes) and restores it on exit.
#
# Part of `make bench` (and alone: `make bench-fleet`). Environment:
#   N=150000        devices
#   QUICK=1         N=20000, KEEPALIVE=10, HOLD=10 (a couple of minutes)
#   KEEPALIVE=60    seconds between a device's PINGREQs (HOLD defaults to it)
#   SERVERS="cyan mosq"   which to run
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
SERVERS=${SERVERS:-cyan mosq}
RESTART=${RESTART:-1}
SHARDS=${SHARDS:-$(((N + 14999) / 15000))}
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
    local p
    # cyan is started detached (restart.sh starts its successor): by its pid file
    if [ -s "$WORK/cyan.pid" ]; then
        p=$(cat "$WORK/cyan.pid")
        kill -TERM "$p" 2>/dev/null && for _ in $(seq 1 100); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null || true
    fi
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

PORT_CYAN=$(free_port)
PORT_MOSQ=$(free_port)

cyan_accepting() {
    "$CYAN" status --json --data_dir="$1" 2>/dev/null | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["running"] and d["shards"] and all(s["accepting"] for s in d["shards"]) else 1)' 2>/dev/null
}

# The start and the restart of cyan, a script of their own: the generator
# runs restart.sh (--restart_cmd) and times the lines it prints. cyan is
# started detached (its pid in cyan.pid), so that a stopped one is gone, not
# a zombie of this shell.
DIR=$WORK/data-cyan
mkdir -p "$DIR"
cat >"$WORK/start.sh" <<EOF
#!/bin/bash
# start cyan detached on $DIR; its pid into $WORK/cyan.pid
( nice -n $NICE "$CYAN" --data_dir="$DIR" --mqtt_listen=127.0.0.1:$PORT_CYAN --shards=$SHARDS \\
    --allow_anonymous=true --max_connections=$((N + N / 10 + 100)) --max_connect_rate_per_address=0 \\
    --http_listen= --ops_listen= --coap_listen= --coaps_listen= --log_level=warn --sys_interval=0 \\
    >>"$WORK/cyan.log" 2>&1 </dev/null & echo \$! >"$WORK/cyan.pid" )
EOF
cat >"$WORK/restart.sh" <<EOF
#!/bin/bash
# SIGTERM to cyan, wait until it is gone, start it again on the same data;
# prints "stopped", "accepting" and "pid N" as they happen
p=\$(cat "$WORK/cyan.pid")
kill -TERM "\$p"
while kill -0 "\$p" 2>/dev/null; do sleep 0.01; done
echo stopped
"$WORK/start.sh"
for i in \$(seq 1 3000); do
    "$CYAN" status --json --data_dir="$DIR" 2>/dev/null | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["running"] and d["shards"] and all(s["accepting"] for s in d["shards"]) else 1)' 2>/dev/null && break
    sleep 0.02
done
echo accepting
echo "pid \$(cat "$WORK/cyan.pid")"
EOF
chmod +x "$WORK/start.sh" "$WORK/restart.sh"

cat >"$WORK/mosquitto.conf" <<EOF
listener $PORT_MOSQ 127.0.0.1
allow_anonymous true
persistence false
log_type error
log_type warning
EOF
[ "$(id -u)" = 0 ] && echo "user root" >>"$WORK/mosquitto.conf"

GENARGS=(--conns "$N" --keepalive "$KEEPALIVE" --hold "$HOLD")
run_gen() {
    local s=$1 rc=0
    shift
    nice -n "$NICE" "$GEN" --server "$s" "${GENARGS[@]}" "$@" >>"$RESULTS" 2>>"$WORK/gen-$s.log" || rc=$?
    tail -n 30 "$WORK/gen-$s.log" | grep -v '^$' >&2 || true
    [ "$rc" = 0 ] || die "fleet_bench failed on $s (exit $rc; log $WORK/gen-$s.log)"
}

for s in $SERVERS; do
    case $s in
    cyan)
        log "cyan: $SHARDS shards, $N devices, keep-alive $KEEPALIVE s"
        "$WORK/start.sh"
        for _ in $(seq 1 400); do
            cyan_accepting "$DIR" && break
            sleep 0.05
        done
        cyan_accepting "$DIR" || {
            tail -n 20 "$WORK/cyan.log" >&2
            die "cyan did not accept clients within 20 s"
        }
        restart=(--restart_cmd "$WORK/restart.sh")
        [ "$RESTART" = 1 ] || restart=()
        run_gen cyan --port "$PORT_CYAN" --server_pid "$(cat "$WORK/cyan.pid")" "${restart[@]}"
        p=$(cat "$WORK/cyan.pid")
        kill -TERM "$p" 2>/dev/null || true
        while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
        ;;
    mosq)
        log "mosquitto: $N devices (one process, descriptor limit $(ulimit -n)), keep-alive $KEEPALIVE s"
        nice -n "$NICE" "$MOSQ" -c "$WORK/mosquitto.conf" >>"$WORK/mosq.log" 2>&1 &
        SPID[$s]=$!
        wait_port "$PORT_MOSQ" || die "mosquitto did not open its port (log: $WORK/mosq.log)"
        run_gen mosq --port "$PORT_MOSQ" --server_pid "${SPID[$s]}" --stall 10
        stop_server mosq
        ;;
    *) die "unknown server $s" ;;
    esac
done

# ---- table -----------------------------------------------------------------------------
/usr/bin/python3 - "$RESULTS" "$N" <<'EOF'
import sys
rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("RESULT "):
        continue
    kv = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
    rows[(kv["server"], kv["what"])] = kv
def g(s, w, k="value"):
    v = rows.get((s, w), {}).get(k)
    return float(v) if v not in (None, "") else None
def f(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)
def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else "{:.2f}".format(a / b)
n = int(sys.argv[2])
print("| %d devices | cyan | mosquitto | cyan / mosquitto |" % n)
print("|---|---:|---:|---:|")
cc, mc = g("cyan", "connect_rate", "connected"), g("mosq", "connect_rate", "connected")
print("| connected (of %d) | %s | %s | |" % (n, f(cc), f(mc)))
print("| connect rate, conn/s (to all CONNACKs, or to the last) | %s | %s | %s |" % (
    f(g("cyan", "connect_rate")), f(g("mosq", "connect_rate")), ratio(g("cyan", "connect_rate"), g("mosq", "connect_rate"))))
print("| time to connect, s | %s | %s | |" % (f(g("cyan", "connect_rate", "time_s"), "{:.1f}"), f(g("mosq", "connect_rate", "time_s"), "{:.1f}")))
print("| server CPU per connect, us | %s | %s | %s |" % (
    f(g("cyan", "connect_rate", "cpu_per_conn_us"), "{:.1f}"), f(g("mosq", "connect_rate", "cpu_per_conn_us"), "{:.1f}"),
    ratio(g("cyan", "connect_rate", "cpu_per_conn_us"), g("mosq", "connect_rate", "cpu_per_conn_us"))))
print("| memory per connection, B (PSS; RSS) | %s; %s | %s; %s | %s |" % (
    f(g("cyan", "memory")), f(g("cyan", "memory", "rss_per_conn_b")), f(g("mosq", "memory")),
    f(g("mosq", "memory", "rss_per_conn_b")), ratio(g("cyan", "memory"), g("mosq", "memory"))))
print("| kernel slab per connection, both ends, B (indicative) | %s | %s | |" % (
    f(g("cyan", "memory", "kernel_slab_per_pair_b")), f(g("mosq", "memory", "kernel_slab_per_pair_b"))))
print("| memory per connection after a keep-alive round, B (PSS) | %s | %s | %s |" % (
    f(g("cyan", "keepalive", "pss_per_conn_after_b")), f(g("mosq", "keepalive", "pss_per_conn_after_b")),
    ratio(g("cyan", "keepalive", "pss_per_conn_after_b"), g("mosq", "keepalive", "pss_per_conn_after_b"))))
print("| keep-alive PINGREQ/s | %s | %s | |" % (f(g("cyan", "keepalive")), f(g("mosq", "keepalive"))))
print("| server CPU for keep-alive, share of a core | %s | %s | %s |" % (
    f(g("cyan", "keepalive", "server_core"), "{:.3f}"), f(g("mosq", "keepalive", "server_core"), "{:.3f}"),
    ratio(g("cyan", "keepalive", "server_core"), g("mosq", "keepalive", "server_core"))))
print("| server CPU per PINGREQ, us | %s | %s | %s |" % (
    f(g("cyan", "keepalive", "cpu_per_ping_us"), "{:.1f}"), f(g("mosq", "keepalive", "cpu_per_ping_us"), "{:.1f}"),
    ratio(g("cyan", "keepalive", "cpu_per_ping_us"), g("mosq", "keepalive", "cpu_per_ping_us"))))
r = rows.get(("cyan", "reconnect_all"))
if r:
    print("| restart: stopped / accepting / 50%% / 90%% / 99%% / all back, s | %s / %s / %s / %s / %s / %s | | |" % (
        r["stopped_s"], r["accepting_s"], r["p50_s"], r["p90_s"], r["p99_s"], r["value"]))
m = rows.get(("mosq", "connect_rate"))
if m:
    print()
    print("mosquitto's stop: %s of %d connected; the generator saw refused=%s reset=%s timeout=%s "
          "closed_before_connack=%s other=%s over %s attempts" % (
        m["connected"], n, m["refused"], m["reset"], m["timeout"], m["closed_before_connack"], m["other"], m["attempts"]))
EOF
log "raw results:"
cat "$RESULTS" >&2
