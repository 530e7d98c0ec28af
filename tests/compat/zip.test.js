'use strict';
// Zip actions: the client base64-encodes a Buffer; the server computes exec.binary.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const { makeZip } = require('./lib/zip');
const { uniq, ann, assertActivation } = require('./lib/helpers');

const srv = useServer();

test('node zip action: package.json main + module requiring a helper', async () => {
  const ow = srv.guest();
  const name = uniq('nodezip');
  const zip = makeZip({
    'package.json': JSON.stringify({ name: 'zipped', version: '1.0.0', main: 'index.js' }),
    'index.js': [
      "const helper = require('./lib/helper');",
      'function main(params) {',
      "  console.log('zip main called');",
      '  return { shout: helper.shout(params.word || "quiet"), file: require("path").basename(__filename) };',
      '}',
      'exports.main = main;',
      '',
    ].join('\n'),
    'lib/helper.js': 'exports.shout = (s) => s.toUpperCase() + "!";\n',
  });
  const a = await ow.actions.create({ name, action: zip, kind: 'nodejs:20' });
  assert.equal(a.exec.kind, 'nodejs:20');
  assert.equal(a.exec.binary, true);
  assert.equal(a.exec.code, zip.toString('base64'));
  assert.equal(ann(a.annotations, 'exec'), 'nodejs:20');

  const got = await ow.actions.get({ name });
  assert.equal(got.exec.binary, true);
  assert.equal(got.exec.code, zip.toString('base64'));

  const act = await ow.actions.invoke({ name, params: { word: 'zip' }, blocking: true });
  assertActivation(act, { name, path: `guest/${name}` });
  assert.deepEqual(act.response.result, { shout: 'ZIP!', file: 'index.js' });
  assert.ok(act.logs.some((l) => / stdout: zip main called$/.test(l)), JSON.stringify(act.logs));

  const list = await ow.actions.list();
  const item = list.find((x) => x.name === name);
  assert.equal(item.exec.binary, true);
});

test('node zip action with a non-default entry file named in package.json', async () => {
  const ow = srv.guest();
  const name = uniq('nodezip2');
  const zip = makeZip({
    'package.json': JSON.stringify({ main: 'src/entry.js' }),
    'src/entry.js': "exports.main = async (p) => ({ entry: 'src/entry.js', n: p.n + 1 });\n",
  });
  await ow.actions.create({ name, action: zip });
  assert.deepEqual(await ow.actions.invoke({ name, params: { n: 1 }, blocking: true, result: true }), { entry: 'src/entry.js', n: 2 });
});

test('python zip action: __main__.py importing a helper module', async () => {
  const ow = srv.guest();
  const name = uniq('pyzip');
  const zip = makeZip({
    '__main__.py': [
      'import helper',
      'from util.fmt import wrap',
      '',
      'def main(args):',
      '    print("py zip main")',
      '    return {"total": helper.total(args.get("xs", [])), "wrapped": wrap("x")}',
      '',
    ].join('\n'),
    'helper.py': 'def total(xs):\n    return sum(xs)\n',
    'util/__init__.py': '',
    'util/fmt.py': 'def wrap(s):\n    return "[" + s + "]"\n',
  });
  const a = await ow.actions.create({ name, action: zip, kind: 'python:3.11' });
  assert.equal(a.exec.binary, true);
  assert.equal(a.exec.kind, 'python:3.11');
  const act = await ow.actions.invoke({ name, params: { xs: [1, 2, 3.5] }, blocking: true });
  assertActivation(act, { name });
  assert.deepEqual(act.response.result, { total: 6.5, wrapped: '[x]' });
  assert.ok(act.logs.some((l) => / stdout: py zip main$/.test(l)), JSON.stringify(act.logs));
});
