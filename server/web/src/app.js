// Entry module: the overview pages (add a server, users), then boot.
// runners.js, runner.js, scripts.js, schedules.js, apps.js, recordings.js and alerts.js register their own pages on import.
import { h, api, act, toast, can, fmtTime, ago, page, boot, redraw } from './core.js';
import './runners.js';
import './runner.js';
import './scripts.js';
import './schedules.js';
import './apps.js';
import './recordings.js';
import './alerts.js';

// ---- runners overview: runners.js ----------------------------------------------------

// ---- add a server -----------------------------------------------------------------

page('add', async (view) => {
  const out = h('div');
  const ttl = h('select', { 'aria-label': 'Token lifetime' },
    ...[['3600', '1 hour'], ['86400', '1 day'], ['604800', '7 days']].map(([v, t]) => h('option', { value: v }, t)));
  const make = async () => {
    const t = await act(() => api('POST', '/api/v1/tokens', { ttl_secs: Number(ttl.value), label: 'dashboard' }));
    if (!t) return;
    const cmd = `curl -fsSL ${location.origin}/install.sh | sh -s -- --token ${t.token}`;
    const code = h('code', { class: 'cmd', id: 'install-cmd' }, cmd);
    out.replaceChildren(
      h('p', {}, 'Run this as root on the new server. The token works once and expires ', fmtTime(t.expires_at), '.'),
      code,
      h('div', { class: 'row' },
        h('button', { type: 'button', onclick: () => navigator.clipboard?.writeText(cmd).then(() => toast('Copied')) }, 'Copy'),
        h('span', { class: 'muted' }, 'No curl? Use wget -qO- instead of curl -fsSL.')));
  };
  // install.sh downloads the newest release's runner from this server: say
  // whether there is one (public manifest), and keep asking while there is
  // not (`make run` publishes a dev release a few minutes after it starts).
  const release = h('p', { id: 'release-state', role: 'status' }, 'Checking for a runner release…');
  let poll = null;
  const checkRelease = async () => {
    const res = await fetch('/releases/latest/manifest.json', { cache: 'no-store' }).catch(() => null);
    if (res?.ok) {
      const m = await res.json().catch(() => null);
      const arches = (m?.files || []).map((f) => f.arch).filter((a) => a).join(', ');
      release.className = 'muted';
      release.dataset.ready = 'yes';
      release.textContent = `Runner release ${m?.version ?? '?'} is ready to install (${arches || 'no binaries'}).`;
      clearInterval(poll);
      poll = null;
    } else {
      release.className = 'error';
      release.dataset.ready = 'no';
      release.textContent = 'No runner release is published on this server yet: the command below fails until one is ' +
        '(tether-server release upload DIR). A dev server started by make run publishes one within a few minutes; this page checks again by itself.';
    }
  };
  view.replaceChildren(h('h1', {}, 'Add a server'),
    h('p', {}, 'The host opens one outbound connection to this server; nothing needs to listen on it.'),
    release,
    h('div', { class: 'row' }, ttl, h('button', { class: 'primary', type: 'button', onclick: make, disabled: !can.act() }, 'New install command')),
    out);
  await checkRelease();
  if (release.dataset.ready !== 'yes') poll = setInterval(checkRelease, 5000);
  if (can.act()) await make();
  return () => clearInterval(poll);
});

// ---- users (tenant admins) ------------------------------------------------------------

page('users', async (view) => {
  const users = await api('GET', '/api/v1/users');
  const roleSel = (value, label) => h('select', { 'aria-label': label },
    ...['viewer', 'operator', 'admin'].map((r) => h('option', { value: r, selected: r === value }, r)));
  const rows = users.map((u) => {
    const sel = roleSel(u.role, `Role of ${u.name}`);
    sel.addEventListener('change', () => act(async () => { await api('PATCH', `/api/v1/users/${encodeURIComponent(u.name)}`, { role: sel.value }); toast(`${u.name} is now ${sel.value}`); }));
    return h('tr', {}, h('td', {}, u.name), h('td', {}, sel), h('td', {}, fmtTime(u.created_at)),
      h('td', {}, h('button', { class: 'danger', type: 'button', onclick: () => act(async () => {
        if (!confirm(`Remove user ${u.name}?`)) return;
        await api('DELETE', `/api/v1/users/${encodeURIComponent(u.name)}`);
        redraw();
      }) }, 'Remove')));
  });
  const form = h('form', { class: 'card', 'aria-label': 'Add a user' },
    h('h2', {}, 'Add a user'),
    h('label', {}, h('span', {}, 'Name'), h('input', { name: 'name', required: true })),
    h('label', {}, h('span', {}, 'Password (8 or more characters)'), h('input', { name: 'password', type: 'password', required: true, minlength: 8, autocomplete: 'new-password' })),
    h('label', {}, h('span', {}, 'Role'), roleSel('viewer', 'Role')),
    h('button', { class: 'primary', type: 'submit' }, 'Add'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = new FormData(form);
    act(async () => {
      await api('POST', '/api/v1/users', { name: f.get('name'), password: f.get('password'), role: form.querySelector('select').value });
      redraw();
    });
  });
  view.replaceChildren(h('h1', {}, 'Users'),
    h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, ...['Name', 'Role', 'Created', ''].map((t) => h('th', { scope: 'col' }, t)))), h('tbody', {}, rows))),
    form, await apiTokens());
});

// API tokens (on the users page: both hand out a tenant's authority). A
// token carries its maker's authority: it stops when they are removed.
async function apiTokens() {
  const tokens = await api('GET', '/api/v1/api-tokens');
  const rows = tokens.map((t) => h('tr', { dataset: { token: t.id } },
    h('td', {}, t.id), h('td', {}, t.label || ''), h('td', {}, t.created_by),
    h('td', { dataset: { state: t.state } }, t.state), h('td', {}, fmtTime(t.created_at)),
    h('td', {}, t.last_used_at ? ago(t.last_used_at) : 'never'), h('td', {}, t.expires_at ? fmtTime(t.expires_at) : 'never'),
    h('td', {}, t.state === 'active' ? h('button', { class: 'danger', type: 'button', onclick: () => act(async () => {
      if (!confirm(`Revoke API token ${t.id}${t.label ? ` (${t.label})` : ''}? Scripts using it stop at once.`)) return;
      await api('DELETE', `/api/v1/api-tokens/${encodeURIComponent(t.id)}`);
      redraw();
    }) }, 'Revoke') : '')));
  const out = h('div');
  const ttl = h('select', { 'aria-label': 'API token lifetime' },
    ...[['', 'until revoked'], ['2592000', '30 days'], ['7776000', '90 days'], ['31536000', '1 year']].map(([v, t]) => h('option', { value: v }, t)));
  const form = h('form', { class: 'card', 'aria-label': 'New API token' },
    h('h2', {}, 'New API token'),
    h('label', {}, h('span', {}, 'Label'), h('input', { name: 'label' })),
    h('label', {}, h('span', {}, 'Lifetime'), ttl),
    h('button', { class: 'primary', type: 'submit' }, 'Create token'), out);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    act(async () => {
      const body = { label: new FormData(form).get('label') || null };
      if (ttl.value) body.ttl_secs = Number(ttl.value);
      const t = await api('POST', '/api/v1/api-tokens', body);
      await redraw();
      // After the redraw: the secret is shown once, on the new page.
      document.getElementById('api-token-made')?.replaceChildren(
        h('p', {}, `Token ${t.id}: copy it now, it is not shown again.`), h('code', { class: 'cmd', id: 'api-token' }, t.token));
    });
  });
  return h('section', { 'aria-label': 'API tokens' }, h('h2', {}, 'API tokens'), h('div', { id: 'api-token-made' }),
    h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {},
      ...['ID', 'Label', 'Created by', 'State', 'Created', 'Last used', 'Expires', ''].map((t) => h('th', { scope: 'col' }, t)))), h('tbody', {}, rows))),
    form);
}

boot();
