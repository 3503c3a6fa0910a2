// Signing in the page, in real headless Chromium, started by
// tests/dashboard.rs (signed_jobs_in_a_real_browser) against a real server
// and a real runner that requires signed jobs. Without a key the host
// refuses the job and the page shows why and the CLI command that signs
// it; with the operator's key loaded (the file `tether-server key
// generate` wrote) the page signs the job (WebCrypto Ed25519) and it runs.
// Every request the page makes is kept: none may carry the key. Steps
// print one line each; screenshots go to $ARTIFACTS. Any failure exits 1.
import { env, keySecrets, recordRequests, assertNoneCarries, run, step } from './e2e-common.mjs';

const URL = env('TETHER_URL');
const RID = env('RUNNER_ID');
const KEY = env('KEY_FILE');
const T = 20000;

// What must never leave the page (the key file's secret, every encoding).
const { bin, needles } = keySecrets(KEY);

await run({ failShot: 'failed', T }, async ({ page, shot, login }) => {
  const requests = recordRequests(page);

  // The login page: the tenant's single sign-on providers as buttons,
  // once the tenant is typed (names only, from the public options).
  await page.goto(URL);
  await page.getByLabel('Tenant').fill(env('TENANT'));
  await page.getByLabel('Tenant').press('Tab');
  const corp = page.getByRole('link', { name: 'Sign in with corp' });
  await corp.waitFor({ timeout: T });
  const href = await corp.getAttribute('href');
  if (href !== `/api/v1/sso/login?tenant=${env('TENANT')}&provider=corp`) throw new Error(`sign-in link: ${href}`);
  if (await page.locator('#sso a').count() !== 1) throw new Error('other providers shown');
  // An unknown tenant shows none.
  await page.getByLabel('Tenant').fill('no-such-tenant');
  await page.getByLabel('Tenant').press('Tab');
  await page.locator('#sso a').first().waitFor({ state: 'detached', timeout: T });
  await shot('00-login-sso');
  step('login page shows Sign in with corp');
  // A refused sign-in comes back with its reason, shown on the login page.
  // (A load from elsewhere, as the callback's redirect is: not a hash change.)
  await page.goto('about:blank');
  await page.goto(`${URL}/#sso_error=no_role%3A%20your%20account%20has%20no%20role%20here`);
  await page.getByRole('alert').filter({ hasText: 'Single sign-on refused: no_role: your account has no role here' }).waitFor({ timeout: T });
  step('sso refusal shown');

  await login(env('ADMIN_USER'), { load: false });
  // The first page drawn before going on (a later one must not be overdrawn).
  await page.locator(`tr[data-runner="${RID}"]`).waitFor({ timeout: T });

  // Without a key: the page sends the job unsigned; the host refuses it,
  // and the page says why and how to sign it.
  await page.goto(`${URL}/#/scripts`);
  await page.locator('form[aria-label="Script"]').waitFor({ timeout: T });
  await page.locator('#signing-state[data-key=""]').waitFor({ timeout: T });
  await page.getByLabel('Name').fill('touch-unsigned');
  await page.getByLabel('Body').fill(`touch ${env('UNSIGNED_FILE')}\n`);
  await page.getByLabel(`Run on ${env("RUNNER_NAME")}`).check();
  const cli = await page.locator('#signed-cli').textContent();
  if (cli !== `tether-server run ${RID} --script touch-unsigned --sign-key YOUR.key`) throw new Error(`CLI command: ${cli}`);
  step('CLI command shown');
  await page.getByRole('button', { name: 'Save and run' }).click();
  await page.locator('[data-job][data-status="failed"]').waitFor({ timeout: T });
  const why = await page.locator('[data-job] .job-reason').textContent({ timeout: T });
  if (!/signature_refused/.test(why) || !/unsigned/.test(why) || !why.includes(`tether-server run ${RID} --script touch-unsigned --sign-key YOUR.key`)) {
    throw new Error(`refusal shown: ${why}`);
  }
  await shot('01-refused-unsigned');
  step(`unsigned job refused, reason shown: ${why}`);

  // A damaged key is refused with the reason; nothing is loaded.
  const damaged = Buffer.from(bin);
  damaged[100] ^= 1;
  await page.locator('#signing summary').click();
  await page.getByLabel('Operator key file').setInputFiles({ name: 'bad.key', mimeType: 'text/plain', buffer: Buffer.from(`untrusted comment: x\n${damaged.toString('base64')}\n`) });
  await page.locator('#toast').filter({ hasText: 'checksum does not match' }).waitFor({ timeout: T });
  await page.locator('#signing-state[data-key=""]').waitFor({ timeout: T });
  step('damaged key refused');

  // The operator's key, loaded in the page: the job is signed there and runs.
  await page.getByLabel('Operator key file').setInputFiles(KEY);
  const id = await page.locator('#signing-state:not([data-key=""])').getAttribute('data-key', { timeout: T });
  if (!/^[0-9A-F]{16}$/.test(id)) throw new Error(`key id ${id}`);
  step(`key ${id} loaded`);
  await page.getByLabel('Name').fill('touch-signed');
  await page.getByLabel('Body').fill(`touch ${env('SIGNED_FILE')}\necho signed-in-the-page\n`);
  await page.getByRole('button', { name: 'Save and run' }).click();
  await page.locator('[data-job] .log').filter({ hasText: 'signed-in-the-page' }).waitFor({ timeout: T });
  await page.locator('[data-job][data-status="succeeded"]').waitFor({ timeout: T });
  const jobId = await page.locator('[data-job]').getAttribute('data-job');
  await shot('02-signed-ran');
  step(`signed job ran: ${jobId}`);

  // The request that ran it carried one signature for the runner.
  const post = requests.filter((r) => r.method === 'POST' && r.url.endsWith('/api/v1/jobs')).pop();
  const sent = JSON.parse(post.body.toString());
  const sig = sent.signatures?.[RID];
  if (!sig || !/^sa_[0-9a-f]{16}$/.test(sig.action_id) || !sig.signature.startsWith(`untrusted comment: signature from tether operator key ${id}\n`)) {
    throw new Error(`signatures sent: ${JSON.stringify(sent)}`);
  }
  step('signature sent with the job');

  // Forgotten: the next job goes unsigned again (and is refused).
  await page.getByRole('button', { name: 'Forget key' }).click();
  await page.locator('#signing-state[data-key=""]').waitFor({ timeout: T });
  step('key forgotten');

  // No request carried the key, in any part.
  const checked = assertNoneCarries(requests, needles, 5);
  step(`key never sent (${checked} requests checked)`);
  console.log(`JOB ${jobId}`);
});
