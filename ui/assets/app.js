// tributary's web console: the parts of the pages that need a script.
// No framework and no build step; data is only ever put into the page as
// text (textContent, createTextNode), never parsed as HTML. The one
// exception is the pipeline fragment, which the server renders escaped.
'use strict';

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

// Every state-changing request carries this header: a cross-site form
// cannot, so the server refuses those without it.
const HEADERS = { 'X-Tributary': '1', 'Content-Type': 'application/json' };

function post(url, body) {
  return fetch(url, { method: 'POST', headers: HEADERS, body: JSON.stringify(body) });
}

// An element with attributes and children (strings become text nodes).
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

document.addEventListener('DOMContentLoaded', () => {
  const logout = $('#logout');
  if (logout) {
    logout.addEventListener('click', async () => {
      await post('/logout', {});
      location.href = '/login';
    });
  }
  const pages = { login, sql, pipeline, workflows, fraud };
  const page = pages[document.body.dataset.page];
  if (page) page();
});

// ---------------------------------------------------------------- login

function login() {
  const form = $('#login');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const r = await post('/login', { user: data.get('user'), password: data.get('password') });
    if (r.ok) {
      location.href = form.dataset.next || '/sql';
    } else {
      $('#login-error').textContent = await r.text();
    }
  });
}

// ------------------------------------------------------------------ SQL

const KEYWORDS = new Set(`select from where group by order having limit offset join left right inner
outer full cross on using as and or not in is null case when then else end with union all distinct
between like ilike cast interval asc desc over partition exists true false explain analyze date
timestamp values filter rows range preceding following current row nulls first last except intersect`
  .split(/\s+/));

const TOKEN = /(--[^\n]*|\/\*[\s\S]*?(?:\*\/|$))|('(?:[^']|'')*'?)|("(?:[^"]|"")*"?)|(\b\d+(?:\.\d+)?\b)|([A-Za-z_][A-Za-z0-9_]*)|(\s+)|([\s\S])/g;

// The SQL text as tokens: [kind, text, start offset].
function tokens(text) {
  const out = [];
  for (const m of text.matchAll(TOKEN)) {
    let kind = 'plain';
    if (m[1]) kind = 'comment';
    else if (m[2]) kind = 'string';
    else if (m[3]) kind = 'ident';
    else if (m[4]) kind = 'number';
    else if (m[5]) kind = KEYWORDS.has(m[5].toLowerCase()) ? 'keyword' : 'ident';
    out.push([kind, m[0], m.index]);
  }
  return out;
}

// Offset of (line, column), both from 1.
function offsetOf(text, line, column) {
  let offset = 0;
  for (let l = 1; l < line; l++) {
    const next = text.indexOf('\n', offset);
    if (next < 0) return text.length;
    offset = next + 1;
  }
  return Math.min(text.length, offset + Math.max(0, column - 1));
}

// Completions: the shortest first (`orders` before `order_items`), then
// alphabetically.
function shortestFirst(a, b) {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

function sql() {
  const query = $('#query');
  const highlight = $('#highlight');
  const complete = $('#complete');
  const status = $('#status');
  const errorBox = $('#error');
  const state = {
    result: null, sort: null, page: 0, running: null, errorAt: null, catalog: [], choice: 0, kind: '',
  };
  const PAGE = 100;

  function paint() {
    highlight.replaceChildren();
    for (const [kind, text, start] of tokens(query.value)) {
      const span = el('span', { class: 'tok-' + kind }, text);
      if (state.errorAt !== null && start <= state.errorAt && state.errorAt < start + text.length) {
        span.classList.add('tok-error');
      }
      highlight.append(span);
    }
    highlight.append('\n');
    highlight.scrollTop = query.scrollTop;
    highlight.scrollLeft = query.scrollLeft;
  }
  query.addEventListener('input', () => { state.errorAt = null; paint(); suggest(false); });
  query.addEventListener('scroll', () => {
    highlight.scrollTop = query.scrollTop;
    highlight.scrollLeft = query.scrollLeft;
  });

  // Completion of schemas, tables and columns.
  fetch('/api/schema').then((r) => (r.ok ? r.json() : { tables: [] })).then((c) => {
    state.catalog = c.tables || [];
    document.body.dataset.catalog = 'loaded';
    // Someone typed while the catalog was on its way: offer completions now.
    if (document.activeElement === query) suggest(false);
  });
  function candidates(word) {
    const lower = word.toLowerCase();
    const dot = lower.lastIndexOf('.');
    const words = new Set();
    if (dot >= 0) {
      const head = lower.slice(0, dot);
      const tail = lower.slice(dot + 1);
      const tables = state.catalog.filter((t) => t.schema === head);
      if (tables.length) {
        tables.forEach((t) => words.add(t.table));
      } else {
        const named = state.catalog.filter((t) => t.table === head);
        (named.length ? named : state.catalog).forEach((t) => t.columns.forEach((c) => words.add(c)));
      }
      return [...words].filter((w) => w.toLowerCase().startsWith(tail) && w.toLowerCase() !== tail)
        .sort(shortestFirst).slice(0, 12).map((w) => [w, tail.length]);
    }
    for (const t of state.catalog) {
      words.add(t.schema);
      words.add(t.table);
      words.add(t.schema + '.' + t.table);
      t.columns.forEach((c) => words.add(c));
    }
    return [...words].filter((w) => w.toLowerCase().startsWith(lower) && w.toLowerCase() !== lower)
      .sort(shortestFirst).slice(0, 12).map((w) => [w, word.length]);
  }
  function suggest(force) {
    const before = query.value.slice(0, query.selectionStart);
    const m = before.match(/[A-Za-z_][A-Za-z0-9_.]*$/);
    const word = m ? m[0] : '';
    if (!force && word.replace(/.*\./, '').length < 1 && !word.endsWith('.')) {
      complete.hidden = true;
      return;
    }
    const list = candidates(word);
    complete.replaceChildren();
    state.choice = 0;
    list.forEach(([w, cut], i) => {
      const li = el('li', { role: 'option', 'aria-selected': i === 0 ? 'true' : 'false' }, w);
      li.addEventListener('mousedown', (e) => { e.preventDefault(); accept(w, cut); });
      li.dataset.cut = cut;
      complete.append(li);
    });
    complete.hidden = list.length === 0;
  }
  function accept(word, cut) {
    const at = query.selectionStart;
    query.setRangeText(word.slice(cut), at, at, 'end');
    complete.hidden = true;
    paint();
    query.focus();
  }
  function choose(delta) {
    const items = $$('li', complete);
    if (!items.length) return;
    state.choice = (state.choice + delta + items.length) % items.length;
    items.forEach((li, i) => li.setAttribute('aria-selected', i === state.choice ? 'true' : 'false'));
  }

  query.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
      e.preventDefault();
      complete.hidden = true;
      run(false);
      return;
    }
    if ((e.ctrlKey || e.metaKey) && e.shiftKey && (e.key === 'E' || e.key === 'e')) {
      e.preventDefault();
      run(true);
      return;
    }
    if (e.ctrlKey && e.key === ' ') {
      e.preventDefault();
      suggest(true);
      return;
    }
    if (complete.hidden) return;
    if (e.key === 'ArrowDown') { e.preventDefault(); choose(1); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); choose(-1); }
    else if (e.key === 'Escape') { complete.hidden = true; }
    else if (e.key === 'Tab' || e.key === 'Enter') {
      const li = $$('li', complete)[state.choice];
      if (li) { e.preventDefault(); accept(li.textContent, Number(li.dataset.cut)); }
    }
  });
  query.addEventListener('blur', () => { complete.hidden = true; });

  // Running, cancelling, the URL and the history.
  function remember(text) {
    const list = JSON.parse(localStorage.getItem('tributary.history') || '[]').filter((q) => q !== text);
    list.unshift(text);
    localStorage.setItem('tributary.history', JSON.stringify(list.slice(0, 50)));
    showHistory();
  }
  function showHistory() {
    const list = JSON.parse(localStorage.getItem('tributary.history') || '[]');
    const ol = $('#history');
    ol.replaceChildren(...list.map((q) => {
      const b = el('button', { class: 'link', title: 'put into the editor' }, q);
      b.addEventListener('click', () => { query.value = q; paint(); query.focus(); });
      return el('li', {}, b);
    }));
  }
  function toUrl(text) {
    const params = new URLSearchParams();
    params.set('q', text);
    if (state.kind) params.set('chart', state.kind);
    history.replaceState(null, '', '/sql?' + params.toString());
  }

  async function run(explain) {
    const text = query.value.trim();
    if (!text || state.running) return;
    const id = Math.random().toString(36).slice(2) + Date.now().toString(36);
    state.running = id;
    $('#cancel').disabled = false;
    $('#run').disabled = true;
    errorBox.hidden = true;
    state.errorAt = null;
    paint();
    status.textContent = 'running…';
    const started = performance.now();
    let r;
    try {
      r = await post('/api/query', { sql: explain ? 'EXPLAIN ' + text : text, id });
    } catch (e) {
      r = null;
      showError({ error: 'the server did not answer: ' + e });
    }
    state.running = null;
    $('#cancel').disabled = true;
    $('#run').disabled = false;
    if (!r) return;
    if (r.status === 401) { location.href = '/login?next=' + encodeURIComponent(location.pathname + location.search); return; }
    const body = await r.json().catch(() => ({ error: 'the server answered ' + r.status }));
    toUrl(text);
    remember(text);
    if (!r.ok || body.error) {
      status.textContent = '';
      showError(body);
      return;
    }
    const ms = Math.round(performance.now() - started);
    status.textContent = `${body.row_count} row${body.row_count === 1 ? '' : 's'} in ${ms} ms` +
      (body.truncated ? ` (the first ${body.rows.length} shown; the downloads have all)` : '');
    state.result = body;
    state.sort = null;
    state.page = 0;
    state.explain = explain;
    show();
  }
  function showError(body) {
    errorBox.hidden = false;
    errorBox.textContent = body.error + (body.line ? ` (line ${body.line}, column ${body.column})` : '');
    if (body.line) {
      state.errorAt = offsetOf(query.value, body.line, body.column);
      query.setSelectionRange(state.errorAt, state.errorAt);
      paint();
    }
  }
  $('#run').addEventListener('click', () => run(false));
  $('#explain').addEventListener('click', () => run(true));
  $('#cancel').addEventListener('click', async () => {
    if (state.running) {
      status.textContent = 'cancelling…';
      await post('/api/cancel', { id: state.running });
    }
  });

  // The result: grid (sorting, paging), plan, chart.
  function sortedRows() {
    const { rows, columns } = state.result;
    if (!state.sort) return rows;
    const { col, dir } = state.sort;
    const kind = columns[col].kind;
    const key = (v) => {
      if (v === null) return null;
      if (kind === 'number') return Number(v);
      if (kind === 'time') return Date.parse(v);
      return v;
    };
    return rows.slice().sort((a, b) => {
      const x = key(a[col]);
      const y = key(b[col]);
      if (x === y) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : 1) * dir;
    });
  }
  function show() {
    $('#result').hidden = false;
    const { columns } = state.result;
    const plan = $('#plan');
    const grid = $('#grid');
    if (state.explain) {
      plan.hidden = false;
      plan.replaceChildren(...planTree(state.result));
      grid.parentElement.hidden = true;
      $('.pager').hidden = true;
      $('#chart').replaceChildren();
      $('#rowcount').textContent = 'plan';
      return;
    }
    plan.hidden = true;
    grid.parentElement.hidden = false;
    const rows = sortedRows();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const head = el('tr', {}, ...columns.map((c, i) => {
      const mark = state.sort && state.sort.col === i ? (state.sort.dir > 0 ? ' ▲' : ' ▼') : '';
      const th = el('th', { title: c.type, class: c.kind === 'number' ? 'num' : '', tabindex: '0',
        'aria-sort': mark ? (state.sort.dir > 0 ? 'ascending' : 'descending') : 'none' }, c.name + mark);
      const sortBy = () => {
        state.sort = state.sort && state.sort.col === i ? { col: i, dir: -state.sort.dir } : { col: i, dir: 1 };
        show();
      };
      th.addEventListener('click', sortBy);
      th.addEventListener('keydown', (e) => { if (e.key === 'Enter') sortBy(); });
      return th;
    }));
    const body = el('tbody', {}, ...rows.slice(state.page * PAGE, (state.page + 1) * PAGE).map((row) =>
      el('tr', {}, ...row.map((v, i) => (v === null
        ? el('td', { class: 'null' }, 'NULL')
        : el('td', { class: columns[i].kind === 'number' ? 'num' : '' }, v))))));
    grid.replaceChildren(el('thead', {}, head), body);
    $('#rowcount').textContent = `${state.result.row_count} rows`;
    $('.pager').hidden = pages <= 1;
    $('#page').textContent = `page ${state.page + 1} of ${pages}`;
    $('#prev').disabled = state.page === 0;
    $('#next').disabled = state.page >= pages - 1;
    drawChart();
  }
  $('#prev').addEventListener('click', () => { state.page -= 1; show(); });
  $('#next').addEventListener('click', () => { state.page += 1; show(); });
  function setKind(kind) {
    state.kind = kind;
    $$('.kinds button').forEach((b) => b.setAttribute('aria-pressed', b.dataset.kind === kind ? 'true' : 'false'));
  }
  $$('.kinds button').forEach((b) => b.addEventListener('click', () => {
    setKind(b.dataset.kind);
    if (state.result) drawChart();
    if (query.value.trim()) toUrl(query.value.trim());
  }));
  window.addEventListener('resize', () => { if (state.result && !state.explain) drawChart(); });

  function drawChart() {
    const box = $('#chart');
    box.replaceChildren();
    const kind = state.kind;
    if (!kind || !state.result) return;
    const made = chart(state.result.columns, sortedRows(), kind, Math.max(320, box.clientWidth || 640));
    box.append(made);
  }

  // Copy and downloads.
  $('#copy').addEventListener('click', async () => {
    const { columns } = state.result;
    const lines = [columns.map((c) => c.name).join('\t')]
      .concat(sortedRows().map((r) => r.map((v) => (v === null ? '' : v)).join('\t')));
    const text = lines.join('\n');
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      const t = el('textarea', {}, text);
      document.body.append(t);
      t.select();
      document.execCommand('copy');
      t.remove();
    }
    status.textContent = `copied ${sortedRows().length} rows`;
  });
  async function download(format) {
    status.textContent = `preparing ${format}…`;
    const r = await post('/api/download', { sql: query.value.trim(), format });
    if (!r.ok) {
      const body = await r.json().catch(() => ({ error: 'the server answered ' + r.status }));
      showError(body);
      return;
    }
    const blob = await r.blob();
    const a = el('a', { href: URL.createObjectURL(blob), download: 'result.' + format });
    document.body.append(a);
    a.click();
    a.remove();
    status.textContent = `downloaded result.${format}`;
  }
  $('#csv').addEventListener('click', () => download('csv'));
  $('#parquet').addEventListener('click', () => download('parquet'));

  // A link reproduces a query (and its chart).
  showHistory();
  const params = new URLSearchParams(location.search);
  setKind(params.get('chart') || '');
  if (params.get('q')) {
    query.value = params.get('q');
    paint();
    run(false);
  } else {
    paint();
  }
  query.focus();
}

// EXPLAIN's text plans as trees: a line's indentation is its depth.
function planTree(result) {
  const typeCol = result.columns.findIndex((c) => c.name === 'plan_type');
  const planCol = result.columns.findIndex((c) => c.name === 'plan');
  return result.rows.map((row) => {
    const root = el('ul', { class: 'tree' });
    const stack = [[-1, root]];
    for (const line of (row[planCol] || '').split('\n')) {
      if (!line.trim()) continue;
      const depth = line.length - line.trimStart().length;
      while (stack.length > 1 && stack[stack.length - 1][0] >= depth) stack.pop();
      const li = el('li', {}, el('span', { class: 'node' }, line.trim()));
      stack[stack.length - 1][1].append(li);
      const children = el('ul');
      li.append(children);
      stack.push([depth, children]);
    }
    return el('details', { open: '' }, el('summary', {}, row[typeCol] || 'plan'), root);
  });
}

// ---------------------------------------------------------------- charts

const COLOURS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed'];

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
}

const TIME_STEPS = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400, 604800, 2592000]
  .map((s) => s * 1000);

function timeLabel(ms, step) {
  const iso = new Date(ms).toISOString();
  if (step >= 86400000) return iso.slice(0, 10);
  if (step >= 60000) return iso.slice(11, 16);
  return iso.slice(11, 19);
}

function numberLabel(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + 'G';
  if (a >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (a >= 1e4) return (v / 1e3).toFixed(1) + 'k';
  return String(Math.round(v * 100) / 100);
}

// A chart of a result: the first column is x, numeric columns are series.
function chart(columns, rows, kind, width) {
  const height = 280;
  const pad = { l: 56, r: 16, t: 16, b: 48 };
  const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'chart', 'data-kind': kind });
  const series = columns.map((c, i) => [c, i]).filter(([c, i]) => i > 0 && c.kind === 'number').slice(0, 5);
  if (!series.length || !rows.length) {
    root.append(svg('text', { x: 10, y: 20 }, 'a chart needs a first column for x and at least one numeric column'));
    return root;
  }
  const xKind = columns[0].kind;
  const numericX = (xKind === 'time' || xKind === 'number') && kind !== 'bar';
  const data = rows.slice(0, kind === 'bar' ? 200 : 10000);
  const xs = data.map((r) => (xKind === 'time' ? Date.parse(r[0]) : Number(r[0])));
  const ys = series.flatMap(([, i]) => data.map((r) => Number(r[i])).filter((v) => Number.isFinite(v)));
  let yMin = Math.min(0, ...ys);
  let yMax = Math.max(...ys);
  if (yMax === yMin) yMax = yMin + 1;
  const yStep = niceStep(yMax - yMin, 5);
  yMin = Math.floor(yMin / yStep) * yStep;
  yMax = Math.ceil(yMax / yStep) * yStep;
  const plotW = width - pad.l - pad.r;
  const plotH = height - pad.t - pad.b;
  const Y = (v) => pad.t + plotH - ((v - yMin) / (yMax - yMin)) * plotH;
  const axis = svg('g', { class: 'axis' });
  for (let v = yMin; v <= yMax + yStep / 2; v += yStep) {
    axis.append(svg('line', { x1: pad.l, x2: width - pad.r, y1: Y(v), y2: Y(v), class: 'gridline' }));
    axis.append(svg('text', { x: pad.l - 6, y: Y(v) + 4, 'text-anchor': 'end' }, numberLabel(v)));
  }
  root.append(axis);

  let X;
  if (numericX) {
    const finite = xs.filter((v) => Number.isFinite(v));
    let xMin = Math.min(...finite);
    let xMax = Math.max(...finite);
    if (xMax === xMin) {
      // One x: centre it in a window of a minute (time) or of 2 (numbers).
      const half = xKind === 'time' ? 30000 : 1;
      xMin -= half;
      xMax += half;
    }
    X = (v) => pad.l + ((v - xMin) / (xMax - xMin)) * plotW;
    if (xKind === 'time') {
      const step = TIME_STEPS.find((s) => (xMax - xMin) / s <= 8) || TIME_STEPS[TIME_STEPS.length - 1];
      for (let t = Math.ceil(xMin / step) * step; t <= xMax; t += step) {
        axis.append(svg('line', { x1: X(t), x2: X(t), y1: pad.t + plotH, y2: pad.t + plotH + 4 }));
        axis.append(svg('text', { x: X(t), y: pad.t + plotH + 18, 'text-anchor': 'middle', class: 'tick-time' }, timeLabel(t, step)));
      }
    } else {
      const step = niceStep(xMax - xMin, 6);
      for (let v = Math.ceil(xMin / step) * step; v <= xMax; v += step) {
        axis.append(svg('text', { x: X(v), y: pad.t + plotH + 18, 'text-anchor': 'middle' }, numberLabel(v)));
      }
    }
  } else {
    const band = plotW / data.length;
    X = (i) => pad.l + band * i + band / 2;
    const every = Math.ceil(data.length / Math.max(1, Math.floor(plotW / 70)));
    data.forEach((r, i) => {
      if (i % every) return;
      const label = r[0] === null ? 'NULL' : String(r[0]);
      axis.append(svg('text', { x: X(i), y: pad.t + plotH + 18, 'text-anchor': 'middle' },
        label.length > 12 ? label.slice(0, 11) + '…' : label));
    });
  }
  axis.append(svg('line', { x1: pad.l, x2: width - pad.r, y1: Y(0), y2: Y(0), class: 'zero' }));

  series.forEach(([col, ci], s) => {
    const colour = COLOURS[s % COLOURS.length];
    const g = svg('g', { class: 'series', fill: colour, stroke: colour, 'data-series': col.name });
    const points = data.map((r, i) => [numericX ? X(xs[i]) : X(i), Number(r[ci]), r]).filter(([x, v]) => Number.isFinite(x) && Number.isFinite(v));
    if (kind === 'bar') {
      const band = plotW / data.length;
      const w = Math.max(1, (band * 0.8) / series.length);
      points.forEach(([x, v, r]) => {
        const rect = svg('rect', { x: x - (band * 0.8) / 2 + w * s, y: Math.min(Y(v), Y(0)), width: w, height: Math.abs(Y(0) - Y(v)) });
        rect.append(svg('title', {}, `${r[0]}: ${v}`));
        g.append(rect);
      });
    } else if (kind === 'scatter') {
      points.forEach(([x, v, r]) => {
        const dot = svg('circle', { cx: x, cy: Y(v), r: 3 });
        dot.append(svg('title', {}, `${r[0]}: ${v}`));
        g.append(dot);
      });
    } else {
      const ordered = numericX ? points.slice().sort((a, b) => a[0] - b[0]) : points;
      const line = ordered.map(([x, v]) => `${x.toFixed(1)},${Y(v).toFixed(1)}`).join(' ');
      if (kind === 'area' && ordered.length) {
        const first = ordered[0][0].toFixed(1);
        const last = ordered[ordered.length - 1][0].toFixed(1);
        g.append(svg('polygon', { points: `${first},${Y(0)} ${line} ${last},${Y(0)}`, 'fill-opacity': '0.25', stroke: 'none' }));
      }
      g.append(svg('polyline', { points: line, fill: 'none', 'stroke-width': 2 }));
      if (ordered.length <= 100) {
        ordered.forEach(([x, v, r]) => {
          const dot = svg('circle', { cx: x, cy: Y(v), r: 2.5 });
          dot.append(svg('title', {}, `${r[0]}: ${v}`));
          g.append(dot);
        });
      }
    }
    root.append(g);
    const lx = pad.l + s * 140;
    root.append(svg('rect', { x: lx, y: height - 14, width: 10, height: 10, fill: colour }));
    root.append(svg('text', { x: lx + 14, y: height - 5, class: 'legend' }, col.name));
  });
  return root;
}

// ------------------------------------------------------------- pipeline

function pipeline() {
  const live = $('#live');
  setInterval(async () => {
    const r = await fetch(live.dataset.refresh).catch(() => null);
    if (r && r.ok) {
      // Rendered and escaped by the server.
      live.innerHTML = await r.text();
    }
  }, 5000);
}

// ------------------------------------------------------------ workflows

function workflows() {
  const message = $('#workflows-message');
  async function send(url, body) {
    const r = await post(url, body);
    const answer = await r.json().catch(() => ({ error: 'the server answered ' + r.status }));
    if (!r.ok || answer.error) {
      message.className = 'error';
      message.textContent = answer.error;
      return;
    }
    message.className = 'ok';
    message.textContent = `queued ${answer.queued.length} run(s): ${answer.queued.join(', ')}; the scheduler starts them`;
    setTimeout(() => location.reload(), 1500);
  }
  $$('form.trigger').forEach((form) => form.addEventListener('submit', (e) => {
    e.preventDefault();
    const job = form.closest('tr').dataset.job;
    const date = form.elements.date ? form.elements.date.value : '';
    send('/api/workflows/trigger', { job, date: date || null });
  }));
  $$('form.backfill').forEach((form) => form.addEventListener('submit', (e) => {
    e.preventDefault();
    const job = form.closest('tr').dataset.job;
    send('/api/workflows/backfill', {
      job, from: form.elements.from.value, to: form.elements.to.value,
      parallel: Number(form.elements.parallel.value) || 1,
    });
  }));
}

// ---------------------------------------------------------------- fraud

function fraud() {
  const badge = $('#feed-state');
  const tbody = $('#alerts');
  const source = new EventSource('/api/fraud/stream');
  source.addEventListener('open', () => { badge.textContent = 'live'; badge.className = 'badge ok'; });
  source.addEventListener('error', () => { badge.textContent = 'reconnecting'; badge.className = 'badge down'; });
  source.addEventListener('alert', (event) => {
    const a = JSON.parse(event.data);
    const when = new Date(a.source_commit_us / 1000).toISOString().replace('.000Z', 'Z');
    const link = el('a', { href: '/fraud/alert?id=' + encodeURIComponent(a.id) }, 'evidence');
    const row = el('tr', { class: 'new', 'data-alert': a.id },
      el('td', {}, when), el('td', {}, a.rule), el('td', {}, String(a.customer_id)),
      el('td', {}, a.order_id === null || a.order_id === undefined ? '' : String(a.order_id)),
      el('td', { class: 'detail' }, a.detail), el('td', {}, link));
    tbody.prepend(row);
  });
}
