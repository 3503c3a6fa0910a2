// One runner: overview (its firing alerts, health, update state), metrics charts, fingerprint
// and drift, containers with their actions, and the live log viewer.
// The terminal tab lives in terminal.js, the update actions in updates.js.
// Route: #/runner/{id}/{tab}[/{container}].
import { h, api, act, toast, can, fmtTime, ago, healthBadge, listen, page, ndjson, signedHint } from './core.js';
import { appendAnsi } from './ansi.js';
import { terminal } from './terminal.js';
import { updateCard } from './updates.js';
import { firingCard } from './alerts.js';
import { keyCard, signContainer, signPrune } from './signing.js';

const TABS = [['overview', 'Overview'], ['metrics', 'Metrics'], ['fingerprint', 'Fingerprint'],
  ['containers', 'Containers'], ['logs', 'Logs'], ['terminal', 'Terminal']];

page('runner', async (view, id, tab = 'overview', extra) => {
  const r = await api('GET', `/api/v1/runners/${encodeURIComponent(id)}`);
  const badge = h('span', {}, healthBadge(r.health));
  const body = h('section', { 'aria-label': tab });
  view.replaceChildren(
    h('h1', {}, r.name, r.reported_name && r.reported_name !== r.name
      ? h('span', { class: 'muted', title: 'the name this host reports for itself' }, ` (reports ${r.reported_name})`) : '', ' ', badge),
    h('nav', { class: 'tabs', 'aria-label': 'Runner' }, ...TABS.map(([t, label]) =>
      h('a', { href: `#/runner/${id}/${t}`, 'aria-current': t === tab ? 'page' : false }, label))),
    body);
  const stop = listen(async (kind, ev) => {
    if (kind === 'health' && ev.runner_id === id) badge.replaceChildren(healthBadge(ev.health));
    if (kind === 'open') {
      const fresh = await api('GET', `/api/v1/runners/${encodeURIComponent(id)}`).catch(() => null);
      if (fresh) badge.replaceChildren(healthBadge(fresh.health));
    }
  });
  const fn = { overview, metrics, fingerprint, containers, logs, terminal }[tab] || overview;
  const done = await fn(body, r, extra);
  return () => { stop(); if (typeof done === 'function') done(); };
});

function kv(pairs) {
  return h('table', {}, h('tbody', {}, ...pairs.map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, v ?? '—')))));
}

// ---- overview: facts, health history, update state ---------------------------------

async function overview(body, r) {
  const [health, updates, alerts] = await Promise.all([
    api('GET', `/api/v1/runners/${r.id}/health`),
    updateCard(r),
    firingCard(new Map([[r.id, r]]), r.id).catch((e) => h('p', { class: 'error' }, `Alerts: ${e.message}`)),
  ]);
  body.append(alerts, h('div', { class: 'grid' },
    h('div', { class: 'card' }, h('h2', {}, 'Runner'), kv([
      ['ID', r.id], ['Version', r.version], ['Platform', `${r.os}/${r.arch}`],
      ['Last seen', r.health === 'active' ? 'now' : ago(r.last_seen)],
      ['Connected since', fmtTime(r.connected_since)], ['Enrolled', fmtTime(r.created_at)]])),
    updates),
  h('h2', {}, 'Health history'),
  h('div', { class: 'scroll' }, h('table', {}, h('tbody', {}, ...health.slice(-20).reverse().map((e) =>
    h('tr', {}, h('td', {}, fmtTime(e.at)), h('td', {}, healthBadge(e.health)), h('td', {}, e.reason)))))));
}

// ---- metrics ----------------------------------------------------------------------------

let uplotLoad = null;
function loadUplot() {
  uplotLoad ??= new Promise((resolve) => {
    const s = h('script', { src: '/ui/vendor/uPlot.iife.min.js' });
    s.onload = () => resolve(window.uPlot);
    s.onerror = () => resolve(null);
    document.head.append(s);
  });
  return uplotLoad;
}

const CHARTS = [
  { title: 'CPU busy (%)', pick: (n) => n === 'cpu.busy' },
  { title: 'Memory (MiB)', pick: (n) => n === 'mem.used' || n === 'mem.total', scale: 1 / 1048576 },
  { title: 'Disk used (GiB)', pick: (n) => /^fs\..+\.used$/.test(n), scale: 1 / 1073741824 },
  { title: 'Network IPv4 (bytes/s)', pick: (n) => n === 'ip4.in_bps' || n === 'ip4.out_bps' },
  { title: 'Network IPv6 (bytes/s)', pick: (n) => n === 'ip6.in_bps' || n === 'ip6.out_bps' },
];
const PALETTE = ['#0b57d0', '#b00020', '#0a6b2d', '#8a5300', '#6a1b9a', '#00695c'];

async function metrics(body, r) {
  const range = h('select', { 'aria-label': 'Range' },
    ...['15m', '1h', '6h', '24h', '7d', '30d'].map((v) => h('option', { value: v, selected: v === '1h' }, `last ${v}`)));
  const grid = h('div', { class: 'grid' });
  body.append(h('div', { class: 'row' }, h('label', {}, h('span', {}, 'Range'), range)), grid);
  const U = await loadUplot();
  let plots = [];
  const draw = async () => {
    const m = await api('GET', `/api/v1/runners/${r.id}/metrics?since=${range.value}&series=cpu.busy,mem.used,mem.total,fs.*,ip4.*,ip6.*`);
    for (const p of plots) p.destroy();
    plots = [];
    const todo = [];
    grid.replaceChildren(...CHARTS.map((c) => {
      const series = m.series.filter((s) => c.pick(s.name));
      const card = h('div', { class: 'card chart', dataset: { chart: c.title } }, h('h2', {}, c.title));
      const latest = series.map((s) => `${s.name}: ${fmt((s.points.at(-1)?.[1] ?? NaN) * (c.scale || 1))}`).join(' · ');
      card.append(h('p', { class: 'muted' }, series.length ? latest : 'No samples in this range.'));
      if (!U) card.append(h('p', { class: 'error' }, 'Chart library not built into this server (run make web).'));
      else if (series.length) todo.push([c, series, card]);
      return card;
    }));
    // Plots are sized to their card, so they are made once the cards are laid out.
    for (const [c, series, card] of todo) {
      // One shared time axis: the union of every series' timestamps.
      const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
      const data = [xs.map((t) => t / 1000), ...series.map((s) => {
        const byT = new Map(s.points.map((p) => [p[0], p[1] * (c.scale || 1)]));
        return xs.map((t) => byT.get(t) ?? null);
      })];
      const width = Math.max(240, card.clientWidth - 28);
      plots.push(new U({
        width, height: 180,
        axes: [{}, { size: 60, values: (u, vals) => vals.map(short) }],
        series: [{}, ...series.map((s, i) => ({ label: s.name, stroke: PALETTE[i % PALETTE.length], width: 1.5, value: (u, v) => fmt(v) }))],
      }, data, card));
    }
  };
  range.addEventListener('change', () => act(draw));
  await draw();
  // Live: redraw as samples arrive (the heartbeat is seconds, not faster).
  const tick = setInterval(() => act(draw), 10000);
  return () => { clearInterval(tick); for (const p of plots) p.destroy(); };
}

/** Axis labels: 1.2k, 3.4M. */
function short(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(1)}`;
}

function fmt(v) {
  if (!Number.isFinite(v)) return '—';
  return Math.abs(v) >= 100 ? Math.round(v).toLocaleString() : v.toFixed(1);
}

// ---- fingerprint and drift -------------------------------------------------------------------

async function fingerprint(body, r) {
  const [fp, drift] = await Promise.all([
    api('GET', `/api/v1/runners/${r.id}/fingerprint`).catch((e) => ({ error: e.message })),
    api('GET', `/api/v1/runners/${r.id}/drift?since=90d`).catch(() => []),
  ]);
  const pre = h('pre', { id: 'fingerprint' });
  pre.textContent = fp.error ? fp.error : JSON.stringify(fp, null, 2);
  body.append(h('h2', {}, 'Drift (newest first)'),
    drift.length ? h('div', { class: 'scroll' }, h('table', { id: 'drift' }, h('tbody', {}, ...drift.slice().reverse().map((d) =>
      h('tr', {}, h('td', {}, fmtTime(d.at)), h('td', {}, d.text)))))) : h('p', { class: 'muted' }, 'No changes since the baseline.'),
    h('h2', {}, 'Current fingerprint'), pre);
}

// ---- containers -----------------------------------------------------------------------------

async function containers(body, r) {
  const table = h('tbody');
  const status = h('p', { class: 'muted' });
  const base = `/api/v1/runners/${r.id}/containers`;
  const load = async () => {
    // Live through the runner when it is connected, else the server's cached view.
    const cached = r.health !== 'active';
    const c = await api('GET', `${base}${cached ? '?cached=true' : ''}`)
      .catch((e) => { status.textContent = e.message; return null; });
    if (!c) return;
    status.textContent = c.cached ? `Cached view as of ${fmtTime(c.as_of)} (runner offline).` : '';
    table.replaceChildren(...c.containers.map((x) => {
      const name = x.name;
      // `op` and `params`: the docker_request the server makes of the call,
      // signed in the page when a key is loaded (signing.js).
      const btn = (label, method, op, params, confirmText, cls) => h('button', {
        type: 'button', class: cls || '', disabled: !can.act(),
        onclick: () => act(async () => {
          if (confirmText && !confirm(confirmText)) return;
          try {
            const q = new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)]));
            const signed = await signContainer(r.id, op, name, params);
            const query = [q.toString(), signed].filter(Boolean).join('&');
            const path = op === 'remove' ? '' : `/${op}`;
            await api(method, `${base}/${encodeURIComponent(name)}${path}${query ? `?${query}` : ''}`);
          } catch (e) {
            // A host requiring signed container operations: the CLI command.
            const cmd = label === 'Remove'
              ? `tether-server container rm ${r.id} ${name} --force`
              : `tether-server container ${label.toLowerCase()} ${r.id} ${name}`;
            e.message += signedHint(e, cmd);
            throw e;
          }
          toast(`${label}: ${name}`);
          await load();
        }) }, label);
      return h('tr', { dataset: { container: name } },
        h('td', {}, h('a', { href: `#/runner/${r.id}/logs/${encodeURIComponent(name)}` }, name)),
        h('td', {}, x.image), h('td', {}, x.state), h('td', {}, x.status),
        h('td', { class: 'row' },
          btn('Start', 'POST', 'start', {}), btn('Stop', 'POST', 'stop', {}), btn('Restart', 'POST', 'restart', {}),
          btn('Remove', 'DELETE', 'remove', { force: true }, `Remove container ${name}? Its data goes with it.`, 'danger'),
          x.state === 'running' && can.act() ? h('a', { href: `#/runner/${r.id}/terminal/${encodeURIComponent(name)}` }, 'Terminal') : null));
    }));
    if (!c.containers.length) table.append(h('tr', {}, h('td', { colspan: 5 }, 'No containers.')));
  };
  const prune = h('button', { type: 'button', class: 'danger', disabled: !can.act(), onclick: () => act(async () => {
    if (!confirm('Remove every stopped container on this host?')) return;
    const res = await api('POST', `${base}/prune`, { ...await signPrune(r.id) }).catch((e) => {
      e.message += signedHint(e, `tether-server prune ${r.id}`);
      throw e;
    });
    toast(`Pruned ${(res.ContainersDeleted || []).length} containers`);
    await load();
  }) }, 'Prune stopped');
  body.append(...(can.act() ? [keyCard()] : []), h('div', { class: 'row' }, prune), status,
    h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, ...['Name', 'Image', 'State', 'Status', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))), table)));
  await load();
  let pending = null;
  return listen((kind, ev) => {
    // Container events arrive live; coalesce a burst into one reload.
    if (kind === 'container' && ev.runner_id === r.id && !pending) pending = setTimeout(() => { pending = null; load(); }, 300);
  });
}

// ---- logs -------------------------------------------------------------------------------------

async function logs(body, r, container) {
  const list = await api('GET', `/api/v1/runners/${r.id}/containers?cached=true`).catch(() => ({ containers: [] }));
  const pick = h('select', { 'aria-label': 'Container' }, h('option', { value: '' }, '— container —'),
    ...list.containers.map((c) => h('option', { value: c.name, selected: c.name === container }, c.name)));
  pick.addEventListener('change', () => { location.hash = `#/runner/${r.id}/logs/${encodeURIComponent(pick.value)}`; });
  const since = h('select', { 'aria-label': 'Since' }, ...['10m', '1h', '6h', '24h', '7d'].map((v) => h('option', { value: v, selected: v === '1h' }, `last ${v}`)));
  const search = h('input', { type: 'search', placeholder: 'Search', 'aria-label': 'Search' });
  const follow = h('input', { type: 'checkbox', checked: true, id: 'follow' });
  const out = h('div', { class: 'log', id: 'log', role: 'log', 'aria-live': 'off', tabindex: '0' });
  body.append(h('div', { class: 'row' }, pick, since, search, h('label', { for: 'follow' }, follow, ' Follow')), out);
  if (!container) { out.textContent = 'Choose a container.'; return undefined; }
  let ctl = null;
  const run = async () => {
    if (ctl) ctl.abort();
    ctl = new AbortController();
    out.replaceChildren();
    const q = search.value.trim();
    const base = `/api/v1/runners/${r.id}/containers/${encodeURIComponent(container)}/logs`;
    const params = new URLSearchParams({ since: since.value });
    if (q) params.set('q', q);
    let last = null;
    const add = (l) => {
      if (l.end) { out.append(h('div', { class: 'muted' }, `— ${l.end} —`)); return; }
      // The live tail starts at the last stored line's time: skip what was shown.
      if (last && l.ts_ns <= last.ts_ns) return;
      last = l;
      const row = h('div', { class: l.stream === 'stderr' ? 'stderr' : '' });
      appendAnsi(row, l.line, q.toLowerCase());
      out.append(row);
      // Bounded: the page keeps the newest 5,000 lines.
      while (out.childElementCount > 5000) out.firstChild.remove();
      if (follow.checked) out.scrollTop = out.scrollHeight;
    };
    try {
      // History first, then live from the last line shown: no gap, no repeat.
      await ndjson(`${base}?${params}`, add, ctl.signal);
      if (follow.checked) {
        const live = new URLSearchParams(last ? { follow: '1', since: last.ts } : { follow: '1', tail: '0' });
        if (q) live.set('q', q);
        await ndjson(`${base}?${live}`, add, ctl.signal);
      }
    } catch (e) {
      if (e.name !== 'AbortError') out.append(h('div', { class: 'stderr' }, e.message));
    }
  };
  for (const el of [since, follow]) el.addEventListener('change', run);
  search.addEventListener('keydown', (e) => { if (e.key === 'Enter') run(); });
  run();
  return () => ctl && ctl.abort();
}


