'use strict';
// Feeds through the official client: ow.feeds.create/get/update/delete against the built-in
// providers of /whisk.system (issue 5), exactly as `wsk trigger create --feed` drives them.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { useServer } = require('./lib/server');
const { uniq, rejectsWith, waitFor } = require('./lib/helpers');

const srv = useServer();

const RECORD = 'function main(p) { return p; }';

async function pipeline(ow) {
  const trigger = uniq('feedtrig');
  const action = uniq('feedrec');
  const rule = uniq('feedrule');
  await ow.actions.create({ name: action, action: RECORD });
  await ow.triggers.create({ name: trigger, trigger: { annotations: [{ key: 'feed', value: '/whisk.system/alarms/alarm' }] } });
  await ow.rules.create({ name: rule, trigger, action });
  return { trigger, action, rule };
}

test('ow.feeds.create / get / update / delete with /whisk.system/alarms/alarm', async () => {
  const ow = srv.guest();
  const { trigger, action } = await pipeline(ow);

  const created = await ow.feeds.create({
    name: '/whisk.system/alarms/alarm',
    trigger,
    params: { cron: '*/1 * * * * *', trigger_payload: { from: 'npm' } },
  });
  // The client returns the feed action's (blocking) activation.
  assert.equal(created.response.success, true, JSON.stringify(created));
  assert.equal(created.response.result.config.cron, '*/1 * * * * *');
  assert.equal(created.response.result.status.active, true);

  const fired = await waitFor(async () => {
    const list = await ow.activations.list({ name: action, docs: true, limit: 10 });
    return list.length >= 2 ? list : undefined;
  }, { timeout: 30000, what: 'alarm activations' });
  const ev = fired[0].response.result;
  assert.equal(ev.from, 'npm');
  assert.equal(ev.specversion, '1.0');
  assert.equal(ev.type, 'nimbus.alarms.alarm');
  assert.ok(ev.id && ev.source && ev.time, JSON.stringify(ev));

  const read = await ow.feeds.get({ name: '/whisk.system/alarms/alarm', trigger });
  assert.equal(read.response.result.config.cron, '*/1 * * * * *');
  assert.ok(read.response.result.status.fires >= 2);

  const updated = await ow.feeds.update({ name: '/whisk.system/alarms/alarm', trigger, params: { cron: '0 0 1 1 *' } });
  assert.equal(updated.response.result.config.cron, '0 0 1 1 *');
  assert.deepEqual(updated.response.result.config.trigger_payload, { from: 'npm' }, 'UPDATE merges parameters');

  const deleted = await ow.feeds.delete({ name: '/whisk.system/alarms/alarm', trigger });
  assert.equal(deleted.response.result.deleted, true);
  // A second delete fails like a failing feed action (502).
  await rejectsWith(ow.feeds.delete({ name: '/whisk.system/alarms/alarm', trigger }), 502, 'second feed delete');
  await ow.triggers.delete({ name: trigger });
});

test('ow.feeds.create with bad parameters fails (502) with the reason', async () => {
  const ow = srv.guest();
  const { trigger } = await pipeline(ow);
  const err = await rejectsWith(
    ow.feeds.create({ name: '/whisk.system/alarms/alarm', trigger, params: { cron: 'every minute' } }),
    502,
    'bad cron',
  );
  assert.match(JSON.stringify(err.error), /cron/);
});

test('webhook feed created through the client; signed POST fires the rule', async () => {
  const ow = srv.guest();
  const { trigger, action } = await pipeline(ow);
  const created = await ow.feeds.create({ name: '/whisk.system/webhook', trigger, params: {} });
  const { secret } = created.response.result.config;
  const path = created.response.result.path;
  const body = JSON.stringify({ hello: 'hook' });
  const sig = 'sha256=' + crypto.createHmac('sha256', secret).update(body).digest('hex');
  const bad = await srv.raw('POST', path, { key: null, body, headers: { 'x-hub-signature-256': 'sha256=00' } });
  assert.equal(bad.status, 403);
  const ok = await srv.raw('POST', path, { key: null, body, headers: { 'content-type': 'application/json', 'x-hub-signature-256': sig } });
  assert.equal(ok.status, 202, ok.text);
  const got = await waitFor(async () => {
    const list = await ow.activations.list({ name: action, docs: true, limit: 5 });
    return list[0];
  }, { timeout: 30000, what: 'webhook activation' });
  assert.equal(got.response.result.data.hello, 'hook');
  await ow.feeds.delete({ name: '/whisk.system/webhook', trigger });
});
