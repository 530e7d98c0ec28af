// Browser end-to-end test of the web console: a real `nimbus serve`, Debian's chromium driven by
// playwright-core (no browser download). Screenshots go to $CARGO_TARGET_DIR/console-e2e/.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const { chromium } = require('playwright-core');

const BIN = process.env.NIMBUS_BIN || path.join(__dirname, '../../target/debug/nimbus');
const GUEST = '23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP';
const SHOTS = path.join(process.env.CARGO_TARGET_DIR || path.join(__dirname, '../../target'), 'console-e2e');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

let server, base, browser, dir;

// Polls a page function (page.waitForFunction evaluates strings, which the console's CSP forbids).
async function until(page, fn, arg) {
  for (let i = 0; i < 300; i++) {
    if (await page.evaluate(fn, arg)) return;
    await new Promise(r => setTimeout(r, 100));
  }
  throw new Error('condition not met: ' + fn);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on('error', reject);
  });
}

async function api(method, p, body) {
  const r = await fetch(base + '/api/v1/namespaces/_/' + p, {
    method, headers: { Authorization: 'Basic ' + Buffer.from(GUEST).toString('base64'), 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, data: text ? JSON.parse(text) : null };
}

before(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nimbus-console-'));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(BIN, ['serve', '--dev', '--listen', `127.0.0.1:${port}`, '--data-dir', path.join(dir, 'data')], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, NIMBUS_LOG: 'warn' } });
  for (let i = 0; ; i++) {
    try { const r = await fetch(base + '/api/v1'); if (r.ok) break; } catch (_) { /* not up yet */ }
    if (i > 600) throw new Error('server did not start');
    await new Promise(r => setTimeout(r, 100));
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.kill('SIGKILL');
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  console.log(`console screenshots: ${SHOTS}`);
});

test('sign in, invoke from the console, see result, logs, tail and chart change', async () => {
  const put = await api('PUT', 'actions/greet', { exec: { kind: 'nodejs:20', code: "function main(p) { console.log('greeting ' + p.name); return {greeting: 'Hello ' + p.name}; }" }, limits: { memory: 256 } });
  assert.strictEqual(put.status, 200);

  const page = await browser.newPage({ viewport: { width: 1366, height: 850 } });
  const external = [];
  page.on('request', r => { if (!r.url().startsWith(base)) external.push(r.url()); });
  await page.goto(base + '/');
  await page.fill('#key', 'wrong:key');
  await page.click('#signin-form button');
  await page.waitForSelector('#signin-error:has-text("not valid")');
  await page.fill('#key', GUEST);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#functions tr[data-name="greet"]');
  await page.screenshot({ path: path.join(SHOTS, '1-functions.png'), fullPage: true });

  await page.click('#functions a:has-text("greet")');
  await page.waitForSelector('#code:has-text("greeting")');
  await page.waitForSelector('#charts-empty, #chart-rate');
  const sumBefore = await page.evaluate(() => { const s = document.querySelector('#chart-rate svg'); return s ? Number(s.getAttribute('data-sum')) : 0; });

  // Live tail first, so the invocation below shows up in it.
  await page.click('#tail-btn');
  await page.waitForSelector('#tail[data-ready="1"]');

  await page.fill('#invoke-body', '{"name": "Console"}');
  await page.click('#invoke-btn');
  await page.waitForSelector('#invoke-result');
  assert.match(await page.textContent('#invoke-result'), /Hello Console/);
  assert.match(await page.textContent('#invoke-logs'), /greeting Console/);
  assert.match(await page.textContent('#invoke-start'), /cold/);
  await until(page, () => /greeting Console/.test(document.querySelector('#tail').textContent));

  // The chart shows the invocation (the page refreshes it right after the invoke).
  await page.waitForSelector('#chart-rate svg');
  await until(page, prev => Number(document.querySelector('#chart-rate svg').getAttribute('data-sum')) > prev, sumBefore);

  // A second invoke via the keyboard (Ctrl+Enter) is warm.
  await page.fill('#invoke-body', '{"name": "Again"}');
  await page.focus('#invoke-body');
  await page.keyboard.press('Control+Enter');
  await until(page, () => /Hello Again/.test((document.querySelector('#invoke-result') || {}).textContent || ''));
  assert.match(await page.textContent('#invoke-start'), /warm/);
  await page.screenshot({ path: path.join(SHOTS, '2-function.png'), fullPage: true });

  // Activations list and detail.
  await page.keyboard.press('Escape');
  await page.keyboard.press('g');
  await page.keyboard.press('a');
  await page.waitForSelector('#activations tbody a');
  assert.strictEqual(await page.locator('#activations tbody tr').count(), 2);
  await page.click('#activations tbody a >> nth=0');
  await page.waitForSelector('#activation-logs');
  assert.match(await page.textContent('#activation-logs'), /greeting Again/);
  assert.match(await page.textContent('#activation-info'), /warm/);
  await page.screenshot({ path: path.join(SHOTS, '3-activation.png'), fullPage: true });

  // Usage: GB-s of the two runs.
  await page.goto(base + '/#/usage');
  await page.waitForSelector('#usage tr[data-name="greet"]');
  assert.match(await page.textContent('#usage tr[data-name="greet"]'), /greet\s*nodejs:20\s*2/);
  await page.screenshot({ path: path.join(SHOTS, '4-usage.png'), fullPage: true });

  // Dead letters: the namespace's list (empty here).
  await page.goto(base + '/#/deadletters');
  await page.waitForSelector('#deadletters-empty');
  assert.deepStrictEqual(external, []);
  await page.close();
});

test('triggers page fires a trigger through a rule', async () => {
  await api('PUT', 'actions/ontrig', { exec: { kind: 'nodejs:20', code: 'function main(p) { return {got: p.v}; }' } });
  assert.strictEqual((await api('PUT', 'triggers/tick', {})).status, 200);
  assert.strictEqual((await api('PUT', 'rules/tickrule', { trigger: '/_/tick', action: '/_/ontrig' })).status, 200);
  const page = await browser.newPage({ viewport: { width: 1366, height: 850 } });
  await page.goto(base + '/');
  await page.evaluate(k => { sessionStorage.setItem('nimbus.key', k); sessionStorage.setItem('nimbus.ns', 'guest'); }, GUEST);
  await page.goto(base + '/#/triggers');
  await page.waitForSelector('button[data-fire="tick"]');
  await page.fill('#fire-payload', '{"v": 7}');
  await page.click('button[data-fire="tick"]');
  await page.waitForSelector('#fire-out a');
  const id = (await page.textContent('#fire-out a')).trim();
  assert.match(id, /^[0-9a-f]{32}$/);
  await page.screenshot({ path: path.join(SHOTS, '5-triggers.png'), fullPage: true });
  await page.close();
});
