"""What cyan's log says, for operators and log shippers (docs/operations.md,
"Logs"):
- one info line when the node is ready, naming every listener with the
  address it is bound to and whether it is encrypted, and where the admin
  token is (its path; never the token);
- connections: each one's lines at debug only; at info, a summary per
  shard every log_summary_interval of what was opened, closed and refused,
  by protocol, and nothing when nothing happened;
- log_format = json: every line of every process is one JSON object with
  time, level, process (and shard), source and message, whatever a client
  put in its id.
"""

import json
import os
import re
import signal
import socket
import time
import types

import pytest

from conftest import SHARDS
from helpers import Client, uniq, wait_until
from tlscerts import CA

pytestmark = pytest.mark.cyan_only

READY = re.compile(r"supervisor: ready in [0-9.]+ s: (\d+) shards? accepting; listeners: (.*); "
                   r"(admin token in|no admin token:) (\S+)")


def ready_line(srv):
    assert srv.wait_log("supervisor: ready in", timeout=15), srv.log_tail()
    for line in srv.log().splitlines():
        m = READY.search(line)
        if m:
            return line, m
    raise AssertionError("no ready line\n" + srv.log_tail())


def listeners(text):
    """{name: (address, kind)} from "mqtt=127.0.0.1:1883 (plain), ..." """
    out = {}
    for m in re.finditer(r"(\w+)=(\S+) \(([^)]*)\)", text):
        out[m.group(1)] = (m.group(2), m.group(3))
    return out


def test_ready_line_plain(server_factory):
    srv = server_factory(_template=False)
    line, m = ready_line(srv)
    assert int(m.group(1)) == SHARDS
    ls = listeners(m.group(2))
    assert ls["mqtt"] == ("127.0.0.1:%d" % srv.port, "plain"), ls
    assert ls["http"][0] == "127.0.0.1:%d" % srv.http_port and ls["http"][1].startswith("plain")
    assert ls["ops"][0] == "127.0.0.1:%d" % srv.ops_port and ls["ops"][1].startswith("plain")
    assert ls["coap"] == ("127.0.0.1:%d" % srv.coap_port, "UDP, plain"), ls
    assert ls["coaps"] == ("127.0.0.1:%d" % srv.coaps_port, "UDP, DTLS"), ls
    assert "mqtts" not in ls  # no certificate, no TLS listener
    assert m.group(3) == "admin token in"
    assert m.group(4) == os.path.join(os.path.realpath(srv.data_dir), "admin-token")
    # Once, and the token itself is nowhere in the log.
    assert srv.log().count("supervisor: ready in") == 1
    assert srv.admin_token() not in srv.log()
    # A restart without the token file says it is gone.
    os.unlink(srv.admin_token_path)
    srv.restart()
    assert srv.wait_log("no admin token: ", timeout=15), srv.log_tail()


def test_ready_line_tls_and_tls_summary(server_factory, tmp_path):
    ca = CA(str(tmp_path / "ca"))
    cert, key = ca.issue("cyan-1")
    srv = server_factory(tls_cert=cert, tls_key=key, ops_tls=False, coaps_listen="",
                         log_summary_interval=1)
    _, m = ready_line(srv)
    ls = listeners(m.group(2))
    assert ls["mqtts"] == ("127.0.0.1:%d" % srv.mqtts_port, "TLS"), ls
    assert ls["mqtt"][1] == "plain"
    assert ls["http"][1].startswith("TLS"), ls
    assert ls["ops"][1].startswith("plain"), ls  # ops_tls = false
    assert "coaps" not in ls  # turned off

    # A device over TLS counts as mqtts where its TLS ends on its own shard,
    # as tls/ws where another shard ends it for the owner.
    time.sleep(2.5)
    base = len(summary_lines(srv))
    dev = srv.add_device()
    c = Client(types.SimpleNamespace(host=srv.host, port=srv.mqtts_port), dev,
               client_id=uniq("tls"))
    c.c.tls_set(ca_certs=ca.cert)
    c.c.on_socket_register_write = lambda client, userdata, sock: None
    c.connect()
    c.disconnect()
    assert wait_until(lambda: totals(summary_lines(srv)[base:], "closed")[0] >= 1, timeout=6), \
        srv.log_tail()
    n, kinds = totals(summary_lines(srv)[base:], "opened")
    assert n == 1 and set(kinds) <= {"mqtts", "tls/ws"}, summary_lines(srv)
    if SHARDS == 1:
        assert kinds == {"mqtts": 1}, kinds


def summary_lines(srv):
    return [l for l in srv.log().splitlines() if "connections in the last" in l]


def totals(lines, what):
    """Sum of "N what (kind n, ...)" over the summary lines: (N, {kind: n})."""
    n, kinds = 0, {}
    for line in lines:
        m = re.search(r"(\d+) %s(?: \(([^)]*)\))?" % what, line)
        if not m:
            continue
        n += int(m.group(1))
        for part in (m.group(2) or "").split(", "):
            if part:
                k, v = part.rsplit(" ", 1)
                kinds[k] = kinds.get(k, 0) + int(v)
    return n, kinds


def test_connection_lines_and_summary(server_factory):
    srv = server_factory(log_level="info", log_summary_interval=1)
    ready_line(srv)
    # What the start itself did (the monitor's canaries are not counted,
    # but a CONNECT refused while a shard waited for its peers is) is in
    # the first summaries: count from after them.
    time.sleep(2.5)
    base = len(summary_lines(srv))
    dev = srv.add_device()
    c = Client(srv, dev, client_id=uniq("sum"))
    c.connect()
    c.disconnect()
    bad = Client(srv, username=dev.id, password="0" * 32, client_id=uniq("bad"))
    _, rc, _ = bad.connect(expect_rc=None)
    assert rc != 0
    bad.close()
    assert wait_until(lambda: totals(summary_lines(srv)[base:], "opened")[0] >= 1 and
                      totals(summary_lines(srv)[base:], "closed")[0] >= 1 and
                      totals(summary_lines(srv)[base:], "refused")[0] >= 1, timeout=6), \
        srv.log_tail()
    time.sleep(1.2)  # a count that would come late, in the next interval
    lines = summary_lines(srv)[base:]
    assert totals(lines, "opened") == (1, {"mqtt": 1}), lines
    assert totals(lines, "closed") == (1, {"mqtt": 1}), lines
    assert totals(lines, "refused")[0] == 1, lines
    for line in lines:
        assert " INFO  shard=" in line, line
        assert re.search(r"open now: \d+ MQTT, \d+ CoAP$", line), line
    # Each connection's own lines are debug, so not here.
    assert "connected from" not in srv.log()
    assert "connection lost" not in srv.log()
    # Nothing happens: no more summaries (3 intervals).
    n = len(summary_lines(srv))
    time.sleep(3.2)
    assert len(summary_lines(srv)) == n, summary_lines(srv)


def test_summary_interval_reloads(server_factory):
    """log_summary_interval changes with a reload (SIGHUP), on every shard."""
    def prepare(srv):
        srv.conf = os.path.join(srv.workdir, "cyan.conf")
        with open(srv.conf, "w") as f:
            f.write("log_summary_interval = 0\n")
        base = type(srv).argv
        srv.argv = lambda: base(srv) + ["-c", srv.conf]

    srv = server_factory(_prepare=prepare)
    ready_line(srv)
    dev = srv.add_device()
    c = Client(srv, dev, client_id=uniq("rl"))
    c.connect()
    time.sleep(1.5)
    assert not summary_lines(srv)  # off
    with open(srv.conf, "w") as f:
        f.write("log_summary_interval = 1\n")
    srv.proc.send_signal(signal.SIGHUP)
    assert srv.wait_log("applied log_summary_interval 0 -> 1", timeout=5), srv.log_tail()
    c.disconnect()
    assert wait_until(lambda: totals(summary_lines(srv), "closed")[0] == 1, timeout=6), \
        srv.log_tail()


def test_summary_off_and_debug_lines(server_factory):
    srv = server_factory(log_summary_interval=0)  # the fixture's log_level=debug
    ready_line(srv)
    dev = srv.add_device()
    cid = uniq("dbg")
    c = Client(srv, dev, client_id=cid)
    c.connect()
    c.disconnect()
    assert srv.wait_log("DEBUG", timeout=3)
    assert srv.wait_log("client=%s connected from 127.0.0.1:" % cid, timeout=3), srv.log_tail()
    assert re.search(r"DEBUG .*client=%s connected from" % cid, srv.log())
    time.sleep(1.5)
    assert not summary_lines(srv)


TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_json_log(server_factory):
    srv = server_factory(log_format="json", log_summary_interval=1)
    dev = srv.add_device()
    # A client id no shipper should have to guess at: quotes, a backslash,
    # non-ASCII, a would-be second line.
    cid = 'json"q\\u-\u00e9-\u2603'
    c = Client(srv, dev, client_id=cid)
    c.connect()
    c.publish("a/b", b"x", qos=1)
    c.disconnect()
    # A raw socket that sends garbage (a stranger's line).
    with socket.create_connection((srv.host, srv.port), timeout=3) as s:
        s.sendall(b"\x10\x05garbage")
        s.settimeout(3)
        try:
            s.recv(100)
        except OSError:
            pass
    assert srv.wait_log('"message":"connections in the last', timeout=6), srv.log_tail()
    srv.stop()
    objs = []
    for line in srv.log().splitlines():
        if line.startswith("==== "):  # the test harness's own markers
            continue
        obj = json.loads(line)  # every line of every process
        objs.append(obj)
        assert set(obj) >= {"time", "level", "process", "source", "message"}, obj
        assert set(obj) <= {"time", "level", "process", "shard", "source", "client",
                            "message"}, obj
        assert TIME.match(obj["time"]), obj
        assert obj["level"] in ("debug", "info", "warn", "error"), obj
        assert obj["process"] in ("supervisor", "shard", "monitor"), obj
        assert ("shard" in obj) == (obj["process"] == "shard"), obj
        if "shard" in obj:
            assert 0 <= obj["shard"] < SHARDS, obj
        assert re.match(r"^([a-z]+/)?[a-z_0-9]+\.c:\d+$", obj["source"]), obj
    assert len(objs) > 20
    procs = {o["process"] for o in objs}
    assert procs == {"supervisor", "shard", "monitor"}, procs
    ready = [o for o in objs if o["message"].startswith("supervisor: ready in")]
    assert len(ready) == 1 and ready[0]["process"] == "supervisor", ready
    mine = [o for o in objs if o.get("client") == cid]
    assert any(o["message"].startswith("connected from") and o["level"] == "debug"
               for o in mine), mine
    assert any(o["message"].startswith("connections in the last") and o["level"] == "info"
               for o in objs)
    assert srv.admin_token() not in srv.log()
    assert dev.secret not in srv.log()


def test_bad_log_format_refused(server_factory, tmp_path):
    from conftest import CYAN_BIN, child_env
    import subprocess
    cp = subprocess.run([CYAN_BIN, "--data_dir=%s" % (tmp_path / "d"), "--log_format=xml",
                         "config"], capture_output=True, text=True, timeout=20, env=child_env())
    assert cp.returncode != 0
    assert "log_format: expected text or json, got 'xml'" in cp.stderr, cp.stderr
