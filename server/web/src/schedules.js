// Schedules (`fleet/schedule.rs`): the list with each one's next run and
// its last, one schedule's next runs and history, add (a saved script or a
// command on a label selector, cron, jitter, missed-run policy) and
// remove. Routes: #/schedules[/{name}].
import { h, api, act, toast, can, fmtTime, page } from './core.js';

const enc = encodeURIComponent;

// What a schedule runs, in a few words.
function what(s) {
  const j = s.job || {};
  const run = j.script ? `script ${j.script}` : j.command ? `$ ${j.command}` : '—';
  return s.waves ? `${run} (waves of ${s.waves.wave})` : run;
}

function lastRun(r) {
  if (!r) return h('span', { class: 'muted' }, 'never');
  return h('span', { class: 'last-run', dataset: { status: r.status } }, `${r.status} · ${fmtTime(r.occurrence)}`);
}

// The form that adds (or replaces) a schedule.
function addForm(reload) {
  const f = {
    name: h('input', { name: 'name', required: true, pattern: '[A-Za-z0-9._-]+', maxlength: 64 }),
    cron: h('input', { name: 'cron', required: true, placeholder: '0 3 * * *', spellcheck: 'false' }),
    selector: h('input', { name: 'selector', placeholder: 'role=db (empty: every runner)', spellcheck: 'false' }),
    script: h('input', { name: 'script', placeholder: 'saved script name' }),
    command: h('input', { name: 'command', placeholder: 'or a shell command', spellcheck: 'false' }),
    jitter: h('input', { name: 'jitter', type: 'number', min: 0, max: 86400, value: 0 }),
    missed: h('select', { name: 'missed' }, h('option', { value: 'skip' }, 'skip'), h('option', { value: 'run-once' }, 'run once')),
  };
  const form = h('form', { class: 'card', 'aria-label': 'Add a schedule' },
    h('h2', {}, 'Add a schedule'),
    h('div', { class: 'row' },
      h('label', {}, h('span', {}, 'Name'), f.name),
      h('label', {}, h('span', {}, 'Cron (UTC)'), f.cron),
      h('label', {}, h('span', {}, 'Selector'), f.selector)),
    h('div', { class: 'row' },
      h('label', {}, h('span', {}, 'Script'), f.script),
      h('label', {}, h('span', {}, 'Command'), f.command)),
    h('div', { class: 'row' },
      h('label', {}, h('span', {}, 'Jitter (s)'), f.jitter),
      h('label', {}, h('span', {}, 'Missed runs'), f.missed)),
    h('button', { type: 'submit', class: 'primary', disabled: !can.act() }, 'Add schedule'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    act(async () => {
      const script = f.script.value.trim();
      const command = f.command.value.trim();
      if (!script === !command) throw new Error('Give a script or a command (one of them)');
      const name = f.name.value.trim();
      await api('PUT', `/api/v1/schedules/${enc(name)}`, {
        cron: f.cron.value.trim(),
        selector: f.selector.value.trim(),
        job: script ? { script } : { command },
        jitter_s: Number(f.jitter.value) || 0,
        missed: f.missed.value,
      });
      toast(`Schedule ${name} saved`);
      form.reset();
      await reload();
    });
  });
  return form;
}

page('schedules', async (view, name) => {
  if (name) return showOne(view, name);
  const body = h('tbody');
  const reload = async () => {
    const list = await api('GET', '/api/v1/schedules');
    body.replaceChildren(...list.map((s) => h('tr', { dataset: { schedule: s.name } },
      h('td', {}, h('a', { href: `#/schedules/${enc(s.name)}` }, s.name)),
      h('td', {}, h('code', {}, s.cron)),
      h('td', {}, h('code', {}, s.selector || '(every runner)')),
      h('td', {}, what(s)),
      h('td', { class: 'next-run' }, s.next_run ? fmtTime(s.next_run) : '—'),
      h('td', {}, lastRun(s.last_run)),
      h('td', {}, h('button', { type: 'button', class: 'danger', disabled: !can.act(), onclick: () => act(async () => {
        if (!confirm(`Remove schedule ${s.name} and its history?`)) return;
        await api('DELETE', `/api/v1/schedules/${enc(s.name)}`);
        toast(`Schedule ${s.name} removed`);
        await reload();
      }) }, 'Remove')))));
    if (!list.length) body.append(h('tr', {}, h('td', { colspan: 7 }, 'No schedules.')));
  };
  await reload();
  view.replaceChildren(h('h1', {}, 'Schedules'),
    h('div', { class: 'scroll' }, h('table', { id: 'schedules' }, h('thead', {}, h('tr', {},
      ...['Name', 'Cron', 'Selector', 'Runs', 'Next run', 'Last run', ''].map((t) => h('th', { scope: 'col' }, t)))), body)),
    addForm(reload));
  // Next and last runs move on their own: read again every few seconds.
  const tick = setInterval(() => reload().catch(() => {}), 5000);
  return () => clearInterval(tick);
});

// One schedule: its definition, the next runs, the history.
async function showOne(view, name) {
  const draw = async () => {
    const [s, runs] = await Promise.all([
      api('GET', `/api/v1/schedules/${enc(name)}`),
      api('GET', `/api/v1/schedules/${enc(name)}/runs?limit=50`)]);
    view.replaceChildren(h('h1', {}, `Schedule ${name}`),
      h('p', {}, h('a', { href: '#/schedules' }, 'All schedules')),
      h('dl', { class: 'card' },
        h('dt', {}, 'Cron'), h('dd', {}, h('code', {}, s.cron)),
        h('dt', {}, 'Selector'), h('dd', {}, h('code', {}, s.selector || '(every runner)')),
        h('dt', {}, 'Runs'), h('dd', {}, what(s)),
        h('dt', {}, 'Jitter'), h('dd', {}, `${s.jitter_s} s`),
        h('dt', {}, 'Missed runs'), h('dd', {}, s.missed)),
      h('h2', {}, 'Next runs'),
      h('ol', { id: 'next-runs' }, ...(s.next_runs || []).map((t) => h('li', {}, fmtTime(t)))),
      h('h2', {}, 'History'),
      h('div', { class: 'scroll' }, h('table', { id: 'schedule-runs' },
        h('thead', {}, h('tr', {}, ...['Occurrence', 'Status', 'At', 'Jobs'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, ...runs.map((r) => h('tr', { dataset: { status: r.status } },
          h('td', {}, fmtTime(r.occurrence)), h('td', {}, r.status), h('td', {}, fmtTime(r.at)),
          h('td', {}, ...(r.jobs || []).map((j) => h('a', { href: j.startsWith('ro_') ? '#/schedules' : `#/job/${j}` }, `${j} `)))))))));
  };
  await draw();
  const tick = setInterval(() => draw().catch(() => {}), 5000);
  return () => clearInterval(tick);
}
