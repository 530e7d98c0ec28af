'use strict';
// Namespaces, limits, API info, invoke headers.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const { ACTIVATION_ID, uniq, assertErrorBody } = require('./lib/helpers');

const srv = useServer();

test('GET /api/v1 and / describe the API without auth', async () => {
  const v1 = await srv.raw('GET', '/api/v1', { key: null });
  assert.equal(v1.status, 200);
  assert.equal(v1.json.api_version, '1.0.0');
  assert.equal(v1.json.api_version_path, 'v1');
  assert.equal(typeof v1.json.description, 'string');

  const root = await srv.raw('GET', '/', { key: null });
  assert.equal(root.status, 200);
  assert.deepEqual(root.json.api_paths, ['/api/v1']);
  assert.equal(typeof root.json.limits, 'object');
  assert.equal(typeof root.json.runtimes, 'object');

  const ping = await srv.raw('GET', '/ping', { key: null });
  assert.equal(ping.status, 200);
  assert.match(ping.text, /pong/);
});

test('namespaces.list includes guest (and whisk.system for its key)', async () => {
  const list = await srv.guest().namespaces.list();
  assert.ok(Array.isArray(list));
  assert.deepEqual(list, ['guest']);
  const sys = await srv.system().namespaces.list();
  assert.ok(sys.includes('whisk.system'), JSON.stringify(sys));
});

test('namespaces.get lists the four collections', async () => {
  const ns = await srv.guest().namespaces.get();
  for (const k of ['actions', 'packages', 'triggers', 'rules']) assert.ok(Array.isArray(ns[k]), `${k}: ${JSON.stringify(ns[k])}`);
});

test('GET /namespaces/_/limits shape', async () => {
  const r = await srv.raw('GET', '/api/v1/namespaces/_/limits');
  assert.equal(r.status, 200, r.text);
  const l = r.json;
  for (const k of ['invocationsPerMinute', 'concurrentInvocations', 'firesPerMinute',
    'minActionMemory', 'maxActionMemory', 'minActionTimeout', 'maxActionTimeout',
    'minActionLogs', 'maxActionLogs', 'minActionConcurrency', 'maxActionConcurrency']) {
    assert.equal(typeof l[k], 'number', `${k} is a number: ${JSON.stringify(l)}`);
  }
  assert.ok('maxParameterSize' in l, `maxParameterSize present: ${JSON.stringify(l)}`);
  // units as in action limits: memory and logs in MB, timeout in ms
  assert.ok(l.minActionMemory <= 256 && 256 <= l.maxActionMemory,
    `default memory 256 (MB) within [minActionMemory, maxActionMemory]: ${l.minActionMemory}..${l.maxActionMemory}`);
  assert.ok(l.minActionLogs <= 10 && 10 <= l.maxActionLogs,
    `default logs 10 (MB) within [minActionLogs, maxActionLogs]: ${l.minActionLogs}..${l.maxActionLogs}`);
  assert.ok(l.minActionTimeout <= 60000 && 60000 <= l.maxActionTimeout, 'default timeout within range');
  assert.ok(l.minActionTimeout <= 1000, 'a 1 s timeout is allowed');
  const unauth = await srv.raw('GET', '/api/v1/namespaces/_/limits', { key: null });
  assert.equal(unauth.status, 401);
});

test('limits outside the allowed range give 400', async () => {
  const ow = srv.guest();
  for (const limits of [{ memory: 100000 }, { memory: 64 }, { timeout: 99 }, { timeout: 300001 }, { logs: 100000 }]) {
    const raw = await srv.raw('PUT', `/api/v1/namespaces/_/actions/${uniq('badlimit')}`, {
      body: { exec: { kind: 'nodejs:default', code: 'function main() { return {}; }' }, limits },
    });
    assert.equal(raw.status, 400, `${JSON.stringify(limits)}: ${raw.status} ${raw.text}`);
    assertErrorBody(raw.json);
  }
  const ok = await ow.actions.create({ name: uniq('okmem'), action: 'function main() {}', limits: { memory: 128, timeout: 100 } });
  assert.equal(ok.limits.memory, 128);
  assert.equal(ok.limits.timeout, 100);
});

test('invoke responses carry x-openwhisk-activation-id', async () => {
  const ow = srv.guest();
  const name = uniq('hdr');
  await ow.actions.create({ name, action: 'function main() { return { ok: true }; }' });
  const blocking = await srv.raw('POST', `/api/v1/namespaces/_/actions/${name}?blocking=true`, { body: {} });
  assert.equal(blocking.status, 200, blocking.text);
  assert.match(blocking.headers.get('x-openwhisk-activation-id') || '', ACTIVATION_ID);
  assert.equal(blocking.headers.get('x-openwhisk-activation-id'), blocking.json.activationId);
  const nonblocking = await srv.raw('POST', `/api/v1/namespaces/_/actions/${name}`, { body: {} });
  assert.equal(nonblocking.status, 202);
  assert.equal(nonblocking.headers.get('x-openwhisk-activation-id'), nonblocking.json.activationId);
  const err = await srv.raw('POST', `/api/v1/namespaces/guest/actions/${name}?blocking=true&timeout=60001`, { body: {} });
  assert.equal(err.status, 400, 'timeout above 60000');
});

test('CORS headers on API responses and OPTIONS', async () => {
  const r = await srv.raw('OPTIONS', '/api/v1/namespaces/_/actions', { key: null, headers: { Origin: 'http://example.com', 'Access-Control-Request-Method': 'PUT' } });
  assert.ok(r.status === 200 || r.status === 204, `OPTIONS status ${r.status}`);
  assert.equal(r.headers.get('access-control-allow-origin'), '*');
  const methods = (r.headers.get('access-control-allow-methods') || '').split(',').map((s) => s.trim());
  for (const m of ['GET', 'DELETE', 'POST', 'PUT', 'HEAD']) assert.ok(methods.includes(m), `allow-methods has ${m}: ${methods}`);
  const g = await srv.raw('GET', '/api/v1/namespaces/_/actions');
  assert.equal(g.headers.get('access-control-allow-origin'), '*');
});
