#!/bin/bash
# bench/durable_bench.sh: QoS 1 the way a fleet uses it, cyan beside
# mosquitto: persistent sessions (stored before the PUBACK), and one-to-one
# QoS 1 within a shard and across shards (issue 16, "Durable QoS 1" and
# "Cross-shard QoS 1").
#
# Builds cyan and bench/cyan_bench.c (RelWithDebInfo), and runs, each pinned
# to core 0 with the generator on core 1:
#   cyan1       1 shard, store_sync normal (the default: a commit survives
#               the process being killed)
#   cyan1full   1 shard, store_sync full (fsync: a commit survives power loss)
#   cyan4       4 shards (on the one core)
#   mosq        Debian's mosquitto with `persistence true`: its store is a
#               snapshot written every autosave_interval (1800 s) and at
#               exit, not a write before the PUBACK
# The workloads: 8 one-to-one pairs, 16 B QoS 1 PUBLISHes, MQTT 5, at most
# 32 in flight per publisher and 512 not yet delivered, for DURATION s
# after WARMUP s:
#   durable     persistent sessions (clean start 0, session expiry 600 s;
#               every run its own client ids, dropped at its end), half of
#               the pairs across shards for cyan4
#   same        clean sessions, every pair within a shard
#   cross       clean sessions, every pair across shards
# Per run: messages per second delivered, and p50/p99 from publish to
# PUBACK and from publish to delivery (the generator's clock, one sample per
# message). The medians of RUNS rounds (servers in rotating order) and the
# ratio to mosquitto in the same round go to stdout as a Markdown table.
# Authentication: the same on both, a username and password checked at
# each CONNECT: cyan's one bench device (its id and secret; isolate_devices
# false, as in bench/run.sh), and the same pair in a mosquitto password_file
# (mosquitto_passwd; allow_anonymous false).
# Readiness: cyan when `cyan status --json` says every shard accepts;
# mosquitto when its port accepts.
#
# Part of `make bench` (and alone: `make bench-durable`). About 2 minutes.
#
# Environment:
#   RUNS=3 DURATION=3 WARMUP=0.5   rounds; measured and warm-up seconds per run
#   SERVER_CORE=0 GEN_CORE=1       taskset cores of the servers and of the generator
#   BUILD=build KEEP=1 (keep the work folder)
#
# Everything it starts is stopped on exit (trap), whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROOT=$PWD

RUNS=${RUNS:-3}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-0.5}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
MOSQ=/usr/sbin/mosquitto

log() { printf '%s durable-bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "$*"
    exit 1
}

# ---- build -------------------------------------------------------------------------
bench_build durable-bench cyan cyan_bench
CYAN=$BUILD/cyan
GEN=$BUILD/cyan_bench
[ -x "$MOSQ" ] || die "mosquitto not installed ($MOSQ); run scripts/deps.sh bench"
command -v taskset >/dev/null || die "taskset missing (util-linux)"

bench_workdir durable-bench
mkdir -p "$WORK/template"
DEV_OUT=$("$CYAN" device add bench-device --data_dir="$WORK/template" 2>&1)
DEV_ID=$(printf '%s\n' "$DEV_OUT" | sed -n 's/^id: //p')
DEV_SECRET=$(printf '%s\n' "$DEV_OUT" | sed -n 's/^secret: //p')
if [ -z "$DEV_ID" ] || [ -z "$DEV_SECRET" ]; then die "device add failed: $DEV_OUT"; fi

declare -A PORT=([cyan1]=$(free_port) [cyan1full]=$(free_port) [cyan4]=$(free_port) [mosq]=$(free_port))
mkdir -p "$WORK/mosq"
cat >"$WORK/mosquitto.conf" <<EOF
listener ${PORT[mosq]} 127.0.0.1
allow_anonymous false
password_file $WORK/mosq.passwd
persistence true
persistence_location $WORK/mosq/
max_queued_messages 1000
max_inflight_messages 32
log_type error
log_type warning
EOF
[ "$(id -u)" = 0 ] && echo "user root" >>"$WORK/mosquitto.conf"
mosquitto_passwd -c -b "$WORK/mosq.passwd" "$DEV_ID" "$DEV_SECRET" ||
    die "mosquitto_passwd failed (it comes with the mosquitto package)"
chmod 600 "$WORK/mosq.passwd"

# every shard of the cyan in DIR accepts clients (`cyan status --json`)
cyan_accepting() {
    "$CYAN" status --json --data_dir="$1" 2>/dev/null | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["running"] and d["shards"] and all(s["accepting"] for s in d["shards"]) else 1)' 2>/dev/null
}

start_server() {
    local s=$1 shards=1 sync=normal dir i
    case $s in
    mosq)
        taskset -c "$SERVER_CORE" "$MOSQ" -c "$WORK/mosquitto.conf" >>"$WORK/mosq.log" 2>&1 &
        SPID[$s]=$!
        wait_port "${PORT[$s]}" || die "mosquitto did not open its port (log: $WORK/mosq.log)"
        return 0
        ;;
    cyan4) shards=4 ;;
    cyan1full) sync=full ;;
    esac
    dir=$WORK/data-$s
    rm -rf "$dir"
    cp -r "$WORK/template" "$dir"
    taskset -c "$SERVER_CORE" "$CYAN" --data_dir="$dir" --mqtt_listen="127.0.0.1:${PORT[$s]}" \
        --shards=$shards --store_sync=$sync --isolate_devices=false --http_listen= --ops_listen= \
        --coap_listen= --coaps_listen= --log_level=warn --sys_interval=0 >>"$WORK/$s.log" 2>&1 &
    SPID[$s]=$!
    for i in $(seq 1 200); do
        cyan_accepting "$dir" && return 0
        kill -0 "${SPID[$s]}" 2>/dev/null || break
        sleep 0.05
    done
    tail -n 20 "$WORK/$s.log" >&2 || true
    die "$s did not accept clients within 10 s"
}

# gen SERVER WORKLOAD ARGS...: one run; its RESULT line with the round to $RESULTS
ROUND=0
gen() {
    local s=$1 w=$2 out rc=0 auth=(--user "$DEV_ID" --pass "$DEV_SECRET")
    shift 2
    out=$(taskset -c "$GEN_CORE" "$GEN" --port "${PORT[$s]}" "${auth[@]}" --server "$s" \
        --workload "$w" --server_pid "${SPID[$s]}" --duration "$DURATION" --warmup "$WARMUP" \
        --mode o2o --pairs 8 --qos 1 --size 16 --proto 5 --inflight 32 --window 512 \
        --percentiles 1 --plan_shards 4 "$@" 2>>"$WORK/gen.log") || rc=$?
    if [ "$rc" != 0 ] || ! printf '%s\n' "$out" | grep -q '^RESULT'; then
        tail -n 5 "$WORK/gen.log" >&2 || true
        log "run failed: $w on $s (exit $rc)"
        echo "FAIL round=$ROUND workload=$w server=$s rc=$rc" >>"$RESULTS"
        return 0
    fi
    printf '%s\n' "$out" | grep '^RESULT' | sed "s/^RESULT /RESULT round=$ROUND /" >>"$RESULTS"
    printf '%s\n' "$out" | grep '^RESULT' | cut -c1-150 | sed 's/^/    /' >&2
}
order() {
    local r=$1 i
    shift
    local a=("$@") n=$#
    for ((i = 0; i < n; i++)); do echo "${a[$(((i + r) % n))]}"; done
}

declare -A SERVERS_OF=([durable]="cyan1 cyan1full cyan4 mosq" [same]="cyan1 cyan4 mosq" [cross]="cyan4")
declare -A ARGS_OF=([durable]="--session persistent --cross half" [same]="--cross none"
    [cross]="--cross all")
for s in cyan1 cyan1full cyan4 mosq; do start_server "$s"; done
log "RUNS=$RUNS DURATION=${DURATION}s; servers on core $SERVER_CORE, generator on core $GEN_CORE"
for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
    log "round $ROUND/$RUNS"
    for w in durable same cross; do
        # shellcheck disable=SC2086 # a list of names
        for s in $(order "$ROUND" ${SERVERS_OF[$w]}); do
            kill -0 "${SPID[$s]}" 2>/dev/null || die "$s died (log: $WORK/$s.log)"
            # shellcheck disable=SC2086 # generator options
            gen "$s" "$w" ${ARGS_OF[$w]}
        done
    done
done

# ---- table -------------------------------------------------------------------------------
export RESULTS RUNS DURATION
/usr/bin/python3 - <<'PY'
import os, statistics
rows = {}
for line in open(os.environ["RESULTS"]):
    if not line.startswith("RESULT "):
        continue
    f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    rows.setdefault((f["workload"], f["server"]), []).append(f)
def med(w, s, key):
    v = [float(f[key]) for f in rows.get((w, s), []) if key in f]
    return statistics.median(v) if v else None
def ratio_med(w, s, peer):
    """median over rounds of (server / peer in the same round)"""
    a = {f["round"]: float(f["value"]) for f in rows.get((w, s), [])}
    b = {f["round"]: float(f["value"]) for f in rows.get((w, peer), [])}
    r = [a[k] / b[k] for k in a if k in b and b[k] > 0]
    return statistics.median(r) if r else None
print("| workload | server | msg/s | vs mosquitto | PUBACK p50 / p99 (µs) | delivery p50 / p99 (µs) | server CPU per msg |")
print("|---|---|---:|---:|---:|---:|---:|")
names = {"durable": "durable QoS 1 (persistent sessions)", "same": "QoS 1, clean, within a shard",
         "cross": "QoS 1, clean, across shards"}
for w in ("durable", "same", "cross"):
    for s in ("cyan1", "cyan1full", "cyan4", "mosq"):
        if (w, s) not in rows:
            continue
        v = med(w, s, "value")
        r = ratio_med(w, s, "mosq") if s != "mosq" else None
        ns = med(w, s, "server_ns_per_msg")
        print("| %s | %s | %s | %s | %.0f / %.0f | %.0f / %.0f | %s |" % (
            names[w], s, "{:,.0f}".format(v), "%.2f×" % r if r else "",
            med(w, s, "ack_p50_us") or 0, med(w, s, "ack_p99_us") or 0,
            med(w, s, "p50_us") or 0, med(w, s, "p99_us") or 0,
            "%.2f µs" % (ns / 1000) if ns else ""))
same, cross = med("same", "cyan4", "value"), med("cross", "cyan4", "value")
if same and cross:
    print("\ncyan4: within a shard / across shards = %.2f× (median msg/s)" % (same / cross))
print("\nmedians of %s rounds of %s s; ratios are medians of each round's ratio" % (
    os.environ["RUNS"], os.environ["DURATION"]))
PY
