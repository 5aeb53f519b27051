// A CoAP device built on the npm `coap` package (node-coap), for cyan's
// integration tests (tests/integration/test_coap_npm.py): a client nobody
// here wrote, speaking cyan's device convention (docs/device-protocol.md,
// "CoAP") over plain UDP (cyan with coap_insecure=true).
//
//   node coap_device.js HOST PORT DEVICE_ID [CONFIG_JSON]
//
// CONFIG_JSON: {"functions": {"led": {"prefix": "on:", "delay_ms": 0}},
//               "variables": {"temp": "21.5"}}
// A function returns prefix + argument, after delay_ms (over node-coap's
// piggybackReplyMs of 50 ms it answers with an empty ACK and a separate
// response). A variable read returns its value.
//
// One UDP socket, bound to 127.0.0.1 on a free port, carries both sides:
// node-coap's Agent sends the device's requests from it (`new
// coap.Agent({socket})`) and its Server answers the cloud's requests on it
// (`server.listen(socket)`: listen() takes an existing socket). The Agent
// ignores requests and the Server ignores responses, so they do not clash.
//
// Talks to the test with one JSON object per line. stdin, commands:
//   {"n": 1, "method": "POST", "path": "e/temp", "query": "qos=1",
//    "payload": "21.5", "confirmable": true}
// (id=DEVICE_ID is added to every request's Uri-Query). stdout, events:
//   {"ev": "ready", "port": P}
//   {"ev": "response", "n": 1, "code": "2.04", "payload": "..."}
//   {"ev": "error", "n": 1, "error": "..."}
//   {"ev": "call"|"read"|"message"|"request", "name": ..., "arg": ...,
//    "confirmable": bool}        (the cloud's requests, as served)
// stderr: every datagram in ("<") and out (">"), in hex, for diagnosis.
'use strict';

const coap = require('coap');
const dgram = require('dgram');
const readline = require('readline');

const [host, portText, deviceId, configText] = process.argv.slice(2);
const port = Number(portText);
const config = JSON.parse(configText || '{}');
const functions = config.functions || {};
const variables = config.variables || {};

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const sock = dgram.createSocket('udp4');
sock.on('message', (buf, rinfo) => {
  process.stderr.write(`< ${rinfo.port} ${buf.toString('hex')}\n`);
});
const rawSend = sock.send.bind(sock);
sock.send = (buf, ...rest) => {
  process.stderr.write(`> ${buf.toString('hex')}\n`);
  return rawSend(buf, ...rest);
};

const agent = new coap.Agent({ socket: sock });
const server = coap.createServer();

server.on('request', (req, res) => {
  const parts = req.url.split('?')[0].split('/').filter((p) => p !== '');
  const confirmable = req._packet.confirmable;
  const arg = req.payload.toString();
  const name = parts.slice(1).join('/');
  if (parts[0] === 'c' && req.method === 'POST' && functions[name]) {
    const f = functions[name];
    out({ ev: 'call', name, arg, confirmable });
    res.code = '2.04';
    setTimeout(() => res.end((f.prefix || '') + arg), f.delay_ms || 0);
  } else if (parts[0] === 'v' && req.method === 'GET' && name in variables) {
    out({ ev: 'read', name, confirmable });
    res.code = '2.05';
    res.end(String(variables[name]));
  } else if (parts[0] === 'm' && req.method === 'POST') {
    out({ ev: 'message', name, arg, confirmable });
    res.code = '2.04';
    res.end();
  } else {
    out({ ev: 'request', name: req.method + ' ' + req.url, arg, confirmable });
    res.code = '4.04';
    res.end();
  }
});

function request(cmd) {
  const query = ['id=' + deviceId].concat(cmd.query ? [cmd.query] : []).join('&');
  const req = coap.request({
    hostname: host,
    port,
    method: cmd.method || 'POST',
    pathname: '/' + cmd.path,
    query,
    confirmable: cmd.confirmable !== false,
    agent,
  });
  req.on('response', (res) => {
    out({ ev: 'response', n: cmd.n, code: res.code, payload: res.payload.toString() });
  });
  req.on('error', (err) => out({ ev: 'error', n: cmd.n, error: String(err) }));
  req.on('timeout', (err) => out({ ev: 'error', n: cmd.n, error: 'timeout: ' + err }));
  req.end(cmd.payload ? Buffer.from(cmd.payload) : undefined);
}

sock.bind(0, '127.0.0.1', () => {
  server.listen(sock, () => {
    out({ ev: 'ready', port: sock.address().port });
    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => {
      if (line.trim() !== '') request(JSON.parse(line));
    });
    rl.on('close', () => {
      server.close();
      sock.close();
      process.exit(0);
    });
  });
});
