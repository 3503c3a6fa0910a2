// Terminal recordings and the audit trail (issue 19).
//
//   #/recordings        sessions with a recording, newest first
//   #/recording/{id}    replay with asciinema-player (from npm, vendored by
//                       build.sh), and the .cast download
//   #/audit             the audit trail: filters (actor, action, target,
//                       since, until), pages of 50 oldest first (the API's
//                       order, paged with `after`), the NDJSON export link
//
// The player fetches the .cast itself (same origin: the session cookie
// goes with it). A viewer sees recordings only if the tenant allows it;
// the server says so with a 403, shown as the page's error.
import { h, api, fmtTime, page } from './core.js';

let player = null;
/** The player's script and stylesheet, added once; null when not built in. */
function loadPlayer() {
  player ??= new Promise((resolve) => {
    if (window.AsciinemaPlayer) { resolve(window.AsciinemaPlayer); return; }
    document.head.append(h('link', { rel: 'stylesheet', href: '/ui/vendor/asciinema-player.css' }));
    const s = h('script', { src: '/ui/vendor/asciinema-player.min.js' });
    s.addEventListener('load', () => resolve(window.AsciinemaPlayer || null));
    s.addEventListener('error', () => resolve(null));
    document.head.append(s);
  });
  return player;
}

const size = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);

page('recordings', async (view) => {
  const list = await api('GET', '/api/v1/recordings?limit=200');
  const rows = list.map((r) => h('tr', { dataset: { recording: r.id } },
    h('td', {}, h('a', { href: `#/recording/${r.id}` }, r.id)),
    h('td', {}, h('a', { href: `#/runner/${r.runner_id}` }, r.runner_id)),
    h('td', {}, r.target), h('td', {}, r.who),
    h('td', {}, fmtTime(r.started_at)),
    h('td', {}, r.ended_at ? `${Math.round(r.duration_s)} s` : 'open'),
    h('td', {}, size(r.bytes), r.truncated ? h('span', { class: 'muted', title: 'recording stopped at the size cap; the session went on' }, ' (cap)') : '')));
  if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 7 }, 'No recordings yet: terminal sessions are recorded as they happen.')));
  view.replaceChildren(h('h1', {}, 'Terminal recordings'),
    h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {},
      ...['Session', 'Runner', 'Target', 'Who', 'Started', 'Length', 'Size'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, ...rows))));
});

page('recording', async (view, id) => {
  const r = await api('GET', `/api/v1/recordings/${encodeURIComponent(id)}`);
  const lib = await loadPlayer();
  const cast = `/api/v1/recordings/${encodeURIComponent(r.id)}/cast`;
  const box = h('div', { id: 'player', 'aria-label': `Recording of ${r.id}` });
  view.replaceChildren(h('h1', {}, `Recording ${r.id}`),
    h('p', {}, `${r.target} on `, h('a', { href: `#/runner/${r.runner_id}` }, r.runner_id), ` · ${r.who} · ${fmtTime(r.started_at)}`,
      r.ended_at ? ` · ${Math.round(r.duration_s)} s` : ' · still open',
      r.truncated ? ' · stopped at the size cap' : ''),
    h('div', { class: 'row' }, h('a', { href: cast, download: `${r.id}.cast` }, 'Download .cast'),
      h('a', { href: '#/recordings' }, 'All recordings')),
    box);
  if (!lib) {
    box.replaceChildren(h('p', { class: 'error' }, 'Player library not built into this server (run make web).'));
    return undefined;
  }
  // Long pauses are cut to 2 s: a recording of an idle shell still plays.
  const p = lib.create(cast, box, { autoPlay: true, idleTimeLimit: 2, cols: r.width, rows: r.height, fit: 'width' });
  box.player = p;
  return () => p.dispose();
});

const PAGE = 50;

page('audit', async (view) => {
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  const field = (name, label, hint) => h('label', {}, h('span', {}, label),
    h('input', { name, value: q.get(name) || '', placeholder: hint || '' }));
  const form = h('form', { class: 'row', 'aria-label': 'Filter the audit trail' },
    field('actor', 'Actor', 'token or user id, or its label'),
    field('action', 'Action', 'e.g. POST, /terminals'),
    field('target', 'Target', 'a runner id, a path'),
    field('since', 'Since', '7d, RFC 3339 or ms'),
    field('until', 'Until', 'same forms'),
    h('button', { type: 'submit', class: 'primary' }, 'Filter'));
  const filters = () => {
    const f = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) f.set(k, String(v).trim());
    return f;
  };
  const body = h('tbody');
  const status = h('p', { id: 'audit-status', role: 'status', class: 'muted' });
  const next = h('button', { type: 'button' }, 'Next page');
  const first = h('button', { type: 'button' }, 'First page');
  const exportLink = h('a', { id: 'audit-export' }, 'Export (NDJSON)');
  const load = async (after) => {
    const f = filters();
    exportLink.href = `/api/v1/audit/export?${f}`;
    f.set('limit', String(PAGE));
    if (after) f.set('after', String(after));
    const entries = await api('GET', `/api/v1/audit?${f}`).catch((e) => { status.textContent = e.message; status.className = 'error'; return null; });
    if (!entries) return;
    body.replaceChildren(...entries.map((e) => h('tr', { dataset: { seq: e.seq } },
      h('td', {}, String(e.seq)), h('td', {}, fmtTime(e.at)),
      h('td', { title: e.actor_id }, e.actor_label || e.actor_kind), h('td', {}, e.client),
      h('td', {}, e.action), h('td', {}, e.target),
      h('td', {}, String(e.result), e.detail ? ` ${e.detail}` : ''))));
    if (!entries.length) body.append(h('tr', {}, h('td', { colspan: 7 }, 'No entries match.')));
    status.className = 'muted';
    status.textContent = `${entries.length} ${entries.length === 1 ? 'entry' : 'entries'}${after ? ` after #${after}` : ''}.`;
    next.disabled = entries.length < PAGE;
    next.onclick = () => load(entries[entries.length - 1].seq);
    first.disabled = !after;
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); load(0); });
  first.addEventListener('click', () => load(0));
  view.replaceChildren(h('h1', {}, 'Audit trail'),
    h('p', { class: 'muted' }, 'Every change through the API and every action on a host, oldest first; each entry carries the hash of the one before.'),
    form, status,
    h('div', { class: 'scroll' }, h('table', { id: 'audit' }, h('thead', {}, h('tr', {},
      ...['#', 'When', 'Actor', 'Client', 'Action', 'Target', 'Result'].map((t) => h('th', { scope: 'col' }, t)))), body)),
    h('div', { class: 'row' }, first, next, exportLink));
  await load(0);
});
