'use strict';
// Nimbus adapter for OpenFaaS Node.js functions (`node20`, of-watchdog http-mode semantics), put
// into a function bundle as index.js and run by the ordinary Node.js ActionLoop launcher, so the
// function lives in the same warm instance pool and sandbox as every other Node.js action.
//
// Parameters and result as in http.py: __ow_method, __ow_path, __ow_query, __ow_headers,
// __ow_body (base64) in; {statusCode, headers, body (base64)} out.
//
// The user's code is function/handler.js exporting `async (event, context)` (or the callback form
// `(event, context, cb)`), as in the OpenFaaS node20 template: event = {body, headers, method,
// query, path}; context.status(code), .headers({...}), .succeed(value), .fail(err). A JSON
// request body is parsed; other bodies are text, or a Buffer when RAW_BODY=true.

const path = require('path');
const fs = require('fs');

// Environment of the deployment (envVars / stack.yml `environment`), written by the gateway.
const envFile = path.join(__dirname, 'openfaas.env.json');
if (fs.existsSync(envFile)) Object.assign(process.env, JSON.parse(fs.readFileSync(envFile, 'utf8')));

const handler = require(path.join(__dirname, 'function', 'handler.js'));

function parseBody(raw, headers) {
  const ct = String(headers['content-type'] || 'text/plain');
  if (process.env.RAW_BODY === 'true') return raw;
  const text = raw.toString('utf8');
  if (ct.includes('json')) {
    try { return text.length ? JSON.parse(text) : {}; } catch (_) { return text; }
  }
  return text;
}

function parseQuery(raw) {
  const q = {};
  for (const [k, v] of new URLSearchParams(raw || '')) if (!(k in q)) q[k] = v;
  return q;
}

class Context {
  constructor(done) { this.statusCode = 200; this.headerValues = {}; this.done = done; }
  status(code) { if (code === undefined) return this.statusCode; this.statusCode = code; return this; }
  headers(h) { if (h === undefined) return this.headerValues; this.headerValues = h; return this; }
  succeed(value) { this.done(null, value); }
  fail(err) { this.done(err === undefined ? new Error('fail') : err); }
}

function encode(value, headers) {
  if (value === undefined || value === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(value)) return value;
  if (typeof value === 'object') {
    if (!Object.keys(headers).some((k) => k.toLowerCase() === 'content-type')) {
      headers['Content-Type'] = 'application/json';
    }
    return Buffer.from(JSON.stringify(value));
  }
  return Buffer.from(String(value));
}

async function main(params) {
  const headers = params.__ow_headers || {};
  const event = {
    body: parseBody(Buffer.from(params.__ow_body || '', 'base64'), headers),
    headers,
    method: params.__ow_method || 'GET',
    query: parseQuery(params.__ow_query),
    path: params.__ow_path || '/',
  };
  let settle;
  const settled = new Promise((resolve) => { settle = resolve; });
  const ctx = new Context((err, value) => settle({ err, value }));
  const cb = (err, value) => settle({ err, value });
  Promise.resolve()
    .then(() => handler(event, ctx, cb))
    .then((v) => { if (v !== undefined) settle({ err: null, value: v }); }, (e) => settle({ err: e }));
  const { err, value } = await settled;
  const outHeaders = {};
  for (const [k, v] of Object.entries(ctx.headerValues || {})) outHeaders[k] = String(v);
  if (err) {
    const status = ctx.statusCode === 200 ? 500 : ctx.statusCode;
    const msg = err instanceof Error ? err.toString() : (typeof err === 'string' ? err : JSON.stringify(err));
    return { statusCode: status, headers: outHeaders, isBase64Encoded: true, body: Buffer.from(msg).toString('base64') };
  }
  const data = encode(value, outHeaders);
  return { statusCode: ctx.statusCode, headers: outHeaders, isBase64Encoded: true, body: data.toString('base64') };
}

exports.main = main;
