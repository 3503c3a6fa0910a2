// `make bench` (tests/bench/fleet.rs): the runners page with a big fleet in
// headless Chromium. Prints `first_render_ms N` (navigation to the counts
// showing EXPECT runners and the first page of rows drawn) and
// `js_heap_bytes N` (the page's JS heap then).
import { chromium } from 'playwright-core';

const env = (k) => { if (!process.env[k]) throw new Error(`${k} not set`); return process.env[k]; };
const URL = env('TETHER_URL');
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--ignore-certificate-errors'],
});
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1400, height: 900 } });
  const page = await ctx.newPage();
  await page.goto(`${URL}/#/users`);
  await page.getByLabel('Tenant').fill(env('TENANT'));
  await page.getByLabel('User').fill(env('USER_NAME'));
  await page.getByLabel('Password').fill(env('PASSWORD'));
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('h1', { hasText: 'Users' }).waitFor({ timeout: 30000 });
  // Warm: the modules are cached as an operator's browser would have them.
  const expect = env('EXPECT');
  const t0 = Date.now();
  await page.evaluate(() => { location.hash = '#/runners'; });
  await page.locator('#runner-counts [data-health="all"] .n', { hasText: expect }).waitFor({ timeout: 60000 });
  await page.locator('table.runners tbody tr[data-runner]').nth(99).waitFor({ timeout: 60000 });
  console.log(`first_render_ms ${Date.now() - t0}`);
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('Performance.enable');
  const { metrics } = await cdp.send('Performance.getMetrics');
  console.log(`js_heap_bytes ${metrics.find((m) => m.name === 'JSHeapUsedSize').value}`);
  console.log(`dom_nodes ${metrics.find((m) => m.name === 'Nodes').value}`);
} catch (e) {
  console.log(`bench-runners failed: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
