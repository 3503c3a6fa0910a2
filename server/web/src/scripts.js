// Saved scripts: list, edit, run on one or many runners, and watch each
// job's output live (NDJSON follow). Routes: #/scripts[/{name}], #/job/{id}.
// With an operator key loaded (signing.js) each job is signed in the page.
import { h, api, act, toast, can, fmtTime, page, followNdjson, healthBadge } from './core.js';
import { appendAnsi } from './ansi.js';
import { keyCard, signingKey, signJob, cliRun } from './signing.js';

page('scripts', async (view, name) => {
  const [scripts, runners, jobs] = await Promise.all([
    api('GET', '/api/v1/scripts'), api('GET', '/api/v1/runners'), api('GET', '/api/v1/jobs?limit=20')]);
  const current = name ? await api('GET', `/api/v1/scripts/${encodeURIComponent(name)}`).catch(() => null) : null;
  const ro = !can.act();
  const f = {
    name: h('input', { name: 'name', required: true, value: current?.name || name || '', pattern: '[A-Za-z0-9._-]+' }),
    interpreter: h('input', { name: 'interpreter', value: current?.interpreter || '/bin/sh' }),
    timeout: h('input', { name: 'timeout', type: 'number', min: 0, value: current?.timeout_s || 0 }),
    body: h('textarea', { name: 'body', rows: 12, cols: 80, spellcheck: 'false', style: 'width:100%;font-family:monospace' }),
  };
  f.body.value = current?.body || '#!/bin/sh\necho hello from $(hostname)\n';
  const save = async () => {
    const n = f.name.value.trim();
    await api('PUT', `/api/v1/scripts/${encodeURIComponent(n)}`, { body: f.body.value, interpreter: f.interpreter.value || undefined, timeout_s: Number(f.timeout.value) || undefined });
    toast(`Saved ${n}`);
    return n;
  };
  const picks = runners.map((r) => h('label', { class: 'row' },
    h('input', { type: 'checkbox', value: r.id, checked: runners.length === 1, 'aria-label': `Run on ${r.name}` }), r.name, ' ', healthBadge(r.health)));
  const outputs = h('div', { id: 'job-outputs' });
  const run = () => act(async () => {
    const n = await save();
    const ids = picks.map((p) => p.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
    if (!ids.length) { toast('Choose at least one runner', true); return; }
    const body = { runners: ids, script: n };
    if (signingKey()) {
      // Signed as the server will send it: the script as stored.
      const s = await api('GET', `/api/v1/scripts/${encodeURIComponent(n)}`);
      body.signatures = await signJob(ids, { program: s.interpreter, script: s.body, args: s.args || [], timeout_s: s.timeout_s || 0 });
    }
    const made = await api('POST', '/api/v1/jobs', body);
    outputs.replaceChildren(...made.map((j) => jobPanel(j, runners.find((r) => r.id === j.runner_id)?.name, cliRun([j.runner_id], n))));
  });
  // The CLI command that signs the same run on the operator's machine.
  const cli = h('code', { class: 'cmd', id: 'signed-cli' });
  const showCli = () => {
    const ids = picks.map((p) => p.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
    cli.textContent = cliRun(ids.length ? ids : ['RUNNER'], f.name.value.trim() || 'NAME');
  };
  for (const p of picks) p.querySelector('input').addEventListener('change', showCli);
  f.name.addEventListener('input', showCli);
  showCli();
  const del = () => act(async () => {
    if (!confirm(`Delete script ${f.name.value}?`)) return;
    await api('DELETE', `/api/v1/scripts/${encodeURIComponent(f.name.value)}`);
    location.hash = '#/scripts';
  });
  const form = h('form', { class: 'card', 'aria-label': 'Script' },
    h('label', {}, h('span', {}, 'Name'), f.name),
    h('div', { class: 'row' }, h('label', {}, h('span', {}, 'Interpreter'), f.interpreter), h('label', {}, h('span', {}, 'Timeout (s, 0 = none)'), f.timeout)),
    h('label', {}, h('span', {}, 'Body'), f.body),
    h('fieldset', {}, h('legend', {}, 'Run on (one or many)'), ...picks,
      runners.length > 1 ? h('button', { type: 'button', onclick: () => {
        // All on, or all off when all were on already.
        const boxes = picks.map((p) => p.querySelector('input'));
        const on = !boxes.every((b) => b.checked);
        for (const b of boxes) b.checked = on;
      } }, 'All / none') : null),
    h('div', { class: 'row' },
      h('button', { type: 'submit', disabled: ro }, 'Save'),
      h('button', { type: 'button', class: 'primary', onclick: run, disabled: ro }, 'Save and run'),
      current ? h('button', { type: 'button', class: 'danger', onclick: del, disabled: ro }, 'Delete') : null),
    h('p', { class: 'muted' }, 'Signed from your machine instead: ', cli));
  form.addEventListener('submit', (e) => { e.preventDefault(); act(async () => { const n = await save(); location.hash = `#/scripts/${encodeURIComponent(n)}`; }); });
  view.replaceChildren(h('h1', {}, 'Scripts'),
    h('div', { class: 'row' }, h('a', { href: '#/scripts' }, 'New script'),
      ...scripts.map((s) => h('a', { href: `#/scripts/${encodeURIComponent(s.name)}`, 'aria-current': s.name === name ? 'page' : false }, s.name))),
    ro ? null : keyCard(), form, outputs,
    h('h2', {}, 'Recent jobs'),
    h('div', { class: 'scroll' }, h('table', {}, h('tbody', {}, ...jobs.map((j) => h('tr', {},
      h('td', {}, h('a', { href: `#/job/${j.id}` }, j.id)), h('td', {}, j.label),
      h('td', {}, runners.find((r) => r.id === j.runner_id)?.name || j.runner_id),
      h('td', {}, j.status), h('td', {}, fmtTime(j.created_at))))))));
  return () => outputs.querySelectorAll('[data-job]').forEach((p) => p.stop?.());
});

/**
 * A card that streams one job's output and shows its final status, and
 * why it failed when the runner gave a reason (a host refusing an
 * unsigned job: the reason and `cli`, the command that signs it).
 */
function jobPanel(job, runnerName, cli) {
  const status = h('span', { class: 'job-status' }, job.status);
  const out = h('div', { class: 'log', role: 'log' });
  const card = h('div', { class: 'card', dataset: { job: job.id } },
    h('h2', {}, runnerName || job.runner_id, ': ', h('a', { href: `#/job/${job.id}` }, job.id), ' ', status), out);
  const ctl = new AbortController();
  card.stop = () => ctl.abort();
  (async () => {
    try {
      await followNdjson(`/api/v1/jobs/${job.id}/output?format=ndjson&stream=all&follow=1`, (l) => {
        const row = h('span', { class: l.stream === 'stderr' ? 'stderr' : '' });
        appendAnsi(row, l.data, '');
        out.append(row);
        out.scrollTop = out.scrollHeight;
      }, ctl.signal);
      const j = await api('GET', `/api/v1/jobs/${job.id}`);
      status.textContent = `${j.status}${j.exit_code != null ? ` (exit ${j.exit_code})` : ''}`;
      card.dataset.status = j.status;
      if (j.reason) {
        const refused = j.reason.includes('signature_refused');
        card.append(h('p', { class: 'error job-reason', role: 'alert' }, j.reason,
          refused ? h('span', {}, signingKey() ? ' ' : '. Load your operator key above to sign here, or run: ', cli ? h('code', {}, cli) : null) : null));
      }
    } catch (e) {
      if (e.name !== 'AbortError') out.append(h('div', { class: 'stderr' }, e.message));
    }
  })();
  return card;
}

page('job', async (view, id) => {
  const j = await api('GET', `/api/v1/jobs/${encodeURIComponent(id)}`);
  const panel = jobPanel(j);
  const cancel = h('button', { type: 'button', class: 'danger', disabled: !can.act(), onclick: () => act(async () => { await api('POST', `/api/v1/jobs/${j.id}/cancel`); toast('Cancelled'); }) }, 'Cancel');
  view.replaceChildren(h('h1', {}, 'Job ', j.id), h('p', {}, j.label, ' · created ', fmtTime(j.created_at)), cancel, panel);
  return () => panel.stop();
});
