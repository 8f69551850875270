// @tus/server with @tus/file-store for the tusfast benchmarks.
//
//     node tus_node_server.mjs PORT DIR
//
// Listens on 127.0.0.1:PORT only, accepts uploads at /files/ and stores them in DIR
// (<id> for the data, <id>.json for the metadata). The harness (benchmarks/servers.py) copies this
// file next to the node_modules it installed, so that the imports below resolve.
import http from 'node:http';
import { FileStore } from '@tus/file-store';
import { Server } from '@tus/server';

const [port, directory] = process.argv.slice(2);
if (!port || !directory) {
  console.error('usage: node tus_node_server.mjs PORT DIR');
  process.exit(2);
}

const tus = new Server({ path: '/files', datastore: new FileStore({ directory }) });
const server = http.createServer((req, res) => tus.handle(req, res));
server.keepAliveTimeout = 75_000;   // as tusfast's --idle-timeout; Node's 5 s default drops idle clients
server.requestTimeout = 0;          // a 1 GiB PATCH may take longer than Node's 300 s default

server.listen(Number(port), '127.0.0.1', () => {
  console.log(`@tus/server listening on http://127.0.0.1:${port}/files/`);
});
// @tus/server 2.x on Node 20 can throw "ReadableStream is already closed" from a microtask
// when a client closes its connection right after a GET finished; uncaught, that ends the process.
// Log it (the harness reports these lines) and keep serving.
process.on('uncaughtException', (error) => {
  console.error(`uncaught exception (server kept running): ${error?.stack ?? error}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
