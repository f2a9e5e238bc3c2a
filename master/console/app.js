// NodePass console: one script, no libraries, no build step. It talks only to the master's
// own API ({prefix}/v1) with the API key in the X-API-Key header; the key lives in this
// tab's sessionStorage and never in a URL. Every text that comes from the master (aliases,
// tags, URLs, log lines) is put into the page with textContent, never parsed as HTML.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const PREFIX = location.pathname.replace(/\/console(\/.*)?$/, '');
  const BASE = PREFIX + '/v1';
  const KEY_ID = '********';
  const STORE = 'nodepass-api-key';
  const HISTORY_MS = 10 * 60 * 1000; // graphs show the last ten minutes
  const LOG_LINES = 500; // kept per instance
  const TYPES = { 0: 'TCP', 1: 'QUIC', 2: 'WebSocket', 3: 'HTTP/2' };
  const MODES = {
    server: { 0: 'auto', 1: 'reverse', 2: 'forward' },
    client: { 0: 'auto', 1: 'single-end', 2: 'dual-end' },
  };
  const COLUMNS = ['alias', 'role', 'mode', 'ptype', 'status', 'target', 'pool', 'ping',
    'tcps', 'udps', 'rx', 'tx', 'rate'];
  const NEW_ROWS_PER_FRAME = 250;
  const NUMERIC = new Set(['pool', 'ping', 'tcps', 'udps', 'rx', 'tx', 'rate']);

  let key = sessionStorage.getItem(STORE) || '';
  let stream = null; // the AbortController of the open event stream
  let generation = 0; // counts event streams; records seen on the current one carry it
  let retryMs = 3000;
  let sortKey = 'alias';
  let sortDir = 1;
  let selected = null; // id of the instance shown in the detail card
  let params = null; // params.json: the URL parameter table
  const records = new Map(); // id -> record

  // ---------- small helpers ----------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function setText(e, text) {
    if (e.textContent !== text) e.textContent = text;
  }
  function fmtBytes(n) {
    if (!Number.isFinite(n) || n < 0) return '-';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + ' ' + units[i];
  }
  function fmtRate(n) { return n > 0 ? fmtBytes(n) + '/s' : '0'; }
  function fmtDuration(s) {
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + 'd ' + h + 'h';
    if (h) return h + 'h ' + m + 'm';
    return m + 'm ' + (s % 60) + 's';
  }
  // scheme://[key@]host:port/target?query, read the way the master stores it.
  function parseUrl(url) {
    const m = /^([a-z]+):\/\/(?:([^@/?]*)@)?([^/?]*)\/?([^?]*)(?:\?(.*))?$/i.exec(url || '');
    if (!m) return { scheme: '', tunnel: '', target: '', query: new URLSearchParams() };
    let target = m[4];
    try { target = decodeURIComponent(target); } catch (_) { /* shown as stored */ }
    return { scheme: m[1].toLowerCase(), tunnel: m[3], target, query: new URLSearchParams(m[5] || '') };
  }

  // ---------- the API ----------
  class ApiError extends Error {}
  async function api(method, path, body) {
    const opts = { method, headers: { 'X-API-Key': key }, cache: 'no-store' };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(BASE + path, opts);
    } catch (e) {
      throw new ApiError('The master cannot be reached (' + e.message + '): is it running?');
    }
    if (resp.status === 401) {
      signOut('The master refused this API key (a regenerated key ends every session): sign in with the current key.');
      throw new ApiError('The API key was refused.');
    }
    const text = await resp.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
    if (!resp.ok) throw new ApiError((json && json.error) || text.trim() || resp.status + ' ' + resp.statusText);
    return json;
  }

  // ---------- sign in / out ----------
  function showApp(on) {
    $('signin').hidden = on;
    $('nav').hidden = !on;
    $('signout').hidden = !on;
    $('live').hidden = !on;
    if (!on) {
      for (const v of document.querySelectorAll('.view')) v.hidden = true;
      $('detail').hidden = true;
    }
  }
  function signOut(message) {
    key = '';
    sessionStorage.removeItem(STORE);
    if (stream) { stream.abort(); stream = null; }
    records.clear();
    $('rows').replaceChildren();
    selected = null;
    stopHostPolling();
    showApp(false);
    setText($('signin-error'), message || '');
    $('key').value = '';
    $('key').focus();
  }
  async function signIn(candidate) {
    key = candidate;
    try {
      const info = await api('GET', '/info');
      sessionStorage.setItem(STORE, key);
      setText($('signin-error'), '');
      setText($('master-alias'), info.alias || info.name || '');
      showApp(true);
      route();
      connect();
    } catch (e) {
      if (key) { // not a refused key: say what went wrong and stay on the form
        key = '';
        showApp(false);
        setText($('signin-error'), e.message);
      }
    }
  }

  // ---------- the event stream (fetch, so the key goes in a header, not the URL) ----------
  function setLive(on) {
    $('live').classList.toggle('off', !on);
    setText($('live'), on ? 'live' : 'reconnecting');
  }
  async function connect() {
    if (stream) stream.abort();
    const ctl = new AbortController();
    stream = ctl;
    const gen = ++generation;
    let resp;
    try {
      resp = await fetch(BASE + '/events', {
        headers: { 'X-API-Key': key, Accept: 'text/event-stream' },
        signal: ctl.signal,
        cache: 'no-store',
      });
    } catch (_) {
      if (!ctl.signal.aborted) { setLive(false); retryLater(ctl); }
      return;
    }
    if (resp.status === 401) {
      signOut('The master refused this API key (a regenerated key ends every session): sign in with the current key.');
      return;
    }
    if (!resp.ok || !resp.body) { setLive(false); retryLater(ctl); return; }
    setLive(true);
    if (gen === 1) performance.mark('np-stream');
    reconcile(ctl, gen);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (data.length) dispatch(data.join('\n'), gen);
            data = [];
            continue;
          }
          if (line.startsWith(':')) continue;
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          let val = c < 0 ? '' : line.slice(c + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'data') data.push(val);
          else if (field === 'retry' && /^\d+$/.test(val)) retryMs = Math.max(500, Number(val));
        }
      }
    } catch (_) { /* the connection broke: come back below */ }
    if (ctl.signal.aborted || stream !== ctl) return;
    // The stream ended: the master stopped, or its key was regenerated (a `shutdown`).
    setLive(false);
    retryLater(ctl);
  }
  function retryLater(ctl) {
    setTimeout(async () => {
      if (stream !== ctl || !key) return;
      try { await api('GET', '/info'); } catch (_) { if (!key) return; }
      if (stream === ctl && key) connect();
    }, retryMs);
  }
  // After a reconnect, instances deleted while we were away are dropped.
  async function reconcile(ctl, gen) {
    let list;
    try { list = await api('GET', '/instances'); } catch (_) { return; }
    if (stream !== ctl || !Array.isArray(list)) return;
    const present = new Set(list.map((i) => i && i.id));
    for (const [id, r] of records) if (r.gen !== gen && !present.has(id)) queueDelete(id);
  }
  function dispatch(text, gen) {
    let msg;
    try { msg = JSON.parse(text); } catch (_) { return; }
    const i = msg && msg.instance;
    switch (msg && msg.type) {
      case 'initial': case 'create': case 'update':
        if (i && typeof i.id === 'string') queueUpsert(i, msg.time, gen);
        break;
      case 'delete':
        if (i && typeof i.id === 'string') queueDelete(i.id);
        break;
      case 'log':
        if (i && typeof i.id === 'string') queueLog(i.id, String(msg.logs || ''), msg.time);
        break;
      default: // shutdown: the stream closes next
    }
  }

  // ---------- records and batching (one DOM update per animation frame) ----------
  const dirty = new Set();
  const deleted = new Set();
  let membershipChanged = false;
  let frame = 0;
  function schedule() { if (!frame) frame = requestAnimationFrame(flush); }

  function record(id) {
    let r = records.get(id);
    if (!r) {
      r = { id, data: null, row: null, cells: null, hist: [], logs: [], logsNew: 0, last: null,
        rxRate: 0, txRate: 0, gen: 0, search: '', tags: [] };
      records.set(id, r);
    }
    return r;
  }
  function queueUpsert(data, time, gen) {
    if (data.id === KEY_ID) { // the API key record: its alias is the master's
      if (data.alias) setText($('master-alias'), data.alias);
      return;
    }
    const isNew = !records.has(data.id) || deleted.has(data.id);
    deleted.delete(data.id);
    const r = record(data.id);
    r.gen = gen;
    r.data = data;
    if (r.urlSeen !== data.url || r.configSeen !== data.config) { // parsed once per URL
      r.urlSeen = data.url;
      r.configSeen = data.config;
      r.u = parseUrl(data.url);
      r.ptype = poolType(data, r.u);
    }
    sample(r, Date.parse(time) || Date.now());
    const tags = (data.meta && data.meta.tags) || {};
    r.tags = Object.keys(tags).sort().map((k) => k + '=' + tags[k]);
    r.search = [data.id, data.alias, data.url, ...r.tags].join('\n').toLowerCase();
    if (isNew) membershipChanged = true;
    dirty.add(data.id);
    schedule();
  }
  function queueDelete(id) {
    if (!records.has(id)) return;
    deleted.add(id);
    dirty.delete(id);
    membershipChanged = true;
    schedule();
  }
  let logSeq = 0;
  const LEVEL = /\b(DEBUG|INFO|WARN|ERROR|EVENT)\b/;
  function queueLog(id, line, time) {
    if (id === KEY_ID) return;
    const r = record(id);
    // eslint-disable-next-line no-control-regex
    const text = line.replace(/\x1b\[[0-9;]*m/g, '');
    const m = LEVEL.exec(text);
    r.logs.push({ text, level: m ? m[1] : 'INFO', t: Date.parse(time) || Date.now(), seq: ++logSeq });
    if (r.logs.length > LOG_LINES) r.logs.splice(0, r.logs.length - LOG_LINES);
    r.logsNew++;
    if (id === selected) schedule();
  }
  // Rates come from the difference of the totals between two updates, by event time.
  function sample(r, t) {
    const d = r.data;
    const rx = (d.tcprx || 0) + (d.udprx || 0);
    const tx = (d.tcptx || 0) + (d.udptx || 0);
    if (d.status !== 'running') { r.rxRate = 0; r.txRate = 0; }
    if (!r.last || rx < r.last.rx || tx < r.last.tx) { r.last = { t, rx, tx }; return; }
    const dt = (t - r.last.t) / 1000;
    if (dt < 0.5) return; // several events at once (a PATCH): wait for the next report
    r.rxRate = (rx - r.last.rx) / dt;
    r.txRate = (tx - r.last.tx) / dt;
    r.last = { t, rx, tx };
    r.hist.push({ t, rx: r.rxRate, tx: r.txRate, pool: d.pool || 0, ping: d.ping || 0 });
    while (r.hist.length && r.hist[0].t < t - HISTORY_MS) r.hist.shift();
  }

  function sortValue(r, k) {
    const d = r.data;
    switch (k) {
      case 'alias': return (d.alias || d.id).toLowerCase();
      case 'role': return r.u.scheme;
      case 'mode': return d.mode || 0;
      case 'ptype': return r.ptype;
      case 'status': return d.status || '';
      case 'target': return r.u.target;
      case 'rx': return (d.tcprx || 0) + (d.udprx || 0);
      case 'tx': return (d.tcptx || 0) + (d.udptx || 0);
      case 'rate': return r.rxRate + r.txRate;
      default: return d[k] || 0;
    }
  }
  function poolType(d, u) {
    if (u.scheme !== 'server') return u.query.get('type') ? TYPES[u.query.get('type')] || '' : '';
    const cfg = new URLSearchParams((d.config || '').split('?')[1] || d.config || '');
    const t = u.query.get('type') || cfg.get('type') || '0';
    return TYPES[t] || t;
  }
  function modeText(d, u) {
    const names = MODES[u.scheme] || {};
    const m = d.mode || Number(u.query.get('mode') || 0);
    return m + ' ' + (names[m] || '');
  }

  let rowTemplate = null;
  function buildRow(r) {
    if (!rowTemplate) {
      rowTemplate = el('tr');
      for (const c of COLUMNS) {
        const td = el('td', NUMERIC.has(c) ? 'num ' + c : c);
        td.dataset.label = c === 'ptype' ? 'pool type' : c;
        if (c === 'alias') td.append(el('span', 'name'), el('span', 'tags'));
        rowTemplate.append(td);
      }
    }
    const tr = rowTemplate.cloneNode(true);
    tr.dataset.id = r.id;
    const cells = {};
    COLUMNS.forEach((c, i) => { cells[c] = tr.children[i]; });
    r.row = tr;
    r.cells = cells;
    r.shown = {};
  }
  function put(r, c, text) {
    if (r.shown[c] !== text) { r.shown[c] = text; setText(r.cells[c], text); }
  }
  function renderRow(r) {
    if (!r.row) buildRow(r);
    const d = r.data;
    const u = r.u;
    const name = d.alias || d.id;
    if (r.shown.alias !== name) {
      r.shown.alias = name;
      setText(r.cells.alias.firstChild, name);
      r.cells.alias.title = d.id;
    }
    const tagText = r.tags.join('\n');
    if (r.shown.tags !== tagText) {
      r.shown.tags = tagText;
      r.cells.alias.lastChild.replaceChildren(...r.tags.map((t) => el('span', 'tag', t)));
    }
    put(r, 'role', u.scheme);
    put(r, 'mode', modeText(d, u));
    put(r, 'ptype', r.ptype);
    const st = d.status || '';
    if (r.shown.status !== st) {
      r.shown.status = st;
      r.cells.status.className = 'status ' + st;
      setText(r.cells.status, st);
    }
    put(r, 'target', u.target);
    if (r.cells.target.title !== d.url) r.cells.target.title = d.url;
    put(r, 'pool', String(d.pool || 0));
    put(r, 'ping', d.ping ? d.ping + ' ms' : '-');
    put(r, 'tcps', String(d.tcps || 0));
    put(r, 'udps', String(d.udps || 0));
    put(r, 'rx', fmtBytes((d.tcprx || 0) + (d.udprx || 0)));
    put(r, 'tx', fmtBytes((d.tcptx || 0) + (d.udptx || 0)));
    put(r, 'rate', fmtRate(r.rxRate + r.txRate));
  }

  let tagSet = '';
  function refreshTagFilter() {
    const all = new Set();
    for (const r of records.values()) for (const t of r.tags) all.add(t);
    const list = [...all].sort();
    const sig = list.join('\n');
    if (sig === tagSet) return;
    tagSet = sig;
    const sel = $('tag-filter');
    const cur = sel.value;
    sel.replaceChildren(el('option', '', 'All tags'), ...list.map((t) => {
      const o = el('option', '', t);
      o.value = t;
      return o;
    }));
    sel.firstChild.value = '';
    sel.value = list.includes(cur) ? cur : '';
  }
  function filterOf() {
    return { q: $('filter').value.trim().toLowerCase(), tag: $('tag-filter').value };
  }
  function visible(r, f) {
    return (!f.q || r.search.includes(f.q)) && (!f.tag || r.tags.includes(f.tag));
  }
  // Sorts (each key computed once), filters, and puts the rows in order.
  function reorder() {
    const f = filterOf();
    const list = [];
    for (const r of records.values()) {
      if (!r.data || !r.row) continue; // rows not built yet come with a later frame
      r.key = sortValue(r, sortKey);
      list.push(r);
    }
    list.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.id < b.id ? -1 : 1) * sortDir);
    const body = $('rows');
    let shown = 0;
    for (const r of list) {
      const v = visible(r, f);
      if (r.row.hidden === v) r.row.hidden = !v;
      if (v) shown++;
    }
    // One walk along the rows in place: a row already where it belongs stays (most do when
    // rows are added or one value changed); only the others move.
    let cur = body.firstChild;
    for (const r of list) {
      if (r.row === cur) cur = cur.nextSibling;
      else body.insertBefore(r.row, cur);
    }
    setText($('count'), shown === list.length ? list.length + ' instances' : shown + ' of ' + list.length + ' instances');
    $('empty').hidden = list.length !== 0;
    for (const th of document.querySelectorAll('#instances th')) {
      th.classList.toggle('asc', th.dataset.sort === sortKey && sortDir > 0);
      th.classList.toggle('desc', th.dataset.sort === sortKey && sortDir < 0);
    }
  }

  function flush() {
    frame = 0;
    const t0 = performance.now();
    let resort = membershipChanged;
    for (const id of deleted) {
      const r = records.get(id);
      if (r && r.row) r.row.remove();
      records.delete(id);
      if (id === selected) closeDetail();
    }
    deleted.clear();
    const body = $('rows');
    const f = filterOf();
    const detailDirty = selected && (dirty.has(selected) || (records.get(selected) || {}).logsNew);
    // New rows are built NEW_ROWS_PER_FRAME at a time (a thousand at once would hold one
    // frame for a tenth of a second); the rest stay queued for the next frames.
    let built = 0;
    for (const id of dirty) {
      const r = records.get(id);
      if (!r || !r.data) { dirty.delete(id); continue; }
      if (!r.row) {
        if (built >= NEW_ROWS_PER_FRAME) continue;
        renderRow(r); // placed by reorder()
        built++;
        resort = true;
      } else {
        const before = r.key;
        renderRow(r);
        if (sortValue(r, sortKey) !== before || !visible(r, f) !== r.row.hidden) resort = true;
      }
      dirty.delete(id);
    }
    if (dirty.size) schedule();
    if (membershipChanged) refreshTagFilter();
    membershipChanged = false;
    if (resort) reorder();
    if (detailDirty) renderDetail();
    // User Timing entries for benches/console (the first 200 only: the buffer is not bounded).
    if (timings < 200) {
      timings++;
      performance.measure('np-flush', { start: t0, end: performance.now(), detail: { rows: records.size } });
      if (resort) performance.mark('np-render', { detail: { rows: body.children.length } });
    }
  }
  let timings = 0;

  // ---------- charts (canvas, no library) ----------
  function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function chart(canvas, series, fmt) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(100, Math.round(canvas.clientWidth * dpr)) || canvas.width;
    const h = Math.round(w * canvas.height / canvas.width) || canvas.height;
    if (canvas.width !== w) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const now = Date.now();
    let peak = 0;
    let points = 0;
    let earliest = now;
    for (const s of series) {
      for (const p of s.points) { peak = Math.max(peak, p.v); points++; earliest = Math.min(earliest, p.t); }
    }
    // The x axis spans the data (at least a minute), up to the ten minutes kept.
    const span = Math.min(HISTORY_MS, Math.max(60000, now - earliest));
    const top = peak > 0 ? peak * 1.15 : 1;
    const pad = 4 * dpr;
    const W = canvas.width, H = canvas.height;
    ctx.strokeStyle = cssVar('--line');
    ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(0, H - pad); ctx.lineTo(W, H - pad); ctx.stroke();
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.5 * dpr;
      ctx.beginPath();
      s.points.forEach((p, i) => {
        const x = W - ((now - p.t) / span) * W;
        const y = H - pad - (p.v / top) * (H - 2 * pad - 14 * dpr);
        if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      });
      ctx.stroke();
    }
    ctx.fillStyle = cssVar('--muted');
    ctx.font = (11 * dpr) + 'px system-ui, sans-serif';
    ctx.fillText('peak ' + fmt(peak), pad, 12 * dpr);
    canvas.dataset.points = String(points);
    canvas.dataset.peak = String(peak);
    canvas.setAttribute('aria-label', 'peak ' + fmt(peak) + ', ' + points + ' points');
  }

  // ---------- the detail card ----------
  function openDetail(id) {
    selected = id;
    const r = records.get(id);
    if (!r) return;
    for (const row of document.querySelectorAll('#rows tr.sel')) row.classList.remove('sel');
    if (r.row) r.row.classList.add('sel');
    $('detail').hidden = false;
    $('d-delete-confirm').hidden = true;
    setText($('d-error'), '');
    const d = r.data;
    $('d-alias').value = d.alias || '';
    $('d-restart').checked = !!d.restart;
    $('d-tags').value = r.tags.join('\n');
    $('d-urlinput').value = d.url || '';
    $('d-log').replaceChildren();
    r.logsShown = 0;
    renderDetail();
    $('detail').scrollTop = 0;
  }
  function closeDetail() {
    selected = null;
    $('detail').hidden = true;
    for (const row of document.querySelectorAll('#rows tr.sel')) row.classList.remove('sel');
  }
  function renderDetail() {
    const r = records.get(selected);
    if (!r || !r.data) return;
    const d = r.data;
    const u = parseUrl(d.url);
    setText($('d-title'), (d.alias || d.id) + ' (' + d.id + ')');
    $('d-status').className = 'status ' + (d.status || '');
    setText($('d-status'), d.status || '');
    setText($('d-url'), d.url || '');
    const stopped = d.status === 'stopped';
    document.querySelector('[data-action=start]').disabled = !stopped;
    document.querySelector('[data-action=stop]').disabled = stopped;
    const figs = [
      ['Role', u.scheme], ['Mode', modeText(d, u)], ['Pool type', poolType(d, u) || '-'],
      ['Tunnel', u.tunnel], ['Target', u.target], ['Pool', String(d.pool || 0)],
      ['Ping', d.ping ? d.ping + ' ms' : '-'], ['TCP connections', String(d.tcps || 0)],
      ['UDP sessions', String(d.udps || 0)], ['TCP received', fmtBytes(d.tcprx || 0)],
      ['TCP sent', fmtBytes(d.tcptx || 0)], ['UDP received', fmtBytes(d.udprx || 0)],
      ['UDP sent', fmtBytes(d.udptx || 0)], ['Rate in', fmtRate(r.rxRate)], ['Rate out', fmtRate(r.txRate)],
      ['Restart', d.restart ? 'yes' : 'no'],
    ];
    figures($('d-figures'), figs);
    chart($('g-traffic'), [
      { color: cssVar('--rx'), points: r.hist.map((p) => ({ t: p.t, v: p.rx })) },
      { color: cssVar('--tx'), points: r.hist.map((p) => ({ t: p.t, v: p.tx })) },
    ], fmtRate);
    chart($('g-pool'), [
      { color: cssVar('--ok'), points: r.hist.map((p) => ({ t: p.t, v: p.pool })) },
      { color: cssVar('--warn'), points: r.hist.map((p) => ({ t: p.t, v: p.ping })) },
    ], (v) => String(Math.round(v)));
    renderLog(r);
  }
  function figures(dl, pairs) {
    if (dl.children.length !== pairs.length) {
      dl.replaceChildren(...pairs.map(() => {
        const div = el('div');
        div.append(el('dt'), el('dd'));
        return div;
      }));
    }
    pairs.forEach(([k, v], i) => {
      const div = dl.children[i];
      setText(div.firstChild, k);
      setText(div.lastChild, v);
    });
  }
  function renderLog(r) {
    r.logsNew = 0;
    const list = $('d-log');
    setText($('d-logcount'), r.logs.length + ' lines');
    if ($('d-pause').checked) return;
    const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    // Lines are appended; the list keeps the last LOG_LINES, as the record does.
    const last = list.lastChild ? Number(list.lastChild.dataset.seq) : 0;
    const add = r.logs.filter((l) => l.seq > last);
    const frag = document.createDocumentFragment();
    for (const l of add) {
      const li = el('li', l.level, l.text);
      li.dataset.seq = String(l.seq);
      frag.append(li);
    }
    list.append(frag);
    while (list.children.length > LOG_LINES) list.firstChild.remove();
    if (atEnd) list.scrollTop = list.scrollHeight;
  }
  async function act(fn) {
    setText($('d-error'), '');
    try { await fn(); } catch (e) { if (key) setText($('d-error'), e.message); }
  }

  // ---------- create ----------
  async function loadParams() {
    if (params) return params;
    const resp = await fetch('params.json', { cache: 'no-store' });
    params = await resp.json();
    return params;
  }
  async function buildCreateForm() {
    let list;
    try { list = await loadParams(); } catch (e) {
      setText($('c-error'), 'The parameter table could not be loaded: ' + e.message);
      return;
    }
    const role = $('c-role').value;
    const box = $('c-params');
    // Values typed for this role survive a rebuild; a role change starts from the defaults
    // (`mode` and others mean different things to a server and a client).
    const kept = {};
    if (box.dataset.role === role) {
      for (const i of box.querySelectorAll('[data-param]')) kept[i.dataset.param] = i.value;
    }
    box.dataset.role = role;
    box.replaceChildren();
    for (const p of list) {
      if (!p[role]) continue;
      const id = 'p-' + p.name;
      const label = el('label', '', p.name);
      label.htmlFor = id;
      let input;
      if (p.choices.length) {
        input = el('select');
        const def = el('option', '', 'default' + (p.default !== null ? ' (' + p.default + ')' : ''));
        def.value = '';
        input.append(def, ...p.choices.map((c) => { const o = el('option', '', c); o.value = c; return o; }));
      } else {
        input = el('input');
        input.placeholder = p.default !== null ? p.default : '';
        input.spellcheck = false;
      }
      input.id = id;
      input.dataset.param = p.name;
      if (kept[p.name] !== undefined) input.value = kept[p.name];
      const hint = el('span', 'hint', 'expected ' + p.expected);
      hint.id = 'err-' + p.name;
      hint.dataset.expected = hint.textContent;
      box.append(label, input, hint);
    }
    updatePreview();
  }
  function createUrl() {
    const role = $('c-role').value;
    const k = $('c-key').value;
    const q = [];
    for (const i of $('c-params').querySelectorAll('[data-param]')) {
      const v = i.value.trim();
      if (v !== '') q.push(encodeURIComponent(i.dataset.param) + '=' + encodeURIComponent(v));
    }
    return role + '://' + (k ? encodeURIComponent(k) + '@' : '') + $('c-tunnel').value.trim() + '/' +
      $('c-target').value.trim() + (q.length ? '?' + q.join('&') : '');
  }
  function clearFieldErrors() {
    for (const h of document.querySelectorAll('#create-form .hint.error')) {
      h.classList.remove('error');
      setText(h, h.dataset.expected || '');
    }
  }
  function updatePreview() {
    setText($('c-url'), createUrl());
  }
  function fieldOf(message) {
    let m = /for (\w+): expected/.exec(message);
    if (m && $('err-' + m[1])) return $('err-' + m[1]);
    if (/target address|no target/i.test(message)) return $('err-target');
    if (/tunnel (address|port)|host|port/i.test(message)) return $('err-tunnel');
    m = /\b([a-z]+)=/.exec(message);
    if (m && $('err-' + m[1])) return $('err-' + m[1]);
    return null;
  }

  // ---------- host ----------
  let hostTimer = 0;
  const hostHist = [];
  let lastInfo = null;
  function stopHostPolling() { clearInterval(hostTimer); hostTimer = 0; }
  async function pollHost() {
    let info;
    try { info = await api('GET', '/info'); } catch (_) { return; }
    const t = Date.now();
    const p = { t, cpu: Math.max(0, info.cpu), mem: info.mem_total ? (100 * info.mem_used) / info.mem_total : 0, rx: 0, tx: 0 };
    if (lastInfo && t > lastInfo.t && info.netrx >= lastInfo.netrx && info.nettx >= lastInfo.nettx) {
      const dt = (t - lastInfo.t) / 1000;
      p.rx = (info.netrx - lastInfo.netrx) / dt;
      p.tx = (info.nettx - lastInfo.nettx) / dt;
    }
    lastInfo = { t, netrx: info.netrx, nettx: info.nettx };
    hostHist.push(p);
    while (hostHist.length && hostHist[0].t < t - HISTORY_MS) hostHist.shift();
    setText($('master-alias'), info.alias || info.name || '');
    figures($('h-figures'), [
      ['Master alias', info.alias || '-'], ['Host name', info.name || '-'], ['Version', info.ver],
      ['System', info.os + ' / ' + info.arch], ['Master uptime', fmtDuration(info.uptime)],
      ['System uptime', fmtDuration(info.sysup)], ['CPU', info.cpu < 0 ? '-' : info.cpu + ' %'],
      ['Memory', fmtBytes(info.mem_used) + ' of ' + fmtBytes(info.mem_total)],
      ['Swap', fmtBytes(info.swap_used) + ' of ' + fmtBytes(info.swap_total)],
      ['Network received', fmtBytes(info.netrx)], ['Network sent', fmtBytes(info.nettx)],
      ['Disk read', fmtBytes(info.diskr)], ['Disk written', fmtBytes(info.diskw)],
      ['API TLS', String(info.tls)], ['Log level', info.log || '-'],
    ]);
    chart($('g-cpu'), [{ color: cssVar('--accent'), points: hostHist.map((h) => ({ t: h.t, v: h.cpu })) }],
      (v) => v.toFixed(0) + ' %');
    chart($('g-mem'), [{ color: cssVar('--warn'), points: hostHist.map((h) => ({ t: h.t, v: h.mem })) }],
      (v) => v.toFixed(0) + ' %');
    chart($('g-net'), [
      { color: cssVar('--rx'), points: hostHist.map((h) => ({ t: h.t, v: h.rx })) },
      { color: cssVar('--tx'), points: hostHist.map((h) => ({ t: h.t, v: h.tx })) },
    ], fmtRate);
  }

  // ---------- views ----------
  function route() {
    if (!key) return;
    const view = (location.hash.replace(/^#/, '') || 'instances');
    const known = ['instances', 'create', 'host'].includes(view) ? view : 'instances';
    for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== 'view-' + known;
    for (const b of document.querySelectorAll('#nav .tab')) b.classList.toggle('on', b.dataset.view === known);
    if (known !== 'instances') closeDetail();
    if (known === 'create') buildCreateForm();
    stopHostPolling();
    if (known === 'host') { pollHost(); hostTimer = setInterval(pollHost, 2000); }
  }

  // ---------- wiring ----------
  function wire() {
    $('signin-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const k = $('key').value.trim();
      if (!k) { setText($('signin-error'), 'Enter the API key the master printed.'); return; }
      signIn(k);
    });
    $('signout').addEventListener('click', () => signOut(''));
    for (const b of document.querySelectorAll('#nav .tab')) {
      b.addEventListener('click', () => { location.hash = b.dataset.view; });
    }
    window.addEventListener('hashchange', route);
    $('filter').addEventListener('input', reorder);
    $('tag-filter').addEventListener('change', reorder);
    for (const th of document.querySelectorAll('#instances th')) {
      th.addEventListener('click', () => {
        if (sortKey === th.dataset.sort) sortDir = -sortDir;
        else { sortKey = th.dataset.sort; sortDir = NUMERIC.has(sortKey) ? -1 : 1; }
        reorder();
      });
    }
    $('rows').addEventListener('click', (e) => {
      const tr = e.target.closest('tr');
      if (tr && tr.dataset.id) openDetail(tr.dataset.id);
    });
    $('d-close').addEventListener('click', closeDetail);
    for (const b of document.querySelectorAll('[data-action]')) {
      b.addEventListener('click', () => act(() => api('PATCH', '/instances/' + encodeURIComponent(selected), { action: b.dataset.action })));
    }
    $('d-delete').addEventListener('click', () => { $('d-delete-confirm').hidden = false; });
    $('d-delete-confirm').addEventListener('click', () => act(async () => {
      const id = selected;
      await api('DELETE', '/instances/' + encodeURIComponent(id));
      queueDelete(id);
      closeDetail();
    }));
    $('d-edit').addEventListener('submit', (e) => {
      e.preventDefault();
      const tags = {};
      for (const line of $('d-tags').value.split('\n')) {
        const t = line.trim();
        if (!t) continue;
        const eq = t.indexOf('=');
        tags[eq < 0 ? t : t.slice(0, eq).trim()] = eq < 0 ? '' : t.slice(eq + 1).trim();
      }
      const body = { restart: $('d-restart').checked, meta: { tags } };
      const alias = $('d-alias').value;
      if (alias) body.alias = alias;
      act(async () => {
        await api('PATCH', '/instances/' + encodeURIComponent(selected), body);
        if (!alias) setText($('d-error'), 'Saved; an alias cannot be cleared, only replaced.');
      });
    });
    $('d-urlform').addEventListener('submit', (e) => {
      e.preventDefault();
      act(() => api('PUT', '/instances/' + encodeURIComponent(selected), { url: $('d-urlinput').value.trim() }));
    });
    $('d-pause').addEventListener('change', () => {
      const r = records.get(selected);
      if (r && !$('d-pause').checked) renderLog(r);
    });
    $('c-role').addEventListener('change', buildCreateForm);
    $('create-form').addEventListener('input', updatePreview);
    $('create-form').addEventListener('change', updatePreview);
    $('create-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      clearFieldErrors();
      setText($('c-error'), '');
      const body = { url: createUrl() };
      const alias = $('c-alias').value.trim();
      if (alias) body.alias = alias;
      try {
        const made = await api('POST', '/instances', body);
        if (made && made.id) {
          for (const f of ['c-alias', 'c-key', 'c-tunnel', 'c-target']) $(f).value = '';
          delete $('c-params').dataset.role; // the next visit starts from the defaults
          queueUpsert(made, new Date().toISOString(), generation);
          location.hash = 'instances';
          flush();
          openDetail(made.id);
        }
      } catch (err) {
        setText($('c-error'), err.message);
        const f = fieldOf(err.message);
        if (f) { f.classList.add('error'); setText(f, err.message); }
      }
    });
    $('tcping-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const target = $('tcping-target').value.trim();
      setText($('tcping-result'), 'connecting...');
      try {
        const r = await api('GET', '/tcping?target=' + encodeURIComponent(target));
        setText($('tcping-result'), r.connected ? r.target + ': connected in ' + r.latency + ' ms' : r.target + ': ' + (r.error || 'not connected'));
      } catch (err) {
        setText($('tcping-result'), err.message);
      }
    });
  }

  wire();
  if (key) signIn(key);
  else signOut('');
})();
