// The dashboard's core: session, API calls, the hash router, the live
// event stream and the login form. Pages register with page(name, fn):
// app.js (runners, add a server, users), runner.js, scripts.js, apps.js, alerts.js. A page is a
// function (its element in #view, params) -> Promise that fills that element; it may return a cleanup
// function, called when the user leaves the page (to close streams).
//
// Every request uses the session cookie (HttpOnly, the page never sees it)
// and, when it changes something, the X-CSRF-Token header. The server
// enforces roles; the page only hides what the role cannot do.

export const state = { session: null, runners: new Map(), listeners: new Set() };

/** `h('a', {href: '#/x'}, 'text', child)`: an element; text children are text nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v == null) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  el.append(...children.flat().filter((c) => c != null && c !== false));
  return el;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

function headers(method, extra) {
  const hd = { ...extra };
  if (method !== 'GET' && method !== 'HEAD' && state.session) hd['X-CSRF-Token'] = state.session.csrf_token;
  return hd;
}

/** A JSON call; throws ApiError with the server's message. A 401 shows the login form. */
export async function api(method, path, body) {
  const send = () =>
    fetch(path, {
      method,
      headers: headers(method, body === undefined ? {} : { 'Content-Type': 'application/json' }),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
  // A network error before any answer: most often a kept-alive connection
  // the server closed as idle just as this request went out, or the
  // browser's network changing under it (an interface coming or going:
  // ERR_NETWORK_CHANGED, several in a row while a host starts containers).
  // An idempotent request (RFC 9110: GET, PUT, DELETE here) means the same
  // sent twice, so it is sent again, up to three times; a POST is not.
  const idempotent = method === 'GET' || method === 'PUT' || method === 'DELETE';
  let res;
  let retried = false;
  for (const wait of [200, 600, 1500, null]) {
    try {
      res = await send();
      break;
    } catch (e) {
      if (!idempotent || wait === null) throw e;
      retried = true;
      await new Promise((r) => setTimeout(r, wait));
    }
  }
  // The first DELETE may have landed before its answer was lost: gone is
  // what was asked.
  if (retried && method === 'DELETE' && res.status === 404) return null;
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    if (res.status === 401 && path !== '/api/v1/session') showLogin('Your session ended; log in again.');
    throw new ApiError(res.status, data);
  }
  return data;
}

/** Read an NDJSON stream line by line until it ends or `signal` aborts. */
export async function ndjson(path, onLine, signal) {
  const res = await fetch(path, { signal, credentials: 'same-origin' });
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.trim()) onLine(JSON.parse(line));
    }
  }
}

/**
 * Follow an append-only NDJSON stream (a job's output) to its end, picking
 * it up again after a network error: Chromium drops requests in flight when
 * a network interface comes or goes (a container starting on this host is
 * one), and the stream's history is replayed in the same order, so the
 * lines already delivered are skipped.
 */
export async function followNdjson(path, onLine, signal) {
  let seen = 0;
  for (let attempt = 0; ; attempt++) {
    let skip = seen;
    try {
      await ndjson(path, (l) => { if (skip > 0) { skip--; return; } seen++; onLine(l); }, signal);
      return;
    } catch (e) {
      if (e instanceof ApiError || e.name === 'AbortError' || attempt >= 5) throw e;
      await new Promise((r) => setTimeout(r, 300 * (attempt + 1)));
    }
  }
}

export function toast(msg, bad) {
  const el = h('div', { class: bad ? 'bad' : '' }, msg);
  document.getElementById('toast').append(el);
  setTimeout(() => el.remove(), bad ? 8000 : 4000);
}

/** Run an action, report its error as a toast; returns its result or undefined. */
/**
 * A host that requires signed actions refused one (`signature_refused`):
 * the page signs only with an operator key loaded in it (signing.js), so
 * this says so and names the exact CLI command that signs the action on
 * the operator's machine instead.
 */
export function signedHint(e, command) {
  return e?.code === 'signature_refused'
    ? ` This host requires an operator's signature: load your operator key on this page (it stays in the page), or run: ${command} --sign-key YOUR.key`
    : '';
}

export async function act(fn) {
  try { return await fn(); } catch (e) { toast(e.message, true); return undefined; }
}

export const can = {
  act: () => state.session && state.session.user.role !== 'viewer',
  admin: () => state.session && state.session.user.role === 'admin',
};

export function fmtTime(s) { return s ? new Date(s).toLocaleString() : '—'; }
export function ago(s) {
  if (!s) return 'never';
  const d = Math.max(0, (Date.now() - new Date(s)) / 1000);
  if (d < 60) return `${Math.round(d)} s ago`;
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  return `${Math.round(d / 3600)} h ago`;
}
export function healthBadge(health) {
  return h('span', { class: `health health-${health}`, 'data-health': health }, health);
}

// ---- live events -----------------------------------------------------------------

let events = null;
function subscribe() {
  if (events) events.close();
  // EventSource sends the cookie on a same-origin URL and reconnects by itself.
  events = new EventSource('/api/v1/events');
  // After a reconnect (server restart, network blip) changes may have been
  // missed: pages listening for 'open' fetch their state again.
  events.addEventListener('open', () => { for (const l of state.listeners) l('open', null); });
  events.addEventListener('health', (e) => {
    const ev = JSON.parse(e.data);
    const r = state.runners.get(ev.runner_id);
    if (r) { r.health = ev.health; if (ev.health === 'active') r.last_seen = ev.at; }
    for (const l of state.listeners) l('health', ev);
  });
  events.addEventListener('container', (e) => {
    const ev = JSON.parse(e.data);
    for (const l of state.listeners) l('container', ev);
  });
  // The server ends the stream when this session's authority does (logout
  // elsewhere, user deleted, password changed): no reconnect; the session
  // is asked again, and a dead one shows the login form.
  events.addEventListener('end', () => {
    if (events) { events.close(); events = null; }
    api('GET', '/api/v1/session').then(start, () => showLogin('Your session ended; log in again.'));
  });
}
/** Listen to live events while a page is shown; returns the cleanup. */
export function listen(fn) { state.listeners.add(fn); return () => state.listeners.delete(fn); }

// ---- router --------------------------------------------------------------------

const pages = {};
export function page(name, fn) { pages[name] = fn; }
let cleanup = null;
let shown = 0;

const runCleanup = (fn) => { try { fn(); } catch { /* a page's cleanup must not block the next */ } };

// Each page fills its own element in #view: a page still loading when the
// user goes elsewhere (its answers come after the next page's) fills an
// element no longer shown, and its cleanup runs as soon as it is returned.
async function route() {
  if (!state.session) return;
  if (cleanup) { runCleanup(cleanup); cleanup = null; }
  const me = ++shown;
  const parts = (location.hash.replace(/^#\/?/, '') || 'runners').split('/').map(decodeURIComponent);
  const view = h('div', { class: 'page' }, h('p', {}, 'Loading…'));
  document.getElementById('view').replaceChildren(view);
  for (const a of document.querySelectorAll('header nav a')) {
    if (a.getAttribute('href') === `#/${parts[0]}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const fn = pages[parts[0]] || pages.runners;
  try {
    const done = await fn(view, ...parts.slice(1));
    if (typeof done === 'function') {
      if (me === shown) cleanup = done;
      else runCleanup(done);
    }
  } catch (e) {
    view.replaceChildren(h('p', { class: 'error', role: 'alert' }, e.message));
  }
}

// ---- login -----------------------------------------------------------------------

function showLogin(msg) {
  let message = msg;
  state.session = null;
  if (events) { events.close(); events = null; }
  document.getElementById('top').hidden = true;
  // A refused single sign-on comes back as #sso_error=CODE: MESSAGE.
  if (location.hash.startsWith('#sso_error=')) {
    message = `Single sign-on refused: ${decodeURIComponent(location.hash.slice(11))}`;
    history.replaceState(null, '', location.pathname);
  }
  const err = h('p', { class: 'error', role: 'alert' }, message || '');
  const tenant = h('input', { name: 'tenant', required: true, autocomplete: 'organization' });
  const password = [
    h('label', {}, h('span', {}, 'User'), h('input', { name: 'name', required: true, autocomplete: 'username' })),
    h('label', {}, h('span', {}, 'Password'), h('input', { name: 'password', type: 'password', required: true, autocomplete: 'current-password' })),
    h('button', { class: 'primary', type: 'submit' }, 'Log in'),
  ];
  const sso = h('div', { id: 'sso', class: 'row' });
  const form = h('form', { class: 'login card', 'aria-label': 'Log in' },
    h('h1', {}, 'Log in to Tether'),
    h('label', {}, h('span', {}, 'Tenant'), tenant),
    password[0], password[1], err, password[2], sso);
  // The tenant's single sign-on providers (names only), asked once the
  // tenant is typed: a "Sign in with" button each; the password fields go
  // when the tenant switched password login off.
  let asked = '';
  const options = async () => {
    const t = tenant.value.trim();
    if (!t || t === asked) return;
    asked = t;
    const res = await fetch(`/api/v1/sso/options?tenant=${encodeURIComponent(t)}`, { credentials: 'same-origin' }).catch(() => null);
    const o = res?.ok ? await res.json().catch(() => null) : null;
    if (tenant.value.trim() !== t) return;
    const q = (p) => `/api/v1/sso/login?tenant=${encodeURIComponent(t)}&provider=${encodeURIComponent(p)}`;
    sso.replaceChildren(...(o?.providers || []).slice(0, 8).map((p) => h('a', { class: 'button', href: q(p), dataset: { provider: p } }, `Sign in with ${p}`)));
    const off = o?.password_login === false;
    for (const el of password) {
      el.hidden = off;
      for (const i of el.querySelectorAll('input')) i.required = !off;
    }
  };
  tenant.addEventListener('change', options);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    try {
      const s = await api('POST', '/api/v1/session', { tenant: f.get('tenant'), name: f.get('name'), password: f.get('password') });
      start(s);
    } catch (x) { err.textContent = x.message; }
  });
  document.getElementById('view').replaceChildren(form);
  form.querySelector('input').focus();
}

function start(session) {
  state.session = session;
  document.getElementById('top').hidden = false;
  document.getElementById('who').textContent = `${session.user.name} (${session.user.role}) · ${session.tenant}`;
  for (const a of document.querySelectorAll('[data-needs]')) a.hidden = !can[a.dataset.needs]();
  subscribe();
  route();
}

/** Show the dashboard if a session exists, else the login form. */
export async function boot() {
  document.getElementById('logout').addEventListener('click', async () => {
    await act(() => api('DELETE', '/api/v1/session'));
    showLogin('Logged out.');
  });
  window.addEventListener('hashchange', route);
  try {
    start(await api('GET', '/api/v1/session'));
  } catch {
    showLogin();
  }
}

/** Draw the current page again (after a change). */
export const redraw = () => route();

