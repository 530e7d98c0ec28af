'use strict';
// Nimbus ActionLoop launcher for Node.js: `node launcher.js <codedir> <main>`, or in stem mode
// `node launcher.js --stem <codedir>`.
//
// Protocol (see nimbus-runtime's process.rs): load the code, then write {"ok":true} (or
// {"ok":false,"error":...} and exit 1) on fd 3. Then, for each JSON line on stdin, call the
// entry point and write exactly one JSON line on fd 3 -- but only once everything the function
// printed has left process.stdout/process.stderr, which are asynchronous when they are pipes.
// The runtime relies on that ordering to collect logs without sentinel lines.
//
// Stem mode (a pre-started runtime): with every module below loaded and no code yet, write
// {"ok":true,"stem":true} on fd 3, then read ONE line on stdin,
// {"init":{"main":"...","action_name":"...","env":{...}}}: apply `env` to process.env, load the
// code that has meanwhile been put into <codedir>, and answer exactly as above.
//
// Concurrent mode (an action with limits.concurrency N > 1): `node launcher.js <codedir> <main> N`,
// or "concurrency": N in the stem init line. Request lines are then read continuously and up to N
// activations run at once (more are queued here). Each result line is an envelope,
// {"activation_id":"<id of the request>","result":<what the sequential mode would write>}, still
// written only once stdout/stderr are flushed. console.log/info/debug/dir (stdout) and
// console.error/warn/trace (stderr) called in an activation's async context (AsyncLocalStorage)
// prefix every line they print with TAG_START <activation id> TAG_END, which the runtime strips to
// attribute the line; anything else (process.stdout.write, output outside any activation) is
// untagged, and the runtime gives it to every activation in flight. process.env holds the __OW_*
// values of the most recent activation (as OpenWhisk's Node.js runtime does), while reading
// process.env.__OW_<KEY> of a request key inside an activation gives that activation's value.

const fs = require('fs');
const path = require('path');
const vm = require('vm');
const Module = require('module');
const readline = require('readline');
const util = require('util');
const { AsyncLocalStorage } = require('async_hooks');
const { pathToFileURL } = require('url');

const RESULT_FD = 3;
const stem = process.argv[2] === '--stem';
const args = process.argv.slice(stem ? 3 : 2);
const codeDir = path.resolve(args[0] || '.');
// In stem mode, set by the init line.
let mainName = args[1] || 'main';
// Activations run at once; above 1, concurrent mode (see the top). In stem mode, set by the init line.
let concurrency = parseConcurrency(args[2]);

// Log line tags of concurrent mode: TAG_START <activation id> TAG_END <text>.
const TAG_START = '\x1e';
const TAG_END = '\x1f';
// The activation whose async context is running: {id, env}.
const activation = new AsyncLocalStorage();

function parseConcurrency(v) {
  const n = Number(v);
  return Number.isSafeInteger(n) && n > 1 ? n : 1;
}

// A closed log pipe must not crash the function.
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});

// Resolves once every write queued so far on the stream has been handed to the OS: write
// callbacks run in order, so the callback of an empty write comes after all earlier ones.
function flushed(stream) {
  return new Promise((resolve) => {
    if (stream.destroyed || !stream.writable) {
      resolve();
      return;
    }
    try {
      stream.write('', () => resolve());
    } catch (_) {
      resolve();
    }
  });
}

async function send(obj) {
  let line;
  try {
    line = JSON.stringify(obj);
  } catch (e) {
    process.stderr.write(`The action result could not be serialized to JSON: ${e && e.message}\n`);
  }
  if (line === undefined) line = 'null';
  await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
  const buf = Buffer.from(line + '\n', 'utf8');
  let off = 0;
  while (off < buf.length) off += fs.writeSync(RESULT_FD, buf, off, buf.length - off);
}

function firstLine(s) {
  return String(s).split('\n')[0];
}

// "SyntaxError: Unexpected identifier 'bar' (index.js:4)": the decorated stack of a syntax
// error starts with "<file>:<line>"; the rest of the stack is launcher noise.
function describeLoadError(e) {
  if (!(e instanceof Error)) return String(e);
  let text = `${e.name}: ${firstLine(e.message)}`;
  const m = /^(\/[^\n]*):(\d+)\n/.exec(e.stack || '');
  if (m) text += ` (${path.relative(codeDir, m[1]) || m[1]}:${m[2]})`;
  return text;
}

function pick(exp) {
  if (exp && typeof exp[mainName] === 'function') return exp[mainName];
  if (typeof exp === 'function' && mainName === 'main') return exp;
  if (exp && exp.default && typeof exp.default[mainName] === 'function') return exp.default[mainName];
  return undefined;
}

// Plain code (no package.json): index.js is compiled as a CommonJS module body with a trailing
// `return <main>`, so both `exports.main = ...` and a top-level `function main() {}` work, and
// the code runs exactly once.
function loadIndex(file) {
  let code = fs.readFileSync(file, 'utf8');
  if (code.charCodeAt(0) === 0xfeff) code = code.slice(1);
  if (code.startsWith('#!')) code = '//' + code.slice(2);
  const isIdent = /^[A-Za-z_$][\w$]*$/.test(mainName);
  const tail = isIdent ? `\n;return (typeof ${mainName} !== 'undefined' ? ${mainName} : undefined);` : '\n;return undefined;';
  const mod = new Module(file, null);
  mod.filename = file;
  mod.paths = Module._nodeModulePaths(path.dirname(file));
  const req = Module.createRequire(file);
  const fn = vm.compileFunction(code + tail, ['exports', 'require', 'module', '__filename', '__dirname'], {
    filename: file,
  });
  const found = fn.call(mod.exports, mod.exports, req, mod, file, path.dirname(file));
  mod.loaded = true;
  return pick(mod.exports) || (typeof found === 'function' ? found : undefined);
}

async function load() {
  if (fs.existsSync(path.join(codeDir, 'package.json'))) {
    try {
      return pick(require(codeDir));
    } catch (e) {
      if (e && e.code === 'ERR_REQUIRE_ESM') {
        const entry = require.resolve(codeDir);
        return pick(await import(pathToFileURL(entry).href));
      }
      throw e;
    }
  }
  return loadIndex(path.join(codeDir, 'index.js'));
}

function errorValue(e) {
  if (e instanceof Error) return e.message;
  if (e === undefined || e === null) return String(e);
  if (typeof e === 'object') {
    try {
      JSON.stringify(e);
      return e;
    } catch (_) {
      return String(e);
    }
  }
  return e;
}

// Lines of stdin, through one iterator for the whole life of the process, so that nothing read
// ahead after the init line (stem mode) is lost to the request loop.
let lines;
function nextLine() {
  if (!lines) {
    const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false });
    lines = rl[Symbol.asyncIterator]();
  }
  return lines.next();
}

// Stem mode: the init line. Returns false when stdin closed first (the runtime gave up on us).
async function awaitInit() {
  let line;
  for (;;) {
    const next = await nextLine();
    if (next.done) return false;
    line = next.value;
    if (line.trim()) break;
  }
  let init;
  try {
    init = JSON.parse(line).init;
    if (!init || typeof init !== 'object') throw new Error('no "init" object');
  } catch (e) {
    process.stderr.write(`Invalid init line: ${e.message}\n`);
    await send({ ok: false, error: 'The runtime sent an invalid init line.' });
    process.exit(1);
  }
  if (typeof init.main === 'string' && init.main) mainName = init.main;
  concurrency = parseConcurrency(init.concurrency);
  const env = init.env && typeof init.env === 'object' ? init.env : {};
  for (const [k, v] of Object.entries(env)) process.env[k] = typeof v === 'string' ? v : JSON.stringify(v);
  return true;
}

async function serve(entry) {
  let previous = [];
  for (;;) {
    const next = await nextLine();
    if (next.done) break;
    const line = next.value;
    if (!line.trim()) continue;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      process.stderr.write(`Invalid request line: ${e.message}\n`);
      await send({ error: 'The runtime sent an invalid request.' });
      continue;
    }
    // Every key but `value` becomes __OW_<KEY>; keys of the previous request that are absent
    // now (e.g. api_key) must not linger.
    const keys = [];
    for (const [k, v] of Object.entries(msg)) {
      if (k === 'value') continue;
      const name = '__OW_' + k.toUpperCase();
      process.env[name] = typeof v === 'string' ? v : JSON.stringify(v);
      keys.push(name);
    }
    for (const k of previous) if (!keys.includes(k)) delete process.env[k];
    previous = keys;

    // As in OpenWhisk's Node.js runtime: a synchronous throw is a developer error, while a
    // rejected Promise is the function's own (application) error.
    let pending;
    try {
      pending = entry(msg.value === undefined ? {} : msg.value);
    } catch (e) {
      process.stderr.write(`${e instanceof Error && e.stack ? e.stack : JSON.stringify(errorValue(e))}\n`);
      const text = e instanceof Error ? `${e.name}: ${e.message}` : JSON.stringify(errorValue(e));
      await send({ __nimbus_developer_error: `An error has occurred: ${text}` });
      continue;
    }
    let result;
    try {
      result = await pending;
      if (result === undefined || result === null) result = {};
    } catch (e) {
      process.stderr.write(`${e instanceof Error && e.stack ? e.stack : JSON.stringify(errorValue(e))}\n`);
      result = { error: errorValue(e) };
    }
    await send(result);
  }
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------
// Concurrent mode

// `text` as lines tagged with the current activation's id (untagged outside any activation).
function tagged(text) {
  const ctx = activation.getStore();
  if (!ctx) return text.endsWith('\n') ? text : text + '\n';
  const tag = TAG_START + ctx.id + TAG_END;
  const body = text.endsWith('\n') ? text.slice(0, -1) : text;
  return tag + body.split('\n').join('\n' + tag) + '\n';
}

// console methods that tag their lines when called in an activation's context.
function installTaggedConsole() {
  const methods = {
    log: [process.stdout, (a) => util.format(...a)],
    info: [process.stdout, (a) => util.format(...a)],
    debug: [process.stdout, (a) => util.format(...a)],
    dir: [process.stdout, (a) => util.inspect(a[0], { customInspect: false, ...(a[1] || {}) })],
    error: [process.stderr, (a) => util.format(...a)],
    warn: [process.stderr, (a) => util.format(...a)],
    trace: [
      process.stderr,
      (a) => {
        const err = { name: 'Trace', message: util.format(...a) };
        Error.captureStackTrace(err, console.trace);
        return err.stack;
      },
    ],
  };
  for (const [name, [stream, format]] of Object.entries(methods)) {
    const original = console[name];
    console[name] = function (...a) {
      if (!activation.getStore()) return original.apply(console, a);
      stream.write(tagged(format(a)));
    };
  }
}

// process.env whose request-derived __OW_* keys read as the current activation's values; every
// other access goes to the real environment (which holds the most recent activation's values).
function installActivationEnv() {
  const real = process.env;
  const managed = new Set();
  process.env = new Proxy(real, {
    get(target, key) {
      const ctx = activation.getStore();
      if (ctx && typeof key === 'string' && managed.has(key)) return ctx.env[key];
      return Reflect.get(target, key);
    },
    // process.env's own [[Set]] (string coercion); the default would define on the proxy.
    set(target, key, value) {
      target[key] = value;
      return true;
    },
  });
  return (env) => {
    for (const k of Object.keys(env)) managed.add(k);
  };
}

async function serveConcurrently(entry) {
  installTaggedConsole();
  const manage = installActivationEnv();
  let previous = [];
  let running = 0;
  let slotFreed = null;

  async function sendFor(id, result) {
    let line;
    try {
      line = JSON.stringify({ activation_id: id, result });
    } catch (e) {
      process.stderr.write(tagged(`The action result could not be serialized to JSON: ${e && e.message}`));
    }
    if (line === undefined) line = JSON.stringify({ activation_id: id, result: null });
    await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
    const buf = Buffer.from(line + '\n', 'utf8');
    let off = 0;
    while (off < buf.length) off += fs.writeSync(RESULT_FD, buf, off, buf.length - off);
  }

  async function activate(msg) {
    const id = typeof msg.activation_id === 'string' ? msg.activation_id : String(msg.activation_id);
    const env = {};
    for (const [k, v] of Object.entries(msg)) {
      if (k === 'value') continue;
      env['__OW_' + k.toUpperCase()] = typeof v === 'string' ? v : JSON.stringify(v);
    }
    manage(env);
    // The most recent activation's values stay in the real environment.
    const keys = Object.keys(env);
    for (const k of keys) process.env[k] = env[k];
    for (const k of previous) if (!keys.includes(k)) delete process.env[k];
    previous = keys;

    await activation.run({ id, env }, async () => {
      let pending;
      try {
        pending = entry(msg.value === undefined ? {} : msg.value);
      } catch (e) {
        process.stderr.write(tagged(`${e instanceof Error && e.stack ? e.stack : JSON.stringify(errorValue(e))}`));
        const text = e instanceof Error ? `${e.name}: ${e.message}` : JSON.stringify(errorValue(e));
        await sendFor(id, { __nimbus_developer_error: `An error has occurred: ${text}` });
        return;
      }
      let result;
      try {
        result = await pending;
        if (result === undefined || result === null) result = {};
      } catch (e) {
        process.stderr.write(tagged(`${e instanceof Error && e.stack ? e.stack : JSON.stringify(errorValue(e))}`));
        result = { error: errorValue(e) };
      }
      await sendFor(id, result);
    });
  }

  function finished() {
    running -= 1;
    if (slotFreed) {
      const wake = slotFreed;
      slotFreed = null;
      wake();
    }
  }

  for (;;) {
    const next = await nextLine();
    if (next.done) break;
    const line = next.value;
    if (!line.trim()) continue;
    let msg;
    try {
      msg = JSON.parse(line);
      if (!msg || typeof msg !== 'object') throw new Error('not an object');
    } catch (e) {
      process.stderr.write(`Invalid request line: ${e.message}\n`);
      await sendFor(null, { error: 'The runtime sent an invalid request.' });
      continue;
    }
    while (running >= concurrency) await new Promise((resolve) => (slotFreed = resolve));
    running += 1;
    activate(msg).then(finished, (e) => {
      process.stderr.write(`Activation failed in the launcher: ${e && e.stack ? e.stack : e}\n`);
      finished();
    });
  }
  while (running > 0) await new Promise((resolve) => (slotFreed = resolve));
  process.exit(0);
}

(async () => {
  if (stem) {
    await send({ ok: true, stem: true });
    if (!(await awaitInit())) process.exit(0);
  }
  let entry;
  try {
    entry = await load();
    if (typeof entry !== 'function') throw new Error(`main function '${mainName}' not found`);
  } catch (e) {
    process.stderr.write(`${e instanceof Error && e.stack ? e.stack : String(e)}\n`);
    const message = e instanceof Error && e.message === `main function '${mainName}' not found` ? e.message : describeLoadError(e);
    await send({ ok: false, error: message });
    process.exit(1);
  }
  await send({ ok: true });
  if (concurrency > 1) await serveConcurrently(entry);
  else await serve(entry);
})();
