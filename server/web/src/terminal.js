// The runner page's terminal tab: xterm.js into the host or a running
// container. Route: #/runner/{id}/terminal[/{container}].
//
//   Open ─POST /terminals─▶ attach (WebSocket, cookie) ─▶ live ─end─▶ ended
//                              ▲                          │ closed without "end"
//                              └── reattach from offset ◀─┘ (backoff, ≤ 60 s)
//
// Opening is a POST, not the one-step WebSocket, because a refused
// WebSocket handshake tells the page nothing: a POST's JSON error can say
// "viewer", "host terminal disabled" or "no such container". The attach
// WebSocket carries the session cookie (the server checks its Origin).
// Every output byte counts towards `offset`, so a reattach after a blip
// asks for exactly what was missed: no gap, no repeat. Leaving the tab only
// detaches (the server keeps the shell 60 s); coming back reattaches.
import { h, api, can, signedHint } from './core.js';
import { keyCard, signTerminal } from './signing.js';

/** How long a lost client keeps trying: the server keeps a detached shell 60 s. */
const REATTACH_FOR_MS = 55000;

let libs = null;
function loadXterm() {
  libs ??= Promise.all([import('/ui/vendor/xterm.mjs'), import('/ui/vendor/addon-fit.mjs')])
    .then(([x, f]) => ({ Terminal: x.Terminal, FitAddon: f.FitAddon }))
    .catch(() => null);
  return libs;
}

/** The session this tab had open on a runner, kept across tab switches and reloads. */
const saved = {
  key: (runner) => `tether.terminal.${runner}`,
  get: (runner) => { try { return JSON.parse(sessionStorage.getItem(saved.key(runner))); } catch { return null; } },
  set: (runner, v) => sessionStorage.setItem(saved.key(runner), JSON.stringify(v)),
  clear: (runner) => sessionStorage.removeItem(saved.key(runner)),
};

export async function terminal(body, r, container) {
  const lib = await loadXterm();
  if (!lib) {
    body.append(h('p', { class: 'error' }, 'Terminal library not built into this server (run make web).'));
    return undefined;
  }
  const list = r.health === 'active'
    ? await api('GET', `/api/v1/runners/${r.id}/containers`).catch(() => ({ containers: [] }))
    : { containers: [] };
  const running = list.containers.filter((c) => c.state === 'running');
  const target = h('select', { 'aria-label': 'Open a terminal in' }, h('option', { value: '' }, 'the host'),
    ...running.map((c) => h('option', { value: c.name, selected: c.name === container }, `container ${c.name}`)));
  const openBtn = h('button', { type: 'button', class: 'primary', disabled: !can.act() }, 'Open terminal');
  const hangBtn = h('button', { type: 'button', class: 'danger', hidden: true }, 'Hang up');
  const status = h('p', { id: 'term-status', role: 'status', class: 'muted' },
    can.act() ? 'No terminal open.' : 'Viewers cannot open a terminal: it is an action.');
  // A viewer gets the reason, not an empty black box it can never use.
  const box = h('div', { id: 'terminal', class: 'term', 'aria-label': 'Terminal', hidden: !can.act() });
  body.append(...(can.act() ? [keyCard()] : []),
    h('div', { class: 'row' }, h('label', {}, h('span', {}, 'Open a terminal in'), target), openBtn, hangBtn),
    status, box,
    h('p', { class: 'muted' }, 'Keyboard: the terminal takes Tab; Shift+Escape moves the focus out of it.'));

  const term = new lib.Terminal({
    cursorBlink: true, scrollback: 5000, fontSize: 14,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace',
    theme: { background: '#111111', foreground: '#eeeeee' },
  });
  const fit = new lib.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  box.term = term; // for the browser test, which reads the buffer
  term.attachCustomKeyEventHandler((e) => {
    if (e.type === 'keydown' && e.key === 'Escape' && e.shiftKey) { (hangBtn.hidden ? openBtn : hangBtn).focus(); return false; }
    return true;
  });
  const refit = () => { try { fit.fit(); } catch { /* not laid out yet */ } };
  refit();
  const resizes = new ResizeObserver(refit);
  resizes.observe(box);

  let conn = null; // the live attachment, if any
  const show = (text, bad) => { status.textContent = text; status.className = bad ? 'error' : 'muted'; };
  const idle = () => { conn = null; hangBtn.hidden = true; openBtn.disabled = !can.act(); target.disabled = false; };

  const attach = (session, what) => {
    openBtn.disabled = true; target.disabled = true; hangBtn.hidden = false;
    conn = new Attachment(session, term, {
      state: (text, bad) => show(`${what}: ${text}`, bad),
      ended: (reason) => { saved.clear(r.id); show(`${what}: ended (${reason})`); idle(); },
    });
    box.attachment = conn; // for the browser test, which cuts its socket
  };

  openBtn.addEventListener('click', async () => {
    refit();
    try {
      // With a key loaded: signed (target, no command, no user), flat in the body.
      const signed = await signTerminal(r.id, target.value || null);
      const s = await api('POST', `/api/v1/runners/${r.id}/terminals`,
        { container: target.value || undefined, cols: term.cols, rows: term.rows, ...signed });
      term.reset();
      saved.set(r.id, { id: s.id, target: s.target });
      attach(s.id, s.target);
      term.focus();
    } catch (e) {
      // The server's own reason: viewer, host terminal switched off, no such
      // container, a host requiring signed terminals (then the CLI command).
      const cmd = `tether-server terminal ${r.id}${target.value ? ` ${target.value}` : ''}`;
      show(`Not opened: ${e.message}.${signedHint(e, cmd)}`, true);
    }
  });
  hangBtn.addEventListener('click', () => conn?.hangUp());
  term.onData((d) => conn?.send(new TextEncoder().encode(d)));
  term.onBinary((d) => conn?.send(Uint8Array.from(d, (c) => c.charCodeAt(0))));
  term.onResize(({ cols, rows }) => conn?.resize(cols, rows));

  // Back on the tab while the shell still lives: reattach and replay.
  const prev = saved.get(r.id);
  if (prev && can.act()) {
    const audit = await api('GET', `/api/v1/terminals?runner=${encodeURIComponent(r.id)}&limit=20`).catch(() => []);
    if (audit.some((a) => a.id === prev.id && a.open)) attach(prev.id, prev.target);
    else saved.clear(r.id);
  }
  return () => { resizes.disconnect(); conn?.detach(); term.dispose(); };
}

/** One terminal session's client: attach, relay, reattach after a blip. */
class Attachment {
  constructor(session, term, on) {
    Object.assign(this, { session, term, on, offset: 0, ws: null, over: false, lostAt: 0, tries: 0 });
    this.connect();
  }

  connect() {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${proto}://${location.host}/api/v1/terminals/${this.session}/attach?offset=${this.offset}`);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let ended = null;
    ws.onopen = () => {
      this.lostAt = 0; this.tries = 0;
      this.on.state('connected');
      this.resize(this.term.cols, this.term.rows);
    };
    ws.onmessage = (e) => {
      if (typeof e.data !== 'string') {
        const bytes = new Uint8Array(e.data);
        this.offset += bytes.length;
        this.term.write(bytes);
        return;
      }
      const m = JSON.parse(e.data);
      if (m.type === 'attached') this.offset = m.offset;
      else if (m.type === 'runner') this.on.state(m.state === 'active' ? 'connected' : 'runner unreachable, waiting for it', m.state !== 'active');
      else if (m.type === 'end') ended = m.reason;
      else if (m.type === 'detached') ended = 'attached in another window';
    };
    ws.onclose = () => {
      if (this.ws !== ws || this.over) return;
      if (ended) { this.over = true; this.on.ended(ended); return; }
      // Closed without an end: a blip (network, server restart). Try again
      // from the last byte shown, backing off with jitter, while the server
      // can still hold the shell.
      this.lostAt ||= Date.now();
      if (Date.now() - this.lostAt > REATTACH_FOR_MS) { this.over = true; this.on.ended('connection lost'); return; }
      const delay = Math.min(5000, 250 * 2 ** this.tries++) * (0.5 + Math.random() / 2);
      this.on.state('connection lost, reattaching…', true);
      this.retry = setTimeout(() => this.connect(), delay);
    };
  }

  send(bytes) { if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(bytes); }

  resize(cols, rows) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'resize', cols, rows }));
  }

  /** End the shell; the server's "end" then closes the socket. */
  hangUp() {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'close' }));
    else { this.detach(); this.on.ended('hung up'); }
  }

  /** Leave the shell running (the page is left); the server keeps it 60 s. */
  detach() {
    this.over = true;
    clearTimeout(this.retry);
    this.ws?.close();
  }
}
