// The dashboard in headless Chromium, driven by playwright-core; run by
// tests/dashboard.rs against a live demo server:
//
//   node dashboard.test.mjs <base-url> <probe-sku> <probe-location> <out-dir>
//
// PLAYWRIGHT_CORE names the playwright-core package directory (an ES module
// import cannot use NODE_PATH, so it is loaded with createRequire), CHROMIUM
// the browser. Exits non-zero on the first failed check. Waits are generous:
// the machine may be busy building or testing something else.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';

const [base, sku, location, outDir] = process.argv.slice(2);
assert.ok(base && sku && location && outDir, 'usage: dashboard.test.mjs <base-url> <probe-sku> <probe-location> <out-dir>');
const { chromium } = createRequire(import.meta.url)(process.env.PLAYWRIGHT_CORE || 'playwright-core');

const WAIT = 90_000;
const started = Date.now();
const step = (text) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${text}`);

/** Reports what the page itself complains about: script errors and blocked
 * content are problems; other console errors not `expected` are shown. */
function watch(page, problems, expected = /^$/) {
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    if (/Content Security Policy|Refused to/.test(message.text())) problems.push(`blocked: ${message.text()}`);
    else if (!expected.test(message.text())) console.log(`  (console error: ${message.text()})`);
  });
}

async function command(pathname, body) {
  const response = await fetch(`${base}${pathname}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  assert.equal(response.status, 202, `${pathname}: ${JSON.stringify(answer)}`);
  return answer;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // We run as root; the machine has no network beyond loopback.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const problems = [];
  const context = await browser.newContext({ viewport: { width: 1440, height: 1200 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  watch(page, problems);

  step(`loading ${base}/`);
  const response = await page.goto(`${base}/`);
  assert.equal(response.status(), 200);
  const policy = response.headers()['content-security-policy'] || '';
  assert.match(policy, /default-src 'none'/, 'the page is served with a strict content security policy');
  assert.equal(response.headers()['cache-control'], 'no-cache');

  step('waiting for the stock table');
  const stockRows = page.getByTestId('stock-row');
  await stockRows.first().waitFor();
  await page.waitForFunction(() => document.querySelector('[data-testid=connection]').dataset.state === 'live', null, { timeout: WAIT });
  const shown = await stockRows.count();
  assert.ok(shown > 0 && shown <= 200, `the table shows the first rows, at most 200 (${shown})`);
  step(`stock: ${shown} rows shown, "${await page.getByTestId('stock-count').textContent()}"`);

  step(`searching for ${sku}`);
  await page.getByTestId('stock-search').fill(sku);
  const probe = page.locator(`[data-testid=stock-row][data-sku="${sku}"][data-location="${location}"]`);
  await probe.waitFor();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=stock-row]').length === 1, null, { timeout: WAIT });
  assert.equal((await probe.getByTestId('available').textContent()).trim(), '20');
  const probeAlert = page.locator(`[data-testid=alert-row][data-sku="${sku}"]`);
  assert.equal(await probeAlert.count(), 0, 'no alert before the command');

  step('adjusting the probe under its reorder point (20 - 16 = 4 <= 5)');
  await command(`/v1/stock/${encodeURIComponent(sku)}/adjust`, { location, qty: -16, reason: 'damage' });
  await probeAlert.waitFor();
  const alertCells = await probeAlert.locator('td').allTextContents();
  step(`alert row: ${alertCells.join(' | ')}`);
  assert.deepEqual(alertCells.slice(0, 4), [sku, location, '4', '5']);
  await page.waitForFunction(
    ([s, l]) => document.querySelector(`[data-testid=stock-row][data-sku="${s}"][data-location="${l}"] [data-testid=available]`)?.textContent === '4',
    [sku, location],
    { timeout: WAIT },
  );
  await page.locator(`[data-testid=alert-event][data-sku="${sku}"].raised`).waitFor();
  step('the alert, the new level and the transition arrived without a reload');

  step('low-only filter');
  await page.getByTestId('stock-search').fill('');
  await page.getByTestId('stock-low-only').check();
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=stock-row]')].every((r) => /low|out/.test(r.className)), null, { timeout: WAIT });
  await page.getByTestId('stock-search').fill(sku);
  await probe.waitFor();
  await page.getByTestId('stock-low-only').uncheck();
  await page.getByTestId('stock-search').fill('');

  step('KPI charts and ingestion tiles');
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=kpi-chart-hour] rect.bar')].some((bar) => Number(bar.dataset.value) > 0), null, { timeout: WAIT });
  assert.equal(await page.locator('[data-testid=kpi-chart-hour] rect.bar').count(), 24);
  assert.equal(await page.locator('[data-testid=kpi-chart-day] rect.bar').count(), 30);
  await page.waitForFunction(() => /^[\d,.]+$/.test(document.querySelector('[data-testid=ingest-rate]').textContent), null, { timeout: WAIT });
  await page.waitForFunction(() => /^[\d,]+$/.test(document.querySelector('[data-testid=ingest-lag]').textContent), null, { timeout: WAIT });
  step(`ingest rate ${await page.getByTestId('ingest-rate').textContent()} events/s, lag ${await page.getByTestId('ingest-lag').textContent()}`);
  await page.waitForFunction(() => document.querySelector('[data-testid=gauge-low]').textContent !== '—', null, { timeout: WAIT });

  const screenshot = path.join(outDir, 'dashboard.png');
  await page.screenshot({ path: screenshot, fullPage: true });
  step(`screenshot: ${screenshot}`);

  step('switching to tenant andina');
  await page.getByTestId('tenant').fill('andina');
  await page.getByTestId('tenant').press('Enter');
  await page.locator('[data-testid=stock-row][data-location="bogota-norte"]').first().waitFor();
  assert.equal(new URL(page.url()).searchParams.get('tenant'), 'andina');
  assert.equal(await page.locator('[data-testid=stock-row][data-location="madrid-centro"]').count(), 0, 'no row of another tenant');
  assert.deepEqual(problems, [], 'the page reported no error');
  await context.close();

  step('a server that wants a key: the page asks for one, sends it, and goes to the key\'s tenant');
  const KEY = 'sf-test-key-0123456789';
  const keyContext = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const keyed = await keyContext.newPage();
  keyed.setDefaultTimeout(WAIT);
  const keyProblems = [];
  watch(keyed, keyProblems, /status of 40[13]/);
  const sent = [];
  // Stands in for the server's key check: 401 without the key; the key is
  // scoped to tenant andina, so naming another tenant is the server's 403.
  await keyed.route(/\/v1\//, async (route) => {
    const authorization = route.request().headers().authorization;
    sent.push(authorization || null);
    const tenant = new URL(route.request().url()).searchParams.get('tenant');
    if (authorization === `Bearer ${KEY}` && tenant && tenant !== 'andina') {
      return route.fulfill({
        status: 403,
        contentType: 'application/problem+json',
        body: JSON.stringify({
          type: 'https://stockflow.dev/problems/forbidden', title: 'Forbidden', status: 403,
          detail: `this API key is scoped to tenant \`andina\`; it cannot name tenant \`${tenant}\` (leave \`tenant\` out, or give \`andina\`)`,
        }),
      });
    }
    if (authorization === `Bearer ${KEY}`) return route.continue();
    return route.fulfill({
      status: 401,
      contentType: 'application/problem+json',
      headers: { 'www-authenticate': 'Bearer realm="stockflow"' },
      body: JSON.stringify({ type: 'https://stockflow.dev/problems/unauthorized', title: 'Unauthorized', status: 401, detail: 'an API key is required' }),
    });
  });
  await keyed.goto(`${base}/?tenant=pacifico`);
  await keyed.getByTestId('auth').waitFor({ state: 'visible' });
  await keyed.waitForFunction(() => document.querySelector('[data-testid=connection]').dataset.state === 'refused', null, { timeout: WAIT });
  assert.match(await keyed.getByTestId('auth-message').textContent(), /needs an API key/);
  await keyed.screenshot({ path: path.join(outDir, 'dashboard-key.png') });
  assert.ok(sent.length > 0 && sent.every((h) => h === null), 'no key was sent before one was given');
  await keyed.getByTestId('key-input').fill(KEY);
  await keyed.getByTestId('key-save').click();
  await keyed.locator('[data-testid=stock-row][data-location="bogota-norte"]').first().waitFor();
  assert.equal(await keyed.getByTestId('tenant').inputValue(), 'andina', 'the page moved to the key\'s tenant');
  assert.equal(await keyed.locator('[data-testid=stock-row][data-location="lima-miraflores"]').count(), 0, 'no row of the tenant the key may not read');
  await keyed.getByTestId('auth').waitFor({ state: 'hidden' });
  await keyed.waitForFunction(() => document.querySelector('[data-testid=connection]').dataset.state === 'live', null, { timeout: WAIT });
  const first = sent.indexOf(`Bearer ${KEY}`);
  assert.ok(first >= 0 && sent.slice(first).every((h) => h === `Bearer ${KEY}`), `every request from then on carries the key: ${sent}`);
  assert.equal(await keyed.evaluate(() => localStorage.getItem('stockflow.apiKey')), KEY, 'the key is kept in localStorage');
  assert.deepEqual(keyProblems, [], 'the page reported no error');
  step('done');
} finally {
  await browser.close();
}
