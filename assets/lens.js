() => {
  // The depth lens: click a token of an answer that has a trace (a hidden .lens-src element beside it, written by
  // app.render.lens_holder) and a panel shows how that token converged over the recurrence steps. Every piece of
  // data goes into the page through textContent or numeric SVG attributes: no token text is ever parsed as HTML.
  const SVG = 'http://www.w3.org/2000/svg';
  const parsed = new WeakMap();
  const SERIES = [['kl', 'KL to previous step', '#d62728'], ['entropy', 'entropy (nats)', '#1f77b4'],
                  ['latent_change', 'latent change', '#2ca02c']];

  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const svg = (tag, attrs) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  };
  const num = (v) => (typeof v === 'number' && isFinite(v) ? v : 0);
  const fmt = (v) => (Math.abs(v) >= 0.01 || v === 0 ? v.toFixed(3) : v.toExponential(1));
  const shown = (text) => JSON.stringify(String(text)).slice(1, -1);  // whitespace and controls made visible
  const textOf = (trace, id) => {
    const t = trace.texts && Object.prototype.hasOwnProperty.call(trace.texts, String(id)) ? trace.texts[String(id)] : null;
    return typeof t === 'string' ? shown(t) : '#' + id;
  };

  function traceFor(source) {
    if (!parsed.has(source)) {
      let trace = null;
      try { trace = JSON.parse(source.dataset.lens || 'null'); } catch (e) { trace = null; }
      parsed.set(source, trace && Array.isArray(trace.tokens) ? trace : null);
    }
    return parsed.get(source);
  }

  function panel() {
    let root = document.getElementById('lens-panel');
    if (!root) {
      root = el('div');
      root.id = 'lens-panel';
      document.body.appendChild(root);
    }
    return root;
  }

  function chart(tok) {
    // Exit signals over steps, log scale (they span many decades), the exit step marked. Values at or under FLOOR
    // (float noise: a KL of -4e-8) sit on the bottom line; every step is a dot, so a token that exited at step 1
    // or 2, as confident tokens do with adaptive exit, still shows its values.
    const W = 520, H = 170, L = 44, R = 8, T = 8, B = 22, FLOOR = 1e-6;
    const n = tok.kl.length;
    const all = SERIES.flatMap(([key]) => tok[key].map(num)).filter((v) => v > FLOOR);
    const lo = all.length ? Math.max(Math.floor(Math.log10(Math.min(...all))), Math.log10(FLOOR)) : Math.log10(FLOOR);
    const hi = Math.max(all.length ? Math.ceil(Math.log10(Math.max(...all))) : 0, lo + 1);
    const span = hi - lo;
    const x = (s) => (n <= 1 ? (L + W - R) / 2 : L + (s - 1) * (W - L - R) / (n - 1));
    const y = (v) => T + (hi - Math.log10(Math.max(v, Math.pow(10, lo)))) * (H - T - B) / span;
    const root = svg('svg', { class: 'lens-chart', viewBox: `0 0 ${W} ${H}`, width: W, height: H });
    for (let d = lo; d <= hi; d++) {
      root.appendChild(svg('line', { x1: L, x2: W - R, y1: y(Math.pow(10, d)), y2: y(Math.pow(10, d)), class: 'grid' }));
      const label = svg('text', { x: L - 4, y: y(Math.pow(10, d)) + 3, 'text-anchor': 'end', class: 'axis' });
      label.textContent = (d === lo ? '≤1e' : '1e') + d;
      root.appendChild(label);
    }
    const exit = svg('line', { x1: x(tok.exit_step), x2: x(tok.exit_step), y1: T, y2: H - B, class: 'exit-mark' });
    root.appendChild(exit);
    const exitLabel = svg('text', { x: x(tok.exit_step) - 3, y: T + 10, 'text-anchor': 'end', class: 'axis' });
    exitLabel.textContent = 'exit ' + tok.exit_step;
    root.appendChild(exitLabel);
    for (const [key, , colour] of SERIES) {
      const points = tok[key].map((v, i) => [x(i + 1), y(num(v))]);
      const line = points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(' ');
      root.appendChild(svg('polyline', { points: line, fill: 'none', stroke: colour, 'stroke-width': 1.6, class: 'series' }));
      for (const [px, py] of points) root.appendChild(svg('circle', { cx: px, cy: py, r: n > 40 ? 1.5 : 2.5, fill: colour, class: 'dot' }));
    }
    for (const s of n > 1 ? [1, n] : [1]) {
      const label = svg('text', { x: x(s), y: H - 6, 'text-anchor': s === 1 ? 'start' : 'end', class: 'axis' });
      label.textContent = 'step ' + s;
      root.appendChild(label);
    }
    const legend = el('div', 'lens-legend');
    for (const [, name, colour] of SERIES) {
      const item = el('span', 'lens-key', name);
      item.style.borderColor = colour;
      legend.appendChild(item);
    }
    const box = el('div', 'lens-chart-box');
    box.append(root, legend);
    return box;
  }

  function strip(trace, tok) {
    // The leading guess at every step; powers of two and flips marked, the top-k in each cell's tooltip.
    const box = el('div', 'lens-strip');
    let previous = null;
    const flips = [];
    tok.top.forEach((ids, i) => {
      const step = i + 1;
      const leader = ids[0];
      const cell = el('div', 'lens-step');
      if ((step & (step - 1)) === 0) cell.classList.add('pow2');
      if (previous !== null && leader !== previous) { cell.classList.add('flip'); flips.push(step); }
      if (step === tok.exit_step) cell.classList.add('exit');
      previous = leader;
      cell.appendChild(el('span', 'lens-step-n', String(step)));
      cell.appendChild(el('span', 'lens-step-tok', textOf(trace, leader)));
      cell.appendChild(el('span', 'lens-step-p', num(tok.probs[i][0]).toFixed(2)));
      cell.title = ids.map((id, j) => `${textOf(trace, id)}  ${num(tok.probs[i][j]).toFixed(3)}`).join('\n');
      box.appendChild(cell);
    });
    const milestones = [];
    for (let s = 1; s <= tok.top.length; s *= 2) milestones.push(`${s}: ${textOf(trace, tok.top[s - 1][0])}`);
    const note = el('div', 'lens-note', `led at step ${milestones.join(' · ')}` +
      (flips.length ? ` — flipped at step ${flips.join(', ')}` : ' — never flipped'));
    const wrap = el('div');
    wrap.append(note, box);
    return wrap;
  }

  function trajectory(trace, tok) {
    // The token's latent path in the answer's 2-D PCA; the other tokens' paths faint behind it.
    const W = 250, H = 200, P = 12;
    const paths = trace.tokens.filter((t) => Array.isArray(t.xy));
    const root = svg('svg', { class: 'lens-path', viewBox: `0 0 ${W} ${H}`, width: W, height: H });
    if (!Array.isArray(tok.xy) || !paths.length) return root;
    const xs = paths.flatMap((t) => t.xy.map((p) => num(p[0]))), ys = paths.flatMap((t) => t.xy.map((p) => num(p[1])));
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const sx = (v) => P + (num(v) - x0) * (W - 2 * P) / ((x1 - x0) || 1);
    const sy = (v) => H - P - (num(v) - y0) * (H - 2 * P) / ((y1 - y0) || 1);
    const line = (t, cls) => svg('polyline', { points: t.xy.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' '), class: cls, fill: 'none' });
    for (const t of paths) if (t !== tok) root.appendChild(line(t, 'other'));
    root.appendChild(line(tok, 'mine'));
    tok.xy.forEach((p, i) => {
      const end = i === tok.xy.length - 1;
      root.appendChild(svg('circle', { cx: sx(p[0]), cy: sy(p[1]), r: i === 0 || end ? 4 : 2, class: i === 0 ? 'start' : end ? 'end' : 'mid' }));
    });
    return root;
  }

  function image(trace, tok, source, kind) {
    // Tokens x steps: the probability each step gave to the token finally chosen (dark = settled).
    const rows = trace.tokens, cols = Math.max(...rows.map((t) => t.top.length));
    const cell = Math.max(3, Math.min(24, Math.floor(480 / Math.max(cols, 1))));
    const h = Math.max(2, Math.min(14, Math.floor(240 / Math.max(rows.length, 1))));
    const canvas = el('canvas', 'lens-image');
    canvas.width = cols * cell;
    canvas.height = rows.length * h;
    const ctx = canvas.getContext('2d');
    rows.forEach((t, r) => {
      t.top.forEach((ids, s) => {
        const at = ids.indexOf(t.token_id);
        const p = Math.min(Math.max(at >= 0 ? num(t.probs[s][at]) : 0, 0), 1);
        // Half the shade from p itself, half from how close to 1 it is (-log10(1 - p), up to 1e-6): a confident
        // answer, 0.99 at step 2 and 0.999999 at step 8, still shows where it settled.
        const settled = Math.min(-Math.log10(Math.max(1 - p, 1e-6)), 6) / 6;
        ctx.fillStyle = `rgba(60, 40, 140, ${0.06 + 0.94 * (0.5 * p + 0.5 * settled)})`;
        ctx.fillRect(s * cell, r * h, cell, h);
      });
      if (t === tok) { ctx.strokeStyle = '#e8a000'; ctx.lineWidth = 2; ctx.strokeRect(1, r * h, canvas.width - 2, h); }
    });
    canvas.addEventListener('click', (event) => {
      const r = Math.floor(event.offsetY * canvas.height / canvas.clientHeight / h);  // the canvas may be scaled down
      if (rows[r]) show(source, rows[r].index, kind);
    });
    const box = el('div', 'lens-image-box');
    const what = kind === 'prompt' ? `prompt: ${rows.length} positions` : `answer: ${rows.length} tokens`;
    box.append(el('div', 'lens-title', `${what} × ${cols} steps (the final token's probability: darker = closer to 1, on a log scale near 1)`), canvas);
    return box;
  }

  // A prompt token's lens reads the trace's "prompt" positions (each predicted the prompt's next token) the way an
  // answer token's reads its "tokens".
  const part = (trace, kind) => (trace && kind === 'prompt'
    ? { ...trace, tokens: Array.isArray(trace.prompt) ? trace.prompt : [], cut: false } : trace);

  function show(source, index, kind) {
    const trace = part(traceFor(source), kind);
    const root = panel();
    root.replaceChildren();
    const close = el('button', 'lens-close', '×');
    close.title = 'close the lens';
    close.addEventListener('click', () => root.replaceChildren());
    const tok = trace && trace.tokens.find((t) => t.index === index);
    const head = el('div', 'lens-head');
    root.append(close, head);
    if (!tok) {
      head.textContent = trace && trace.cut ? 'trace cut: this token is past the part of the answer that was kept'
                                            : 'no trace for this token';
      return;
    }
    const meta = kind === 'prompt'
      ? ` predicted at prompt position ${tok.index + 1} · exit at step ${tok.exit_step}`
      : ` token ${tok.index + 1} · exit at step ${tok.exit_step}` +
        (trace.cut ? ' · trace cut (the answer is longer than what was kept)' : '');
    head.append(el('span', 'lens-token', textOf(trace, tok.token_id)), el('span', 'lens-meta', meta));
    const mid = el('div', 'lens-row');
    mid.append(chart(tok), trajectory(trace, tok));
    root.append(strip(trace, tok), mid, image(trace, tok, source, kind));
    root.scrollIntoView({ block: 'nearest' });
  }

  document.addEventListener('click', (event) => {
    const target = event.target instanceof Element ? event.target.closest('.tok[data-i], .tok[data-p]') : null;
    if (!target) return;
    const holder = target.closest('.col') || target.closest('.msg');
    const source = holder && holder.querySelector(':scope > .lens-src');
    if (!source || !traceFor(source)) return;
    const prompt = target.dataset.p !== undefined;
    if (prompt && !Array.isArray(traceFor(source).prompt)) return;  // a prompt without a trace of its own
    show(source, Number(prompt ? target.dataset.p : target.dataset.i), prompt ? 'prompt' : 'answer');
  });
}
