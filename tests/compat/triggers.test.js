'use strict';
// Triggers and rules: fire with and without active rules, cause links, trigger activation logs.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const { ACTIVATION_ID, uniq, kv, rejectsWith, waitFor, pollActivation, assertActivation } = require('./lib/helpers');

const srv = useServer();

async function findCaused(ow, actionName, cause) {
  return waitFor(async () => {
    const list = await ow.activations.list(actionName ? { name: actionName, limit: 50 } : { limit: 50 });
    return list.find((x) => x.cause === cause);
  }, { timeout: 30000, what: `an activation of ${actionName} caused by ${cause}` });
}

test('trigger and rule lifecycle', async () => {
  const ow = srv.guest();
  const trig = uniq('trig');
  const rule = uniq('rule');
  const action = uniq('ruleact');

  const t = await ow.triggers.create({ name: trig, trigger: { parameters: [{ key: 'tp', value: 'trigger' }, { key: 'shared', value: 'trigger' }] } });
  assert.equal(t.name, trig);
  assert.equal(t.namespace, 'guest');
  assert.equal(t.version, '0.0.1');
  assert.equal(t.publish, false);
  assert.deepEqual(t.limits, {});
  assert.deepEqual(kv(t.parameters), { tp: 'trigger', shared: 'trigger' });
  assert.ok(!t.rules || Object.keys(t.rules).length === 0, 'no rules yet');
  await rejectsWith(ow.triggers.create({ name: trig }), 409, 'create existing trigger');

  // fire without rules: 204, client resolves
  const fired0 = await ow.triggers.invoke({ name: trig, params: { fp: 0 } });
  assert.ok(fired0 === undefined || fired0 === '' || (typeof fired0 === 'object' && !fired0.activationId),
    `no activation id on 204: ${JSON.stringify(fired0)}`);
  const raw0 = await srv.raw('POST', `/api/v1/namespaces/_/triggers/${trig}`, { body: { fp: 0 } });
  assert.equal(raw0.status, 204, `fire with no rules: ${raw0.status} ${raw0.text}`);
  assert.equal(raw0.text, '');

  // rule
  await ow.actions.create({ name: action, action: "function main(p) { console.log('rule action ran'); return p; }" });
  const r = await ow.rules.create({ name: rule, action, trigger: trig });
  assert.equal(r.name, rule);
  assert.equal(r.namespace, 'guest');
  assert.equal(r.status, 'active');
  assert.deepEqual(r.trigger, { path: 'guest', name: trig });
  assert.deepEqual(r.action, { path: 'guest', name: action });
  assert.equal(r.version, '0.0.1');

  const rget = await ow.rules.get({ name: rule });
  assert.equal(rget.status, 'active');
  assert.deepEqual(rget.trigger, { path: 'guest', name: trig });
  assert.deepEqual(rget.action, { path: 'guest', name: action });

  const tget = await ow.triggers.get({ name: trig });
  assert.deepEqual(tget.rules, { [`guest/${rule}`]: { action: { path: 'guest', name: action }, status: 'active' } });

  const rules = await ow.rules.list();
  assert.ok(rules.some((x) => x.name === rule));

  // fire with an active rule
  const fired = await ow.triggers.invoke({ name: trig, params: { fp: 'fire', shared: 'payload' } });
  assert.deepEqual(Object.keys(fired), ['activationId']);
  assert.match(fired.activationId, ACTIVATION_ID);

  const brief = await findCaused(ow, action, fired.activationId);
  const ruleAct = await pollActivation(ow, brief.activationId);
  assertActivation(ruleAct, { name: action, path: `guest/${action}` });
  assert.equal(ruleAct.cause, fired.activationId);
  assert.deepEqual(ruleAct.response.result, Object.assign(
    { tp: 'trigger', shared: 'payload', fp: 'fire' },
    ruleAct.response.result.__ow_headers ? { __ow_headers: ruleAct.response.result.__ow_headers } : {}));

  const trigAct = await waitFor(async () => {
    const a = await ow.activations.get({ activationId: fired.activationId });
    return a.logs.length > 0 ? a : null;
  }, { what: 'trigger activation with logs' });
  assert.equal(trigAct.name, trig);
  assert.equal(trigAct.namespace, 'guest');
  assert.equal(trigAct.activationId, fired.activationId);
  assert.equal(trigAct.response.success, true);
  assert.equal(trigAct.response.result.fp, 'fire');
  assert.equal(trigAct.logs.length, 1);
  const entry = JSON.parse(trigAct.logs[0]);
  assert.equal(entry.rule, `guest/${rule}`);
  assert.equal(entry.action, `guest/${action}`);
  assert.equal(entry.activationId, ruleAct.activationId);
  assert.equal(entry.success, true);
  assert.equal(entry.statusCode, 0);

  // raw fire: 202 + header
  const raw1 = await srv.raw('POST', `/api/v1/namespaces/_/triggers/${trig}`, { body: { fp: 'raw' } });
  assert.equal(raw1.status, 202);
  assert.match(raw1.json.activationId, ACTIVATION_ID);
  assert.equal(raw1.headers.get('x-openwhisk-activation-id'), raw1.json.activationId);
  await findCaused(ow, action, raw1.json.activationId);

  // disable: fire gives 204
  await ow.rules.disable({ name: rule });
  assert.equal((await ow.rules.get({ name: rule })).status, 'inactive');
  assert.equal((await ow.triggers.get({ name: trig })).rules[`guest/${rule}`].status, 'inactive');
  const raw2 = await srv.raw('POST', `/api/v1/namespaces/_/triggers/${trig}`, { body: {} });
  assert.equal(raw2.status, 204, 'fire with only an inactive rule');

  // enable again: fire gives 202 and runs the action
  await ow.rules.enable({ name: rule });
  assert.equal((await ow.rules.get({ name: rule })).status, 'active');
  const fired3 = await ow.triggers.invoke({ name: trig, params: { fp: 'again' } });
  assert.match(fired3.activationId, ACTIVATION_ID);
  const brief3 = await findCaused(ow, action, fired3.activationId);
  assert.equal((await pollActivation(ow, brief3.activationId)).response.result.fp, 'again');

  // delete rule, then trigger
  await ow.rules.disable({ name: rule });
  const dr = await ow.rules.delete({ name: rule });
  assert.equal(dr.name, rule);
  await rejectsWith(ow.rules.get({ name: rule }), 404);
  const tAfter = await ow.triggers.get({ name: trig });
  assert.ok(!tAfter.rules || !(`guest/${rule}` in tAfter.rules), `rule removed from trigger: ${JSON.stringify(tAfter.rules)}`);
  const raw3 = await srv.raw('POST', `/api/v1/namespaces/_/triggers/${trig}`, { body: {} });
  assert.equal(raw3.status, 204);
  const dt = await ow.triggers.delete({ name: trig });
  assert.equal(dt.name, trig);
  await rejectsWith(ow.triggers.get({ name: trig }), 404);
  await rejectsWith(ow.triggers.invoke({ name: trig }), 404, 'fire a deleted trigger');
});

test('a rule may point at a /whisk.system/utils action', async () => {
  const ow = srv.guest();
  const trig = uniq('systrig');
  const rule = uniq('sysrule');
  await ow.triggers.create({ name: trig });
  const r = await ow.rules.create({ name: rule, action: '/whisk.system/utils/echo', trigger: trig });
  assert.deepEqual(r.action, { path: 'whisk.system/utils', name: 'echo' });
  const fired = await ow.triggers.invoke({ name: trig, params: { payload: 'via rule' } });
  const brief = await findCaused(ow, null, fired.activationId);
  const act = await pollActivation(ow, brief.activationId);
  assert.equal(act.response.result.payload, 'via rule');
  assert.equal(act.namespace, 'guest');
  await ow.rules.disable({ name: rule });
  await ow.rules.delete({ name: rule });
  await ow.triggers.delete({ name: trig });
});

test('rule errors: missing trigger or action gives 400/404; trigger update keeps rules', async () => {
  const ow = srv.guest();
  const trig = uniq('t');
  const action = uniq('a');
  await ow.triggers.create({ name: trig });
  await ow.actions.create({ name: action, action: 'function main(p) { return p; }' });
  await rejectsWith(ow.rules.create({ name: uniq('r'), action: uniq('nope'), trigger: trig }), [400, 404], 'rule to missing action');
  await rejectsWith(ow.rules.create({ name: uniq('r'), action, trigger: uniq('nope') }), [400, 404], 'rule from missing trigger');

  const rule = uniq('r');
  await ow.rules.create({ name: rule, action, trigger: trig });
  const u = await ow.triggers.update({ name: trig, trigger: { parameters: [{ key: 'k', value: 'v' }] } });
  assert.equal(u.version, '0.0.2');
  assert.deepEqual(kv(u.parameters), { k: 'v' });
  assert.ok(u.rules && u.rules[`guest/${rule}`], `trigger update keeps the rules map: ${JSON.stringify(u.rules)}`);
  await ow.rules.disable({ name: rule });
  await ow.rules.delete({ name: rule });
  await ow.triggers.delete({ name: trig });
});
