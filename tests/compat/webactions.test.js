'use strict';
// Web actions: /api/v1/web/{ns}/{pkg}/{action}.{ext}
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { useServer, basic, GUEST_KEY } = require('./lib/server');
const { uniq } = require('./lib/helpers');

const names = {
  info: uniq('webinfo'),
  http: uniq('webhttp'),
  text: uniq('webtext'),
  raw: uniq('webraw'),
  hidden: uniq('hidden'),
  auth: uniq('webauth'),
  err: uniq('weberr'),
  errHttp: uniq('weberrhttp'),
};

const INFO = `function main(p) {
  return { method: p.__ow_method, headers: p.__ow_headers, path: p.__ow_path, x: p.x, y: p.y, bound: p.bound,
           user: p.__ow_user, hasBody: '__ow_body' in p, hasQuery: '__ow_query' in p };
}`;
const HTTP = `function main(p) {
  return { statusCode: 201, headers: { 'X-Answer': '42', 'Content-Type': 'application/json' },
           body: { path: p.__ow_path, method: p.__ow_method } };
}`;
const TEXT = "function main(p) { return { text: 'plain words for ' + (p.who || 'nobody') }; }";
const RAW = `function main(p) {
  return { query: p.__ow_query, body: p.__ow_body, a: p.a, method: p.__ow_method };
}`;

const srv = useServer(async (srv) => {
  const ow = srv.guest();
  const web = { 'web-export': true };
  await ow.actions.create({ name: names.info, action: INFO, annotations: web, params: { bound: 'b' } });
  await ow.actions.create({ name: names.http, action: HTTP, annotations: web });
  await ow.actions.create({ name: names.text, action: TEXT, annotations: web });
  await ow.actions.create({ name: names.raw, action: RAW, annotations: { 'web-export': true, 'raw-http': true } });
  await ow.actions.create({ name: names.hidden, action: INFO });
  await ow.actions.create({ name: names.auth, action: INFO, annotations: { 'web-export': true, 'require-whisk-auth': true } });
  await ow.actions.create({ name: names.err, action: "function main() { return { error: { code: 'E1' } }; }", annotations: web });
  await ow.actions.create({
    name: names.errHttp,
    action: "function main() { return { error: { statusCode: 404, headers: { 'X-Why': 'missing', 'Content-Type': 'text/plain' }, body: 'no such thing' } }; }",
    annotations: web,
  });
});

const web = (rest, opts = {}) => srv.raw(opts.method || 'GET', `/api/v1/web/guest/default/${rest}`, Object.assign({ key: null }, opts));

test('.json: query params become arguments; __ow_method, __ow_headers, __ow_path are set', async () => {
  const r = await web(`${names.info}.json?x=1`, { headers: { 'X-Custom-Thing': 'Yes' } });
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers.get('content-type') || '', /^application\/json/);
  const b = r.json;
  assert.equal(b.x, '1');
  assert.equal(b.method, 'get');
  assert.equal(b.path, '');
  assert.equal(b.bound, 'b');
  assert.equal(b.user, undefined, 'no __ow_user without auth');
  assert.equal(typeof b.headers, 'object');
  assert.equal(b.headers['x-custom-thing'], 'Yes', `lower-cased header names: ${JSON.stringify(b.headers)}`);
  assert.ok(!('X-Custom-Thing' in b.headers));
  assert.equal(b.hasQuery, false);
});

test('.json: a JSON body is promoted to arguments (body wins over query)', async () => {
  const r = await web(`${names.info}.json?x=fromquery&y=q`, { method: 'POST', body: { x: 'frombody', n: 1 } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.x, 'frombody');
  assert.equal(r.json.y, 'q');
  assert.equal(r.json.method, 'post');
  assert.equal(r.json.hasBody, false);
});

test('.json with a path projects into the result', async () => {
  const r = await web(`${names.info}.json/headers?x=1`, { headers: { 'X-P': 'projected' } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json['x-p'], 'projected', r.text);
  assert.ok(!('method' in r.json), 'only the projected field is returned');
});

test('.http: statusCode, headers and body from the result; __ow_path is the rest of the path', async () => {
  const r = await web(`${names.http}.http/some/extra/path`);
  assert.equal(r.status, 201, r.text);
  assert.equal(r.headers.get('x-answer'), '42');
  assert.match(r.headers.get('content-type') || '', /^application\/json/);
  assert.deepEqual(r.json, { path: '/some/extra/path', method: 'get' });
  // no extension means .http
  const r2 = await web(`${names.http}/p`, { method: 'PUT', body: {} });
  assert.equal(r2.status, 201, r2.text);
  assert.deepEqual(r2.json, { path: '/p', method: 'put' });
});

test('.text returns the text field as text/plain', async () => {
  const r = await web(`${names.text}.text?who=you`);
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers.get('content-type') || '', /^text\/plain/);
  assert.equal(r.text, 'plain words for you');
});

test('raw-http: __ow_query and __ow_body instead of promoted parameters', async () => {
  const r = await web(`${names.raw}.json?a=1&b=two`);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.query, 'a=1&b=two');
  assert.equal(r.json.a, undefined, 'query params are not promoted');

  const t = await web(`${names.raw}.json`, { method: 'POST', body: 'hello raw', headers: { 'content-type': 'text/plain' } });
  assert.equal(t.status, 200, t.text);
  assert.equal(t.json.body, 'hello raw');
  assert.equal(t.json.method, 'post');

  const j = await web(`${names.raw}.json`, { method: 'POST', body: { a: 'json' } });
  assert.equal(j.status, 200, j.text);
  assert.equal(j.json.a, undefined, 'body params are not promoted');
  assert.equal(typeof j.json.body, 'string');
  assert.deepEqual(JSON.parse(Buffer.from(j.json.body, 'base64').toString('utf8')), { a: 'json' }, 'JSON body arrives base64-encoded');
});

test('an action without web-export gives 404', async () => {
  const r = await web(`${names.hidden}.json`);
  assert.equal(r.status, 404, r.text);
  assert.equal(typeof r.json.error, 'string');
  const missing = await web(`${uniq('nothing')}.json`);
  assert.equal(missing.status, 404);
});

test('require-whisk-auth: true demands valid Basic auth', async () => {
  const no = await web(`${names.auth}.json`);
  assert.equal(no.status, 401, no.text);
  const bad = await web(`${names.auth}.json`, { headers: { authorization: basic('23bc46b1-71f6-4ed5-8c54-816aa4f8c502:' + 'z'.repeat(64)) } });
  assert.equal(bad.status, 401, bad.text);
  const ok = await web(`${names.auth}.json`, { headers: { authorization: basic(GUEST_KEY) } });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.json.user, 'guest', '__ow_user is the authenticated namespace');
});

test('OPTIONS answers with CORS headers', async () => {
  const r = await web(`${names.info}.json`, { method: 'OPTIONS', headers: { 'Access-Control-Request-Headers': 'X-Foo', Origin: 'http://example.com' } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers.get('access-control-allow-origin'), '*');
  const methods = (r.headers.get('access-control-allow-methods') || '').split(',').map((s) => s.trim());
  for (const m of ['OPTIONS', 'GET', 'DELETE', 'POST', 'PUT', 'HEAD', 'PATCH']) assert.ok(methods.includes(m), `allow-methods has ${m}: ${methods}`);
  assert.match(r.headers.get('access-control-allow-headers') || '', /X-Foo/i);
  // ordinary web responses carry CORS too
  const g = await web(`${names.info}.json`);
  assert.equal(g.headers.get('access-control-allow-origin'), '*');
});

test('setting an __ow_ parameter in the request gives 400', async () => {
  const r = await web(`${names.info}.json?__ow_method=put`);
  assert.equal(r.status, 400, r.text);
});

test('an application error in a .json action projects its error field', async () => {
  const r = await web(`${names.err}.json`);
  assert.deepEqual(r.json, { code: 'E1' }, `body is the projected error: ${r.status} ${r.text}`);
  assert.equal(r.status, 200, 'the .json transcoder answers 200 for the projected error');
});

test('an application error in a .http action is rendered as an HTTP response', async () => {
  const h = await web(`${names.errHttp}.http`);
  assert.equal(h.status, 404, h.text);
  assert.equal(h.headers.get('x-why'), 'missing');
  assert.equal(h.text, 'no such thing');
});
