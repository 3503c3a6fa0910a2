// The alert pages in real headless Chromium, started by tests/dashboard.rs
// (alert_pages_in_a_real_browser) against a real server and two real
// runners, one labelled env=prod. Steps print one line each; "STOP_PROD"
// asks the Rust side to stop the prod runner and waits for a line on stdin.
// Screenshots go to $ARTIFACTS. Any failure exits 1.
import { env, run, step, stdinLines } from './e2e-common.mjs';

const URL = env('TETHER_URL');
const PROD = env('PROD_RUNNER');
const DEV = env('DEV_RUNNER');
const lines = stdinLines();
const T = 15000;

await run({ failShot: 'failure', T }, async ({ page, goto, shot, login }) => {
  // Load `url` again until `selector` shows (pages that read state once).
  const until = async (url, selector, limit = T) => {
    const end = Date.now() + limit;
    for (;;) {
      await goto(url);
      await page.reload();
      try {
        await page.locator(selector).first().waitFor({ timeout: 1500 });
        return;
      } catch (e) {
        if (Date.now() > end) throw new Error(`${selector} not shown on ${url} within ${limit} ms`);
      }
    }
  };

  await login();
  await page.locator('#firing-alerts[data-count="0"]').waitFor({ timeout: T });

  // A webhook channel, then its test message, seen in its delivery log.
  await page.getByRole('link', { name: 'Alerts' }).click();
  await page.getByRole('link', { name: 'Channels' }).click();
  const chForm = page.getByRole('form', { name: 'Add a channel' });
  await chForm.getByLabel('Name', { exact: true }).fill('ops');
  await chForm.getByLabel('Channel kind').selectOption('webhook');
  await chForm.getByLabel('URL').fill(env('HOOK_URL'));
  await chForm.getByRole('button', { name: 'Add channel' }).click();
  const chRow = page.locator('tr[data-channel="ops"]');
  await chRow.filter({ hasText: 'webhook' }).waitFor({ timeout: T });
  if ((await chRow.textContent()).includes('/hook')) throw new Error('the channel list shows the URL path');
  await chRow.getByRole('button', { name: 'Send test' }).click();
  await page.locator('#deliveries').waitFor({ timeout: T });
  const chUrl = page.url();
  await until(chUrl, '#deliveries tr[data-ok="true"]');
  await shot('01-channel-deliveries');
  step('channel added, test message in its delivery log');

  // A rule scoped by a selector: the preview names the prod runner only.
  await goto(`${URL}/#/alerts/rules`);
  const form = page.getByRole('form', { name: 'Add an alert rule' });
  await form.getByLabel('Name', { exact: true }).fill('prod-down');
  await form.getByLabel('Kind', { exact: true }).selectOption('unreachable');
  await form.getByLabel('Unreachable for (s)').fill('1');
  const preview = page.locator('#scope-preview');
  await preview.locator(`[data-preview="${DEV}"]`).waitFor({ timeout: T });
  await form.getByLabel('Scope', { exact: true }).selectOption('selector');
  await form.getByLabel('Scope value').fill('env=prod');
  await page.locator('#scope-preview[data-matched="1"]').waitFor({ timeout: T });
  await preview.locator(`[data-preview="${PROD}"]`).waitFor({ timeout: T });
  if (await preview.locator(`[data-preview="${DEV}"]`).count()) throw new Error('the preview names the dev runner');
  // A bad selector: the server's message, no list.
  await form.getByLabel('Scope value').fill('env=(prod');
  await page.locator('#scope-preview.error').filter({ hasText: 'scope.selector' }).waitFor({ timeout: T });
  await form.getByLabel('Scope value').fill('env=prod');
  await page.locator('#scope-preview[data-matched="1"]').waitFor({ timeout: T });
  await shot('02-rule-preview');
  step('preview names the labelled runner only');
  await form.getByLabel('Notify ops').check();
  await form.getByRole('button', { name: 'Add rule' }).click();
  await page.locator('#rule-list tr[data-rule="prod-down"]').filter({ hasText: 'selector env=prod' }).waitFor({ timeout: T });
  step('rule added');

  // The prod runner stops: its alert fires, shown on the runners page.
  console.log('STOP_PROD');
  await lines.next();
  await until(`${URL}/#/runners`, '#firing-alerts tr[data-rule="prod-down"]', 20000);
  await page.locator(`tr[data-runner="${PROD}"] .alert-count`).waitFor({ timeout: T });
  if (await page.locator(`tr[data-runner="${DEV}"] .alert-count`).count()) throw new Error('the dev runner shows an alert');
  await shot('03-runners-firing');
  step('firing on the runners page');

  // ... and on its own page, where it is acknowledged with a comment.
  await goto(`${URL}/#/runner/${PROD}/overview`);
  const mine = page.locator('#firing-alerts tr[data-rule="prod-down"]');
  await mine.waitFor({ timeout: T });
  page.once('dialog', (d) => d.accept('on it'));
  await mine.getByRole('button', { name: 'Acknowledge' }).click();
  await page.locator('#firing-alerts tr[data-rule="prod-down"] .ack').filter({ hasText: `acknowledged by ${env('ADMIN_USER')}` }).filter({ hasText: 'on it' }).waitFor({ timeout: T });
  await goto(`${URL}/#/runner/${DEV}/overview`);
  await page.locator('#firing-alerts[data-count="0"]').waitFor({ timeout: T });
  await shot('04-runner-acked');
  step("firing on the runner's page, acknowledged");

  await goto(`${URL}/#/alerts/history`);
  await page.locator('#alert-history tr').filter({ hasText: 'unreachable' }).locator('[data-state="firing"]').first().waitFor({ timeout: T });
  await goto(`${URL}/#/alerts/firing`);
  await page.locator('#alert-list tr[data-rule="prod-down"]').waitFor({ timeout: T });
  await shot('05-history');
  step('history shows it');

  await goto(`${URL}/#/alerts/silences`);
  const sForm = page.getByRole('form', { name: 'Add a silence' });
  await sForm.getByLabel('Silence rule').selectOption({ label: 'prod-down' });
  await sForm.getByLabel('Silence comment').fill('maintenance tonight');
  await sForm.getByRole('button', { name: 'Silence' }).click();
  const sRow = page.locator('#silence-list tr[data-silence]').filter({ hasText: 'rule prod-down' });
  await sRow.filter({ hasText: 'maintenance tonight' }).waitFor({ timeout: T });
  await shot('06-silence');
  await sRow.getByRole('button', { name: 'End' }).click();
  await sRow.waitFor({ state: 'detached', timeout: T });
  step('silence added and ended');

  await goto(`${URL}/#/alerts/rules`);
  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.accept(); });
  await page.locator('#rule-list tr[data-rule="prod-down"]').getByRole('button', { name: 'Remove' }).click();
  await page.locator('#rule-list tr[data-rule="prod-down"]').waitFor({ state: 'detached', timeout: T });
  if (!asked.includes('prod-down')) throw new Error(`no confirmation before removing: ${asked}`);
  step('rule removed');

  await page.setViewportSize({ width: 390, height: 800 });
  for (const tab of ['firing', 'rules', 'history', 'silences', 'channels']) {
    await goto(`${URL}/#/alerts/${tab}`);
    await page.locator(`section[aria-label="${tab}"] > *`).first().waitFor({ timeout: T });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 0) throw new Error(`alerts ${tab} page is ${overflow}px wider than a phone`);
    await shot(`07-phone-${tab}`);
  }
  step('phone width fits');
});
