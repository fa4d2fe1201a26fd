// Feral's dashboard: the job list and the workers (#/), and one job's live page
// (#/jobs/ID) fed by server-sent events from /api/jobs/ID/events. No libraries: the charts
// are SVG drawn here. With tokens, the token is kept in sessionStorage and sent in the
// authorization header, so events are read through fetch rather than EventSource.
'use strict';

const view = document.getElementById('view');
const connection = document.getElementById('connection');
const login = document.getElementById('login');
let token = sessionStorage.getItem('feral-token') || '';
let openStream = null; // the AbortController of the job page's event stream

class Unauthorized extends Error {}

function authHeaders() {
  return token ? { authorization: 'Bearer ' + token } : {};
}

async function reasonOf(response) {
  try { return (await response.json()).error || response.statusText; } catch { return response.statusText; }
}

async function checked(response) {
  if (response.status === 401 || response.status === 403) throw new Unauthorized(await reasonOf(response));
  if (!response.ok) throw new Error(await reasonOf(response));
  return response;
}

async function api(path) {
  return (await checked(await fetch(path, { headers: authHeaders() }))).json();
}

// Reads a text/event-stream response and calls onEvent(name, data) for each event.
async function readEvents(path, onEvent, signal) {
  const response = await checked(await fetch(path, { headers: { ...authHeaders(), accept: 'text/event-stream' }, signal }));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) onEvent(name, data.join('\n'));
    }
  }
}

// ---- DOM and SVG helpers ------------------------------------------------------------

// Styles go through the CSSOM: the page's Content-Security-Policy refuses inline style
// attributes.
function setAttribute(node, key, value) {
  if (key === 'style') node.style.cssText = value;
  else node.setAttribute(key, value);
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) setAttribute(node, key, value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attributes)) setAttribute(node, key, value);
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

const fixed = (x, digits = 3) => (x === null || x === undefined ? '-' : x.toFixed(digits));
const percent = (x) => (x === null || x === undefined ? '-' : (100 * x).toFixed(1) + '%');
const stateBadge = (state) => el('span', { class: 'state ' + state }, state);

function panel(title, ...content) {
  return el('section', { class: 'panel' }, el('h2', {}, title), ...content);
}

// A line chart of several series over the epochs, with dashed lines where rounds start.
function lineChart(id, series, { yMin = 0, yMax = null, roundStarts = [], count }) {
  const width = 420, height = 200, left = 40, right = 10, top = 10, bottom = 24;
  const values = series.flatMap((s) => s.values).filter((v) => Number.isFinite(v));
  const high = yMax ?? Math.max(1e-6, ...values) * 1.05;
  const x = (i) => left + (count <= 1 ? 0 : (i * (width - left - right)) / (count - 1));
  const y = (v) => top + (1 - (v - yMin) / (high - yMin || 1)) * (height - top - bottom);
  const chart = svg('svg', { id, viewBox: `0 0 ${width} ${height}`, width: '100%', role: 'img' });
  for (let k = 0; k <= 4; k++) {
    const v = yMin + ((high - yMin) * k) / 4;
    chart.append(svg('line', { class: 'grid-line', x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    chart.append(svg('text', { x: left - 4, y: y(v) + 4, 'text-anchor': 'end' }, v.toFixed(high < 10 ? 2 : 0)));
  }
  roundStarts.forEach((start, r) => {
    chart.append(svg('line', { class: 'round-line', x1: x(start), x2: x(start), y1: top, y2: height - bottom }));
    chart.append(svg('text', { class: 'round-label', x: x(start) + 3, y: top + 10 }, `round ${r + 1}`));
  });
  chart.append(svg('line', { class: 'axis', x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
  // Epoch ticks (epochs counted over the whole job), at most about eight.
  const every = Math.max(1, Math.ceil(count / 8));
  for (let i = 0; i < count; i += every) {
    chart.append(svg('line', { class: 'tick', x1: x(i), x2: x(i), y1: height - bottom, y2: height - bottom + 4 }));
    chart.append(svg('text', { class: 'epoch-tick', x: x(i), y: height - 8, 'text-anchor': 'middle' }, String(i + 1)));
  }
  chart.append(svg('text', { x: left - 4, y: height - 8, 'text-anchor': 'end' }, 'epoch'));
  for (const s of series) {
    const points = s.values.map((v, i) => [x(i), y(v)]).filter(([, py]) => Number.isFinite(py));
    if (points.length === 0) continue;
    const d = points.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`).join(' ');
    chart.append(svg('path', { class: 'series', d, stroke: s.color, 'data-series': s.name, 'data-points': points.length, 'data-values': s.values.join(' ') }));
  }
  const legend = el('div', { class: 'legend' }, series.map((s) => el('span', {}, el('i', { style: `background:${s.color}` }), s.name)));
  return el('div', {}, chart, legend);
}

// A y range in [0, 1] around the values, to the nearest 0.05 outside them, so that a change
// from 0.756 to 0.824 does not look flat.
function around(values) {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return { yMin: 0, yMax: 1 };
  const yMin = Math.max(0, Math.floor(Math.min(...finite) * 20 - 1) / 20);
  const yMax = Math.min(1, Math.ceil(Math.max(...finite) * 20 + 1) / 20);
  return { yMin, yMax };
}

// Horizontal bars, one per class (values in [0, 1] unless max is given).
function barChart(id, names, values, { max = 1, format = (v) => fixed(v) } = {}) {
  const row = 20, left = 80, width = 420;
  const chart = svg('svg', { id, class: 'bars', viewBox: `0 0 ${width} ${row * names.length + 4}`, width: '100%', role: 'img' });
  names.forEach((name, i) => {
    const v = values[i] ?? 0;
    const w = max > 0 ? (v / max) * (width - left - 60) : 0;
    chart.append(svg('text', { x: left - 6, y: i * row + 14, 'text-anchor': 'end' }, name));
    chart.append(svg('rect', { x: left, y: i * row + 3, width: Math.max(0, w), height: row - 6, fill: 'var(--bar)', 'data-class': name }));
    chart.append(svg('text', { x: left + w + 4, y: i * row + 14 }, format(v)));
  });
  return chart;
}

// The confusion matrix as a heatmap: rows are true classes, shaded by the row's share.
function heatmap(names, confusion) {
  const n = names.length, cell = 34, left = 80, top = 70;
  const size = left + n * cell + 40;
  const chart = svg('svg', { id: 'confusion', viewBox: `0 0 ${size} ${top + n * cell + 4}`, width: '100%', role: 'img' });
  names.forEach((name, j) => {
    chart.append(svg('text', { x: left + j * cell + cell / 2, y: top - 6, transform: `rotate(-45 ${left + j * cell + cell / 2} ${top - 6})` }, name));
  });
  for (let i = 0; i < n; i++) {
    const row = confusion.slice(i * n, (i + 1) * n);
    const total = row.reduce((a, b) => a + b, 0) || 1;
    chart.append(svg('text', { x: left - 6, y: top + i * cell + cell / 2 + 4, 'text-anchor': 'end' }, names[i]));
    row.forEach((count, j) => {
      const share = count / total;
      chart.append(svg('rect', {
        class: 'cell', x: left + j * cell, y: top + i * cell, width: cell - 2, height: cell - 2,
        fill: `rgba(3, 105, 161, ${(0.06 + 0.94 * share).toFixed(3)})`, 'data-count': count,
      }, svg('title', {}, `true ${names[i]}, predicted ${names[j]}: ${count}`)));
      chart.append(svg('text', {
        x: left + j * cell + cell / 2 - 1, y: top + i * cell + cell / 2 + 3, 'text-anchor': 'middle',
        style: share > 0.5 ? 'fill:#fff' : '',
      }, String(count)));
    });
  }
  return chart;
}

// ---- Pages ---------------------------------------------------------------------------

async function showList() {
  const [jobs, workers] = await Promise.all([api('/api/jobs'), api('/api/workers')]);
  const jobRows = jobs.map((job) => el('tr', { 'data-job': job.id },
    el('td', {}, el('a', { href: `#/jobs/${job.id}` }, job.name)),
    el('td', { class: 'muted' }, job.id),
    el('td', {}, stateBadge(job.state)),
    el('td', { class: 'num' }, `${job.round}/${job.rounds_planned}`),
    el('td', { class: 'num' }, job.epoch === null ? '-' : `${job.epoch}/${job.epochs_total}`),
    el('td', { class: 'num' }, fixed(job.macro_f1)),
    el('td', { class: 'muted' }, new Date(job.created_at_ms).toLocaleString())));
  const workerRows = workers.map((w) => el('tr', { 'data-worker': w.id },
    el('td', {}, w.id), el('td', {}, w.hostname), el('td', {}, w.state),
    el('td', {}, w.slots.join(', ')), el('td', {}, w.running.join(', ') || '-'),
    el('td', { class: 'num' }, `${w.heartbeat_age_s.toFixed(1)} s`)));
  view.replaceChildren(
    el('h1', {}, 'Jobs'),
    el('section', { class: 'panel' }, jobs.length === 0 ? el('p', { class: 'muted' }, 'No jobs yet: submit one with `feral submit job.toml`.') :
      el('table', { id: 'jobs' },
        el('tr', {}, ['name', 'id', 'state', 'round', 'epoch', 'val macro-F1', 'submitted'].map((h) => el('th', {}, h))),
        jobRows)),
    el('h1', {}, 'Workers'),
    el('section', { class: 'panel' }, workers.length === 0 ? el('p', { class: 'muted' }, 'No workers registered.') :
      el('table', { id: 'workers' },
        el('tr', {}, ['worker', 'host', 'state', 'slots', 'running', 'heartbeat'].map((h) => el('th', {}, h))),
        workerRows)),
    el('p', { class: 'muted' }, el('a', { href: '#/', onclick: 'location.reload()' }, 'refresh')));
  connection.textContent = `${jobs.length} jobs, ${workers.filter((w) => w.state === 'live').length} live workers`;
}

function renderJob(job) {
  const names = job.class_names.length ? job.class_names : (job.latest?.per_class_f1 ?? []).map((_, i) => `class ${i}`);
  const epochs = job.epochs;
  const roundStarts = epochs.map((e, i) => (i > 0 && e.round !== epochs[i - 1].round ? i : null)).filter((i) => i !== null);
  const chartOptions = { roundStarts, count: epochs.length };
  const progress = el('p', { id: 'progress', class: 'progress', 'data-round': job.round, 'data-epoch': job.epoch ?? 0, 'data-state': job.state },
    stateBadge(job.state), ` round ${job.round} of ${job.rounds_planned}`,
    job.epoch === null ? '' : ` · epoch ${job.epoch}/${job.epochs_total}`,
    job.best_round === null ? '' : ` · best round ${job.best_round}`,
    job.running_tasks.length ? ` · running ${job.running_tasks.join(', ')}` : '');
  const summary = el('p', {},
    `${job.best_round === null ? 'last epoch' : 'saved model'}: val macro-F1 ${fixed(job.latest?.macro_f1)}, accuracy ${percent(job.latest?.accuracy)}`,
    job.test ? ` · test macro-F1 ${fixed(job.test.macro_f1)}, accuracy ${percent(job.test.accuracy)}` : '',
    job.model_path ? el('span', { class: 'muted' }, ` · model ${job.model_path}`) : '');
  const curves = el('div', { class: 'grid', id: 'curves' },
    panel('Loss', lineChart('loss-chart', [{ name: 'train loss', color: 'var(--loss)', values: epochs.map((e) => e.train_loss) }], chartOptions)),
    panel('Accuracy', lineChart('accuracy-chart', [
      { name: 'train', color: 'var(--train)', values: epochs.map((e) => e.train_accuracy) },
      { name: 'val', color: 'var(--val)', values: epochs.map((e) => e.val_accuracy) }], { ...chartOptions, yMax: 1 })),
    panel('Validation macro-F1', lineChart('f1-chart', [{ name: 'val macro-F1', color: 'var(--f1)', values: epochs.map((e) => e.val_macro_f1) }], { ...chartOptions, ...around(epochs.map((e) => e.val_macro_f1)) })));
  const rounds = job.rounds.map((r) => el('tr', { 'data-round': r.round },
    el('td', { class: 'num' }, String(r.round)),
    el('td', { class: 'num' }, fixed(r.validation?.macro_f1)),
    el('td', { class: 'num' }, fixed(r.test?.macro_f1)),
    el('td', { class: 'num' }, r.round === 0 ? '-' : `${r.selected} of ${r.pool}`),
    el('td', { class: 'num' }, r.round === 0 ? '-' : percent(r.selection_precision)),
    el('td', { class: 'num' }, r.online_rate === null ? '-' : percent(r.online_rate)),
    el('td', { class: 'num' }, r.online_precision === null ? '-' : percent(r.online_precision))));
  const histograms = job.rounds.filter((r) => r.selected_per_class.length).map((r) =>
    el('div', {}, el('h2', {}, `Round ${r.round}: ${r.selected} pseudo-labels selected, precision ${percent(r.selection_precision)}`),
      barChart(`histogram-r${r.round}`, names, r.selected_per_class, { max: Math.max(1, ...r.selected_per_class), format: String })));
  view.replaceChildren(
    el('p', {}, el('a', { href: '#/' }, '← all jobs')),
    el('h1', {}, `${job.name} `, el('span', { class: 'muted' }, job.id)),
    progress,
    job.reason ? el('p', { class: 'error' }, job.reason) : '',
    ...job.warnings.map((w) => el('p', { class: 'error warning' }, `Warning: ${w}`)),
    job.last_failure ? el('p', { class: 'error' }, `Retrying${job.retry_at_ms && job.retry_at_ms > Date.now() ? ` in ${Math.ceil((job.retry_at_ms - Date.now()) / 1000)} s` : ''}; last failure: ${job.last_failure}`) : '',
    summary,
    curves,
    el('div', { class: 'grid' },
      panel(`Per-class F1 (validation of ${job.latest_of || 'nothing yet'})`, barChart('per-class', names, job.latest?.per_class_f1 ?? [])),
      panel(`Confusion matrix (validation of ${job.latest_of || 'nothing yet'}; rows: true class)`, job.latest && job.latest.confusion.length === names.length ** 2
        ? heatmap(names, job.latest.confusion) : el('p', { class: 'muted' }, 'No validation yet.'))),
    panel('Rounds', el('table', { id: 'rounds' },
      el('tr', {}, ['round', 'val macro-F1', 'test macro-F1', 'pseudo-labels', 'precision', 'online rate', 'online precision'].map((h) => el('th', { class: 'num' }, h))),
      rounds)),
    panel('Pseudo-labels by class', histograms.length ? el('div', { class: 'grid' }, histograms) : el('p', { class: 'muted' }, 'No round has selected pseudo-labels yet.')));
}

async function showJob(id) {
  const controller = new AbortController();
  openStream = controller;
  view.replaceChildren(el('p', { class: 'muted' }, 'connecting…'));
  let final = false;
  // The stream ends after the job's final state; a dropped one is opened again.
  while (!final && !controller.signal.aborted) {
    try {
      connection.textContent = 'live';
      await readEvents(`/api/jobs/${encodeURIComponent(id)}/events`, (name, data) => {
        if (name !== 'job') return;
        const job = JSON.parse(data);
        final = ['succeeded', 'failed', 'cancelled'].includes(job.state);
        renderJob(job);
      }, controller.signal);
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof Unauthorized) throw error;
      connection.textContent = `reconnecting (${error.message})`;
    }
    if (!final) await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  connection.textContent = final ? 'finished' : '';
}

async function route() {
  if (openStream) openStream.abort();
  openStream = null;
  login.hidden = true;
  const match = location.hash.match(/^#\/jobs\/([^/]+)$/);
  try {
    if (match) await showJob(decodeURIComponent(match[1]));
    else await showList();
  } catch (error) {
    if (error instanceof Unauthorized) {
      login.hidden = false;
      document.getElementById('login-error').textContent = error.message;
      view.replaceChildren();
    } else {
      view.replaceChildren(el('p', { class: 'error' }, `cannot load: ${error.message}`));
    }
  }
}

login.addEventListener('submit', (event) => {
  event.preventDefault();
  token = document.getElementById('token').value.trim();
  sessionStorage.setItem('feral-token', token);
  route();
});
window.addEventListener('hashchange', route);
route();
