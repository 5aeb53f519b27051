"""The operator's ACL (setting acl_file, docs/operations.md "Access control"):
a file in Mosquitto's acl_file format applied on top of device isolation
to what clients publish, subscribe to and receive.

Asserted, with real clients (raw MQTT for exact reason codes, paho,
mosquitto_pub/mosquitto_sub, a CoAP device):
  - a subscription the ACL does not cover is refused in the SUBACK: 0x80
    for MQTT 3.1.1, 0x87 for MQTT 5, beside granted filters of the same
    packet;
  - a publish it does not allow gets what isolation gives: MQTT 5 0x87 in
    PUBACK/PUBREC, a 3.1.1 client is disconnected; nothing is routed;
  - a granted subscription that a deny rule cuts into does not carry the
    denied topic: each message is read-checked at delivery (QoS 0 and 1);
  - a will on a denied topic is refused at CONNECT, as isolation refuses one,
    and a will that a reload denies after CONNECT is not published;
  - a CoAP event or publish on a denied topic gets 4.03, a denied CoAP
    subscription too;
  - SIGHUP re-reads the file: the next publish meets the new rules, the
    connections stay; a file that no longer parses changes nothing (the
    supervisor says why) and the old rules stay;
  - a file that does not parse stops the start, naming file and line; a
    shard respawned on a file broken since starts and refuses everything
    until a good file is reloaded;
  - cyan's own canaries (internal devices) work under an ACL that denies
    everything;
  - refusals are counted in acl_file_denied and logged.
The servers read the file "acl" in their work folder (their cwd).
"""

import os
import signal
import subprocess

import pytest

import coapdev
import rawmqtt
from coapdev import code
from coaptest import new_device as api_device
from conftest import CYAN_BIN, SHARDS, child_env, free_port
from helpers import Client, MosquittoSub, mosquitto_pub, raw, raw_connected, uniq, wait_until
from test_canary_client import assert_all_ok, probe
from test_counters import status_totals

pytestmark = pytest.mark.cyan_only

NOT_AUTHORIZED = {4: 0x80, 5: 0x87}  # SUBACK failure code by protocol level

# Anonymous clients: read pub/#, use anon/# but for anon/secret and
# anon/+/secret. Everybody (a pattern): its own clients/<client id>/#. The
# first device of the server's pool (the first srv.add_device()): write on
# anon/# and pub/#, to put there what anonymous clients may (not) read.
ACL = """# the test ACL
topic read pub/#
topic readwrite anon/#
topic deny anon/secret
topic deny anon/+/secret

pattern readwrite clients/%c/#

user {dev}
topic write anon/#
topic write pub/#
"""


def write_acl(srv, text):
    if "{dev}" in text:
        text = text.replace("{dev}", srv.pool[0].id)
    with open(os.path.join(srv.workdir, "acl"), "w") as f:
        f.write(text)


def acl_server(server_factory, text=ACL, **settings):
    settings.setdefault("allow_anonymous", True)
    srv = server_factory(_prepare=lambda srv: write_acl(srv, text), acl_file="acl", **settings)
    return srv


def nshards(srv):
    return int(srv.settings.get("shards", SHARDS))


def since(srv, mark):
    return srv.log()[mark:]


def hup(srv, text):
    """Write the ACL file, SIGHUP the supervisor; returns the log mark."""
    write_acl(srv, text)
    mark = len(srv.log())
    os.kill(srv.proc.pid, signal.SIGHUP)
    return mark


def reload_acl(srv, text):
    """hup, then wait until every shard has read the file again."""
    mark = hup(srv, text)
    n = nshards(srv)
    assert wait_until(lambda: since(srv, mark).count("acl_file acl read:") >= n, 10.0), \
        "not every shard re-read the ACL:\n" + srv.log_tail()
    return mark


def anon(srv, version=5, client_id=None):
    c, _ = raw_connected(srv, None, client_id=client_id or uniq("anon"), version=version)
    return c


def denied_total(srv):
    return status_totals(srv)["acl_file_denied"][0]


@pytest.mark.parametrize("version", [4, 5])
def test_subscribe_refused_per_filter(server_factory, version):
    srv = acl_server(server_factory)
    c = anon(srv, version)
    with c:
        ack = c.subscribe([("pub/#", 1), ("other/#", 1), ("anon/x", 0), ("#", 0),
                           ("anon/secret", 1), ("$share/g/pub/+", 1), ("$share/g/x/+", 1),
                           ("$SYS/#", 0)])
        no = NOT_AUTHORIZED[version]
        assert ack.codes == [1, no, 0, no, no, 1, no, no], ack
        c.disconnect()
    # A device's own patterns: its client id
    dev = srv.add_device()
    cid = uniq("d")
    c, _ = raw_connected(srv, dev, client_id=cid, version=version)
    with c:
        ack = c.subscribe([("clients/%s/#" % cid, 1), ("clients/+/#", 1), ("pub/#", 1)])
        assert ack.codes == [1, NOT_AUTHORIZED[version], NOT_AUTHORIZED[version]], ack
        c.disconnect()
    assert srv.wait_log("subscription to other/# refused by acl_file (anonymous)", 3.0)
    assert wait_until(lambda: denied_total(srv) >= 7, 5.0), status_totals(srv)


def test_publish_refused_as_isolation_refuses(server_factory):
    srv = acl_server(server_factory)
    sub = anon(srv)
    with sub:
        assert sub.subscribe([("pub/#", 1), ("anon/#", 1)]).codes == [1, 1]
        # MQTT 5: the reason in PUBACK and PUBREC; the connection stays
        c = anon(srv)
        with c:
            assert c.publish("pub/x", b"no", qos=1, pid=1).rc == 0x87
            assert c.publish("pub/x", b"no", qos=2, pid=2).rc == 0x87
            c.publish("pub/x", b"no", qos=0)
            assert c.publish("anon/ok1", b"yes", qos=1, pid=3).rc == 0
            c.disconnect()
        # mosquitto_pub, as an anonymous client: the refused one is not routed
        mosquitto_pub(srv, None, "anon/ok2", "yes", qos=1)
        # MQTT 3.1.1 cannot hear a refusal: disconnected, nothing routed
        c3 = anon(srv, version=4)
        c3.send(rawmqtt.publish("pub/y", b"no", qos=1, pid=1, version=4))
        c3.wait_closed(3.0)
        # anon/ok3 is published last: whatever was routed before it has come
        # by the time it does, and none of it is pub/...
        c = anon(srv)
        with c:
            assert c.publish("anon/ok3", b"yes", qos=1, pid=1).rc == 0
        got = []
        for _ in range(10):
            got.append(sub.recv_publish().topic)
            if got[-1] == "anon/ok3":
                break
        assert sorted(got) == ["anon/ok1", "anon/ok2", "anon/ok3"], got
        sub.disconnect()
    assert srv.wait_log("publish on pub/y refused by acl_file", 3.0)


@pytest.mark.parametrize("qos", [0, 1])
def test_delivery_is_read_checked(server_factory, qos):
    """anon/# is granted though anon/secret is denied: the deny covers only
    part of the filter, so each message is checked as it goes."""
    srv = acl_server(server_factory)
    dev = srv.add_device()  # may write anon/secret: its block has no deny
    sub = Client(srv, client_id=uniq("sub"))
    sub.connect()
    try:
        assert sub.subscribe("anon/#", qos) == [qos]
        mq = MosquittoSub(srv, None, "anon/#", qos=qos, count=1, wait=10)
        pub = Client(srv, dev)
        pub.connect()
        try:
            for t in ("anon/secret", "anon/x/secret", "anon/ok"):
                pub.publish(t, b"m", qos=1)
        finally:
            pub.disconnect()
        m = sub.get(timeout=5)
        assert m is not None and m.topic == "anon/ok", m and m.topic
        got = mq.messages()
        assert [g[0] for g in got] == ["anon/ok"], mq.all
    finally:
        sub.disconnect()
    assert srv.wait_log("delivery of anon/secret refused by acl_file", 3.0)
    assert wait_until(lambda: denied_total(srv) >= 4, 5.0), status_totals(srv)


@pytest.mark.parametrize("version", [4, 5])
def test_will_on_a_denied_topic_is_refused(server_factory, version):
    srv = acl_server(server_factory)
    c = raw(srv, version)
    with c:
        ack = c.connect(uniq("w"), version=version, will={"topic": "pub/will", "payload": b"x"})
        assert ack.rc == (0x87 if version == 5 else 5), ack
        c.wait_closed(3.0)
    assert srv.wait_log("will refused: denied by acl_file", 3.0)
    # An allowed will goes out at an abnormal close.
    w = anon(srv)
    with w:
        assert w.subscribe([("anon/#", 1)]).codes == [1]
        c = raw(srv, version)
        ack = c.connect(uniq("w"), version=version, will={"topic": "anon/will", "payload": b"y"})
        assert ack.rc == 0, ack
        c.abort()
        assert w.recv_publish().topic == "anon/will"


@pytest.mark.parametrize("version", [4, 5])
def test_will_denied_by_a_reload_is_not_published(server_factory, version):
    """A will granted at CONNECT is checked again when it is due: a reload
    in between that denies it keeps it from going out (counted, logged)."""
    srv = acl_server(server_factory)
    c = raw(srv, version)
    with c:
        ack = c.connect(uniq("w"), version=version, will={"topic": "anon/will", "payload": b"y"})
        assert ack.rc == 0, ack
        reload_acl(srv, "topic read anon/#\n")  # anonymous clients may no longer write there
        before = denied_total(srv)
        mark = len(srv.log())
        c.abort()
    # The session's end logs one of the two outcomes.
    assert wait_until(lambda: "will on anon/will" in since(srv, mark), 5.0), srv.log_tail()
    assert "will on anon/will not published: acl_file no longer grants it" in since(srv, mark)
    assert "publishing will on anon/will" not in since(srv, mark)
    assert wait_until(lambda: denied_total(srv) > before, 5.0), status_totals(srv)


def test_sighup_changes_the_rules_and_a_broken_file_keeps_them(server_factory):
    srv = acl_server(server_factory)
    dev = srv.add_device()
    c = anon(srv, client_id="keeper")
    d, _ = raw_connected(srv, dev, client_id=uniq("dv"))
    with c, d:
        assert c.publish("anon/a", b"1", qos=1, pid=1).rc == 0
        assert d.publish("mine/a", b"1", qos=1, pid=1).rc == 0x87

        # anon/# read-only for anonymous now; the device gets a user block.
        reload_acl(srv, "topic read anon/#\nuser %s\ntopic readwrite mine/#\n" % dev.id)
        assert c.publish("anon/a", b"2", qos=1, pid=2).rc == 0x87
        assert d.publish("mine/a", b"2", qos=1, pid=2).rc == 0
        s = anon(srv)
        with s:
            assert s.subscribe([("anon/#", 1), ("pub/#", 1)]).codes == [1, 0x87]
            s.disconnect()

        # A broken file: the supervisor refuses the reload, the rules stay.
        mark = hup(srv, "topic readwrite anon/#\ntopic raed x\n")
        assert wait_until(lambda: "config not reloaded" in since(srv, mark), 5.0), srv.log_tail()
        assert "acl_file acl:2: unknown access 'raed'" in since(srv, mark)
        assert c.publish("anon/a", b"3", qos=1, pid=3).rc == 0x87
        assert d.publish("mine/b", b"3", qos=1, pid=3).rc == 0
        assert "acl_file acl read" not in since(srv, mark)

        # A missing file, likewise.
        os.unlink(os.path.join(srv.workdir, "acl"))
        mark = len(srv.log())
        os.kill(srv.proc.pid, signal.SIGHUP)
        assert wait_until(lambda: "config not reloaded" in since(srv, mark), 5.0), srv.log_tail()
        assert "acl_file acl: No such file" in since(srv, mark)
        assert d.publish("mine/c", b"4", qos=1, pid=4).rc == 0

        # Fixed again: the rules change, and no connection was dropped.
        reload_acl(srv, ACL.replace("{dev}", dev.id))
        assert c.publish("anon/a", b"5", qos=1, pid=5).rc == 0
        assert d.publish("mine/d", b"5", qos=1, pid=5).rc == 0x87
        assert c.is_open() and d.is_open()
        c.disconnect()
        d.disconnect()


def test_a_shard_respawned_on_a_broken_file_refuses_everything(server_factory):
    """The file broke after the start and a shard is replaced: it starts
    (no crash loop) and refuses every access until a good file is reloaded."""
    srv = acl_server(server_factory, shards=1)
    c = anon(srv)
    with c:
        assert c.publish("anon/a", b"1", qos=1, pid=1).rc == 0
    write_acl(srv, "topic readwrite anon/#\nbogus line\n")
    first = srv.shard_pids()
    srv.cli("shard", "kill", "0")
    assert wait_until(lambda: srv.shard_pids() and srv.shard_pids() != first, 10.0), \
        srv.log_tail()
    assert srv.wait_log("acl:2: unknown keyword 'bogus'", 10.0), srv.log_tail()
    assert "every client access is refused" in srv.log()
    srv.wait_api_healthy()
    c = anon(srv)
    with c:
        assert c.publish("anon/a", b"2", qos=1, pid=1).rc == 0x87
        reload_acl(srv, ACL)
        assert c.publish("anon/a", b"3", qos=1, pid=2).rc == 0
        c.disconnect()


def test_a_broken_file_stops_the_start(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("topic read a/#\n\nuser\n")
    argv = [CYAN_BIN, "--data_dir=%s" % (tmp_path / "data"), "--acl_file=%s" % acl,
            "--mqtt_listen=127.0.0.1:%d" % free_port(), "--http_listen=", "--ops_listen=",
            "--coap_listen=", "--coaps_listen="]
    cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=20, env=child_env())
    assert cp.returncode == 1, cp
    assert "cannot start: acl_file %s:3: user: no username" % acl in cp.stderr, cp.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made
    argv[2] = "--acl_file=%s" % (tmp_path / "missing")
    cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=20, env=child_env())
    assert cp.returncode == 1 and "No such file" in cp.stderr, cp


def test_coap_event_and_subscription_refused(server_factory):
    """With isolation: a device's own space by its username (its id), and
    no event named secret."""
    srv = acl_server(server_factory, "pattern readwrite devices/%u/#\n"
                                     "pattern deny devices/%u/events/secret\n",
                     _template=False, isolate_devices=True, coap_insecure=True,
                     allow_anonymous=False)
    srv.wait_api_healthy()
    d = api_device(srv)
    dev = coapdev.Device(srv.host, srv.coap_port, d["id"])
    try:
        assert dev.event("temp", b"1").code == code(2, 4)
        r = dev.event("secret", b"1")
        assert r.code == code(4, 3) and b"acl_file" in r.payload, r
        # isolation lets a device publish on events/..., the ACL does not
        r = dev.request(coapdev.POST, "t/events/x", b"1")
        assert r.code == code(4, 3) and b"acl_file" in r.payload, r
        assert dev.subscribe("devices/%s/m/#" % d["id"]).code == code(2, 4)
        r = dev.subscribe("events/#")
        assert r.code == code(4, 3) and b"acl_file" in r.payload, r
        assert dev.describe().code == code(2, 4)
    finally:
        dev.close()
    assert srv.wait_log("publish on devices/%s/events/secret refused by acl_file" % d["id"], 3.0)


def test_canaries_pass_an_acl_that_denies_everything(server_factory):
    """Internal devices (the canaries) are not bound by the ACL."""
    srv = acl_server(server_factory, "# nothing is allowed\n", _template=False,
                     isolate_devices=True, allow_anonymous=False)
    srv.wait_api_healthy()
    n = nshards(srv)
    assert_all_ok(probe(srv, "--count", "1"), range(n), 1, n)
    # and a user's device is refused
    dev = srv.add_device()
    c, _ = raw_connected(srv, dev, client_id=dev.id)
    with c:
        assert c.publish("devices/%s/x" % dev.id, b"1", qos=1, pid=1).rc == 0x87
        assert c.subscribe([("devices/%s/#" % dev.id, 1)]).codes == [0x87]
        c.disconnect()
