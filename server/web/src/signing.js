// Signing in the page (issue 19): an operator loads their minisign secret
// key here and the page signs each action it asks a host for: jobs,
// deploys and rollbacks, terminals, container operations. For hosts that
// require them (`tether --require-signed jobs,deploys,terminals,containers`).
// The same bytes and the same signature file as the CLI's `--sign-key`
// (protocol/signed.rs, server/src/signing/), made with WebCrypto's Ed25519:
//
//   key file ─▶ parseSecretKey (base64, checksum = BLAKE2b-256) ─▶ seed
//            ─▶ crypto.subtle.importKey(pkcs8, non-extractable) ─▶ CryptoKey
//   action ─▶ jobBytes | terminalBytes | containerBytes (canonical encoding)
//          ─▶ BLAKE2b-512 ─▶ Ed25519 ─▶ minisig
//          ─▶ sent as the CLI sends it:
//             job        POST /jobs {signatures: {runner: Signed}}
//             deploy     POST /apps/{name}/deploy|rollback {signed: Signed}
//             terminal   POST /runners/{id}/terminals {action_id, not_after_ms, signature}
//             container  POST|DELETE …/containers/{c}…?action_id=…&not_after_ms=…&signature=…
//                        POST …/containers/prune {action_id, not_after_ms, signature}
//
// What is signed is what the server will send the host. For a job,
// terminal or container operation the page builds it as the server does
// (`termOpen` and `containerRequest` are ports of the server's builders,
// like `jobBytes` is of the encoding). A deploy's `job_start` is made by
// the server from the app's definition (deploy/api.rs `job_spec`): the page
// asks for it (`GET /apps/{name}/signable`) and signs what it received,
// which is what the CLI does too (it reads the definition from the server):
// the operator trusts the server's word on what the app is, and the host
// refuses anything but what was signed.
//
// The key never leaves the page: the file's text is read, turned into a
// non-extractable CryptoKey, and dropped; only signatures are sent. It is
// kept in this module's memory alone (no storage), so a reload forgets it.
// WebCrypto has no BLAKE2b, which minisign prehashes with: it is here.
//
// The server does not know which hosts require signatures (that is the
// host owner's local choice), so with a key loaded every action is signed;
// a host that does not require it acts as before. Without a key, a refused
// action shows the host's reason and the CLI command that signs it.
// tests: server/src/signing/page.rs (the bytes, against the Rust code),
// tests/dashboard.rs (signing in a real browser against a real runner).
import { h, api, toast } from './core.js';

// ---- BLAKE2b (RFC 7693), unkeyed ------------------------------------------------

const IV = [0x6a09e667f3bcc908n, 0xbb67ae8584caa73bn, 0x3c6ef372fe94f82bn, 0xa54ff53a5f1d36f1n,
  0x510e527fade682d1n, 0x9b05688c2b3e6c1fn, 0x1f83d9abfb41bd6bn, 0x5be0cd19137e2179n];
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
  [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
  [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
  [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
  [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];
// BigUint64Array stores wrap modulo 2^64, which is BLAKE2b's arithmetic.
const rotr = (x, n) => (x >> n) | (x << (64n - n));

/** BLAKE2b of `data` (Uint8Array), `outLen` bytes (1 to 64). */
export function blake2b(data, outLen = 64) {
  const hs = new BigUint64Array(IV);
  hs[0] ^= 0x01010000n ^ BigInt(outLen);
  const v = new BigUint64Array(16);
  const m = new BigUint64Array(16);
  const block = new Uint8Array(128);
  const dv = new DataView(block.buffer);
  const G = (a, b, c, d, x, y) => {
    v[a] = v[a] + v[b] + x; v[d] = rotr(v[d] ^ v[a], 32n);
    v[c] = v[c] + v[d]; v[b] = rotr(v[b] ^ v[c], 24n);
    v[a] = v[a] + v[b] + y; v[d] = rotr(v[d] ^ v[a], 16n);
    v[c] = v[c] + v[d]; v[b] = rotr(v[b] ^ v[c], 63n);
  };
  const compress = (t, last) => {
    for (let i = 0; i < 16; i++) m[i] = dv.getBigUint64(i * 8, true);
    for (let i = 0; i < 8; i++) { v[i] = hs[i]; v[i + 8] = IV[i]; }
    v[12] ^= BigInt(t);
    if (last) v[14] = ~v[14];
    for (let r = 0; r < 12; r++) {
      const s = SIGMA[r % 10];
      G(0, 4, 8, 12, m[s[0]], m[s[1]]); G(1, 5, 9, 13, m[s[2]], m[s[3]]);
      G(2, 6, 10, 14, m[s[4]], m[s[5]]); G(3, 7, 11, 15, m[s[6]], m[s[7]]);
      G(0, 5, 10, 15, m[s[8]], m[s[9]]); G(1, 6, 11, 12, m[s[10]], m[s[11]]);
      G(2, 7, 8, 13, m[s[12]], m[s[13]]); G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (let i = 0; i < 8; i++) hs[i] ^= v[i] ^ v[i + 8];
  };
  let off = 0;
  // Every block but the last is full; the last (possibly empty) is padded.
  while (data.length - off > 128) {
    block.set(data.subarray(off, off + 128));
    off += 128;
    compress(off, false);
  }
  block.fill(0);
  block.set(data.subarray(off));
  compress(data.length, true);
  const out = new Uint8Array(64);
  const odv = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) odv.setBigUint64(i * 8, hs[i], true);
  return out.slice(0, outLen);
}

// ---- the canonical bytes (protocol/signed.rs) ---------------------------------------

const enc = new TextEncoder();
const cat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
};

class Canon {
  constructor(kind, runner, actionId, notAfterMs) {
    this.parts = [enc.encode('tether-signed-action 1\n')];
    this.field('kind', kind); this.field('runner', runner);
    this.field('action', actionId); this.field('not_after', String(notAfterMs));
  }

  // `name SP len ':' bytes LF`, len in bytes (UTF-8).
  field(name, value) {
    const b = enc.encode(value);
    this.parts.push(enc.encode(`${name} ${b.length}:`), b, enc.encode('\n'));
  }

  opt(name, value) { if (value == null) this.field(`${name}.none`, ''); else this.field(name, value); }

  list(name, items) { this.field(`${name}.count`, String(items.length)); for (const i of items) this.field(name, i); }

  bytes() { return cat(...this.parts); }
}

// Rust sorts &str by bytes; UTF-16 order differs only past U+FFFF, so
// compare the UTF-8 bytes.
function byteCmp(a, b) {
  const x = enc.encode(a); const y = enc.encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/** `jobBytes`' env: an object {NAME: value} or the server's [[name, value]]. */
const pairsOf = (env) => (Array.isArray(env) ? env : Object.entries(env || {}));

/**
 * The canonical bytes of a `job_start` meant for `runner` (Rust twin:
 * `signed::job_bytes`): a job { program, script (or null), args, env,
 * secrets: [names], timeout_s } or a deploy (the same with `deploy`, as
 * `GET /apps/{name}/signable` gives it).
 */
export function jobBytes(runner, actionId, notAfterMs, job) {
  const c = new Canon(job.deploy ? 'deploy' : 'job', runner, actionId, notAfterMs);
  if (job.deploy) {
    deployFields(c, job.deploy);
  } else {
    c.field('program', job.program);
    c.opt('script', job.script);
    c.list('args', job.args || []);
  }
  const env = [...pairsOf(job.env)].sort((a, b) => byteCmp(a[0], b[0]) || byteCmp(a[1], b[1]));
  c.field('env.count', String(env.length));
  for (const [k, val] of env) { c.field('env.name', k); c.field('env.value', val); }
  c.list('secrets', [...(job.secrets || [])].sort(byteCmp));
  c.field('timeout_s', String(job.timeout_s || 0));
  return c.bytes();
}

const bool = (b) => (b ? 'true' : 'false');
const optNum = (n) => (n == null ? null : String(n));

/** A `DeploySpec` as serde writes it (Rust twin: `signed::deploy_fields`). */
function deployFields(c, d) {
  c.field('app', d.app);
  c.opt('git_url', d.git_url);
  c.opt('git_ref', d.git_ref);
  c.opt('path', d.path);
  c.field('context', d.context);
  c.field('dockerfile', d.dockerfile);
  c.field('image', d.image);
  c.field('build', bool(d.build));
  c.field('container', d.container);
  const ports = d.ports || [];
  c.field('ports.count', String(ports.length));
  for (const p of ports) {
    c.field('port.host', String(p.host));
    c.field('port.container', String(p.container));
    c.field('port.proto', p.proto);
    c.opt('port.host_ip', p.host_ip);
  }
  c.list('volumes', d.volumes || []);
  c.field('restart', d.restart);
  // Labels in the order given (serde's [[name, value]]), as Rust signs them.
  const labels = d.labels || [];
  c.field('labels.count', String(labels.length));
  for (const [k, v] of labels) { c.field('label.name', k); c.field('label.value', v); }
  if (d.health == null) {
    c.field('health.none', '');
  } else {
    if (d.health.cmd == null) c.field('health.cmd.none', ''); else c.list('health.cmd', d.health.cmd);
    c.opt('health.tcp_port', optNum(d.health.tcp_port));
    c.field('health.timeout_s', String(d.health.timeout_s));
  }
  c.opt('env_file', d.env_file);
  c.field('secrets_delivery', d.secrets_delivery);
  c.opt('secrets_uid', optNum(d.secrets_uid));
  c.opt('secrets_gid', optNum(d.secrets_gid));
}

/**
 * The canonical bytes of a `term_open` meant for `runner` (Rust twin:
 * `signed::terminal_bytes`): { container (or null: the host), command:
 * [args], user (or null) }, as `termOpen` makes it.
 */
export function terminalBytes(runner, actionId, notAfterMs, open) {
  const c = new Canon('terminal', runner, actionId, notAfterMs);
  c.opt('container', open.container);
  c.list('command', open.command || []);
  c.opt('user', open.user);
  return c.bytes();
}

/**
 * The canonical bytes of a `docker_request` meant for `runner` (Rust twin:
 * `signed::container_bytes`): { op, container, timeout_s, signal, force,
 * volumes, filters }, as `containerRequest` makes it.
 */
export function containerBytes(runner, actionId, notAfterMs, r) {
  const c = new Canon('container', runner, actionId, notAfterMs);
  c.field('op', r.op);
  c.opt('container', r.container);
  c.opt('timeout_s', optNum(r.timeout_s));
  c.opt('signal', r.signal);
  c.field('force', bool(r.force));
  c.field('volumes', bool(r.volumes));
  c.opt('filters', r.filters == null ? null : compactJson(r.filters));
  return c.bytes();
}

/**
 * JSON as serde_json writes a `Value` (Rust twin: `Value::to_string`):
 * compact, object keys sorted by their bytes, strings escaped alike
 * (JSON.stringify's escapes are serde_json's). Numbers: integers print
 * the same; fractions may not (Docker's filters are strings).
 */
export function compactJson(v) {
  if (Array.isArray(v)) return `[${v.map(compactJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v).sort(byteCmp).map((k) => `${JSON.stringify(k)}:${compactJson(v[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

// ---- what the server sends, built as it builds it -------------------------------------

// Rust's `str::trim` (Unicode White_Space), which is not JavaScript's.
const RUST_SPACE = /^[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/;

/**
 * The `term_open` of a terminal in `container` (null: the host) running
 * `command` (shell text, or null: a login shell) as `user` (Rust twin:
 * `terminals::api::term_open`).
 */
export function termOpen(container, command, user) {
  const cmd = command != null && !RUST_SPACE.test(command) ? ['sh', '-c', command] : [];
  return {
    container: container ?? null,
    // On the host, `command` runs through the user's own shell.
    command: container != null ? cmd : cmd.slice(2),
    user: user ?? null,
  };
}

/**
 * The `docker_request` of an operation `op` (start, stop, restart, kill,
 * remove) on `container` with the query's { timeout, signal, force,
 * volumes }: each only for the operation that takes it (Rust twin:
 * `containers::api::action_request`).
 */
export function containerRequest(op, container, p = {}) {
  return {
    op,
    container,
    timeout_s: op === 'stop' || op === 'restart' ? p.timeout ?? null : null,
    signal: op === 'kill' ? p.signal ?? null : null,
    force: op === 'remove' && !!p.force,
    volumes: op === 'remove' && !!p.volumes,
    filters: null,
  };
}

/**
 * The `docker_request` of a prune of images (`images`) or stopped
 * containers with `filters` (an object, or null). Rust twin: the server's
 * `containers::api::prune`, the CLI's `prune --sign-key`.
 */
export function pruneRequest(images, filters = null) {
  return { op: images ? 'prune_images' : 'prune_containers', container: null, timeout_s: null,
    signal: null, force: false, volumes: false, filters };
}

// ---- minisign keys and signatures (server/src/signing/) ------------------------------

const b64 = (u8) => btoa(String.fromCharCode(...u8));
const unb64 = (s) => Uint8Array.from(atob(s), (ch) => ch.charCodeAt(0));
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const SECRET_LEN = 158;
// PKCS#8 for an Ed25519 private key: this prefix, then the 32-byte seed.
const PKCS8_PREFIX = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
const MAX_KEY_FILE = 4096;

/** minisign's key id as it prints it: the 8 bytes little-endian, hex. */
const keyIdHex = (id) => [...id].reverse().map((b) => b.toString(16).padStart(2, '0')).join('').toUpperCase();

/**
 * Read a minisign secret key file (unencrypted, as `tether-server key
 * generate` writes it): { keyId (8 bytes), seed (32 bytes) }. Throws with
 * the reason, as the CLI does.
 */
export function parseSecretKey(text) {
  if (text.length > MAX_KEY_FILE) throw new Error('not a minisign secret key: too long');
  const line = text.split('\n').map((l) => l.trim()).find((l) => l && !l.startsWith('untrusted comment:'));
  if (!line) throw new Error('not a minisign secret key: no key line');
  let bin;
  try { bin = unb64(line); } catch { throw new Error('not a minisign secret key: not base64'); }
  if (bin.length !== SECRET_LEN) throw new Error(`not a minisign secret key: ${bin.length} bytes, not ${SECRET_LEN}`);
  const ascii = (a, b) => String.fromCharCode(...bin.subarray(a, b));
  if (ascii(0, 2) !== 'Ed' || ascii(4, 6) !== 'B2') throw new Error('not a minisign secret key: unknown algorithm');
  if (ascii(2, 4) === 'Sc') {
    throw new Error('this minisign secret key is encrypted (scrypt): tether reads unencrypted keys only; '
      + 'make one with `tether-server key generate` (or minisign -G -W)');
  }
  if (bin[2] !== 0 || bin[3] !== 0) throw new Error('not a minisign secret key: unknown key derivation');
  const keyId = bin.slice(54, 62);
  const sk = bin.subarray(62, 126);
  if (!equal(blake2b(cat(enc.encode('Ed'), keyId, sk), 32), bin.subarray(126, 158))) {
    throw new Error("the secret key's checksum does not match: damaged");
  }
  return { keyId, seed: sk.slice(0, 32) };
}

/** The loaded key: { keyId (hex), id (8 bytes), key (a non-extractable CryptoKey) }, or null. */
let loaded = null;

export const signingKey = () => (loaded ? loaded.keyId : null);

/** Load a key file's text; the page keeps only a non-extractable CryptoKey. */
export async function loadKey(text) {
  const { keyId, seed } = parseSecretKey(text);
  const pkcs8 = new Uint8Array(PKCS8_PREFIX.length + 32);
  pkcs8.set(PKCS8_PREFIX);
  pkcs8.set(seed, PKCS8_PREFIX.length);
  const key = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, false, ['sign']);
  seed.fill(0);
  pkcs8.fill(0);
  loaded = { keyId: keyIdHex(keyId), id: keyId, key };
  return loaded.keyId;
}

export function forgetKey() { loaded = null; }

/** A minisign signature file (prehashed), the text the CLI makes. */
async function minisig(bytes, comment) {
  const sig = new Uint8Array(await crypto.subtle.sign('Ed25519', loaded.key, blake2b(bytes, 64)));
  const global = new Uint8Array(await crypto.subtle.sign('Ed25519', loaded.key, cat(sig, enc.encode(comment))));
  return `untrusted comment: signature from tether operator key ${loaded.keyId}\n`
    + `${b64(cat(enc.encode('ED'), loaded.id, sig))}\ntrusted comment: ${comment}\n${b64(global)}\n`;
}

// ---- signing actions ------------------------------------------------------------------

/** How long a signature made here stays valid (the CLI's default). */
const VALID_MS = 10 * 60 * 1000;

/** A fresh action id, as the CLI makes them: `sa_` and 16 hex digits. */
function newActionId() {
  const id = crypto.getRandomValues(new Uint8Array(8));
  return `sa_${[...id].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/**
 * A `Signed` ({action_id, not_after_ms, signature}) of the action of
 * `kind` whose canonical bytes `bytesOf(actionId, notAfterMs)` gives.
 */
async function signAction(kind, bytesOf, actionId = newActionId()) {
  const notAfter = Date.now() + VALID_MS;
  return {
    action_id: actionId,
    not_after_ms: notAfter,
    signature: await minisig(bytesOf(actionId, notAfter), `tether-action ${kind} ${actionId}`),
  };
}

/**
 * The `signatures` of a POST /api/v1/jobs: one per runner over `job` as
 * the server will send it, or undefined when no key is loaded.
 */
export async function signJob(runners, job) {
  if (!loaded) return undefined;
  const out = {};
  for (const runner of runners) {
    out[runner] = await signAction('job', (id, na) => jobBytes(runner, id, na, job));
  }
  return out;
}

/**
 * A deploy (`{ref}`) or rollback (`{rollback: true, to}`) of app `name`,
 * signed: `{ signed, to }` to add to its POST body (`to`: the deployment a
 * rollback goes to, named so the server cannot pick another), or
 * undefined when no key is loaded. What is signed is the `job_start` the
 * server says it will send (`GET /apps/{name}/signable`, made by the same
 * code that makes the real one): the app's definition is the server's word,
 * as it is for the CLI.
 */
export async function signDeploy(name, what = {}) {
  if (!loaded) return undefined;
  const actionId = newActionId();
  const q = new URLSearchParams({ action_id: actionId });
  if (what.rollback) q.set('kind', 'rollback');
  if (what.ref) q.set('ref', what.ref);
  if (what.to) q.set('to', what.to);
  const s = await api('GET', `/api/v1/apps/${encodeURIComponent(name)}/signable?${q}`);
  const signed = await signAction('deploy', (id, na) => jobBytes(s.runner, id, na, s.job_start), actionId);
  return { signed, to: s.to };
}

/**
 * The flat signature fields (action_id, not_after_ms, signature) of a
 * terminal on `runner` in `container` (null: the host), for the POST that
 * opens it; undefined when no key is loaded.
 */
export async function signTerminal(runner, container, command = null, user = null) {
  if (!loaded) return undefined;
  const open = termOpen(container, command, user);
  return signAction('terminal', (id, na) => terminalBytes(runner, id, na, open));
}

/**
 * The query string (`action_id=…&not_after_ms=…&signature=…`) that signs
 * operation `op` on `container` of `runner` with the query's parameters
 * `p` ({timeout, signal, force, volumes}); '' when no key is loaded.
 */
export async function signContainer(runner, op, container, p = {}) {
  if (!loaded) return '';
  const req = containerRequest(op, container, p);
  const s = await signAction('container', (id, na) => containerBytes(runner, id, na, req));
  return new URLSearchParams({ ...s, not_after_ms: String(s.not_after_ms) }).toString();
}

/**
 * The flat signature fields of a prune (`images`: of images, else of
 * stopped containers) with `filters` (or none) on `runner`, for its body;
 * undefined when no key is loaded.
 */
export async function signPrune(runner, images = false, filters = null) {
  if (!loaded) return undefined;
  const req = pruneRequest(images, filters);
  return signAction('container', (id, na) => containerBytes(runner, id, na, req));
}

/**
 * A card to load (or forget) the operator's key; `onChange` is called
 * after. The file is read here and never uploaded.
 */
export function keyCard(onChange = () => {}) {
  const state = h('span', { id: 'signing-state', role: 'status' });
  const file = h('input', { type: 'file', 'aria-label': 'Operator key file' });
  const forget = h('button', { type: 'button' }, 'Forget key');
  const show = () => {
    state.textContent = loaded
      ? `signing with ${loaded.keyId} (held in this page only, never sent; a reload forgets it)`
      : 'none loaded (actions go unsigned: a host that requires signatures refuses them)';
    state.dataset.key = loaded ? loaded.keyId : '';
    forget.hidden = !loaded;
  };
  file.addEventListener('change', async () => {
    const f = file.files[0];
    file.value = '';
    if (!f) return;
    try {
      if (f.size > MAX_KEY_FILE) throw new Error('not a minisign secret key: too long');
      const id = await loadKey(await f.text());
      toast(`Operator key ${id} loaded`);
    } catch (e) {
      toast(`Key not loaded: ${e.message}`, true);
    }
    show();
    onChange();
  });
  forget.addEventListener('click', () => { forgetKey(); show(); onChange(); });
  show();
  return h('details', { class: 'card', id: 'signing' },
    // The state stays in sight with the card folded.
    h('summary', {}, 'Operator signing key: ', state),
    h('p', { class: 'muted' }, 'For hosts that require signed actions: a minisign secret key (',
      h('code', {}, 'tether-server key generate'), ', unencrypted). Jobs, deploys, terminals and container operations '
      + 'started from this page are signed here with it, on any page, until a reload.'),
    h('div', { class: 'row' }, file, forget));
}

/** The CLI command that signs a run of saved script `name` on `runners`. */
export function cliRun(runners, name) {
  return `tether-server run ${runners.join(' ')} --script ${name} --sign-key YOUR.key`;
}
