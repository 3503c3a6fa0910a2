// Alerts: what fires now (acknowledge it), the rules (list, add with a live
// preview of the runners their scope covers, remove), the history of state
// changes, silences, and the notification channels with their delivery log
// and a test button. Routes: #/alerts[/{tab}[/{channel id}]].
// firingCard() is the per-runner list the runner overview and the runners
// page show. The server checks every rule and refuses what is wrong with a
// message naming the field: the form only shapes the JSON.
import { h, api, act, toast, can, fmtTime, page, redraw } from './core.js';

const TABS = [['firing', 'Firing'], ['rules', 'Rules'], ['history', 'History'], ['silences', 'Silences'], ['channels', 'Channels']];

// Each kind's fields: [key, label, type, default]. `list` is comma-separated.
const KINDS = {
  unreachable: [['for_s', 'Unreachable for (s)', 'number', 60]],
  metric: [['series', 'Series (fs.*.avail, cpu.busy, ctr.*.cpu)', 'text', 'cpu.busy'],
    ['per', 'Per series (a percentage; optional)', 'text', ''],
    ['op', 'Fires when', 'op', 'above'], ['threshold', 'Threshold', 'number', 90],
    ['resolve', 'Resolves past (optional, hysteresis)', 'number', ''], ['for_s', 'For (s)', 'number', 300]],
  container_stopped: [['quiet_s', 'Quiet after (s)', 'number', 300]],
  container_exit_nonzero: [['quiet_s', 'Quiet after (s)', 'number', 300]],
  container_unhealthy: [],
  container_restarts: [['count', 'More than (restarts)', 'number', 3], ['within_s', 'Within (s)', 'number', 600]],
  drift: [['paths', 'Paths (listening, firewall, kernel; all if empty)', 'list', 'listening'], ['quiet_s', 'Quiet after (s)', 'number', 300]],
  job_failed: [['scripts', 'Scripts (all if empty)', 'list', '']],
  deploy_failed: [['apps', 'Apps (all if empty)', 'list', '']],
  update_failed: [],
  log_match: [['pattern', 'Pattern (a substring)', 'text', 'ERROR'], ['quiet_s', 'Quiet after (s)', 'number', 300]],
};

const CHANNEL_KINDS = {
  webhook: [['url', 'URL'], ['secret', 'HMAC secret (optional)', 'password']],
  slack: [['url', 'Incoming webhook URL']],
  discord: [['url', 'Webhook URL']],
  teams: [['url', 'Webhook URL']],
  ntfy: [['url', 'Topic URL'], ['token', 'Token (optional)', 'password']],
  email: [['host', 'SMTP host'], ['port', 'Port', 'number'], ['username', 'User (optional)'],
    ['password', 'Password (optional)', 'password'], ['from', 'From'], ['to', 'To (comma-separated)']],
};

const scopeText = (s) => (typeof s === 'string' ? s : Object.entries(s).map(([k, v]) => `${k} ${v}`).join(''));
const stateBadge = (s) => h('span', { class: `alert-state alert-${s}`, dataset: { state: s } }, s);
const table = (heads, rows, attrs = {}) => h('div', { class: 'scroll' }, h('table', attrs,
  h('thead', {}, h('tr', {}, ...heads.map((t) => h('th', { scope: 'col' }, t)))), h('tbody', {}, rows)));

/** Firing and pending alerts of one runner (or all), with an Ack button. */
function alertRows(alerts, rules, runners) {
  const ruleName = (id) => rules.find((r) => r.id === id)?.name || id;
  return alerts.map((a) => h('tr', { dataset: { alert: a.target, rule: ruleName(a.rule_id) } },
    h('td', {}, stateBadge(a.state)), h('td', {}, ruleName(a.rule_id)),
    h('td', {}, h('a', { href: `#/runner/${a.runner_id}` }, runners.get(a.runner_id)?.name || a.runner_id)),
    h('td', {}, a.summary), h('td', {}, fmtTime(a.since_ms)),
    h('td', { class: 'ack' }, a.ack ? `acknowledged by ${a.ack.by} ${fmtTime(a.ack.at_ms)}${a.ack.comment ? `: ${a.ack.comment}` : ''}`
      : (a.state === 'firing' && can.act() ? h('button', { type: 'button', onclick: () => act(async () => {
        const comment = prompt(`Acknowledge "${a.summary}"? A comment (optional):`);
        if (comment === null) return;
        await api('POST', '/api/v1/alerts/ack', { rule_id: a.rule_id, target: a.target, comment });
        toast('Acknowledged');
        redraw();
      }) }, 'Acknowledge') : ''))));
}

const ALERT_HEADS = ['State', 'Rule', 'Runner', 'Summary', 'Since', 'Acknowledged'];

/** The runners page's and a runner's list of firing alerts (`runnerId` narrows it).
 *  `alerts`: what the caller already fetched (the runners page, for its markers,
 *  every 5 s), so they are not asked for twice. Rules (their names) only when
 *  something is firing. */
export async function firingCard(runners, runnerId, alerts) {
  alerts ??= (await api('GET', '/api/v1/alerts')).alerts;
  const mine = alerts.filter((a) => a.state === 'firing' && (!runnerId || a.runner_id === runnerId));
  const rules = mine.length ? (await api('GET', '/api/v1/alerts/rules')).rules : [];
  const card = h('section', { class: 'card', id: 'firing-alerts', 'aria-label': 'Firing alerts', dataset: { count: mine.length } },
    h('h2', {}, `Firing alerts (${mine.length})`));
  if (!mine.length) card.append(h('p', { class: 'muted' }, 'Nothing is firing. ', h('a', { href: '#/alerts/rules' }, 'Alert rules')));
  else card.append(table(ALERT_HEADS, alertRows(mine, rules, runners)));
  return card;
}

async function runnerMap() {
  const list = await api('GET', '/api/v1/runners');
  return new Map(list.map((r) => [r.id, r]));
}

page('alerts', async (view, tab = 'firing', extra) => {
  const body = h('section', { 'aria-label': tab });
  view.replaceChildren(h('h1', {}, 'Alerts'),
    h('nav', { class: 'tabs', 'aria-label': 'Alerts' }, ...TABS.map(([t, label]) =>
      h('a', { href: `#/alerts/${t}`, 'aria-current': t === tab ? 'page' : false }, label))),
    body);
  const fn = { firing, rules, history, silences, channels }[tab] || firing;
  return fn(body, extra);
});

async function firing(body) {
  const [runners, { alerts }, { rules: rs }] = await Promise.all([runnerMap(), api('GET', '/api/v1/alerts'), api('GET', '/api/v1/alerts/rules')]);
  body.append(alerts.length ? table(ALERT_HEADS, alertRows(alerts, rs, runners), { id: 'alert-list' })
    : h('p', { class: 'muted', id: 'alert-list' }, 'Nothing is firing or pending.'));
  // Alerts change as data arrives: look again now and then.
  const tick = setInterval(() => redraw(), 15000);
  return () => clearInterval(tick);
}

// ---- rules --------------------------------------------------------------------------

async function rules(body) {
  const [{ rules: rs }, { channels: chs }] = await Promise.all([api('GET', '/api/v1/alerts/rules'), api('GET', '/api/v1/alerts/channels')]);
  const chName = (id) => chs.find((c) => c.id === id)?.name || id;
  const rows = rs.map((r) => h('tr', { dataset: { rule: r.name } },
    h('td', {}, r.name), h('td', {}, r.kind), h('td', {}, scopeText(r.scope)),
    h('td', {}, r.channels.map(chName).join(', ') || '—'), h('td', {}, r.enabled ? 'yes' : 'no'),
    h('td', {}, can.act() ? h('button', { type: 'button', class: 'danger', onclick: () => act(async () => {
      if (!confirm(`Remove alert rule ${r.name}?`)) return;
      await api('DELETE', `/api/v1/alerts/rules/${encodeURIComponent(r.id)}`);
      toast(`Removed ${r.name}`);
      redraw();
    }) }, 'Remove') : '')));
  if (!rs.length) rows.push(h('tr', {}, h('td', { colspan: 6 }, 'No alert rules yet.')));
  body.append(table(['Name', 'Kind', 'Scope', 'Channels', 'Enabled', ''], rows, { id: 'rule-list' }));
  if (can.act()) body.append(ruleForm(chs));
}

function ruleForm(chs) {
  const name = h('input', { name: 'name', required: true, maxlength: 200 });
  const kind = h('select', { name: 'kind', 'aria-label': 'Kind' }, ...Object.keys(KINDS).map((k) => h('option', { value: k }, k.replaceAll('_', ' '))));
  const fields = h('div', { class: 'row' });
  let inputs = {};
  const drawFields = () => {
    inputs = {};
    fields.replaceChildren(...KINDS[kind.value].map(([key, label, type, dflt]) => {
      const el = type === 'op'
        ? h('select', { name: key }, h('option', { value: 'above' }, 'above'), h('option', { value: 'below' }, 'below'))
        : h('input', { name: key, type: type === 'number' ? 'number' : 'text', step: 'any', value: dflt });
      inputs[key] = [el, type];
      return h('label', {}, h('span', {}, label), el);
    }));
  };
  kind.addEventListener('change', drawFields);
  drawFields();
  const scopeKind = h('select', { name: 'scope', 'aria-label': 'Scope' },
    ...[['all', 'all runners'], ['selector', 'label selector'], ['group', 'update group'], ['runner', 'one runner']].map(([v, t]) => h('option', { value: v }, t)));
  const scopeValue = h('input', { name: 'scope-value', 'aria-label': 'Scope value', placeholder: 'env=prod,!canary', hidden: true });
  const ctrName = h('input', { name: 'containers', placeholder: 'web-* (optional)' });
  const boxes = chs.map((c) => h('label', { class: 'row' }, h('input', { type: 'checkbox', value: c.id, 'aria-label': `Notify ${c.name}` }), `${c.name} (${c.kind})`));
  const preview = h('div', { id: 'scope-preview', role: 'status', 'aria-live': 'polite' });
  const scope = () => (scopeKind.value === 'all' ? 'all' : { [scopeKind.value]: scopeValue.value.trim() });
  // The live preview: which runners the scope covers now (the server
  // judges, as the engine would), asked again a moment after each change.
  let timer = null;
  let asked = 0;
  const ask = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const n = ++asked;
      scopeValue.hidden = scopeKind.value === 'all';
      try {
        const p = await api('POST', '/api/v1/alerts/preview', { scope: scope() });
        if (n !== asked) return;
        preview.dataset.matched = p.matched;
        preview.className = 'muted';
        preview.replaceChildren(h('span', {}, `Covers ${p.matched} of ${p.checked} runners${p.truncated ? ' (the first ones only)' : ''}`,
          p.matched ? ': ' : '.'), ...p.runners.map((r, i) => h('span', { dataset: { preview: r.id } }, i ? ', ' : '', r.name)));
      } catch (e) {
        if (n !== asked) return;
        delete preview.dataset.matched;
        preview.className = 'error';
        preview.textContent = e.message;
      }
    }, 250);
  };
  scopeKind.addEventListener('change', ask);
  scopeValue.addEventListener('input', ask);
  ask();
  const form = h('form', { class: 'card', 'aria-label': 'Add an alert rule' },
    h('h2', {}, 'Add a rule'),
    h('label', {}, h('span', {}, 'Name'), name),
    h('label', {}, h('span', {}, 'Kind'), kind), fields,
    h('div', { class: 'row' }, h('label', {}, h('span', {}, 'Scope'), scopeKind), h('label', {}, h('span', {}, ' '), scopeValue)),
    preview,
    h('label', {}, h('span', {}, 'Containers by name'), ctrName),
    h('fieldset', {}, h('legend', {}, 'Notify'), ...(boxes.length ? boxes : [h('p', { class: 'muted' }, 'No channels yet: the rule is only recorded. ', h('a', { href: '#/alerts/channels' }, 'Add one'))])),
    h('button', { class: 'primary', type: 'submit' }, 'Add rule'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const spec = { name: name.value.trim(), kind: kind.value, scope: scope(), channels: boxes.map((b) => b.querySelector('input')).filter((i) => i.checked).map((i) => i.value) };
    for (const [key, [el, type]] of Object.entries(inputs)) {
      const v = el.value.trim();
      if (type === 'list') spec[key] = v ? v.split(',').map((s) => s.trim()).filter((s) => s) : [];
      else if (v === '') continue;
      else spec[key] = type === 'number' ? Number(v) : v;
    }
    if (ctrName.value.trim()) spec.containers = { name: ctrName.value.trim() };
    act(async () => {
      await api('POST', '/api/v1/alerts/rules', spec);
      toast(`Added ${spec.name}`);
      redraw();
    });
  });
  return form;
}

// ---- history ------------------------------------------------------------------------

async function history(body) {
  const [runners, { history: rows }] = await Promise.all([runnerMap(), api('GET', '/api/v1/alerts/history?limit=200')]);
  body.append(rows.length ? table(['When', 'State', 'Runner', 'Summary', ''], rows.map((x) => h('tr', { dataset: { seq: x.seq } },
    h('td', {}, fmtTime(x.at_ms)), h('td', {}, stateBadge(x.state)),
    h('td', {}, runners.get(x.runner_id)?.name || x.runner_id), h('td', {}, x.summary),
    h('td', {}, x.silenced ? h('span', { class: 'muted' }, 'silenced (not sent)') : ''))), { id: 'alert-history' })
    : h('p', { class: 'muted', id: 'alert-history' }, 'No alert has changed state yet.'));
}

// ---- silences -----------------------------------------------------------------------

async function silences(body) {
  const [runners, { silences: ss }, { rules: rs }] = await Promise.all([runnerMap(), api('GET', '/api/v1/alerts/silences'), api('GET', '/api/v1/alerts/rules')]);
  const what = (s) => [s.rule && `rule ${rs.find((r) => r.id === s.rule)?.name || s.rule}`,
    s.runner && `runner ${runners.get(s.runner)?.name || s.runner}`, s.group && `group ${s.group}`].filter((x) => x).join(', ');
  const rows = ss.map((s) => h('tr', { dataset: { silence: s.id } },
    h('td', {}, s.maintenance ? 'maintenance' : 'silence'), h('td', {}, what(s)),
    h('td', {}, `${fmtTime(s.starts_ms)} – ${fmtTime(s.ends_ms)}`), h('td', {}, s.comment), h('td', {}, s.created_by),
    h('td', {}, can.act() ? h('button', { type: 'button', class: 'danger', onclick: () => act(async () => {
      await api('DELETE', `/api/v1/alerts/silences/${encodeURIComponent(s.id)}`);
      redraw();
    }) }, 'End') : '')));
  if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 6 }, 'No silences.')));
  body.append(table(['Kind', 'What', 'When', 'Comment', 'By', ''], rows, { id: 'silence-list' }));
  if (!can.act()) return;
  const rule = h('select', { name: 'rule', 'aria-label': 'Silence rule' }, h('option', { value: '' }, 'any rule'), ...rs.map((r) => h('option', { value: r.id }, r.name)));
  const runner = h('select', { name: 'runner', 'aria-label': 'Silence runner' }, h('option', { value: '' }, 'any runner'),
    ...[...runners.values()].map((r) => h('option', { value: r.id }, r.name)));
  const group = h('input', { name: 'group', 'aria-label': 'Silence group', placeholder: 'any group' });
  const hours = h('select', { name: 'hours', 'aria-label': 'Silence for' }, ...[['1', '1 hour'], ['4', '4 hours'], ['24', '1 day'], ['168', '1 week']].map(([v, t]) => h('option', { value: v }, t)));
  const comment = h('input', { name: 'comment', 'aria-label': 'Silence comment', maxlength: 200 });
  const maintenance = h('input', { type: 'checkbox', name: 'maintenance', 'aria-label': 'Maintenance window' });
  const form = h('form', { class: 'card', 'aria-label': 'Add a silence' }, h('h2', {}, 'Silence'),
    h('div', { class: 'row' }, rule, runner, group, hours),
    h('label', {}, h('span', {}, 'Comment'), comment),
    h('label', { class: 'row' }, maintenance, 'A maintenance window of the group'),
    h('button', { class: 'primary', type: 'submit' }, 'Silence'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const now = Date.now();
    const s = { starts_ms: now, ends_ms: now + Number(hours.value) * 3600000, comment: comment.value, maintenance: maintenance.checked };
    if (rule.value) s.rule = rule.value;
    if (runner.value) s.runner = runner.value;
    if (group.value.trim()) s.group = group.value.trim();
    act(async () => { await api('POST', '/api/v1/alerts/silences', s); toast('Silenced'); redraw(); });
  });
  body.append(form);
}

// ---- channels -----------------------------------------------------------------------

async function channels(body, selected) {
  const { channels: chs } = await api('GET', '/api/v1/alerts/channels');
  const target = (c) => Object.entries(c.target || {}).map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(', ') : v}`).join(' · ');
  const rows = chs.map((c) => h('tr', { dataset: { channel: c.name } },
    h('td', {}, h('a', { href: `#/alerts/channels/${c.id}` }, c.name)), h('td', {}, c.kind), h('td', {}, target(c)),
    h('td', {}, can.act() ? h('button', { type: 'button', onclick: () => act(async () => {
      await api('POST', `/api/v1/alerts/channels/${encodeURIComponent(c.id)}/test`);
      toast(`Test message queued for ${c.name}`);
      if (selected === c.id) setTimeout(redraw, 1500); else location.hash = `#/alerts/channels/${c.id}`;
    }) }, 'Send test') : '',
    can.admin() ? h('button', { type: 'button', class: 'danger', onclick: () => act(async () => {
      if (!confirm(`Remove channel ${c.name}?`)) return;
      await api('DELETE', `/api/v1/alerts/channels/${encodeURIComponent(c.id)}`);
      location.hash = '#/alerts/channels';
    }) }, 'Remove') : '')));
  if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 4 }, 'No channels yet.')));
  body.append(table(['Name', 'Kind', 'Target', ''], rows, { id: 'channel-list' }));
  const ch = chs.find((c) => c.id === selected);
  if (ch) {
    const { deliveries } = await api('GET', `/api/v1/alerts/channels/${encodeURIComponent(ch.id)}/deliveries?limit=100`);
    body.append(h('section', { class: 'card', id: 'deliveries', 'aria-label': `Deliveries of ${ch.name}` },
      h('h2', {}, `Delivery log of ${ch.name}`),
      deliveries.length ? table(['When', 'Attempt', 'Result', 'Detail'], deliveries.map((d) => h('tr', { dataset: { ok: d.ok } },
        h('td', {}, fmtTime(d.at_ms)), h('td', {}, d.attempt), h('td', {}, d.ok ? 'delivered' : 'failed'), h('td', {}, d.detail))))
        : h('p', { class: 'muted' }, 'Nothing sent yet.')));
  }
  if (can.admin()) body.append(channelForm());
}

function channelForm() {
  const name = h('input', { name: 'name', required: true, maxlength: 200 });
  const kind = h('select', { name: 'kind', 'aria-label': 'Channel kind' }, ...Object.keys(CHANNEL_KINDS).map((k) => h('option', { value: k }, k)));
  const fields = h('div');
  let inputs = {};
  const draw = () => {
    inputs = {};
    fields.replaceChildren(...CHANNEL_KINDS[kind.value].map(([key, label, type]) => {
      const el = h('input', { name: key, type: type || 'text', autocomplete: 'off' });
      inputs[key] = [el, type];
      return h('label', {}, h('span', {}, label), el);
    }));
  };
  kind.addEventListener('change', draw);
  draw();
  const form = h('form', { class: 'card', 'aria-label': 'Add a channel' }, h('h2', {}, 'Add a channel'),
    h('label', {}, h('span', {}, 'Name'), name), h('label', {}, h('span', {}, 'Kind'), kind), fields,
    h('p', { class: 'muted' }, 'URLs, tokens and passwords are stored sealed and never shown again.'),
    h('button', { class: 'primary', type: 'submit' }, 'Add channel'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const config = { kind: kind.value };
    for (const [key, [el, type]] of Object.entries(inputs)) {
      const v = el.value.trim();
      if (!v) continue;
      config[key] = key === 'to' ? v.split(',').map((s) => s.trim()).filter((s) => s) : type === 'number' ? Number(v) : v;
    }
    act(async () => { await api('POST', '/api/v1/alerts/channels', { name: name.value.trim(), config }); toast(`Added ${name.value}`); redraw(); });
  });
  return form;
}
