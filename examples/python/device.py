#!/usr/bin/python3
"""A minimal cyan device in Python (paho-mqtt, Debian's python3-paho-mqtt).

It follows docs/device-protocol.md: it logs in with its id and secret,
publishes its describe after every connect, answers function calls and
variable reads, publishes a temperature event every INTERVAL seconds, and
reconnects with a backoff (1 s doubling to 60 s) when the connection drops.

    CYAN_DEVICE_ID=<id> CYAN_DEVICE_SECRET=<secret> /usr/bin/python3 examples/python/device.py

Environment: CYAN_HOST (127.0.0.1), CYAN_PORT (1883), CYAN_DEVICE_ID,
CYAN_DEVICE_SECRET, INTERVAL (10 seconds).
"""
import json
import os
import sys
import time

import paho.mqtt.client as mqtt

DEVICE_ID = os.environ.get("CYAN_DEVICE_ID") or sys.exit("CYAN_DEVICE_ID is not set")
SECRET = os.environ.get("CYAN_DEVICE_SECRET") or sys.exit("CYAN_DEVICE_SECRET is not set")
HOST = os.environ.get("CYAN_HOST", "127.0.0.1")
PORT = int(os.environ.get("CYAN_PORT", "1883"))
INTERVAL = float(os.environ.get("INTERVAL", "10"))
BASE = "devices/" + DEVICE_ID
STARTED = time.monotonic()
state = {"led": "off"}


def led(arg):
    """led on|off: switches the LED, returns 1 (0 for anything else)."""
    if arg not in ("on", "off"):
        return 0
    state["led"] = arg
    return 1


FUNCTIONS = {"led": led, "echo": lambda arg: arg}
VARIABLES = {"temperature": lambda: 21.5,
             "uptime": lambda: int(time.monotonic() - STARTED),
             "led": lambda: state["led"]}


def on_connect(client, userdata, flags, rc):
    if rc != 0:
        print("refused:", mqtt.connack_string(rc), flush=True)
        return
    client.subscribe([(BASE + "/call/#", 1), (BASE + "/get/#", 1)])
    describe = {"functions": sorted(FUNCTIONS), "variables": sorted(VARIABLES)}
    client.publish(BASE + "/describe", json.dumps(describe), qos=1, retain=True)
    print("online as", DEVICE_ID, flush=True)


def on_message(client, userdata, msg):
    # devices/<id>/call/<function>/<request id> or devices/<id>/get/<variable>/<request id>
    parts = msg.topic[len(BASE) + 1:].split("/")
    if len(parts) != 3:
        return
    kind, name, request_id = parts
    if kind == "call" and name in FUNCTIONS:
        value = FUNCTIONS[name](msg.payload.decode("utf-8", "replace"))
    elif kind == "get" and name in VARIABLES:
        value = VARIABLES[name]()
    else:
        return  # not described: cyan answers 404 without asking
    client.publish(BASE + "/reply/" + request_id, json.dumps(value), qos=1)


def on_disconnect(client, userdata, rc):
    if rc != 0:
        print("connection lost; reconnecting", flush=True)


client = mqtt.Client(client_id=DEVICE_ID, clean_session=False, protocol=mqtt.MQTTv311)
client.username_pw_set(DEVICE_ID, SECRET)
client.on_connect = on_connect
client.on_message = on_message
client.on_disconnect = on_disconnect
client.reconnect_delay_set(min_delay=1, max_delay=60)
client.connect_async(HOST, PORT, keepalive=60)
client.loop_start()  # a thread that connects, reads and reconnects with the backoff
try:
    while True:
        time.sleep(INTERVAL)
        if client.is_connected():
            client.publish(BASE + "/events/temperature", json.dumps(VARIABLES["temperature"]()), qos=1)
except KeyboardInterrupt:
    client.disconnect()
    client.loop_stop()
