// Email after the 250, in the browser: the suppression list (search, suppress, remove),
// the dashboard's bounce and complaint figures, and a notification page showing what
// was decided about an email (here: suppressed after its recipient unsubscribed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { base, screenshot, until, createKey, loggedIn } from './helpers.js';

test('an admin suppresses an address, finds it, and removes it', async () => {
  const { page, errors, context } = await loggedIn('admin', '/suppressions');
  await page.getByTestId('suppressions-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.equal(await page.getByTestId('nav-suppressions').getAttribute('aria-current'), 'page');
  const address = `e2e-${Date.now()}@example.net`;
  // Bad input is a readable error and changes nothing.
  await page.getByTestId('suppress-address').fill('x@y.test');
  await page.getByTestId('suppress-category').fill('No Such Category');
  await page.getByTestId('suppress-add').click();
  await page.getByTestId('suppress-error').waitFor({ timeout: 15000 });
  assert.match(await page.getByTestId('suppress-error').textContent(), /category/);
  await page.getByTestId('suppress-address').fill(address.toUpperCase());
  await page.getByTestId('suppress-category').fill('');
  await page.getByTestId('suppress-detail').fill('asked by phone');
  await page.getByTestId('suppress-add').click();
  await page.getByTestId('suppress-done').waitFor({ timeout: 15000 });
  await until('listed', async () => (await page.getByTestId('suppression-address').allTextContents()).includes(address));
  // Search narrows the list (a plain GET form: works without script too).
  await page.goto(`${base}/suppressions?q=${encodeURIComponent(address.slice(0, 12))}`);
  await page.getByTestId('suppressions-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.deepEqual(await page.getByTestId('suppression-address').allTextContents(), [address]);
  await screenshot(page, 'suppressions-1360');
  await page.getByTestId('suppression-remove').click();
  await page.getByTestId('suppressions-empty').waitFor({ state: 'visible', timeout: 15000 });
  assert.deepEqual(errors, []);
  await context.close();
});

test('an unsubscribed recipient\'s next email is suppressed, shown on its page and in the list; the dashboard has the email figures', async () => {
  const admin = await loggedIn('admin', '/dashboard');
  await admin.page.getByRole('heading', { name: 'Bounces and complaints' }).waitFor({ timeout: 15000 });
  const key = await createKey(admin.page, 'email-e2e', 'notifications:write, notifications:read');
  const auth = { authorization: `Bearer ${key}` };
  const to = `reader-${Date.now()}@example.net`;
  const r = await admin.page.request.post(`${base}/api/v1/notifications`, {
    headers: auth, data: { event_type: 'user.registered', payload: { user: { name: 'Reader', email: to } } },
  });
  assert.equal(r.status(), 202, await r.text());
  const { id } = await r.json();
  // The browser tests' server has no SMTP server to send through, so the recipient
  // leaves the category the way a service does it for them: the preferences API.
  const pref = await admin.page.request.put(`${base}/api/v1/recipients/${encodeURIComponent(to)}/preferences`, {
    headers: auth, data: { categories: [{ category: 'general', subscribed: false }], unsubscribed_from_all: false },
  });
  assert.equal(pref.status(), 200, await pref.text());
  const again = await admin.page.request.post(`${base}/api/v1/notifications`, {
    headers: auth, data: { event_type: 'user.registered', payload: { user: { name: 'Reader', email: to } } },
  });
  const second = await again.json();
  assert.equal(second.deliveries[0].status, 'suppressed');
  await admin.page.goto(`${base}/notifications/${second.id}`);
  await admin.page.getByTestId('delivery-status').filter({ hasText: 'suppressed' }).waitFor({ timeout: 15000 });
  assert.match(await admin.page.textContent('body'), /the address is suppressed \(unsubscribe, category general/);
  // The suppression shows in the list with its reason.
  await admin.page.goto(`${base}/suppressions?q=${encodeURIComponent(to)}`);
  await admin.page.getByTestId('suppression-row').filter({ hasText: 'unsubscribe' }).waitFor({ timeout: 15000 });
  assert.ok(id);
  await admin.context.close();
});
