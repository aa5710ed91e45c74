// The seed's WebSocket proxy, as it was written: express + http-proxy-middleware forwarding /ws with
// `ws: true, changeOrigin: true` and the shared secret injected as a `token` header. Nothing checks the
// Origin, so any web page can open it and the proxy adds the secret for it - the hole `wsgate probe`
// reports and the wsgate gateway closes (docs/security.md). Kept verbatim on purpose: do not "fix" it.
//
//   TARGET=ws://127.0.0.1:9000 WS_TOKEN=... PORT=0 node hpm_seed_proxy.js
//
// Listens on 127.0.0.1 (PORT=0 picks a free port) and prints "listening PORT" once bound.
'use strict';

const express = require('express');
const { createProxyMiddleware } = require('http-proxy-middleware');

const wsProxy = createProxyMiddleware({
  target: process.env.TARGET,
  ws: true,
  changeOrigin: true,
  headers: { token: process.env.WS_TOKEN },
});

const app = express();
app.use('/ws', wsProxy);

const server = app.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
// The seed relied on a first plain HTTP request to hook upgrades; subscribing explicitly (as the
// http-proxy-middleware README shows) makes the very first WebSocket handshake go through the proxy.
server.on('upgrade', wsProxy.upgrade);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
