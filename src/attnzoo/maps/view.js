// attnzoo attention view: no dependencies, no network. Data: #az-data (see view.py).
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("az-data").textContent);
  const $ = (id) => document.getElementById(id);
  const NS = "http://www.w3.org/2000/svg";  // the SVG namespace name (nothing is fetched)
  const ROW_H = 18, GAP = 160, LABEL_MAX = 360;  // a label wider than LABEL_MAX px is shortened (full text on hover)
  const FONT = "12px monospace", AXIS_FONT = "11px monospace", TICK_MAX = 160;
  const st = { layer: 0, head: "mean", row0: 0, col0: 0, win: D.window, sel: null, pinned: false, scale: "fixed" };
  const measure = document.createElement("canvas").getContext("2d");
  const cache = {};

  function weights(li) {  // Uint16Array (H, R, S) of layer li, decoded once
    if (!cache[li]) {
      const b = atob(D.layers[li].data), u = new Uint8Array(b.length);
      for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i);
      cache[li] = new Uint16Array(u.buffer);
    }
    return cache[li];
  }
  function rowWeights(r) {  // Float64Array (S): embedded row r, chosen head or mean of heads
    const L = D.layers[st.layer], a = weights(st.layer), out = new Float64Array(L.cols);
    const hs = st.head === "mean" ? [...Array(L.heads).keys()] : [Number(st.head)];
    for (const h of hs) {
      const base = (h * L.rows + r) * L.cols;
      for (let c = 0; c < L.cols; c++) out[c] += a[base + c] / 65535;
    }
    if (hs.length > 1) for (let c = 0; c < L.cols; c++) out[c] /= hs.length;
    return out;
  }
  const clamp = (x, lo, hi) => Math.max(lo, Math.min(hi, x));
  function width(s, font) { measure.font = font || FONT; return measure.measureText(s).width; }
  function fit(s, px, font) {  // s, or its longest prefix + "…" that fits in px
    if (width(s, font) <= px) return s;
    let lo = 0, hi = s.length;
    while (lo < hi) { const m = (lo + hi + 1) >> 1; if (width(s.slice(0, m) + "\u2026", font) <= px) lo = m; else hi = m - 1; }
    return s.slice(0, lo) + "\u2026";
  }
  function labelWidth(labels, cap, font) {
    let w = 0;
    for (const s of labels) w = Math.max(w, width(s, font));
    return Math.min(cap, Math.ceil(w));
  }
  function el(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fillControls() {
    const ls = $("layer");
    D.layers.forEach((L, i) => ls.add(new Option(`${L.label} (${L.heads}\u00d7${L.rows}\u00d7${L.cols})`, i)));
    ls.onchange = () => { st.layer = Number(ls.value); st.sel = null; st.pinned = false; fillHeads(); render(); };
    $("head").onchange = () => { st.head = $("head").value; render(); };
    $("scale").onchange = () => { st.scale = $("scale").value; render(); };
    $("row0").onchange = () => { st.row0 = Number($("row0").value) || 0; render(); };
    $("col0").onchange = () => { st.col0 = Number($("col0").value) || 0; render(); };
    $("win").value = st.win;
    $("win").onchange = () => { st.win = clamp(Number($("win").value) || 1, 1, 512); render(); };
    fillHeads();
  }
  function fillHeads() {
    const hs = $("head"), H = D.layers[st.layer].heads;
    hs.length = 0;
    hs.add(new Option("mean of heads", "mean"));
    for (let h = 0; h < H; h++) hs.add(new Option(`head ${h}`, String(h)));
    $("headbox").style.display = H > 1 ? "" : "none";  // one head: nothing to choose
    st.head = "mean";
  }

  function render() {
    const L = D.layers[st.layer];
    const nr = Math.min(st.win, L.rows), nc = Math.min(st.win, L.cols);
    st.row0 = clamp(st.row0, 0, L.rows - nr); st.col0 = clamp(st.col0, 0, L.cols - nc);
    $("row0").value = st.row0; $("col0").value = st.col0;
    $("info").textContent = `${L.rows} query rows x ${L.cols} keys; showing rows ${st.row0}..${st.row0 + nr - 1}` +
      ` and keys ${st.col0}..${st.col0 + nc - 1}`;
    const rows = [];
    for (let i = 0; i < nr; i++) rows.push(rowWeights(st.row0 + i));
    drawLines(L, rows, nr, nc);
    drawHeat(L, rows, nr, nc);
    drawSelection(L);
  }

  function drawLines(L, rows, nr, nc) {
    const svg = $("lines");
    const qs = L.q.slice(st.row0, st.row0 + nr), ks = L.k.slice(st.col0, st.col0 + nc);
    const qw = labelWidth(qs, LABEL_MAX) + 6, kw = labelWidth(ks, LABEL_MAX) + 6, x0 = qw, x1 = qw + GAP;
    svg.replaceChildren();
    svg.setAttribute("width", x1 + kw); svg.setAttribute("height", Math.max(nr, nc) * ROW_H + 4);
    for (let i = 0; i < nr; i++) {
      const r = st.row0 + i;
      if (st.sel !== null && r !== st.sel) continue;
      for (let j = 0; j < nc; j++) {
        const w = rows[i][st.col0 + j];
        if (w < 0.005) continue;
        svg.appendChild(el("line", { x1: x0 + 4, y1: i * ROW_H + 13, x2: x1 - 4, y2: j * ROW_H + 13, stroke: "#1f6fd0",
          "stroke-width": 2, "stroke-opacity": w.toFixed(4), "data-row": r, "data-col": st.col0 + j,
          "data-weight": w.toFixed(6) }));
      }
    }
    for (let i = 0; i < nr; i++) {
      const r = st.row0 + i, t = el("text", { x: x0, y: i * ROW_H + 17, "text-anchor": "end", class: "qtok",
        "data-row": r }, fit(L.q[r], LABEL_MAX));
      t.appendChild(el("title", {}, L.q[r]));  // the whole label on hover
      if (r === st.sel) t.classList.add("sel");
      t.onmouseenter = () => { if (!st.pinned) { st.sel = r; render(); } };
      t.onclick = () => { st.pinned = !(st.pinned && st.sel === r); st.sel = r; render(); };
      svg.appendChild(t);
    }
    for (let j = 0; j < nc; j++) {
      const t = el("text", { x: x1, y: j * ROW_H + 17, class: "ktok", "data-col": st.col0 + j },
        fit(L.k[st.col0 + j], LABEL_MAX));
      t.appendChild(el("title", {}, L.k[st.col0 + j]));
      svg.appendChild(t);
    }
    svg.onmouseleave = () => { if (!st.pinned && st.sel !== null) { st.sel = null; render(); } };
  }

  // The heatmap of the window: cells, query labels (left), key labels (below, rotated), axis
  // titles, and a colour bar. Colour = weight / scale: scale 1 ("fixed", comparable across
  // rows, heads and layers) or the row's largest weight over all keys ("row").
  function rowMax(w) { let m = 1e-12; for (const v of w) m = Math.max(m, v); return m; }
  function colour(x) { const v = Math.round(255 * (1 - clamp(x, 0, 1))); return `rgb(${v},${v},255)`; }
  function drawHeat(L, rows, nr, nc) {
    const cv = $("heat"), cell = clamp(Math.floor(512 / Math.max(nr, nc)), 2, 24);
    const every = Math.max(1, Math.ceil(13 / cell));  // a label every `every` cells, 13 px apart at least
    const qs = [], ks = [];
    for (let i = 0; i < nr; i += every) qs.push(fit(L.q[st.row0 + i], TICK_MAX, AXIS_FONT));
    for (let j = 0; j < nc; j += every) ks.push(fit(L.k[st.col0 + j], TICK_MAX, AXIS_FONT));
    let x0 = 18 + labelWidth(qs, TICK_MAX, AXIS_FONT) + 6;
    const y0 = 8;
    ks.forEach((s, k) => { x0 = Math.max(x0, Math.ceil(width(s, AXIS_FONT) * 0.71 - (k * every + 0.5) * cell) + 4); });
    const below = labelWidth(ks, TICK_MAX, AXIS_FONT) * 0.72 + 10;  // key labels at 45 degrees
    const bar = x0 + nc * cell + 18;  // the colour bar's left edge
    cv.width = Math.max(bar + 16 + 8 + width("row max", AXIS_FONT) + 4, 260);
    cv.height = Math.max(y0 + nr * cell + below + 20, 150);
    const g = cv.getContext("2d");
    g.fillStyle = "#fff"; g.fillRect(0, 0, cv.width, cv.height);
    const scales = rows.map((w) => (st.scale === "row" ? rowMax(w) : 1));
    for (let i = 0; i < nr; i++) for (let j = 0; j < nc; j++) {
      g.fillStyle = colour(rows[i][st.col0 + j] / scales[i]); g.fillRect(x0 + j * cell, y0 + i * cell, cell, cell);
    }
    g.strokeStyle = "#999"; g.lineWidth = 1; g.strokeRect(x0 - 0.5, y0 - 0.5, nc * cell + 1, nr * cell + 1);
    if (st.sel !== null && st.sel >= st.row0 && st.sel < st.row0 + nr) {
      g.strokeStyle = "#c00"; g.lineWidth = 2; g.strokeRect(x0 + 1, y0 + (st.sel - st.row0) * cell + 1, nc * cell - 2, cell - 2);
    }
    g.fillStyle = "#222"; g.font = AXIS_FONT; g.textBaseline = "middle";
    g.textAlign = "right";
    qs.forEach((s, k) => g.fillText(s, x0 - 4, y0 + (k * every + 0.5) * cell));
    g.textAlign = "right";
    ks.forEach((s, k) => {
      g.save(); g.translate(x0 + (k * every + 0.5) * cell, y0 + nr * cell + 6); g.rotate(-Math.PI / 4);
      g.fillText(s, 0, 0); g.restore();
    });
    g.font = "bold " + AXIS_FONT; g.textAlign = "center";
    g.fillText("key tokens", x0 + nc * cell / 2, cv.height - 8);
    g.save(); g.translate(9, y0 + nr * cell / 2); g.rotate(-Math.PI / 2); g.fillText("query tokens", 0, 0); g.restore();
    const h = Math.max(nr * cell, 100);  // the colour bar: top = the scale's top
    for (let y = 0; y < h; y++) { g.fillStyle = colour(1 - y / (h - 1)); g.fillRect(bar, y0 + y, 14, 1); }
    g.strokeStyle = "#999"; g.strokeRect(bar - 0.5, y0 - 0.5, 15, h + 1);
    g.fillStyle = "#222"; g.font = AXIS_FONT; g.textAlign = "left";
    const ticks = st.scale === "row" ? [[1, "row max"], [0.5, "max/2"], [0, "0"]] : [[1, "1"], [0.5, "0.5"], [0, "0"]];
    for (const [v, s] of ticks) g.fillText(s, bar + 18, y0 + (1 - v) * (h - 1));
    Object.assign(cv.dataset, { x0, y0, cell, scale: st.scale, bar, barHeight: h });
    cv.setAttribute("aria-label", `heatmap: rows = query tokens ${st.row0}..${st.row0 + nr - 1}, columns = key tokens ` +
      `${st.col0}..${st.col0 + nc - 1}; colour scale ${st.scale === "row" ? "per row (row max)" : "fixed 0 to 1"}`);
    const at = (e) => [Math.floor((e.offsetY - y0) / cell), Math.floor((e.offsetX - x0) / cell)];
    cv.onclick = (e) => {
      const [i, j] = at(e);
      if (i >= 0 && i < nr && j >= 0 && j < nc) { st.sel = st.row0 + i; st.pinned = true; render(); }
    };
    cv.onmousemove = (e) => {
      const [i, j] = at(e);
      cv.title = i >= 0 && i < nr && j >= 0 && j < nc ? `query ${L.row_ids[st.row0 + i]} "${L.q[st.row0 + i]}" -> key ` +
        `${st.col0 + j} "${L.k[st.col0 + j]}": ${rows[i][st.col0 + j].toFixed(4)}` : "";
    };
  }

  function drawSelection(L) {
    const top = $("top"), strip = $("strip");
    top.replaceChildren();
    if (st.sel === null) { $("sel").textContent = "Click or hover a query token (left column)."; strip.width = 0; return; }
    const w = rowWeights(st.sel);
    const head = st.head === "mean" ? (L.heads > 1 ? "mean of heads" : "") : `head ${st.head}`;
    $("sel").textContent = `Query ${L.row_ids[st.sel]} "${L.q[st.sel]}" (${L.label}${head ? ", " + head : ""}) attends to:`;
    $("sel").dataset.row = st.sel;
    const order = [...w.keys()].sort((a, b) => w[b] - w[a] || a - b).slice(0, 10);
    for (const j of order) {
      const li = document.createElement("li");
      li.dataset.col = j; li.dataset.weight = w[j].toFixed(6);
      li.textContent = `${L.k[j]} (key ${j}): ${w[j].toFixed(4)}`;
      top.appendChild(li);
    }
    const px = clamp(L.cols, 256, 1024), g = (strip.width = px, strip.getContext("2d"));
    const max = rowMax(w);
    for (let x = 0; x < px; x++) {  // each pixel: the largest weight of the keys it covers
      const c0 = Math.floor(x * L.cols / px), c1 = Math.max(c0 + 1, Math.floor((x + 1) * L.cols / px));
      let m = 0;
      for (let c = c0; c < c1; c++) m = Math.max(m, w[c]);
      const h = Math.round(38 * m / max);
      g.fillStyle = "#1f6fd0"; g.fillRect(x, 40 - h, 1, h);
    }
  }

  fillControls();
  render();
  document.body.dataset.ready = "1";
})();
