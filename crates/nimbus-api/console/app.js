// The Nimbus web console: a small hash-routed single page over the REST API (same origin,
// HTTP Basic with the namespace key kept in sessionStorage). No framework, no external requests.
'use strict';
(function () {
  const KEY = 'nimbus.key';
  const $ = (sel, root) => (root || document).querySelector(sel);
  const page = () => $('#page');
  let timers = [];
  let tailAbort = null;

  // ----- helpers -----
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const k of kids.flat()) if (k != null) e.appendChild(typeof k === 'string' || typeof k === 'number' ? document.createTextNode(String(k)) : k);
    return e;
  }
  const enc = encodeURIComponent;
  const encPath = p => p.split('/').map(enc).join('/');
  function ms(v) { return v == null ? '–' : (v >= 1000 ? (v / 1000).toFixed(2) + ' s' : Math.round(v * 10) / 10 + ' ms'); }
  function when(t) { return t ? new Date(t).toLocaleString() : '–'; }
  function statusPill(code) {
    const names = ['success', 'application error', 'developer error', 'internal error'];
    return h('span', { class: 'pill ' + (code === 0 ? 'ok' : 'bad') }, names[code] || String(code));
  }
  function ann(a, key) { const kv = (a.annotations || []).find(x => x.key === key); return kv ? kv.value : undefined; }
  function later(fn, every) { const id = setInterval(fn, every); timers.push(id); }
  function clearPage() {
    timers.forEach(clearInterval); timers = [];
    if (tailAbort) { tailAbort.abort(); tailAbort = null; }
    page().textContent = '';
  }

  // ----- API -----
  function key() { return sessionStorage.getItem(KEY); }
  function authHeader() { return 'Basic ' + btoa(key() || ''); }
  async function api(path, opts) {
    opts = opts || {};
    const headers = { Authorization: authHeader(), 'x-nimbus-console': '1' };
    let body;
    if (opts.body !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(opts.body); }
    const r = await fetch('/api/v1/namespaces/_/' + path, { method: opts.method || 'GET', headers, body });
    const text = await r.text();
    let data = text;
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
    if (r.status === 401 && !opts.noSignout) { signOut('Your key was not accepted; sign in again.'); }
    if (!r.ok && !opts.raw) {
      const err = new Error((data && data.error) || `HTTP ${r.status}`);
      err.status = r.status; err.data = data;
      throw err;
    }
    return opts.raw ? { status: r.status, data, headers: r.headers } : data;
  }
  function showError(where, e) {
    where.appendChild(h('p', { class: 'error', role: 'alert' }, String(e.message || e)));
  }

  // ----- sign in -----
  async function signIn(k) {
    const r = await fetch('/api/v1/namespaces', { headers: { Authorization: 'Basic ' + btoa(k), 'x-nimbus-console': '1' } });
    if (!r.ok) throw new Error(r.status === 401 ? 'This key is not valid.' : `Sign-in failed (HTTP ${r.status}).`);
    const ns = await r.json();
    sessionStorage.setItem(KEY, k);
    sessionStorage.setItem('nimbus.ns', ns[0] || '_');
  }
  function signOut(msg) {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem('nimbus.ns');
    if (location.hash !== '#/signin') location.hash = '#/signin';
    else route();
    if (msg) $('#signin-error').textContent = msg;
  }

  // ----- pages -----
  async function functionsPage(root) {
    root.appendChild(h('h1', {}, 'Functions'));
    const filter = h('input', { id: 'search', type: 'search', placeholder: 'Filter by name ( / )', 'aria-label': 'Filter functions' });
    root.appendChild(h('div', { class: 'toolbar' }, filter, h('span', { class: 'muted' }, 'figures over the last hour (since the server started)')));
    const table = h('table', { id: 'functions' });
    root.appendChild(table);
    async function load() {
      const [actions, inst, series] = await Promise.all([
        api('actions?limit=0'), api('instances'), api('series')]);
      const live = {};
      for (const i of inst.instances || []) {
        const name = i.action.split('/').slice(2).join('/');
        live[name] = live[name] || { idle: 0, busy: 0, starting: 0 };
        live[name][i.state] = (live[name][i.state] || 0) + 1;
      }
      const stats = {};
      for (const f of series.functions || []) stats[f.name] = f;
      table.textContent = '';
      table.appendChild(h('thead', {}, h('tr', {},
        h('th', {}, 'Name'), h('th', {}, 'Kind'), h('th', {}, 'Version'), h('th', { class: 'num' }, 'Instances idle/busy'),
        h('th', { class: 'num' }, 'Invocations'), h('th', { class: 'num' }, 'Error rate'), h('th', { class: 'num' }, 'p50'), h('th', { class: 'num' }, 'p99'))));
      const tb = h('tbody');
      const q = filter.value.trim().toLowerCase();
      for (const a of actions) {
        const pkg = (a.namespace || '').split('/').slice(1).join('/');
        const name = pkg ? pkg + '/' + a.name : a.name;
        if (q && !name.toLowerCase().includes(q)) continue;
        const s = stats[name] || { invocations: 0, errors: 0 };
        const l = live[name] || { idle: 0, busy: 0 };
        const kind = (a.exec && a.exec.kind) || ann(a, 'exec') || '';
        tb.appendChild(h('tr', { 'data-name': name },
          h('td', {}, h('a', { href: '#/functions/' + encPath(name) }, name)),
          h('td', {}, kind), h('td', {}, a.version),
          h('td', { class: 'num' }, `${l.idle} / ${l.busy}`),
          h('td', { class: 'num' }, String(s.invocations)),
          h('td', { class: 'num' }, s.invocations ? (100 * s.errors / s.invocations).toFixed(1) + ' %' : '–'),
          h('td', { class: 'num' }, ms(s.p50)), h('td', { class: 'num' }, ms(s.p99))));
      }
      if (!tb.children.length) tb.appendChild(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, q ? 'No function matches.' : 'No functions yet: deploy one with `nimbus action create`.')));
      table.appendChild(tb);
    }
    filter.addEventListener('input', () => load().catch(e => showError(root, e)));
    await load();
    later(() => load().catch(() => {}), 5000);
  }

  function chartsOf(f) {
    const p = f && f.points;
    if (!p) return null;
    return [
      { id: 'chart-rate', title: 'Invocations per second', series: [{ name: 'inv/s', values: p.rate }] },
      { id: 'chart-latency', title: 'Latency', unit: 'ms', series: [{ name: 'p50', values: p.p50 }, { name: 'p90', values: p.p90 }, { name: 'p99', values: p.p99 }] },
      { id: 'chart-errors', title: 'Errors', series: [{ name: 'errors', values: p.errors }] },
      { id: 'chart-cold', title: 'Cold starts', series: [{ name: 'cold', values: p.coldStarts }] },
      { id: 'chart-instances', title: 'Instances', series: [{ name: 'instances', values: p.instances }] },
    ];
  }

  async function functionPage(root, name) {
    root.appendChild(h('p', {}, h('a', { href: '#/functions' }, '← Functions')));
    root.appendChild(h('h1', {}, name));
    const a = await api('actions/' + encPath(name));
    const kind = a.exec && a.exec.kind;
    const info = h('dl', { class: 'kv' },
      h('dt', {}, 'Kind'), h('dd', {}, kind || ''),
      h('dt', {}, 'Version'), h('dd', {}, a.version),
      h('dt', {}, 'Limits'), h('dd', {}, Object.entries(a.limits || {}).map(([k, v]) => `${k} ${v}`).join(', ')),
      h('dt', {}, 'Parameters'), h('dd', {}, (a.parameters || []).length ? '' : 'none'),
      h('dt', {}, 'Annotations'), h('dd', {}, (a.annotations || []).map(x => `${x.key}=${JSON.stringify(x.value)}`).join(', ') || 'none'));
    const params = (a.parameters || []).length ? h('pre', { id: 'params' }, JSON.stringify(a.parameters, null, 2)) : null;
    let code = '';
    if (a.exec) code = kind === 'sequence' ? (a.exec.components || []).join('\n') : (a.exec.binary ? '(binary / zip code, not shown)' : (a.exec.code || ''));

    // Invoke panel
    const mode = h('select', { id: 'invoke-mode', 'aria-label': 'Body type' }, h('option', { value: 'json' }, 'JSON'), h('option', { value: 'text' }, 'Text'));
    const body = h('textarea', { id: 'invoke-body', rows: 6, 'aria-label': 'Request body', spellcheck: 'false' }, '{}');
    const btn = h('button', { id: 'invoke-btn', type: 'button' }, 'Invoke');
    const out = h('div', { id: 'invoke-out', 'aria-live': 'polite' });
    async function invoke() {
      let payload;
      if (mode.value === 'json') {
        try { payload = body.value.trim() ? JSON.parse(body.value) : {}; } catch (e) { out.textContent = ''; showError(out, 'The body is not valid JSON: ' + e.message); return; }
        if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) { out.textContent = ''; showError(out, 'The JSON body must be an object (its keys become parameters).'); return; }
      } else {
        payload = { payload: body.value };
      }
      btn.disabled = true;
      out.textContent = 'Running…';
      const t0 = performance.now();
      try {
        const r = await api('actions/' + encPath(name) + '?blocking=true', { method: 'POST', body: payload, raw: true });
        const rt = performance.now() - t0;
        out.textContent = '';
        const d = r.data || {};
        if (r.status === 202) { out.appendChild(h('p', {}, 'Still running; activation ', h('a', { href: '#/activations/' + d.activationId }, d.activationId))); return; }
        if (!d.response) { showError(out, (d && d.error) || `HTTP ${r.status}`); return; }
        const start = ann(d, 'start');
        out.appendChild(h('p', { id: 'invoke-summary' }, statusPill(d.response.statusCode), ' ',
          h('span', { class: 'pill' + (start === 'cold' ? ' cold' : ''), id: 'invoke-start' }, start || 'warm'), ' ',
          `duration ${ms(d.duration)}`, ann(d, 'initTime') != null ? `, init ${ms(ann(d, 'initTime'))}` : '', `, round trip ${ms(rt)} `,
          h('a', { href: '#/activations/' + d.activationId }, d.activationId)));
        out.appendChild(h('h3', {}, 'Result'));
        out.appendChild(h('pre', { id: 'invoke-result' }, JSON.stringify(d.response.result, null, 2)));
        out.appendChild(h('h3', {}, 'Logs'));
        out.appendChild(h('pre', { id: 'invoke-logs' }, (d.logs || []).join('\n') || '(no logs)'));
        refreshCharts();
      } catch (e) { out.textContent = ''; showError(out, e); } finally { btn.disabled = false; }
    }
    btn.addEventListener('click', invoke);
    body.addEventListener('keydown', e => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); invoke(); } });

    // Live tail
    const tailBtn = h('button', { id: 'tail-btn', type: 'button', class: 'secondary' }, 'Start live tail');
    const tail = h('pre', { id: 'tail', class: 'tail', 'aria-live': 'polite' }, '');
    tailBtn.addEventListener('click', () => {
      if (tailAbort) { tailAbort.abort(); tailAbort = null; tailBtn.textContent = 'Start live tail'; return; }
      tailBtn.textContent = 'Stop live tail';
      startTail(name, tail, tailBtn);
    });

    const charts = h('div', { class: 'charts', id: 'charts' });
    async function refreshCharts() {
      const s = await api('series?name=' + enc(name));
      const f = (s.functions || [])[0];
      const specs = chartsOf(f);
      charts.textContent = '';
      if (!specs) { charts.appendChild(h('p', { class: 'muted', id: 'charts-empty' }, 'No activity in the last hour.')); return; }
      for (const c of specs) {
        const slot = h('div', { id: c.id });
        charts.appendChild(slot);
        Charts.line(slot, { title: c.title, unit: c.unit, t: f.t, series: c.series });
      }
    }

    root.appendChild(h('div', { class: 'grid2' },
      h('div', {}, h('div', { class: 'card' }, info, params),
        h('div', { class: 'card' }, h('h2', {}, 'Code'), h('pre', { id: 'code' }, code))),
      h('div', {}, h('div', { class: 'card' }, h('h2', {}, 'Invoke'),
        h('div', { class: 'toolbar' }, h('label', { for: 'invoke-mode' }, 'Body'), mode, btn, h('span', { class: 'muted' }, 'Ctrl+Enter; text is sent as {"payload": "…"}')),
        body, out),
        h('div', { class: 'card' }, h('h2', {}, 'Live logs'), h('div', { class: 'toolbar' }, tailBtn, h('span', { class: 'muted' }, 'log lines of each activation as it finishes')), tail))));
    root.appendChild(h('h2', {}, 'Last hour'));
    root.appendChild(charts);
    await refreshCharts();
    later(() => refreshCharts().catch(() => {}), 10000);
  }

  // Server-sent events over fetch (EventSource cannot send the Authorization header).
  async function startTail(name, pre, btn) {
    const ctl = new AbortController();
    tailAbort = ctl;
    try {
      const r = await fetch('/api/v1/namespaces/_/logs/stream?name=' + enc(name), { headers: { Authorization: authHeader(), 'x-nimbus-console': '1' }, signal: ctl.signal });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          let ev = 'message', data = '';
          for (const l of block.split('\n')) {
            if (l.startsWith('event:')) ev = l.slice(6).trim();
            else if (l.startsWith('data:')) data += l.slice(5).trim();
          }
          if (ev === 'ready') { pre.setAttribute('data-ready', '1'); pre.textContent += '-- tailing ' + name + ' --\n'; }
          else if (ev === 'activation') {
            const a = JSON.parse(data);
            pre.textContent += `[${new Date(a.start).toLocaleTimeString()}] ${a.activationId.slice(0, 8)} ${a.status} ${a.duration} ms${a.cold ? ' cold' : ''}\n`;
            for (const l of a.logs || []) pre.textContent += '  ' + l + '\n';
            pre.scrollTop = pre.scrollHeight;
          } else if (ev === 'lagged') pre.textContent += `-- skipped ${data} activations --\n`;
        }
      }
    } catch (e) {
      if (e.name !== 'AbortError') pre.textContent += '-- tail stopped: ' + e.message + ' --\n';
    }
    if (tailAbort === ctl) { tailAbort = null; btn.textContent = 'Start live tail'; }
  }

  async function activationsPage(root, params) {
    root.appendChild(h('h1', {}, 'Activations'));
    const name = h('input', { id: 'search', type: 'search', placeholder: 'name ( / )', value: params.get('name') || '' });
    const status = h('select', { id: 'f-status' }, h('option', { value: '' }, 'any'), h('option', { value: 'ok' }, 'success'), h('option', { value: 'err' }, 'failed'));
    status.value = params.get('status') || '';
    const since = h('input', { id: 'f-since', type: 'datetime-local', value: params.get('since') || '' });
    const upto = h('input', { id: 'f-upto', type: 'datetime-local', value: params.get('upto') || '' });
    const form = h('form', { class: 'row card' },
      h('div', {}, h('label', { for: 'search' }, 'Name'), name),
      h('div', {}, h('label', { for: 'f-status' }, 'Status'), status),
      h('div', {}, h('label', { for: 'f-since' }, 'Since'), since),
      h('div', {}, h('label', { for: 'f-upto' }, 'Up to'), upto),
      h('div', {}, h('button', { type: 'submit' }, 'Apply')));
    form.addEventListener('submit', e => {
      e.preventDefault();
      const p = new URLSearchParams();
      if (name.value) p.set('name', name.value);
      if (status.value) p.set('status', status.value);
      if (since.value) p.set('since', since.value);
      if (upto.value) p.set('upto', upto.value);
      location.hash = '#/activations?' + p.toString();
    });
    root.appendChild(form);
    const q = new URLSearchParams({ limit: '100', docs: 'false' });
    if (name.value) q.set('name', name.value);
    if (since.value) q.set('since', String(new Date(since.value).getTime()));
    if (upto.value) q.set('upto', String(new Date(upto.value).getTime()));
    const list = await api('activations?' + q.toString());
    const rows = list.filter(a => !status.value || (status.value === 'ok' ? a.statusCode === 0 : a.statusCode !== 0));
    root.appendChild(h('table', { id: 'activations' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Activation'), h('th', {}, 'Name'), h('th', {}, 'Start'), h('th', { class: 'num' }, 'Duration'), h('th', {}, 'Status'), h('th', {}, 'Start kind'))),
      h('tbody', {}, rows.length ? rows.map(a => h('tr', {},
        h('td', {}, h('a', { href: '#/activations/' + a.activationId }, h('code', {}, a.activationId))),
        h('td', {}, (ann(a, 'path') || a.name).split('/').slice(1).join('/') || a.name),
        h('td', {}, when(a.start)), h('td', { class: 'num' }, a.duration != null ? ms(a.duration) : '–'),
        h('td', {}, statusPill(a.statusCode)), h('td', {}, ann(a, 'start') || (ann(a, 'kind') === 'trigger' ? 'trigger' : '')))) :
        h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No activations match.')))));
  }

  async function activationPage(root, id) {
    root.appendChild(h('p', {}, h('a', { href: '#/activations' }, '← Activations')));
    root.appendChild(h('h1', {}, 'Activation ', h('code', {}, id)));
    const a = await api('activations/' + enc(id));
    const path = ann(a, 'path') || a.name;
    const fn = path.split('/').slice(1).join('/');
    root.appendChild(h('div', { class: 'card' }, h('dl', { class: 'kv', id: 'activation-info' },
      h('dt', {}, 'Function'), h('dd', {}, ann(a, 'kind') === 'trigger' ? path : h('a', { href: '#/functions/' + encPath(fn) }, path)),
      h('dt', {}, 'Status'), h('dd', {}, statusPill(a.response.statusCode), ' ', a.response.status),
      h('dt', {}, 'Start'), h('dd', {}, when(a.start)),
      h('dt', {}, 'Duration'), h('dd', {}, a.duration != null ? ms(a.duration) : '–'),
      h('dt', {}, 'Start kind'), h('dd', {}, ann(a, 'start') || '–', ann(a, 'initTime') != null ? ` (init ${ms(ann(a, 'initTime'))})` : ''),
      h('dt', {}, 'Wait'), h('dd', {}, ann(a, 'waitTime') != null ? ms(ann(a, 'waitTime')) : '–'),
      h('dt', {}, 'Request id'), h('dd', {}, h('code', {}, ann(a, 'requestId') || '–')),
      h('dt', {}, 'Cause'), h('dd', {}, a.cause ? h('a', { href: '#/activations/' + a.cause }, a.cause) : '–'))));
    root.appendChild(h('div', { class: 'grid2' },
      h('div', { class: 'card' }, h('h2', {}, 'Result'), h('pre', { id: 'activation-result' }, JSON.stringify(a.response.result, null, 2))),
      h('div', { class: 'card' }, h('h2', {}, 'Logs'), h('pre', { id: 'activation-logs' }, (a.logs || []).join('\n') || '(no logs)'))));
    root.appendChild(h('details', { class: 'card' }, h('summary', {}, 'Raw record'), h('pre', {}, JSON.stringify(a, null, 2))));
  }

  async function triggersPage(root) {
    root.appendChild(h('h1', {}, 'Triggers, rules and feeds'));
    const [triggers, rules] = await Promise.all([api('triggers?limit=0'), api('rules?limit=0')]);
    const out = h('p', { id: 'fire-out', 'aria-live': 'polite' });
    root.appendChild(out);
    const payload = h('input', { id: 'fire-payload', value: '{}', 'aria-label': 'Fire payload (JSON object)', size: 40 });
    root.appendChild(h('div', { class: 'toolbar' }, h('label', { for: 'fire-payload' }, 'Payload for Fire'), payload));
    root.appendChild(h('h2', {}, 'Triggers'));
    root.appendChild(h('table', { id: 'triggers' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Feed'), h('th', {}, 'Version'), h('th', {}, ''))),
      h('tbody', {}, triggers.length ? triggers.map(t => {
        const feed = ann(t, 'feed');
        const b = h('button', { type: 'button', 'data-fire': t.name }, 'Fire');
        b.addEventListener('click', async () => {
          let p;
          try { p = JSON.parse(payload.value || '{}'); } catch (e) { out.textContent = 'Payload is not valid JSON: ' + e.message; return; }
          try {
            const r = await api('triggers/' + enc(t.name), { method: 'POST', body: p, raw: true });
            out.textContent = '';
            if (r.status === 204) out.append(`${t.name} fired; no active rule matched.`);
            else if (r.status === 202) out.append(`${t.name} fired: `, h('a', { href: '#/activations/' + r.data.activationId }, r.data.activationId));
            else out.append(`${t.name}: ${(r.data && r.data.error) || 'HTTP ' + r.status}`);
          } catch (e) { out.textContent = String(e.message); }
        });
        return h('tr', {}, h('td', {}, t.name), h('td', {}, feed ? String(feed) : '–'), h('td', {}, t.version), h('td', {}, b));
      }) : h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No triggers.')))));
    root.appendChild(h('h2', {}, 'Rules'));
    const rows = await Promise.all(rules.map(r => api('rules/' + enc(r.name)).catch(() => r)));
    root.appendChild(h('table', { id: 'rules' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Trigger'), h('th', {}, 'Action'), h('th', {}, 'Status'), h('th', {}, ''))),
      h('tbody', {}, rows.length ? rows.map(r => {
        const active = r.status === 'active';
        const b = h('button', { type: 'button', class: 'secondary' }, active ? 'Disable' : 'Enable');
        b.addEventListener('click', async () => {
          try { await api('rules/' + enc(r.name), { method: 'POST', body: { status: active ? 'inactive' : 'active' } }); route(); } catch (e) { out.textContent = e.message; }
        });
        const name = x => (x && typeof x === 'object') ? `/${x.path}/${x.name}` : String(x || '');
        return h('tr', {}, h('td', {}, r.name), h('td', {}, name(r.trigger)), h('td', {}, name(r.action)), h('td', {}, r.status || ''), h('td', {}, b));
      }) : h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No rules.')))));
  }

  async function deadLettersPage(root) {
    root.appendChild(h('h1', {}, 'Dead letters'));
    const r = await api('deadletters', { raw: true });
    if (r.status === 404) {
      root.appendChild(h('p', { id: 'deadletters-na', class: 'muted' }, 'Not available: this server has no dead-letter list (it comes with event delivery).'));
      return;
    }
    if (r.status >= 400) { showError(root, (r.data && r.data.error) || `HTTP ${r.status}`); return; }
    const list = Array.isArray(r.data) ? r.data : (r.data && (r.data.deadletters || r.data.items)) || [];
    if (!list.length) { root.appendChild(h('p', { id: 'deadletters-empty', class: 'muted' }, 'No dead letters.')); return; }
    const when = ms => ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : '';
    root.appendChild(h('table', { id: 'deadletters' },
      h('thead', {}, h('tr', {}, ['Created (UTC)', 'Id', 'Source', 'Reason', 'Attempts', 'Event'].map(c => h('th', {}, c)))),
      h('tbody', {}, list.map(x => h('tr', { 'data-id': x.id },
        h('td', {}, when(x.createdAt ?? x.created_at)),
        h('td', {}, h('code', {}, String(x.id || ''))),
        h('td', {}, String(x.source || '')),
        h('td', {}, String(x.reason || '')),
        h('td', {}, String(x.attempts ?? '')),
        h('td', {}, h('code', {}, JSON.stringify(x.event ?? null).slice(0, 200))))))));
    root.appendChild(h('p', { class: 'muted' }, 'Redrive or purge with the CLI: nimbus deadletter redrive ID, nimbus deadletter purge --all.'));
  }

  async function usagePage(root, params) {
    root.appendChild(h('h1', {}, 'Usage'));
    const day = 86400000;
    const sinceD = params.get('since') || new Date(Date.now() - 29 * day).toISOString().slice(0, 10);
    const uptoD = params.get('upto') || new Date().toISOString().slice(0, 10);
    const since = h('input', { id: 'u-since', type: 'date', value: sinceD });
    const upto = h('input', { id: 'u-upto', type: 'date', value: uptoD });
    const form = h('form', { class: 'row card' },
      h('div', {}, h('label', { for: 'u-since' }, 'From (UTC)'), since),
      h('div', {}, h('label', { for: 'u-upto' }, 'To (UTC, inclusive)'), upto),
      h('div', {}, h('button', { type: 'submit' }, 'Apply')));
    form.addEventListener('submit', e => { e.preventDefault(); location.hash = `#/usage?since=${since.value}&upto=${upto.value}`; });
    root.appendChild(form);
    const s = Date.parse(sinceD + 'T00:00:00Z'), u = Date.parse(uptoD + 'T00:00:00Z') + day - 1;
    const r = await api(`usage?since=${s}&upto=${u}`);
    const gb = v => v.toFixed(3);
    root.appendChild(h('p', { id: 'usage-total' }, `${r.total.invocations} invocations, ${r.total.errors} errors, `,
      h('strong', {}, gb(r.total.gbSeconds) + ' GB-s'), ` (memory limit × duration at 1 ms resolution; ${r.total.mbMs} MB·ms)`));
    const days = [];
    const byDay = {};
    for (const d of r.days) byDay[d.day] = d;
    for (let t = s; t <= u && days.length < 400; t += day) days.push(new Date(t).toISOString().slice(0, 10));
    const charts = h('div', { class: 'charts' });
    root.appendChild(charts);
    const c1 = h('div', { id: 'usage-inv' }), c2 = h('div', { id: 'usage-gbs' });
    charts.append(c1, c2);
    Charts.bars(c1, { title: 'Invocations per day', labels: days, values: days.map(d => (byDay[d] || {}).invocations || 0) });
    Charts.bars(c2, { title: 'GB-seconds per day', labels: days, values: days.map(d => (byDay[d] || {}).gbSeconds || 0) });
    root.appendChild(h('h2', {}, 'Per function'));
    root.appendChild(h('table', { id: 'usage' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Function'), h('th', {}, 'Kind'), h('th', { class: 'num' }, 'Invocations'), h('th', { class: 'num' }, 'Errors'), h('th', { class: 'num' }, 'Total duration'), h('th', { class: 'num' }, 'GB-s'))),
      h('tbody', {}, r.functions.length ? r.functions.map(f => h('tr', { 'data-name': f.name },
        h('td', {}, f.name), h('td', {}, f.kind), h('td', { class: 'num' }, String(f.invocations)), h('td', { class: 'num' }, String(f.errors)),
        h('td', { class: 'num' }, ms(f.durationMs)), h('td', { class: 'num' }, gb(f.gbSeconds)))) :
        h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No activations in this period.')))));
    root.appendChild(h('h2', {}, 'Per day'));
    root.appendChild(h('table', { id: 'usage-days' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Day (UTC)'), h('th', { class: 'num' }, 'Invocations'), h('th', { class: 'num' }, 'Errors'), h('th', { class: 'num' }, 'GB-s'))),
      h('tbody', {}, r.days.map(d => h('tr', {}, h('td', {}, d.day), h('td', { class: 'num' }, String(d.invocations)), h('td', { class: 'num' }, String(d.errors)), h('td', { class: 'num' }, gb(d.gbSeconds)))))));
  }

  // ----- routing -----
  async function route() {
    clearPage();
    const signedIn = !!key();
    $('#nav').hidden = !signedIn;
    $('#signout').hidden = !signedIn;
    $('#who').textContent = signedIn ? 'namespace ' + (sessionStorage.getItem('nimbus.ns') || '_') : '';
    $('#signin').hidden = signedIn;
    const [path, query] = location.hash.replace(/^#/, '').split('?');
    const params = new URLSearchParams(query || '');
    if (!signedIn) { $('#key').focus(); return; }
    if (!path || path === '/' || path === '/signin') { location.hash = '#/functions'; return; }
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', path.startsWith(a.getAttribute('href').slice(1)));
    const root = page();
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    try {
      if (parts[0] === 'functions' && parts.length > 1) await functionPage(root, parts.slice(1).join('/'));
      else if (parts[0] === 'functions') await functionsPage(root);
      else if (parts[0] === 'activations' && parts[1]) await activationPage(root, parts[1]);
      else if (parts[0] === 'activations') await activationsPage(root, params);
      else if (parts[0] === 'triggers') await triggersPage(root);
      else if (parts[0] === 'deadletters') await deadLettersPage(root);
      else if (parts[0] === 'usage') await usagePage(root, params);
      else root.appendChild(h('p', {}, 'No such page. ', h('a', { href: '#/functions' }, 'Functions')));
      root.setAttribute('data-loaded', path);
    } catch (e) { showError(root, e); }
  }

  // ----- keyboard -----
  let pendingG = 0;
  document.addEventListener('keydown', e => {
    const t = e.target;
    const typing = t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT');
    if (e.key === 'Escape') { $('#help').hidden = true; if (typing) t.blur(); return; }
    if (typing || e.ctrlKey || e.metaKey || e.altKey || !key()) return;
    if (e.key === '/') { const s = $('#search'); if (s) { e.preventDefault(); s.focus(); } return; }
    if (e.key === '?') { $('#help').hidden = !$('#help').hidden; return; }
    if (e.key === 'g') { pendingG = Date.now(); return; }
    if (Date.now() - pendingG < 1500) {
      pendingG = 0;
      const a = document.querySelector(`#nav a[data-key="${e.key}"]`);
      if (a) { location.hash = a.getAttribute('href'); $('#view').focus(); }
    }
  });

  $('#signin-form').addEventListener('submit', async e => {
    e.preventDefault();
    $('#signin-error').textContent = '';
    try { await signIn($('#key').value.trim()); $('#key').value = ''; location.hash = '#/functions'; route(); }
    catch (err) { $('#signin-error').textContent = err.message; }
  });
  $('#signout').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', route);
  route();
})();
