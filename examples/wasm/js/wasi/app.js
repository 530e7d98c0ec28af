// A wasm:wasi function in JavaScript: a wasi:cli command component (it exports wasi:cli/run)
// built with componentize-js. The invocation parameters arrive as one JSON document on stdin;
// the result is the JSON written to stdout; console.error lines become the activation's logs.

import { getStdin } from 'wasi:cli/stdin@0.2.10';
import { getStdout } from 'wasi:cli/stdout@0.2.10';
import { getEnvironment } from 'wasi:cli/environment@0.2.10';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.10';

function readStdin() {
  const stdin = getStdin();
  const chunks = [];
  let total = 0;
  for (;;) {
    let chunk;
    try {
      chunk = stdin.blockingRead(65536n);
    } catch (e) {
      if (e?.payload?.tag === 'closed') break; // end of input
      throw e;
    }
    chunks.push(chunk);
    total += chunk.length;
  }
  const all = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}

function writeStdout(text) {
  const stdout = getStdout();
  const bytes = new TextEncoder().encode(text);
  // blocking-write-and-flush takes at most 4096 bytes at a time.
  for (let i = 0; i < bytes.length; i += 4096) {
    stdout.blockingWriteAndFlush(bytes.subarray(i, i + 4096));
  }
}

export const run = {
  run() {
    const input = readStdin();
    const params = input ? JSON.parse(input) : {};
    const name = params.name || 'stranger';
    console.error(`greeting ${name}`);
    // Misbehaviours for the platform's tests: a busy loop and a large allocation.
    if (params.spin) {
      for (;;) {
        // spin
      }
    }
    if (params.allocMb) {
      const block = new Uint8Array(params.allocMb * 1024 * 1024);
      block.fill(1);
      writeStdout(JSON.stringify({ allocated: block.length }));
      return;
    }
    if (params.fail) {
      // A failed run (exit status 1): the platform reports a developer error.
      console.error('failing on request');
      throw new Error('failing on request');
    }
    const env = getEnvironment();
    const out = {
      greeting: `Hello, ${name}!`,
      language: 'javascript',
      // What the sandbox lets the function see: no environment, no directories.
      envVars: env.length,
      preopenedDirs: getDirectories().length,
    };
    if (params.env) {
      const hit = env.find(([k]) => k === params.env);
      out.envValue = hit ? hit[1] : null;
    }
    writeStdout(JSON.stringify(out));
  },
};
