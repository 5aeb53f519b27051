#!/bin/bash
# bench/api_bench.sh: the round trip of a function call through cyan's HTTP
# API, side by side with the same request/response done purely over MQTT
# (through mosquitto and through cyan).
#
# Builds nothing: it expects $BUILD/cyan and $BUILD/api_bench (`make
# bench-api` builds them first). Starts, each pinned to core 0 (cyan's shards
# inherit the supervisor's affinity), on free ports of 127.0.0.1:
#   cyan1, cyan2    cyan with 1 and 2 shards, as deployed (isolate_devices on):
#                   the API rows
#   cyan1m, cyan2m  cyan with 1 and 2 shards, isolate_devices=false and
#                   allow_anonymous=true: the MQTT-only rows (an isolated
#                   device's replies go to the API and are never routed to
#                   another client, so the plain pattern needs isolation off)
#   mosq            Debian's mosquitto, allow_anonymous, set_tcp_nodelay (its
#                   setting for latency; with Nagle on a request/response
#                   exchange waits for delayed ACKs)
# and runs bench/api_bench.c on core 1 for each row, RUNS times, the rows in a
# rotating order, each run COUNT calls after WARMUP. With 2 shards the rows
# are split by where the work lands: the HTTP connection accepted by the
# device's own shard or by the other one (api_bench finds the accepting shard
# through /proc and reconnects until it is the wanted one), and in MQTT the
# application's client id placed on the device's shard or on the other.
# Prints the medians (p50/p99/p99.9 µs, calls/s, server CPU per call) and,
# with DOC=1, writes them into docs/benchmarks.md between the api-bench
# markers. Every server it starts is stopped on exit, whatever happens.
#
# Environment:
#   RUNS=3 COUNT=5000 WARMUP=200   runs per row; calls measured / before, per run
#   PROTO=4                        MQTT version of the device and app (4 or 5)
#   STRACE=1 STRACE_COUNT=1000     syscalls per call of the server (strace -c), untimed
#   DOC=0                          1: write docs/benchmarks.md
#   BUILD=build KEEP=1 (keep the work folder)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROOT=$PWD

RUNS=${RUNS:-3}
COUNT=${COUNT:-5000}
WARMUP=${WARMUP:-200}
PROTO=${PROTO:-4}
DOC=${DOC:-0}
STRACE=${STRACE:-1}
STRACE_COUNT=${STRACE_COUNT:-1000}
BUILD=${BUILD:-build}
SERVER_CORE=0
GEN_CORE=1
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
CYAN=$BUILD/cyan
BENCH=$BUILD/api_bench
MOSQ=/usr/sbin/mosquitto

log() { printf '%s api-bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for f in "$CYAN" "$BENCH"; do
    [ -x "$f" ] || { log "$f missing: build first (make bench-api)"; exit 1; }
done
[ -x "$MOSQ" ] || { log "mosquitto not installed ($MOSQ); run scripts/deps.sh bench"; exit 1; }
command -v taskset >/dev/null || { log "taskset missing (util-linux)"; exit 1; }

bench_workdir api-bench
declare -A MPORT=() HPORT=()


# ---- the device ----------------------------------------------------------------
mkdir -p "$WORK/template"
DEV_OUT=$("$CYAN" device add api-bench --data_dir="$WORK/template" 2>&1)
DEV_ID=$(printf '%s\n' "$DEV_OUT" | sed -n 's/^id: //p')
DEV_SECRET=$(printf '%s\n' "$DEV_OUT" | sed -n 's/^secret: //p')
if [ -z "$DEV_ID" ] || [ -z "$DEV_SECRET" ]; then log "device add failed: $DEV_OUT"; exit 1; fi

# ---- servers ---------------------------------------------------------------------
start_server() {
    local s=$1 shards extra=() dir i n
    MPORT[$s]=$(free_port)
    case $s in
    mosq)
        cat >"$WORK/mosquitto.conf" <<EOF
listener ${MPORT[$s]} 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
log_type error
log_type warning
EOF
        taskset -c $SERVER_CORE "$MOSQ" -c "$WORK/mosquitto.conf" >>"$WORK/mosq.log" 2>&1 &
        SPID[$s]=$!
        ;;
    cyan*)
        case $s in cyan1*) shards=1 ;; cyan2*) shards=2 ;; esac
        case $s in *m) extra=(--isolate_devices=false --allow_anonymous=true) ;; esac
        HPORT[$s]=$(free_port)
        dir=$WORK/data-$s
        cp -r "$WORK/template" "$dir"
        taskset -c $SERVER_CORE "$CYAN" --data_dir="$dir" --mqtt_listen="127.0.0.1:${MPORT[$s]}" \
            --http_listen="127.0.0.1:${HPORT[$s]}" --shards=$shards --ops_listen= --coap_listen= --coaps_listen= --log_level=warn \
            --sys_interval=0 "${extra[@]}" >>"$WORK/$s.log" 2>&1 &
        SPID[$s]=$!
        for i in $(seq 1 100); do
            n=$( (pgrep -P "${SPID[$s]}" 2>/dev/null || true) | wc -l)
            [ "$n" -ge "$shards" ] && [ -s "$dir/admin-token" ] && break
            sleep 0.1
        done
        wait_port "${HPORT[$s]}" || { log "$s did not open its HTTP port"; tail -n 20 "$WORK/$s.log" >&2; exit 1; }
        ;;
    esac
    wait_port "${MPORT[$s]}" || { log "$s did not open port ${MPORT[$s]}"; tail -n 20 "$WORK/$s.log" >&2 || true; exit 1; }
}

SERVERS=(cyan1 cyan2 cyan1m cyan2m mosq)
log "starting ${SERVERS[*]} on core $SERVER_CORE; work folder $WORK"
for s in "${SERVERS[@]}"; do start_server "$s"; done
sleep 0.5 # shards link up over the bus

# ---- rows --------------------------------------------------------------------------
# row name -> server and api_bench arguments
declare -A ROW_SERVER=(
    [api_cyan1]=cyan1 [api_cyan2_same]=cyan2 [api_cyan2_other]=cyan2
    [mqtt_mosq]=mosq [mqtt_cyan1]=cyan1m [mqtt_cyan2_same]=cyan2m [mqtt_cyan2_other]=cyan2m
)
declare -A ROW_ARGS=(
    [api_cyan1]="--mode api"
    [api_cyan2_same]="--mode api --http_shard same"
    [api_cyan2_other]="--mode api --http_shard other"
    [mqtt_mosq]="--mode mqtt"
    [mqtt_cyan1]="--mode mqtt"
    [mqtt_cyan2_same]="--mode mqtt --app_shard same --shards 2"
    [mqtt_cyan2_other]="--mode mqtt --app_shard other --shards 2"
)
ROWS=(api_cyan1 api_cyan2_same api_cyan2_other mqtt_mosq mqtt_cyan1 mqtt_cyan2_same mqtt_cyan2_other)

run_row() { # ROW ROUND
    local row=$1 round=$2 s=${ROW_SERVER[$1]} out rc=0 args=()
    if ! kill -0 "${SPID[$s]}" 2>/dev/null; then
        log "$s died; restarting it"
        echo "CRASH round=$round server=$s" >>"$RESULTS"
        stop_server "$s"
        start_server "$s"
    fi
    args=(--mqtt "127.0.0.1:${MPORT[$s]}" --device "$DEV_ID" --secret "$DEV_SECRET"
        --count "$COUNT" --warmup "$WARMUP" --proto "$PROTO" --server "$row" --server_pid "${SPID[$s]}")
    case $s in
    cyan1 | cyan2) args+=(--http "127.0.0.1:${HPORT[$s]}" --token_file "$WORK/data-$s/admin-token") ;;
    esac
    # shellcheck disable=SC2086
    out=$(taskset -c $GEN_CORE "$BENCH" "${args[@]}" ${ROW_ARGS[$row]} 2>>"$WORK/bench.log") || rc=$?
    bench_record "$rc" "$out" "$row" "FAIL round=$round row=$row rc=$rc" "$WORK/bench.log" \
        'p50_us=[^ ]* p99_us=[^ ]* p999_us=[^ ]*\|calls_per_s=[^ ]*'
}

T0=$(date +%s)
log "RUNS=$RUNS COUNT=$COUNT WARMUP=$WARMUP PROTO=$PROTO; servers on core $SERVER_CORE, bench on core $GEN_CORE"
for ((round = 1; round <= RUNS; round++)); do
    log "round $round/$RUNS"
    n=${#ROWS[@]}
    for ((i = 0; i < n; i++)); do
        run_row "${ROWS[$(((i + round - 1) % n))]}" "$round"
    done
done

# ---- syscalls per call -----------------------------------------------------------
# strace -c -f on every process of the server (cyan: supervisor and shards)
# during STRACE_COUNT calls. strace slows the server down (each syscall
# stops it), so these runs are not timed; the counts are exact, and stay
# the same on a noisy machine. They include setting up the two connections
# (a few dozen syscalls).
strace_row() { # ROW
    local row=$1 s=${ROW_SERVER[$1]} f sp calls p rc=0 args=()
    f=$WORK/strace-$row.txt
    for p in ${SPID[$s]} $(pgrep -P "${SPID[$s]}" 2>/dev/null || true); do args+=(-p "$p"); done
    strace -c -f -o "$f" "${args[@]}" 2>>"$WORK/strace.log" &
    sp=$!
    sleep 0.5
    args=(--mqtt "127.0.0.1:${MPORT[$s]}" --device "$DEV_ID" --secret "$DEV_SECRET"
        --count "$STRACE_COUNT" --warmup 0 --proto "$PROTO" --server "strace_$row")
    case $s in
    cyan1 | cyan2) args+=(--http "127.0.0.1:${HPORT[$s]}" --token_file "$WORK/data-$s/admin-token") ;;
    esac
    # shellcheck disable=SC2086
    taskset -c $GEN_CORE "$BENCH" "${args[@]}" ${ROW_ARGS[$row]} >/dev/null 2>>"$WORK/bench.log" || rc=$?
    sleep 0.2
    kill -INT "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
    calls=$(awk '$NF=="total" {print $4}' "$f" 2>/dev/null || true)
    if [ "$rc" = 0 ] && [ -n "$calls" ]; then
        echo "SYSCALLS row=$row syscalls=$calls calls=$STRACE_COUNT" >>"$RESULTS"
        log "    $row: $(awk -v c="$calls" -v n="$STRACE_COUNT" 'BEGIN{printf "%.1f", c/n}') syscalls per call"
    else
        log "syscall count failed for $row (exit $rc)"
        echo "FAIL strace row=$row rc=$rc" >>"$RESULTS"
    fi
}
if [ "$STRACE" = 1 ]; then
    if command -v strace >/dev/null; then
        log "syscalls per call (strace -c, $STRACE_COUNT calls per row)"
        for row in "${ROWS[@]}"; do strace_row "$row"; done
    else
        log "strace missing: no syscall counts (scripts/deps.sh bench)"
    fi
fi
T1=$(date +%s)
for s in "${SERVERS[@]}"; do stop_server "$s"; done

# ---- table -------------------------------------------------------------------------
export RESULTS RUNS COUNT WARMUP PROTO DOC ROOT WORK STRACE_COUNT
ELAPSED=$((T1 - T0))
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
KERNEL=$(uname -r)
NPROC=$(nproc)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- src 2>/dev/null | head -n 1 | wc -l)
export ELAPSED DATE LOADAVG KERNEL NPROC COMMIT DIRTY
/usr/bin/python3 - <<'PY'
import os, re, statistics, sys

env = os.environ
BEGIN = "<!-- api-bench:begin -->"
END = "<!-- api-bench:end -->"
ROWS = [
    ("api_cyan1", "HTTP API → device → HTTP", "cyan, 1 shard"),
    ("api_cyan2_same", "HTTP API → device → HTTP", "cyan, 2 shards, HTTP on the device's shard"),
    ("api_cyan2_other", "HTTP API → device → HTTP", "cyan, 2 shards, HTTP on the other shard"),
    ("mqtt_mosq", "MQTT app → device → app", "mosquitto 2.0.11"),
    ("mqtt_cyan1", "MQTT app → device → app", "cyan, 1 shard"),
    ("mqtt_cyan2_same", "MQTT app → device → app", "cyan, 2 shards, app on the device's shard"),
    ("mqtt_cyan2_other", "MQTT app → device → app", "cyan, 2 shards, app on the other shard"),
]
runs = {}   # row -> [dict]
syscalls = {}  # row -> server syscalls per call
fails = []
for line in open(env["RESULTS"]):
    f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    if line.startswith("RESULT"):
        runs.setdefault(f["server"], []).append(f)
    elif line.startswith("SYSCALLS"):
        syscalls[f["row"]] = int(f["syscalls"]) / int(f["calls"])
    elif line.startswith(("FAIL", "CRASH")):
        fails.append(line.strip())

def med(row, key):
    v = [float(r[key]) for r in runs.get(row, []) if key in r and float(r[key]) >= 0]
    return statistics.median(v) if v else None

def fmt(v, digits=0):
    if v is None or v < 0:
        return "–"
    return f"{v:,.{digits}f}"

out = []
out.append(f"{env['DATE']}, commit {env['COMMIT']}"
           + (" with uncommitted changes in src/" if env.get("DIRTY", "0") != "0" else "")
           + f"; {env['NPROC']} cores, kernel {env['KERNEL']}; load average {env['LOADAVG']} at the end.")
out.append(f"Median of {env['RUNS']} run{'' if env['RUNS'] == '1' else 's'} per row, each {int(env['COUNT']):,} sequential calls "
           f"after {env['WARMUP']} warm-up calls; MQTT {'5.0' if env['PROTO'] == '5' else '3.1.1'}, "
           "QoS 1 both ways; servers on core 0, api_bench on core 1; "
           f"{env['ELAPSED']} s in all (syscall counts included).")
out.append("")
out.append("| path | server | p50 µs | p99 µs | p99.9 µs | calls/s | server CPU µs/call | server syscalls/call | device leg p50 µs |")
out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for row, path, server in ROWS:
    out.append(f"| {path} | {server} | {fmt(med(row, 'p50_us'))} | {fmt(med(row, 'p99_us'))} | "
               f"{fmt(med(row, 'p999_us'))} | {fmt(med(row, 'calls_per_s'))} | "
               f"{fmt(med(row, 'server_cpu_us_per_call'))} | {fmt(syscalls.get(row), 1)} | "
               f"{fmt(med(row, 'server_rtt_p50_us'))} |")
out.append("")
out.append("<details><summary>Every run</summary>")
out.append("")
out.append("| row | round | p50 µs | p99 µs | p99.9 µs | max µs | calls/s | server CPU µs/call | app CPU µs/call | device CPU µs/call | errors | shards (device/HTTP) |")
out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for row, _, _ in ROWS:
    for r in runs.get(row, []):
        sh = f"{r['owner_shard']}/{r['accept_shard']}" if "owner_shard" in r else ""
        out.append(f"| {row} | {r['round']} | {fmt(float(r['p50_us']))} | {fmt(float(r['p99_us']))} | "
                   f"{fmt(float(r['p999_us']))} | {fmt(float(r['max_us']))} | "
                   f"{fmt(float(r['calls_per_s']))} | {fmt(float(r.get('server_cpu_us_per_call', -1)))} | "
                   f"{fmt(float(r.get('app_cpu_us_per_call', -1)))} | "
                   f"{fmt(float(r.get('device_cpu_us_per_call', -1)))} | {r['errors']} | {sh} |")
for f in fails:
    out.append(f"| {f} | | | | | | | | | | | |")
if syscalls:
    out.append("")
    out.append("Server syscalls per call (strace -c -f, untimed runs; those at 0.5 per call or more):")
    out.append("")
    for row, _, _ in ROWS:
        path = os.path.join(env["WORK"], f"strace-{row}.txt")
        if row not in syscalls or not os.path.exists(path):
            continue
        parts = []
        for line in open(path):
            w = line.split()
            if len(w) >= 5 and w[0][0].isdigit() and w[-1] != "total":
                calls = int(w[3])
                per = calls / int(env.get("STRACE_COUNT", "1000"))
                if per >= 0.5:
                    parts.append((per, w[-1]))
        parts.sort(key=lambda x: (-x[0], x[1]))
        out.append(f"- {row}: {syscalls[row]:.1f} — " + ", ".join(f"{n} {v:.1f}" for v, n in parts))
out.append("")
out.append("</details>")
text = "\n".join(out)
print(text)
if fails:
    print(f"\n{len(fails)} failed runs (see above)", file=sys.stderr)

if env.get("DOC") == "1":
    sys.path.insert(0, os.path.join(env["ROOT"], "bench"))
    from docblock import write_between
    write_between(env["ROOT"], BEGIN, END, text, "api-bench")
PY
