"""Client helpers for the integration tests: devices, a synchronous wrapper
around paho-mqtt 1.6 (its own loop thread, no automatic reconnect), the
mosquitto_pub/mosquitto_sub command lines, raw clients with credentials and a
watcher of the retained $SYS/cyan/<counter> topics.

Every wait here is bounded in time.
"""

import collections
import os
import queue
import re
import socket
import struct
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCodes
from paho.mqtt.subscribeoptions import SubscribeOptions

import rawmqtt

# Peer mode (CYAN_PEER=mosquitto) validates the tests' logic against mosquitto;
# assertions on cyan's own choices are guarded by `if CYAN:`.
PEER = os.environ.get("CYAN_PEER", "")
CYAN = PEER != "mosquitto"

__all__ = ["PEER", "CYAN", "Device", "Client", "PacketTypes", "Properties", "ReasonCodes", "SubscribeOptions",
           "raw", "raw_connected", "mosquitto_pub", "MosquittoSub", "SysWatcher", "uniq",
           "wait_until", "rc_value"]

_DEV_ID = re.compile(r"^id:\s*([0-9a-f]{24})\s*$", re.M)
_DEV_SECRET = re.compile(r"^secret:\s*([0-9a-f]{32})\s*$", re.M)


class Device(collections.namedtuple("Device", "id secret name")):
    """A registered device: MQTT username = id, password = secret."""

    @classmethod
    def parse(cls, out, name=None):
        m_id, m_secret = _DEV_ID.search(out), _DEV_SECRET.search(out)
        assert m_id and m_secret, "unexpected `cyan device add` output:\n%s" % out
        return cls(m_id.group(1), m_secret.group(1), name)


_counter = [0]


def uniq(prefix="t"):
    """A fresh topic / client id fragment."""
    _counter[0] += 1
    return "%s%d_%x" % (prefix, _counter[0], int(time.monotonic() * 1000) & 0xFFFFFF)


def wait_until(pred, timeout=3.0, interval=0.05):
    """Poll pred() until true (returns True) or timeout (returns False)."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def rc_value(rc):
    """int from a paho ReasonCodes or int."""
    return rc.value if isinstance(rc, ReasonCodes) else int(rc)


# ------------------------------------------------------------------ paho

class Client:
    """paho client driven by a private loop thread that never reconnects.

    c = Client(server, device, version=5); c.connect(); c.subscribe("t", 1)
    c.publish("t", b"x", qos=1); m = c.get()
    """

    def __init__(self, server, device=None, client_id=None, version=5, clean=True,
                 session_expiry=None, keepalive=30, will=None, connect_props=None,
                 username=None, password=None):
        self.server = server
        self.version = version
        self.clean = clean
        self.keepalive = keepalive
        self.session_expiry = session_expiry
        self.connect_props = connect_props
        if client_id is None:
            client_id = uniq("c")
        self.client_id = client_id
        proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        if version == 5:
            self.c = mqtt.Client(client_id=client_id, protocol=proto)
        else:
            self.c = mqtt.Client(client_id=client_id, protocol=proto, clean_session=clean)
        if device is not None and username is None:
            username, password = device.id, device.secret
        if username is not None:
            self.c.username_pw_set(username, password)
        if will is not None:
            self.c.will_set(will["topic"], will.get("payload", b""), will.get("qos", 0),
                            will.get("retain", False), properties=will.get("props"))
        self.messages = queue.Queue()
        self.connack = None  # (flags, rc int, properties)
        self.disconnect_rc = None
        self.disconnect_props = None
        self._connected = threading.Event()
        self._gone = threading.Event()
        self._suback = {}
        self._suback_ev = threading.Condition()
        self._stop = threading.Event()
        self._thread = None
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = self._on_disconnect

    # -- callbacks (loop thread)
    def _on_connect(self, c, ud, flags, rc, props=None):
        self.connack = (flags, rc_value(rc), props)
        self._connected.set()

    def _on_message(self, c, ud, msg):
        self.messages.put(msg)

    def _on_subscribe(self, c, ud, mid, granted, props=None):
        with self._suback_ev:
            self._suback[mid] = [rc_value(g) for g in granted]
            self._suback_ev.notify_all()

    def _on_disconnect(self, c, ud, rc, props=None):
        self.disconnect_rc = rc_value(rc)
        self.disconnect_props = props
        self._gone.set()

    def _run(self):
        for _ in range(10 ** 7):
            if self._stop.is_set():
                return
            try:
                rc = self.c.loop(timeout=0.05)
            except (OSError, ValueError, AttributeError):  # socket closed under the loop
                rc = mqtt.MQTT_ERR_CONN_LOST
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._gone.set()
                return

    # -- api
    def connect(self, timeout=5.0, expect_rc=0, clean=None):
        """Connect and wait for CONNACK. Returns (session_present, rc, props).
        With expect_rc not None, asserts the reason code."""
        if clean is None:
            clean = self.clean
        kw = {}
        if self.version == 5:
            props = self.connect_props
            if props is None and self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                props.SessionExpiryInterval = self.session_expiry
            kw = dict(clean_start=clean, properties=props)
        self._connected.clear()
        self._gone.clear()
        self._stop.clear()
        self.c.connect(self.server.host, self.server.port, self.keepalive, **kw)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._connected.wait(timeout):
            raise AssertionError("no CONNACK within %.1fs (client %s)" % (timeout, self.client_id))
        flags, rc, props = self.connack
        sp = int(flags.get("session present", 0))
        if expect_rc is not None:
            assert rc == expect_rc, "CONNACK rc %d (0x%02x), expected 0x%02x" % (rc, rc, expect_rc)
        return sp, rc, props

    def subscribe(self, topic, qos=0, options=None, props=None, timeout=5.0):
        """topic: a filter or a list of (filter, qos|SubscribeOptions).
        Returns the granted codes (list of int)."""
        if self.version == 5 and not isinstance(topic, list) and options is None:
            options = SubscribeOptions(qos=qos)
        if isinstance(topic, list):
            rc, mid = self.c.subscribe(topic, properties=props) if self.version == 5 \
                else self.c.subscribe(topic)
        elif self.version == 5:
            rc, mid = self.c.subscribe(topic, options=options, properties=props)
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, "subscribe failed locally: %d" % rc
        deadline = time.monotonic() + timeout
        with self._suback_ev:
            while mid not in self._suback:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no SUBACK within %.1fs" % timeout)
                self._suback_ev.wait(left)
            return self._suback.pop(mid)

    def unsubscribe(self, topic):
        self.c.unsubscribe(topic)

    def publish(self, topic, payload=b"", qos=0, retain=False, props=None, timeout=5.0,
                wait=True):
        info = self.c.publish(topic, payload, qos, retain, properties=props)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, "publish failed locally: %d" % info.rc
        if wait:
            info.wait_for_publish(timeout)
            assert info.is_published(), "publish to %r (QoS %d) not completed in %.1fs" % (
                topic, qos, timeout)
        return info

    def get(self, timeout=3.0):
        """Next received message (paho MQTTMessage) or AssertionError."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no message within %.1fs (client %s)" % (timeout, self.client_id))

    def get_n(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        out = []
        for _ in range(n):
            left = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(0.0, left)))
            except queue.Empty:
                raise AssertionError("got %d of %d messages within %.1fs: %r" % (
                    len(out), n, timeout, [(m.topic, m.payload) for m in out]))
        return out

    def drain(self, quiet=0.5, limit=100000):
        """All messages until none arrives for `quiet` seconds."""
        out = []
        for _ in range(limit):
            try:
                out.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                break
        return out

    def expect_none(self, timeout=0.5):
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError("unexpected message %r %r" % (m.topic, m.payload))

    def wait_gone(self, timeout=3.0):
        """True when the server closed the connection (or it was lost)."""
        return self._gone.wait(timeout)

    def _join(self, timeout=3.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def disconnect(self, reason=None, props=None, timeout=3.0):
        """Normal DISCONNECT (v5 reason code `reason`)."""
        rc = None
        if reason is not None:
            rc = ReasonCodes(PacketTypes.DISCONNECT, identifier=reason)
        if self.version == 5:
            self.c.disconnect(reasoncode=rc, properties=props)
        else:
            self.c.disconnect()
        self._gone.wait(timeout)
        self._join(timeout)

    def kill(self):
        """Drop the TCP connection without DISCONNECT (RST)."""
        self._join()
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            sock.close()

    def close(self):
        """Best-effort cleanup: disconnect if still connected, stop the thread."""
        try:
            if not self._gone.is_set() and self._thread is not None:
                self.disconnect(timeout=1.0)
        except Exception:
            pass
        self._join(1.0)
        try:
            sock = self.c.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def publish_props(**kw):
    """Properties(PUBLISH) from keyword names as paho spells them."""
    p = Properties(PacketTypes.PUBLISH)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


# ------------------------------------------------------------------ raw

def raw(server, version=5, timeout=5.0):
    return rawmqtt.RawClient(server.host, server.port, version=version, timeout=timeout)


def raw_connected(server, device=None, client_id=None, version=5, **kw):
    """A RawClient that sent CONNECT with the device's credentials and got a
    successful CONNACK; returns (client, connack)."""
    c = raw(server, version)
    if device is not None:
        kw.setdefault("username", device.id)
        kw.setdefault("password", device.secret)
    if client_id is None:
        client_id = uniq("r")
    ack = c.connect(client_id, **kw)
    assert ack.rc == 0, "raw CONNACK %r" % ack
    c.client_id = client_id
    return c, ack


# ------------------------------------------------------------------ mosquitto clients

def _mosq_common(server, device, version, client_id):
    args = ["-h", server.host, "-p", str(server.port), "-V", version]
    if device is not None:
        args += ["-u", device.id, "-P", device.secret]
    if client_id:
        args += ["-i", client_id]
    return args


def mosquitto_pub(server, device, topic, message, qos=0, version="mqttv5", retain=False,
                  client_id=None, extra=(), timeout=10):
    argv = ["mosquitto_pub"] + _mosq_common(server, device, version, client_id) + [
        "-t", topic, "-m", message, "-q", str(qos)] + (["-r"] if retain else []) + list(extra)
    cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=timeout)
    assert cp.returncode == 0, "%s -> %d\n%s%s" % (argv, cp.returncode, cp.stdout, cp.stderr)
    return cp


class MosquittoSub:
    """mosquitto_sub in the background, started and waited for its SUBACK.
    messages() returns [(topic, qos, retain, payload)] once it exits (after
    `count` messages or `wait` seconds of silence)."""

    MARK = "MSG|"

    def __init__(self, server, device, topic, qos=0, version="mqttv5", count=1, wait=5,
                 client_id=None, extra=()):
        # stdbuf: line-buffered stdout, so the SUBACK line arrives while it runs.
        self.argv = ["stdbuf", "-oL", "mosquitto_sub"] + _mosq_common(server, device, version, client_id) + [
            "-t", topic, "-q", str(qos), "-C", str(count), "-W", str(wait), "-d",
            "-F", self.MARK + " %t %q %r %p"] + list(extra)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = queue.Queue()
        self.all = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_subscribed(5.0)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _wait_subscribed(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, left))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError("mosquitto_sub: no SUBACK in %.1fs: %s" % (timeout, self.all))
            if line is None:
                raise AssertionError("mosquitto_sub exited before SUBACK: %s" % self.all)
            self.all.append(line)
            if "received SUBACK" in line:
                return

    def messages(self, timeout=15):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        for _ in range(100000):
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.all.append(line)
        out = []
        for line in self.all:
            if line.startswith(self.MARK + " "):
                _, topic, q, r, payload = (line.split(" ", 4) + [""])[:5]
                out.append((topic, int(q), int(r), payload))
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# ------------------------------------------------------------------ $SYS/cyan counters

class SysWatcher:
    """Subscribes to $SYS/cyan/# and keeps the latest decimal value of each
    counter (they are retained and republished every sys_interval)."""

    def __init__(self, server, device):
        self.values = {}
        self._cv = threading.Condition()
        self.client = Client(server, device, version=5)
        self.client.c.on_message = self._on_message
        self.client.connect()
        self.client.subscribe("$SYS/cyan/#", 0)

    def _on_message(self, c, ud, msg):
        name = msg.topic[len("$SYS/cyan/"):]
        try:
            v = int(msg.payload.decode().strip())
        except (ValueError, UnicodeDecodeError):
            v = msg.payload
        with self._cv:
            self.values[name] = v
            self._cv.notify_all()

    def wait(self, name, pred=lambda v: True, timeout=5.0):
        """Value of counter `name` once pred(value) holds; AssertionError
        (with the last value) after timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                v = self.values.get(name)
                if isinstance(v, int) and pred(v):
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("$SYS/cyan/%s: last value %r did not satisfy the "
                                         "condition within %.1fs" % (name, v, timeout))
                self._cv.wait(left)

    def close(self):
        self.client.close()
