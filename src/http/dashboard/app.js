// The stockflow dashboard: the views of one tenant, live. No framework and no
// build step: change streams are read as NDJSON with fetch (EventSource cannot
// send an Authorization header), applied one epoch at a time (at each
// progress line) to maps of rows, and rendered at most a few times a second.
'use strict';

const ROWS_SHOWN = 200;
const ALERTS_SHOWN = 100;
const EVENTS_SHOWN = 25;
const METRICS_EVERY_MS = 2000;
const GAUGES_EVERY_MS = 5000;
const RENDER_EVERY_MS = 400;
const HEARTBEAT_MS = 5000;
const FRESH_MS = 1500;
const HIDDEN_PAUSE_MS = 10000;
const KPI_METRICS = ['stock_movements', 'orders', 'revenue', 'units_sold', 'avg_order_value', 'orders_cancelled',
  'items_created', 'reservations_accepted', 'reservations_rejected', 'reservation_success_rate'];
const MONEY_METRICS = new Set(['revenue', 'avg_order_value', 'inventory_value']);
const TENANT_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);
const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 });
const compact = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });

const saved = {
  get(name) { try { return localStorage.getItem(name); } catch { return null; } },
  set(name, value) { try { localStorage.setItem(name, value); } catch { /* private mode */ } },
  remove(name) { try { localStorage.removeItem(name); } catch { /* private mode */ } },
};

/** A view's rows by key, and when each last changed (to flag it). */
class RowMap {
  constructor(keyOf) {
    this.keyOf = keyOf;
    this.rows = new Map();
    this.touched = new Map();
  }

  /** Applies one epoch's lines (`{row, diff}`); `fresh`: they are a new
   * snapshot. Answers whether keys came or went. */
  apply(lines, fresh) {
    if (fresh) this.rows = new Map();
    let keysChanged = fresh;
    const now = Date.now();
    for (const { row, diff } of lines) {
      const key = this.keyOf(row);
      if (diff > 0) {
        if (!this.rows.has(key)) keysChanged = true;
        this.rows.set(key, row);
        if (!fresh) this.touched.set(key, now);
      } else {
        // An update is a retraction and an insertion, in either order within
        // an epoch: retract only the row that is there.
        const there = this.rows.get(key);
        if (there && sameRow(there, row)) {
          this.rows.delete(key);
          keysChanged = true;
        }
      }
    }
    return keysChanged;
  }

  /** Forgets changes older than `FRESH_MS`. */
  prune() {
    const now = Date.now();
    for (const [key, at] of this.touched) if (now - at > FRESH_MS) this.touched.delete(key);
  }
}

const state = {
  tenant: initialTenant(),
  key: saved.get('stockflow.apiKey') || '',
  epoch: null,
  stock: new RowMap((row) => `${row.sku}\u0000${row.location}`),
  low: new RowMap((row) => `${row.sku}\u0000${row.location}`),
  kpis: new RowMap((row) => `${row.window}|${row.bucket}|${row.metric}|${row.group || ''}`),
  events: [],
  locations: new Set(),
  stockOrder: null,
  gauges: null,
  metrics: { previous: null, rates: [] },
  refused: null,
  dirty: new Set(),
};

function sameRow(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

// ---------------------------------------------------------------------------
// Requests: every one carries the key, and a refusal asks for one.

function headers(accept) {
  const h = { Accept: accept };
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}

async function request(path, accept, signal) {
  const response = await fetch(path, { headers: headers(accept), signal, cache: 'no-store' });
  if (response.status === 401 || response.status === 403) {
    refused(response.status, await problemDetail(response));
    throw new Error(`${path}: ${response.status}`);
  }
  // /metrics is served without a key: only the API says whether the key is good.
  if (response.ok && state.refused && path.startsWith('/v1/')) accepted();
  return response;
}

async function problemDetail(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || '';
  } catch {
    return '';
  }
}

function refused(status, detail) {
  const text = detail || '';
  // A refusal of a request for the tenant the page has just left: stale.
  const asked = /cannot name tenant `([^`]+)`/.exec(text);
  if (asked && asked[1] !== state.tenant) return;
  // A tenant key reads its own tenant only (the 403 names it): go there.
  const own = /scoped to tenant `([^`]+)`/.exec(text);
  if (status === 403 && own && own[1] !== state.tenant && TENANT_PATTERN.test(own[1])) {
    $('tenant').value = own[1];
    setTenant(own[1]);
    return;
  }
  state.refused = { status, detail };
  const why = status === 401
    ? (state.key ? 'The server did not accept this API key.' : 'This server needs an API key.')
    : `This key may not read tenant “${state.tenant}”.`;
  $('auth-message').textContent = detail ? `${why} (${detail})` : why;
  $('auth').hidden = false;
  setConnection();
}

function accepted() {
  state.refused = null;
  $('auth').hidden = true;
  setConnection();
}

// ---------------------------------------------------------------------------
// Change streams: NDJSON lines `{"epoch","row","diff"}`, `{"epoch","progress":true}`,
// `{"epoch","heartbeat":true}`, `{"error":problem}`. Lines are applied at the
// progress line that closes their epoch, so that a stream resumed with
// `from_epoch` applies nothing twice.

class Feed {
  constructor(name, path, apply) {
    this.name = name;
    this.path = path;
    this.apply = apply;
    this.epoch = null;
    this.failures = 0;
    this.state = 'connecting';
    this.detail = '';
    this.controller = null;
    this.wake = null;
    // Each start begins a new generation; a loop of an older one stops.
    this.generation = 0;
  }

  start() {
    this.stop();
    this.epoch = null;
    this.failures = 0;
    this.run(this.generation);
  }

  stop() {
    this.generation += 1;
    if (this.controller) this.controller.abort();
    if (this.wake) this.wake();
  }

  /** Reconnects at once (a new key was given). */
  retryNow() {
    if (this.wake) this.wake();
  }

  /** Closes the stream, keeping the rows and the epoch to resume from. */
  pause() {
    this.stop();
    this.setState('paused');
  }

  resume() {
    if (this.state === 'paused') this.run(this.generation);
  }

  async run(generation) {
    while (generation === this.generation) {
      try {
        // Refused to resume (410): a fresh snapshot, at once.
        if ((await this.once(generation)) === 'gone') continue;
        this.detail = 'the stream ended';
      } catch (error) {
        this.detail = error.message;
      }
      if (generation !== this.generation) return;
      this.failures += 1;
      const delay = Math.min(30000, 500 * 2 ** Math.min(this.failures, 6)) * (0.75 + Math.random() / 2);
      this.setState('waiting', Date.now() + delay);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.wake = () => { clearTimeout(timer); resolve(); };
      });
      if (generation === this.generation) this.wake = null;
    }
  }

  async once(generation) {
    this.setState('connecting');
    const controller = new AbortController();
    this.controller = controller;
    const query = new URLSearchParams({ tenant: state.tenant, heartbeat_ms: String(HEARTBEAT_MS) });
    if (this.epoch !== null) query.set('from_epoch', String(this.epoch));
    const response = await request(`${this.path}?${query}`, 'application/x-ndjson', controller.signal);
    if (generation !== this.generation) return;
    if (response.status === 410) {
      // Behind the retained changes, or the server restarted.
      this.epoch = null;
      return 'gone';
    }
    if (!response.ok) throw new Error(`${response.status} ${await problemDetail(response)}`);
    let fresh = this.epoch === null;
    let pending = [];
    let buffer = '';
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    this.setState('live');
    for (;;) {
      const { value, done } = await reader.read();
      if (done || generation !== this.generation) return;
      buffer += value;
      const lines = buffer.split('\n');
      buffer = lines.pop();
      for (const line of lines) {
        if (!line) continue;
        const message = JSON.parse(line);
        if (message.progress) {
          this.apply(pending, fresh);
          pending = [];
          fresh = false;
          this.epoch = message.epoch;
          this.failures = 0;
          noteEpoch(message.epoch);
        } else if (message.heartbeat) {
          noteEpoch(message.epoch);
        } else if (message.error) {
          this.epoch = null;
          throw new Error(message.error.detail || 'the stream ended with an error');
        } else {
          pending.push(message);
        }
      }
    }
  }

  setState(name, until) {
    this.state = name;
    this.until = until;
    setConnection();
  }
}

const feeds = [
  new Feed('stock', '/v1/views/stock/changes', (lines, fresh) => {
    for (const { row } of lines) if (!state.locations.has(row.location)) addLocation(row.location);
    if (state.stock.apply(lines, fresh)) state.stockOrder = null;
    schedule('stock');
  }),
  new Feed('low stock', '/v1/views/low_stock/changes', (lines, fresh) => {
    state.low.apply(lines, fresh);
    schedule('alerts', 'stock');
  }),
  new Feed('kpis', '/v1/views/kpis/changes', (lines, fresh) => {
    state.kpis.apply(lines, fresh);
    schedule('kpis');
  }),
  // Alert events come as lines of their own (not `{"row","diff"}`): newest first.
  new Feed('alert events', '/v1/alerts/stream', (events) => {
    if (!events.length) return;
    state.events = events.reverse().concat(state.events).slice(0, EVENTS_SHOWN);
    schedule('events');
  }),
];

function noteEpoch(epoch) {
  if (state.epoch === null || epoch > state.epoch) {
    state.epoch = epoch;
    schedule('header');
  }
}

function setConnection() {
  const element = $('connection');
  let name;
  let text;
  if (state.refused) {
    name = 'refused';
    text = state.refused.status === 401 ? 'API key needed' : 'not allowed';
  } else if (feeds.every((f) => f.state === 'paused')) {
    name = 'paused';
    text = 'paused (tab hidden)';
  } else if (feeds.every((f) => f.state === 'live')) {
    name = 'live';
    text = 'live';
  } else if (feeds.some((f) => f.state === 'waiting')) {
    name = 'waiting';
    const next = Math.min(...feeds.filter((f) => f.state === 'waiting').map((f) => f.until));
    text = `reconnecting in ${Math.max(1, Math.round((next - Date.now()) / 1000))} s`;
  } else {
    name = 'connecting';
    text = 'connecting…';
  }
  element.dataset.state = name;
  element.textContent = text;
  element.title = feeds.map((f) => `${f.name}: ${f.state}${f.detail && f.state !== 'live' ? ` (${f.detail})` : ''}`).join('\n');
}

// ---------------------------------------------------------------------------
// Polls: /metrics (ingestion rate and lag, server-wide) and the tenant's gauges.

function poll(every, task) {
  let timer = null;
  let generation = 0;
  const tick = async (mine) => {
    try {
      if (!document.hidden) await task();
    } catch {
      /* shown by the task; the next tick tries again */
    }
    if (mine === generation) timer = setTimeout(() => tick(mine), every);
  };
  return {
    /** (Re)starts at once: one chain of ticks whatever came before. */
    start() {
      clearTimeout(timer);
      generation += 1;
      tick(generation);
    },
  };
}

/** Prometheus text as `[{name, labels, value}]`. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, name, value] of (match[2] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[name] = value;
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function sumBy(samples, name, label) {
  const sums = new Map();
  for (const s of samples) {
    if (s.name !== name) continue;
    const key = label ? s.labels[label] : '';
    sums.set(key, (sums.get(key) || 0) + s.value);
  }
  return sums;
}

const total = (map) => [...map.values()].reduce((a, b) => a + b, 0);

const metricsPoll = poll(METRICS_EVERY_MS, async () => {
  let text;
  try {
    const response = await request('/metrics', 'text/plain');
    if (!response.ok) throw new Error(String(response.status));
    text = await response.text();
  } catch (error) {
    $('rate-detail').textContent = `metrics unavailable (${error.message})`;
    throw error;
  }
  const samples = parseMetrics(text);
  const now = performance.now();
  const sample = {
    at: now,
    events: sumBy(samples, 'stockflow_events_in_total', 'topic'),
    commands: total(sumBy(samples, 'stockflow_commands_total')),
    latencySum: total(sumBy(samples, 'stockflow_epoch_latency_seconds_sum')),
    latencyCount: total(sumBy(samples, 'stockflow_epoch_latency_seconds_count')),
  };
  const lag = sumBy(samples, 'stockflow_source_lag', 'topic');
  const previous = state.metrics.previous;
  state.metrics.previous = sample;

  $('lag').textContent = integer.format(total(lag));
  const lagging = [...lag].filter(([, v]) => v > 0).map(([topic, v]) => `${topic} ${integer.format(v)}`);
  $('lag-detail').textContent = lagging.length ? lagging.join(' · ') : `${lag.size} topics caught up`;
  const published = samples.find((s) => s.name === 'stockflow_published_epoch');
  if (!previous) {
    $('rate-detail').textContent = 'measuring…';
    return;
  }
  const seconds = (now - previous.at) / 1000;
  const perTopic = [...sample.events].map(([topic, n]) => [topic, (n - (previous.events.get(topic) || 0)) / seconds]);
  const rate = perTopic.reduce((a, [, r]) => a + r, 0);
  state.metrics.rates = state.metrics.rates.concat(rate).slice(-60);
  $('rate').textContent = decimal.format(rate);
  const busy = perTopic.filter(([, r]) => r > 0).map(([topic, r]) => `${topic} ${decimal.format(r)}`);
  const commands = (sample.commands - previous.commands) / seconds;
  $('rate-detail').textContent = [...busy, `commands ${decimal.format(commands)}/s`].join(' · ');
  drawSpark($('rate-spark'), state.metrics.rates);
  const epochs = sample.latencyCount - previous.latencyCount;
  $('latency').textContent = epochs > 0 ? `${decimal.format(((sample.latencySum - previous.latencySum) / epochs) * 1000)} ms` : '—';
  $('latency-detail').textContent = `${integer.format(epochs / seconds)} epochs/s${published ? ` · epoch ${integer.format(published.value)}` : ''}`;
});

const gaugesPoll = poll(GAUGES_EVERY_MS, async () => {
  const tenant = state.tenant;
  const response = await request(`/v1/kpis?${new URLSearchParams({ tenant, window: 'day' })}`, 'application/json');
  if (!response.ok) throw new Error(String(response.status));
  const answer = await response.json();
  if (tenant !== state.tenant) return;
  const g = answer.gauges || {};
  $('gauge-low').textContent = g.low_stock_skus === undefined ? '—' : integer.format(g.low_stock_skus);
  $('gauge-out').textContent = g.out_of_stock_skus === undefined ? '' : `${integer.format(g.out_of_stock_skus)} out of stock`;
  $('gauge-value').textContent = g.inventory_value === undefined ? '—' : compact.format(g.inventory_value);
  $('gauge-skus').textContent = g.skus_active === undefined ? '' : `${integer.format(g.skus_active)} active skus`;
});

// ---------------------------------------------------------------------------
// Rendering, throttled.

let renderTimer = null;

function schedule(...parts) {
  for (const part of parts) state.dirty.add(part);
  if (renderTimer === null) renderTimer = setTimeout(render, RENDER_EVERY_MS);
}

/** Renders at once (a control changed): the user sees the answer to their input. */
function renderNow(...parts) {
  for (const part of parts) state.dirty.add(part);
  clearTimeout(renderTimer);
  render();
}

function render() {
  renderTimer = null;
  const dirty = state.dirty;
  state.dirty = new Set();
  if (dirty.has('header')) $('as-of').textContent = state.epoch === null ? '' : `as of epoch ${integer.format(state.epoch)}`;
  if (dirty.has('stock')) renderStock();
  if (dirty.has('alerts')) renderAlerts();
  if (dirty.has('events')) renderEvents();
  if (dirty.has('kpis')) renderKpis();
  // Rows flagged as just changed lose the flag once it is old.
  state.stock.prune();
  if (state.stock.touched.size) schedule('stock');
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function time(text) {
  if (!text) return '';
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? text : date.toLocaleTimeString([], { hour12: false });
}

function renderStock() {
  if (!state.stockOrder) state.stockOrder = [...state.stock.rows.keys()].sort();
  const search = $('search').value.trim().toLowerCase();
  const location = $('location').value;
  const lowOnly = $('low-only').checked;
  const shown = [];
  let matching = 0;
  for (const key of state.stockOrder) {
    const row = state.stock.rows.get(key);
    if (!row) continue;
    if (location && row.location !== location) continue;
    if (search && !row.sku.toLowerCase().includes(search)) continue;
    if (lowOnly && !state.low.rows.has(key)) continue;
    matching += 1;
    if (shown.length < ROWS_SHOWN) shown.push([key, row]);
  }
  const tbody = document.createElement('tbody');
  tbody.id = 'stock-rows';
  for (const [key, row] of shown) {
    const tr = tbody.insertRow();
    tr.dataset.testid = 'stock-row';
    tr.dataset.sku = row.sku;
    tr.dataset.location = row.location;
    const low = state.low.rows.get(key);
    if (low) tr.classList.add(low.out_of_stock ? 'out' : 'low');
    if (state.stock.touched.has(key)) tr.classList.add('fresh');
    cell(tr, row.sku, 'mono');
    cell(tr, row.location);
    cell(tr, integer.format(row.on_hand), 'num');
    cell(tr, integer.format(row.reserved), 'num');
    cell(tr, integer.format(row.available), 'num available').dataset.testid = 'available';
    cell(tr, time(row.updated_at), 'muted');
  }
  $('stock-rows').replaceWith(tbody);
  const all = state.stock.rows.size;
  const count = matching === all ? `${integer.format(all)} rows` : `${integer.format(matching)} of ${integer.format(all)} rows`;
  $('stock-count').textContent = matching > shown.length ? `${count} · first ${shown.length} shown` : count;
}

function renderAlerts() {
  const rows = [...state.low.rows.values()].sort((a, b) => (b.since || '').localeCompare(a.since || '') || a.sku.localeCompare(b.sku));
  const tbody = document.createElement('tbody');
  tbody.id = 'alert-rows';
  for (const row of rows.slice(0, ALERTS_SHOWN)) {
    const tr = tbody.insertRow();
    tr.dataset.testid = 'alert-row';
    tr.dataset.sku = row.sku;
    tr.dataset.location = row.location;
    tr.className = row.out_of_stock ? 'out' : 'low';
    cell(tr, row.sku, 'mono');
    cell(tr, row.location);
    cell(tr, integer.format(row.available), 'num');
    cell(tr, integer.format(row.threshold), 'num');
    cell(tr, row.suggested_reorder_qty > 0 ? `+${integer.format(row.suggested_reorder_qty)}` : '', 'num');
    cell(tr, time(row.since), 'muted');
  }
  $('alert-rows').replaceWith(tbody);
  const skus = new Set(rows.map((r) => r.sku)).size;
  const out = rows.filter((r) => r.out_of_stock).length;
  $('alert-count').textContent = rows.length
    ? `${integer.format(rows.length)} active on ${integer.format(skus)} skus${out ? ` · ${integer.format(out)} out of stock` : ''}${rows.length > ALERTS_SHOWN ? ` · newest ${ALERTS_SHOWN} shown` : ''}`
    : 'none active';
}

function renderEvents() {
  const list = $('alert-events');
  list.replaceChildren(...state.events.map((event) => {
    const li = document.createElement('li');
    li.dataset.testid = 'alert-event';
    li.dataset.sku = event.sku;
    li.className = event.state;
    const what = document.createElement('span');
    what.className = 'kind';
    what.textContent = `${event.kind.replace('_', ' ')} ${event.state}`;
    const where = document.createElement('span');
    where.className = 'mono';
    where.textContent = `${event.sku} @ ${event.location}`;
    const level = document.createElement('span');
    level.className = 'muted';
    level.textContent = `${integer.format(event.available)} / ${integer.format(event.threshold)} · ${time(event.ts)}`;
    li.append(what, where, level);
    return li;
  }));
}

function addLocation(location) {
  state.locations.add(location);
  const select = $('location');
  const option = new Option(location, location);
  const after = [...select.options].slice(1).find((o) => o.value > location);
  select.add(option, after || null);
}

// ---------------------------------------------------------------------------
// Charts: inline SVG, drawn from scratch on each change.

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function drawSpark(target, values) {
  if (values.length < 2) return;
  const max = Math.max(...values, 1);
  const step = 200 / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(34 - (v / max) * 32).toFixed(1)}`).join(' ');
  target.replaceChildren(svg('polyline', { points, class: 'spark-line' }));
}

function formatValue(metric, value) {
  if (metric === 'reservation_success_rate') return `${decimal.format(value * 100)}%`;
  if (MONEY_METRICS.has(metric)) return Math.abs(value) >= 10000 ? compact.format(value) : decimal.format(value);
  return Math.abs(value) >= 10000 ? compact.format(value) : integer.format(value);
}

function renderKpis() {
  const metric = $('metric').value;
  drawBars('hour', 24, 3600000, metric);
  drawBars('day', 30, 86400000, metric);
}

function drawBars(span, count, length, metric) {
  // Buckets of this window and metric; the chart ends at the newest bucket
  // with data (as GET /v1/kpis does), else at the current one.
  const values = new Map();
  let newest = -Infinity;
  for (const row of state.kpis.rows.values()) {
    if (row.window !== span || row.group) continue;
    const bucket = Date.parse(row.bucket);
    newest = Math.max(newest, bucket);
    if (row.metric === metric) values.set(bucket, (values.get(bucket) || 0) + Number(row.value));
  }
  const end = Number.isFinite(newest) ? newest : Math.floor(Date.now() / length) * length;
  const buckets = Array.from({ length: count }, (_, i) => end - (count - 1 - i) * length);
  const max = Math.max(0, ...buckets.map((b) => values.get(b) || 0));
  const [width, height, left, right, bottom, top] = [600, 150, 44, 14, 20, 8];
  const plot = height - bottom - top;
  const slot = (width - left - right) / count;
  const chart = $(`kpi-${span}`);
  const parts = [
    svg('line', { x1: left, y1: top + plot, x2: width - right, y2: top + plot, class: 'axis' }),
    svg('text', { x: left - 6, y: top + plot, class: 'tick', 'text-anchor': 'end' }, '0'),
  ];
  if (max > 0) parts.push(svg('text', { x: left - 6, y: top + 8, class: 'tick', 'text-anchor': 'end' }, formatValue(metric, max)));
  else parts.push(svg('text', { x: (left + width - right) / 2, y: top + plot / 2, class: 'empty', 'text-anchor': 'middle' }, 'no data in these buckets'));
  buckets.forEach((bucket, i) => {
    const value = values.get(bucket) || 0;
    const h = max > 0 ? (value / max) * plot : 0;
    const x = left + i * slot + slot * 0.15;
    const bar = svg('rect', { x: x.toFixed(1), y: (top + plot - h).toFixed(1), width: (slot * 0.7).toFixed(1), height: Math.max(h, value ? 1 : 0).toFixed(1), class: 'bar' });
    bar.dataset.bucket = new Date(bucket).toISOString();
    bar.dataset.value = String(value);
    bar.append(svg('title', {}, `${label(bucket, span, true)}: ${formatValue(metric, value)}`));
    parts.push(bar);
    const every = span === 'hour' ? 6 : 7;
    if ((count - 1 - i) % every === 0) {
      parts.push(svg('text', { x: (left + i * slot + slot / 2).toFixed(1), y: height - 5, class: 'tick', 'text-anchor': 'middle' }, label(bucket, span, false)));
    }
  });
  chart.replaceChildren(...parts);
  chart.dataset.buckets = String(values.size);
  const current = values.get(end);
  $(`kpi-${span}-now`).textContent = current === undefined ? '' : `· latest ${formatValue(metric, current)}`;
}

function label(ms, span, long) {
  const iso = new Date(ms).toISOString();
  if (span === 'hour') return long ? `${iso.slice(0, 10)} ${iso.slice(11, 16)} UTC` : iso.slice(11, 16);
  return long ? iso.slice(0, 10) : iso.slice(5, 10);
}

// ---------------------------------------------------------------------------
// Tenant, key, controls.

function initialTenant() {
  const fromUrl = new URLSearchParams(location.search).get('tenant');
  const candidate = fromUrl || saved.get('stockflow.tenant') || 'default';
  return TENANT_PATTERN.test(candidate) ? candidate : 'default';
}

function startAll() {
  for (const feed of feeds) feed.start();
  metricsPoll.start();
  gaugesPoll.start();
}

function setTenant(tenant) {
  if (!TENANT_PATTERN.test(tenant)) {
    $('tenant').setCustomValidity('1–64 of A-Z a-z 0-9 . _ -');
    $('tenant').reportValidity();
    return;
  }
  $('tenant').setCustomValidity('');
  if (tenant === state.tenant) return;
  state.tenant = tenant;
  saved.set('stockflow.tenant', tenant);
  const url = new URL(location.href);
  url.searchParams.set('tenant', tenant);
  history.replaceState(null, '', url);
  state.stock = new RowMap(state.stock.keyOf);
  state.low = new RowMap(state.low.keyOf);
  state.kpis = new RowMap(state.kpis.keyOf);
  state.events = [];
  state.stockOrder = null;
  state.locations.clear();
  $('location').replaceChildren(new Option('all locations', ''));
  state.refused = null;
  $('auth').hidden = true;
  for (const feed of feeds) feed.start();
  gaugesPoll.start();
  schedule('stock', 'alerts', 'events', 'kpis');
}

function setKey(key) {
  state.key = key;
  if (key) saved.set('stockflow.apiKey', key); else saved.remove('stockflow.apiKey');
  // The prompt stays until the API answers with the new key.
  for (const feed of feeds) {
    feed.failures = 0;
    feed.retryNow();
  }
  metricsPoll.start();
  gaugesPoll.start();
}

function init() {
  $('tenant').value = state.tenant;
  $('tenant').addEventListener('change', (e) => setTenant(e.target.value.trim()));
  $('metric').replaceChildren(...KPI_METRICS.map((m) => new Option(m.replaceAll('_', ' '), m)));
  $('metric').value = saved.get('stockflow.metric') || KPI_METRICS[0];
  $('metric').addEventListener('change', () => {
    saved.set('stockflow.metric', $('metric').value);
    renderNow('kpis');
  });
  for (const id of ['search', 'location', 'low-only']) $(id).addEventListener('input', () => renderNow('stock'));
  $('key-toggle').addEventListener('click', () => {
    $('auth').hidden = !$('auth').hidden;
    if (!$('auth').hidden) {
      $('auth-message').textContent = state.key ? 'A key is stored in this browser.' : 'No key stored: requests go without one.';
      $('key').focus();
    }
  });
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('key').value.trim();
    $('key').value = '';
    if (key) setKey(key);
  });
  $('key-forget').addEventListener('click', () => {
    $('key').value = '';
    setKey('');
  });
  // A browser opens six connections to a server at most: a hidden tab gives
  // its four back, and resumes where it was when shown again.
  let hiding = null;
  document.addEventListener('visibilitychange', () => {
    clearTimeout(hiding);
    if (document.hidden) hiding = setTimeout(() => { for (const feed of feeds) feed.pause(); }, HIDDEN_PAUSE_MS);
    else for (const feed of feeds) feed.resume();
  });
  // The "reconnecting in N s" countdown.
  setInterval(() => { if (feeds.some((f) => f.state === 'waiting')) setConnection(); }, 1000);
  startAll();
  schedule('stock', 'alerts', 'events', 'kpis');
}

init();
