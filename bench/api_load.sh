#!/bin/bash
# bench/api_load.sh: function calls under load through cyan's HTTP API, and
# the same exchange as plain MQTT request/response through mosquitto and
# cyan, side by side (bench/api_load.c is the generator).
#
# Builds nothing: it expects $BUILD/cyan and $BUILD/api_load (`make
# bench-api-load` builds them first). Makes DEVICES devices once (through
# the API of a cyan started on a template data folder), then starts, on free
# ports of 127.0.0.1:
#   cyan1           cyan, 1 shard, as deployed (isolate_devices on): API rows
#   cyan2           cyan, 2 shards, the same
#   cyan1m, cyan2m  cyan, 1 and 2 shards, isolate_devices=false and
#                   allow_anonymous=true (an isolated device's replies go to
#                   the API and are never routed to another client): the
#                   plain MQTT rows. Devices still log in with their secrets.
#   mosq            Debian's mosquitto, set_tcp_nodelay, with a password_file
#                   of the same devices (mosquitto_passwd -U) and
#                   allow_anonymous true: as on cyan1m/cyan2m, each device's
#                   secret is checked at its CONNECT and the callers (no
#                   username) are let in anonymously
# Each cyan gets a copy of the template folder (same devices, same admin
# token). 1-shard servers and mosquitto run on core 0, the generator on core
# 1; 2-shard servers are not pinned (their shards and the generator share
# both cores). Readiness: `cyan status --json` says every shard accepts.
# For each row and each C in CONNS, RUNS runs of api_load, the rows in a
# rotating order: WARMUP s then SECONDS s measured, calls/s, p50/p99/p99.9,
# server CPU per call. Prints the medians and ratios; with DOC=1 writes them
# into docs/benchmarks.md between the api-load markers. Every server it
# starts is stopped on exit, whatever happens.
#
# Environment:
#   RUNS=3 SECONDS_RUN=3 WARMUP=1   runs per row and C; measured and warm-up seconds
#   CONNS="8 32 64"                 concurrent callers (HTTP connections or MQTT apps)
#   DEVICES=1000                    devices connected (each with its secret on cyan)
#   ROWS="api_cyan1 ..."            a subset of rows (default: all)
#   STRACE=1 STRACE_COUNT=5000      syscalls per call of the server (strace -c), untimed, C=8
#   STRACE_FILES=1                  instead: which files the server reads and writes then
#                                   (strace -y, WORK/files-ROW.txt; with KEEP=1)
#   DOC=0 BUILD=build KEEP=1 (keep the work folder)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROOT=$PWD

RUNS=${RUNS:-3}
SECONDS_RUN=${SECONDS_RUN:-3}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-8 32 64}
DEVICES=${DEVICES:-1000}
STRACE=${STRACE:-1}
STRACE_COUNT=${STRACE_COUNT:-5000}
DOC=${DOC:-0}
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
CYAN=$BUILD/cyan
LOAD=$BUILD/api_load
MOSQ=/usr/sbin/mosquitto
ALL_ROWS="api_cyan1 mqtt_cyan1 mqtt_mosq api_cyan2 mqtt_cyan2"
ROWS=${ROWS:-$ALL_ROWS}

log() { printf '%s api-load: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

for f in "$CYAN" "$LOAD"; do
    [ -x "$f" ] || die "$f missing: build first (make bench-api-load)"
done
[ -x "$MOSQ" ] || die "mosquitto not installed ($MOSQ); run scripts/deps.sh bench"
command -v taskset >/dev/null || die "taskset missing (util-linux)"
ulimit -n 8192 2>/dev/null || log "cannot raise the descriptor limit ($(ulimit -n)): mosquitto may refuse devices"

bench_workdir api-load
declare -A MPORT=() HPORT=()

# Wait until cyan on data folder DIR (pid PID) says every shard accepts.
wait_cyan() {
    local dir=$1 pid=$2 i
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if "$CYAN" status --json --data_dir="$dir" 2>/dev/null | /usr/bin/python3 -c '
import json, sys
s = json.load(sys.stdin)
sh = s.get("shards") or []
sys.exit(0 if sh and all(x.get("accepting") for x in sh) else 1)' 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

start_server() { # NAME [DIR]
    local s=$1 shards extra=() dir core=() 
    MPORT[$s]=$(free_port)
    case $s in
    mosq)
        cat >"$WORK/mosquitto.conf" <<EOC
listener ${MPORT[$s]} 127.0.0.1
allow_anonymous true
password_file $WORK/mosq.passwd
persistence false
set_tcp_nodelay true
max_queued_messages 10000
log_type error
log_type warning
EOC
        [ "$(id -u)" = 0 ] && echo "user root" >>"$WORK/mosquitto.conf"
        taskset -c 0 "$MOSQ" -c "$WORK/mosquitto.conf" >>"$WORK/mosq.log" 2>&1 &
        SPID[$s]=$!
        wait_port "${MPORT[$s]}" || die "mosquitto did not open its port"
        ;;
    cyan* | template)
        case $s in cyan1* | template) shards=1 ;; cyan2*) shards=2 ;; esac
        case $s in *m) extra=(--isolate_devices=false --allow_anonymous=true) ;; esac
        [ "$shards" = 1 ] && core=(taskset -c 0)
        HPORT[$s]=$(free_port)
        dir=$WORK/data-$s
        [ "$s" = template ] || { cp -r "$WORK/data-template" "$dir" && rm -rf "$dir"/shard-* "$dir"/shards "$dir"/run; }
        "${core[@]}" "$CYAN" --data_dir="$dir" --mqtt_listen="127.0.0.1:${MPORT[$s]}" \
            --http_listen="127.0.0.1:${HPORT[$s]}" --shards=$shards --ops_listen= --coap_listen= \
            --coaps_listen= --log_level=warn --sys_interval=0 "${extra[@]}" >>"$WORK/$s.log" 2>&1 &
        SPID[$s]=$!
        wait_cyan "$dir" "${SPID[$s]}" || { tail -n 20 "$WORK/$s.log" >&2; die "$s did not get ready"; }
        wait_port "${HPORT[$s]}" || die "$s did not open its HTTP port"
        ;;
    esac
}

# ---- the devices -------------------------------------------------------------------
mkdir -p "$WORK/data-template"
start_server template
"$LOAD" --create "$DEVICES" --out "$WORK/devices.txt" --http "127.0.0.1:${HPORT[template]}" \
    --token_file "$WORK/data-template/admin-token" || die "making $DEVICES devices failed"
stop_server template
# the same devices for mosquitto: "id:secret" lines, hashed in place
awk 'NF == 2 { print $1 ":" $2 }' "$WORK/devices.txt" >"$WORK/mosq.passwd"
chmod 600 "$WORK/mosq.passwd"
mosquitto_passwd -U "$WORK/mosq.passwd" || die "mosquitto_passwd -U failed"

# ---- servers -----------------------------------------------------------------------
declare -A ROW_SERVER=([api_cyan1]=cyan1 [api_cyan2]=cyan2 [mqtt_cyan1]=cyan1m [mqtt_cyan2]=cyan2m [mqtt_mosq]=mosq)
SERVERS=()
for row in $ROWS; do
    [ -n "${ROW_SERVER[$row]:-}" ] || die "unknown row $row (rows: $ALL_ROWS)"
    s=${ROW_SERVER[$row]}
    [[ " ${SERVERS[*]} " == *" $s "* ]] || SERVERS+=("$s")
done
log "starting ${SERVERS[*]}; work folder $WORK"
for s in "${SERVERS[@]}"; do start_server "$s"; done

run_row() { # ROW C ROUND
    local row=$1 c=$2 round=$3 s=${ROW_SERVER[$1]} out rc=0 args=() gen=()
    if ! kill -0 "${SPID[$s]}" 2>/dev/null; then
        log "$s died; restarting it"
        echo "CRASH round=$round server=$s" >>"$RESULTS"
        stop_server "$s"
        start_server "$s"
    fi
    args=(--mqtt "127.0.0.1:${MPORT[$s]}" --devices_file "$WORK/devices.txt" --devices "$DEVICES"
        --conns "$c" --seconds "$SECONDS_RUN" --warmup "$WARMUP" --server "$row" --server_pid "${SPID[$s]}")
    case $row in
    api_*) args+=(--mode api --http "127.0.0.1:${HPORT[$s]}" --token_file "$WORK/data-$s/admin-token") ;;
    *) args+=(--mode mqtt) ;;
    esac
    case $s in cyan2*) ;; *) gen=(taskset -c 1) ;; esac
    out=$(nice -n 5 "${gen[@]}" "$LOAD" "${args[@]}" 2>>"$WORK/load.log") || rc=$?
    bench_record "$rc" "$out" "$row C=$c" "FAIL round=$round row=$row conns=$c rc=$rc" \
        "$WORK/load.log" 'calls_per_s=[^ ]* p50_us=[^ ]* p99_us=[^ ]* p999_us=[^ ]*\|server_cpu_us_per_call=[^ ]*'
}

T0=$(date +%s)
log "RUNS=$RUNS SECONDS_RUN=$SECONDS_RUN WARMUP=$WARMUP CONNS=\"$CONNS\" DEVICES=$DEVICES"
read -ra RA <<<"$ROWS"
for ((round = 1; round <= RUNS; round++)); do
    log "round $round/$RUNS"
    n=${#RA[@]}
    for c in $CONNS; do
        for ((i = 0; i < n; i++)); do
            run_row "${RA[$(((i + round - 1) % n))]}" "$c" "$round"
        done
    done
done

# ---- syscalls per call (untimed: strace stops the server at each one) ---------------
# api_load makes its devices and callers ready, then waits for a file;
# strace attaches to every process of the server, the file appears, and
# exactly STRACE_COUNT calls are made and answered before strace stops.
strace_row() { # ROW C
    local row=$1 c=$2 s=${ROW_SERVER[$1]} f sp p lp rc=0 args=() largs=() calls i
    f=$WORK/strace-$row.txt
    rm -f "$WORK/go"
    largs=(--mqtt "127.0.0.1:${MPORT[$s]}" --devices_file "$WORK/devices.txt" --devices "$DEVICES"
        --conns "$c" --count "$STRACE_COUNT" --warmup 0 --seconds 60 --start_file "$WORK/go"
        --server "strace_$row")
    case $row in
    api_*) largs+=(--mode api --http "127.0.0.1:${HPORT[$s]}" --token_file "$WORK/data-$s/admin-token") ;;
    *) largs+=(--mode mqtt) ;;
    esac
    : >"$WORK/strace-load.log"
    nice -n 5 "$LOAD" "${largs[@]}" >/dev/null 2>"$WORK/strace-load.log" &
    lp=$!
    for i in $(seq 1 300); do
        grep -q "ready; waiting" "$WORK/strace-load.log" && break
        kill -0 "$lp" 2>/dev/null || break
        sleep 0.1
    done
    for p in ${SPID[$s]} $(pgrep -P "${SPID[$s]}" 2>/dev/null || true); do args+=(-p "$p"); done
    if [ "${STRACE_FILES:-0}" = 1 ]; then # instead of counts: which files it reads and writes
        strace -f -y -e trace=pread64,pwrite64,fsync,fdatasync -o "$WORK/files-$row.txt" "${args[@]}" 2>>"$WORK/strace.log" &
    else
        strace -c -f -o "$f" "${args[@]}" 2>>"$WORK/strace.log" &
    fi
    sp=$!
    sleep 1
    touch "$WORK/go"
    wait "$lp" || rc=$?
    kill -INT "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
    calls=$(awk '$NF=="total" {print $4}' "$f" 2>/dev/null || true)
    if [ "$rc" = 0 ] && [ -n "$calls" ]; then
        echo "SYSCALLS row=$row syscalls=$calls calls=$STRACE_COUNT" >>"$RESULTS"
        log "    $row: $(awk -v c="$calls" -v n="$STRACE_COUNT" 'BEGIN{printf "%.1f", c/n}') syscalls per call"
    else
        log "syscall count failed for $row (exit $rc; $WORK/strace-load.log)"
        echo "FAIL strace row=$row rc=$rc" >>"$RESULTS"
    fi
}
if [ "$STRACE" = 1 ] && command -v strace >/dev/null; then
    log "syscalls per call (strace -c, untimed)"
    for row in $ROWS; do strace_row "$row" 8; done
fi
T1=$(date +%s)
for s in "${SERVERS[@]}"; do stop_server "$s"; done

# ---- table -------------------------------------------------------------------------
ELAPSED=$((T1 - T0))
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
KERNEL=$(uname -r)
NPROC=$(nproc)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- src 2>/dev/null | head -n 1 | wc -l)
export RESULTS RUNS SECONDS_RUN WARMUP CONNS DEVICES DOC ROOT WORK ROWS STRACE_COUNT
export ELAPSED DATE LOADAVG KERNEL NPROC COMMIT DIRTY
/usr/bin/python3 bench/api_load_table.py
