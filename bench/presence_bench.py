#!/usr/bin/python3
"""presence_bench: what status events (cyan/status) cost a reconnect storm.

The same node twice, once with status events on (presence_event_rate, the
default 500 per second per shard) and once with them off (0): N distinct
devices (made through the API) connect with their own credentials, each
waits for its CONNACK, then all disconnect (DISCONNECT, then close), for
ROUNDS rounds. The figure is the server's CPU time (its shards, monitor and
supervisor: utime + stime from /proc) per connect-and-disconnect, which
does not depend on how fast this generator is; the wall-clock rate is
printed beside it, and the status events the node logged and coalesced
(its metrics).

    bench/presence_bench.py [--cyan build/cyan] [--devices 2000] [--rounds 3]
                            [--shards 2]

Standard library only (Debian's python3). Ports are the kernel's free ones
on 127.0.0.1.
"""

import argparse
import json
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HZ = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def mqtt_str(b):
    return struct.pack("!H", len(b)) + b


def connect_packet(cid, user, password):
    body = mqtt_str(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60)
    body += mqtt_str(cid.encode()) + mqtt_str(user.encode()) + mqtt_str(password.encode())
    n, rl = len(body), b""
    while True:
        d, n = n % 128, n // 128
        rl += bytes([d | (0x80 if n else 0)])
        if not n:
            break
    return b"\x10" + rl + body


def tree_cpu(root):
    """CPU seconds (user + system) of root and its children (one level:
    the supervisor's shards and monitor)."""
    pids = [root]
    try:
        with open("/proc/%d/task/%d/children" % (root, root)) as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    total = 0.0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / HZ
        except (OSError, IndexError, ValueError):
            pass
    return total


class Node:
    def __init__(self, cyan, shards, rate):
        self.work = tempfile.mkdtemp(prefix="cypres")
        self.data = os.path.join(self.work, "data")
        self.mqtt, self.http, self.ops = free_port(), free_port(), free_port()
        self.log = open(os.path.join(self.work, "log"), "w")
        self.proc = subprocess.Popen(
            [cyan, "--data_dir=" + self.data, "--shards=%d" % shards,
             "--mqtt_listen=127.0.0.1:%d" % self.mqtt, "--http_listen=127.0.0.1:%d" % self.http,
             "--ops_listen=127.0.0.1:%d" % self.ops, "--coap_listen=", "--coaps_listen=",
             "--presence_event_rate=%d" % rate,
             "--log_level=warn"], stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()
        with open(os.path.join(self.data, "admin-token")) as f:
            self.token = f.read().strip()

    def wait_ready(self):
        """Ready when `cyan status`'s answer, GET /v1/health, is 200."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/v1/health" % self.http,
                                            timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit("cyan did not become healthy; log in %s" % self.work)

    def api(self, method, path, body=None):
        req = urllib.request.Request(
            "http://127.0.0.1:%d%s" % (self.http, path), method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": "Bearer " + self.token,
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def metric(self, name):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.ops, timeout=5) as r:
            total = 0.0
            for line in r.read().decode().splitlines():
                if line.startswith("cyan_" + name + " ") or line.startswith("cyan_" + name + "{"):
                    total += float(line.rsplit(" ", 1)[1])
            return total

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)


def storm(node, devices, batch=256):
    """Every device connects (batch at a time in flight), waits for its
    CONNACK, then all disconnect. Returns the number of CONNACKs."""
    sel = selectors.DefaultSelector()
    conns, acked, i = [], 0, 0
    pending = {}
    while i < len(devices) or pending:
        while i < len(devices) and len(pending) < batch:
            d = devices[i]
            i += 1
            s = socket.create_connection(("127.0.0.1", node.mqtt), 5)
            s.sendall(connect_packet(d["id"], d["id"], d["secret"]))
            s.setblocking(False)
            pending[s] = b""
            sel.register(s, selectors.EVENT_READ)
        for key, _ in sel.select(5):
            s = key.fileobj
            try:
                chunk = s.recv(64)
            except BlockingIOError:
                continue
            pending[s] += chunk
            if len(pending[s]) >= 4 or not chunk:
                sel.unregister(s)
                if pending.pop(s)[:4] == b"\x20\x02\x00\x00":
                    acked += 1
                conns.append(s)
    for s in conns:
        try:
            s.setblocking(True)
            s.sendall(b"\xe0\x00")
        except OSError:
            pass
        s.close()
    sel.close()
    return acked


def run(args, rate):
    node = Node(args.cyan, args.shards, rate)
    try:
        devices = [node.api("POST", "/v1/devices", {"name": "p%05d" % k})
                   for k in range(args.devices)]
        # the first status events of the make-up go before the clock starts
        time.sleep(1)
        cpu0, t0 = tree_cpu(node.proc.pid), time.monotonic()
        ev0, co0 = node.metric("presence_events_total"), node.metric("presence_coalesced_total")
        acked = 0
        for _ in range(args.rounds):
            acked += storm(node, devices)
        # offline events of the last round are logged within a tick
        deadline = time.monotonic() + 5
        while node.api("GET", "/v1/devices?online=true") and time.monotonic() < deadline:
            time.sleep(0.05)
        wall = time.monotonic() - t0
        cpu = tree_cpu(node.proc.pid) - cpu0
        # the monitor reads the shards' counters every second or so
        ev = co = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ev = node.metric("presence_events_total") - ev0
            co = node.metric("presence_coalesced_total") - co0
            if not rate or ev + co >= 2 * acked:
                break
            time.sleep(0.2)
        return {"rate": rate, "cycles": acked, "cpu_us": cpu / max(acked, 1) * 1e6,
                "per_s": acked / wall, "events": ev, "coalesced": co}
    finally:
        node.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cyan", default="build/cyan")
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args()
    rows = [run(args, 500), run(args, 0)]
    print("| status events | connect+disconnect | server CPU per cycle | cycles/s "
          "(generator-bound) | status events logged | coalesced |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| %s | %d | %.0f µs | %.0f | %d | %d |" % (
            "on (rate %d/s)" % r["rate"] if r["rate"] else "off", r["cycles"], r["cpu_us"],
            r["per_s"], r["events"], r["coalesced"]))
    print("CPU on/off: %.2f×" % (rows[0]["cpu_us"] / max(rows[1]["cpu_us"], 1e-9)))


if __name__ == "__main__":
    main()
