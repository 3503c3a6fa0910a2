// End-to-end driver for the dashboard in real headless Chromium, started by
// tests/dashboard.rs against a real server and runner. Steps print one line
// each; "STOP_RUNNER" asks the Rust side to stop the runner and waits for a
// line on stdin. Screenshots go to $ARTIFACTS. Any failure exits 1.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const env = (k) => { if (!process.env[k]) throw new Error(`${k} not set`); return process.env[k]; };
const URL = env('TETHER_URL');
const ART = env('ARTIFACTS');
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const step = (m) => console.log(`step: ${m}`);
const T = 15000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // This machine's network is closed: background networking only fails noisily.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--ignore-certificate-errors'],
});
let page;
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 900 } });
  page = await ctx.newPage();
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  // Chromium aborts a navigation when a network interface comes or goes
  // (ERR_NETWORK_CHANGED), and Docker tests running beside this one add
  // veth interfaces at any moment: try such a navigation again.
  const goto = async (url) => {
    for (let i = 0; ; i++) {
      try { return await page.goto(url); } catch (e) {
        if (i >= 4 || !String(e).includes('ERR_NETWORK_CHANGED')) throw e;
      }
    }
  };
  const shot = (name) => page.screenshot({ path: `${ART}/${name}.png`, fullPage: true });

  const login = async (user) => {
    await goto(URL);
    await page.getByLabel('Tenant').fill(env('TENANT'));
    await page.getByLabel('User').fill(user);
    await page.getByLabel('Password').fill(env('PASSWORD'));
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.locator('#who').filter({ hasText: user }).waitFor({ timeout: T });
  };

  // A wrong password is refused on the page.
  await goto(URL);
  await page.getByLabel('Tenant').fill(env('TENANT'));
  await page.getByLabel('User').fill(env('ADMIN_USER'));
  await page.getByLabel('Password').fill('not-the-password');
  await page.keyboard.press('Enter');
  await page.getByRole('alert').filter({ hasText: 'wrong tenant, user name or password' }).waitFor({ timeout: T });
  step('wrong password refused');

  await login(env('ADMIN_USER'));
  const row = page.locator(`tr[data-runner="${env('RUNNER_ID')}"]`);
  await row.locator('[data-health="active"]').waitFor({ timeout: T });
  await shot('01-runners-active');
  step('runner active');

  // Metrics: the chart library is embedded and draws once samples exist.
  await goto(`${URL}/#/runner/${env('RUNNER_ID')}/metrics`);
  await page.locator('[data-chart="CPU busy (%)"] .uplot').waitFor({ timeout: T });
  await page.locator('[data-chart="Network IPv4 (bytes/s)"]').waitFor({ timeout: T });
  await shot('02-metrics');
  step('metrics charts drawn');

  await goto(`${URL}/#/runner/${env('RUNNER_ID')}/fingerprint`);
  await page.locator('#fingerprint').filter({ hasText: 'kernel' }).waitFor({ timeout: T });
  step('fingerprint shown');

  // Add a server: the one-line install command with a fresh token.
  await goto(`${URL}/#/add`);
  const cmd = await page.locator('#install-cmd').textContent({ timeout: T });
  if (!/^curl -fsSL https:\/\/.+\/install\.sh \| sh -s -- --token tenr_[0-9a-f]{64}$/.test(cmd)) throw new Error(`install command: ${cmd}`);
  step('install command shown');

  // A script, saved and run from the page, its output read live.
  await goto(`${URL}/#/scripts`);
  await page.getByLabel('Name').fill('hello');
  await page.getByLabel('Body').fill('echo "dashboard-says-$((6*7))"\necho to-stderr >&2\n');
  await page.getByRole('button', { name: 'Save and run' }).click();
  const job = page.locator('[data-job]');
  await job.locator('.log').filter({ hasText: 'dashboard-says-42' }).waitFor({ timeout: T });
  await page.locator('[data-job][data-status="succeeded"]').waitFor({ timeout: T });
  await shot('03-script-output');
  step('script output read');

  // Containers: the table, the log viewer with ANSI colours and search,
  // and a stop that asks for confirmation first.
  const ctr = env('CONTAINER');
  await goto(`${URL}/#/runner/${env('RUNNER_ID')}/containers`);
  const crow = page.locator(`tr[data-container="${ctr}"]`);
  await crow.filter({ hasText: 'running' }).waitFor({ timeout: T });
  await crow.getByRole('link', { name: ctr }).click();
  const log = page.locator('#log');
  await log.filter({ hasText: 'tick-' }).waitFor({ timeout: T });
  const red = await log.locator('span', { hasText: 'ALERT' }).first().evaluate((e) => getComputedStyle(e).color);
  if (red !== 'rgb(255, 107, 107)') throw new Error(`ANSI red shown as ${red}`);
  if ((await log.textContent()).includes('\x1b')) throw new Error('raw escape codes in the log view');
  // Follow: new lines arrive live after the history, none twice.
  const n0 = await log.locator(':scope > div').count();
  await page.waitForFunction((n) => document.querySelectorAll('#log > div').length > n + 2, n0, { timeout: T });
  const ticks = await log.locator(':scope > div').allTextContents();
  if (new Set(ticks).size !== ticks.length) throw new Error(`a log line shown twice: ${ticks.join(' | ')}`);
  await page.getByLabel('Search').fill('ALERT');
  await page.getByLabel('Search').press('Enter');
  await log.locator('mark', { hasText: 'ALERT' }).first().waitFor({ timeout: T });
  await shot('04-container-logs');
  step('container logs shown with colours and search');
  await goto(`${URL}/#/runner/${env('RUNNER_ID')}/containers`);
  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.accept(); });
  await crow.getByRole('button', { name: 'Remove' }).click();
  await crow.waitFor({ state: 'detached', timeout: T });
  if (!asked.includes(ctr)) throw new Error(`no confirmation before remove: ${asked}`);
  step('container removed after confirmation');

  // Health changes live: no reload, the row turns unreachable.
  await goto(`${URL}/#/runners`);
  await row.locator('[data-health="active"]').waitFor({ timeout: T });
  await page.evaluate(() => { window.__sameDocument = true; });
  console.log('STOP_RUNNER');
  await lines.next();
  const t0 = Date.now();
  // The server knows within a second of a clean close; allow for a loaded CI machine.
  await row.locator('[data-health="unreachable"]').waitFor({ timeout: 3000 });
  if (!(await page.evaluate(() => window.__sameDocument))) throw new Error('the page reloaded');
  step(`runner unreachable on the page after ${Date.now() - t0} ms`);
  await shot('05-runner-unreachable');

  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByRole('button', { name: 'Log in' }).waitFor({ timeout: T });
  step('logged out');

  // A viewer sees but cannot act: buttons disabled, and the API refuses
  // the request even when the page is bypassed.
  await login(env('VIEWER_USER'));
  if (await page.getByRole('link', { name: 'Add a server' }).isVisible()) throw new Error('viewer sees "Add a server"');
  await goto(`${URL}/#/scripts/hello`);
  const run = page.getByRole('button', { name: 'Save and run' });
  await run.waitFor({ timeout: T });
  if (!(await run.isDisabled())) throw new Error('viewer can press Save and run');
  const refused = await page.evaluate(async () => {
    const s = await (await fetch('/api/v1/session')).json();
    const r = await fetch('/api/v1/jobs', { method: 'POST', headers: { 'X-CSRF-Token': s.csrf_token, 'Content-Type': 'application/json' }, body: JSON.stringify({ runners: [], script: 'hello' }) });
    return { status: r.status, body: await r.json() };
  });
  if (refused.status !== 403) throw new Error(`viewer's run: ${JSON.stringify(refused)}`);
  await shot('06-viewer');

  // Phone width: the runners table fits without sideways scrolling of the page.
  await page.setViewportSize({ width: 390, height: 800 });
  await goto(`${URL}/#/runners`);
  await row.waitFor({ timeout: T });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) throw new Error(`page is ${overflow}px wider than a phone`);
  await shot('07-phone-runners');
  step('phone width fits');
  step(`viewer refused: ${refused.body.error.message}`);
  console.log('E2E OK');
} catch (e) {
  console.log(`E2E FAILED: ${e.stack || e}`);
  if (page) await page.screenshot({ path: `${ART}/failure.png`, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
  process.exit();
}
