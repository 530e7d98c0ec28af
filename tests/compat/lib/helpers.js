'use strict';
// Small assertion and polling helpers shared by the compat tests.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const OpenWhiskError = require('openwhisk/lib/openwhisk_error');

const ACTIVATION_ID = /^[0-9a-f]{32}$/;
// OpenWhisk log line: "2017-08-01T07:05:14.974Z stdout: text"
const LOG_LINE = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z) (stdout|stderr): (.*)$/;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A name unique to this run, so tests can share a long-lived server (NIMBUS_APIHOST). */
function uniq(prefix) {
  return `${prefix}-${crypto.randomBytes(4).toString('hex')}`;
}

/** The value of annotation `key` in a `[{key, value}]` list, or undefined. */
function ann(list, key) {
  assert.ok(Array.isArray(list), `annotations is an array: ${JSON.stringify(list)}`);
  const a = list.find((x) => x.key === key);
  return a ? a.value : undefined;
}

function hasAnn(list, key) {
  assert.ok(Array.isArray(list), `annotations is an array: ${JSON.stringify(list)}`);
  return list.some((x) => x.key === key);
}

/** Turns a `[{key, value}]` list into an object. */
function kv(list) {
  assert.ok(Array.isArray(list), `expected a [{key,value}] list, got ${JSON.stringify(list)}`);
  return Object.fromEntries(list.map((x) => [x.key, x.value]));
}

/**
 * Awaits a promise that must reject with an OpenWhiskError carrying `status`
 * (a number, or an array of allowed numbers). Returns the error.
 */
async function rejectsWith(promise, status, what = '') {
  let err;
  try {
    const v = await promise;
    assert.fail(`${what} expected HTTP ${status}, but the call resolved with ${JSON.stringify(v)}`);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    err = e;
  }
  assert.ok(err instanceof OpenWhiskError, `${what} expected an OpenWhiskError, got ${err && err.stack}`);
  const allowed = Array.isArray(status) ? status : [status];
  assert.ok(allowed.includes(err.statusCode),
    `${what} expected HTTP ${allowed.join(' or ')}, got ${err.statusCode}: ${err.message} ${JSON.stringify(err.error)}`);
  return err;
}

/** Asserts the controller error body `{error: string, code}`. */
function assertErrorBody(body, messageMatch) {
  assert.equal(typeof body, 'object', `error body is JSON: ${JSON.stringify(body)}`);
  assert.equal(typeof body.error, 'string', `error body has a string 'error': ${JSON.stringify(body)}`);
  assert.ok('code' in body, `error body has 'code': ${JSON.stringify(body)}`);
  assert.ok(typeof body.code === 'string' || typeof body.code === 'number', `code is a string: ${JSON.stringify(body)}`);
  if (messageMatch instanceof RegExp) assert.match(body.error, messageMatch);
  else if (typeof messageMatch === 'string') assert.equal(body.error, messageMatch);
}

/** Calls fn until it returns a truthy value (errors count as "not yet"); returns the value. */
async function waitFor(fn, { timeout = 20000, interval = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastErr;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      lastErr = e;
    }
    await sleep(interval);
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}${lastErr ? `; last error: ${lastErr.message}` : ''}`);
}

/** Polls activations.get until the activation record exists. */
function pollActivation(ow, activationId, timeout = 30000) {
  return waitFor(() => ow.activations.get({ activationId }), { timeout, what: `activation ${activationId}` });
}

/** Checks the common shape of a finished action activation record. */
function assertActivation(act, { name, namespace = 'guest', status = 'success', path } = {}) {
  assert.match(act.activationId, ACTIVATION_ID);
  if (name !== undefined) assert.equal(act.name, name);
  assert.equal(act.namespace, namespace);
  assert.equal(typeof act.subject, 'string');
  assert.match(act.version, /^\d+\.\d+\.\d+$/);
  assert.equal(typeof act.publish, 'boolean');
  assert.equal(typeof act.start, 'number');
  assert.equal(typeof act.end, 'number');
  assert.ok(act.end >= act.start, `end ${act.end} >= start ${act.start}`);
  assert.equal(act.duration, act.end - act.start);
  assert.ok(Array.isArray(act.logs));
  assert.ok(Array.isArray(act.annotations));
  const codes = { success: 0, 'application error': 1, 'action developer error': 2, 'whisk internal error': 3 };
  assert.equal(act.response.status, status, `response ${JSON.stringify(act.response)}`);
  assert.equal(act.response.success, status === 'success');
  if ('statusCode' in act.response) assert.equal(act.response.statusCode, codes[status]);
  if (path !== undefined) assert.equal(ann(act.annotations, 'path'), path);
  return act;
}

module.exports = {
  ACTIVATION_ID, LOG_LINE, OpenWhiskError, sleep, uniq, ann, hasAnn, kv,
  rejectsWith, assertErrorBody, waitFor, pollActivation, assertActivation,
};
