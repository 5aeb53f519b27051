// A minimal cyan device in JavaScript (MQTT.js from npm), speaking MQTT 5.
//
// It follows docs/device-protocol.md: it logs in with its id and secret,
// publishes its describe after every connect, answers function calls and
// variable reads on their Response Topic with their Correlation Data,
// publishes a temperature event every INTERVAL seconds, and reconnects with
// a backoff (1 s doubling to 60 s) when the connection drops.
//
//   cd examples/js && npm install
//   CYAN_DEVICE_ID=<id> CYAN_DEVICE_SECRET=<secret> node device.js
//
// Environment: CYAN_URL (mqtt://127.0.0.1:1883; ws://127.0.0.1:8080/mqtt
// works too), CYAN_DEVICE_ID, CYAN_DEVICE_SECRET, INTERVAL (10 seconds).
"use strict";

const mqtt = require("mqtt");

const id = process.env.CYAN_DEVICE_ID;
const secret = process.env.CYAN_DEVICE_SECRET;
if (!id || !secret) {
  console.error("CYAN_DEVICE_ID and CYAN_DEVICE_SECRET must be set");
  process.exit(2);
}
const url = process.env.CYAN_URL || "mqtt://127.0.0.1:1883";
const interval = Number(process.env.INTERVAL || 10) * 1000;
const base = `devices/${id}`;
const started = Date.now();
let led = "off";

const functions = {
  led: (arg) => (arg === "on" || arg === "off" ? ((led = arg), 1) : 0),
  echo: (arg) => arg,
};
const variables = {
  temperature: () => 21.5,
  uptime: () => Math.floor((Date.now() - started) / 1000),
  led: () => led,
};

const client = mqtt.connect(url, {
  protocolVersion: 5,
  clientId: id,
  username: id,
  password: secret,
  clean: false,
  properties: { sessionExpiryInterval: 3600 },
  reconnectPeriod: 1000,
});

client.on("connect", () => {
  client.options.reconnectPeriod = 1000; // the backoff starts again
  client.subscribe([`${base}/call/#`, `${base}/get/#`], { qos: 1 });
  const describe = { functions: Object.keys(functions), variables: Object.keys(variables) };
  client.publish(`${base}/describe`, JSON.stringify(describe), { qos: 1, retain: true });
  console.log(`online as ${id}`);
});

client.on("close", () => {
  client.options.reconnectPeriod = Math.min(client.options.reconnectPeriod * 2, 60000);
});

client.on("error", (err) => console.log(`error: ${err.message}`));

// MQTT 5: devices/<id>/call/<function> and devices/<id>/get/<variable>,
// answered on the Response Topic with the request's Correlation Data.
client.on("message", (topic, payload, packet) => {
  const [kind, name] = topic.slice(base.length + 1).split("/");
  const props = packet.properties || {};
  let value;
  if (kind === "call" && functions[name]) value = functions[name](payload.toString());
  else if (kind === "get" && variables[name]) value = variables[name]();
  else return; // not described: cyan answers 404 without asking
  if (!props.responseTopic) return;
  client.publish(props.responseTopic, JSON.stringify(value), {
    qos: 1,
    properties: { correlationData: props.correlationData },
  });
});

setInterval(() => {
  if (client.connected)
    client.publish(`${base}/events/temperature`, JSON.stringify(variables.temperature()), { qos: 1 });
}, interval);

process.on("SIGINT", () => client.end(false, () => process.exit(0)));
