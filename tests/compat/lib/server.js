'use strict';
// Starts (or reuses) a Nimbus server for one test file and hands out clients and helpers.
//
//   const { useServer } = require('./lib/server');
//   const srv = useServer();          // registers before/after hooks in the calling test file
//   test('...', async () => { const ow = srv.guest(); ... });
//
// Env:
//   NIMBUS_BIN      server binary (default <repo>/target/debug/nimbus)
//   NIMBUS_APIHOST  use this running server (e.g. http://127.0.0.1:3233) instead of starting one
//   NIMBUS_LOG      when set, the server's stderr is echoed live

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { before, after } = require('node:test');
const openwhisk = require('openwhisk');

const REPO = path.resolve(__dirname, '..', '..', '..');
const GUEST_KEY = '23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP';
const SYSTEM_KEY = '789c46b1-71f6-4ed5-8c54-816aa4f8c502:abczO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP';
const START_TIMEOUT_MS = 60000;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function startServer() {
  if (process.env.NIMBUS_APIHOST) {
    const apihost = process.env.NIMBUS_APIHOST.replace(/\/+$/, '');
    await waitReady(apihost, null, () => '');
    return { apihost, stop: async () => {} };
  }
  const bin = process.env.NIMBUS_BIN || path.join(REPO, 'target', 'debug', 'nimbus');
  if (!fs.existsSync(bin)) {
    throw new Error(`Nimbus binary not found at ${bin} (build it with 'cargo build -p nimbus' or set NIMBUS_BIN / NIMBUS_APIHOST)`);
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nimbus-compat-'));
  const port = await freePort();
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--dev'];
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  let stderr = '';
  const keep = (chunk) => {
    stderr += chunk.toString();
    if (stderr.length > 200000) stderr = stderr.slice(-100000);
    if (process.env.NIMBUS_LOG) process.stderr.write(chunk);
  };
  child.stderr.on('data', keep);
  child.stdout.on('data', keep);
  let exited = null;
  const exitPromise = new Promise((resolve) => child.on('exit', (code, signal) => {
    exited = { code, signal };
    resolve(exited);
  }));
  const killOnExit = () => { try { child.kill('SIGKILL'); } catch { /* already gone */ } };
  process.on('exit', killOnExit);

  const apihost = `http://127.0.0.1:${port}`;
  try {
    await waitReady(apihost, () => exited, () => stderr);
  } catch (e) {
    killOnExit();
    fs.rmSync(dataDir, { recursive: true, force: true });
    throw e;
  }

  async function stop() {
    process.removeListener('exit', killOnExit);
    if (!exited) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10000);
      await exitPromise;
      clearTimeout(t);
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  return { apihost, stop, stderr: () => stderr, pid: child.pid };
}

async function waitReady(apihost, exitedFn, stderrFn) {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let last = '';
  while (Date.now() < deadline) {
    const ex = exitedFn && exitedFn();
    if (ex) {
      throw new Error(`nimbus exited before answering (code ${ex.code}, signal ${ex.signal}). stderr:\n${stderrFn()}`);
    }
    try {
      const r = await fetch(`${apihost}/api/v1`, { signal: AbortSignal.timeout(2000) });
      if (r.status === 200) return;
      last = `HTTP ${r.status}`;
    } catch (e) {
      last = e.message;
    }
    await sleep(100);
  }
  throw new Error(`nimbus did not answer GET /api/v1 with 200 within ${START_TIMEOUT_MS} ms (last: ${last}). stderr:\n${stderrFn()}`);
}

function basic(key) {
  return 'Basic ' + Buffer.from(key).toString('base64');
}

/**
 * Registers before/after hooks that start and stop a server; returns a handle whose
 * methods work once the `before` hook has run. `setup(handle)`, if given, runs right after
 * the server is up (use it instead of a separate `before`, whose order is not guaranteed).
 */
function useServer(setup) {
  const handle = {
    apihost: null,
    GUEST_KEY,
    SYSTEM_KEY,
    guest: () => openwhisk({ apihost: handle.apihost, api_key: GUEST_KEY }),
    system: () => openwhisk({ apihost: handle.apihost, api_key: SYSTEM_KEY }),
    client: (key) => openwhisk({ apihost: handle.apihost, api_key: key }),
    /**
     * Raw HTTP request. `path` is relative to the host (e.g. '/api/v1/namespaces/_/actions').
     * opts: {key (default guest; null for none), body (object → JSON, string/Buffer sent as-is), headers, method}
     * Returns {status, headers, text, json}.
     */
    async raw(method, p, opts = {}) {
      const headers = Object.assign({}, opts.headers || {});
      const key = opts.key === undefined ? GUEST_KEY : opts.key;
      if (key) headers.authorization = basic(key);
      let body = opts.body;
      if (body !== undefined && typeof body === 'object' && !Buffer.isBuffer(body)) {
        body = JSON.stringify(body);
        if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) headers['content-type'] = 'application/json';
      }
      const r = await fetch(handle.apihost + p, { method, headers, body, redirect: 'manual', signal: AbortSignal.timeout(90000) });
      const text = await r.text();
      let json;
      try { json = text.length ? JSON.parse(text) : undefined; } catch { json = undefined; }
      return { status: r.status, headers: r.headers, text, json };
    },
    stderr: () => '',
  };
  let server;
  before(async () => {
    server = await startServer();
    handle.apihost = server.apihost;
    if (server.stderr) handle.stderr = server.stderr;
    if (setup) await setup(handle);
  }, { timeout: START_TIMEOUT_MS + 60000 });
  after(async () => {
    if (server) await server.stop();
  }, { timeout: 20000 });
  return handle;
}

module.exports = { useServer, startServer, GUEST_KEY, SYSTEM_KEY, basic, sleep };
