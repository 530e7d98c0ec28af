'use strict';
// Activation listing: order, name filter, limit/skip, since/upto, count, docs.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const { ACTIVATION_ID, sleep, uniq, rejectsWith, assertErrorBody } = require('./lib/helpers');

const act = uniq('listed');
const other = uniq('other');
const failing = uniq('failing');
const runs = []; // the activations of `act`, oldest first

const srv = useServer(async (srv) => {
  const ow = srv.guest();
  await ow.actions.create({ name: act, action: "function main(p) { console.log('run ' + p.i); return { i: p.i }; }" });
  await ow.actions.create({ name: other, action: 'function main() { return {}; }' });
  await ow.actions.create({ name: failing, action: "function main() { return { error: 'no' }; }" });
  for (let i = 0; i < 3; i++) {
    runs.push(await ow.actions.invoke({ name: act, params: { i }, blocking: true }));
    await sleep(30);
  }
  await ow.actions.invoke({ name: other, blocking: true });
  await ow.actions.invoke({ name: failing, blocking: true }).catch(() => {});
});

test('list: newest first, brief records, name filter', async () => {
  const ow = srv.guest();
  const all = await ow.activations.list();
  assert.ok(all.length >= 5, `at least 5 activations: ${all.length}`);
  for (let i = 1; i < all.length; i++) assert.ok(all[i - 1].start >= all[i].start, 'sorted by start, descending');

  const mine = await ow.activations.list({ name: act });
  assert.deepEqual(mine.map((x) => x.activationId), runs.map((x) => x.activationId).reverse());
  const item = mine[0];
  assert.equal(item.name, act);
  assert.equal(item.namespace, 'guest');
  assert.match(item.activationId, ACTIVATION_ID);
  assert.equal(item.version, '0.0.1');
  assert.equal(typeof item.publish, 'boolean');
  assert.ok(Array.isArray(item.annotations));
  assert.equal(item.start, runs[2].start);
  assert.equal(item.end, runs[2].end);
  assert.equal(item.duration, runs[2].duration);
  assert.equal(item.statusCode, 0);
  assert.ok(!('response' in item), 'brief records carry no response');
  assert.ok(!('logs' in item), 'brief records carry no logs');

  const failed = await ow.activations.list({ name: failing });
  assert.equal(failed.length, 1);
  assert.equal(failed[0].statusCode, 1, 'application error has statusCode 1');
});

test('limit and skip', async () => {
  const ow = srv.guest();
  const ids = runs.map((x) => x.activationId).reverse(); // newest first
  assert.deepEqual((await ow.activations.list({ name: act, limit: 2 })).map((x) => x.activationId), ids.slice(0, 2));
  assert.deepEqual((await ow.activations.list({ name: act, limit: 1, skip: 1 })).map((x) => x.activationId), [ids[1]]);
  assert.deepEqual((await ow.activations.list({ name: act, skip: 2 })).map((x) => x.activationId), [ids[2]]);
  assert.deepEqual(await ow.activations.list({ name: act, skip: 3 }), []);
  assert.equal((await ow.activations.list({ limit: 1 })).length, 1);
  const r = await srv.raw('GET', '/api/v1/namespaces/_/activations?limit=201');
  assert.equal(r.status, 400, 'limit above 200');
  assertErrorBody(r.json);
});

test('since and upto (epoch ms)', async () => {
  const ow = srv.guest();
  const [a1, a2, a3] = runs;
  assert.ok(a2.start - 10 > a1.start && a2.start + 10 < a3.start, 'the runs are spaced out');
  const since = await ow.activations.list({ name: act, since: a2.start - 10 });
  assert.deepEqual(since.map((x) => x.activationId), [a3.activationId, a2.activationId]);
  const upto = await ow.activations.list({ name: act, upto: a2.start + 10 });
  assert.deepEqual(upto.map((x) => x.activationId), [a2.activationId, a1.activationId]);
  const both = await ow.activations.list({ name: act, since: a2.start - 10, upto: a2.start + 10 });
  assert.deepEqual(both.map((x) => x.activationId), [a2.activationId]);
  const future = await ow.activations.list({ since: Date.now() + 3600000 });
  assert.deepEqual(future, []);
  const bad = await srv.raw('GET', '/api/v1/namespaces/_/activations?since=yesterday');
  assert.equal(bad.status, 400);
});

test('count: true', async () => {
  const ow = srv.guest();
  assert.deepEqual(await ow.activations.list({ name: act, count: true }), { activations: 3 });
  const total = await ow.activations.list({ count: true });
  assert.deepEqual(Object.keys(total), ['activations']);
  assert.ok(total.activations >= 5);
  const bad = await srv.raw('GET', '/api/v1/namespaces/_/activations?count=true&docs=true');
  assert.equal(bad.status, 400, 'count with docs');
});

test('docs: true returns full records', async () => {
  const ow = srv.guest();
  const docs = await ow.activations.list({ name: act, docs: true });
  assert.equal(docs.length, 3);
  const newest = docs[0];
  assert.equal(newest.activationId, runs[2].activationId);
  assert.deepEqual(newest.response.result, { i: 2 });
  assert.equal(newest.response.status, 'success');
  assert.equal(newest.response.success, true);
  assert.ok(Array.isArray(newest.logs));
  assert.ok(newest.logs.some((l) => / stdout: run 2$/.test(l)), JSON.stringify(newest.logs));
  assert.deepEqual(newest.annotations, runs[2].annotations);
});

test('get, logs and result of one activation; 404 for an unknown id', async () => {
  const ow = srv.guest();
  const first = runs[0];
  const got = await ow.activations.get({ activationId: first.activationId });
  assert.deepEqual(got.response, first.response);
  assert.equal(got.start, first.start);
  assert.deepEqual(got.logs, first.logs);
  const res = await ow.activations.result({ activationId: first.activationId });
  assert.deepEqual(res.result, { i: 0 });
  assert.equal(res.status, 'success');
  assert.equal(res.success, true);
  assert.deepEqual(await ow.activations.logs({ activationId: first.activationId }), { logs: first.logs });
  const missing = '0123456789abcdef0123456789abcdef';
  await rejectsWith(ow.activations.get({ activationId: missing }), 404);
  await rejectsWith(ow.activations.logs({ activationId: missing }), 404);
  await rejectsWith(ow.activations.result({ activationId: missing }), 404);
});

test('activations are private to the invoking namespace', async () => {
  const sys = srv.system();
  await rejectsWith(sys.activations.get({ activationId: runs[0].activationId }), [403, 404]);
  const sysList = await sys.activations.list({ name: act });
  assert.deepEqual(sysList, []);
});
