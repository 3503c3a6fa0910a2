// Deploys, terminals and container operations signed in the page, in real
// headless Chromium, started by tests/dashboard.rs
// (signed_deploys_terminals_and_containers_in_a_real_browser) against a
// real server and a real runner with Docker that requires them signed
// (`--require-signed jobs,deploys,terminals,containers`). Without a key the
// host refuses each (a deploy, a terminal, a container stop) and the page
// shows its reason and the CLI command; with the operator's key loaded the
// page signs them (WebCrypto Ed25519) and a deploy succeeds, a terminal
// opens and answers, a container restarts, a rollback runs. Every request the page makes is
// kept: none may carry the key. Steps print one line each; screenshots go
// to $ARTIFACTS. Any failure exits 1.
import { env, keySecrets, recordRequests, assertNoneCarries, run, step } from './e2e-common.mjs';

const RID = env('RUNNER_ID');
const KEY = env('KEY_FILE');
const APP = env('APP');
const CONTAINER = env('CONTAINER');
const T = 20000;

// What must never leave the page (as in e2e-signed.mjs).
const { needles } = keySecrets(KEY);

await run({ failShot: 'failed', T }, async ({ page, shot, login }) => {
  const requests = recordRequests(page);
  // Within the page (a hash change): the key, kept in the page's memory
  // only, must survive moving between pages.
  const nav = async (hash, ready) => {
    await page.evaluate((h) => { location.hash = h; }, hash);
    await page.locator(ready).first().waitFor({ timeout: T });
  };
  const lastToast = async (text) => {
    const t = page.locator('#toast div').filter({ hasText: text }).last();
    await t.waitFor({ timeout: T });
    return t.textContent();
  };

  await login();
  await page.locator(`tr[data-runner="${RID}"]`).waitFor({ timeout: T });

  // ---- without a key: each refused by the host, its reason and the CLI command shown

  await nav(`#/apps/${APP}`, '#signing-state[data-key=""]');
  await page.getByRole('button', { name: 'Save and deploy' }).click();
  const failed = page.locator('#deploy-watch [data-deployment][data-status="failed"]');
  await failed.waitFor({ timeout: T });
  const deployWhy = await failed.locator('.job-status').textContent();
  if (!/signature_refused/.test(deployWhy) || !/unsigned/.test(deployWhy)
    || !deployWhy.includes(`run: tether-server app deploy ${APP} --sign-key YOUR.key`)) {
    throw new Error(`deploy refusal shown: ${deployWhy}`);
  }
  await shot('01-deploy-refused');
  step(`unsigned deploy refused, reason and CLI command shown: ${deployWhy}`);

  await nav(`#/runner/${RID}/terminal`, '#signing-state[data-key=""]');
  await page.getByRole('button', { name: 'Open terminal' }).click();
  const termWhy = await page.locator('#term-status').filter({ hasText: 'Not opened' }).textContent({ timeout: T });
  if (!/unsigned/.test(termWhy) || !termWhy.includes(`run: tether-server terminal ${RID} --sign-key YOUR.key`)) {
    throw new Error(`terminal refusal shown: ${termWhy}`);
  }
  await shot('02-terminal-refused');
  step(`unsigned terminal refused, reason and CLI command shown: ${termWhy}`);

  await nav(`#/runner/${RID}/containers`, `tr[data-container="${CONTAINER}"]`);
  const row = page.locator(`tr[data-container="${CONTAINER}"]`);
  await row.getByRole('button', { name: 'Stop' }).click();
  const stopWhy = await lastToast('signature');
  if (!/unsigned/.test(stopWhy) || !stopWhy.includes(`run: tether-server container stop ${RID} ${CONTAINER} --sign-key YOUR.key`)) {
    throw new Error(`stop refusal shown: ${stopWhy}`);
  }
  await row.filter({ hasText: 'running' }).waitFor({ timeout: T });
  await shot('03-stop-refused');
  step(`unsigned container stop refused, reason and CLI command shown: ${stopWhy}`);

  // ---- the operator's key loaded here (on the containers tab), used on every page

  await page.locator('#signing summary').click();
  await page.getByLabel('Operator key file').setInputFiles(KEY);
  const id = await page.locator('#signing-state:not([data-key=""])').getAttribute('data-key', { timeout: T });
  if (!/^[0-9A-F]{16}$/.test(id)) throw new Error(`key id ${id}`);
  step(`key ${id} loaded`);

  await row.getByRole('button', { name: 'Restart' }).click();
  await lastToast(`Restart: ${CONTAINER}`);
  const restart = requests.filter((r) => r.method === 'POST' && r.url.includes(`/containers/${CONTAINER}/restart`)).pop();
  const q = new globalThis.URL(restart.url).searchParams;
  if (!/^sa_[0-9a-f]{16}$/.test(q.get('action_id')) || !q.get('signature')?.startsWith(`untrusted comment: signature from tether operator key ${id}\n`)) {
    throw new Error(`restart sent: ${restart.url}`);
  }
  await shot('04-restarted');
  step(`signed container restart done: ${q.get('action_id')}`);

  await nav(`#/runner/${RID}/terminal`, `#signing-state[data-key="${id}"]`);
  await page.getByRole('button', { name: 'Open terminal' }).click();
  await page.locator('#term-status').filter({ hasText: 'connected' }).waitFor({ timeout: T });
  await page.locator('#terminal textarea').focus();
  await page.keyboard.type('echo $((40+2))');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => {
    const b = document.getElementById('terminal')?.term?.buffer.active;
    return b && Array.from({ length: b.length }, (_, i) => b.getLine(i).translateToString(true).trim()).includes('42');
  }, null, { timeout: T });
  const open = requests.filter((r) => r.method === 'POST' && r.url.endsWith(`/runners/${RID}/terminals`)).pop();
  const ob = JSON.parse(open.body.toString());
  if (!/^sa_[0-9a-f]{16}$/.test(ob.action_id) || !ob.signature?.includes(`tether-action terminal ${ob.action_id}`)) {
    throw new Error(`terminal open sent: ${open.body}`);
  }
  await shot('05-terminal-signed');
  step(`signed terminal opened, echo $((40+2)) read 42: ${ob.action_id}`);
  await page.getByRole('button', { name: 'Hang up' }).click();
  await page.locator('#term-status').filter({ hasText: 'ended' }).waitFor({ timeout: T });

  await nav(`#/apps/${APP}`, `#signing-state[data-key="${id}"]`);
  await page.locator('#deployments tbody tr').first().waitFor({ timeout: T });
  await page.getByRole('button', { name: 'Save and deploy' }).click();
  const ok = page.locator('#deploy-watch [data-deployment][data-status="succeeded"]');
  await ok.waitFor({ timeout: 90000 });
  const deployment = await ok.getAttribute('data-deployment');
  const post = requests.filter((r) => r.method === 'POST' && r.url.endsWith(`/apps/${APP}/deploy`)).pop();
  const db = JSON.parse(post.body.toString());
  if (!/^sa_[0-9a-f]{16}$/.test(db.signed?.action_id) || !db.signed.signature.includes(`tether-action deploy ${db.signed.action_id}`)) {
    throw new Error(`deploy sent: ${post.body}`);
  }
  await shot('06-deployed-signed');
  step(`signed deploy succeeded: ${deployment} ${db.signed.action_id}`);

  // Deployed again, then rolled back to the first signed image: the
  // rollback names its target and is signed over running that image.
  await page.getByRole('button', { name: 'Save and deploy' }).click();
  await page.locator('#deployments tbody tr[data-status="succeeded"]').nth(1).waitFor({ timeout: 90000 });
  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Roll back to the previous image' }).click();
  const back = page.locator('#deploy-watch [data-deployment][data-status="succeeded"]').filter({ hasText: 'rollback' });
  await back.waitFor({ timeout: 90000 });
  const rb = JSON.parse(requests.filter((r) => r.method === 'POST' && r.url.endsWith(`/apps/${APP}/rollback`)).pop().body.toString());
  if (rb.to !== deployment || !rb.signed?.signature.includes(`tether-action deploy ${rb.signed.action_id}`)) {
    throw new Error(`rollback sent: ${JSON.stringify(rb)}`);
  }
  const rollback = await back.getAttribute('data-deployment');
  await shot('07-rolled-back-signed');
  step(`signed rollback to ${deployment} succeeded: ${rollback} ${rb.signed.action_id}`);

  // No request carried the key, in any part.
  const checked = assertNoneCarries(requests, needles, 10);
  step(`key never sent (${checked} requests checked)`);
  console.log(`DEPLOYMENT ${deployment}`);
  console.log(`ROLLBACK ${rollback}`);
  console.log(`ACTIONS ${db.signed.action_id} ${ob.action_id} ${q.get('action_id')} ${rb.signed.action_id}`);
});
