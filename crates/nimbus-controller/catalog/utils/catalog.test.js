'use strict';
// Evaluates each utils action the way the Node.js action runtime does for text code
// (the source wrapped in a function whose value is the global `main`) and checks the results.
// Run: node --test crates/nimbus-controller/catalog/
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');

const dir = __dirname;
const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));

function load(file, logs = []) {
  const code = fs.readFileSync(path.join(dir, file), 'utf8');
  const sandbox = {
    console: { log: (...a) => logs.push(a.join(' ')), error: (...a) => logs.push(a.join(' ')) },
  };
  vm.createContext(sandbox);
  const main = vm.runInContext(`(function(){\n${code}\nreturn main;\n})()`, sandbox, { filename: file });
  assert.equal(typeof main, 'function', `${file} defines a global main`);
  // Results cross the runtime boundary as JSON.
  return (params) => JSON.parse(JSON.stringify(main(params)));
}

test('manifest lists the six utils actions, each with a file, kind and description', () => {
  assert.equal(manifest.package, 'utils');
  assert.deepEqual(manifest.actions.map((a) => a.name).sort(), ['cat', 'date', 'echo', 'head', 'sort', 'split']);
  for (const a of manifest.actions) {
    assert.equal(a.kind, 'nodejs:20');
    assert.equal(a.file, `${a.name}.js`);
    assert.ok(fs.existsSync(path.join(dir, a.file)), a.file);
    assert.equal(typeof a.description, 'string');
    assert.ok(a.description.length > 0);
    assert.ok(Array.isArray(a.parameters));
    for (const p of a.parameters) {
      assert.equal(typeof p.name, 'string');
      assert.equal(typeof p.description, 'string');
    }
  }
});

test('sampleInput produces sampleOutput (except date)', () => {
  for (const a of manifest.actions) {
    if (a.name === 'date') continue;
    assert.deepEqual(load(a.file)(a.sampleInput), a.sampleOutput, a.name);
  }
});

test('echo returns its parameters', () => {
  const echo = load('echo.js');
  const p = { payload: 'x', n: 1, nested: { a: [1, 2] } };
  assert.deepEqual(echo(p), p);
  assert.deepEqual(echo({}), {});
});

test('cat joins lines with newlines and drops other fields', () => {
  const cat = load('cat.js');
  assert.deepEqual(cat({ lines: ['a', 'b', 3], other: true }), { lines: ['a', 'b', 3], payload: 'a\nb\n3' });
  assert.deepEqual(cat({}), { lines: [], payload: '' });
});

test('sort sorts lines as strings and reports the length', () => {
  const sort = load('sort.js');
  assert.deepEqual(sort({ lines: ['pear', 'apple', 'fig'] }), { lines: ['apple', 'fig', 'pear'], length: 3 });
  assert.deepEqual(sort({ lines: [10, 9, 1] }), { lines: [1, 10, 9], length: 3 });
  assert.deepEqual(sort({}), { lines: [], length: 0 });
});

test('split splits on newlines by default, or on the separator', () => {
  const split = load('split.js');
  assert.deepEqual(split({ payload: 'a\nb\r\nc' }), { lines: ['a', 'b', 'c'], payload: 'a\nb\r\nc' });
  assert.deepEqual(split({ payload: 'x y z', separator: ' ' }), { lines: ['x', 'y', 'z'], payload: 'x y z' });
  assert.deepEqual(split({ payload: 42 }), { lines: ['42'], payload: 42 });
  assert.ok(split({}).error, 'missing payload is an application error');
});

test('head returns the first num lines (default 1)', () => {
  const head = load('head.js');
  assert.deepEqual(head({ lines: ['a', 'b', 'c'] }), { lines: ['a'], num: 1 });
  assert.deepEqual(head({ lines: ['a', 'b', 'c'], num: 2 }), { lines: ['a', 'b'], num: 2 });
  assert.deepEqual(head({ lines: ['a'], num: 5 }), { lines: ['a'], num: 5 });
});

test('date returns the current time as ISO-8601', () => {
  const before = Date.now();
  const r = load('date.js')({});
  assert.deepEqual(Object.keys(r), ['date']);
  assert.match(r.date, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  const t = Date.parse(r.date);
  assert.ok(t >= before - 1 && t <= Date.now() + 1);
});

test('actions log to stdout', () => {
  const logs = [];
  load('cat.js', logs)({ lines: ['q'] });
  assert.ok(logs.some((l) => l.includes('cat')), logs.join('|'));
});
