// What the browser tests share: the browser, the base URL, logging in through the
// identity provider's real form (tools/oidc/provider.mjs, started by scripts/test.sh),
// a real HTTP receiver, API keys made on the console, screenshots and axe-core.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

export const base = process.env.HERALD_E2E_URL;
if (!base) throw new Error('HERALD_E2E_URL is not set; run the end2end tests through scripts/test.sh');

export const browser = {};
before(async () => {
  browser.it = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => { await browser.it?.close(); });

// Screenshots of the main pages (the README shows copies from docs/screenshots).
export const shots = process.env.HERALD_E2E_SCREENSHOTS || path.resolve('..', 'target', 'screenshots');
fs.mkdirSync(shots, { recursive: true });
export async function screenshot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

// Polls `f` until it returns something truthy.
export async function until(what, f, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// A real HTTP receiver on loopback that answers `status` (200 unless changed) with
// `body` ('ok' unless changed) and keeps what it got.
export async function receiver() {
  const hits = [];
  const state = { status: 200, body: 'ok' };
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => { hits.push({ headers: req.headers, body }); res.writeHead(state.status); res.end(state.body); });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  server.unref(); // a test that fails before closing it does not keep the runner alive
  return {
    hits, state, url: `http://127.0.0.1:${server.address().port}/hook`, close: () => server.close(),
  };
}

// Creates an API key on the console's keys page; returns its secret. `owner` only for
// admins (an owner's page has no owner field).
export async function createKey(page, name, scopes, owner = '') {
  await page.goto(`${base}/keys`);
  await page.getByTestId('keys-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('key-name').fill(name);
  await page.getByTestId('key-scopes').fill(scopes);
  if (owner) await page.getByTestId('key-owner').fill(owner);
  await page.getByTestId('key-create').click();
  return (await page.getByTestId('new-key').textContent({ timeout: 15000 })).trim();
}

// Opens `path` in a fresh browser context and logs in as `user` on the provider's form.
export async function loggedIn(user, path = '/', options = {}) {
  const context = await browser.it.newContext(options);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${base}${path}`);
  // The console sent the stranger to the provider's login page.
  assert.ok(!page.url().startsWith(base), `expected the provider's login page, got ${page.url()}`);
  await page.fill('input[name="login"]', user);
  await page.fill('input[name="password"]', 'any password');
  await Promise.all([
    page.waitForURL((u) => u.toString().startsWith(base), { timeout: 15000 }),
    page.click('button[type="submit"]'),
  ]);
  return { page, errors, context };
}

// axe-core (from npm) run in the page: the WCAG 2.1 A and AA rules' violations, each as
// "rule (impact): where".
const axeSource = fs.readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
export async function axeViolations(page) {
  await page.addScriptTag({ content: axeSource });
  const result = await page.evaluate(async () => window.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
  }));
  return result.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')}`);
}
