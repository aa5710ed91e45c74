// A pub/sub broadcast server on the `ws` package: the Node peer of the hub benchmark (benchmarks/hub_fanout.py).
//
// It speaks the minimum of the wsgate hub's protocol that the benchmark's clients use, so every target does the
// same work per connection and per publish:
//   - handshake on any path with `Authorization: Bearer <token>`: SUB_TOKEN may subscribe, PUB_TOKEN may also
//     publish; anything else gets 401 (constant-time comparison, as the hub's static tokens);
//   - {"type":"subscribe","channel":C}  ->  {"type":"subscribed","channel":C,"offset":<last offset of C>};
//   - {"type":"publish","channel":C,"data":D} (PUB_TOKEN only)  ->  the channel's offset + 1, and
//     {"type":"message","channel":C,"offset":N,"data":D} to every subscriber of C, in subscription order.
//
//   SUB_TOKEN=... PUB_TOKEN=... node ws_broadcast.js PORT [send|preframed]
//
// Broadcast modes:
//   send       (default) the loop ws's README shows, with the message encoded to a Buffer once:
//              `for (const c of subscribers) c.send(buf, {binary: false})`; ws frames it again for each client.
//   preframed  the frame is built once with ws's public `WebSocket.Sender.frame()` and the same bytes are
//              written to every client's socket (`client._socket.write`, a private field: safe here because
//              permessage-deflate is off and nothing else sends concurrently).
//
// Listens on 127.0.0.1 only. Prints "listening PORT" once bound; exits on SIGTERM or SIGINT.
'use strict';

const crypto = require('crypto');
const http = require('http');
const WebSocket = require('ws');

const port = Number(process.argv[2]);
const mode = process.argv[3] || 'send';
const subToken = Buffer.from(process.env.SUB_TOKEN || '');
const pubToken = Buffer.from(process.env.PUB_TOKEN || '');
if (!Number.isInteger(port) || port <= 0 || !subToken.length || !pubToken.length || !['send', 'preframed'].includes(mode)) {
  console.error('usage: SUB_TOKEN=... PUB_TOKEN=... node ws_broadcast.js PORT [send|preframed]');
  process.exit(2);
}

function same(given, expected) {
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

// The right a handshake's bearer token grants: 'publish', 'subscribe', or null (refused).
function rightOf(req) {
  const header = String(req.headers.authorization || '');
  if (!header.startsWith('Bearer ')) return null;
  const given = Buffer.from(header.slice(7));
  if (same(given, pubToken)) return 'publish';
  if (same(given, subToken)) return 'subscribe';
  return null;
}

const channels = new Map(); // name -> {offset, subscribers: Set<WebSocket>} (a Set iterates in insertion order)

function channel(name) {
  let entry = channels.get(name);
  if (entry === undefined) {
    entry = { offset: 0, subscribers: new Set() };
    channels.set(name, entry);
  }
  return entry;
}

const FRAME_OPTIONS = { fin: true, rsv1: false, opcode: 0x1, mask: false, readOnly: false };

function broadcast(subscribers, text) {
  const payload = Buffer.from(text);
  if (mode === 'preframed') {
    const frame = Buffer.concat(WebSocket.Sender.frame(payload, FRAME_OPTIONS));
    for (const client of subscribers) {
      if (client.readyState === WebSocket.OPEN) client._socket.write(frame);
    }
    return;
  }
  for (const client of subscribers) {
    if (client.readyState === WebSocket.OPEN) client.send(payload, { binary: false });
  }
}

function onMessage(client, right, raw) {
  let command;
  try {
    command = JSON.parse(raw);
  } catch {
    client.close(1007, 'not JSON');
    return;
  }
  if (command.type === 'subscribe' && typeof command.channel === 'string') {
    const entry = channel(command.channel);
    client.send(JSON.stringify({ type: 'subscribed', channel: command.channel, offset: entry.offset }));
    entry.subscribers.add(client);
    client.channels.push(entry);
  } else if (command.type === 'publish' && right === 'publish' && typeof command.channel === 'string') {
    const entry = channel(command.channel);
    entry.offset += 1;
    const data = JSON.stringify(command.data);
    broadcast(entry.subscribers, `{"type":"message","channel":${JSON.stringify(command.channel)},"offset":${entry.offset},"data":${data}}`);
  } else {
    client.send(JSON.stringify({ type: 'error', code: 'bad_request', message: 'unknown or forbidden command' }));
  }
}

const wss = new WebSocket.WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });

wss.on('connection', (client, req, right) => {
  client.channels = [];
  client.on('message', (data, isBinary) => {
    if (isBinary) client.close(1003, 'text only');
    else onMessage(client, right, data);
  });
  client.on('close', () => {
    for (const entry of client.channels) entry.subscribers.delete(client);
  });
  client.on('error', () => client.terminate());
});

const server = http.createServer((req, res) => {
  res.writeHead(426).end();
});
server.on('upgrade', (req, socket, head) => {
  const right = rightOf(req);
  if (right === null) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (client) => wss.emit('connection', client, req, right));
});
server.listen({ port, host: '127.0.0.1', backlog: 4096 }, () => {
  console.log(`listening ${server.address().port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
