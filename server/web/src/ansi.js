// ANSI SGR colours (the 16 basic ones, bright and bold) to DOM nodes, for
// container logs and job output. Other escape sequences are dropped. Text
// goes in as text nodes only, so a log line can never inject markup.
const COLOURS = ['#555', '#ff6b6b', '#69db7c', '#ffd43b', '#74c0fc', '#f783ac', '#66d9e8', '#eee'];
const BRIGHT = ['#888', '#ff8787', '#8ce99a', '#ffe066', '#a5d8ff', '#faa2c1', '#99e9f2', '#fff'];
const ESC = /\x1b\[([0-9;]*)([A-Za-z])/g;

/** Append `text` with its colours to `parent`; `search` (lowercase) is highlighted. */
export function appendAnsi(parent, text, search) {
  let style = {};
  let last = 0;
  for (const m of text.matchAll(ESC)) {
    put(parent, text.slice(last, m.index), style, search);
    last = m.index + m[0].length;
    if (m[2] === 'm') style = apply(style, m[1]);
  }
  put(parent, text.slice(last), style, search);
}

function apply(style, params) {
  const s = { ...style };
  for (const p of (params || '0').split(';').map(Number)) {
    if (p === 0) { for (const k of Object.keys(s)) delete s[k]; }
    else if (p === 1) s.fontWeight = 'bold';
    else if (p === 22) delete s.fontWeight;
    else if (p >= 30 && p <= 37) s.color = COLOURS[p - 30];
    else if (p >= 90 && p <= 97) s.color = BRIGHT[p - 90];
    else if (p === 39) delete s.color;
    else if (p >= 40 && p <= 47) s.background = COLOURS[p - 40];
    else if (p === 49) delete s.background;
  }
  return s;
}

function put(parent, text, style, search) {
  if (!text) return;
  const span = document.createElement('span');
  Object.assign(span.style, style);
  if (search) {
    const lower = text.toLowerCase();
    let i = 0;
    for (let j = lower.indexOf(search); j >= 0; j = lower.indexOf(search, i)) {
      span.append(text.slice(i, j));
      const mark = document.createElement('mark');
      mark.textContent = text.slice(j, j + search.length);
      span.append(mark);
      i = j + search.length;
    }
    span.append(text.slice(i));
  } else {
    span.textContent = text;
  }
  parent.append(span);
}
