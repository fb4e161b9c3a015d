// leadrouter console. Plain JavaScript, no dependencies, no build step.
//
// Rule: nothing that came from the API is ever parsed as HTML. Every element is made with
// createElement / createElementNS and every piece of data goes in as a text node or an
// attribute value (textContent, setAttribute), so a lead whose fields hold markup shows the
// markup as text.
'use strict';

(() => {
  const SVGNS = 'http://www.w3.org/2000/svg';
  const app = document.getElementById('app');
  let csrf = null;

  // ---------------------------------------------------------------------------------------
  // DOM helpers

  function append(el, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      el.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    return append(el, kids);
  }

  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVGNS, tag);
    setAttrs(el, attrs);
    return append(el, kids);
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  // ---------------------------------------------------------------------------------------
  // API

  async function api(path, opts = {}) {
    const init = {
      method: opts.method || 'GET',
      credentials: 'same-origin',
      headers: { accept: 'application/json' },
    };
    if (opts.body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    if (init.method !== 'GET' && csrf) init.headers['x-csrf-token'] = csrf;
    const r = await fetch(path, init);
    if (r.status === 401) {
      location.assign('/login');
      throw new Error('not logged in');
    }
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      body = null;
    }
    if (!r.ok) {
      const err = new Error((body && body.message) || 'HTTP ' + r.status);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  // ---------------------------------------------------------------------------------------
  // Formatting

  const pad2 = (n) => String(n).padStart(2, '0');

  function fmtNum(v, digits = 2) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString();
    if (Math.abs(v) >= 100) return v.toFixed(0);
    return v.toFixed(digits).replace(/\.?0+$/, '') || '0';
  }

  function fmtPct(v) {
    if (v === null || v === undefined) return '–';
    const p = v * 100;
    return (Math.abs(p - Math.round(p)) < 1e-9 ? p.toFixed(0) : p.toFixed(2)) + '%';
  }

  function fmtMs(v) {
    if (v === null || v === undefined) return '–';
    if (v >= 1000) return (v / 1000).toFixed(2) + ' s';
    return fmtNum(v, v < 10 ? 2 : 1) + ' ms';
  }

  function fmtTime(ms) {
    const d = new Date(ms);
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes());
  }

  function fmtDate(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' +
      pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
  }

  function age(iso) {
    const t = new Date(iso).getTime();
    if (Number.isNaN(t)) return '–';
    const sec = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (sec < 60) return sec + ' s';
    if (sec < 3600) return Math.round(sec / 60) + ' min';
    if (sec < 86400) return (sec / 3600).toFixed(1).replace(/\.0$/, '') + ' h';
    return (sec / 86400).toFixed(1).replace(/\.0$/, '') + ' d';
  }

  // ---------------------------------------------------------------------------------------
  // Charts: inline SVG, drawn here

  const W = 560;
  const H = 210;
  const PAD = { l: 56, r: 12, t: 12, b: 24 };

  function chartFrame(title) {
    return s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
  }

  function yAxis(svg, max, fmt) {
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const y = PAD.t + (1 - f) * (H - PAD.t - PAD.b);
      svg.appendChild(s('line', { class: 'grid', x1: PAD.l, x2: W - PAD.r, y1: y, y2: y }));
      if (f === 0 || f === 0.5 || f === 1) {
        svg.appendChild(s('text', { class: 'axis', x: PAD.l - 6, y: y + 4, 'text-anchor': 'end' }, fmt(max * f)));
      }
    }
  }

  function xLabels(svg, t, xOf) {
    const n = t.length;
    if (!n) return;
    const picks = n > 2 ? [0, Math.floor((n - 1) / 2), n - 1] : [0, n - 1];
    for (const i of new Set(picks)) {
      const anchor = i === 0 ? 'start' : i === n - 1 ? 'end' : 'middle';
      svg.appendChild(s('text', { class: 'axis', x: xOf(i), y: H - 6, 'text-anchor': anchor }, fmtTime(t[i])));
    }
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // opts: { t, series: [{ name, values }], fmt, max (fixed), ref: { value, label } }
  function lineChart(title, opts) {
    const svg = chartFrame(title);
    const n = opts.t.length;
    const all = opts.series.flatMap((x) => x.values).filter((v) => v !== null && v !== undefined);
    let max = opts.max !== undefined ? opts.max : niceMax(Math.max(opts.minMax || 0, ...all) * 1.1);
    const ref = opts.ref;
    const refOnChart = ref && ref.value <= max * 4 && opts.max === undefined;
    if (refOnChart) max = niceMax(Math.max(max, ref.value * 1.1));
    const xOf = (i) => PAD.l + (n <= 1 ? 0 : (i * (W - PAD.l - PAD.r)) / (n - 1));
    const yOf = (v) => PAD.t + (1 - Math.min(v, max) / max) * (H - PAD.t - PAD.b);
    yAxis(svg, max, opts.fmt);
    xLabels(svg, opts.t, xOf);
    if (ref) {
      if (refOnChart) {
        const y = yOf(ref.value);
        svg.appendChild(s('line', { class: 'slo', x1: PAD.l, x2: W - PAD.r, y1: y, y2: y }));
        svg.appendChild(s('text', { class: 'slo-label', x: W - PAD.r - 4, y: y - 5, 'text-anchor': 'end' }, ref.label));
      } else {
        svg.appendChild(s('text', { class: 'slo-label', x: W - PAD.r - 4, y: PAD.t + 12, 'text-anchor': 'end' },
          ref.label + ' (far above)'));
      }
    }
    if (!all.length) {
      svg.appendChild(s('text', { class: 'empty', x: (W + PAD.l) / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data in this window yet'));
      return svg;
    }
    opts.series.forEach((ser, si) => {
      const cls = 's' + (ser.color !== undefined ? ser.color : si) % 8;
      let d = '';
      let pen = false;
      const lone = [];
      ser.values.forEach((v, i) => {
        if (v === null || v === undefined) {
          pen = false;
          return;
        }
        const prevNull = i === 0 || ser.values[i - 1] === null || ser.values[i - 1] === undefined;
        const nextNull = i === n - 1 || ser.values[i + 1] === null || ser.values[i + 1] === undefined;
        if (prevNull && nextNull) lone.push(i);
        d += (pen ? 'L' : 'M') + xOf(i).toFixed(1) + ' ' + yOf(v).toFixed(1) + ' ';
        pen = true;
      });
      if (d) {
        const last = [...ser.values].reverse().find((v) => v !== null && v !== undefined);
        svg.appendChild(s('path', { class: 'line ' + cls, d: d.trim() },
          s('title', {}, ser.name + ': latest ' + opts.fmt(last))));
      }
      for (const i of lone) {
        svg.appendChild(s('circle', { class: 'dot ' + cls, cx: xOf(i), cy: yOf(ser.values[i]), r: 3 },
          s('title', {}, ser.name + ' at ' + fmtTime(opts.t[i]) + ': ' + opts.fmt(ser.values[i]))));
      }
    });
    return svg;
  }

  function stackedBars(title, hours, reasons) {
    const svg = chartFrame(title);
    const names = Object.keys(reasons);
    const n = hours.length;
    const totals = hours.map((_, i) => names.reduce((a, r) => a + (reasons[r][i] || 0), 0));
    const max = niceMax(Math.max(1, ...totals));
    const slot = (W - PAD.l - PAD.r) / Math.max(1, n);
    const xOf = (i) => PAD.l + i * slot + slot / 2;
    const yOf = (v) => PAD.t + (1 - v / max) * (H - PAD.t - PAD.b);
    yAxis(svg, max, (v) => fmtNum(v, 1));
    xLabels(svg, hours, xOf);
    if (!totals.some((x) => x > 0)) {
      svg.appendChild(s('text', { class: 'empty', x: (W + PAD.l) / 2, y: H / 2, 'text-anchor': 'middle' }, 'no DLQ placements in the last 24 h'));
      return svg;
    }
    hours.forEach((hr, i) => {
      let base = 0;
      names.forEach((r, ri) => {
        const v = reasons[r][i] || 0;
        if (!v) return;
        const y1 = yOf(base + v);
        const y0 = yOf(base);
        svg.appendChild(s('rect', {
          class: 'bar s' + (ri % 8), x: (xOf(i) - slot * 0.38).toFixed(1), width: (slot * 0.76).toFixed(1),
          y: y1.toFixed(1), height: Math.max(1, y0 - y1).toFixed(1),
        }, s('title', {}, r + ': ' + v + ' in the hour from ' + fmtTime(hr))));
        base += v;
      });
    });
    return svg;
  }

  function legend(items) {
    return h('div', { class: 'legend' }, items.map((it, i) =>
      h('span', { class: 'key' }, h('span', { class: 'swatch sw' + ((it.color !== undefined ? it.color : i) % 8) }), it.label)));
  }

  function card(title, ...kids) {
    return h('section', { class: 'card' }, h('h2', {}, title), kids);
  }

  function tile(label, value, sub, cls) {
    return h('div', { class: 'tile' + (cls ? ' ' + cls : '') },
      h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), h('div', { class: 'sub' }, sub || ''));
  }

  // ---------------------------------------------------------------------------------------
  // Overview

  const WINDOWS = ['15m', '1h', '6h', '24h'];

  function overviewPage() {
    const params = new URLSearchParams(location.search);
    let win = WINDOWS.includes(params.get('window')) ? params.get('window') : '1h';
    const updated = h('span', { class: 'updated', id: 'updated' }, '');
    const seg = h('div', { class: 'seg', role: 'group', 'aria-label': 'window' });
    const tiles = h('div', { class: 'tiles', id: 'tiles' });
    const charts = h('div', { class: 'charts', id: 'charts' });
    const problem = h('p', { class: 'error', hidden: true });
    for (const w of WINDOWS) {
      const b = h('button', { type: 'button', 'data-window': w, class: w === win ? 'active' : '' }, w);
      b.addEventListener('click', () => {
        win = w;
        for (const x of seg.children) x.classList.toggle('active', x.getAttribute('data-window') === w);
        history.replaceState(null, '', '/?window=' + w);
        refresh();
      });
      seg.appendChild(b);
    }
    append(clear(app), [
      h('div', { class: 'toolbar' }, h('h1', {}, 'Overview'), seg, updated),
      problem, tiles, charts,
    ]);

    async function refresh() {
      let d;
      try {
        d = await api('/api/overview?window=' + encodeURIComponent(win));
        problem.hidden = true;
      } catch (e) {
        problem.textContent = 'Could not load the figures: ' + e.message;
        problem.hidden = false;
        return;
      }
      renderOverview(d, tiles, charts);
      updated.textContent = 'Updated ' + new Date().toLocaleTimeString() + ' · refreshes every 10 s';
      app.setAttribute('data-loaded', 'overview');
    }
    refresh();
    setInterval(() => {
      if (!document.hidden) refresh();
    }, 10000);
  }

  // One edge site (hub mode): its leaf link and the leads waiting there for the hub.
  function edgeTile(e) {
    const waiting = e.waiting === null || e.waiting === undefined ? '–' : String(e.waiting);
    const age = (s) => s >= 3600 ? Math.round(s / 360) / 10 + ' h' : s >= 60 ? Math.round(s / 60) + ' min' : Math.round(s) + ' s';
    const oldest = e.waiting ? ' · oldest ' + age(e.oldest_waiting_seconds || 0) : '';
    if (e.link_up === false) {
      return tile('Edge ' + e.name, waiting + ' waiting', 'link DOWN for ' + age(e.link_down_seconds || 0) + ' (counts as of its last answer)' + oldest, 'bad');
    }
    return tile('Edge ' + e.name, waiting + ' waiting', 'link up' + oldest, e.waiting ? '' : 'ok');
  }

  function renderOverview(d, tiles, charts) {
    const now = d.now;
    const q = now.queue || {};
    const slo = d.slo_ms;
    const p95 = now.e2e_p95_ms;
    const dlqTotal = d.dlq_by_hour && d.dlq_by_hour.total;
    const span = (secs) => secs >= 3600 ? Math.round(secs / 360) / 10 + ' h'
      : secs >= 60 ? Math.round(secs / 60) + ' min' : Math.max(1, Math.round(secs)) + ' s';
    // Right after a start the counters cover less than the window: say what they cover.
    const covered = Math.min(d.covered_s || 0, d.window_s);
    const win = covered < d.window_s ? span(covered) + ' (since start)' : span(d.window_s);
    clear(tiles);
    append(tiles, [
      tile('Intake', fmtNum(now.intake_per_s) + '/s', now.accepted + ' accepted in ' + win),
      tile('Queue', q.pending === null || q.pending === undefined ? '–' : String(q.pending),
        'pending · ' + (q.ack_pending ?? '–') + ' ack pending (limit ' + (q.max_ack_pending ?? '–') + ')'),
      tile('End-to-end p95', fmtMs(p95), 'SLO ' + fmtMs(slo) + (p95 === null ? ' · no deliveries' : now.within_slo ? ' · met' : ' · MISSED'),
        p95 === null ? '' : now.within_slo ? 'ok' : 'bad'),
      tile('Duplicate short-circuits', fmtPct(now.duplicate_rate), now.duplicates + ' of ' + (now.delivered + now.duplicates) + ' deliveries'),
      tile('Sink success', fmtPct(now.success_rate), now.retries + ' retries · ' + now.dead + ' dead-lettered',
        now.success_rate === null ? '' : now.success_rate >= 0.99 ? 'ok' : 'bad'),
      tile('DLQ, last 24 h', dlqTotal === null || dlqTotal === undefined ? '–' : String(dlqTotal), 'placements', dlqTotal ? 'bad' : 'ok'),
    ].concat((d.edges || []).map(edgeTile)));
    const t = d.series.t;
    clear(charts);
    append(charts, [
      card('Intake and deliveries (per second)',
        lineChart('intake rate', {
          t, fmt: (v) => fmtNum(v), minMax: 0.9,
          series: [{ name: 'accepted', values: d.series.intake_per_s }, { name: 'delivered', values: d.series.delivered_per_s }],
        }),
        legend([{ label: 'accepted at the edge' }, { label: 'delivered to every sink' }])),
      card('Queue (router consumer)',
        lineChart('queue depth', {
          t, fmt: (v) => fmtNum(v, 0), minMax: 3.5,
          series: [{ name: 'pending', values: d.series.queue_pending }, { name: 'ack pending', values: d.series.ack_pending }],
        }),
        legend([{ label: 'pending in LEADS' }, { label: 'ack pending (with a handler)' }])),
      card('End-to-end p95 against the SLO',
        lineChart('end-to-end p95 latency', {
          t, fmt: fmtMs, series: [{ name: 'p95', values: d.series.e2e_p95_ms, color: 4 }],
          ref: { value: slo, label: 'SLO ' + fmtMs(slo) },
        }),
        legend([{ label: 'p95 per ' + Math.round(d.step_s / 60) + ' min', color: 4 }])),
      card('Duplicate short-circuit rate',
        lineChart('duplicate rate', {
          t, fmt: fmtPct, series: [{ name: 'duplicates', values: d.series.duplicate_rate, color: 5 }],
        }),
        legend([{ label: 'deliveries answered from the idempotency record', color: 5 }])),
      card('Success rate per sink',
        lineChart('sink success rate', {
          t, fmt: fmtPct, max: 1, series: d.sinks.map((x) => ({ name: x.name, values: x.series })),
        }),
        legend(d.sinks.map((x) => ({
          label: x.name + ': ' + fmtPct(x.success_rate) + ' (' + x.ok + ' ok, ' + x.failed + ' failed)',
        })))),
      card('DLQ placements by reason, per hour',
        stackedBars('DLQ placements', d.dlq_by_hour.hours, d.dlq_by_hour.reasons || {}),
        legend(Object.keys(d.dlq_by_hour.reasons || {}).map((r) => ({
          label: r + ' (' + d.dlq_by_hour.reasons[r].reduce((a, b) => a + b, 0) + ')',
        })))),
    ]);
  }

  // ---------------------------------------------------------------------------------------
  // Dead letters

  const REASONS = ['schema_mismatch', 'unknown_schema', 'malformed_envelope', 'sink_rejected', 'retries_exhausted', 'max_deliveries'];
  const SINCE = [['', 'any time'], ['1h', 'last hour'], ['6h', 'last 6 h'], ['24h', 'last 24 h'], ['7d', 'last 7 days'], ['30d', 'last 30 days']];
  const MAX_ROWS = 500;

  function select(name, id, options, value) {
    const sel = h('select', { name, id });
    for (const [v, label] of options) sel.appendChild(h('option', { value: v, selected: v === value }, label));
    return sel;
  }

  function confirmDialog(title, lines) {
    return new Promise((resolve) => {
      const yes = h('button', { type: 'button', id: 'confirm-yes', class: 'danger' }, 'Replay');
      const no = h('button', { type: 'button', id: 'confirm-no', class: 'secondary' }, 'Cancel');
      const dlg = h('dialog', { id: 'confirm' },
        h('h2', {}, title), lines.map((l) => h('p', {}, l)), h('div', { class: 'buttons' }, no, yes));
      document.body.appendChild(dlg);
      const done = (v) => {
        dlg.close();
        dlg.remove();
        resolve(v);
      };
      yes.addEventListener('click', () => done(true));
      no.addEventListener('click', () => done(false));
      dlg.addEventListener('cancel', (e) => {
        e.preventDefault();
        done(false);
      });
      dlg.showModal();
      no.focus();
    });
  }

  function dlqPage() {
    const p = new URLSearchParams(location.search);
    const f = {
      reason: p.get('reason') || '',
      sender: p.get('sender') || '',
      since: p.get('since') || '',
      hide_replayed: p.get('hide_replayed') === 'true' || p.get('hide_replayed') === 'on',
    };
    const sinceOptions = SINCE.some(([v]) => v === f.since) ? SINCE : SINCE.concat([[f.since, f.since]]);
    const form = h('form', { class: 'toolbar', method: 'get', action: '/dlq', id: 'dlq-filter' },
      h('div', { class: 'field' }, h('label', { for: 'f-reason' }, 'Reason'),
        select('reason', 'f-reason', [['', 'any reason']].concat(REASONS.map((r) => [r, r])), f.reason)),
      h('div', { class: 'field' }, h('label', { for: 'f-sender' }, 'Sender'),
        h('input', { name: 'sender', id: 'f-sender', value: f.sender, placeholder: 'any sender', size: 14 })),
      h('div', { class: 'field' }, h('label', { for: 'f-since' }, 'Dead-lettered'), select('since', 'f-since', sinceOptions, f.since)),
      h('div', { class: 'field check' }, h('input', { type: 'checkbox', name: 'hide_replayed', value: 'true', id: 'f-hide', checked: f.hide_replayed }),
        h('label', { for: 'f-hide' }, 'hide replayed')),
      h('button', { type: 'submit' }, 'Filter'));
    // The form's own GET navigation keeps the filter in the address (shareable, back button),
    // minus empty fields.
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const q = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
      location.assign('/dlq' + (q.toString() ? '?' + q : ''));
    });

    const reasonInput = h('input', { id: 'replay-reason', type: 'text', maxlength: 500, placeholder: 'e.g. CRM back up after the outage', required: true });
    const selBtn = h('button', { type: 'button', id: 'replay-selected' }, 'Replay selected (0)');
    const allBtn = h('button', { type: 'button', id: 'replay-all', class: 'secondary' }, 'Replay all matching the filter');
    const actionMsg = h('p', { class: 'error', id: 'action-msg', hidden: true });
    const results = h('div', { id: 'replay-results' });
    const count = h('p', { class: 'muted', id: 'dlq-count' }, 'Loading…');
    const table = h('table', { id: 'dlq-table' });
    append(clear(app), [
      h('h1', {}, 'Dead letters'), form,
      h('div', { class: 'actions' },
        h('div', { class: 'field' }, h('label', { for: 'replay-reason' }, 'What was fixed? (required, recorded with the replay)'), reasonInput),
        selBtn, allBtn),
      actionMsg, results, count, table,
    ]);

    let entries = [];
    const selected = () => [...table.querySelectorAll('input.row-select:checked')].map((c) => Number(c.value));
    const updateSel = () => {
      selBtn.textContent = 'Replay selected (' + selected().length + ')';
      selBtn.disabled = selected().length === 0;
    };
    const filterQuery = () => {
      const q = new URLSearchParams();
      for (const k of ['reason', 'sender', 'since']) if (f[k]) q.set(k, f[k]);
      if (f.hide_replayed) q.set('hide_replayed', 'true');
      return q;
    };
    const say = (msg) => {
      actionMsg.textContent = msg;
      actionMsg.hidden = !msg;
    };

    async function load() {
      try {
        const d = await api('/api/dlq?' + filterQuery());
        entries = d.entries.slice().reverse();
      } catch (e) {
        count.textContent = 'Could not list the DLQ: ' + e.message;
        return;
      }
      const open = entries.filter((e) => !(e.replays && e.replays.length)).length;
      count.textContent = entries.length + (entries.length === 1 ? ' entry' : ' entries') + ' (' + open + ' not replayed), newest first' +
        (entries.length > MAX_ROWS ? '; showing the newest ' + MAX_ROWS + ': narrow the filter to see the rest' : '');
      renderTable();
      app.setAttribute('data-loaded', 'dlq');
    }

    function renderTable() {
      clear(table);
      const all = h('input', { type: 'checkbox', id: 'select-all', 'aria-label': 'select all shown' });
      all.addEventListener('change', () => {
        for (const c of table.querySelectorAll('input.row-select')) c.checked = all.checked;
        updateSel();
      });
      table.appendChild(h('thead', {}, h('tr', {},
        h('th', {}, all), h('th', {}, 'Id'), h('th', {}, 'Reason'), h('th', {}, 'Sender'), h('th', {}, 'Last error'),
        h('th', {}, 'Attempts'), h('th', {}, 'Age'), h('th', {}, 'Preview (masked)'), h('th', {}, 'Replays'))));
      const body = h('tbody');
      for (const e of entries.slice(0, MAX_ROWS)) {
        const replays = e.replays || [];
        const box = h('input', { type: 'checkbox', class: 'row-select', value: e.id, 'aria-label': 'select entry ' + e.id });
        box.addEventListener('change', updateSel);
        body.appendChild(h('tr', { 'data-id': e.id, class: replays.length ? 'replayed' : '' },
          h('td', {}, box),
          h('td', { class: 'mono' }, '#' + e.id),
          h('td', {}, h('span', { class: 'reason' }, e.reason)),
          h('td', {}, e.sender),
          h('td', { class: 'err' }, e.last_error, e.unreadable ? h('div', { class: 'bad small' }, 'unreadable: ' + e.unreadable) : null,
            h('div', { class: 'small' }, h('a', { href: '/leads?q=' + encodeURIComponent(e.key) }, 'lead ' + e.key))),
          h('td', {}, String(e.attempts)),
          h('td', { title: e.dead_at }, age(e.dead_at)),
          h('td', { class: 'preview' }, h('pre', {}, (e.preview || []).join('\n'))),
          h('td', {}, replays.length
            ? h('ul', { class: 'marks' }, replays.map((r) => h('li', {}, fmtDate(r.at) + ' by ' + r.by + ': ' + r.reason)))
            : h('span', { class: 'muted' }, 'not replayed'))));
      }
      if (!entries.length) body.appendChild(h('tr', {}, h('td', { colspan: 9, class: 'muted' }, 'No DLQ entry matches.')));
      table.appendChild(body);
      updateSel();
    }

    function showResults(sum) {
      clear(results);
      const rows = (sum.results || []).map((r) => h('tr', { class: 'result-' + r.outcome },
        h('td', { class: 'mono' }, '#' + r.id),
        h('td', {}, r.outcome),
        h('td', {}, r.outcome === 'replayed' ? 'republished to LEADS as seq ' + r.new_seq + ' (lead ' + r.key + ')'
          : r.outcome === 'skipped' ? r.why : r.error)));
      append(results, [
        h('div', { class: 'notice', id: 'replay-summary' },
          'Replayed ' + sum.replayed + ', skipped ' + sum.skipped + ', failed ' + sum.failed + '.'),
        rows.length ? h('table', { id: 'results-table' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Entry'), h('th', {}, 'Outcome'), h('th', {}, 'Detail'))),
          h('tbody', {}, rows)) : null,
      ]);
    }

    function reasonOrComplain() {
      const reason = reasonInput.value.trim();
      if (!reason) {
        say('Say what was fixed before replaying: the reason is required and recorded with the replay.');
        reasonInput.focus();
        return null;
      }
      say('');
      return reason;
    }

    selBtn.addEventListener('click', async () => {
      const ids = selected();
      const reason = reasonOrComplain();
      if (!reason || !ids.length) return;
      const ok = await confirmDialog('Replay ' + ids.length + (ids.length === 1 ? ' entry?' : ' entries?'), [
        'Entries: ' + ids.map((i) => '#' + i).join(', '),
        'Reason: ' + reason,
        'Each one is republished to LEADS with the same lead key; sinks that already have the lead are not written again.',
      ]);
      if (!ok) return;
      try {
        showResults(await api('/api/replay', { method: 'POST', body: { ids, reason } }));
      } catch (e) {
        say('Replay failed: ' + e.message);
      }
      await load();
    });

    allBtn.addEventListener('click', async () => {
      const reason = reasonOrComplain();
      if (!reason) return;
      if (!f.reason && !f.sender && !f.since) {
        say('Replaying everything needs a filter: pick a reason, a sender or a time first.');
        return;
      }
      let fresh;
      try {
        const q = filterQuery();
        q.delete('hide_replayed');
        fresh = (await api('/api/dlq?' + q)).entries;
      } catch (e) {
        say('Could not count the matching entries: ' + e.message);
        return;
      }
      const todo = fresh.filter((e) => !(e.replays && e.replays.length)).length;
      const before = fresh.length - todo;
      if (!todo) {
        say('Nothing to replay: every entry matching this filter was replayed before (replay one by one to repeat).');
        return;
      }
      const desc = ['reason', 'sender', 'since'].filter((k) => f[k]).map((k) => k + ' = ' + f[k]).join(', ');
      const ok = await confirmDialog('Replay ' + todo + (todo === 1 ? ' entry' : ' entries') + ' matching the filter?', [
        'Filter: ' + desc,
        before ? before + ' matching ' + (before === 1 ? 'entry was' : 'entries were') + ' replayed before and will be skipped.' : 'None was replayed before.',
        'Reason: ' + reason,
      ]);
      if (!ok) return;
      try {
        const filter = {};
        for (const k of ['reason', 'sender', 'since']) if (f[k]) filter[k] = f[k];
        showResults(await api('/api/replay', { method: 'POST', body: { filter, reason } }));
      } catch (e) {
        say('Replay failed: ' + e.message);
      }
      await load();
    });

    load();
  }

  // ---------------------------------------------------------------------------------------
  // Lead lookup

  function leadsPage() {
    const p = new URLSearchParams(location.search);
    const input = h('input', { id: 'lookup', name: 'q', size: 48, placeholder: 'event id, lr_… key or email', value: p.get('q') || '', required: true });
    const by = select('by', 'lookup-by', [['', 'guess from the text'], ['event_id', 'event id'], ['key', 'idempotency key'], ['email', 'email']], '');
    const form = h('form', { class: 'toolbar', id: 'lookup-form' },
      h('div', { class: 'field' }, h('label', { for: 'lookup' }, 'Event id, idempotency key or email'), input),
      h('div', { class: 'field' }, h('label', { for: 'lookup-by' }, 'It is'), by),
      h('button', { type: 'submit' }, 'Look up'));
    const out = h('div', { id: 'lookup-result' });
    append(clear(app), [
      h('h1', {}, 'Lead lookup'), form,
      h('p', { class: 'muted small' }, 'An email is hashed by the server the way the edge hashes it; it is not stored, logged or put in the address bar.'),
      out,
    ]);
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      run();
    });

    async function run() {
      const q = input.value.trim();
      if (!q) return;
      const isEmail = by.value === 'email' || (!by.value && q.includes('@'));
      // Keep keys and event ids in the address (shareable); never an email.
      history.replaceState(null, '', isEmail ? '/leads' : '/leads?q=' + encodeURIComponent(q));
      clear(out).appendChild(h('p', { class: 'muted' }, 'Looking up…'));
      let d;
      try {
        d = await api('/api/leads/' + encodeURIComponent(q) + (by.value ? '?by=' + by.value : ''));
      } catch (e) {
        clear(out).appendChild(h('p', { class: e.status === 404 ? 'muted' : 'error', id: 'lookup-none' }, e.message));
        return;
      }
      clear(out);
      out.appendChild(h('p', { class: 'muted' }, d.leads.length + (d.leads.length === 1 ? ' lead' : ' leads') + ' found' +
        (d.truncated ? ' (the newest ' + d.leads.length + ' shown)' : '') + '.'));
      for (const lead of d.leads) out.appendChild(renderLead(lead));
      app.setAttribute('data-loaded', 'leads');
    }
    if (input.value) run();
  }

  function renderLead(l) {
    const facts = h('dl', { class: 'facts' });
    const fact = (k, v) => {
      if (v === null || v === undefined || v === '') return;
      facts.appendChild(h('dt', {}, k));
      facts.appendChild(h('dd', {}, v));
    };
    fact('Status', l.summary);
    fact('Sender', l.sender);
    fact('Received', fmtDate(l.received_at));
    fact('LEADS sequence', l.seq === null ? null : String(l.seq));
    fact('Attempts', l.attempts === null ? null : String(l.attempts));
    fact('Last error', l.last_error);
    const sinks = l.sinks.length
      ? h('table', { class: 'sinks' }, h('thead', {}, h('tr', {}, h('th', {}, 'Sink'), h('th', {}, 'Confirmed at'))),
        h('tbody', {}, l.sinks.map((x) => h('tr', {}, h('td', {}, x.name), h('td', {}, fmtDate(x.at))))))
      : h('p', { class: 'muted' }, 'No sink has confirmed it yet.');
    const dlq = l.dlq.length
      ? h('ul', {}, l.dlq.map((e) => h('li', {},
        h('a', { href: '/dlq?reason=' + encodeURIComponent(e.reason) }, '#' + e.id), ' ', h('span', { class: 'reason' }, e.reason),
        ' after ' + e.attempts + ' attempt(s), ' + fmtDate(e.dead_at) + ': ' + e.last_error,
        e.replays.length ? h('ul', { class: 'marks' }, e.replays.map((r) => h('li', {}, 'replayed ' + fmtDate(r.at) + ' by ' + r.by + ': ' + r.reason))) : null)))
      : null;
    return h('section', { class: 'card lead', 'data-key': l.key },
      h('h2', {}, h('span', { class: 'mono' }, l.key), ' ', h('span', { class: 'status ' + l.status }, l.status.replace('_', ' '))),
      facts,
      h('h2', {}, 'Sinks'), sinks,
      dlq ? h('h2', {}, 'Dead-letter entries') : null, dlq,
      h('h2', {}, 'Timeline'),
      h('ol', { class: 'timeline' }, l.timeline.map((ev) => h('li', { class: ev.what },
        h('span', { class: 'when' }, fmtDate(ev.at)), ev.detail))));
  }

  // ---------------------------------------------------------------------------------------
  // Start

  async function start() {
    const page = location.pathname === '/dlq' ? 'dlq' : location.pathname === '/leads' ? 'leads' : 'overview';
    for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.getAttribute('data-page') === page);
    try {
      const who = await api('/api/session');
      csrf = who.csrf;
      document.getElementById('who').textContent = who.user;
    } catch (_) {
      return;
    }
    document.getElementById('logout').addEventListener('click', async () => {
      try {
        await api('/logout', { method: 'POST' });
      } finally {
        location.assign('/login');
      }
    });
    if (page === 'dlq') dlqPage();
    else if (page === 'leads') leadsPage();
    else overviewPage();
  }

  start();
})();
