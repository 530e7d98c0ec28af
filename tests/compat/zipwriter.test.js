'use strict';
// Checks lib/zip.js (used to build zip actions) against independent readers. Needs no server.
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { makeZip, crc32 } = require('./lib/zip');

function have(cmd, args) {
  try { execFileSync(cmd, args, { stdio: 'ignore' }); return true; } catch { return false; }
}

test('crc32 matches the standard check value', () => {
  assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
  assert.equal(crc32(Buffer.alloc(0)), 0);
});

test('archive layout: signatures, entry count and offsets', () => {
  const z = makeZip({ 'a.txt': 'hello', 'dir/b.bin': Buffer.from([0, 1, 2, 255]) });
  assert.equal(z.readUInt32LE(0), 0x04034b50);
  const eocd = z.length - 22;
  assert.equal(z.readUInt32LE(eocd), 0x06054b50);
  assert.equal(z.readUInt16LE(eocd + 10), 2);
  const cdOffset = z.readUInt32LE(eocd + 16);
  assert.equal(z.readUInt32LE(cdOffset), 0x02014b50);
  assert.equal(cdOffset + z.readUInt32LE(eocd + 12), eocd);
  // the first local entry holds "hello" stored verbatim
  assert.equal(z.subarray(30 + 5, 30 + 5 + 5).toString(), 'hello');
});

const python = have('python3', ['--version']) ? 'python3' : null;
test('python zipfile reads the archive back', { skip: !python && 'python3 not found' }, () => {
  const files = { '__main__.py': 'print("x")\n', 'pkg/mod.py': 'V = 1\n', 'bin.dat': Buffer.from([1, 2, 3, 0, 250]) };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zipw-'));
  try {
    const f = path.join(tmp, 'a.zip');
    fs.writeFileSync(f, makeZip(files));
    const out = execFileSync(python, ['-c', [
      'import zipfile, sys, json, base64',
      'z = zipfile.ZipFile(sys.argv[1])',
      'assert z.testzip() is None',
      'print(json.dumps({i.filename: base64.b64encode(z.read(i)).decode() for i in z.infolist()}))',
    ].join('\n'), f]).toString();
    const got = JSON.parse(out);
    assert.deepEqual(Object.keys(got).sort(), Object.keys(files).sort());
    for (const [k, v] of Object.entries(files)) assert.equal(Buffer.from(got[k], 'base64').toString('hex'), Buffer.from(v).toString('hex'));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('unzip -t accepts the archive', { skip: !have('unzip', ['-v']) && 'unzip not found' }, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zipw-'));
  try {
    const f = path.join(tmp, 'a.zip');
    fs.writeFileSync(f, makeZip({ 'index.js': 'exports.main = () => ({})\n', 'package.json': '{}' }));
    const out = execFileSync('unzip', ['-t', f]).toString();
    assert.match(out, /No errors detected/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
