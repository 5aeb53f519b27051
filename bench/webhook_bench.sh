#!/bin/bash
# bench/webhook_bench.sh: device events delivered to a webhook per second,
# and the latency from the device's PUBACK (and from its PUBLISH) to the
# receiver's receipt (issue 12, "Benchmark").
#
# Builds cyan and bench/whsink.c (RelWithDebInfo), registers NDEV devices,
# starts cyan (SHARDS shards, as deployed: isolate_devices on) with
# webhook_allow_private=true, starts whsink (answers 204 at once, keep-alive,
# writes one line per request: arrival time, webhook-id, send mark), creates
# one webhook {"event": "bench", "url": "http://127.0.0.1:<sink>/hook/{{device_id}}"}
# with the admin token (data_dir/admin-token, full scope) and runs two
# phases, each with a fresh whsink on the same port:
#   throughput  every device publishes QoS 1 events on
#               devices/<id>/events/bench as fast as INFLIGHT un-acked
#               messages per device allow, for DURATION seconds; then the
#               sink drains (until IDLE seconds pass without a request, at
#               most DRAIN). events/s = distinct events received over the
#               sink's active window (first to last receipt).
#   latency     the same, paced at LAT_RATE events/s in total (default: half
#               of the throughput phase's figure); p50/p99/p99.9 of
#               receipt - PUBACK and receipt - publish, without the first
#               WARMUP seconds.
# The publisher (a Python raw-socket MQTT 3.1.1 client, written to the work
# folder) puts "sent_us=<CLOCK_REALTIME us>.<phase>.<conn>.<seq>" in each
# payload and logs each message's send and PUBACK times; whsink finds the
# mark in the default JSON body ("data"); one script joins both logs.
# Every acknowledged event must arrive (at least once): any missing one
# fails the run (exit 2) after the figures are printed.
#
# Part of `make bench` (and alone: `make bench-webhooks`). A cyan without
# POST /v1/webhooks makes the script stop there with exit 3.
#
# Environment:
#   SHARDS=2 NDEV=8 INFLIGHT=32   cyan's shards; devices (one connection each); un-acked per device
#   DURATION=3 WARMUP=0.5         seconds of publishing per phase; seconds left out of the latency
#   DRAIN=30 IDLE=2               at most this long for the sink to get everything after publishing
#   LAT_RATE=                     events/s of the latency phase (default: half the measured rate)
#   CONCURRENCY=                  cyan's webhook_concurrency (default: cyan's own)
#   CYAN_CORES= LOAD_CORES=       taskset lists for cyan and for the sink + publisher (default: unpinned)
#   PHASES="throughput latency"   BUILD=build   KEEP=1 (keep the work folder)
#
# Everything it starts is stopped on exit (trap), whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROOT=$PWD

SHARDS=${SHARDS:-2}
NDEV=${NDEV:-8}
INFLIGHT=${INFLIGHT:-32}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-0.5}
DRAIN=${DRAIN:-30}
IDLE=${IDLE:-2}
LAT_RATE=${LAT_RATE:-}
CONCURRENCY=${CONCURRENCY:-}
CYAN_CORES=${CYAN_CORES:-}
LOAD_CORES=${LOAD_CORES:-}
PHASES=${PHASES:-throughput latency}
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
PY=/usr/bin/python3

log() { printf '%s webhook-bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "$*"
    exit 1
}
# Prefixes that pin a command (empty: unpinned). Arrays, not a function: a
# function run with & is a subshell, and $! would not be the server's pid.
PIN_CYAN=()
PIN_LOAD=()
[ -n "$CYAN_CORES" ] && PIN_CYAN=(taskset -c "$CYAN_CORES")
[ -n "$LOAD_CORES" ] && PIN_LOAD=(taskset -c "$LOAD_CORES")

# ---- build -----------------------------------------------------------------------
bench_build webhook-bench cyan whsink
CYAN=$BUILD/cyan
SINK=$BUILD/whsink
command -v curl >/dev/null || die "curl missing"

# ---- work folder, cleanup ----------------------------------------------------------
bench_workdir webhook-bench

# ---- the publisher and the statistics (Python, Debian's) -----------------------------
cat >"$WORK/whpub.py" <<'PY'
"""MQTT 3.1.1 QoS 1 publisher for the webhook benchmark: one connection per
device (client id = user = device id), each with at most --inflight PUBLISHes
without PUBACK; flat out, or paced at --rate in total. Each payload is
"sent_us=<CLOCK_REALTIME us>.<tag>.<conn>.<seq>". Writes one line per message
to --out: "<tag>.<conn>.<seq> <send_us> <puback_us or ->", and a PUB line on
stdout. Bounded: --duration of sending, then at most --ack_wait s for PUBACKs."""
import argparse, resource, select, selectors, socket, struct, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--devices", required=True)  # lines "id secret"
ap.add_argument("--inflight", type=int, default=32)
ap.add_argument("--duration", type=float, default=3)
ap.add_argument("--rate", type=float, default=0)
ap.add_argument("--tag", default="t")
ap.add_argument("--name", default="bench")
ap.add_argument("--out", required=True)
ap.add_argument("--ack_wait", type=float, default=10)
a = ap.parse_args()


def s16(b):
    return struct.pack("!H", len(b)) + b


def packet(b0, body):
    n, rl = len(body), b""
    while True:
        d, n = n % 128, n // 128
        rl += bytes([d | (128 if n else 0)])
        if not n:
            return bytes([b0]) + rl + body


def now_us():
    return time.time_ns() // 1000


class Conn:
    def __init__(self, i, dev, secret):
        self.i, self.dev = i, dev
        self.s = socket.create_connection(("127.0.0.1", a.port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s.sendall(packet(0x10, s16(b"MQTT") + b"\x04\xc2" + struct.pack("!H", 60) +
                              s16(dev.encode()) + s16(dev.encode()) + s16(secret.encode())))
        self.s.settimeout(10)
        ack = self.s.recv(4)
        if len(ack) < 4 or ack[0] != 0x20 or ack[3] != 0:
            sys.exit("whpub: CONNACK refused for %s: %r" % (dev, ack))
        self.s.setblocking(False)
        self.topic = s16(("devices/%s/events/%s" % (dev, a.name)).encode())
        self.prefix = ("sent_us=%%d.%s.%d.%%d" % (a.tag, i)).encode()
        self.sent, self.inflight, self.buf = [], {}, b""
        self.acked = 0

    def publish(self, n):
        out = []
        for _ in range(n):
            seq = len(self.sent)
            pid = seq % 65535 + 1
            t = now_us()
            out.append(packet(0x32, self.topic + struct.pack("!H", pid) + self.prefix % (t, seq)))
            self.sent.append([t, None])
            self.inflight[pid] = seq
        data = b"".join(out)
        while data:
            try:
                k = self.s.send(data)
                data = data[k:]
            except BlockingIOError:
                select.select([], [self.s], [], 1)

    def on_read(self):
        try:
            d = self.s.recv(65536)
        except BlockingIOError:
            return
        if not d:
            sys.exit("whpub: connection of %s closed by cyan" % self.dev)
        t = now_us()
        b = self.buf + d
        p = 0
        while len(b) - p >= 2:
            rl, m, k = 0, 1, p + 1
            while k < len(b):
                rl += (b[k] & 127) * m
                m *= 128
                k += 1
                if not b[k - 1] & 128:
                    break
            else:
                break
            if k + rl > len(b):
                break
            if b[p] >> 4 == 4 and rl >= 2:  # PUBACK
                seq = self.inflight.pop((b[k] << 8) | b[k + 1], None)
                if seq is not None:
                    self.sent[seq][1] = t
                    self.acked += 1
            elif b[p] >> 4 == 14:
                sys.exit("whpub: cyan sent DISCONNECT to %s" % self.dev)
            p = k + rl
        self.buf = b[p:]


devs = [l.split() for l in open(a.devices) if l.strip()]
conns = [Conn(i, d, s) for i, (d, s) in enumerate(devs)]
sel = selectors.DefaultSelector()
for c in conns:
    sel.register(c.s, selectors.EVENT_READ, c)
per_conn = a.rate / len(conns) if a.rate else 0
t0 = time.monotonic()
t_end = t0 + a.duration
while True:
    now = time.monotonic()
    sending = now < t_end
    if sending:
        for c in conns:
            room = a.inflight - len(c.inflight)
            if per_conn:
                room = min(room, int((now - t0) * per_conn) + 1 - len(c.sent))
            if room > 0:
                c.publish(room)
    elif all(not c.inflight for c in conns) or now > t_end + a.ack_wait:
        break
    timeout = 0.05
    if sending and per_conn:
        timeout = min(timeout, max(0.0005, 1 / per_conn / 2))
    for key, _ in sel.select(timeout):
        key.data.on_read()
t1 = time.monotonic()
sent = sum(len(c.sent) for c in conns)
acked = sum(c.acked for c in conns)
with open(a.out, "w") as f:
    for c in conns:
        for seq, (t, ack) in enumerate(c.sent):
            f.write("%s.%d.%d %d %s\n" % (a.tag, c.i, seq, t, ack if ack is not None else "-"))
for c in conns:
    try:
        c.s.setblocking(True)
        c.s.sendall(b"\xe0\x00")
        c.s.close()
    except OSError:
        pass
ru = resource.getrusage(resource.RUSAGE_SELF)
busy = (ru.ru_utime + ru.ru_stime) / (t1 - t0)  # near 1.00: the publisher set the pace
print("PUB tag=%s sent=%d acked=%d pub_rate=%.0f seconds=%.3f pub_busy=%.2f" % (
    a.tag, sent, acked, sent / a.duration, t1 - t0, busy))
PY

cat >"$WORK/whstats.py" <<'PY'
"""Join a publisher log ("key send_us puback_us") and a whsink log
("arrival_us webhook-id mark", mark = "send_us.key") into RESULT lines."""
import sys

phase, pub_path, sink_path, warmup = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
pub = {}
for line in open(pub_path):
    k, t, ack = line.split()
    pub[k] = (int(t), None if ack == "-" else int(ack))
first, n_req, unknown, ids = {}, 0, 0, {}
for line in open(sink_path):
    arr, wid, mark = line.split()
    n_req += 1
    key = mark.split(".", 1)[1] if "." in mark else None
    if key not in pub:
        unknown += 1
        continue
    ids.setdefault(key, set()).add(wid)
    if key not in first:
        first[key] = int(arr)
acked = [k for k, (t, ack) in pub.items() if ack is not None]
missing = [k for k in acked if k not in first]
dups = n_req - unknown - len(first)
id_changed = sum(1 for v in ids.values() if len(v) > 1)  # a retry must keep its webhook-id
t_pub0 = min((t for t, _ in pub.values()), default=0)
arrivals = sorted(first.values())
window = (arrivals[-1] - arrivals[0]) / 1e6 if len(arrivals) > 1 else 0
rate = (len(arrivals) - 1) / window if window > 0 else 0
pub_last_ack = max((ack for _, ack in pub.values() if ack is not None), default=t_pub0)
pub_rate = len(acked) / ((pub_last_ack - t_pub0) / 1e6) if pub_last_ack > t_pub0 else 0


def pct(xs, q):
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0


lat_ack, lat_pub = [], []
for k, arr in first.items():
    t, ack = pub[k]
    if t < t_pub0 + warmup * 1e6:
        continue
    lat_pub.append(arr - t)
    if ack is not None:
        lat_ack.append(arr - ack)
lat_ack.sort()
lat_pub.sort()
common = ("published=%d acked=%d received=%d requests=%d duplicates=%d missing=%d unknown=%d "
          "id_changed=%d window_s=%.3f acked_per_s=%.0f" % (
              len(pub), len(acked), len(first), n_req, dups, len(missing), unknown, id_changed,
              window, pub_rate))
if phase == "throughput":
    print("RESULT workload=webhook_throughput value=%.0f unit=events/s %s" % (rate, common))
else:
    print("RESULT workload=webhook_latency value=%d unit=us p50_us=%d p99_us=%d p999_us=%d max_us=%d "
          "pub_p50_us=%d pub_p99_us=%d samples=%d rate=%.0f %s" % (
              pct(lat_ack, 0.5), pct(lat_ack, 0.5), pct(lat_ack, 0.99), pct(lat_ack, 0.999),
              lat_ack[-1] if lat_ack else 0, pct(lat_pub, 0.5), pct(lat_pub, 0.99), len(lat_ack),
              rate, common))
if missing:
    print("MISSING %d acknowledged events never reached the sink, e.g. %s" % (
        len(missing), " ".join(sorted(missing)[:5])), file=sys.stderr)
    sys.exit(2)
PY

# ---- devices, cyan -------------------------------------------------------------------
DATA=$WORK/data
mkdir -p "$DATA"
: >"$WORK/devices.txt"
for ((i = 0; i < NDEV; i++)); do
    out=$("$CYAN" device add "whbench-$i" --data_dir="$DATA" 2>&1) || die "device add failed: $out"
    id=$(printf '%s\n' "$out" | sed -n 's/^id: //p')
    secret=$(printf '%s\n' "$out" | sed -n 's/^secret: //p')
    if [ -z "$id" ] || [ -z "$secret" ]; then die "device add said: $out"; fi
    echo "$id $secret" >>"$WORK/devices.txt"
done
P_MQTT=$(free_port)
P_HTTP=$(free_port)
P_SINK=$(free_port)
API=http://127.0.0.1:$P_HTTP
extra=()
[ -n "$CONCURRENCY" ] && extra+=(--webhook_concurrency="$CONCURRENCY")
log "cyan: $SHARDS shards, mqtt :$P_MQTT, http :$P_HTTP; sink :$P_SINK; $NDEV devices; work folder $WORK"
# ops_listen off: its default port (8081) may be taken by another cyan
"${PIN_CYAN[@]}" "$CYAN" --data_dir="$DATA" --mqtt_listen="127.0.0.1:$P_MQTT" --http_listen="127.0.0.1:$P_HTTP" --coap_listen= --coaps_listen= \
    --ops_listen= --shards="$SHARDS" --log_level=warn --sys_interval=0 --webhook_allow_private=true \
    "${extra[@]}" >>"$WORK/cyan.log" 2>&1 &
SPID[cyan]=$!
for i in $(seq 1 100); do
    n=$( (pgrep -P "${SPID[cyan]}" 2>/dev/null || true) | wc -l)
    [ "$n" -ge "$SHARDS" ] && [ -s "$DATA/admin-token" ] && break
    kill -0 "${SPID[cyan]}" 2>/dev/null || break
    sleep 0.1
done
kill -0 "${SPID[cyan]}" 2>/dev/null || {
    tail -n 20 "$WORK/cyan.log" >&2
    die "cyan exited at start (log above)"
}
if ! wait_port "$P_MQTT" || ! wait_port "$P_HTTP" || [ ! -s "$DATA/admin-token" ]; then
    tail -n 20 "$WORK/cyan.log" >&2 || true
    die "cyan did not start (log above)"
fi
TOKEN=$(cat "$DATA/admin-token")
sleep 0.5 # shards link up over the bus

cpu_of() { # PID...: CPU seconds (user + system) of these processes and their children
    local t=0 p v
    for p in "$@" $(for q in "$@"; do pgrep -P "$q" 2>/dev/null || true; done); do
        v=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + v))
    done
    awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t/hz}'
}

# ---- the sink and the webhook ------------------------------------------------------------
start_sink() { # PHASE
    "${PIN_LOAD[@]}" "$SINK" --port "$P_SINK" --out "$WORK/sink-$1.txt" --idle "$IDLE" \
        --max_time $(($(printf '%.0f' "$DURATION") + DRAIN + 60)) --workload "sink_$1" \
        >"$WORK/sink-$1.out" 2>>"$WORK/sink.log" &
    SPID[sink]=$!
    wait_port "$P_SINK" || die "whsink did not open port $P_SINK"
}
start_sink probe
HOOK_JSON="{\"event\": \"bench\", \"url\": \"http://127.0.0.1:$P_SINK/hook/{{device_id}}\"}"
code=$(curl -s -o "$WORK/webhook.json" -w '%{http_code}' -X POST "$API/v1/webhooks" \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$HOOK_JSON" || echo 000)
if [ "$code" != 201 ]; then
    log "POST /v1/webhooks answered HTTP $code: $(head -c 300 "$WORK/webhook.json" 2>/dev/null)"
    case $code in
    404 | 405) log "this cyan has no webhook API yet (issue 12): nothing to measure" ;;
    esac
    exit 3
fi
HOOK_ID=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/webhook.json")
log "webhook $HOOK_ID -> http://127.0.0.1:$P_SINK/hook/{{device_id}}"
stop_server sink

# ---- phases ---------------------------------------------------------------------------------
# run_phase PHASE RATE: a fresh sink, the publisher for DURATION s, the sink drained
run_phase() {
    local phase=$1 rate=$2 c0 c1 s_pid pub_out rc=0 t
    start_sink "$phase"
    s_pid=${SPID[sink]}
    c0=$(cpu_of "${SPID[cyan]}")
    pub_out=$("${PIN_LOAD[@]}" $PY "$WORK/whpub.py" --port "$P_MQTT" --devices "$WORK/devices.txt" \
        --inflight "$INFLIGHT" --duration "$DURATION" --rate "$rate" --tag "${phase:0:1}" \
        --out "$WORK/pub-$phase.txt" 2>>"$WORK/pub.log") || rc=$?
    [ "$rc" = 0 ] || {
        tail -n 5 "$WORK/pub.log" >&2
        die "publisher failed in the $phase phase (exit $rc)"
    }
    log "  $pub_out"
    # the sink stops by itself IDLE s after the last request; DRAIN bounds the wait
    for t in $(seq 1 $((DRAIN * 10))); do
        kill -0 "$s_pid" 2>/dev/null || break
        sleep 0.1
    done
    c1=$(cpu_of "${SPID[cyan]}")
    # cyan's own figures for the webhook (docs/api.md, "What became of each event")
    curl -s -H "Authorization: Bearer $TOKEN" "$API/v1/webhooks/$HOOK_ID" >"$WORK/stats-$phase.json" || true
    log "  cyan: $($PY -c 'import json,sys; s=json.load(open(sys.argv[1])).get("stats",{}); print(" ".join("%s=%s" % (k, s.get(k)) for k in ("status","matched","delivered","queued","in_flight","dead","attempts","behind","last_error")))' "$WORK/stats-$phase.json" 2>/dev/null || echo '?')"
    stop_server sink
    log "  $(grep '^RESULT' "$WORK/sink-$phase.out" | cut -d' ' -f4-)"
    rc=0
    out=$($PY "$WORK/whstats.py" "$phase" "$WORK/pub-$phase.txt" "$WORK/sink-$phase.txt" "$WARMUP") || rc=$?
    local busy sink_cpu
    busy=$(printf '%s\n' "$pub_out" | grep -o 'pub_busy=[0-9.]*' || echo pub_busy=?)
    sink_cpu=$(grep -o 'cpu_s=[0-9.]*' "$WORK/sink-$phase.out" | sed 's/^/sink_/' || echo sink_cpu_s=?)
    out=$(printf '%s\n' "$out" | sed "s/^RESULT /RESULT shards=$SHARDS cyan_cpu_s=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b-a}') $sink_cpu $busy /")
    printf '%s\n' "$out" >>"$RESULTS"
    printf '%s\n' "$out" | sed 's/^/    /' | cut -c1-220 >&2
    return "$rc"
}

FAILED=0
TP_RATE=0
case " $PHASES " in *" throughput "*)
    log "throughput: $NDEV devices flat out, $INFLIGHT un-acked each, ${DURATION}s"
    run_phase throughput 0 || FAILED=1
    TP_RATE=$(sed -n 's/.*workload=webhook_throughput value=\([0-9]*\).*/\1/p' "$RESULTS" | tail -n 1)
    ;;
esac
case " $PHASES " in *" latency "*)
    if [ -z "$LAT_RATE" ]; then
        LAT_RATE=$(awk -v r="${TP_RATE:-0}" 'BEGIN{r=int(r/2/1000)*1000; if(r<1000) r=1000; print r}')
    fi
    log "latency: $LAT_RATE events/s for ${DURATION}s (first ${WARMUP}s left out)"
    run_phase latency "$LAT_RATE" || FAILED=1
    ;;
esac
stop_server cyan
grep '^RESULT' "$RESULTS"
[ "$FAILED" = 0 ] || {
    log "some acknowledged events never reached the sink (see MISSING above)"
    exit 2
}
