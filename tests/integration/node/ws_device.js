// A device built on MQTT.js from npm, connected over WebSocket (ws://.../mqtt,
// subprotocol mqtt), for cyan's integration tests (tests/integration/test_websocket.py).
//
// Usage: node ws_device.js URL DEVICE_ID SECRET TOPIC
// Connects with MQTT 5 as the device (client id and username = its id,
// password = its secret), describes one function, "double", subscribes to
// TOPIC and to its calls, and prints one JSON line per event on stdout:
//   {"event":"connected"} {"event":"subscribed"}
//   {"event":"message","topic":...,"payload":...}
//   {"event":"call","name":...,"arg":...}   (answered with twice the number)
//   {"event":"error","message":...} {"event":"close"}
// Reads commands from stdin, one JSON object a line:
//   {"publish": TOPIC, "payload": TEXT}
// and ends when stdin closes.
"use strict";

const mqtt = require("mqtt");
const readline = require("readline");

const [url, id, secret, topic] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const client = mqtt.connect(url, {
  protocolVersion: 5,
  clientId: id,
  username: id,
  password: secret,
  reconnectPeriod: 0,
  connectTimeout: 10000,
});

client.on("connect", () => {
  say({ event: "connected" });
  client.publish(`devices/${id}/describe`, JSON.stringify({ functions: ["double"] }), { qos: 1 });
  client.subscribe([topic, `devices/${id}/call/#`], { qos: 1 }, (err) => {
    if (err) say({ event: "error", message: String(err) });
    else say({ event: "subscribed" });
  });
});

client.on("message", (t, payload, packet) => {
  const callPrefix = `devices/${id}/call/`;
  if (t.startsWith(callPrefix)) {
    const name = t.slice(callPrefix.length);
    const arg = payload.toString();
    say({ event: "call", name, arg });
    const p = packet.properties || {};
    const n = Number(arg) * 2;
    client.publish(p.responseTopic, String(n), { qos: 1, properties: { correlationData: p.correlationData } });
    return;
  }
  say({ event: "message", topic: t, payload: payload.toString() });
});

client.on("error", (e) => say({ event: "error", message: String(e && e.message) }));
client.on("close", () => say({ event: "close" }));

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    return;
  }
  if (cmd.publish) client.publish(cmd.publish, cmd.payload || "", { qos: 1 });
});
rl.on("close", () => client.end(false, () => process.exit(0)));
