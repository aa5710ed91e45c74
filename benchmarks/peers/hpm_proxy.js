// The seed's WebSocket proxy, as the gateway benchmark runs it: express + http-proxy-middleware with
// `ws: true, changeOrigin: true` and the shared secret injected as a `token` header.
//
//   WS_TOKEN=... node hpm_proxy.js PORT UPSTREAM_URL
//   (or HPM_PORT / HPM_TARGET in the environment)
//
// Listens on 127.0.0.1 only. Prints "listening PORT" once bound; exits on SIGTERM or SIGINT.
'use strict';

const express = require('express');
const { createProxyMiddleware } = require('http-proxy-middleware');

const port = Number(process.argv[2] || process.env.HPM_PORT);
const target = process.argv[3] || process.env.HPM_TARGET;
const token = process.env.WS_TOKEN;
if (!Number.isInteger(port) || port <= 0 || !target || !token) {
  console.error('usage: WS_TOKEN=secret node hpm_proxy.js PORT UPSTREAM_URL');
  process.exit(2);
}

const wsProxy = createProxyMiddleware({
  target,
  ws: true,
  changeOrigin: true,
  headers: { token },
});

const app = express();
app.use('/', wsProxy);

const server = app.listen(port, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
// Upgrades are handled from the first one on, not only after a first plain HTTP request went through the
// middleware (http-proxy-middleware guards against subscribing twice).
server.on('upgrade', wsProxy.upgrade);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
