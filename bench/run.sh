#!/bin/bash
# bench/run.sh: cyan and mosquitto side by side, on the same workloads, alternating.
#
# Builds cyan (RelWithDebInfo) and the load generator bench/cyan_bench.c,
# starts cyan with 1 shard, cyan with 2 shards and Debian's mosquitto, each
# pinned to core 0 (cyan's shards inherit the supervisor's affinity), and
# drives them from core 1. Every workload runs RUNS times per server, the
# servers in rotating order inside each round, and the table of medians goes
# to stdout and into docs/benchmarks.md between the bench:begin/end markers.
#
# Environment:
#   RUNS=5        runs per workload and server (median taken)
#   DURATION=2    measured seconds per throughput/latency/storm run
#   WARMUP=0.5    seconds of traffic before measuring
#   QUICK=1       smoke run: RUNS=1, DURATION=1, 2,000 idle connections
#   UNPINNED=1    also run cyan 2 shards on both cores (informative column)
#   BUSY_POLL=50  latency phase: also cyan 1 shard with --busy_poll_us=50 (its own
#                 column; 0 to skip)
#   STRACE=1      syscalls per message (perf stat tracepoint count, strace -c breakdown; 0 to skip)
#   DOC=1         write docs/benchmarks.md (0: only print; QUICK=1 defaults to 0)
#   BUILD=build   build folder
#   PORT_BASE=    first of 7 TCP ports on 127.0.0.1 (default: picked free)
#   PHASES="throughput latency storm idle syscalls tls"   the phases to run
#   KEEP=1        keep the work folder (results, logs, strace tables)
#
# Phases: (1) throughput: one-to-one QoS 0 16 B (batched, and one message per
# write) and 1 KiB, QoS 1, fan-out 1->100 and 1->1000, fan-in 1000->1, with
# cyan 2 shards on both cores as an extra, informative column; (2) latency at
# half of mosquitto's one-to-one maximum (measured again with set_tcp_nodelay,
# its setting for latency), and cyan 1 shard with busy_poll_us beside them;
# (3) connect storm; (4) 10,000 idle connections
# against a freshly started server each run; (5) syscalls per routed message:
# counted with perf stat (raw_syscalls tracepoint) when perf works, and once
# with strace -c -f for the breakdown; (6) tls: MQTT over TLS, one-to-one
# QoS 0 16 B and the connect storm with a full handshake per connection,
# every server presenting the same certificate (EC P-256, made here with the
# openssl command) and the generator verifying it. Takes about 12 minutes.
#
# Everything it starts is stopped on exit (trap), whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROOT=$PWD

RUNS=${RUNS:-5}
DURATION=${DURATION:-2}
WARMUP=${WARMUP:-0.5}
IDLE_CONNS=${IDLE_CONNS:-10000}
UNPINNED=${UNPINNED:-1}
BUSY_POLL=${BUSY_POLL:-50}
STRACE=${STRACE:-1}
PHASES=${PHASES:-throughput latency storm idle syscalls tls}
BUILD=${BUILD:-build}
if [ "${QUICK:-0}" = 1 ]; then
    DOC=${DOC:-0}
    RUNS=1
    DURATION=1
    WARMUP=0.2
    IDLE_CONNS=${IDLE_CONNS_QUICK:-2000}
fi
DOC=${DOC:-1}
PAIRS=8
STRACE_RUNS=$(( RUNS < 3 ? RUNS : 3 ))
COUNT_TOOL=none
LAT_RATE=0
MOSQ_MAX=0
SERVER_CORE=0
GEN_CORE=1
MOSQ=/usr/sbin/mosquitto

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- build -----------------------------------------------------------------
build() {
    local i
    for i in 1 2 3 4 5; do
        if cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
            cmake --build "$BUILD" -j2 --target cyan cyan_bench >"$BUILD/bench-build.log" 2>&1; then
            return 0
        fi
        log "build failed (attempt $i; someone may be mid-edit), retrying in 60 s"
        tail -n 20 "$BUILD/bench-build.log" >&2 || true
        sleep 60
    done
    log "build failed 5 times, giving up"
    exit 1
}
log "building cyan and cyan_bench in $BUILD/ (RelWithDebInfo)"
build
CYAN=$ROOT/$BUILD/cyan
GEN=$ROOT/$BUILD/cyan_bench
[ -x "$MOSQ" ] || { log "mosquitto not installed ($MOSQ); run scripts/deps.sh bench"; exit 1; }
command -v taskset >/dev/null || { log "taskset missing (util-linux)"; exit 1; }
case " $PHASES " in *" tls "*)
    command -v openssl >/dev/null || { log "the openssl command is missing (package openssl)"; exit 1; } ;;
esac

# ---- work folder, cleanup ---------------------------------------------------
bench_workdir bench
STRACE_PID=""
bench_on_exit() {
    if [ -n "$STRACE_PID" ]; then kill "$STRACE_PID" 2>/dev/null; wait "$STRACE_PID" 2>/dev/null; fi
}

if [ -n "${PORT_BASE:-}" ]; then
    P_CYAN1=$PORT_BASE; P_CYAN2=$((PORT_BASE + 1)); P_MOSQ=$((PORT_BASE + 2)); P_CYAN2U=$((PORT_BASE + 3))
    P_CYAN1T=$((PORT_BASE + 4)); P_CYAN2T=$((PORT_BASE + 5)); P_MOSQT=$((PORT_BASE + 6))
    P_CYAN1B=$((PORT_BASE + 7))
else
    P_CYAN1=$(free_port); P_CYAN2=$(free_port); P_MOSQ=$(free_port); P_CYAN2U=$(free_port)
    P_CYAN1T=$(free_port); P_CYAN2T=$(free_port); P_MOSQT=$(free_port); P_CYAN1B=$(free_port)
fi
# TLS=1 (phase 6): servers start with their TLS listener, port_of names it
# and the generator speaks TLS to it
TLS=0

# ---- device credentials -----------------------------------------------------
mkdir -p "$WORK/template"
DEV_OUT=$("$CYAN" device add bench-device --data_dir="$WORK/template" 2>&1)
DEV_ID=$(printf '%s\n' "$DEV_OUT" | sed -n 's/^id: //p')
DEV_SECRET=$(printf '%s\n' "$DEV_OUT" | sed -n 's/^secret: //p')
[ -n "$DEV_ID" ] && [ -n "$DEV_SECRET" ] || { log "device add failed: $DEV_OUT"; exit 1; }

# ---- servers ----------------------------------------------------------------
# Both check the same username and password at every CONNECT: cyan as its
# device registry does (HMAC-SHA256 of a random secret), mosquitto from a
# password_file written by mosquitto_passwd (its default hash).
mosquitto_passwd -c -b "$WORK/mosq.passwd" "$DEV_ID" "$DEV_SECRET" ||
    { log "mosquitto_passwd failed (it comes with the mosquitto package)"; exit 1; }
chmod 600 "$WORK/mosq.passwd"
cat >"$WORK/mosquitto.conf" <<EOF
listener $P_MOSQ 127.0.0.1
allow_anonymous false
password_file $WORK/mosq.passwd
persistence false
max_queued_messages 1000
max_inflight_messages 32
log_type error
log_type warning
EOF
# cyan sets TCP_NODELAY on every client socket; mosquitto does so only with
# set_tcp_nodelay. Nagle's algorithm gains mosquitto throughput and costs it
# milliseconds of latency, so mosquitto runs with its default (Nagle on) for
# throughput, storm, memory and syscalls, and with set_tcp_nodelay for latency:
# its better setting for each.
# As root, mosquitto would drop to its own user, which cannot read the
# password file in the private work folder.
if [ "$(id -u)" = 0 ]; then echo "user root" >>"$WORK/mosquitto.conf"; fi
cp "$WORK/mosquitto.conf" "$WORK/mosquitto-nodelay.conf"
echo "set_tcp_nodelay true" >>"$WORK/mosquitto-nodelay.conf"
MOSQ_CONF=$WORK/mosquitto.conf

port_of() {
    if [ "$TLS" = 1 ]; then
        case $1 in cyan1) echo "$P_CYAN1T" ;; cyan2) echo "$P_CYAN2T" ;; mosq) echo "$P_MOSQT" ;; esac
        return
    fi
    case $1 in
    cyan1) echo "$P_CYAN1" ;; cyan2) echo "$P_CYAN2" ;; cyan2u) echo "$P_CYAN2U" ;; mosq) echo "$P_MOSQ" ;;
    cyan1b) echo "$P_CYAN1B" ;;
    esac
}
# server name -> process ids (the supervisor and its shards for cyan)
server_pids() {
    local pid=${SPID[$1]:-}
    [ -n "$pid" ] || return 0
    echo "$pid"
    pgrep -P "$pid" 2>/dev/null || true
}
server_alive() {
    local pid=${SPID[$1]:-}
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
# start_server NAME: exits the run if the server does not open its port,
# or returns 1 with SOFT_START=1 (the TLS phase: a cyan whose TLS listener
# does not come up loses its TLS rows, not the run).
start_server() {
    local s=$1 port dir shards cores tls_args=() extra=()
    port=$(port_of "$s")
    case $s in
    mosq)
        taskset -c $SERVER_CORE "$MOSQ" -c "$MOSQ_CONF" >>"$WORK/mosq.log" 2>&1 &
        SPID[$s]=$!
        ;;
    cyan*)
        case $s in cyan1) shards=1; cores=$SERVER_CORE ;; cyan2) shards=2; cores=$SERVER_CORE ;; cyan2u) shards=2; cores=0,1 ;;
        cyan1b) shards=1; cores=$SERVER_CORE; extra=(--busy_poll_us="$BUSY_POLL") ;; esac
        dir=$WORK/data-$s
        [ "$TLS" = 1 ] && tls_args=(--mqtts_listen="127.0.0.1:$port" --tls_cert="$TLS_DIR/server.pem"
            --tls_key="$TLS_DIR/server.key")
        rm -rf "$dir"
        cp -r "$WORK/template" "$dir"
        # A plain broker, as mosquitto is: every connection uses the one
        # bench device's credentials with its own client id and topics
        # (isolate_devices=false), and no HTTP API (make bench-api measures it).
        taskset -c "$cores" "$CYAN" --data_dir="$dir" --mqtt_listen="127.0.0.1:$(TLS=0 port_of "$s")" \
            --shards=$shards --ops_listen= --isolate_devices=false --http_listen= --coap_listen= --coaps_listen= \
            --log_level=warn --sys_interval=0 "${tls_args[@]}" "${extra[@]}" >>"$WORK/$s.log" 2>&1 &
        SPID[$s]=$!
        local i n
        for i in $(seq 1 100); do
            n=$( (pgrep -P "${SPID[$s]}" 2>/dev/null || true) | wc -l)
            [ "$n" -ge "$shards" ] && break
            server_alive "$s" || break # refused its settings: no use waiting
            sleep 0.1
        done
        ;;
    esac
    if ! server_alive "$s" || ! wait_port "$port"; then
        log "$s did not open port $port"; tail -n 20 "$WORK/$s.log" >&2 || true
        if [ "${SOFT_START:-0}" = 1 ]; then stop_server "$s"; return 1; fi
        exit 1
    fi
    sleep 0.5 # shards link up over the bus, mosquitto settles
}
ensure_server() {
    server_alive "$1" && return 0
    if [ -n "${SPID[$1]:-}" ]; then
        log "$1 died; restarting it"; echo "CRASH server=$1" >>"$RESULTS"; stop_server "$1"
    fi
    start_server "$1" || return 1
}
# CPU seconds (user+system) used so far by a server's processes
server_cpu() {
    local t=0 p v
    for p in $(server_pids "$1"); do
        v=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + v))
    done
    awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t/hz}'
}

auth_args() {
    echo --user "$DEV_ID" --pass "$DEV_SECRET"
}

# ---- one generator run --------------------------------------------------------
# gen SERVER WORKLOAD ARGS... : runs the generator pinned to the generator core,
# appends its RESULT lines (with round and server CPU) to $RESULTS.
ROUND=0
gen() {
    local s=$1 w=$2; shift 2
    local port c0 c1 out rc=0
    port=$(port_of "$s")
    local t0 t1
    c0=$(server_cpu "$s")
    t0=$(date +%s.%N)
    # shellcheck disable=SC2046
    out=$(taskset -c $GEN_CORE "$GEN" --port "$port" $(auth_args "$s") --server "$s" --workload "$w" \
        --server_pid "${SPID[$s]}" --duration "$DURATION" --warmup "$WARMUP" "$@" 2>>"$WORK/gen.log") || rc=$?
    t1=$(date +%s.%N)
    c1=$(server_cpu "$s")
    if [ "$rc" != 0 ] || [ -z "$out" ]; then
        log "run failed: $w on $s (exit $rc); see $WORK/gen.log"
        echo "FAIL round=$ROUND workload=$w server=$s rc=$rc" >>"$RESULTS"
        tail -n 5 "$WORK/gen.log" >&2 || true
    fi
    printf '%s\n' "$out" | grep '^RESULT' |
        sed "s/^RESULT /RESULT round=$ROUND server_cpu_s=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b-a}') wall_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') /" >>"$RESULTS" || true
    printf '%s\n' "$out" | grep '^RESULT' | head -n 1 | awk '{print "    " $0}' | cut -c1-160 >&2 || true
}
# rotate the order of the servers each round, so no server always goes first
order() {
    local r=$1; shift
    local a=("$@") n=$# i
    for ((i = 0; i < n; i++)); do echo "${a[$(((i + r) % n))]}"; done
}

SERVERS=(cyan1 cyan2 mosq)
TP_SERVERS=(cyan1 cyan2 mosq)
[ "$UNPINNED" = 1 ] && TP_SERVERS+=(cyan2u)
phase() { case " $PHASES " in *" $1 "*) return 0 ;; esac; return 1; }
T0=$(date +%s)
log "RUNS=$RUNS DURATION=${DURATION}s; servers on core $SERVER_CORE, generator on core $GEN_CORE; work folder $WORK"

# ---- phase 1: throughput --------------------------------------------------------
declare -A TP_ARGS=(
    [o2o_q0_16]="--mode o2o --pairs $PAIRS --qos 0 --size 16"
    [o2o_q0_16_single]="--mode o2o --pairs $PAIRS --qos 0 --size 16 --batch 1"
    [o2o_q0_1k]="--mode o2o --pairs $PAIRS --qos 0 --size 1024"
    [o2o_q1_16]="--mode o2o --pairs $PAIRS --qos 1 --size 16 --inflight 32 --window 512"
    [fanout_100]="--mode fanout --subs 100 --size 16 --window 64"
    [fanout_1000]="--mode fanout --subs 1000 --size 16 --window 16"
    [fanin_1000]="--mode fanin --pubs 1000 --size 16 --window 16"
)
TP_ORDER=(o2o_q0_16 o2o_q0_16_single o2o_q0_1k o2o_q1_16 fanout_100 fanout_1000 fanin_1000)
phase throughput && for s in "${TP_SERVERS[@]}"; do start_server "$s"; done
phase throughput && for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
    log "throughput round $ROUND/$RUNS"
    for w in "${TP_ORDER[@]}"; do
        for s in $(order "$ROUND" "${TP_SERVERS[@]}"); do
            ensure_server "$s"
            # shellcheck disable=SC2086
            gen "$s" "$w" ${TP_ARGS[$w]}
        done
    done
done
stop_server cyan2u

# ---- phase 2: latency at half of mosquitto's maximum ------------------------------------
# mosquitto runs with set_tcp_nodelay here (see above), which lowers its
# throughput; its maximum is measured again in that setting, one message per
# write (the shape of the paced load), and the rate is half of that median.
median_of() {
    awk -v w="$1" -v s="$2" '$1=="RESULT" {delete f; for(i=2;i<=NF;i++){split($i,kv,"="); f[kv[1]]=kv[2]} if(f["workload"]==w && f["server"]==s) print f["value"]}' "$RESULTS" |
        sort -g | awk '{a[NR]=$1} END{if(NR==0) print 0; else if(NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}
if phase latency; then
    stop_server mosq
    MOSQ_CONF=$WORK/mosquitto-nodelay.conf
    ensure_server mosq
    for ((ROUND = 1; ROUND <= STRACE_RUNS; ROUND++)); do
        gen mosq latency_calibration --mode o2o --pairs $PAIRS --qos 0 --size 16 --batch 1
    done
    MOSQ_MAX=$(median_of latency_calibration mosq)
    LAT_RATE=$(awk -v m="$MOSQ_MAX" 'BEGIN{r=int(m/2/1000)*1000; if(r<1000) r=1000; print r}')
    log "latency at $LAT_RATE msg/s (half of mosquitto's one-to-one QoS 0 median $MOSQ_MAX, set_tcp_nodelay, one message per write)"
fi
LAT_SERVERS=("${SERVERS[@]}")
[ "$BUSY_POLL" != 0 ] && LAT_SERVERS+=(cyan1b)
phase latency && for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
    for s in $(order "$ROUND" "${LAT_SERVERS[@]}"); do
        ensure_server "$s"
        gen "$s" latency --mode latency --pairs $PAIRS --qos 0 --size 16 --rate "$LAT_RATE"
    done
done

# ---- phase 3: connect storm -----------------------------------------------------------
if phase latency; then stop_server mosq; stop_server cyan1b; MOSQ_CONF=$WORK/mosquitto.conf; fi
phase storm && log "connect storm"
phase storm && for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
    for s in $(order "$ROUND" "${SERVERS[@]}"); do
        ensure_server "$s"
        gen "$s" storm --mode storm --concurrency 64
    done
done
for s in "${SERVERS[@]}"; do stop_server "$s"; done

# ---- phase 4: idle connections, memory, on a fresh server each run ---------------------
phase idle && log "$IDLE_CONNS idle connections"
phase idle && for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
    for s in $(order "$ROUND" "${SERVERS[@]}"); do
        start_server "$s"
        sleep 0.5
        gen "$s" idle --mode idle --conns "$IDLE_CONNS" --keepalive 3600 --settle 1 --server_pid "${SPID[$s]}"
        stop_server "$s"
    done
done

# ---- phase 5: syscalls per routed message ----------------------------------------------
# Every syscall of every server process (cyan: supervisor and shards) while
# the generator routes a fixed number of messages, over the messages the
# subscribers received. Two loads: batched (publishers write up to 256
# messages per write(2)) and paced (5,000 msg/s, each message alone).
# Counted with the kernel's raw_syscalls:sys_enter tracepoint (perf stat),
# which does not slow the server down, when perf works here; then once per
# server with strace -c -f at 500 msg/s for the per-syscall breakdown (strace
# stops the server at every call, ~100 us each on this VM, so it runs slowly
# and only on a paced load that it cannot distort). Without perf, strace -c
# does the counting too.
USE_PERF=0
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter -x, -o /dev/null true 2>/dev/null; then
    USE_PERF=1
fi
gen_sys() { # SERVER VARIANT -> generator output
    local s=$1 variant=$2
    case $variant in
    batched) set -- --mode o2o --count 200000 --window 256 ;;
    paced) set -- --mode latency --rate 5000 --count 10000 ;;
    strace) set -- --mode latency --rate 500 --count 1000 ;;
    esac
    # shellcheck disable=SC2046
    taskset -c $GEN_CORE "$GEN" --port "$(port_of "$s")" $(auth_args "$s") --server "$s" \
        --workload "sys_$variant" --pairs $PAIRS --size 16 --warmup 0 --duration 60 --drain 5 "$@" \
        2>>"$WORK/gen.log" || true
}
# count_sys SERVER VARIANT TOOL: one counted run, appends a RESULT line
count_sys() {
    local s=$1 variant=$2 tool=$3 f out recv calls v pids i
    f=$WORK/sys-$tool-$s-$variant-$ROUND.txt
    pids=$(server_pids "$s" | paste -sd, -)
    if [ "$tool" = perf ]; then
        taskset -c $GEN_CORE perf stat -e raw_syscalls:sys_enter -x, -o "$f" -p "$pids" 2>/dev/null &
        STRACE_PID=$!
        sleep 0.3
    else
        local args=()
        for i in ${pids//,/ }; do args+=(-p "$i"); done
        taskset -c $GEN_CORE strace -c -f -o "$f" "${args[@]}" 2>"$WORK/strace-attach.log" &
        STRACE_PID=$!
        for i in $(seq 1 50); do
            [ "$(grep -c 'attached' "$WORK/strace-attach.log" 2>/dev/null || true)" -ge "${#args[@]}" ] && break
            sleep 0.1
        done
        sleep 0.3
    fi
    out=$(gen_sys "$s" "$variant")
    kill -INT "$STRACE_PID" 2>/dev/null || true
    wait "$STRACE_PID" 2>/dev/null || true
    STRACE_PID=""
    recv=$(printf '%s\n' "$out" | grep -o 'received=[0-9]*' | head -n 1 | cut -d= -f2)
    if [ "$tool" = perf ]; then
        calls=$(awk -F, '$3 ~ /raw_syscalls:sys_enter/ {print $1}' "$f" 2>/dev/null | head -n 1)
    else
        calls=$(awk '$NF=="total" {print $4}' "$f" 2>/dev/null || true)
    fi
    local w=sys_$variant
    if [ -n "$recv" ] && [ "${recv:-0}" -gt 0 ] && [ -n "$calls" ] && [ "$calls" -eq "$calls" ] 2>/dev/null; then
        v=$(awk -v c="$calls" -v r="$recv" 'BEGIN{printf "%.3f", c/r}')
        echo "RESULT round=$ROUND workload=$w server=$s value=$v unit=syscalls/msg tool=$tool calls=$calls received=$recv" >>"$RESULTS"
        printf '    %s %s %s syscalls/msg (%s, %s calls, %s msgs)\n' "$s" "$w" "$v" "$tool" "$calls" "$recv" >&2
    else
        log "syscall count failed for $s $variant ($tool)"
        echo "FAIL round=$ROUND workload=$w server=$s" >>"$RESULTS"
    fi
}
if [ "$STRACE" = 1 ] && phase syscalls; then
    COUNT_TOOL=strace
    [ "$USE_PERF" = 1 ] && COUNT_TOOL=perf
    log "syscalls per message ($COUNT_TOOL), $STRACE_RUNS runs each; then strace -c once per server"
    for s in "${SERVERS[@]}"; do start_server "$s"; done
    for ((ROUND = 1; ROUND <= STRACE_RUNS; ROUND++)); do
        for variant in batched paced; do
            for s in $(order "$ROUND" "${SERVERS[@]}"); do
                ensure_server "$s"
                count_sys "$s" "$variant" "$COUNT_TOOL"
            done
        done
    done
    ROUND=1
    for s in "${SERVERS[@]}"; do
        ensure_server "$s"
        count_sys "$s" strace strace
        cp "$WORK/sys-strace-$s-strace-1.txt" "$WORK/strace-$s.txt" 2>/dev/null || true
    done
    for s in "${SERVERS[@]}"; do stop_server "$s"; done
fi

# ---- phase 6: MQTT over TLS -------------------------------------------------------------
# One CA and one server certificate for 127.0.0.1, both EC P-256 (ECDSA with
# SHA-256), made here with the openssl command; every server presents the
# same certificate and key, and the generator verifies it against the CA for
# 127.0.0.1 (--tls). mosquitto gets its throughput settings (above) and a
# TLS listener; cyan its --mqtts_listen with tls_cert and tls_key, beside its
# plain listener. Clients authenticate as in the plain rows. The storm makes
# a full handshake per connection: the generator sends no session ticket
# and keeps no session, and checks that no handshake was resumed.
make_tls_certs() {
    local d=$TLS_DIR
    mkdir -p "$d"
    {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 2 \
            -subj "/CN=cyan bench CA" -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$d/ca.key" -out "$d/ca.pem" &&
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
                -subj "/CN=127.0.0.1" -keyout "$d/server.key" -out "$d/server.csr" &&
            printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
                "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1" >"$d/server.ext" &&
            openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
                -days 2 -sha256 -extfile "$d/server.ext" -out "$d/server.pem" &&
            openssl verify -CAfile "$d/ca.pem" -verify_ip 127.0.0.1 "$d/server.pem"
    } >"$d/openssl.log" 2>&1 || { log "making the TLS certificates failed:"; cat "$d/openssl.log" >&2; exit 1; }
}
# log what server NAME negotiated, once per run (from its first TLS RESULT)
declare -A TLS_SEEN=()
log_tls() {
    local s=$1 what
    [ -n "${TLS_SEEN[$s]:-}" ] && return 0
    what=$(grep "^RESULT .* server=$s .* tls=" "$RESULTS" | grep -o 'tls=[^ ]* cipher=[^ ]* group=[^ ]*' | head -n 1)
    [ -n "$what" ] || return 0
    TLS_SEEN[$s]=1
    log "$s negotiated $what (certificate EC P-256, verified for 127.0.0.1)"
}
TLS_DIR=$WORK/tls
if phase tls; then
    make_tls_certs
    # (mosquitto.conf already keeps it root, as root: see above)
    { sed "s/^listener .*/listener $P_MOSQT 127.0.0.1/" "$WORK/mosquitto.conf"
      printf '%s\n' "certfile $TLS_DIR/server.pem" "keyfile $TLS_DIR/server.key"; } >"$WORK/mosquitto-tls.conf"
    MOSQ_CONF=$WORK/mosquitto-tls.conf
    TLS_SERVERS=(cyan1 cyan2 mosq)
    # (not `cyan config | grep -q`: grep leaving early fails the pipe under pipefail)
    if ! grep -q '^mqtts_listen' <<<"$("$CYAN" config 2>/dev/null || true)"; then
        TLS_SERVERS=(mosq)
        log "cyan has no mqtts_listen in this build: its TLS rows are skipped"
        echo "NOTE cyan has no mqtts_listen in this build: its TLS rows were skipped" >>"$RESULTS"
    fi
    TLS=1
    TLS_ARGS=(--tls "$TLS_DIR/ca.pem")
    declare -A TLS_DOWN=()
    log "MQTT over TLS: one-to-one QoS 0 16 B, connect storm with full handshakes (${TLS_SERVERS[*]})"
    for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
        for w in o2o_q0_16_tls storm_tls; do
            for s in $(order "$ROUND" "${TLS_SERVERS[@]}"); do
                [ -n "${TLS_DOWN[$s]:-}" ] && continue
                if ! SOFT_START=1 ensure_server "$s"; then
                    TLS_DOWN[$s]=1
                    log "$s: no TLS listener came up; its TLS rows are skipped (see $WORK/$s.log)"
                    echo "FAIL round=$ROUND workload=$w server=$s rc=no-tls-listener" >>"$RESULTS"
                    continue
                fi
                case $w in
                o2o_q0_16_tls) gen "$s" "$w" --mode o2o --pairs $PAIRS --qos 0 --size 16 "${TLS_ARGS[@]}" ;;
                storm_tls) gen "$s" "$w" --mode storm --concurrency 64 "${TLS_ARGS[@]}" ;;
                esac
                log_tls "$s"
            done
        done
    done
    for s in "${TLS_SERVERS[@]}"; do stop_server "$s"; done
    TLS=0
    MOSQ_CONF=$WORK/mosquitto.conf
fi

T1=$(date +%s)
log "done in $((T1 - T0)) s; results in $RESULTS"

# ---- table -------------------------------------------------------------------------------
set +o pipefail # mosquitto -h exits 3; head may cut a pipe short
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
CYAN_VERSION=$("$CYAN" --version 2>&1 | head -n 1)
MOSQ_VERSION=$("$MOSQ" -h 2>&1 | head -n 1)
export RESULTS RUNS DURATION WARMUP IDLE_CONNS LAT_RATE MOSQ_MAX PAIRS UNPINNED CPU_MODEL CYAN_VERSION \
    MOSQ_VERSION STRACE_RUNS DOC WORK COUNT_TOOL BUSY_POLL
export NPROC=$(nproc) KERNEL=$(uname -r) DATE=$(date -u '+%Y-%m-%d %H:%M UTC') ELAPSED=$((T1 - T0))
export LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg) QUICK=${QUICK:-0}
export COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
export DIRTY=$(git status --porcelain -- src 2>/dev/null | head -n 1 | wc -l)
/usr/bin/python3 "$ROOT/bench/table.py"
