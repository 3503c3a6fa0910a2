// The update card of a runner's overview: what it runs, what it should run,
// its reports, and for operators the two levers the API has: the runner's
// group, and the desired version of that group (or of the whole tenant)
// with a canary share. Setting a version tells connected runners at once;
// each one verifies the release's signature itself.
import { h, api, act, toast, can, fmtTime, redraw } from './core.js';

function kv(pairs) {
  return h('table', {}, h('tbody', {}, ...pairs.map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, v ?? '—')))));
}

export async function updateCard(r) {
  const [u, policies, releases] = await Promise.all([
    api('GET', `/api/v1/runners/${r.id}/updates`).catch(() => null),
    api('GET', '/api/v1/update-policy').catch(() => []),
    api('GET', '/api/v1/releases').catch(() => []),
  ]);
  const card = h('div', { class: 'card', id: 'update-state' }, h('h2', {}, 'Updates'));
  if (!u) return card.append(h('p', { class: 'muted' }, 'Update state unavailable.')), card;
  const policy = policies.find((p) => p.group === (u.group || ''));
  card.append(kv([['Running', u.version], ['Desired', u.desired || 'none set'], ['Group', u.group || '(tenant-wide)'],
    ['Policy', policy ? `${policy.version} to ${policy.canary_percent}% of ${policy.group || 'the tenant'}` : 'none']]),
  u.reports.length ? h('table', {}, h('tbody', {}, ...u.reports.slice(-10).reverse().map((x) =>
    h('tr', {}, h('td', {}, fmtTime(x.at)), h('td', {}, x.state), h('td', {}, `${x.from_version} → ${x.version}`), h('td', {}, x.reason || ''))))) : h('p', { class: 'muted' }, 'No update reports.'));
  if (can.act()) card.append(groupForm(r, u), policyForm(u, policy, releases));
  return card;
}

function groupForm(r, u) {
  const group = h('input', { name: 'group', value: u.group || '', maxlength: 64, placeholder: 'none' });
  const form = h('form', { 'aria-label': 'Update group' },
    h('div', { class: 'row' }, h('label', {}, h('span', {}, 'Group'), group), h('button', { type: 'submit' }, 'Set group')));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    act(async () => {
      await api('PUT', `/api/v1/runners/${r.id}/group`, { group: group.value.trim() });
      toast(`Group set to ${group.value.trim() || 'none'}`);
      redraw();
    });
  });
  return form;
}

function policyForm(u, policy, releases) {
  const scope = u.group ? `group ${u.group}` : 'the whole tenant';
  const version = h('select', { name: 'version', 'aria-label': 'Desired version' },
    ...releases.map((rel) => h('option', { value: rel.version, selected: rel.version === policy?.version }, rel.version)));
  const canary = h('input', { name: 'canary', type: 'number', min: 0, max: 100, value: policy?.canary_percent ?? 100 });
  const send = (v) => act(async () => {
    const what = v ? `${v} for ${canary.value}% of ${scope}` : `no desired version for ${scope}`;
    if (!confirm(`Set ${what}?`)) return;
    await api('PUT', '/api/v1/update-policy', { version: v, canary_percent: Number(canary.value), group: u.group || '' });
    toast(`Set ${what}`);
    redraw();
  });
  const form = h('form', { 'aria-label': 'Desired version' },
    h('p', { class: 'muted' }, `Desired version for ${scope}; the canary share picks the same runners every time.`),
    releases.length ? h('div', { class: 'row' },
      h('label', {}, h('span', {}, 'Version'), version),
      h('label', {}, h('span', {}, 'Canary (%)'), canary),
      h('button', { type: 'submit' }, 'Set desired version'),
      policy ? h('button', { type: 'button', class: 'danger', onclick: () => send(null) }, 'Clear') : null)
      : h('p', { class: 'muted' }, 'No releases uploaded to this server.'));
  form.addEventListener('submit', (e) => { e.preventDefault(); send(version.value); });
  return form;
}
