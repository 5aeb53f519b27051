"""bench/api_load_table.py: the table of bench/api_load.sh (run by it).

Reads RESULTS (RESULT/SYSCALLS/FAIL lines) and the run's description from
the environment; prints the medians per row and concurrency, with the API
rows as ratios against the plain MQTT rows of the same run, and with DOC=1
writes the text into docs/benchmarks.md between the api-load markers.
"""
import os
import statistics
import sys

from docblock import write_between

env = os.environ
BEGIN = "<!-- api-load:begin -->"
END = "<!-- api-load:end -->"
LABEL = {
    "api_cyan1": ("HTTP API", "cyan, 1 shard"),
    "mqtt_cyan1": ("MQTT", "cyan, 1 shard"),
    "mqtt_mosq": ("MQTT", "mosquitto 2.0.11"),
    "api_cyan2": ("HTTP API", "cyan, 2 shards"),
    "mqtt_cyan2": ("MQTT", "cyan, 2 shards"),
}
rows = env.get("ROWS", "").split() or list(LABEL)
conns = [int(c) for c in env.get("CONNS", "8 32 64").split()]

runs = {}  # (row, conns) -> [dict]
syscalls = {}
fails = []
for line in open(env["RESULTS"]):
    f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    if line.startswith("RESULT"):
        runs.setdefault((f["server"], int(f["conns"])), []).append(f)
    elif line.startswith("SYSCALLS"):
        syscalls[f["row"]] = int(f["syscalls"]) / max(1, int(f["calls"]))
    elif line.startswith(("FAIL", "CRASH")):
        fails.append(line.strip())


def med(row, c, key):
    v = [float(r[key]) for r in runs.get((row, c), []) if key in r and float(r[key]) >= 0]
    return statistics.median(v) if v else None


def spread(row, c, key):
    v = [float(r[key]) for r in runs.get((row, c), []) if key in r and float(r[key]) >= 0]
    if len(v) < 2:
        return ""
    m = statistics.median(v)
    return f" ±{100 * (max(v) - min(v)) / 2 / m:.0f}%" if m else ""


def fmt(v, digits=0):
    if v is None or v < 0:
        return "–"
    return f"{v:,.{digits}f}"


def ratio(a, b, digits=2):
    if a is None or b is None or b <= 0:
        return "–"
    return f"{a / b:.{digits}f}"


out = []
out.append(f"{env['DATE']}, commit {env['COMMIT']}"
           + (" with uncommitted changes in src/" if env.get("DIRTY", "0") != "0" else "")
           + f"; {env['NPROC']} cores, kernel {env['KERNEL']}; load average {env['LOADAVG']} at the end.")
out.append(f"{env['DEVICES']} devices connected; median of {env['RUNS']} runs per row, each "
           f"{env['WARMUP']} s of warm-up then {env['SECONDS_RUN']} s measured; QoS 1 both ways "
           f"(MQTT 3.1.1); 1-shard servers and mosquitto on core 0 and the generator on core 1; "
           f"2-shard servers and the generator unpinned; {env['ELAPSED']} s in all. "
           "± is half the spread of the runs around the median.")
out.append("")
out.append("| path | server | C | calls/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/call | errors |")
out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for c in conns:
    for row in rows:
        path, server = LABEL[row]
        errs = sum(int(r.get("errors", 0)) + int(r.get("timeouts", 0)) for r in runs.get((row, c), []))
        out.append(f"| {path} | {server} | {c} | {fmt(med(row, c, 'calls_per_s'))}{spread(row, c, 'calls_per_s')} | "
                   f"{fmt(med(row, c, 'p50_us'))} | {fmt(med(row, c, 'p99_us'))} | "
                   f"{fmt(med(row, c, 'p999_us'))} | {fmt(med(row, c, 'server_cpu_us_per_call'), 1)} | {errs} |")
out.append("")
pairs = [("api_cyan1", "mqtt_mosq", "HTTP API on cyan (1 shard) / MQTT on mosquitto"),
         ("api_cyan1", "mqtt_cyan1", "HTTP API on cyan (1 shard) / MQTT on cyan (1 shard)"),
         ("mqtt_cyan1", "mqtt_mosq", "MQTT on cyan (1 shard) / MQTT on mosquitto"),
         ("api_cyan2", "mqtt_cyan2", "HTTP API on cyan (2 shards) / MQTT on cyan (2 shards)")]
pairs = [p for p in pairs if p[0] in rows and p[1] in rows]
if pairs:
    out.append("Ratios of the medians (calls/s: higher is better for the first; latency and CPU: lower is):")
    out.append("")
    out.append("| ratio | C | calls/s | p50 | p99 | p99.9 | server CPU/call |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for c in conns:
        for a, b, what in pairs:
            out.append(f"| {what} | {c} | {ratio(med(a, c, 'calls_per_s'), med(b, c, 'calls_per_s'))} | "
                       f"{ratio(med(a, c, 'p50_us'), med(b, c, 'p50_us'))} | "
                       f"{ratio(med(a, c, 'p99_us'), med(b, c, 'p99_us'))} | "
                       f"{ratio(med(a, c, 'p999_us'), med(b, c, 'p999_us'))} | "
                       f"{ratio(med(a, c, 'server_cpu_us_per_call'), med(b, c, 'server_cpu_us_per_call'))} |")
    out.append("")
if syscalls:
    n = int(env.get("STRACE_COUNT", "5000"))
    out.append(f"Server syscalls per call at C = 8 (strace -c -f on every process of the server "
               f"during exactly {n:,} calls, untimed; those at 0.3 per call or more):")
    out.append("")
    for row in rows:
        if row not in syscalls:
            continue
        parts = []
        path = os.path.join(env["WORK"], f"strace-{row}.txt")
        for line in open(path) if os.path.exists(path) else []:
            w = line.split()
            if len(w) >= 5 and w[0][0].isdigit() and w[-1] != "total":
                per = int(w[3]) / n
                if per >= 0.3:
                    parts.append((per, w[-1]))
        parts.sort(key=lambda x: (-x[0], x[1]))
        out.append(f"- {row}: {syscalls[row]:.1f} — " + ", ".join(f"{k} {v:.1f}" for v, k in parts))
    out.append("")
out.append("<details><summary>Every run</summary>")
out.append("")
out.append("| row | C | round | calls/s | p50 µs | p99 µs | p99.9 µs | max µs | server CPU µs/call | generator CPU µs/call | errors |")
out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in conns:
    for row in rows:
        for r in runs.get((row, c), []):
            out.append(f"| {row} | {c} | {r['round']} | {fmt(float(r['calls_per_s']))} | "
                       f"{fmt(float(r['p50_us']))} | {fmt(float(r['p99_us']))} | "
                       f"{fmt(float(r['p999_us']))} | {fmt(float(r['max_us']))} | "
                       f"{fmt(float(r.get('server_cpu_us_per_call', -1)), 1)} | "
                       f"{fmt(float(r.get('gen_cpu_us_per_call', -1)), 1)} | "
                       f"{int(r['errors']) + int(r['timeouts'])} |")
for f in fails:
    out.append(f"| {f} | | | | | | | | | | |")
out.append("")
out.append("</details>")
text = "\n".join(out)
print(text)
if fails:
    print(f"\n{len(fails)} failed runs (see above)", file=sys.stderr)

if env.get("DOC") == "1":
    write_between(env["ROOT"], BEGIN, END, text, "api-load")
