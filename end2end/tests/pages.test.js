// Every console page as an admin, an owner and a portal visitor, at desktop and phone
// widths: axe-core's WCAG 2.1 A/AA rules with zero violations, no script errors, the
// right status (404 for what the caller may not see), no horizontal page scroll at
// 390 px, a visible focus; live deliveries; first-byte and interactive times.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  base, browser, screenshot, until, receiver, createKey, loggedIn, axeViolations,
} from './helpers.js';

const DESKTOP = { width: 1360, height: 900 };
const PHONE = { width: 390, height: 844 };

// Opens `path` and checks what every page must be; returns the HTTP status.
async function visit(page, errors, path, { status = 200, width, who }) {
  const resp = await page.goto(`${base}${path}`);
  await page.getByTestId('console-ready').waitFor({ state: 'attached', timeout: 15000 });
  const where = `${who} ${path} at ${width}px`;
  assert.equal(resp.status(), status, `${where}: status`);
  assert.equal(await page.locator('main h1').count() >= 1, true, `${where}: a level-one heading`);
  assert.deepEqual(await axeViolations(page), [], `${where}: axe-core`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `${where}: the page scrolls sideways by ${overflow}px`);
  assert.deepEqual(errors, [], `${where}: script errors`);
}

// The keyboard reaches a control and shows where it is.
async function focusIsVisible(page) {
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  return page.evaluate(() => {
    const el = document.activeElement;
    const s = getComputedStyle(el);
    return el !== document.body && (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2);
  });
}

test('every page, every role, desktop and phone: accessible, honest statuses, no sideways scroll', async () => {
  // Setup: an admin's endpoint and notification, an owner's endpoint, a portal link.
  const admin = await loggedIn('admin', '/keys');
  const key = await createKey(admin.page, 'pages-test', 'admin');
  const auth = { authorization: `Bearer ${key}` };
  const hook = await receiver();
  const ep = await admin.page.request.post(`${base}/api/v1/endpoints`, {
    headers: auth, data: { url: hook.url, event_types: ['user.registered'], description: 'pages test' },
  });
  assert.equal(ep.status(), 201, await ep.text());
  const adminEndpoint = (await ep.json()).id;
  const sent = await admin.page.request.post(`${base}/api/v1/notifications`, {
    headers: auth, data: { event_type: 'user.registered', payload: { user: { name: 'Grace', email: `grace-${Date.now()}@example.test` } } },
  });
  assert.equal(sent.status(), 202);
  const notification = (await sent.json()).id;
  await until('the webhook', () => hook.hits.length > 0);
  const link = await admin.page.request.post(`${base}/api/v1/portal-links`, { headers: auth, data: { owner: 'acme', ttl: '10m' } });
  assert.equal(link.status(), 201, await link.text());
  const portalUrl = (await link.json()).url;
  // An endpoint of team acme (Alice's team), made with a key an admin issued for acme.
  const acme = await createKey(admin.page, 'pages-acme', 'endpoints:read, endpoints:write', 'acme');
  const aliceEp = await admin.page.request.post(`${base}/api/v1/endpoints`, {
    headers: { authorization: `Bearer ${acme}` }, data: { url: `${hook.url}/alice`, event_types: ['*'] },
  });
  assert.equal(aliceEp.status(), 201, await aliceEp.text());
  const aliceEndpoint = (await aliceEp.json()).id;
  await admin.context.close();

  const missing = '00000000-0000-4000-8000-000000000000';
  const plan = {
    admin: {
      ok: ['/', '/dashboard', '/notifications', `/notifications/${notification}`, '/catalog', '/event-types',
        '/event-types/user.registered', '/templates', '/templates/welcome-email', '/templates/endpoint-disabled', '/endpoints', `/endpoints/${adminEndpoint}`,
        '/portal-links', '/keys', '/audit', '/suppressions', '/suppressions?q=nobody&reason=bounce'],
      missing: ['/no/such/page', `/endpoints/${missing}`, `/notifications/${missing}`, '/templates/no-such-template'],
    },
    owner: {
      ok: ['/', '/notifications', '/catalog', '/endpoints', `/endpoints/${aliceEndpoint}`, '/keys'],
      missing: ['/audit', '/dashboard', '/templates', '/event-types', '/portal-links', '/suppressions', `/endpoints/${adminEndpoint}`,
        `/notifications/${notification}`, '/no/such/page'],
    },
    visitor: {
      ok: ['/endpoints', '/catalog', `/endpoints/${aliceEndpoint}`],
      missing: ['/audit', '/dashboard', '/notifications', '/suppressions', `/endpoints/${adminEndpoint}`],
    },
  };
  for (const viewport of [DESKTOP, PHONE]) {
    for (const who of ['admin', 'owner', 'visitor']) {
      let session;
      if (who === 'visitor') {
        const context = await browser.it.newContext({ viewport });
        const page = await context.newPage();
        const errors = [];
        page.on('pageerror', (e) => errors.push(String(e)));
        await page.goto(portalUrl);
        session = { page, context, errors };
      } else {
        session = await loggedIn(who === 'admin' ? 'admin' : 'alice', '/', { viewport });
      }
      const { page, context, errors } = session;
      for (const path of plan[who].ok) {
        await visit(page, errors, path, { width: viewport.width, who });
        const name = `${who}-${path === '/' ? 'home' : path.slice(1).replace(/\/[0-9a-f-]{36}$/, '-detail').replace(/\//g, '-')}`;
        if (viewport === PHONE || who !== 'visitor') await screenshot(page, `${name}-${viewport.width}`);
      }
      for (const path of plan[who].missing) {
        await visit(page, errors, path, { status: 404, width: viewport.width, who });
        assert.match(await page.textContent('main h1'), /Page not found/, `${who} ${path}`);
      }
      await page.goto(`${base}/endpoints`);
      await page.getByTestId('console-ready').waitFor({ state: 'attached', timeout: 15000 });
      assert.ok(await focusIsVisible(page), `${who}: the focused control shows an outline`);
      await context.close();
    }
  }
  hook.close();
});

test('live: an endpoint page shows a test event\'s delivery and attempts without a reload', async () => {
  const { page, context, errors } = await loggedIn('bob', '/endpoints');
  const hook = await receiver();
  hook.state.status = 500;
  await page.getByTestId('endpoint-form-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('ep-url').fill(hook.url);
  await page.getByTestId('ep-retry').fill('1s');
  await page.getByTestId('ep-save').click();
  await Promise.all([page.waitForURL(/\/endpoints\/[0-9a-f-]{36}$/), page.getByTestId('ep-saved').click()]);
  const url = page.url();
  await page.getByTestId('ep-no-deliveries').waitFor({ timeout: 15000 });
  await page.locator('[data-testid="live-state"][data-state="live"]').waitFor({ timeout: 15000 });
  // Marks the document: a reload would lose it.
  await page.evaluate(() => { window.__noReload = true; });

  // Another browser (the same owner on their phone) sends the test event.
  const other = await loggedIn('bob', url.slice(base.length));
  await other.page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
  await other.page.getByTestId('ep-test').click();
  await other.page.getByTestId('ep-result').filter({ hasText: 'Test event sent' }).waitFor({ timeout: 15000 });

  // The first page sees the delivery arrive, then its retry (two failed attempts).
  await page.getByTestId('ep-delivery').first().waitFor({ timeout: 15000 });
  await until('the retry, live', async () => (await page.getByTestId('ep-delivery-attempts').first().textContent()) === '2');
  assert.equal(await page.getByTestId('ep-delivery-status').first().textContent(), 'failed');
  assert.equal(await page.evaluate(() => window.__noReload), true, 'no reload happened');

  // Hidden tab: the stream closes; shown again: it reconnects.
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await page.locator('[data-testid="live-state"][data-state="paused"]').waitFor({ timeout: 5000 });
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await page.locator('[data-testid="live-state"][data-state="live"]').waitFor({ timeout: 15000 });

  // The stream is behind the access policy: another owner's browser gets 404, a
  // stranger is sent to log in.
  const id = url.split('/').pop();
  const alice = await loggedIn('alice', '/endpoints');
  const theirs = await alice.page.request.get(`${base}/console/live/endpoints/${id}`);
  assert.equal(theirs.status(), 404);
  await alice.context.close();
  const stranger = await browser.it.newContext();
  const r = await stranger.request.get(`${base}/console/live/endpoints/${id}`, { maxRedirects: 0 });
  assert.equal(r.status(), 303);
  await stranger.close();

  assert.deepEqual(errors, []);
  await other.context.close();
  await context.close();

  // A notification's page is live too: an admin watches a failing webhook's attempts
  // arrive (the endpoint retries after 1 s).
  const admin = await loggedIn('admin', '/keys');
  const key = await createKey(admin.page, 'live-test', 'admin');
  const auth = { authorization: `Bearer ${key}` };
  const ep = await admin.page.request.post(`${base}/api/v1/endpoints`, {
    headers: auth, data: { url: `${hook.url}/live`, event_types: ['user.registered'], retry_schedule: '2s' },
  });
  assert.equal(ep.status(), 201, await ep.text());
  const sent = await admin.page.request.post(`${base}/api/v1/notifications`, {
    headers: auth, data: { event_type: 'user.registered', payload: { user: { name: 'Lin', email: `lin-${Date.now()}@example.test` } } },
  });
  const nid = (await sent.json()).id;
  const endpointId = (await ep.json()).id;
  await admin.page.goto(`${base}/notifications/${nid}`);
  await admin.page.locator('[data-testid="live-state"][data-state="live"]').waitFor({ timeout: 15000 });
  await admin.page.evaluate(() => { window.__noReload = true; });
  const webhookAttempts = admin.page.getByTestId('delivery').filter({ hasText: `webhook to ${endpointId}` }).getByTestId('attempt-row');
  await until('the second attempt, live', async () => (await webhookAttempts.count()) === 2);
  assert.equal(await admin.page.evaluate(() => window.__noReload), true, 'no reload happened');
  await admin.context.close();
  hook.close();
});

test('timings: first byte and interactive for the dashboard and the history, and the bundle size', async () => {
  const { page, context } = await loggedIn('admin', '/');
  const rows = [];
  for (const path of ['/dashboard', '/notifications']) {
    for (let i = 0; i < 3; i += 1) {
      const start = Date.now();
      await page.goto(`${base}${path}`);
      await page.getByTestId('console-ready').waitFor({ state: 'attached', timeout: 15000 });
      const interactive = Date.now() - start;
      const nav = await page.evaluate(() => performance.getEntriesByType('navigation')[0].toJSON());
      rows.push({ path, ttfb_ms: Math.round(nav.responseStart - nav.requestStart), dom_ms: Math.round(nav.domContentLoadedEventEnd), interactive_ms: interactive });
    }
  }
  // The console's assets as a browser fetches them: raw bytes on the wire for brotli,
  // gzip and none (a plain HTTP client, so nothing decompresses them).
  const hrefs = await page.evaluate(() => [...new Set(performance.getEntriesByType('resource')
    .map((r) => r.name).filter((n) => n.includes('/pkg/')))]);
  const wire = (href, encoding) => new Promise((resolve, reject) => {
    http.get(href, { headers: { 'accept-encoding': encoding } }, (res) => {
      let n = 0;
      res.on('data', (c) => { n += c.length; });
      res.on('end', () => resolve({ n, as: res.headers['content-encoding'] || 'identity' }));
    }).on('error', reject);
  });
  console.log('console timings (ms):');
  for (const r of rows) console.log(`  ${r.path.padEnd(15)} first byte ${String(r.ttfb_ms).padStart(4)}  DOM ready ${String(r.dom_ms).padStart(4)}  interactive ${String(r.interactive_ms).padStart(4)}`);
  console.log('console bundle (bytes on the wire: brotli / gzip / identity):');
  for (const href of hrefs) {
    const [br, gz, id] = [await wire(href, 'br'), await wire(href, 'gzip'), await wire(href, 'identity')];
    console.log(`  ${href.split('/').pop().padEnd(34)} ${String(br.n).padStart(8)} (${br.as}) / ${String(gz.n).padStart(8)} (${gz.as}) / ${String(id.n).padStart(8)}`);
    assert.equal(br.as, 'br', `${href} is sent with brotli`);
  }
  assert.ok(rows.length === 6);
  await context.close();
});
