'use strict';
// Packages, bindings, parameter inheritance, sharing of whisk.system packages.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const { uniq, ann, kv, rejectsWith, assertErrorBody, assertActivation } = require('./lib/helpers');

const srv = useServer();
const ECHO = 'function main(p) { return p; }';

test('package with parameters; its actions inherit them; bindings override them', async () => {
  const ow = srv.guest();
  const pkg = uniq('pkg');
  const bind = uniq('bind');

  const p = await ow.packages.create({
    name: pkg,
    package: { parameters: [{ key: 'a', value: 'pkg' }, { key: 'b', value: 'pkg' }, { key: 'c', value: 'pkg' }] },
  });
  assert.equal(p.name, pkg);
  assert.equal(p.namespace, 'guest');
  assert.equal(p.version, '0.0.1');
  assert.equal(p.publish, false);
  assert.deepEqual(p.binding, {});
  assert.deepEqual(kv(p.parameters), { a: 'pkg', b: 'pkg', c: 'pkg' });

  const act = await ow.actions.create({ name: `${pkg}/show`, action: ECHO, params: { c: 'action' } });
  assert.equal(act.namespace, `guest/${pkg}`);
  assert.equal(act.name, 'show');

  const got = await ow.packages.get({ name: pkg });
  assert.deepEqual(got.actions.map((x) => x.name), ['show']);
  assert.equal(got.actions[0].version, '0.0.1');
  assert.ok(Array.isArray(got.actions[0].annotations));
  assert.deepEqual(got.binding, {});

  // action in package: package params < action params < invoke params
  const a1 = await ow.actions.invoke({ name: `${pkg}/show`, params: { d: 'invoke' }, blocking: true });
  assertActivation(a1, { name: 'show', path: `guest/${pkg}/show` });
  assert.deepEqual(a1.response.result, { a: 'pkg', b: 'pkg', c: 'action', d: 'invoke' });

  // binding with parameter override
  const b = await ow.packages.create({
    name: bind,
    package: { binding: { namespace: 'guest', name: pkg }, parameters: [{ key: 'b', value: 'binding' }, { key: 'c', value: 'binding' }] },
  });
  assert.deepEqual(b.binding, { namespace: 'guest', name: pkg });

  const bget = await ow.packages.get({ name: bind });
  assert.deepEqual(bget.binding, { namespace: 'guest', name: pkg });
  assert.equal(kv(bget.parameters).b, 'binding');

  const a2 = await ow.actions.invoke({ name: `${bind}/show`, params: { d: 'invoke' }, blocking: true });
  assertActivation(a2, { name: 'show' });
  assert.deepEqual(a2.response.result, { a: 'pkg', b: 'binding', c: 'action', d: 'invoke' });
  assert.equal(ann(a2.annotations, 'path'), `guest/${pkg}/show`, 'path names the bound package');
  assert.equal(ann(a2.annotations, 'binding'), `guest/${bind}`, `binding annotation: ${JSON.stringify(a2.annotations)}`);

  // list shows binding false / {namespace,name}
  const list = await ow.packages.list();
  const li = list.find((x) => x.name === pkg);
  const lb = list.find((x) => x.name === bind);
  assert.ok(li && lb, `both listed: ${list.map((x) => x.name)}`);
  assert.equal(li.binding, false);
  assert.deepEqual(lb.binding, { namespace: 'guest', name: pkg });
  assert.ok(list.indexOf(lb) < list.indexOf(li), 'newest first');

  // actions cannot be created in a binding
  await rejectsWith(ow.actions.create({ name: `${bind}/nope`, action: ECHO }), 400, 'action in binding');
  // a binding to a missing package
  await rejectsWith(ow.packages.create({ name: uniq('dangling'), package: { binding: { namespace: 'guest', name: uniq('nothere') } } }), [400, 404]);

  await ow.packages.delete({ name: bind });
  await rejectsWith(ow.packages.get({ name: bind }), 404);
});

test('update of a package keeps fields and bumps the version', async () => {
  const ow = srv.guest();
  const pkg = uniq('pkgupd');
  await ow.packages.create({ name: pkg, package: { parameters: [{ key: 'x', value: 1 }], annotations: [{ key: 'description', value: 'd' }] } });
  const u = await ow.packages.update({ name: pkg, package: { publish: true } });
  assert.equal(u.version, '0.0.2');
  assert.equal(u.publish, true);
  assert.deepEqual(kv(u.parameters), { x: 1 });
  assert.equal(ann(u.annotations, 'description'), 'd');
  await rejectsWith(ow.packages.create({ name: pkg }), 409, 'create existing package');
  await rejectsWith(ow.packages.create({ name: 'default' }), 400, 'reserved package name');
});

test('/whisk.system/utils is published and usable from guest', async () => {
  const ow = srv.guest();
  const utils = await ow.packages.get({ name: '/whisk.system/utils' });
  assert.equal(utils.namespace, 'whisk.system');
  assert.equal(utils.name, 'utils');
  assert.equal(utils.publish, true);
  const names = utils.actions.map((x) => x.name).sort();
  for (const n of ['cat', 'date', 'echo', 'head', 'sort', 'split']) assert.ok(names.includes(n), `utils has ${n}: ${names}`);

  const echo = await ow.actions.get({ name: '/whisk.system/utils/echo' });
  assert.equal(echo.namespace, 'whisk.system/utils');
  assert.equal(echo.exec.kind, 'nodejs:20');
  assert.equal(ann(echo.annotations, 'description'), 'Returns the input');
  assert.ok(Array.isArray(ann(echo.annotations, 'parameters')));

  const act = await ow.actions.invoke({ name: '/whisk.system/utils/echo', params: { payload: 'hi', n: 1 }, blocking: true });
  assertActivation(act, { name: 'echo', namespace: 'guest', path: 'whisk.system/utils/echo' });
  assert.deepEqual(act.response.result, { payload: 'hi', n: 1 });

  assert.deepEqual(
    await ow.actions.invoke({ name: '/whisk.system/utils/sort', params: { lines: ['pear', 'apple', 'fig'] }, blocking: true, result: true }),
    { lines: ['apple', 'fig', 'pear'], length: 3 });
  assert.deepEqual(
    await ow.actions.invoke({ name: '/whisk.system/utils/split', params: { payload: 'a,b,c', separator: ',' }, blocking: true, result: true }),
    { lines: ['a', 'b', 'c'], payload: 'a,b,c' });
  assert.deepEqual(
    await ow.actions.invoke({ name: '/whisk.system/utils/cat', params: { lines: ['x', 'y'] }, blocking: true, result: true }),
    { lines: ['x', 'y'], payload: 'x\ny' });
  assert.deepEqual(
    await ow.actions.invoke({ name: '/whisk.system/utils/head', params: { lines: [1, 2, 3], num: 2 }, blocking: true, result: true }),
    { lines: [1, 2], num: 2 });
  const d = await ow.actions.invoke({ name: '/whisk.system/utils/date', blocking: true, result: true });
  assert.ok(Math.abs(Date.parse(d.date) - Date.now()) < 60000, `date ${JSON.stringify(d)}`);

  // listing whisk.system packages from guest shows only published ones
  const sys = await ow.packages.list({ namespace: 'whisk.system' });
  assert.ok(sys.some((x) => x.name === 'utils'));
  assert.ok(sys.every((x) => x.publish === true), JSON.stringify(sys));

  // guest may not modify it
  await rejectsWith(ow.actions.update({ name: '/whisk.system/utils/echo', params: { x: 1 } }), 403, 'update system action');
});

test('a binding to /whisk.system/utils from guest', async () => {
  const ow = srv.guest();
  const bind = uniq('myutils');
  await ow.packages.create({ name: bind, package: { binding: { namespace: 'whisk.system', name: 'utils' }, parameters: [{ key: 'payload', value: 'bound' }] } });
  assert.deepEqual(await ow.actions.invoke({ name: `${bind}/echo`, blocking: true, result: true }), { payload: 'bound' });
  assert.deepEqual(await ow.actions.invoke({ name: `${bind}/echo`, params: { payload: 'mine' }, blocking: true, result: true }), { payload: 'mine' });
});

test('a private package of whisk.system is not readable or invocable by guest', async () => {
  const sys = srv.system();
  const ow = srv.guest();
  const pkg = uniq('private');
  const p = await sys.packages.create({ name: pkg });
  assert.equal(p.namespace, 'whisk.system');
  assert.equal(p.publish, false);
  await sys.actions.create({ name: `${pkg}/secret`, action: "function main() { return { secret: 42 }; }" });
  assert.deepEqual(await sys.actions.invoke({ name: `${pkg}/secret`, blocking: true, result: true }), { secret: 42 });

  await rejectsWith(ow.packages.get({ name: `/whisk.system/${pkg}` }), [403, 404], 'guest get private package');
  await rejectsWith(ow.actions.get({ name: `/whisk.system/${pkg}/secret` }), [403, 404], 'guest get private action');
  await rejectsWith(ow.actions.invoke({ name: `/whisk.system/${pkg}/secret`, blocking: true }), [403, 404], 'guest invoke private action');
  await rejectsWith(ow.packages.create({ name: uniq('sneaky'), package: { binding: { namespace: 'whisk.system', name: pkg } } }), [403, 404], 'guest bind private package');
  const list = await ow.packages.list({ namespace: 'whisk.system' });
  assert.ok(!list.some((x) => x.name === pkg), 'private package not listed for guest');

  await sys.packages.delete({ name: pkg }).catch(() => {});
  const raw = await srv.raw('DELETE', `/api/v1/namespaces/whisk.system/packages/${pkg}?force=true`, { key: srv.SYSTEM_KEY });
  assert.ok([200, 404].includes(raw.status));
});

test('delete of a non-empty package gives 409; force=true deletes it and its contents', async () => {
  const ow = srv.guest();
  const pkg = uniq('full');
  await ow.packages.create({ name: pkg });
  await ow.actions.create({ name: `${pkg}/one`, action: ECHO });
  await ow.actions.create({ name: `${pkg}/two`, action: ECHO });
  const err = await rejectsWith(ow.packages.delete({ name: pkg }), 409);
  assertErrorBody(err.error, /Package not empty/);
  await ow.packages.get({ name: pkg });

  const raw = await srv.raw('DELETE', `/api/v1/namespaces/_/packages/${pkg}?force=true`);
  assert.equal(raw.status, 200, raw.text);
  await rejectsWith(ow.packages.get({ name: pkg }), 404);
  await rejectsWith(ow.actions.get({ name: `${pkg}/one` }), 404);
  await rejectsWith(ow.actions.get({ name: `${pkg}/two` }), 404);

  const empty = uniq('empty');
  await ow.packages.create({ name: empty });
  const d = await ow.packages.delete({ name: empty });
  assert.equal(d.name, empty);
});
