// The runners page's update state (tests/dashboard.rs,
// update_state_filter_and_bulk_desired_version_in_a_real_browser): a real
// server and TOTAL tether-sim runners, of which CURRENT (names, comma
// separated) want the version they run. Checks that the update-state
// filter narrows the rows and the counts, then ticks PICK (names) under
// "no desired version", sets VERSION as their desired version with the
// bulk action, and finds them under "pending". Steps print one line each;
// any failure exits 1.
import { env, run, step } from './e2e-common.mjs';

const TOTAL = Number(env('TOTAL'));
const CURRENT = env('CURRENT').split(',');
const PICK = env('PICK').split(',');
const VERSION = env('VERSION');
const T = 15000;

await run({ viewport: { width: 1300, height: 900 }, failShot: 'updates-failure', T }, async ({ page, shot, login }) => {
  await login();

  const all = page.locator('#runner-counts [data-health="all"] .n');
  const rows = page.locator('table.runners tbody tr[data-runner]');
  // The counts and the rows both say `n`, and the rows are these names.
  const shows = async (what, names) => {
    await all.filter({ hasText: new RegExp(`^${names.length}$`) }).waitFor({ timeout: T });
    await page.locator('#runner-page', { hasText: `· ${names.length} runner(s)` }).waitFor({ timeout: T });
    // The rows until they are these: the counts and the rows come in two
    // answers, and two filters in a row may both hold `n` runners.
    const want = JSON.stringify([...names].sort());
    const end = Date.now() + T;
    for (;;) {
      const seen = (await rows.locator('td:nth-child(2) > a').allTextContents()).map((s) => s.trim()).sort();
      if (JSON.stringify(seen) === want) return;
      if (Date.now() > end) {
        throw new Error(`${what}: rows ${seen.join(',') || '(none)'}, not ${names.join(',') || '(none)'}`);
      }
      await page.waitForTimeout(100);
    }
  };
  const names = Array.from({ length: TOTAL }, (_, i) => `sim-${String(i).padStart(5, '0')}`);
  const none = names.filter((n) => !CURRENT.includes(n));
  await shows('no filter', names);
  const state = page.getByLabel('Update state');
  await state.selectOption('current');
  await shows('current', CURRENT);
  step(`update=current: ${CURRENT.length} rows and All ${CURRENT.length}`);
  await state.selectOption('none');
  await shows('none', none);
  step(`update=none: ${none.length} rows and All ${none.length}`);
  await state.selectOption('pending');
  await shows('pending', []);
  await page.locator('table.runners tbody', { hasText: 'No runners match.' }).waitFor({ timeout: T });
  step('update=pending: none yet');

  // Tick two under "no desired version"; the bulk action sets theirs.
  await state.selectOption('none');
  await shows('none again', none);
  for (const n of PICK) await page.getByLabel(`Select ${n}`, { exact: true }).check();
  await page.locator('#selected-count', { hasText: `${PICK.length} selected` }).waitFor({ timeout: T });
  await page.getByLabel('Desired version').fill(VERSION);
  await page.getByRole('button', { name: 'Set desired version' }).click();
  await page.locator('#toast', { hasText: `${PICK.length} runner(s) should run ${VERSION}` }).waitFor({ timeout: T });
  // They leave "no desired version" at once (the page reloads its rows).
  await shows('none after the bulk action', none.filter((n) => !PICK.includes(n)));
  step(`bulk desired version ${VERSION} on ${PICK.join(',')}`);
  await state.selectOption('pending');
  await shows('pending after the bulk action', PICK);
  await shot('updates-01-pending');
  step(`update=pending: ${PICK.join(',')}`);
  await state.selectOption('failed');
  await shows('failed', []);
  await state.selectOption('');
  await shows('any update state', names);
  step('update=failed: none; any: all');
});
