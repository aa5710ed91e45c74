// A WebSocket echo server on the `ws` package, the alternative upstream of the gateway benchmark
// (`gateway_bench.py --echo node`). It refuses (401) every handshake whose `token` header is not WS_TOKEN, so a
// proxy that fails to inject the credential is caught. Like the Python echo server, it answers the text
// message "stream N" by streaming N-byte messages.
//
//   WS_TOKEN=... node ws_echo.js PORT [PORT...]
//
// Prints "listening PORT..." once bound; exits on SIGTERM or SIGINT.
'use strict';

const crypto = require('crypto');
const http = require('http');
const { WebSocketServer } = require('ws');

const token = Buffer.from(process.env.WS_TOKEN || '');
const ports = process.argv.slice(2).map(Number);
if (!token.length || !ports.length || ports.some((p) => !Number.isInteger(p) || p <= 0)) {
  console.error('usage: WS_TOKEN=secret node ws_echo.js PORT [PORT...]');
  process.exit(2);
}

function authorised(req) {
  const given = Buffer.from(String(req.headers.token || ''));
  return given.length === token.length && crypto.timingSafeEqual(given, token);
}

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });
const STREAM = 'stream ';
const STREAM_IN_FLIGHT = 8; // messages handed to the socket and not yet written out

wss.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => {
    // The text command "stream N": send N-byte binary messages nonstop, as fast as the socket drains.
    if (!isBinary && data.length < 32 && data.toString().startsWith(STREAM)) {
      const chunk = crypto.randomBytes(Number(data.toString().slice(STREAM.length)));
      let inFlight = 0;
      const pump = () => {
        while (socket.readyState === socket.OPEN && inFlight < STREAM_IN_FLIGHT) {
          inFlight += 1;
          socket.send(chunk, { binary: true }, () => {
            inFlight -= 1;
            pump();
          });
        }
      };
      pump();
      return;
    }
    socket.send(data, { binary: isBinary });
  });
  socket.on('error', () => socket.terminate());
});

let bound = 0;
for (const port of ports) {
  const server = http.createServer((req, res) => {
    res.writeHead(426).end();
  });
  server.on('upgrade', (req, socket, head) => {
    if (!authorised(req)) {
      socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  server.listen(port, '127.0.0.1', () => {
    bound += 1;
    if (bound === ports.length) console.log(`listening ${ports.join(' ')}`);
  });
}

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
