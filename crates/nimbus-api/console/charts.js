// Small SVG charts for the console (no library): line charts over time and bar charts.
'use strict';
(function () {
  const NS = 'http://www.w3.org/2000/svg';
  const W = 320, H = 120, L = 34, R = 6, T = 8, B = 18;
  const COLORS = ['#2f62b8', '#d1782a', '#b3261e', '#1f7a3d', '#7a4fb8'];

  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(v) {
    if (v === 0) return '0';
    if (Math.abs(v) >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + 'k';
    if (Math.abs(v) >= 10) return v.toFixed(0);
    if (Math.abs(v) >= 1) return v.toFixed(1);
    return v.toFixed(2);
  }
  function hhmm(ms) {
    const d = new Date(ms);
    return String(d.getHours()).padStart(2, '0') + ':' + String(d.getMinutes()).padStart(2, '0');
  }

  // line(container, {title, t: [ms], series: [{name, values: [number|null]}], unit})
  function line(container, spec) {
    container.textContent = '';
    const box = document.createElement('div');
    box.className = 'chart';
    const h = document.createElement('h3');
    h.textContent = spec.title + (spec.unit ? ' (' + spec.unit + ')' : '');
    box.appendChild(h);
    let max = 0, sum = 0;
    for (const s of spec.series) for (const v of s.values) if (v != null) { max = Math.max(max, v); sum += v; }
    const top = max > 0 ? max * 1.1 : 1;
    const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${spec.title}: max ${fmt(max)}`, 'data-sum': sum, 'data-max': max }, box);
    el('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis' }, svg);
    el('line', { x1: L, y1: T, x2: L, y2: H - B, class: 'axis' }, svg);
    el('text', { x: L - 4, y: T + 8, 'text-anchor': 'end' }, svg).textContent = fmt(top);
    el('text', { x: L - 4, y: H - B, 'text-anchor': 'end' }, svg).textContent = '0';
    const n = spec.t.length;
    if (n > 1) {
      el('text', { x: L, y: H - 4 }, svg).textContent = hhmm(spec.t[0]);
      el('text', { x: W - R, y: H - 4, 'text-anchor': 'end' }, svg).textContent = hhmm(spec.t[n - 1]);
    }
    const x = i => L + (W - L - R) * (n <= 1 ? 0 : i / (n - 1));
    const y = v => H - B - (H - B - T) * (v / top);
    spec.series.forEach((s, k) => {
      let d = '', pen = false;
      s.values.forEach((v, i) => {
        if (v == null) { pen = false; return; }
        d += (pen ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(v).toFixed(1) + ' ';
        pen = true;
      });
      // Single points (isolated buckets) are drawn as dots so a lone invocation shows.
      s.values.forEach((v, i) => {
        const prev = i > 0 ? s.values[i - 1] : null, next = i < n - 1 ? s.values[i + 1] : null;
        if (v != null && v > 0 && prev == null && next == null) el('circle', { cx: x(i), cy: y(v), r: 2, fill: COLORS[k % COLORS.length] }, svg);
      });
      if (d) el('path', { d, fill: 'none', stroke: COLORS[k % COLORS.length], 'stroke-width': 1.5, 'data-series': s.name }, svg);
    });
    if (spec.series.length > 1) {
      const lg = document.createElement('div');
      lg.className = 'legend';
      spec.series.forEach((s, k) => {
        const sp = document.createElement('span');
        const i = document.createElement('i');
        i.style.background = COLORS[k % COLORS.length];
        sp.appendChild(i);
        sp.appendChild(document.createTextNode(s.name));
        lg.appendChild(sp);
      });
      box.appendChild(lg);
    }
    container.appendChild(box);
    return box;
  }

  // bars(container, {title, labels: [string], values: [number], unit})
  function bars(container, spec) {
    container.textContent = '';
    const box = document.createElement('div');
    box.className = 'chart';
    const h = document.createElement('h3');
    h.textContent = spec.title + (spec.unit ? ' (' + spec.unit + ')' : '');
    box.appendChild(h);
    const max = Math.max(0, ...spec.values);
    const top = max > 0 ? max * 1.1 : 1;
    const sum = spec.values.reduce((a, b) => a + b, 0);
    const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${spec.title}: max ${fmt(max)}`, 'data-sum': sum }, box);
    el('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis' }, svg);
    el('text', { x: L - 4, y: T + 8, 'text-anchor': 'end' }, svg).textContent = fmt(top);
    const n = spec.values.length || 1, bw = (W - L - R) / n;
    spec.values.forEach((v, i) => {
      const hgt = (H - B - T) * (v / top);
      const r = el('rect', { x: L + i * bw + 1, y: H - B - hgt, width: Math.max(1, bw - 2), height: hgt, fill: COLORS[0] }, svg);
      el('title', {}, r).textContent = `${spec.labels[i]}: ${v}`;
    });
    if (spec.labels.length) {
      el('text', { x: L, y: H - 4 }, svg).textContent = spec.labels[0];
      if (spec.labels.length > 1) el('text', { x: W - R, y: H - 4, 'text-anchor': 'end' }, svg).textContent = spec.labels[spec.labels.length - 1];
    }
    container.appendChild(box);
    return box;
  }

  window.Charts = { line, bars };
})();
