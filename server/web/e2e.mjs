// End-to-end driver for the dashboard in real headless Chromium, started by
// tests/dashboard.rs against a real server and runner. Steps print one line
// each; "STOP_RUNNER" asks the Rust side to stop the runner and waits for a
// line on stdin. Screenshots go to $ARTIFACTS. Any failure exits 1.
import { env, run, step, stdinLines } from './e2e-common.mjs';

const URL = env('TETHER_URL');
const lines = stdinLines();
const T = 15000;

await run({ failShot: 'failure', T }, async ({ page, goto, shot, login }) => {
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
  // No release on this server: the page says the command cannot work yet.
  const rel = page.locator('#release-state[data-ready="no"]');
  await rel.waitFor({ timeout: T });
  if (!/No runner release/.test(await rel.textContent())) throw new Error('missing-release notice');
  step('missing release said');

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

  // Terminal: a shell on the host in xterm.js; type a command, read its
  // answer in the terminal (what the page shows: xterm's rows).
  const RID = env('RUNNER_ID');
  const termLines = () => page.evaluate(() => {
    const b = document.getElementById('terminal').term.buffer.active;
    return Array.from({ length: b.length }, (_, i) => b.getLine(i).translateToString(true).trim());
  });
  const waitTermLine = (text) => page.waitForFunction((t) => {
    const b = document.getElementById('terminal')?.term?.buffer.active;
    return b && Array.from({ length: b.length }, (_, i) => b.getLine(i).translateToString(true).trim()).includes(t);
  }, text, { timeout: T });
  let tStart = Date.now();
  await goto(`${URL}/#/runner/${RID}/terminal`);
  await page.getByRole('button', { name: 'Open terminal' }).click();
  await page.locator('#term-status').filter({ hasText: 'connected' }).waitFor({ timeout: T });
  await page.keyboard.type('echo $((6*7))');
  await page.keyboard.press('Enter');
  await page.locator('#terminal .xterm-rows').filter({ hasText: '42' }).waitFor({ timeout: T });
  await waitTermLine('42');
  await shot('04a-terminal');
  step(`terminal: typed echo $((6*7)), read 42 (${Date.now() - tStart} ms)`);
  // The terminal follows the page's size: the shell sees the new one.
  const size0 = await page.evaluate(() => document.getElementById('terminal').term.cols);
  await page.setViewportSize({ width: 700, height: 700 });
  await page.waitForFunction((c) => document.getElementById('terminal').term.cols < c, size0, { timeout: T });
  const [cols, rows] = await page.evaluate(() => { const t = document.getElementById('terminal').term; return [t.cols, t.rows]; });
  await page.keyboard.type('stty size');
  await page.keyboard.press('Enter');
  await waitTermLine(`${rows} ${cols}`);
  await page.setViewportSize({ width: 1100, height: 900 });
  step(`terminal resized with the page: ${size0} -> ${cols} columns`);
  // Leave the tab and come back: the shell is still there, reattached
  // with what it printed replayed.
  await goto(`${URL}/#/runner/${RID}/overview`);
  await page.locator('#update-state').waitFor({ timeout: T });
  // Meanwhile, an update lever: put the runner in a group.
  await page.getByLabel('Group', { exact: true }).fill('canary');
  await page.getByRole('button', { name: 'Set group' }).click();
  await page.locator('#update-state td', { hasText: 'canary' }).first().waitFor({ timeout: T });
  await shot('04a-runner-updates');
  step('update group set from the page');
  await goto(`${URL}/#/runner/${RID}/terminal`);
  await page.locator('#term-status').filter({ hasText: 'connected' }).waitFor({ timeout: T });
  await waitTermLine('42');
  await page.locator('#terminal textarea').focus();
  await page.keyboard.type('echo back-$((1+1))');
  await page.keyboard.press('Enter');
  await waitTermLine('back-2');
  step('terminal reattached after leaving the tab, scrollback replayed');
  // A blip: the socket drops without the terminal ending. The page
  // reattaches from the last byte it showed: nothing lost, nothing twice.
  const count = async (t) => (await termLines()).filter((l) => l === t).length;
  const before = await count('42');
  await page.evaluate(() => document.getElementById('terminal').attachment.ws.close());
  await page.locator('#term-status').filter({ hasText: 'reattaching' }).waitFor({ timeout: T });
  await page.locator('#term-status').filter({ hasText: 'connected' }).waitFor({ timeout: T });
  await page.locator('#terminal textarea').focus();
  await page.keyboard.type('echo blip-$((2+3))');
  await page.keyboard.press('Enter');
  await waitTermLine('blip-5');
  if ((await count('42')) !== before) throw new Error(`output repeated after the reattach: ${await termLines()}`);
  step('terminal reattached after a dropped socket, no output repeated');
  // Keyboard: Tab belongs to the shell, Shift+Escape leaves the terminal.
  await page.keyboard.press('Shift+Escape');
  const focused = await page.evaluate(() => document.activeElement?.textContent);
  if (focused !== 'Hang up') throw new Error(`Shift+Escape left the focus on ${focused}`);
  await page.getByRole('button', { name: 'Hang up' }).click();
  await page.locator('#term-status').filter({ hasText: 'ended' }).waitFor({ timeout: T });
  if ((await termLines()).length === 0) throw new Error('terminal buffer empty');
  step('terminal hung up');

  // Recordings: the session just hung up replays in asciinema-player (the
  // page's first command, echo $((6*7)), and its 42 appear in the player).
  await goto(`${URL}/#/recordings`);
  const rec = page.locator('tr[data-recording]').first();
  await rec.waitFor({ timeout: T });
  await rec.getByRole('link').first().click();
  await page.locator('#player .ap-term').filter({ hasText: '42' }).waitFor({ timeout: 30000 });
  const played = await page.evaluate(() => document.getElementById('player').player.getCurrentTime());
  if (!(played > 0)) throw new Error(`the player did not play: at ${played}`);
  await shot('04d-recording-replay');
  step('recording replayed in the player');
  // Audit: the terminal the page opened is an entry, found by its action.
  await goto(`${URL}/#/audit`);
  await page.getByLabel('Action', { exact: true }).fill('/terminals');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.locator('#audit tbody tr[data-seq]').filter({ hasText: 'POST /api/v1/runners/{id}/terminals' }).first().waitFor({ timeout: T });
  const exp = await page.locator('#audit-export').getAttribute('href');
  if (!exp.includes('action=%2Fterminals')) throw new Error(`export link without the filter: ${exp}`);
  await shot('04e-audit');
  step('audit page lists the terminal open');

  // Apps: define one from a local git repository, deploy it, watch the
  // three steps, see its container; deploy again and roll back.
  const APP = env('APP');
  tStart = Date.now();
  await goto(`${URL}/#/apps`);
  await page.getByLabel('Name', { exact: true }).fill(APP);
  await page.getByLabel('Runner', { exact: true }).selectOption(RID);
  await page.getByLabel('Git URL').fill(env('APP_REPO'));
  await page.getByLabel('Ref', { exact: true }).fill('main');
  await page.getByLabel('Environment (NAME=value a line)').fill('GREETING=hello');
  await page.getByRole('button', { name: 'Save and deploy' }).click();
  const deployed = page.locator('#deploy-watch [data-deployment][data-status="succeeded"]');
  await deployed.waitFor({ timeout: 120000 });
  for (const n of [1, 2, 3]) {
    const st = await deployed.locator(`[data-step="${n}"]`).getAttribute('data-state');
    if (st !== 'done') throw new Error(`step ${n} is ${st}`);
  }
  await shot('04b-app-deployed');
  step(`app deployed, steps source/build/replace shown (${Date.now() - tStart} ms)`);
  await page.locator('#app-container').click();
  await page.locator(`tr[data-container="${APP}"]`).filter({ hasText: 'running' }).waitFor({ timeout: T });
  await shot('04c-app-container');
  step('app container running on the containers tab');
  await goto(`${URL}/#/apps/${APP}`);
  await page.getByRole('button', { name: 'Save and deploy' }).click();
  await page.locator('#deployments tbody tr').nth(1).waitFor({ timeout: T });
  await deployed.waitFor({ timeout: 120000 });
  await page.locator('#deployments tbody tr[data-status="succeeded"]').nth(1).waitFor({ timeout: T });
  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Roll back to the previous image' }).click();
  await page.locator('#deploy-watch [data-deployment][data-status="succeeded"]').filter({ hasText: 'rollback' }).waitFor({ timeout: 120000 });
  await page.locator('#deployments tbody tr').nth(2).waitFor({ timeout: T });
  step('app redeployed and rolled back');

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

  // API tokens on the users page: made (shown once), listed with who
  // made it, revoked after a confirmation.
  await goto(`${URL}/#/users`);
  const tokenForm = page.getByRole('form', { name: 'New API token' });
  await tokenForm.getByLabel('Label').fill('e2e-bot');
  await tokenForm.getByRole('button', { name: 'Create token' }).click();
  await page.locator('#api-token').filter({ hasText: 'tapi_' }).waitFor({ timeout: T });
  const tokenRow = page.locator('tr[data-token]').filter({ hasText: 'e2e-bot' });
  await tokenRow.filter({ hasText: `user ${env('ADMIN_USER')}` }).locator('[data-state="active"]').waitFor({ timeout: T });
  await shot('05b-api-tokens');
  let revokeAsked = '';
  page.once('dialog', (d) => { revokeAsked = d.message(); d.accept(); });
  await tokenRow.getByRole('button', { name: 'Revoke' }).click();
  await page.locator('tr[data-token]').filter({ hasText: 'e2e-bot' }).locator('[data-state="revoked"]').waitFor({ timeout: T });
  if (!revokeAsked.includes('e2e-bot')) throw new Error(`no confirmation before revoke: ${revokeAsked}`);
  step('API token made, listed with its maker, revoked');

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
  // The terminal: no Open button to press, and the server refuses both the
  // POST and the WebSocket (which carries the viewer's cookie).
  await goto(`${URL}/#/runner/${RID}/terminal`);
  const open = page.getByRole('button', { name: 'Open terminal' });
  await open.waitFor({ timeout: T });
  if (!(await open.isDisabled())) throw new Error('viewer can press Open terminal');
  if (await page.locator('#terminal').isVisible()) throw new Error('viewer is shown an unusable terminal');
  const termRefused = await page.evaluate(async (rid) => {
    const s = await (await fetch('/api/v1/session')).json();
    const r = await fetch(`/api/v1/runners/${rid}/terminals`, { method: 'POST', headers: { 'X-CSRF-Token': s.csrf_token, 'Content-Type': 'application/json' }, body: '{}' });
    const ws = await new Promise((resolve) => {
      const w = new WebSocket(`wss://${location.host}/api/v1/runners/${rid}/terminal`);
      w.onopen = () => resolve('opened');
      w.onclose = () => resolve('refused');
    });
    return { status: r.status, body: await r.json(), ws };
  }, RID);
  if (termRefused.status !== 403 || termRefused.ws !== 'refused') throw new Error(`viewer's terminal: ${JSON.stringify(termRefused)}`);
  await shot('06b-viewer-terminal');
  step(`viewer refused a terminal: ${termRefused.body.error.message}`);

  // Phone width: each page fits without sideways scrolling of the page
  // (wide tables scroll inside their own box).
  await page.setViewportSize({ width: 390, height: 800 });
  for (const [path, ready, name] of [
    ['#/runners', `tr[data-runner="${RID}"]`, 'runners'],
    [`#/runner/${RID}/overview`, '#update-state', 'runner'],
    // (As the viewer: the reason is shown, the terminal itself is not.)
    [`#/runner/${RID}/terminal`, '#term-status', 'terminal'],
    [`#/apps/${APP}`, '#deployments', 'apps'],
    ['#/scripts/hello', 'form[aria-label="Script"]', 'scripts'],
  ]) {
    await goto(`${URL}/${path}`);
    await page.locator(ready).first().waitFor({ timeout: T });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 0) throw new Error(`${name} page is ${overflow}px wider than a phone`);
    await shot(`07-phone-${name}`);
  }
  step('phone width fits');
  step(`viewer refused: ${refused.body.error.message}`);
});
