// Apps: define one (the fields of PUT /api/v1/apps/{name}, docs/api.md),
// deploy it and watch the steps live, its history, roll back. Secrets are
// write-only: the page sets a value and lists names, never shows a value.
// With an operator key loaded (signing.js) deploys and rollbacks are signed
// in the page. Routes: #/apps[/{name}], #/deployment/{id}.
import { h, api, act, toast, can, fmtTime, page, followNdjson, redraw, signedHint } from './core.js';
import { appendAnsi } from './ansi.js';
import { keyCard, signDeploy } from './signing.js';

const STEPS = [[1, 'Source'], [2, 'Build'], [3, 'Replace']];

// ---- the form's text fields <-> the API's lists and maps ------------------------

const lines = (s) => s.split('\n').map((l) => l.trim()).filter(Boolean);

/** `8080:80`, `8080:80/udp`, `127.0.0.1:8080:80/tcp` -> a PortMap. */
function parsePort(l) {
  const m = /^(?:(.+):)?(\d+):(\d+)(?:\/(tcp|udp))?$/.exec(l);
  if (!m) throw new Error(`port ${l}: HOST:CONTAINER[/tcp|udp], optionally IP:HOST:CONTAINER`);
  return { host: Number(m[2]), container: Number(m[3]), proto: m[4] || 'tcp', ...(m[1] ? { host_ip: m[1] } : {}) };
}
const showPort = (p) => `${p.host_ip ? `${p.host_ip}:` : ''}${p.host}:${p.container}/${p.proto}`;

/** `K=V` lines -> {K: V}. */
function parseMap(text, what) {
  return Object.fromEntries(lines(text).map((l) => {
    const i = l.indexOf('=');
    if (i < 1) throw new Error(`${what} ${l}: NAME=value`);
    return [l.slice(0, i), l.slice(i + 1)];
  }));
}
const showMap = (m) => Object.entries(m || {}).map(([k, v]) => `${k}=${v}`).join('\n');

// ---- the page -------------------------------------------------------------------------

/** A deployment started for a new app, watched once its page shows. */
let launched = null;

page('apps', async (view, name) => {
  const [apps, runners, secrets] = await Promise.all([
    api('GET', '/api/v1/apps'), api('GET', '/api/v1/runners'), api('GET', '/api/v1/secrets')]);
  const app = name ? apps.find((a) => a.name === name) : null;
  const watch = h('div', { id: 'deploy-watch' });
  const hist = h('div');
  const ctx = { watch, refresh: null };
  if (app) {
    ctx.refresh = async () => {
      const history = await api('GET', `/api/v1/apps/${encodeURIComponent(app.name)}/deployments`);
      hist.replaceChildren(historyTable(app, history, ctx));
      return history;
    };
  }
  const runnerName = (id) => runners.find((r) => r.id === id)?.name || id;
  view.replaceChildren(h('h1', {}, 'Apps'),
    h('nav', { class: 'row', 'aria-label': 'Apps' }, h('a', { href: '#/apps', 'aria-current': name ? false : 'page' }, 'New app'),
      ...apps.map((a) => h('a', { href: `#/apps/${encodeURIComponent(a.name)}`, 'aria-current': a.name === name ? 'page' : false }, a.name))),
    app ? h('p', {}, 'Runs as container ', h('a', { id: 'app-container', href: `#/runner/${app.runner}/containers` }, app.container), ' on ', runnerName(app.runner), '.') : null,
    can.act() ? keyCard() : null,
    appForm(app, name, runners, secrets, ctx),
    watch, hist,
    secretsCard(secrets));
  if (app) {
    const history = await ctx.refresh();
    // Still deploying (or just launched from the new-app form): follow it.
    const live = launched?.app === app.name ? launched : history.find((d) => !d.complete);
    launched = null;
    if (live) watchDeployment(ctx, live);
  }
  return () => watch.querySelectorAll('[data-deployment]').forEach((p) => p.stop?.());
});

function appForm(app, name, runners, secrets, ctx) {
  const ro = !can.act();
  const input = (n, value, extra = {}) => h('input', { name: n, value: value ?? '', ...extra });
  const area = (n, value, placeholder) => h('textarea', { name: n, rows: 3, spellcheck: 'false', placeholder }, value || '');
  const gitSource = !app || !app.path;
  const f = {
    name: input('name', app?.name || name, { required: true, pattern: '[A-Za-z0-9][A-Za-z0-9._-]*', readonly: !!app }),
    runner: h('select', { name: 'runner', required: true, 'aria-label': 'Runner' },
      ...runners.map((r) => h('option', { value: r.id, selected: r.id === app?.runner }, r.name))),
    kind: h('select', { name: 'kind', 'aria-label': 'Source' },
      h('option', { value: 'git', selected: gitSource }, 'a git repository'), h('option', { value: 'path', selected: !gitSource }, 'a directory on the host')),
    git_url: input('git_url', app?.git_url, { placeholder: 'https://git.example.com/web.git' }),
    git_ref: input('git_ref', app?.git_ref, { placeholder: 'main' }),
    path: input('path', app?.path, { placeholder: '/srv/src/web' }),
    context: input('context', app?.context || '.'),
    dockerfile: input('dockerfile', app?.dockerfile || 'Dockerfile'),
    image: input('image', app?.image, { placeholder: 'the app name' }),
    container: input('container', app?.container, { placeholder: 'the app name' }),
    ports: area('ports', (app?.ports || []).map(showPort).join('\n'), '8080:80/tcp'),
    volumes: area('volumes', (app?.volumes || []).join('\n'), '/srv/web/data:/data'),
    restart: h('select', { name: 'restart', 'aria-label': 'Restart' }, ...['no', 'always', 'unless-stopped', 'on-failure'].map((v) => h('option', { value: v, selected: v === (app?.restart || 'no') }, v))),
    labels: area('labels', showMap(app?.labels), 'tier=front'),
    env: area('env', showMap(app?.env), 'MODE=prod'),
    health_cmd: input('health_cmd', app?.health?.cmd?.join(' '), { placeholder: 'wget -qO- http://127.0.0.1/health' }),
    health_port: input('health_port', app?.health?.tcp_port, { type: 'number', min: 1, max: 65535 }),
    health_timeout: input('health_timeout', app?.health?.timeout_s ?? 30, { type: 'number', min: 1, max: 3600 }),
    timeout: input('timeout', app?.timeout_s ?? 1800, { type: 'number', min: 1, max: 86400 }),
    ref: input('ref', '', { placeholder: 'the app\'s ref' }),
    // New apps keep secrets in memory (files); an existing app keeps its choice.
    delivery: h('select', { name: 'secrets_delivery', 'aria-label': 'Secrets delivery' },
      ...[['files', 'files (memory)'], ['env', 'environment'], ['env_file', 'env file only']]
        .map(([v, t]) => h('option', { value: v, selected: v === (app?.secrets_delivery || 'files') }, t))),
    env_file: input('env_file', app?.env_file, { placeholder: '/app/.env (optional)' }),
    secrets_uid: input('secrets_uid', app?.secrets_uid, { type: 'number', min: 0, placeholder: '0' }),
  };
  const secretBoxes = secrets.map((s) => h('label', { class: 'row' },
    h('input', { type: 'checkbox', value: s.name, checked: app?.secrets?.includes(s.name) }), s.name));
  const field = (label, el, hint) => h('label', {}, h('span', {}, label), el, hint ? h('small', { class: 'muted' }, hint) : null);
  const gitFields = h('div', { class: 'row' }, field('Git URL', f.git_url), field('Ref', f.git_ref));
  const pathFields = h('div', { class: 'row' }, field('Directory on the host', f.path));
  const flip = () => { gitFields.hidden = f.kind.value !== 'git'; pathFields.hidden = f.kind.value === 'git'; };
  f.kind.addEventListener('change', flip);
  flip();

  const definition = () => {
    const git = f.kind.value === 'git';
    const health = f.health_cmd.value.trim() || f.health_port.value
      ? { ...(f.health_cmd.value.trim() ? { cmd: f.health_cmd.value.trim().split(/\s+/) } : {}),
        ...(f.health_port.value ? { tcp_port: Number(f.health_port.value) } : {}),
        timeout_s: Number(f.health_timeout.value) || 30 }
      : undefined;
    return {
      runner: f.runner.value,
      ...(git ? { git_url: f.git_url.value.trim(), ...(f.git_ref.value.trim() ? { git_ref: f.git_ref.value.trim() } : {}) }
        : { path: f.path.value.trim() }),
      context: f.context.value.trim() || '.',
      dockerfile: f.dockerfile.value.trim() || 'Dockerfile',
      ...(f.image.value.trim() ? { image: f.image.value.trim() } : {}),
      ...(f.container.value.trim() ? { container: f.container.value.trim() } : {}),
      ports: lines(f.ports.value).map(parsePort),
      volumes: lines(f.volumes.value),
      restart: f.restart.value,
      labels: parseMap(f.labels.value, 'label'),
      env: parseMap(f.env.value, 'env'),
      secrets: secretBoxes.map((b) => b.querySelector('input')).filter((i) => i.checked).map((i) => i.value),
      secrets_delivery: f.delivery.value,
      ...(f.secrets_uid.value ? { secrets_uid: Number(f.secrets_uid.value) } : {}),
      ...(app?.secrets_gid != null ? { secrets_gid: app.secrets_gid } : {}),
      ...(f.env_file.value.trim() ? { env_file: f.env_file.value.trim() } : {}),
      ...(health ? { health } : {}),
      timeout_s: Number(f.timeout.value) || 1800,
    };
  };
  const save = async () => {
    const n = f.name.value.trim();
    await api('PUT', `/api/v1/apps/${encodeURIComponent(n)}`, definition());
    toast(`Saved ${n}`);
    return n;
  };
  const deploy = () => act(async () => {
    const n = await save();
    const ref = f.ref.value.trim();
    const body = ref ? { ref } : {};
    // With a key loaded: signed over the job_start the server says it sends.
    const s = await signDeploy(n, { ref });
    if (s) body.signed = s.signed;
    const d = await api('POST', `/api/v1/apps/${encodeURIComponent(n)}/deploy`, body);
    if (!app) {
      // A new app: its page shows the deployment.
      launched = d;
      location.hash = `#/apps/${encodeURIComponent(n)}`;
      return;
    }
    watchDeployment(ctx, d);
  });
  const form = h('form', { class: 'card', 'aria-label': 'App' },
    h('div', { class: 'row' }, field('Name', f.name), field('Runner', f.runner)),
    h('div', { class: 'row' }, field('Source', f.kind)), gitFields, pathFields,
    h('div', { class: 'row' }, field('Context', f.context), field('Dockerfile', f.dockerfile)),
    h('div', { class: 'row' }, field('Image repository', f.image, 'each deployment is tagged with its id'), field('Container name', f.container)),
    h('div', { class: 'grid' }, field('Ports (one a line)', f.ports), field('Volumes (one a line)', f.volumes),
      field('Labels (NAME=value a line)', f.labels), field('Environment (NAME=value a line)', f.env)),
    h('div', { class: 'row' }, field('Restart', f.restart), field('Deploy timeout (s)', f.timeout)),
    h('fieldset', {}, h('legend', {}, 'Health check'), h('div', { class: 'row' },
      field('Command in the container', f.health_cmd), field('or TCP port on the host', f.health_port), field('Timeout (s)', f.health_timeout))),
    h('fieldset', {}, h('legend', {}, 'Secrets (values never shown)'),
      h('div', { class: 'row' }, field('Delivered as', f.delivery, 'files: /run/secrets, never on disk'), field('Env file in the container', f.env_file, 'KEY=VALUE lines, mode 0600'),
        field('Files owner (uid)', f.secrets_uid)),
      secretBoxes.length ? secretBoxes : h('p', { class: 'muted' }, 'No secrets yet; set one below.')),
    h('div', { class: 'row' },
      h('button', { type: 'submit', disabled: ro }, 'Save'),
      field('Deploy ref (optional)', f.ref),
      h('button', { type: 'button', class: 'primary', onclick: deploy, disabled: ro }, 'Save and deploy'),
      app ? h('button', { type: 'button', class: 'danger', disabled: ro, onclick: () => act(async () => {
        if (!confirm(`Delete app ${app.name}? Its container keeps running; the history stays.`)) return;
        await api('DELETE', `/api/v1/apps/${encodeURIComponent(app.name)}`);
        location.hash = '#/apps';
      }) }, 'Delete') : null));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    act(async () => { const n = await save(); if (!app) location.hash = `#/apps/${encodeURIComponent(n)}`; else redraw(); });
  });
  return form;
}

function historyTable(app, history, ctx) {
  const ok = history.filter((d) => d.status === 'succeeded');
  const current = ok[0];
  const rollback = (to) => act(async () => {
    if (!confirm(to ? `Run the image of ${to.id} (${to.image}) again?` : `Roll ${app.name} back to the previous image?`)) return;
    // Signed: the deployment it goes to is named, so the server cannot pick another.
    const s = await signDeploy(app.name, { rollback: true, to: to?.id });
    const body = s ? { to: s.to, signed: s.signed } : (to ? { to: to.id } : {});
    watchDeployment(ctx, await api('POST', `/api/v1/apps/${encodeURIComponent(app.name)}/rollback`, body));
  });
  return h('section', { 'aria-label': 'History' },
    h('h2', {}, 'History'),
    h('div', { class: 'row' }, h('button', { type: 'button', disabled: !can.act() || ok.length < 2, onclick: () => rollback(null) }, 'Roll back to the previous image')),
    h('div', { class: 'scroll' }, h('table', { id: 'deployments' },
      h('thead', {}, h('tr', {}, ...['Deployment', 'Kind', 'Image', 'Ref', 'Status', 'Created', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, ...history.map((d) => h('tr', { dataset: { deployment: d.id, status: d.status } },
        h('td', {}, h('a', { href: `#/deployment/${d.id}` }, d.id)), h('td', {}, d.kind), h('td', {}, d.image),
        h('td', {}, d.git_ref || '—'), h('td', {}, d.status, d.reason ? ` (${d.reason})` : ''), h('td', {}, fmtTime(d.created_at)),
        h('td', {}, d.status === 'succeeded' && d.image !== current?.image
          ? h('button', { type: 'button', disabled: !can.act(), onclick: () => rollback(d) }, 'Roll back to this') : null)))),
      history.length ? null : h('caption', {}, 'No deployments yet.'))));
}

function secretsCard(secrets) {
  const name = h('input', { name: 'secret_name', required: true, pattern: '[A-Za-z_][A-Za-z0-9_]*', autocomplete: 'off' });
  const value = h('input', { name: 'secret_value', type: 'password', required: true, autocomplete: 'new-password' });
  const form = h('form', { class: 'card', 'aria-label': 'Secrets' },
    h('h2', {}, 'Secrets'),
    h('p', { class: 'muted' }, 'Sealed on the server and delivered only to the job that needs them; nobody can read a value back.'),
    secrets.length ? h('ul', {}, ...secrets.map((s) => h('li', {}, s.name, ' ', h('span', { class: 'muted' }, `set ${fmtTime(s.updated_at)}`)))) : null,
    h('div', { class: 'row' }, h('label', {}, h('span', {}, 'Secret name'), name), h('label', {}, h('span', {}, 'Value'), value),
      h('button', { type: 'submit', disabled: !can.act() }, 'Set secret')));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    act(async () => {
      await api('PUT', `/api/v1/secrets/${encodeURIComponent(name.value.trim())}`, { value: value.value });
      value.value = '';
      toast(`Secret ${name.value.trim()} set`);
      redraw();
    });
  });
  return form;
}

// ---- a deployment's steps, live ------------------------------------------------------------

/** Show one deployment, followed live; the history is fetched again when it ends. */
function watchDeployment(ctx, d) {
  ctx.watch.querySelectorAll('[data-deployment]').forEach((p) => p.stop?.());
  ctx.watch.replaceChildren(deploymentPanel(d, () => ctx.refresh?.().catch(() => {})));
  ctx.refresh?.().catch(() => {});
}

/** A card per deployment: one section per step, filled as output arrives. */
function deploymentPanel(d, onDone) {
  const status = h('span', { class: 'job-status' }, d.status);
  const sections = new Map(STEPS.map(([n, label]) => {
    const out = h('div', { class: 'log', role: 'log' });
    const sec = h('section', { class: 'step', dataset: { step: n, state: 'waiting' } },
      h('h3', {}, `${n}. ${label} `, h('span', { class: 'muted step-state' }, 'waiting')), out);
    sec.out = out;
    return [n, sec];
  }));
  const other = h('div', { class: 'log', role: 'log', hidden: true });
  const card = h('div', { class: 'card', dataset: { deployment: d.id } },
    h('h2', {}, `${d.kind || 'deploy'} ${d.app || ''}: `, h('a', { href: `#/deployment/${d.id}` }, d.id), ' ', status),
    d.image ? h('p', { class: 'muted' }, 'Image ', h('code', {}, d.image)) : null,
    ...sections.values(), other);
  const mark = (sec, state) => { sec.dataset.state = state; sec.querySelector('.step-state').textContent = state; };
  let current = 0;
  const ctl = new AbortController();
  card.stop = () => ctl.abort();
  (async () => {
    try {
      await followNdjson(`/api/v1/jobs/${d.id}/output?format=ndjson&stream=all&follow=1`, (l) => {
        const sec = sections.get(l.step);
        if (sec && l.step !== current) {
          // A new step began: the ones before it are done.
          for (const [n, s] of sections) if (n < l.step && s.dataset.state !== 'done') mark(s, 'done');
          mark(sec, 'running');
          current = l.step;
        }
        const out = sec ? sec.out : other;
        out.hidden = false;
        const row = h('span', { class: l.stream === 'stderr' ? 'stderr' : l.stream === 'system' ? 'note' : '' });
        appendAnsi(row, l.data, '');
        out.append(row);
        out.scrollTop = out.scrollHeight;
      }, ctl.signal);
      const j = await api('GET', `/api/v1/jobs/${d.id}`);
      // A host requiring signed deploys refused it: the CLI command that signs one.
      const refused = (j.reason || '').includes('signature_refused') ? { code: 'signature_refused' } : null;
      const cmd = `tether-server app ${d.kind === 'rollback' ? 'rollback' : 'deploy'} ${d.app || ''}`;
      status.textContent = `${j.status}${j.reason ? `: ${j.reason}` : ''}${signedHint(refused, cmd)}`;
      card.dataset.status = j.status;
      const last = sections.get(current);
      if (last) mark(last, j.status === 'succeeded' ? 'done' : j.status);
      onDone?.();
    } catch (e) {
      if (e.name !== 'AbortError') other.append(h('div', { class: 'stderr' }, e.message));
    }
  })();
  return card;
}

page('deployment', async (view, id) => {
  const j = await api('GET', `/api/v1/jobs/${encodeURIComponent(id)}`);
  const app = /^(?:deploy|rollback) (.+)$/.exec(j.label || '')?.[1];
  const panel = deploymentPanel({ ...j, app, kind: j.label?.split(' ')[0] });
  view.replaceChildren(h('h1', {}, 'Deployment ', j.id),
    app ? h('p', {}, h('a', { href: `#/apps/${encodeURIComponent(app)}` }, `Back to ${app}`)) : null, panel);
  return () => panel.stop();
});
