// The console in a real browser: the server-rendered page hydrates, and an
// interactive element reacts only once the WASM bundle has loaded.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const base = process.env.HERALD_E2E_URL;
if (!base) throw new Error('HERALD_E2E_URL is not set; run the end2end tests through scripts/test.sh');

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => { await browser?.close(); });

test('console shell hydrates and reacts to clicks', async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const wasm = page.waitForResponse((r) => r.url().endsWith('.wasm') && r.status() === 200);
  const response = await page.goto(`${base}/`);
  assert.equal(response.status(), 200);
  assert.equal(await page.title(), 'Herald');
  await wasm;
  // Rendered on the server as "Loading console…"; hydration flips it.
  await page.getByTestId('hydration-status').filter({ hasText: 'Console is interactive.' }).waitFor({ timeout: 15000 });
  assert.equal(await page.getByTestId('ping-count').textContent(), '0 ping(s)');
  await page.getByTestId('ping').click();
  await page.getByTestId('ping').click();
  await page.getByTestId('ping-count').filter({ hasText: '2 ping(s)' }).waitFor({ timeout: 5000 });
  const css = await page.evaluate(() => getComputedStyle(document.querySelector('.topbar')).display);
  assert.equal(css, 'flex', 'the stylesheet was served');
  assert.deepEqual(errors, []);
});

test('unknown pages render the not-found view', async () => {
  const page = await browser.newPage();
  const response = await page.goto(`${base}/no/such/page`);
  assert.equal(response.status(), 404);
  assert.match(await page.textContent('main'), /Page not found/);
});
