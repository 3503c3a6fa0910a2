// `make bench` (tests/bench/fleet.rs): the runners page with a big fleet in
// headless Chromium. Prints `first_render_ms N` (navigation to the counts
// showing EXPECT runners and the first page of rows drawn) and
// `js_heap_bytes N` (the page's JS heap then). The browser, the login and
// the run's frame ("E2E OK", or why it failed and a screenshot in
// $ARTIFACTS) are the test drivers' (e2e-common.mjs).
import { env, run } from './e2e-common.mjs';

await run({ viewport: { width: 1400, height: 900 }, failShot: 'bench-runners-failure', T: 30000 }, async ({ page, goto, login }) => {
  await goto(`${env('TETHER_URL')}/#/users`);
  await login(env('ADMIN_USER'), { load: false });
  await page.locator('h1', { hasText: 'Users' }).waitFor({ timeout: 30000 });
  // Warm: the modules are cached as an operator's browser would have them.
  const expect = env('EXPECT');
  const t0 = Date.now();
  await page.evaluate(() => { location.hash = '#/runners'; });
  await page.locator('#runner-counts [data-health="all"] .n', { hasText: expect }).waitFor({ timeout: 60000 });
  await page.locator('table.runners tbody tr[data-runner]').nth(99).waitFor({ timeout: 60000 });
  console.log(`first_render_ms ${Date.now() - t0}`);
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');
  const { metrics } = await cdp.send('Performance.getMetrics');
  console.log(`js_heap_bytes ${metrics.find((m) => m.name === 'JSHeapUsedSize').value}`);
  console.log(`dom_nodes ${metrics.find((m) => m.name === 'Nodes').value}`);
});
