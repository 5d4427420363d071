// The console in a real browser (headless Chromium): login through the identity
// provider's real form, the server-rendered page hydrating, the signed-in user and
// role, logout, and every page's workflows as admins and owners use them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  base, browser, screenshot, until, receiver, createKey, loggedIn,
} from './helpers.js';

test('an admin logs in, lands on the dashboard with name and role, and logs out', async () => {
  const { page, errors, context } = await loggedIn('admin');
  assert.equal(page.url(), `${base}/`);
  // An admin's home is the dashboard.
  assert.equal(await page.title(), 'Dashboard — Herald');
  await page.getByTestId('fig-accepted').waitFor({ timeout: 15000 });
  await page.getByTestId('user-name').filter({ hasText: 'Ada Admin' }).waitFor({ timeout: 15000 });
  assert.equal(await page.getByTestId('user-role').textContent(), 'admin');
  // Hydrated: the marker only the browser's effects render.
  await page.getByTestId('console-ready').waitFor({ state: 'attached', timeout: 15000 });
  // The grouped navigation, home marked current; every admin page is in it.
  assert.equal(await page.getByTestId('nav-home').getAttribute('aria-current'), 'page');
  for (const p of ['dashboard', 'notifications', 'catalog', 'event-types', 'templates', 'endpoints', 'portal-links', 'keys', 'audit']) {
    assert.equal(await page.getByTestId(`nav-${p}`).count(), 1, `nav-${p}`);
  }
  assert.deepEqual(await page.locator('.sidebar .section-title').allTextContents(),
    ['Overview', 'Messages', 'Catalog', 'Webhooks', 'Access', 'Audit']);
  // An admin reaches every owner's endpoints: the owner filter is theirs.
  await page.getByTestId('nav-endpoints').click();
  await page.locator('#ep-owner').waitFor({ timeout: 15000 });
  const css = await page.evaluate(() => getComputedStyle(document.querySelector('.topbar')).display);
  assert.equal(css, 'flex', 'the stylesheet was served');

  // Logout ends Herald's session, then the provider asks to end its own.
  await Promise.all([page.waitForURL((u) => !u.toString().startsWith(base)), page.getByTestId('logout').click()]);
  const me = await page.request.get(`${base}/auth/me`);
  assert.equal(me.status(), 401, 'the session is over on the server');
  await page.click('button[name="logout"][value="yes"]');
  // Back at Herald, which sends the browser to log in again.
  await page.locator('input[name="login"]').waitFor({ timeout: 15000 });
  assert.ok(!page.url().startsWith(base), page.url());
  assert.deepEqual(errors, []);
  await context.close();
});

test('an owner logs in to a start page: first steps, their endpoints, only their pages', async () => {
  const { page, context, errors } = await loggedIn('carol');
  await page.getByTestId('user-name').filter({ hasText: 'Carol' }).waitFor({ timeout: 15000 });
  assert.equal(await page.getByTestId('user-role').textContent(), 'owner');
  assert.equal(await page.title(), 'Start — Herald');
  assert.match(await page.textContent('main h1'), /^Welcome, /);
  for (const step of ['Register an endpoint', 'Read the event catalog', 'Make an API key']) {
    assert.equal(await page.getByRole('link', { name: step }).count(), 1, step);
  }
  // No endpoints yet: the empty state says what to do.
  assert.match(await page.getByTestId('home-empty').textContent(), /No endpoints yet/);
  // Admin pages are not offered.
  for (const p of ['dashboard', 'audit', 'templates', 'event-types', 'portal-links']) {
    assert.equal(await page.getByTestId(`nav-${p}`).count(), 0, `no nav-${p}`);
  }
  // The owner's endpoints page has no "Owner" filter or column, and an empty state.
  await page.getByTestId('nav-endpoints').click();
  await page.getByTestId('endpoints-empty').waitFor({ timeout: 15000 });
  assert.equal(await page.locator('#ep-owner').count(), 0, 'no owner filter for an owner');
  assert.equal(await page.getByTestId('nav-endpoints').getAttribute('aria-current'), 'page');
  // The catalog's checkboxes sit beside their labels.
  await page.getByTestId('endpoint-form-ready').waitFor({ state: 'attached', timeout: 15000 });
  const box = await page.getByTestId('ep-type-*').boundingBox();
  const label = await page.getByTestId('ep-type-*').locator('xpath=..').boundingBox();
  assert.ok(box.width < 30 && box.x - label.x < 10, `checkbox beside its label: ${JSON.stringify({ box, label })}`);
  // Keys: no owner field for an owner.
  await page.goto(`${base}/keys`);
  await page.getByTestId('keys-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.equal(await page.getByTestId('key-owner').count(), 0);
  assert.deepEqual(errors, []);
  await context.close();
});

test('an admin reads the audit log and its verified chain; an owner gets nothing of it', async () => {
  const admin = await loggedIn('admin', '/audit');
  assert.equal(admin.page.url(), `${base}/audit`);
  assert.equal(await admin.page.title(), 'Audit log — Herald');
  await admin.page.getByTestId('audit-chain').filter({ hasText: 'Chain verified' }).waitFor({ timeout: 15000 });
  const actions = await admin.page.getByTestId('audit-row').locator('td:nth-child(4)').allTextContents();
  assert.ok(actions.includes('user.login'), `the login is on record: ${actions}`);
  await admin.page.getByTestId('nav-audit').waitFor();
  await admin.context.close();

  const owner = await loggedIn('alice', '/audit');
  await owner.page.getByTestId('not-found').waitFor({ timeout: 15000 });
  assert.equal(await owner.page.getByTestId('audit-row').count(), 0);
  assert.equal(await owner.page.getByTestId('nav-audit').count(), 0);
  const direct = await owner.page.request.post(`${base}/console/fn/audit`, {
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin: base }, data: '',
  });
  assert.equal(direct.status(), 200, 'same-origin, so the call reaches the server function');
  const body = await direct.text();
  assert.ok(!body.includes('user.login') && !body.includes('Chain'), `the server function gives an owner nothing: ${body}`);
  await owner.context.close();
});

test('API keys: an admin creates one (shown once) and revokes it; an owner cannot exceed their scopes', async () => {
  const { page, context } = await loggedIn('admin', '/keys');
  assert.equal(await page.title(), 'API keys — Herald');
  await page.getByTestId('keys-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('key-name').fill('ci-pipeline');
  await page.getByTestId('key-scopes').fill('notifications:write');
  await page.getByTestId('key-owner').fill('acme');
  await page.getByTestId('key-create').click();
  const secret = await page.getByTestId('new-key').textContent({ timeout: 15000 });
  assert.match(secret, /^hk_[0-9a-f]{12}_[0-9a-f]{64}$/);
  const row = page.getByTestId('key-row').filter({ hasText: 'ci-pipeline' });
  await row.waitFor({ timeout: 15000 });
  assert.match(await row.textContent(), /acme/);
  // The key works on the API.
  const ok = await page.request.post(`${base}/api/v1/notifications`, {
    headers: { authorization: `Bearer ${secret}` },
    data: { event_type: 'user.registered', payload: { user: { name: 'Ada', email: 'ada@example.test' } } },
  });
  assert.equal(ok.status(), 202);
  await row.getByTestId('key-revoke').click();
  await row.getByTestId('key-state').filter({ hasText: 'revoked' }).waitFor({ timeout: 15000 });
  const refused = await page.request.post(`${base}/api/v1/notifications`, {
    headers: { authorization: `Bearer ${secret}` },
    data: { event_type: 'user.registered', payload: { user: { name: 'Ada', email: 'ada@example.test' } } },
  });
  assert.equal(refused.status(), 401, 'a revoked key stops working');
  await context.close();

  const owner = await loggedIn('bob', '/keys');
  await owner.page.getByTestId('keys-ready').waitFor({ state: 'attached', timeout: 15000 });
  await owner.page.getByTestId('key-name').fill('too-much');
  await owner.page.getByTestId('key-scopes').fill('admin');
  await owner.page.getByTestId('key-create').click();
  const error = await owner.page.getByTestId('key-error').textContent({ timeout: 15000 });
  assert.match(error, /cannot give a key the scope 'admin'/);
  assert.equal(await owner.page.getByTestId('key-row').filter({ hasText: 'ci-pipeline' }).count(), 0,
    'an owner sees only their own keys');
  await owner.context.close();
});

test('unknown pages render the not-found view after login', async () => {
  const { page, context } = await loggedIn('bob', '/no/such/page');
  assert.equal(page.url(), `${base}/no/such/page`);
  assert.match(await page.textContent('main'), /Page not found/);
  await context.close();
});

test('history: a notification sent through the API is found by recipient, with its attempts, and resent', async () => {
  const { page, context, errors } = await loggedIn('admin', '/');
  const key = await createKey(page, 'history-test', 'admin');
  const auth = { authorization: `Bearer ${key}` };
  const hook = await receiver();
  const ep = await page.request.post(`${base}/api/v1/endpoints`, {
    headers: auth, data: { url: hook.url, event_types: ['user.registered'], description: 'history test' },
  });
  assert.equal(ep.status(), 201, await ep.text());
  const email = `hedy-${Date.now()}@example.test`;
  const sent = await page.request.post(`${base}/api/v1/notifications`, {
    headers: auth, data: { event_type: 'user.registered', payload: { user: { name: 'Hedy', email } } },
  });
  assert.equal(sent.status(), 202);
  const { id } = await sent.json();
  await until('the webhook', () => hook.hits.some((h) => h.body.includes(email)));

  await page.goto(`${base}/notifications`);
  assert.equal(await page.title(), 'Notifications — Herald');
  await page.getByTestId('history-row').first().waitFor({ timeout: 15000 });
  await screenshot(page, 'notifications');
  // The filter form is a plain GET form: it works with or without the WASM bundle.
  await page.getByLabel('Recipient address').fill(email);
  await Promise.all([page.waitForURL(/recipient=/), page.getByTestId('filter-apply').click()]);
  await until('one row', async () => (await page.getByTestId('history-row').count()) === 1);
  await Promise.all([page.waitForURL(`${base}/notifications/${id}`), page.getByTestId('history-row').locator('a').click()]);
  assert.equal(await page.getByTestId('detail-event-type').textContent(), 'user.registered');
  assert.match(await page.getByTestId('email-subject').textContent(), /Hedy/);
  assert.equal(await page.getByTestId('email-html').getAttribute('sandbox'), '', 'the email HTML is sandboxed');
  const webhook = page.getByTestId('delivery').filter({ hasText: 'webhook to' });
  // The delivery's outcome is recorded just after the receiver answers: reload until it is.
  await until('the recorded attempt', async () => {
    await page.reload();
    await page.getByTestId('detail-ready').waitFor({ state: 'attached', timeout: 15000 });
    return (await webhook.getByTestId('attempt-row').count()) === 1;
  });
  assert.match(await webhook.getByTestId('attempt-row').textContent(), /HTTP 200/);
  await screenshot(page, 'notification');
  const before = hook.hits.length;
  await webhook.getByTestId('resend').click();
  await page.getByTestId('action-result').filter({ hasText: 'Queued again.' }).waitFor({ timeout: 15000 });
  await until('the resent webhook', () => hook.hits.length > before);

  // A bad filter is a readable message next to the form, not a crash.
  await page.goto(`${base}/notifications?since=yesterday`);
  assert.match(await page.getByTestId('history-error').textContent({ timeout: 15000 }), /since must be an RFC 3339 time/);
  assert.deepEqual(errors, []);
  hook.close();
  await context.close();

  const owner = await loggedIn('alice', `/notifications/${id}`);
  await owner.page.getByTestId('not-found').waitFor({ timeout: 15000 });
  assert.ok(!(await owner.page.textContent('main')).includes(email), 'an owner sees nothing of it');
  // The history is theirs to read, as on the API: their own notifications only.
  await owner.page.goto(`${base}/notifications`);
  await owner.page.locator('[data-testid="history-empty"], [data-testid="history-row"]').first().waitFor({ timeout: 15000 });
  assert.ok(!(await owner.page.textContent('main')).includes(email), 'not the admin\'s notification');
  await owner.context.close();
});

test('catalog: an event type with schema and sample, a template previewed as you type, published and used', async () => {
  const { page, context, errors } = await loggedIn('admin', '/event-types');
  assert.equal(await page.title(), 'Event types — Herald');
  const n = Date.now();
  const et = `order.shipped_${n}`;
  const tk = `shipped-${n}`;
  await page.getByTestId('event-type-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('et-name').fill(et);
  await page.getByTestId('et-description').fill('An order left the warehouse');
  // Not a schema: the problem shows next to the schema field.
  await page.getByTestId('et-schema').fill('{"type": 12}');
  await page.getByTestId('et-save').click();
  assert.match(await page.getByTestId('error-payload_schema').textContent({ timeout: 15000 }), /not a valid JSON Schema/);
  // The field says it is invalid to assistive technology; the others do not.
  assert.equal(await page.getByTestId('et-schema').getAttribute('aria-invalid'), 'true');
  assert.equal(await page.getByTestId('et-name').getAttribute('aria-invalid'), null);
  const schema = { type: 'object', required: ['order'],
    properties: { order: { type: 'object', required: ['id', 'email'], properties: { id: { type: 'integer' } } } } };
  await page.getByTestId('et-schema').fill(JSON.stringify(schema, null, 2));
  // A sample that does not match it: next to the sample field.
  await page.getByTestId('et-sample').fill('{"order": {"id": 1}}');
  await page.getByTestId('et-save').click();
  assert.match(await page.getByTestId('error-sample_payload').textContent({ timeout: 15000 }), /email/);
  await page.getByTestId('et-sample').fill('{"order": {"id": 42, "name": "Ada", "email": "ada@example.test"}}');
  // Routing to a template that does not exist is refused.
  await page.getByTestId('et-template').fill('no-such-template');
  await page.getByTestId('et-recipient').fill('order.email');
  await page.getByTestId('et-save').click();
  assert.match(await page.getByTestId('error-email_template').textContent({ timeout: 15000 }), /does not exist/);
  await page.getByTestId('et-template').fill('');
  await page.getByTestId('et-save').click();
  await page.getByTestId('et-saved').waitFor({ timeout: 15000 });
  await page.getByTestId('event-type-row').filter({ hasText: et }).waitFor({ timeout: 15000 });

  // A template, previewed against that sample as it is typed.
  await page.goto(`${base}/templates`);
  await page.getByTestId('templates-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('new-template-key').fill(tk);
  await page.getByTestId('new-template-subject').fill('Order {{ order.id }} shipped');
  await page.getByTestId('new-template-html').fill('<p>Hi {{ order.name }}</p>');
  await page.getByTestId('new-template-text').fill('Hi {{ order.name }}');
  await page.getByTestId('new-template-create').click();
  await Promise.all([page.waitForURL(`${base}/templates/${tk}`), page.getByTestId('new-template-link').click()]);
  await page.getByTestId('editor-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('preview-sample').selectOption(et);
  await page.getByTestId('preview-subject').filter({ hasText: 'Order 42 shipped' }).waitFor({ timeout: 15000 });
  await page.getByTestId('edit-html').fill('<p>Hi</p>\n<p>{{ order.nickname }}</p>');
  const problem = await page.getByTestId('preview-error').textContent({ timeout: 15000 });
  assert.match(problem, /html of template .* line 2: undefined value/);
  await page.getByTestId('edit-html').fill('<p>Hello {{ order.name }}, it is on its way.</p>');
  await page.getByTestId('preview-subject').filter({ hasText: 'Order 42 shipped' }).waitFor({ timeout: 15000 });
  assert.match(await page.getByTestId('preview-html').getAttribute('srcdoc'), /Hello Ada, it is on its way/);
  // This version tracks opens and clicks.
  await page.getByTestId('edit-track-opens').check();
  await page.getByTestId('edit-track-clicks').check();
  await page.getByTestId('save-version').click();
  await page.getByTestId('save-result').filter({ hasText: 'Saved as v2.' }).waitFor({ timeout: 15000 });
  await page.getByTestId('version-tracks').first().filter({ hasText: 'opens, clicks' }).waitFor({ timeout: 15000 });
  assert.equal(await page.getByTestId('version-tracks').last().textContent(), 'nothing');
  await page.getByTestId('publish-v2').click();
  await page.getByTestId('publish-result').filter({ hasText: 'Version 2 is published.' }).waitFor({ timeout: 15000 });
  await page.getByTestId('published').filter({ hasText: 'Published: v2' }).waitFor({ timeout: 15000 });
  const diff = await page.getByTestId('diff').textContent({ timeout: 15000 });
  assert.match(diff, /- html_body +<p>Hi \{\{ order\.name \}\}<\/p>/);
  assert.match(diff, /\+ html_body +<p>Hello \{\{ order\.name \}\}, it is on its way\.<\/p>/);
  await page.getByTestId('test-to').fill('qa@example.test');
  await page.getByTestId('test-send').click();
  await page.getByTestId('test-result').filter({ hasText: 'Test email accepted' }).waitFor({ timeout: 15000 });
  await screenshot(page, 'template');

  // Route the event type's email to it, then send one through the API: version 2 is used.
  await page.goto(`${base}/event-types/${et}`);
  await page.getByTestId('event-type-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('et-template').fill(tk);
  await page.getByTestId('et-recipient').fill('order.email');
  await page.getByTestId('et-save').click();
  await page.getByTestId('et-saved').waitFor({ timeout: 15000 });
  await page.goto(`${base}/event-types`);
  await page.getByTestId('event-type-row').first().waitFor({ timeout: 15000 });
  await screenshot(page, 'event-types');
  const key = await createKey(page, 'catalog-test', 'admin');
  const sent = await page.request.post(`${base}/api/v1/notifications`, {
    headers: { authorization: `Bearer ${key}` },
    data: { event_type: et, payload: { order: { id: 7, name: 'Grace', email: 'grace@example.test' } } },
  });
  assert.equal(sent.status(), 202, await sent.text());
  const { id } = await sent.json();
  const got = await (await page.request.get(`${base}/api/v1/notifications/${id}`, { headers: { authorization: `Bearer ${key}` } })).json();
  assert.equal(got.deliveries[0].email.version, 2);
  assert.equal(got.deliveries[0].email.subject, 'Order 7 shipped');
  assert.equal(got.deliveries[0].email.track_opens, true);
  // Its page shows what tracking recorded (nothing yet: nobody opened it).
  await page.goto(`${base}/notifications/${id}`);
  await page.getByTestId('tracking-opens').filter({ hasText: 'not yet' }).waitFor({ timeout: 15000 });

  // All of it is in the audit log.
  await page.goto(`${base}/audit`);
  await page.getByTestId('audit-chain').filter({ hasText: 'Chain verified' }).waitFor({ timeout: 15000 });
  const actions = await page.getByTestId('audit-row').locator('td:nth-child(4)').allTextContents();
  for (const a of ['event_type.created', 'event_type.updated', 'template.created', 'template.version_added', 'template.published',
    'template.test_sent']) {
    assert.ok(actions.includes(a), `${a} is on record: ${actions}`);
  }
  // Filtered by action and target, each entry's change as a diff of before and after.
  await page.getByLabel('Action').fill('event_type.updated');
  await page.getByLabel('Target').fill(et);
  await Promise.all([page.waitForURL(/action=event_type\.updated/), page.getByTestId('audit-filter').click()]);
  await until('one entry', async () => (await page.getByTestId('audit-row').count()) === 1);
  const change = await page.getByTestId('audit-diff').textContent();
  assert.ok(change.includes(`+   "email_template": "${tk}"`), change);
  assert.ok(change.includes('-   "email_template": null'), change);
  assert.deepEqual(errors, []);
  await context.close();

  const owner = await loggedIn('alice', '/templates');
  await owner.page.getByTestId('not-found').waitFor({ timeout: 15000 });
  await owner.page.goto(`${base}/templates/${tk}`);
  await owner.page.getByTestId('not-found').waitFor({ timeout: 15000 });
  await owner.page.goto(`${base}/event-types`);
  await owner.page.getByTestId('not-found').waitFor({ timeout: 15000 });
  const direct = await owner.page.request.post(`${base}/console/fn/templates/publish`, {
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin: base }, data: `key=${tk}&version=1`,
  });
  assert.ok((await direct.text()).includes('only admins'), 'the server function refuses an owner');
  await owner.context.close();
});

test('endpoints: an admin registers one against a real receiver, rotates its secret, sends a test event', async () => {
  const { page, context, errors } = await loggedIn('admin', '/endpoints');
  assert.equal(await page.title(), 'Endpoints — Herald');
  const hook = await receiver();
  await page.getByTestId('endpoint-form-ready').waitFor({ state: 'attached', timeout: 15000 });
  // A URL the SSRF rules refuse is a readable error.
  await page.getByTestId('ep-url').fill('http://169.254.169.254/latest/meta-data');
  await page.getByTestId('ep-save').click();
  assert.match(await page.getByTestId('ep-error').textContent({ timeout: 15000 }), /cloud metadata service/);
  await page.getByTestId('ep-url').fill(hook.url);
  await page.getByTestId('ep-description').fill('receiver for the browser test');
  await page.getByTestId('ep-type-user.registered').check();
  assert.equal(await page.getByTestId('ep-types').inputValue(), 'user.registered');
  await page.getByTestId('ep-headers').fill('X-Team: platform');
  await page.getByTestId('ep-retry').fill('1s, 5s');
  await page.getByTestId('ep-save').click();
  await Promise.all([page.waitForURL(/\/endpoints\/[0-9a-f-]{36}$/), page.getByTestId('ep-saved').click()]);
  await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.equal(await page.getByTestId('ep-state').textContent(), 'enabled');
  assert.match(await page.getByTestId('ep-headers').inputValue(), /X-Team: \*+/, 'header values are masked');

  await page.getByTestId('ep-reveal').click();
  const first = (await page.getByTestId('ep-result').textContent({ timeout: 15000 })).match(/whsec_\S+/)[0];
  await page.getByTestId('ep-grace').fill('0s');
  await page.getByTestId('ep-rotate').click();
  await page.getByTestId('ep-result').filter({ hasText: 'New signing secret' }).waitFor({ timeout: 15000 });
  const second = (await page.getByTestId('ep-result').textContent()).match(/whsec_\S+/)[0];
  assert.notEqual(first, second, 'a new secret');

  await page.getByTestId('ep-test').click();
  await page.getByTestId('ep-result').filter({ hasText: 'Test event sent' }).waitFor({ timeout: 15000 });
  const hit = await until('the test event', () => hook.hits.find((h) => h.body.includes('webhook.test')));
  assert.equal(hit.headers['x-team'], 'platform', 'the custom header is sent');
  // Signed with the new secret only (grace 0s): Standard Webhooks, HMAC-SHA256 over id.timestamp.body.
  const { createHmac } = await import('node:crypto');
  const signed = `${hit.headers['webhook-id']}.${hit.headers['webhook-timestamp']}.${hit.body}`;
  const expect = (s) => `v1,${createHmac('sha256', Buffer.from(s.slice(6), 'base64')).update(signed).digest('base64')}`;
  const sigs = hit.headers['webhook-signature'].split(' ');
  assert.ok(sigs.includes(expect(second)), 'signed with the rotated secret');
  assert.ok(!sigs.includes(expect(first)), 'not with the old one after a 0s grace');
  await until('the delivery on the page', async () => {
    await page.reload();
    await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
    return (await page.getByTestId('ep-delivery').count()) >= 1;
  });
  await screenshot(page, 'endpoint');
  await page.getByTestId('ep-disable').click();
  await page.getByTestId('ep-state').filter({ hasText: 'disabled' }).waitFor({ timeout: 15000 });
  await page.goto(`${base}/endpoints?state=disabled`);
  await page.getByTestId('endpoint-row').filter({ hasText: hook.url }).waitFor({ timeout: 15000 });
  await screenshot(page, 'endpoints');

  await page.goto(`${base}/audit`);
  await page.getByTestId('audit-chain').filter({ hasText: 'Chain verified' }).waitFor({ timeout: 15000 });
  const actions = await page.getByTestId('audit-row').locator('td:nth-child(4)').allTextContents();
  for (const a of ['endpoint.created', 'endpoint.secret.revealed', 'endpoint.secret.rotated', 'endpoint.tested', 'endpoint.disabled']) {
    assert.ok(actions.includes(a), `${a} is on record: ${actions}`);
  }
  await screenshot(page, 'audit');
  assert.deepEqual(errors, []);
  hook.close();
  await context.close();

  // An owner's /endpoints is their portal: nothing of the admin's endpoint is in it.
  const owner = await loggedIn('bob', '/endpoints');
  await owner.page.getByTestId('endpoint-form-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.ok(!(await owner.page.textContent('main')).includes(hook.url));
  await owner.context.close();
});

test('endpoints: an owner tries a transformation, saves it with OAuth credentials, and the receiver gets the reshaped, authenticated body', async () => {
  const { page, context, errors } = await loggedIn('alice', '/endpoints');
  const hook = await receiver();
  await page.getByTestId('endpoint-form-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('ep-url').fill(hook.url);
  // A script that never returns: the trial says so, readably.
  await page.getByTestId('ep-transformation').fill('function handler(w) { for (;;) {} }');
  await page.getByTestId('ep-transformation-test').click();
  await page.getByTestId('ep-transformation-result').filter({ hasText: 'longer than 50 ms' }).waitFor({ timeout: 15000 });
  // Saving one that does not compile is refused with the reason.
  await page.getByTestId('ep-transformation').fill('function handler(w) { return w');
  await page.getByTestId('ep-save').click();
  assert.match(await page.getByTestId('ep-error').textContent({ timeout: 15000 }), /transformation: .*SyntaxError/);
  const script = "function handler(w) { w.payload = { text: 'via ' + w.event_type }; w.headers['X-Shape'] = 'slack'; return w; }";
  await page.getByTestId('ep-transformation').fill(script);
  await page.getByTestId('ep-transformation-test').click();
  const tried = page.getByTestId('ep-transformation-result').filter({ hasText: 'via user.registered' });
  await tried.waitFor({ timeout: 15000 });
  assert.match(await tried.textContent(), /X-Shape/);
  await page.getByTestId('ep-save').click();
  await Promise.all([page.waitForURL(/\/endpoints\/[0-9a-f-]{36}$/), page.getByTestId('ep-saved').click()]);
  await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.equal(await page.getByTestId('ep-transformation').inputValue(), script, 'the page shows the saved script');
  await page.getByTestId('ep-test').click();
  await page.getByTestId('ep-result').filter({ hasText: 'Test event sent' }).waitFor({ timeout: 15000 });
  const hit = await until('the transformed test event', () => hook.hits.find((h) => h.body.includes('via webhook.test')));
  assert.deepEqual(JSON.parse(hit.body), { text: 'via webhook.test' });
  assert.equal(hit.headers['x-shape'], 'slack');

  // OAuth client credentials: a real token endpoint; the secret is masked once saved.
  const idp = await receiver();
  idp.state.body = JSON.stringify({ access_token: 'tok-e2e', token_type: 'Bearer', expires_in: 3600 });
  await page.getByTestId('ep-oauth-url').fill(idp.url);
  await page.getByTestId('ep-oauth-id').fill('herald-e2e');
  await page.getByTestId('ep-oauth-secret').fill('e2e-client-secret');
  await page.getByTestId('ep-save').click();
  await page.getByTestId('ep-saved').waitFor({ timeout: 15000 });
  await page.reload();
  await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.equal(await page.getByTestId('ep-oauth-id').inputValue(), 'herald-e2e');
  assert.equal(await page.getByTestId('ep-oauth-secret').inputValue(), '********', 'the secret is masked');
  assert.ok(!(await page.content()).includes('e2e-client-secret'), 'the secret is not in the page');
  await page.getByTestId('ep-test').click();
  await page.getByTestId('ep-result').filter({ hasText: 'Test event sent' }).waitFor({ timeout: 15000 });
  const authed = await until('the test event with a token', () => hook.hits.find((h) => h.headers.authorization === 'Bearer tok-e2e'));
  assert.deepEqual(JSON.parse(authed.body), { text: 'via webhook.test' });
  assert.equal(idp.hits[0].headers.authorization, `Basic ${Buffer.from('herald-e2e:e2e-client-secret').toString('base64')}`);
  idp.close();
  assert.deepEqual(errors, []);
  hook.close();
  await context.close();
});

test('dashboard: the window figures and chart for an admin; nothing for an owner', async () => {
  const { page, context, errors } = await loggedIn('admin', '/dashboard?window=24h');
  assert.equal(await page.title(), 'Dashboard — Herald');
  const accepted = Number(await page.getByTestId('fig-accepted').textContent({ timeout: 15000 }));
  assert.ok(accepted >= 3, `the earlier tests' notifications are counted: ${accepted}`);
  assert.match(await page.getByTestId('chart').getAttribute('aria-label'), /Notifications accepted per interval/);
  assert.ok((await page.getByTestId('outcome-row').count()) >= 1);
  assert.equal(await page.getByTestId('window-24h').getAttribute('aria-current'), 'page');
  await page.getByRole('heading', { name: 'Email tracking by template' }).waitFor({ timeout: 15000 });
  await screenshot(page, 'dashboard');
  assert.deepEqual(errors, []);
  await context.close();
  const owner = await loggedIn('alice', '/dashboard');
  await owner.page.getByTestId('not-found').waitFor({ timeout: 15000 });
  await owner.context.close();
});

test('accessibility: titles, a label on every control, and forms that work from the keyboard', async () => {
  const { page, context } = await loggedIn('admin', '/');
  for (const path of ['/dashboard', '/notifications', '/templates', '/event-types', '/endpoints', '/catalog', '/portal-links', '/keys', '/audit']) {
    await page.goto(`${base}${path}`);
    await page.locator('main h1').first().waitFor({ timeout: 15000 });
    assert.match(await page.title(), / — Herald$/, `${path} has a title`);
    const unnamed = await page.locator('main input:not([type=hidden]), main select, main textarea, main button').evaluateAll(
      (els) => els.filter((el) => {
        const label = el.labels && el.labels.length > 0;
        const aria = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
        const text = el.tagName === 'BUTTON' && el.textContent.trim().length > 0;
        return !(label || aria || text);
      }).map((el) => el.outerHTML.slice(0, 120)),
    );
    assert.deepEqual(unnamed, [], `${path}: every control has a name`);
  }
  // The history filter, with the keyboard only: tab to the recipient field, type, Enter.
  await page.goto(`${base}/notifications`);
  await page.locator('main h1').waitFor();
  for (let i = 0; i < 60; i += 1) {
    await page.keyboard.press('Tab');
    if (await page.evaluate(() => document.activeElement && document.activeElement.name === 'recipient')) break;
  }
  assert.equal(await page.evaluate(() => document.activeElement.name), 'recipient', 'the field is reachable by Tab');
  await page.keyboard.type('nobody@example.test');
  await Promise.all([page.waitForURL(/recipient=nobody%40example\.test/), page.keyboard.press('Enter')]);
  await page.getByTestId('history-empty').waitFor({ timeout: 15000 });
  await context.close();
});

test('portal: an owner manages their own endpoints; another owner sees nothing of them', async () => {
  const alice = await loggedIn('alice', '/endpoints');
  const { page } = alice;
  assert.equal(await page.title(), 'Endpoints — Herald');
  const hook = await receiver();
  // The receiver fails at first: the test event's delivery fails after one retry.
  hook.state.status = 500;
  await page.getByTestId('endpoint-form-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('ep-url').fill(hook.url);
  await page.getByTestId('ep-type-user.registered').check();
  await page.getByTestId('ep-retry').fill('1s');
  await page.getByTestId('ep-save').click();
  await Promise.all([page.waitForURL(/\/endpoints\/[0-9a-f-]{36}$/), page.getByTestId('ep-saved').click()]);
  const mine = page.url();
  await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('ep-reveal').click();
  const first = (await page.getByTestId('ep-result').textContent({ timeout: 15000 })).match(/whsec_\S+/)[0];
  await page.getByTestId('ep-grace').fill('0s');
  await page.getByTestId('ep-rotate').click();
  await page.getByTestId('ep-result').filter({ hasText: 'New signing secret' }).waitFor({ timeout: 15000 });
  assert.ok(!(await page.getByTestId('ep-result').textContent()).includes(first));
  await page.getByTestId('ep-test').click();
  await page.getByTestId('ep-result').filter({ hasText: 'Test event sent' }).waitFor({ timeout: 15000 });
  await until('the test event', () => hook.hits.some((h) => h.body.includes('webhook.test')));
  await until('its delivery, failed', async () => {
    await page.goto(`${mine}?status=failed`);
    await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
    return (await page.getByTestId('ep-resend').count()) >= 1;
  });
  // The receiver is fixed; resending the failed delivery succeeds.
  hook.state.status = 200;
  const before = hook.hits.length;
  await page.getByTestId('ep-resend').first().click();
  await page.getByTestId('ep-result').filter({ hasText: 'queued again' }).waitFor({ timeout: 15000 });
  await until('the resent webhook', () => hook.hits.length > before);
  // Each delivery's attempts: status, duration, response (two 500s, then the 200).
  await until('the resend, recorded', async () => {
    await page.goto(mine);
    await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
    await page.getByTestId('ep-attempts-link').first().click();
    await page.getByTestId('ep-attempts').waitFor({ timeout: 15000 });
    return (await page.getByTestId('ep-attempt').filter({ hasText: 'HTTP 200' }).count()) === 1;
  });
  assert.equal(await page.getByTestId('ep-attempt').filter({ hasText: 'HTTP 500' }).count(), 2);
  // The delivery filters (status, event type, time); an owner's deliveries link to no admin page.
  await page.goto(`${mine}?event_type=webhook.test`);
  await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.ok((await page.getByTestId('ep-delivery').count()) >= 1);
  await page.goto(`${mine}?event_type=user.registered&since=2020-01-01T00:00`);
  await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.equal(await page.getByTestId('ep-delivery').count(), 0);
  await page.goto(`${mine}?status=failed`);
  await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.equal(await page.getByTestId('ep-delivery').count(), 0);
  await screenshot(page, 'portal-endpoint');
  // The catalog the owner may subscribe to.
  await page.goto(`${base}/catalog`);
  await page.getByTestId('catalog-entry').filter({ hasText: 'user.registered' }).waitFor({ timeout: 15000 });
  const aliceKey = await createKey(page, 'alice-ci', 'endpoints:read');
  assert.match(aliceKey, /^hk_/);

  // Bob (another owner) sees none of it: not in his list, not by URL, not in his keys.
  const bob = await loggedIn('bob', '/endpoints');
  await bob.page.getByTestId('endpoint-form-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.ok(!(await bob.page.textContent('main')).includes(hook.url), 'not in his list');
  await bob.page.goto(mine);
  await bob.page.getByTestId('not-found').waitFor({ timeout: 15000 });
  const direct = await bob.page.request.post(`${base}/console/fn/endpoints/act`, {
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin: base },
    data: `id=${mine.split('/').pop()}&action=reveal`,
  });
  assert.ok(!(await direct.text()).includes('whsec_'), 'the server function refuses another owner');
  await bob.page.goto(`${base}/keys`);
  await bob.page.getByTestId('keys-ready').waitFor({ state: 'attached', timeout: 15000 });
  assert.equal(await bob.page.getByTestId('key-row').filter({ hasText: 'alice-ci' }).count(), 0);
  await bob.context.close();

  // Alice deletes it, with confirmation.
  await page.goto(mine);
  await page.getByTestId('endpoint-ready').waitFor({ state: 'attached', timeout: 15000 });
  await page.getByTestId('ep-delete-confirm').check();
  await page.getByTestId('ep-delete').click();
  await page.getByTestId('not-found').waitFor({ timeout: 15000 });
  hook.close();
  await alice.context.close();
});

test('portal link: opens the portal for its owner only, without a login, until revoked', async () => {
  const { page, context } = await loggedIn('admin', '/portal-links');
  assert.equal(await page.title(), 'Portal links — Herald');
  await page.getByTestId('links-ready').waitFor({ state: 'attached', timeout: 15000 });
  // A TTL past 7 days is refused, readably.
  await page.getByTestId('link-owner').fill('acme');
  await page.getByTestId('link-ttl').fill('30d');
  await page.getByTestId('link-create').click();
  assert.match(await page.getByTestId('link-error').textContent({ timeout: 15000 }), /from 1s to 7d/);
  await page.getByTestId('link-ttl').fill('10m');
  await page.getByTestId('link-create').click();
  const url = (await page.getByTestId('link-url').textContent({ timeout: 15000 })).trim();
  assert.match(url, /\/auth\/portal\?token=hpl_[0-9a-f]{64}$/);
  await page.getByTestId('link-row').filter({ hasText: 'acme' }).first().waitFor({ timeout: 15000 });
  const key = await createKey(page, 'portal-links', 'admin');
  const listed = await (await page.request.get(`${base}/api/v1/portal-links`, { headers: { authorization: `Bearer ${key}` } })).json();
  const link = { url, id: listed.data.find((l) => l.owner === 'team:acme' && !l.revoked_at).id };
  await context.close();

  // A stranger's browser: no login at the provider, straight into acme's portal.
  const visitor = await browser.it.newContext();
  const v = await visitor.newPage();
  await v.goto(link.url);
  assert.equal(v.url(), `${base}/endpoints`);
  await v.getByTestId('user-name').filter({ hasText: 'team:acme (portal link)' }).waitFor({ timeout: 15000 });
  assert.equal(await v.getByTestId('user-role').textContent(), 'owner');
  await v.getByTestId('endpoint-form-ready').waitFor({ state: 'attached', timeout: 15000 });
  await v.goto(`${base}/audit`);
  await v.getByTestId('not-found').waitFor({ timeout: 15000 });

  // The admin revokes it on the console page.
  const admin = await loggedIn('admin', '/portal-links');
  await admin.page.getByTestId('links-ready').waitFor({ state: 'attached', timeout: 15000 });
  const row = admin.page.getByTestId('link-row').filter({ hasText: 'active' }).filter({ hasText: 'acme' }).first();
  await row.getByTestId('link-revoke').click();
  await until('revoked', async () => (await admin.page.getByTestId('link-row').filter({ hasText: 'active' }).count()) === 0);
  await admin.context.close();
  const state = await (await v.request.get(`${base}/api/v1/portal-links`, { headers: { authorization: `Bearer ${key}` } })).json();
  assert.ok(state.data.find((l) => l.id === link.id).revoked_at, 'revoked');
  await v.goto(`${base}/endpoints`);
  assert.match(await v.textContent('body'), /This portal link has expired or was revoked/);
  await v.goto(link.url);
  assert.match(await v.textContent('body'), /unknown, expired or revoked/);
  await visitor.close();
});
