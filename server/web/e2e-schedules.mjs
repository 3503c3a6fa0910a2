// The schedules page in real headless Chromium, started by
// tests/dashboard.rs (schedules_page_in_a_real_browser) against a real
// server and a real runner labelled role=db. Steps print one line each.
// Screenshots go to $ARTIFACTS. Any failure exits 1.
import { env, run, step } from './e2e-common.mjs';

const T = 15000;

await run({ failShot: 'failure', T }, async ({ page, shot, login }) => {
  await login();

  await page.getByRole('link', { name: 'Schedules' }).click();
  await page.locator('#schedules').filter({ hasText: 'No schedules.' }).waitFor({ timeout: T });
  const form = page.getByRole('form', { name: 'Add a schedule' });

  // A bad cron: the server's error is shown, nothing is added. Its first
  // PUT is cut on the way (as a network change cuts requests): a PUT is
  // idempotent, so the page sends it again and shows the server's answer.
  let sent = 0;
  const bad = '**/api/v1/schedules/bad';
  await page.route(bad, (route) => (sent++ === 0 ? route.abort('connectionreset') : route.continue()));
  await form.getByLabel('Name').fill('bad');
  await form.getByLabel('Cron (UTC)').fill('61 * * * *');
  await form.getByLabel('Command').fill('true');
  await form.getByRole('button', { name: 'Add schedule' }).click();
  await page.locator('#toast .bad').filter({ hasText: 'cron' }).waitFor({ timeout: T });
  await page.unroute(bad);
  if (sent !== 2) throw new Error(`the cut PUT was sent ${sent} times, not 2`);
  if (await page.locator('tr[data-schedule="bad"]').count()) throw new Error('a bad schedule was listed');
  step('a bad cron is refused with the reason (its PUT sent again after a cut)');

  // Every minute, on the labelled runner.
  await form.getByLabel('Name').fill('minutely');
  await form.getByLabel('Cron (UTC)').fill('* * * * *');
  await form.getByLabel('Selector').fill('role=db');
  await form.getByLabel('Command').fill('echo scheduled-from-the-page');
  await form.getByRole('button', { name: 'Add schedule' }).click();
  const row = page.locator('tr[data-schedule="minutely"]');
  await row.waitFor({ timeout: T });
  const next = (await row.locator('.next-run').textContent()).trim();
  if (!next || next === '—') throw new Error(`no next run shown: ${next}`);
  await shot('01-schedule-added');
  step(`added, next run ${next}`);

  // Its page: five next runs; the history gets the first run (at most a
  // minute away; the page reads it again every few seconds).
  await row.getByRole('link', { name: 'minutely' }).click();
  await page.locator('#next-runs li').nth(4).waitFor({ timeout: T });
  step('five next runs shown');
  await page.locator('#schedule-runs tbody tr[data-status="started"]').first().waitFor({ timeout: 75000 });
  const jobLink = page.locator('#schedule-runs tbody a').first();
  await jobLink.waitFor({ timeout: T });
  console.log(`job: ${(await jobLink.textContent()).trim()}`);
  await shot('02-schedule-history');
  step('history shows the run and its job');

  // Back to the list: the last run is shown; removed after confirmation.
  await page.getByRole('link', { name: 'All schedules' }).click();
  await row.locator('.last-run').waitFor({ timeout: T });
  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.accept(); });
  await row.getByRole('button', { name: 'Remove' }).click();
  await row.waitFor({ state: 'detached', timeout: T });
  if (!asked.includes('minutely')) throw new Error(`no confirmation before removing: ${asked}`);
  step('removed after confirmation');
});
