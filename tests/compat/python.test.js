'use strict';
// Python text actions: explicit and :default kinds, stdlib imports, logs, errors.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { useServer } = require('./lib/server');
const { LOG_LINE, uniq, ann, rejectsWith, assertActivation } = require('./lib/helpers');

const srv = useServer();

const HELLO_PY = `
def main(args):
    name = args.get("name", "stranger")
    print("hello from python")
    return {"greeting": "Hello " + name, "n": args.get("n")}
`;

const HASH_PY = `
import hashlib
import json
from collections import OrderedDict

def main(args):
    text = args.get("text", "")
    ordered = OrderedDict(sorted(args.items()))
    return {
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "keys": list(ordered.keys()),
        "json": json.dumps({"a": [1, 2]}, separators=(",", ":")),
    }
`;

test('python:3.11 action: create, invoke, logs', async () => {
  const ow = srv.guest();
  const name = uniq('py311');
  const a = await ow.actions.create({ name, action: HELLO_PY, kind: 'python:3.11', params: { n: 3 } });
  assert.deepEqual(a.exec, { kind: 'python:3.11', code: HELLO_PY, binary: false });
  assert.equal(ann(a.annotations, 'exec'), 'python:3.11');

  const act = await ow.actions.invoke({ name, params: { name: 'Guido' }, blocking: true });
  assertActivation(act, { name, path: `guest/${name}` });
  assert.equal(ann(act.annotations, 'kind'), 'python:3.11');
  assert.deepEqual(act.response.result, { greeting: 'Hello Guido', n: 3 });
  for (const l of act.logs) assert.match(l, LOG_LINE);
  assert.ok(act.logs.some((l) => / stdout: hello from python$/.test(l)), JSON.stringify(act.logs));
});

test('python:default resolves to a concrete python kind', async () => {
  const ow = srv.guest();
  const name = uniq('pydefault');
  const a = await ow.actions.create({ name, action: HELLO_PY, kind: 'python:default' });
  assert.match(a.exec.kind, /^python:3\.\d+$/);
  assert.equal(ann(a.annotations, 'exec'), a.exec.kind);
  const r = await ow.actions.invoke({ name, blocking: true, result: true });
  assert.deepEqual(r, { greeting: 'Hello stranger', n: null });
});

test('python action importing stdlib modules', async () => {
  const ow = srv.guest();
  const name = uniq('pyhash');
  await ow.actions.create({ name, action: HASH_PY, kind: 'python:3.11' });
  const text = 'nimbus ✓';
  const r = await ow.actions.invoke({ name, params: { text, b: 1 }, blocking: true, result: true });
  assert.deepEqual(r, {
    sha256: crypto.createHash('sha256').update(text, 'utf8').digest('hex'),
    keys: ['b', 'text'],
    json: '{"a":[1,2]}',
  });
});

test('python update keeps the kind when only parameters change', async () => {
  const ow = srv.guest();
  const name = uniq('pyupd');
  await ow.actions.create({ name, action: HELLO_PY, kind: 'python:3.11' });
  const u = await ow.actions.update({ name, params: { n: 9 } });
  assert.equal(u.version, '0.0.2');
  assert.equal(u.exec.kind, 'python:3.11');
  assert.deepEqual(await ow.actions.invoke({ name, blocking: true, result: true }), { greeting: 'Hello stranger', n: 9 });
});

test('python action returning {"error": ...} is an application error (502)', async () => {
  const ow = srv.guest();
  const name = uniq('pyerr');
  await ow.actions.create({ name, action: 'def main(args):\n    return {"error": "py says no"}\n', kind: 'python:3.11' });
  const err = await rejectsWith(ow.actions.invoke({ name, blocking: true }), 502);
  assertActivation(err.error, { name, status: 'application error' });
  assert.deepEqual(err.error.response.result, { error: 'py says no' });
});
