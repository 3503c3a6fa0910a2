// The runners page, built to hold a fleet of thousands: counts by health,
// search, filters (label selector, health, arch, version, update state), sort, paged by
// the server (`GET /api/v1/runners?…&page=&limit=`, `…/runners/counts`), so
// the page never holds more than one page of rows however big the fleet.
// Live: health changes (the event stream) flip a visible row in place and
// refresh the counts; CPU, memory, disk and network come from
// `GET /api/v1/metrics/summary` for the rows shown, every few seconds.
// Bulk actions (set labels, run a script, desired version) act on the rows
// ticked on this page.
//
// Rendering is split into functions of their own (countsBar, filterRow,
// runnerRow, markers, bulkBar) so other pages' work (alert markers) can be
// merged into one place: `markers`.
import { state, h, api, act, toast, can, fmtTime, ago, healthBadge, listen, page } from './core.js';
import { firingCard } from './alerts.js';

const PAGE = 100;
const METRICS_EVERY = 5000;

// Query string of the current filters (empty ones left out).
function qs(f, extra = {}) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries({ ...f, ...extra })) if (v !== '' && v != null) p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : '';
}

// A small inline bar for a percentage, with the number beside it.
function bar(pct, what) {
  if (pct == null || Number.isNaN(pct)) return h('span', { class: 'muted' }, '—');
  const v = Math.max(0, Math.min(100, pct));
  const level = v >= 90 ? 'bad' : v >= 75 ? 'warn' : 'ok';
  return h('span', { class: 'meter', title: `${what} ${v.toFixed(1)} %`, dataset: { value: v.toFixed(1) } },
    h('span', { class: 'meter-track' }, h('span', { class: `meter-bar meter-${level}`, style: `width:${v.toFixed(0)}%` })),
    h('span', { class: 'meter-n' }, `${v.toFixed(0)}%`));
}

function rate(bps) {
  if (bps == null) return h('span', { class: 'muted' }, '—');
  const u = [['GB/s', 1e9], ['MB/s', 1e6], ['kB/s', 1e3]].find(([, d]) => bps >= d);
  return h('span', { class: 'num' }, u ? `${(bps / u[1]).toFixed(1)} ${u[0]}` : `${Math.round(bps)} B/s`);
}

// Markers beside a runner's name: firing alerts (and drift alerts among
// them). One place for every kind of marker.
export function markers(r, alertsByRunner) {
  const firing = alertsByRunner.get(r.id) || [];
  if (!firing.length) return '';
  const drift = firing.filter((a) => /drift|port|listen/i.test(`${a.rule_id} ${a.summary}`));
  return h('span', { class: 'markers' },
    h('span', { class: 'marker marker-alert alert-count', title: firing.map((a) => a.summary).join('\n'), dataset: { alerts: firing.length } }, `⚠ ${firing.length}`),
    drift.length ? h('span', { class: 'marker marker-drift', title: 'host drift', dataset: { drift: drift.length } }, 'drift') : '');
}

function labelChips(labels) {
  return Object.entries(labels || {}).map(([k, v]) => h('span', { class: 'chip' }, v === '' ? k : `${k}=${v}`));
}

// One row of the table.
export function runnerRow(r, m, sel, alertsByRunner) {
  const box = h('input', { type: 'checkbox', 'aria-label': `Select ${r.name}`, checked: sel.has(r.id) });
  box.addEventListener('change', () => { if (box.checked) sel.add(r.id); else sel.delete(r.id); sel.changed(); });
  return h('tr', { dataset: { runner: r.id, health: r.health } },
    h('td', {}, box),
    h('td', {}, h('a', { href: `#/runner/${r.id}` }, r.name), markers(r, alertsByRunner),
      r.reported_name && r.reported_name !== r.name ? h('span', { class: 'muted' }, ` (reports ${r.reported_name})`) : ''),
    h('td', { class: 'cell-health' }, healthBadge(r.health)),
    h('td', { class: 'labels' }, labelChips(r.labels)),
    h('td', { class: 'cell-cpu' }, bar(m?.cpu, 'CPU')),
    h('td', { class: 'cell-mem' }, bar(m?.mem, 'memory')),
    h('td', { class: 'cell-disk' }, bar(m?.disk, 'disk')),
    h('td', { class: 'cell-net' }, rate(m?.net_bps)),
    h('td', {}, r.version), h('td', {}, `${r.os}/${r.arch}`),
    h('td', { title: fmtTime(r.last_seen) }, r.health === 'active' ? 'now' : ago(r.last_seen)));
}

// Counts by health: each one a button that filters by it.
function countsBar(c, f, set) {
  const b = (health, label, n) => h('button', {
    type: 'button', class: 'count', 'aria-pressed': String((f.health || '') === health),
    dataset: { health: health || 'all' }, onclick: () => set({ health }),
  }, `${label} `, h('b', { class: 'n' }, String(n)));
  return h('div', { class: 'row counts', id: 'runner-counts', role: 'group', 'aria-label': 'Runners by health' },
    b('', 'All', c.total), b('active', 'Active', c.health.active || 0),
    b('unreachable', 'Unreachable', c.health.unreachable || 0), b('revoked', 'Revoked', c.health.revoked || 0));
}

function filterRow(f, c, set) {
  const input = (key, label, placeholder) => {
    const el = h('input', { type: 'search', 'aria-label': label, placeholder, value: f[key] || '' });
    let t = null;
    el.addEventListener('input', () => { clearTimeout(t); t = setTimeout(() => set({ [key]: el.value.trim() }), 250); });
    return el;
  };
  const choose = (key, label, options) => {
    const el = h('select', { 'aria-label': label },
      h('option', { value: '' }, `any ${label.toLowerCase()}`),
      ...options.map(([v, t]) => h('option', { value: v, selected: f[key] === v }, t)));
    el.addEventListener('change', () => set({ [key]: el.value }));
    return el;
  };
  const counted = (m) => Object.entries(m || {}).map(([k, n]) => [k, `${k} (${n})`]);
  return h('div', { class: 'row filters' },
    input('q', 'Search runners', 'name, id or key=value'),
    input('selector', 'Label selector', 'role=db,region in (eu,us),!canary'),
    choose('arch', 'Arch', counted(c.arch)),
    choose('version', 'Version', counted(c.version)),
    // The update state against the runner's desired version (`?update=`).
    choose('update', 'Update state', [['current', 'current'], ['pending', 'pending'], ['failed', 'failed'],
      ['none', 'no desired version']]),
    choose('sort', 'Sort', [['name', 'name'], ['-name', 'name, Z-A'], ['health', 'health'], ['version', 'version'],
      ['arch', 'arch'], ['-last_seen', 'last seen'], ['-created', 'newest']]));
}

// Actions on the ticked rows.
function bulkBar(sel, reload) {
  const count = h('span', { id: 'selected-count', class: 'muted' });
  const labelsIn = h('input', { 'aria-label': 'Labels to set', placeholder: 'key=value,key=value' });
  const scriptIn = h('input', { 'aria-label': 'Script to run', placeholder: 'saved script name' });
  const versionIn = h('input', { 'aria-label': 'Desired version', placeholder: '0.2.0 or none' });
  const ids = () => [...sel];
  const setLabels = () => act(async () => {
    const set = {};
    for (const kv of labelsIn.value.split(',').map((s) => s.trim()).filter(Boolean)) {
      const i = kv.indexOf('=');
      if (i < 1) throw new Error(`${kv}: use key=value`);
      set[kv.slice(0, i)] = kv.slice(i + 1);
    }
    const all = ids();
    // A few at a time: a page holds at most PAGE rows.
    for (let i = 0; i < all.length; i += 8) {
      await Promise.all(all.slice(i, i + 8).map((id) => api('PATCH', `/api/v1/runners/${id}/labels`, { set })));
    }
    toast(`Labels set on ${all.length} runner(s)`);
    await reload();
  });
  const runScript = () => act(async () => {
    const jobs = await api('POST', '/api/v1/jobs', { runners: ids(), script: scriptIn.value.trim() });
    toast(`${jobs.length} job(s) started`);
  });
  // The ticked runners' own desired version (over their update policy;
  // `none` gives them back to it): one request for the whole selection.
  const desire = () => act(async () => {
    const text = versionIn.value.trim();
    const version = text === 'none' ? null : text;
    const r = await api('POST', '/api/v1/desired-version', { runners: ids(), version });
    toast(version ? `${r.changed} runner(s) should run ${version}` : `${r.changed} runner(s) follow their policy again`);
    await reload();
  });
  const bar = h('div', { class: 'row bulk', role: 'group', 'aria-label': 'Bulk actions', hidden: !can.act() },
    count,
    labelsIn, h('button', { type: 'button', onclick: setLabels }, 'Set labels'),
    scriptIn, h('button', { type: 'button', onclick: runScript }, 'Run script'),
    versionIn, h('button', { type: 'button', onclick: desire }, 'Set desired version'));
  const buttons = [...bar.querySelectorAll('button')];
  sel.changed = () => {
    count.textContent = `${sel.size} selected`;
    for (const b of buttons) b.disabled = sel.size === 0;
  };
  sel.changed();
  return bar;
}

page('runners', async (view) => {
  const f = { q: '', selector: '', health: '', arch: '', version: '', update: '', sort: 'name' };
  let pageNo = 1;
  let total = 0;
  let rows = [];
  let metrics = {};
  let alertsByRunner = new Map();
  const sel = new Set();
  const body = h('tbody');
  const countsSlot = h('div');
  const filtersSlot = h('div');
  const pager = h('div', { class: 'row pager' });
  const err = h('p', { class: 'error', role: 'alert' });
  // Firing alerts above the list (alerts.js), refreshed with the markers.
  const firingSlot = h('div');

  const fetchCounts = async () => {
    const { health, sort, ...rest } = f;
    const c = await api('GET', `/api/v1/runners/counts${qs(rest)}`);
    countsSlot.replaceChildren(countsBar(c, f, set));
    return c;
  };
  const fetchMetrics = async () => {
    const ids = rows.filter((r) => r.health === 'active').map((r) => r.id);
    metrics = ids.length ? await api('GET', `/api/v1/metrics/summary?runners=${ids.join(',')}`).catch(() => ({})) : {};
    draw();
  };
  const fetchAlerts = async () => {
    const a = await api('GET', '/api/v1/alerts').catch((e) => ({ error: e }));
    alertsByRunner = new Map();
    for (const x of a.alerts || []) {
      if (x.state !== 'firing') continue;
      if (!alertsByRunner.has(x.runner_id)) alertsByRunner.set(x.runner_id, []);
      alertsByRunner.get(x.runner_id).push(x);
    }
    // The card is drawn from the same answer (one GET /alerts per refresh).
    const card = a.error ? h('p', { class: 'error' }, `Alerts: ${a.error.message}`)
      : await firingCard(state.runners, undefined, a.alerts).catch((e) => h('p', { class: 'error' }, `Alerts: ${e.message}`));
    firingSlot.replaceChildren(card);
  };
  const draw = () => {
    body.replaceChildren(...rows.map((r) => runnerRow(r, metrics[r.id], sel, alertsByRunner)));
    if (!rows.length) body.append(h('tr', {}, h('td', { colspan: 11 }, total ? 'No runners on this page.' : 'No runners match.')));
    const pages = Math.max(1, Math.ceil(total / PAGE));
    pager.replaceChildren(
      h('button', { type: 'button', disabled: pageNo <= 1, onclick: () => go(pageNo - 1) }, 'Previous'),
      h('span', { id: 'runner-page' }, `Page ${pageNo} of ${pages} · ${total} runner(s)`),
      h('button', { type: 'button', disabled: pageNo >= pages, onclick: () => go(pageNo + 1) }, 'Next'));
  };
  // The page of rows for the filters: X-Total-Count says how many in all.
  const fetchRows = async () => {
    const res = await fetch(`/api/v1/runners${qs(f, { page: pageNo, limit: PAGE })}`, { credentials: 'same-origin' });
    const data = await res.json().catch(() => null);
    if (!res.ok) { err.textContent = data?.error?.message || `HTTP ${res.status}`; return; }
    err.textContent = '';
    total = Number(res.headers.get('x-total-count') || data.length);
    rows = data;
    for (const r of rows) state.runners.set(r.id, r);
    draw();
  };
  const go = async (p) => { pageNo = p; sel.clear(); sel.changed?.(); await fetchRows(); fetchMetrics(); };
  const reload = async () => { await Promise.all([fetchRows(), fetchCounts().catch((e) => { err.textContent = e.message; })]); fetchMetrics(); };
  function set(change) {
    Object.assign(f, change);
    pageNo = 1;
    sel.clear();
    sel.changed?.();
    reload();
  }

  const [c] = await Promise.all([fetchCounts(), fetchAlerts()]);
  filtersSlot.replaceChildren(filterRow(f, c, set));
  await fetchRows();
  view.replaceChildren(h('h1', {}, 'Runners'), firingSlot, countsSlot, filtersSlot, err, bulkBar(sel, reload),
    h('div', { class: 'scroll' }, h('table', { class: 'runners' }, h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, h('input', { type: 'checkbox', 'aria-label': 'Select every runner on this page',
        onchange: (e) => { for (const r of rows) { if (e.target.checked) sel.add(r.id); else sel.delete(r.id); } sel.changed(); draw(); } })),
      ...['Name', 'Health', 'Labels', 'CPU', 'Memory', 'Disk', 'Network', 'Version', 'Platform', 'Last seen'].map((t) => h('th', { scope: 'col' }, t)))), body)),
    pager);
  fetchMetrics();

  // Live: a health change flips its row at once; counts follow (batched).
  let countsTimer = null;
  const stop = listen(async (kind, ev) => {
    if (kind === 'open') { reload(); return; }
    if (kind !== 'health') return;
    const r = rows.find((x) => x.id === ev.runner_id);
    if (r) {
      r.health = ev.health;
      const tr = body.querySelector(`tr[data-runner="${CSS.escape(r.id)}"]`);
      if (tr) {
        tr.dataset.health = ev.health;
        tr.querySelector('.cell-health').replaceChildren(healthBadge(ev.health));
      }
    }
    if (!countsTimer) countsTimer = setTimeout(() => { countsTimer = null; fetchCounts().catch(() => {}); }, 300);
  });
  const tick = setInterval(() => { fetchMetrics(); fetchAlerts().then(draw); }, METRICS_EVERY);
  return () => { clearInterval(tick); clearTimeout(countsTimer); stop(); };
});
