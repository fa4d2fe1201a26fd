// Feral's dashboard: the job list and the workers (#/), live from the server-sent events
// of /api/events; one job's live page (#/jobs/ID) fed by /api/jobs/ID/events; and several
// jobs side by side (#/compare/ID,ID,...). No libraries: the charts
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
    // The first tick names the axis ("epoch 1"), so that no label runs off the left edge.
    const first = i === 0 && count > 1;
    chart.append(svg('text', { class: 'epoch-tick', x: first ? x(i) - 3 : x(i), y: height - 8, 'text-anchor': first ? 'start' : 'middle' }, first ? 'epoch 1' : String(i + 1)));
  }
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

const chosen = new Set(); // the jobs picked for comparing, kept across the list's updates
const palette = ['#0369a1', '#c2410c', '#047857', '#7c3aed', '#b45309', '#be185d', '#0f766e', '#4b5563'];

// "42 s", "3 min 20 s", "2 h 05 min".
function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '-';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

// How long a job ran (or has run so far), in seconds.
const ranFor = (job) => ((job.ended_at_ms ?? Date.now()) - job.created_at_ms) / 1000;
const rate = (x) => (x === null || x === undefined ? '-' : `${x.toFixed(0)}/s`);

// Renders each `name` event of the event stream at `path` until done(value) holds or the page
// is left; a dropped stream is opened again after 2 s. Returns whether done() held.
async function follow(path, name, render, controller, done = () => false) {
  let finished = false;
  while (!finished && !controller.signal.aborted) {
    try {
      await readEvents(path, (event, data) => {
        if (event !== name) return;
        const value = JSON.parse(data);
        finished = done(value);
        render(value);
      }, controller.signal);
    } catch (error) {
      if (controller.signal.aborted) return false;
      if (error instanceof Unauthorized) throw error;
      connection.textContent = `reconnecting (${error.message})`;
    }
    if (!finished && !controller.signal.aborted) await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  return finished;
}

function renderList({ jobs, workers }) {
  const known = new Set(jobs.map((job) => job.id));
  for (const id of chosen) if (!known.has(id)) chosen.delete(id);
  const compare = el('button', { id: 'compare', type: 'button' }, 'Compare selected');
  const update = () => {
    compare.disabled = chosen.size < 2;
    compare.textContent = chosen.size < 2 ? 'Compare: pick two or more jobs' : `Compare ${chosen.size} jobs`;
  };
  compare.addEventListener('click', () => { location.hash = `#/compare/${[...chosen].map(encodeURIComponent).join(',')}`; });
  update();
  const jobRows = jobs.map((job) => {
    const box = el('input', { type: 'checkbox', 'data-compare': job.id, 'aria-label': `compare ${job.name}` });
    box.checked = chosen.has(job.id);
    box.addEventListener('change', () => { if (box.checked) chosen.add(job.id); else chosen.delete(job.id); update(); });
    return el('tr', { 'data-job': job.id, 'data-state': job.state, 'data-epoch': job.epoch ?? 0, 'data-round': job.round },
      el('td', {}, box),
      el('td', {}, el('a', { href: `#/jobs/${job.id}` }, job.name)),
      el('td', { class: 'muted' }, job.id),
      el('td', {}, stateBadge(job.state)),
      el('td', { class: 'num' }, `${job.round}/${job.rounds_planned}`),
      el('td', { class: 'num' }, job.epoch === null ? '-' : `${job.epoch}/${job.epochs_total}`),
      el('td', { class: 'num' }, fixed(job.macro_f1)),
      el('td', { class: 'num' }, rate(job.images_per_second)),
      el('td', { class: 'num' }, duration(ranFor(job))),
      el('td', { class: 'num' }, job.eta_seconds === null ? '-' : `~${duration(job.eta_seconds)}`),
      el('td', { class: 'muted' }, new Date(job.created_at_ms).toLocaleString()));
  });
  const workerRows = workers.map((w) => el('tr', { 'data-worker': w.id },
    el('td', {}, w.id), el('td', {}, w.hostname), el('td', {}, w.state),
    el('td', {}, w.slots.join(', ')), el('td', {}, w.running.join(', ') || '-'),
    el('td', { class: 'num' }, `${w.heartbeat_age_s.toFixed(1)} s`)));
  view.replaceChildren(
    el('h1', {}, 'Jobs'),
    el('section', { class: 'panel' }, jobs.length === 0 ? el('p', { class: 'muted' }, 'No jobs yet: submit one with `feral submit job.toml`.') : [
      el('table', { id: 'jobs' },
        el('tr', {}, ['', 'name', 'id', 'state', 'round', 'epoch', 'val macro-F1', 'images/s', 'duration (from submit)', 'ETA', 'submitted'].map((h) => el('th', {}, h))),
        jobRows),
      el('p', { class: 'actions' }, compare)]),
    el('h1', {}, 'Workers'),
    el('section', { class: 'panel' }, workers.length === 0 ? el('p', { class: 'muted' }, 'No workers registered.') :
      el('table', { id: 'workers' },
        el('tr', {}, ['worker', 'host', 'state', 'slots', 'running', 'heartbeat'].map((h) => el('th', {}, h))),
        workerRows)));
  connection.textContent = `live: ${jobs.length} jobs, ${workers.filter((w) => w.state === 'live').length} live workers`;
}

// The job list, live: one event stream (/api/events), a new list on every change.
async function showList(controller) {
  view.replaceChildren(el('p', { class: 'muted' }, 'connecting…'));
  await follow('/api/events', 'list', renderList, controller);
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
  const facts = el('p', { id: 'facts', class: 'muted' },
    `dataset ${job.spec.dataset}`,
    job.train_samples === null ? '' : ` (${job.train_samples} labelled, ${job.val_samples} validation, ${job.pool_samples} unlabelled images)`,
    ` · started ${new Date(job.created_at_ms).toLocaleString()} · ${job.ended_at_ms ? 'took' : 'running for'} ${duration(ranFor(job))}`,
    job.eta_seconds === null ? '' : ` · about ${duration(job.eta_seconds)} of training left`,
    job.images_per_second === null ? '' : ` · ${rate(job.images_per_second).replace('/s', ' images/s')} in the last epoch`);
  const spec = el('details', { id: 'spec', class: 'panel' }, el('summary', {}, 'Job spec (as submitted)'), el('pre', {}, job.spec_toml));
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
    facts,
    curves,
    el('div', { class: 'grid' },
      panel(`Per-class F1 (validation of ${job.latest_of || 'nothing yet'})`, barChart('per-class', names, job.latest?.per_class_f1 ?? [])),
      panel(`Confusion matrix (validation of ${job.latest_of || 'nothing yet'}; rows: true class)`, job.latest && job.latest.confusion.length === names.length ** 2
        ? heatmap(names, job.latest.confusion) : el('p', { class: 'muted' }, 'No validation yet.'))),
    panel('Rounds', el('table', { id: 'rounds' },
      el('tr', {}, ['round', 'val macro-F1', 'test macro-F1', 'pseudo-labels', 'precision', 'online rate', 'online precision'].map((h) => el('th', { class: 'num' }, h))),
      rounds)),
    panel('Pseudo-labels by class', histograms.length ? el('div', { class: 'grid' }, histograms) : el('p', { class: 'muted' }, 'No round has selected pseudo-labels yet.')),
    spec);
}

async function showJob(id, controller) {
  view.replaceChildren(el('p', { class: 'muted' }, 'connecting…'));
  connection.textContent = 'live';
  // The stream ends after the job's final state; a dropped one is opened again.
  const final = await follow(`/api/jobs/${encodeURIComponent(id)}/events`, 'job', renderJob, controller,
    (job) => ['succeeded', 'failed', 'cancelled'].includes(job.state));
  if (!controller.signal.aborted) connection.textContent = final ? 'finished' : '';
}

// A spec as dotted fields: {train: {epochs: 4}} -> [['train.epochs', '4']].
function fields(value, prefix = '') {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    return Object.entries(value).flatMap(([key, inner]) => fields(inner, prefix ? `${prefix}.${key}` : key));
  }
  return [[prefix, JSON.stringify(value)]];
}

function renderCompare(jobs) {
  const colors = jobs.map((_, i) => palette[i % palette.length]);
  const swatch = (i) => el('i', { class: 'swatch', style: `background:${colors[i]}` });
  const count = Math.max(...jobs.map((job) => job.epochs.length));
  const series = (value) => jobs.map((job, i) => ({ name: `${job.name} (${job.id})`, color: colors[i], values: job.epochs.map(value) }));
  const f1s = jobs.flatMap((job) => job.epochs.map((e) => e.val_macro_f1));

  const summary = el('table', { id: 'compare-jobs' },
    el('tr', {}, ['', 'name', 'id', 'state', 'saved val macro-F1', 'test macro-F1', 'accuracy', 'duration', 'images/s'].map((h) => el('th', {}, h))),
    jobs.map((job, i) => el('tr', { 'data-job': job.id },
      el('td', {}, swatch(i)), el('td', {}, el('a', { href: `#/jobs/${job.id}` }, job.name)), el('td', { class: 'muted' }, job.id),
      el('td', {}, stateBadge(job.state)),
      el('td', { class: 'num' }, fixed(job.latest?.macro_f1)), el('td', { class: 'num' }, fixed(job.test?.macro_f1)),
      el('td', { class: 'num' }, percent(job.latest?.accuracy)), el('td', { class: 'num' }, duration(ranFor(job))),
      el('td', { class: 'num' }, rate(job.images_per_second)))));

  // Per-class F1 of each job's saved model (else its last epoch), classes matched by name.
  const classes = [...new Set(jobs.flatMap((job) => job.class_names))];
  const f1Of = (job, name) => job.latest?.per_class_f1?.[job.class_names.indexOf(name)] ?? null;
  const perClass = el('table', { id: 'compare-per-class' },
    el('tr', {}, el('th', {}, 'class'), jobs.map((job, i) => el('th', { class: 'num' }, swatch(i), ` ${job.name}`))),
    classes.map((name) => {
      const values = jobs.map((job) => f1Of(job, name));
      const best = Math.max(...values.filter((v) => v !== null));
      return el('tr', { 'data-class': name }, el('td', {}, name),
        values.map((v) => el('td', { class: v !== null && v === best && jobs.length > 1 ? 'num best' : 'num' }, fixed(v))));
    }));

  // The spec fields in which the jobs differ (every field, defaults filled in).
  const specs = jobs.map((job) => new Map(fields(job.spec)));
  const keys = [...new Set(specs.flatMap((spec) => [...spec.keys()]))];
  const differing = keys.filter((key) => new Set(specs.map((spec) => spec.get(key) ?? '')).size > 1);
  const diff = differing.length === 0 ? el('p', { id: 'spec-diff', class: 'muted' }, 'The specs are the same in every field.') :
    el('table', { id: 'spec-diff' },
      el('tr', {}, el('th', {}, 'field'), jobs.map((job, i) => el('th', {}, swatch(i), ` ${job.name}`))),
      differing.map((key) => el('tr', { 'data-field': key }, el('td', {}, key), specs.map((spec) => el('td', {}, spec.get(key) ?? '-')))));

  view.replaceChildren(
    el('p', {}, el('a', { href: '#/' }, '← all jobs')),
    el('h1', {}, `Comparing ${jobs.length} jobs`),
    panel('Jobs', summary),
    el('div', { class: 'grid' },
      panel('Validation macro-F1 by epoch', lineChart('compare-f1', series((e) => e.val_macro_f1), { count, ...around(f1s) })),
      panel('Training loss by epoch', lineChart('compare-loss', series((e) => e.train_loss), { count }))),
    el('div', { class: 'grid' },
      panel('Per-class F1 (validation of each saved model)', perClass),
      panel('Spec fields that differ', diff)));
}

// Several jobs side by side (#/compare/ID,ID,...), as they are when the page opens.
async function showCompare(ids) {
  if (ids.length < 2 || ids.length > palette.length) throw new Error(`compare takes 2 to ${palette.length} jobs, got ${ids.length}`);
  view.replaceChildren(el('p', { class: 'muted' }, 'loading…'));
  const jobs = await Promise.all(ids.map((id) => api(`/api/jobs/${encodeURIComponent(id)}`)));
  renderCompare(jobs);
  connection.textContent = `comparing ${jobs.length} jobs`;
}

async function route() {
  if (openStream) openStream.abort();
  const controller = new AbortController();
  openStream = controller;
  login.hidden = true;
  const job = location.hash.match(/^#\/jobs\/([^/]+)$/);
  const compare = location.hash.match(/^#\/compare\/([^/]+)$/);
  try {
    if (job) await showJob(decodeURIComponent(job[1]), controller);
    else if (compare) await showCompare(compare[1].split(',').filter(Boolean).map(decodeURIComponent));
    else await showList(controller);
  } catch (error) {
    if (controller.signal.aborted) return;
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
