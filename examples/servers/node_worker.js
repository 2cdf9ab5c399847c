// A Node.js http worker for einhyrningsins (and einhorn), no packages needed:
// examples/configs/node.toml, docs/workers.md.
//
// It listens on EINHORN_FD_0 (server.listen({fd})), acks with worker:ack on
// EINHORN_SOCK_PATH (ack = "manual"), answers `pid=<pid> version=<APP_VERSION>`
// (`/sleep?ms=N` after N ms) and stops on SIGUSR2 or SIGTERM.
//
// --drain=stock is what a plain Node server does: server.close(), which on
// Node 19+ also closes idle keep-alive connections at once, so a keep-alive
// client whose next request is on its way gets a read error. --drain=graceful
// (the default) stops accepting, answers with `Connection: close` for --grace
// ms (1000), then closes what is left.
'use strict';
const http = require('http');
const net = require('net');

const arg = (name, dflt) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : dflt;
};
const drain = arg('drain', 'graceful');
const grace = Number(arg('grace', '1000'));
const fd = Number(process.env.EINHORN_FD_0);
if (!Number.isInteger(fd) || process.env.EINHORN_FD_0 === undefined) {
  console.error('node_worker: EINHORN_FD_0 is not set: run me under einhyrningsins or einhorn');
  process.exit(2);
}
const version = process.env.APP_VERSION || '1';
let draining = false;

const server = http.createServer((req, res) => {
  const answer = () => {
    const body = `pid=${process.pid} version=${version}\n`;
    const headers = { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) };
    if (draining) headers.Connection = 'close';
    res.writeHead(200, headers);
    res.end(body);
  };
  const m = /^\/sleep\?ms=(\d+)/.exec(req.url);
  if (m) setTimeout(answer, Math.min(Number(m[1]), 10000));
  else answer();
});
server.keepAliveTimeout = 60000;

server.listen({ fd }, () => {
  const path = process.env.EINHORN_SOCK_PATH;
  if (!path) return;
  const c = net.createConnection(path, () => {
    c.end(JSON.stringify({ command: 'worker:ack', pid: process.pid }) + '\n');
  });
  c.on('error', (e) => console.error('node_worker: cannot ack:', e.message));
});

const stop = () => {
  if (draining) return;
  draining = true;
  setTimeout(() => process.exit(0), 25000).unref();
  if (drain === 'graceful') {
    // Stop accepting only: http.Server.close() would also close the idle
    // keep-alive connections at once (Node 19+). Keep answering, with
    // Connection: close, for a while; then close whatever is idle.
    net.Server.prototype.close.call(server, () => process.exit(0));
    setTimeout(() => server.closeIdleConnections(), grace);
  } else {
    server.close(() => process.exit(0));
  }
};
process.on('SIGUSR2', stop);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
