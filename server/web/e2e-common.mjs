// What every browser test driver (e2e*.mjs, started by tests/dashboard.rs)
// shares: its environment, Debian's chromium launched through
// playwright-core with the flags this closed machine needs, a page that
// reports its errors, failed requests and HTTP errors, a navigation that
// survives network changes, the login form, and the run's frame (steps
// print one line each, "E2E OK" at the end; any failure prints why, saves
// a screenshot and exits 1). Each driver keeps its own steps.
import { chromium } from 'playwright-core';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

/** The environment variable `k`, which must be set. */
export const env = (k) => { if (!process.env[k]) throw new Error(`${k} not set`); return process.env[k]; };
export const step = (m) => console.log(`step: ${m}`);

/** Lines the Rust side writes on stdin (after a "STOP_…" line). */
export const stdinLines = () => createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/**
 * Launch chromium, open a page of `viewport` and run `body({ page, goto,
 * shot, login })` on it (`login(user = $ADMIN_USER, { load = true })`); print "E2E OK" when it returns. On a failure:
 * "E2E FAILED: …", a screenshot `${failShot}.png` in $ARTIFACTS, exit 1.
 * `fullPage` is what `shot` takes (a page of 100 rows is tall), `T` the
 * timeout `login` waits with.
 */
export async function run({ viewport = { width: 1100, height: 900 }, failShot = 'failure', fullPage = true, T = 15000 }, body) {
  const ART = env('ARTIFACTS');
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // This machine's network is closed: background networking only fails noisily.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--ignore-certificate-errors'],
  });
  let page;
  try {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport });
    page = await ctx.newPage();
    watch(page);
    const goto = (url) => gotoRetrying(page, url);
    const shot = (name) => page.screenshot({ path: `${ART}/${name}.png`, fullPage });
    const login = (user = env('ADMIN_USER'), { load = true } = {}) => logIn(page, load && goto, user, T);
    await body({ page, goto, shot, login });
    console.log('E2E OK');
  } catch (e) {
    console.log(`E2E FAILED: ${e.stack || e}`);
    if (page) await page.screenshot({ path: `${ART}/${failShot}.png`, fullPage: true }).catch(() => {});
    process.exitCode = 1;
  } finally {
    await browser.close();
    process.exit();
  }
}

// What explains a page stuck half-loaded: its errors, the requests that
// failed (a module that fails to load leaves the page at "Loading…" with
// no page error; aborted streams of a page being left are expected, and
// left out) and the answers of HTTP 400 or more (the session probe of the
// login page apart).
function watch(page) {
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    const why = r.failure()?.errorText || '';
    if (!why.includes('ERR_ABORTED')) console.log(`request failed: ${r.method()} ${r.url()}: ${why}`);
  });
  page.on('response', (r) => { if (r.status() >= 400 && !r.url().endsWith('/api/v1/session')) console.log(`HTTP ${r.status()}: ${r.url()}`); });
}

// Chromium aborts a navigation when a network interface comes or goes
// (ERR_NETWORK_CHANGED), and Docker tests running beside this one add
// veth interfaces at any moment: try such a navigation again. The same
// abort can hit one of the page's module scripts while the navigation
// itself succeeds, which leaves the page at "Loading…" for good: a load
// that lost a subresource that way is tried again too.
async function gotoRetrying(page, url) {
  for (let i = 0; ; i++) {
    const lost = [];
    const onFail = (r) => { if (String(r.failure()?.errorText).includes('ERR_NETWORK_CHANGED')) lost.push(r.url()); };
    page.on('requestfailed', onFail);
    try {
      const resp = await page.goto(url);
      if (lost.length === 0 || i >= 4) return resp;
      console.log(`e2e: reloading ${url}: lost ${lost.join(', ')} to a network change`);
    } catch (e) {
      if (i >= 4 || !String(e).includes('ERR_NETWORK_CHANGED')) throw e;
    } finally {
      page.off('requestfailed', onFail);
    }
  }
}

// The login form filled as `user` (of $TENANT, with $PASSWORD), logged in
// once the page names the user. Loads $TETHER_URL first, unless `goto` is
// false (the page shows the form already).
async function logIn(page, goto, user, T) {
  if (goto) await goto(env('TETHER_URL'));
  await page.getByLabel('Tenant').fill(env('TENANT'));
  await page.getByLabel('User').fill(user);
  await page.getByLabel('Password').fill(env('PASSWORD'));
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#who').filter({ hasText: user }).waitFor({ timeout: T });
}

/**
 * The operator key file at `path` and what of it must never leave the
 * page: its key line, its seed and the whole secret in every encoding a
 * request could use. `bin` is the key line decoded.
 */
export function keySecrets(path) {
  const keyLine = readFileSync(path, 'utf8').split('\n').map((l) => l.trim()).find((l) => l && !l.startsWith('untrusted'));
  const bin = Buffer.from(keyLine, 'base64');
  const needles = [keyLine, keyLine.slice(20, 60), encodeURIComponent(keyLine).slice(20, 60)];
  for (const part of [bin.subarray(62, 94), bin.subarray(62, 126)]) {
    needles.push(part.toString('hex'), part.toString('base64').slice(0, 40), part.toString('base64url').slice(0, 40));
  }
  return { bin, needles };
}

/** Keep every request `page` makes (URL, method, headers, body). */
export function recordRequests(page) {
  const requests = [];
  page.on('request', (r) => requests.push({ url: r.url(), method: r.method(), headers: r.headers(), body: r.postDataBuffer() }));
  return requests;
}

/**
 * No request carried any of `needles`, in any part; at least `least`
 * requests were seen (so that the check checked something). Returns how
 * many.
 */
export function assertNoneCarries(requests, needles, least) {
  let checked = 0;
  for (const r of requests) {
    const text = `${r.url}\n${JSON.stringify(r.headers)}\n${r.body ? r.body.toString('latin1') : ''}`;
    for (const n of needles) {
      if (text.includes(n)) throw new Error(`the key left the page: ${r.method} ${r.url}`);
    }
    checked++;
  }
  if (checked < least) throw new Error(`only ${checked} requests seen`);
  return checked;
}
