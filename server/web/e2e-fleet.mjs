// The runners page with a fleet (tests/dashboard.rs, fleet_view_…): a real
// server, SIM_COUNT tether-sim runners and one real runner (RUNNER_ID,
// labelled role=db). Checks the counts, a label filter, the real runner's
// health flip seen live ("STOP_RUNNER" asks the Rust side to stop it and
// waits for a line on stdin), and a bulk label on a page of rows. Steps
// print one line each; any failure exits 1.
import { env, run, step, stdinLines } from './e2e-common.mjs';

const RID = env('RUNNER_ID');
const TOTAL = Number(env('SIM_COUNT')) + 1;
const lines = stdinLines();
const T = 20000;

await run({ viewport: { width: 1300, height: 900 }, failShot: 'fleet-failure', fullPage: false, T }, async ({ page, shot, login }) => {
  await login();

  // Counts of the whole fleet; one page of rows.
  const count = (health) => page.locator(`#runner-counts [data-health="${health}"] .n`);
  const t0 = Date.now();
  await count('all').filter({ hasText: new RegExp(`^${TOTAL}$`) }).waitFor({ timeout: T });
  await count('active').filter({ hasText: new RegExp(`^${TOTAL}$`) }).waitFor({ timeout: T });
  const rows = page.locator('table.runners tbody tr[data-runner]');
  await rows.nth(99).waitFor({ timeout: T });
  if (await rows.count() !== 100) throw new Error(`a page holds ${await rows.count()} rows, not 100`);
  await page.locator('#runner-page', { hasText: `Page 1 of ${Math.ceil(TOTAL / 100)}` }).waitFor({ timeout: T });
  step(`counts right: ${TOTAL} runners, all active, 100 rows a page (${Date.now() - t0} ms)`);
  await shot('fleet-01-all');

  // Filter by label: the real runner alone.
  await page.getByLabel('Label selector').fill('role=db');
  await count('all').filter({ hasText: /^1$/ }).waitFor({ timeout: T });
  const row = page.locator(`tr[data-runner="${RID}"]`);
  await row.waitFor({ timeout: T });
  if (await rows.count() !== 1) throw new Error(`role=db shows ${await rows.count()} rows`);
  // A bad selector says where, and the page keeps working.
  await page.getByLabel('Label selector').fill('role in (db');
  await page.locator('p.error', { hasText: 'at byte' }).waitFor({ timeout: T });
  await page.getByLabel('Label selector').fill('role=db');
  await row.waitFor({ timeout: T });
  step('label filter shows the one role=db runner; a bad selector is named');

  // Live health flip of the real runner, without a reload.
  await page.evaluate(() => { window.__sameDocument = true; });
  await row.locator('[data-health="active"]').waitFor({ timeout: T });
  console.log('STOP_RUNNER');
  const tStop = Date.now();
  await row.locator('[data-health="unreachable"]').waitFor({ timeout: 5000 });
  const flipped = Date.now() - tStop;
  await lines.next();
  if (!(await page.evaluate(() => window.__sameDocument))) throw new Error('the page reloaded');
  await page.getByLabel('Label selector').fill('');
  await count('unreachable').filter({ hasText: /^1$/ }).waitFor({ timeout: T });
  step(`health flip visible after ${flipped} ms`);
  console.log(`flip_ms ${flipped}`);

  // Bulk label: tick a page, set a label, filter by it.
  await page.getByLabel('Search runners').fill('sim-');
  await page.locator('#runner-page', { hasText: `· ${TOTAL - 1} runner(s)` }).waitFor({ timeout: T });
  await page.getByLabel('Select every runner on this page').check();
  await page.locator('#selected-count', { hasText: '100 selected' }).waitFor({ timeout: T });
  await page.getByLabel('Labels to set').fill('batch=one');
  await page.getByRole('button', { name: 'Set labels' }).click();
  await page.locator('#toast', { hasText: 'Labels set on 100 runner(s)' }).waitFor({ timeout: 60000 });
  await page.getByLabel('Search runners').fill('');
  await page.getByLabel('Label selector').fill('batch=one');
  await count('all').filter({ hasText: /^100$/ }).waitFor({ timeout: T });
  step('bulk label set on a page of 100; the selector finds them');
  await shot('fleet-02-bulk');
});
