'use strict';
// Node.js text actions through the openwhisk client: create, get, list, update, invoke, activations, delete.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const {
  ACTIVATION_ID, LOG_LINE, uniq, ann, hasAnn, kv, rejectsWith, assertErrorBody, pollActivation, assertActivation,
} = require('./lib/helpers');

const srv = useServer();

const HELLO = `function main(params) {
  console.log('hello from node');
  console.error('to stderr');
  return { greeting: 'Hello, ' + (params.name || 'stranger') + '!', p: params.p };
}`;
const HELLO2 = `function main(params) {
  return { greeting: 'Bonjour, ' + (params.name || 'inconnu') + '!', p: params.p };
}`;

test('create: version 0.0.1, nodejs:default resolved to nodejs:20, binary false, system annotations', async () => {
  const ow = srv.guest();
  const name = uniq('create');
  const a = await ow.actions.create({ name, action: HELLO });
  assert.equal(a.name, name);
  assert.equal(a.namespace, 'guest');
  assert.equal(a.version, '0.0.1');
  assert.equal(a.publish, false);
  assert.deepEqual(a.exec, { kind: 'nodejs:20', code: HELLO, binary: false });
  assert.equal(ann(a.annotations, 'exec'), 'nodejs:20');
  assert.equal(ann(a.annotations, 'provide-api-key'), false);
  assert.deepEqual(a.parameters, []);
  assert.deepEqual(a.limits, { timeout: 60000, memory: 256, logs: 10, concurrency: 1 });
  assert.equal(typeof a.updated, 'number');
  assert.ok(Math.abs(a.updated - Date.now()) < 60000, `updated ${a.updated} is epoch ms`);
});

test('get with and without code; list shows metadata only, newest first', async () => {
  const ow = srv.guest();
  const first = uniq('listA');
  const second = uniq('listB');
  await ow.actions.create({ name: first, action: HELLO, params: { p: 1 }, annotations: { description: 'first' } });
  await new Promise((r) => setTimeout(r, 20));
  await ow.actions.create({ name: second, action: HELLO });

  const full = await ow.actions.get({ name: first });
  assert.equal(full.exec.code, HELLO);
  assert.equal(full.exec.kind, 'nodejs:20');
  assert.deepEqual(full.parameters, [{ key: 'p', value: 1 }]);
  assert.equal(ann(full.annotations, 'description'), 'first');

  const noCode = await ow.actions.get({ name: first, code: false });
  assert.equal(noCode.name, first);
  assert.equal(noCode.exec.kind, 'nodejs:20');
  assert.equal(noCode.exec.binary, false);
  assert.ok(!('code' in noCode.exec), `code=false leaves out exec.code: ${JSON.stringify(noCode.exec)}`);

  const list = await ow.actions.list();
  assert.ok(Array.isArray(list));
  const i1 = list.findIndex((x) => x.name === first);
  const i2 = list.findIndex((x) => x.name === second);
  assert.ok(i1 >= 0 && i2 >= 0, `both actions listed: ${list.map((x) => x.name)}`);
  assert.ok(i2 < i1, 'newest first');
  const item = list[i1];
  assert.equal(item.namespace, 'guest');
  assert.equal(item.version, '0.0.1');
  assert.equal(item.publish, false);
  assert.equal(typeof item.updated, 'number');
  assert.ok(Array.isArray(item.annotations));
  assert.deepEqual(item.limits, { timeout: 60000, memory: 256, logs: 10, concurrency: 1 });
  assert.equal(item.exec.binary, false);
  assert.ok(!('code' in item.exec), 'list items carry no code');
  assert.ok(!('parameters' in item), 'list items carry no parameters');

  const limited = await ow.actions.list({ limit: 1 });
  assert.equal(limited.length, 1);
  assert.equal(limited[0].name, second);
  const skipped = await ow.actions.list({ limit: 1, skip: 1 });
  assert.equal(skipped.length, 1);
  assert.equal(skipped[0].name, list[1].name);
  const count = await ow.actions.list({ count: true });
  assert.deepEqual(count, { actions: list.length });
});

test('update with overwrite bumps the version and keeps unspecified fields', async () => {
  const ow = srv.guest();
  const name = uniq('update');
  await ow.actions.create({
    name, action: HELLO, params: { p: 'kept' }, limits: { timeout: 30000 }, annotations: { description: 'keep me' },
  });
  const u = await ow.actions.update({ name, action: HELLO2 });
  assert.equal(u.version, '0.0.2');
  assert.equal(u.exec.code, HELLO2);
  assert.equal(u.exec.kind, 'nodejs:20');
  assert.deepEqual(u.parameters, [{ key: 'p', value: 'kept' }]);
  assert.equal(u.limits.timeout, 30000);
  assert.equal(u.limits.memory, 256);
  assert.equal(ann(u.annotations, 'description'), 'keep me');
  assert.equal(ann(u.annotations, 'exec'), 'nodejs:20');

  const u3 = await ow.actions.update({ name, params: { p: 'new' } });
  assert.equal(u3.version, '0.0.3');
  assert.equal(u3.exec.code, HELLO2, 'update without exec keeps the code');
  assert.deepEqual(u3.parameters, [{ key: 'p', value: 'new' }]);

  const r = await ow.actions.invoke({ name, params: { name: 'Ana' }, blocking: true, result: true });
  assert.deepEqual(r, { greeting: 'Bonjour, Ana!', p: 'new' });
});

test('blocking invoke returns the full activation; initTime only on the cold call', async () => {
  const ow = srv.guest();
  const name = uniq('invoke');
  await ow.actions.create({ name, action: HELLO, params: { p: 7 } });

  const cold = await ow.actions.invoke({ name, params: { name: 'Bob' }, blocking: true });
  assertActivation(cold, { name, path: `guest/${name}` });
  const { size, ...response } = cold.response;
  assert.deepEqual(response, {
    status: 'success', statusCode: 0, success: true, result: { greeting: 'Hello, Bob!', p: 7 },
  });
  if (size !== undefined) assert.equal(size, JSON.stringify(response.result).length, 'optional size is the result size');
  assert.equal(cold.version, '0.0.1');
  assert.equal(ann(cold.annotations, 'kind'), 'nodejs:20');
  assert.deepEqual(ann(cold.annotations, 'limits'), { timeout: 60000, memory: 256, logs: 10, concurrency: 1 });
  assert.equal(typeof ann(cold.annotations, 'waitTime'), 'number');
  assert.equal(typeof ann(cold.annotations, 'initTime'), 'number', `cold start has initTime: ${JSON.stringify(cold.annotations)}`);
  assert.ok(cold.logs.length >= 2, `logs: ${JSON.stringify(cold.logs)}`);
  for (const l of cold.logs) assert.match(l, LOG_LINE);
  assert.ok(cold.logs.some((l) => / stdout: hello from node$/.test(l)), JSON.stringify(cold.logs));
  assert.ok(cold.logs.some((l) => / stderr: to stderr$/.test(l)), JSON.stringify(cold.logs));

  const warm = await ow.actions.invoke({ name, params: { name: 'Cy' }, blocking: true });
  assertActivation(warm, { name, path: `guest/${name}` });
  assert.notEqual(warm.activationId, cold.activationId);
  assert.deepEqual(warm.response.result, { greeting: 'Hello, Cy!', p: 7 });
  assert.ok(!hasAnn(warm.annotations, 'initTime'), `warm call has no initTime: ${JSON.stringify(warm.annotations)}`);
  assert.ok(warm.start >= cold.end, 'the second activation started after the first ended');
});

test('result:true (client) and ?blocking=true&result=true (raw) return only the result', async () => {
  const ow = srv.guest();
  const name = uniq('result');
  await ow.actions.create({ name, action: HELLO });
  const r = await ow.actions.invoke({ name, params: { name: 'Dee' }, blocking: true, result: true });
  assert.deepEqual(r, { greeting: 'Hello, Dee!' });

  const raw = await srv.raw('POST', `/api/v1/namespaces/_/actions/${name}?blocking=true&result=true`, { body: { name: 'Eve' } });
  assert.equal(raw.status, 200);
  assert.deepEqual(raw.json, { greeting: 'Hello, Eve!' });
  assert.match(raw.headers.get('x-openwhisk-activation-id') || '', ACTIVATION_ID);
});

test('non-blocking invoke: 202 activationId, then poll; logs and result endpoints', async () => {
  const ow = srv.guest();
  const name = uniq('async');
  await ow.actions.create({ name, action: HELLO });
  const res = await ow.actions.invoke({ name, params: { name: 'Fay' } });
  assert.deepEqual(Object.keys(res), ['activationId']);
  assert.match(res.activationId, ACTIVATION_ID);

  const act = await pollActivation(ow, res.activationId);
  assertActivation(act, { name, path: `guest/${name}` });
  assert.equal(act.activationId, res.activationId);
  assert.deepEqual(act.response.result, { greeting: 'Hello, Fay!' });

  const logs = await ow.activations.logs({ activationId: res.activationId });
  assert.deepEqual(Object.keys(logs), ['logs']);
  assert.deepEqual(logs.logs, act.logs);
  const m = logs.logs.map((l) => l.match(LOG_LINE)).find((x) => x && x[2] === 'stdout');
  assert.ok(m, `a stdout line: ${JSON.stringify(logs.logs)}`);
  assert.equal(m[3], 'hello from node');
  assert.ok(Date.parse(m[1]) >= act.start - 1000 && Date.parse(m[1]) <= act.end + 1000, 'log timestamp within the activation');

  const result = await ow.activations.result({ activationId: res.activationId });
  assert.deepEqual(result.result, { greeting: 'Hello, Fay!' });
  assert.equal(result.success, true);
  assert.equal(result.status, 'success');

  const raw = await srv.raw('POST', `/api/v1/namespaces/_/actions/${name}`, { body: {} });
  assert.equal(raw.status, 202);
  assert.match(raw.json.activationId, ACTIVATION_ID);
  assert.equal(raw.headers.get('x-openwhisk-activation-id'), raw.json.activationId);
});

test('delete returns the action; afterwards get and invoke give 404', async () => {
  const ow = srv.guest();
  const name = uniq('delete');
  await ow.actions.create({ name, action: HELLO });
  const d = await ow.actions.delete({ name });
  assert.equal(d.name, name);
  const err = await rejectsWith(ow.actions.get({ name }), 404, 'get after delete');
  assertErrorBody(err.error, 'The requested resource does not exist.');
  await rejectsWith(ow.actions.invoke({ name, blocking: true }), 404, 'invoke after delete');
  await rejectsWith(ow.actions.delete({ name }), 404, 'second delete');
});

test('parameters: invoke-time params override bound ones', async () => {
  const ow = srv.guest();
  const name = uniq('params');
  await ow.actions.create({ name, action: 'function main(p) { return p; }', params: { a: 1, b: 'bound' } });
  const a = await ow.actions.get({ name });
  assert.deepEqual(kv(a.parameters), { a: 1, b: 'bound' });
  const r = await ow.actions.invoke({ name, params: { b: 'invoke', c: [1, 2] }, blocking: true, result: true });
  assert.deepEqual(r, { a: 1, b: 'invoke', c: [1, 2] });
});

test('async main (Promise) and a main that returns undefined', async () => {
  const ow = srv.guest();
  const name = uniq('promise');
  await ow.actions.create({
    name, action: 'function main(p) { return new Promise(r => setTimeout(() => r({ later: p.v * 2 }), 50)); }',
  });
  assert.deepEqual(await ow.actions.invoke({ name, params: { v: 21 }, blocking: true, result: true }), { later: 42 });
  const undef = uniq('undef');
  await ow.actions.create({ name: undef, action: 'function main() { }' });
  assert.deepEqual(await ow.actions.invoke({ name: undef, blocking: true, result: true }), {});
});
