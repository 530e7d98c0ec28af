'use strict';
// Error statuses: application and developer errors, timeouts, 404/409/400/401.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { useServer, basic } = require('./lib/server');
const { uniq, ann, rejectsWith, assertErrorBody, assertActivation, kv } = require('./lib/helpers');

const srv = useServer();

test('application error: {error} result gives 502 and status "application error"', async () => {
  const ow = srv.guest();
  const name = uniq('apperr');
  await ow.actions.create({ name, action: "function main() { return { error: 'x' }; }" });
  const err = await rejectsWith(ow.actions.invoke({ name, blocking: true }), 502);
  assert.match(err.message, /Returned HTTP 502 .*--> "x"$/);
  const act = assertActivation(err.error, { name, status: 'application error', path: `guest/${name}` });
  assert.deepEqual(act.response.result, { error: 'x' });
  if ('statusCode' in act.response) assert.equal(act.response.statusCode, 1);

  const stored = await ow.activations.get({ activationId: act.activationId });
  assert.equal(stored.response.status, 'application error');
  assert.equal(stored.response.success, false);

  // result:true on the raw API still gives 502, with the result as the body
  const raw = await srv.raw('POST', `/api/v1/namespaces/_/actions/${name}?blocking=true&result=true`, { body: {} });
  assert.equal(raw.status, 502);
  assert.deepEqual(raw.json, { error: 'x' });
});

test('a rejected Promise is an application error', async () => {
  const ow = srv.guest();
  const name = uniq('reject');
  await ow.actions.create({ name, action: "function main() { return Promise.reject({ reason: 'nope' }); }" });
  const err = await rejectsWith(ow.actions.invoke({ name, blocking: true }), 502);
  assertActivation(err.error, { name, status: 'application error' });
  assert.deepEqual(err.error.response.result, { error: { reason: 'nope' } });
});

for (const [label, code] of [
  ['thrown exception', "function main() { throw new Error('kaboom'); }"],
  ['syntax error', 'function main() { return {; }'],
  ['non-object result', "function main() { return 'just a string'; }"],
  ['no main function', 'function notMain() { return {}; }'],
]) {
  test(`developer error (${label}) gives 502 "action developer error"`, async () => {
    const ow = srv.guest();
    const name = uniq('deverr');
    await ow.actions.create({ name, action: code });
    const err = await rejectsWith(ow.actions.invoke({ name, blocking: true }), 502, label);
    const act = assertActivation(err.error, { name, status: 'action developer error' });
    assert.equal(typeof act.response.result, 'object');
    assert.ok(act.response.result.error !== undefined, `result has error: ${JSON.stringify(act.response.result)}`);
    if ('statusCode' in act.response) assert.equal(act.response.statusCode, 2);
    // the action is still usable afterwards (a fresh instance is created)
    const again = await rejectsWith(ow.actions.invoke({ name, blocking: true }), 502, `${label} (second call)`);
    assert.equal(again.error.response.status, 'action developer error');
  });
}

test('timeout: limits.timeout 1000 with a sleeping action gives 502 developer error, annotation timeout:true', async () => {
  const ow = srv.guest();
  const name = uniq('timeout');
  const a = await ow.actions.create({
    name,
    action: 'function main() { return new Promise(r => setTimeout(() => r({ done: true }), 5000)); }',
    limits: { timeout: 1000 },
  });
  assert.equal(a.limits.timeout, 1000);
  const t0 = Date.now();
  const err = await rejectsWith(ow.actions.invoke({ name, blocking: true }), 502);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed < 4500, `the timeout fired well before the action would finish (${elapsed} ms)`);
  const act = assertActivation(err.error, { name, status: 'action developer error' });
  assert.equal(ann(act.annotations, 'timeout'), true);
  assert.match(String(act.response.result.error), /exceeded its time limits of 1000 milliseconds/);
  assert.equal(ann(act.annotations, 'limits').timeout, 1000);
});

test('a successful activation is annotated timeout:false', async () => {
  const ow = srv.guest();
  const name = uniq('notimeout');
  await ow.actions.create({ name, action: 'function main() { return {}; }' });
  const act = await ow.actions.invoke({ name, blocking: true });
  const t = ann(act.annotations, 'timeout');
  assert.ok(t === false || t === undefined, `timeout annotation is false or absent: ${t}`);
});

test('404 on a missing action (get, invoke, delete)', async () => {
  const ow = srv.guest();
  const name = uniq('missing');
  const e1 = await rejectsWith(ow.actions.get({ name }), 404);
  assertErrorBody(e1.error, 'The requested resource does not exist.');
  await rejectsWith(ow.actions.invoke({ name, blocking: true }), 404);
  await rejectsWith(ow.actions.invoke({ name }), 404);
  await rejectsWith(ow.actions.delete({ name }), 404);
  const raw = await srv.raw('GET', `/api/v1/namespaces/_/actions/${name}`);
  assert.equal(raw.status, 404);
  assert.match(raw.headers.get('content-type') || '', /application\/json/);
  assertErrorBody(raw.json, 'The requested resource does not exist.');
});

test('409 on create without overwrite of an existing action', async () => {
  const ow = srv.guest();
  const name = uniq('conflict');
  await ow.actions.create({ name, action: 'function main() { return {}; }' });
  const err = await rejectsWith(ow.actions.create({ name, action: 'function main() { return {v: 2}; }' }), 409);
  assertErrorBody(err.error, 'resource already exists');
  const a = await ow.actions.get({ name });
  assert.equal(a.version, '0.0.1', 'unchanged by the refused create');
});

test('400 on an invalid entity name', async () => {
  const ow = srv.guest();
  for (const bad of ['bad$name', '-leading-dash', 'trailing ']) {
    const raw = await srv.raw('PUT', `/api/v1/namespaces/_/actions/${encodeURIComponent(bad)}`, {
      body: { exec: { kind: 'nodejs:default', code: 'function main() { return {}; }' } },
    });
    assert.equal(raw.status, 400, `name ${JSON.stringify(bad)}: HTTP ${raw.status} ${raw.text}`);
    assertErrorBody(raw.json);
  }
  await rejectsWith(ow.actions.create({ name: 'bad$name2', action: 'function main() {}' }), 400);
  const long = 'a'.repeat(257);
  await rejectsWith(ow.actions.create({ name: long, action: 'function main() {}' }), 400, '257-character name');
});

test('400 on an unknown kind', async () => {
  const ow = srv.guest();
  const err = await rejectsWith(ow.actions.create({ name: uniq('cobol'), action: 'IDENTIFICATION DIVISION.', kind: 'cobol:85' }), 400);
  assertErrorBody(err.error);
});

test('400 on create without exec', async () => {
  const ow = srv.guest();
  const name = uniq('noexec');
  const err = await rejectsWith(ow.actions.create({ name, action: { parameters: [] } }), 400);
  assertErrorBody(err.error);
  await rejectsWith(ow.actions.get({ name }), 404, 'nothing was stored');
});

test('401 with a bad key: error body, WWW-Authenticate challenge', async () => {
  const wrongKey = '23bc46b1-71f6-4ed5-8c54-816aa4f8c502:' + 'x'.repeat(64);
  const raw = await srv.raw('GET', '/api/v1/namespaces/_/actions', { key: wrongKey });
  assert.equal(raw.status, 401);
  assertErrorBody(raw.json);
  assert.match(raw.headers.get('www-authenticate') || '', /^Basic realm="OpenWhisk secure realm"$/);

  const none = await srv.raw('GET', '/api/v1/namespaces/_/actions', { key: null });
  assert.equal(none.status, 401);
  assertErrorBody(none.json);
  assert.match(none.headers.get('www-authenticate') || '', /^Basic/);

  const garbage = await srv.raw('GET', '/api/v1/namespaces/_/actions', { key: null, headers: { authorization: 'Basic !!!notbase64' } });
  assert.equal(garbage.status, 401);

  const unknownUser = await srv.raw('GET', '/api/v1/namespaces/_/actions', {
    key: null, headers: { authorization: basic('00000000-0000-4000-8000-000000000000:' + 'a'.repeat(64)) },
  });
  assert.equal(unknownUser.status, 401);

  await rejectsWith(srv.client(wrongKey).actions.list(), 401, 'client with a bad key');
});

test('guest cannot write to another namespace (403)', async () => {
  const ow = srv.guest();
  const err = await rejectsWith(ow.actions.create({ name: `/whisk.system/${uniq('intrude')}`, action: 'function main() {}' }), 403);
  assertErrorBody(err.error, 'The supplied authentication is not authorized to access this resource.');
});

test('invoke-time params may not override final bound params (400)', async () => {
  const ow = srv.guest();
  const name = uniq('final');
  await ow.actions.create({ name, action: 'function main(p) { return p; }', params: { locked: 'yes' }, annotations: { final: true } });
  const ok = await ow.actions.invoke({ name, params: { other: 1 }, blocking: true, result: true });
  assert.deepEqual(ok, { locked: 'yes', other: 1 });
  const a = await ow.actions.get({ name });
  assert.deepEqual(kv(a.parameters), { locked: 'yes' });
  await rejectsWith(ow.actions.invoke({ name, params: { locked: 'no' }, blocking: true }), 400);
});
