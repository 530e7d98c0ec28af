'use strict';
// Sequences: composition, component activations and causes, failure propagation, validation.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const { ACTIVATION_ID, uniq, ann, kv, rejectsWith, assertErrorBody, pollActivation, assertActivation } = require('./lib/helpers');

const srv = useServer();

const A = "function main(p) { return { n: p.n + 1, trail: (p.trail || []).concat('a'), boundA: p.boundA }; }";
const B = "function main(p) { return { n: p.n * 10, trail: p.trail.concat('b'), sawBoundA: p.boundA, boundB: p.boundB, extra: p.extra }; }";

test('sequence: b applied to the result of a; component activations caused by the sequence', async () => {
  const ow = srv.guest();
  const a = uniq('seqa');
  const b = uniq('seqb');
  const seq = uniq('seq');
  await ow.actions.create({ name: a, action: A, params: { boundA: 'A' } });
  await ow.actions.create({ name: b, action: B, params: { boundB: 'B' } });

  const s = await ow.actions.create({ name: seq, sequence: [`/_/${a}`, `/_/${b}`] });
  assert.equal(s.exec.kind, 'sequence');
  assert.equal(s.exec.components.length, 2);
  assert.equal(s.version, '0.0.1');
  assert.equal(ann(s.annotations, 'exec'), 'sequence');

  const act = await ow.actions.invoke({ name: seq, params: { n: 1, extra: 'only-first' }, blocking: true });
  assertActivation(act, { name: seq, path: `guest/${seq}` });
  // only the first component gets the sequence's parameters; each gets its own bound ones
  assert.deepEqual(act.response.result, { n: 20, trail: ['a', 'b'], sawBoundA: 'A', boundB: 'B' });
  assert.equal(act.logs.length, 2, `logs list component ids: ${JSON.stringify(act.logs)}`);
  for (const id of act.logs) assert.match(id, ACTIVATION_ID);

  const [ca, cb] = await Promise.all(act.logs.map((id) => pollActivation(srv.guest(), id)));
  assertActivation(ca, { name: a, path: `guest/${a}` });
  assertActivation(cb, { name: b, path: `guest/${b}` });
  assert.equal(ca.cause, act.activationId);
  assert.equal(cb.cause, act.activationId);
  assert.deepEqual(ca.response.result, { n: 2, trail: ['a'], boundA: 'A' });
  assert.ok(cb.start >= ca.end, 'components run in order');
  assert.ok(act.start <= ca.start && act.end >= cb.end, 'the sequence activation spans its components');

  const r = await ow.actions.invoke({ name: seq, params: { n: 5 }, blocking: true, result: true });
  assert.deepEqual(r, { n: 60, trail: ['a', 'b'], sawBoundA: 'A', boundB: 'B' });
});

test('sequence components are stored fully qualified ("_" resolved to the namespace)', async () => {
  const ow = srv.guest();
  const a = uniq('fqa');
  const seq = uniq('fqseq');
  await ow.actions.create({ name: a, action: A });
  const s = await ow.actions.create({ name: seq, sequence: [`/_/${a}`, '/whisk.system/utils/echo'] });
  assert.deepEqual(s.exec.components, [`/guest/${a}`, '/whisk.system/utils/echo']);
  const got = await ow.actions.get({ name: seq });
  assert.deepEqual(got.exec.components, [`/guest/${a}`, '/whisk.system/utils/echo']);
  const list = await ow.actions.list();
  assert.ok(!('components' in list.find((x) => x.name === seq).exec), 'list items carry no components');
});

test('sequence of /whisk.system/utils actions (split | sort | head)', async () => {
  const ow = srv.guest();
  const seq = uniq('utilseq');
  await ow.actions.create({ name: seq, sequence: ['/whisk.system/utils/split', '/whisk.system/utils/sort', '/whisk.system/utils/head'] });
  const r = await ow.actions.invoke({ name: seq, params: { payload: 'pear\napple\nfig', num: 2 }, blocking: true, result: true });
  assert.deepEqual(r, { lines: ['apple'], num: 1 });
});

test('a failing first component ends the sequence with its error (502)', async () => {
  const ow = srv.guest();
  const fail = uniq('fail');
  const b = uniq('never');
  const seq = uniq('failseq');
  await ow.actions.create({ name: fail, action: "function main() { return { error: 'first failed' }; }" });
  await ow.actions.create({ name: b, action: "function main() { return { ran: true }; }" });
  await ow.actions.create({ name: seq, sequence: [`/_/${fail}`, `/_/${b}`] });

  const err = await rejectsWith(ow.actions.invoke({ name: seq, blocking: true }), 502);
  const act = assertActivation(err.error, { name: seq, status: 'application error' });
  assert.deepEqual(act.response.result, { error: 'first failed' });
  assert.equal(act.logs.length, 1, `only the failed component ran: ${JSON.stringify(act.logs)}`);
  const comp = await pollActivation(ow, act.logs[0]);
  assert.equal(comp.name, fail);
  assert.equal(comp.cause, act.activationId);
});

test('a developer error (throw) in the second component ends the sequence with status developer error', async () => {
  const ow = srv.guest();
  const b = uniq('first');
  await ow.actions.create({ name: b, action: "function main() { return { ran: true }; }" });
  const thrower = uniq('thrower');
  const seq2 = uniq('devseq');
  await ow.actions.create({ name: thrower, action: "function main() { throw new Error('bad'); }" });
  await ow.actions.create({ name: seq2, sequence: [`/_/${b}`, `/_/${thrower}`] });
  const err2 = await rejectsWith(ow.actions.invoke({ name: seq2, blocking: true }), 502);
  assert.equal(err2.error.response.status, 'action developer error');
  assert.equal(err2.error.logs.length, 2);
});

test('creating a sequence with a missing component gives 400', async () => {
  const ow = srv.guest();
  const ok = uniq('present');
  await ow.actions.create({ name: ok, action: 'function main(p) { return p; }' });
  const seq = uniq('badseq');
  const err = await rejectsWith(ow.actions.create({ name: seq, sequence: [`/_/${ok}`, `/_/${uniq('absent')}`] }), 400);
  assertErrorBody(err.error, 'Sequence component does not exist.');
  await rejectsWith(ow.actions.get({ name: seq }), 404, 'nothing stored');
});

test('a sequence may not refer to itself (400)', async () => {
  const ow = srv.guest();
  const x = uniq('x');
  const seq = uniq('selfseq');
  await ow.actions.create({ name: x, action: 'function main(p) { return p; }' });
  await ow.actions.create({ name: seq, sequence: [`/_/${x}`] });
  const err = await rejectsWith(ow.actions.update({ name: seq, sequence: [`/_/${x}`, `/_/${seq}`] }), 400);
  assertErrorBody(err.error, 'Sequence may not refer to itself.');
});

test('sequence parameters: the sequence\'s own bound params reach the first component', async () => {
  const ow = srv.guest();
  const e = uniq('echo');
  const seq = uniq('pseq');
  await ow.actions.create({ name: e, action: 'function main(p) { return p; }' });
  await ow.actions.create({ name: seq, sequence: [`/_/${e}`], params: { fromSeq: 1 } });
  const s = await ow.actions.get({ name: seq });
  assert.equal(kv(s.parameters).fromSeq, 1);
  const r = await ow.actions.invoke({ name: seq, params: { x: 2 }, blocking: true, result: true });
  assert.equal(r.fromSeq, 1);
  assert.equal(r.x, 2);
});
