// attnzoo attention view: no dependencies, no network. Data: #az-data (see view.py).
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("az-data").textContent);
  const $ = (id) => document.getElementById(id);
  const NS = "http://www.w3.org/2000/svg";  // the SVG namespace name (nothing is fetched)
  const ROW_H = 18, TEXT_W = 150, GAP = 160;
  const st = { layer: 0, head: "mean", row0: 0, col0: 0, win: D.window, sel: null, pinned: false };
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
  const short = (s) => (s.length > 18 ? s.slice(0, 17) + "\u2026" : s);
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
    $("row0").onchange = () => { st.row0 = Number($("row0").value) || 0; render(); };
    $("col0").onchange = () => { st.col0 = Number($("col0").value) || 0; render(); };
    $("win").value = st.win;
    $("win").onchange = () => { st.win = clamp(Number($("win").value) || 1, 1, 512); render(); };
    fillHeads();
  }
  function fillHeads() {
    const hs = $("head"), H = D.layers[st.layer].heads;
    hs.length = 0;
    hs.add(new Option(H > 1 ? "mean of heads" : "all", "mean"));
    if (H > 1) for (let h = 0; h < H; h++) hs.add(new Option(`head ${h}`, String(h)));
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
    drawHeat(rows, nr, nc);
    drawSelection(L);
  }

  function drawLines(L, rows, nr, nc) {
    const svg = $("lines"), x0 = TEXT_W, x1 = TEXT_W + GAP;
    svg.replaceChildren();
    svg.setAttribute("width", x1 + TEXT_W); svg.setAttribute("height", Math.max(nr, nc) * ROW_H + 4);
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
        "data-row": r }, short(L.q[r]));
      if (r === st.sel) t.classList.add("sel");
      t.onmouseenter = () => { if (!st.pinned) { st.sel = r; render(); } };
      t.onclick = () => { st.pinned = !(st.pinned && st.sel === r); st.sel = r; render(); };
      svg.appendChild(t);
    }
    for (let j = 0; j < nc; j++) svg.appendChild(el("text", { x: x1, y: j * ROW_H + 17, class: "ktok",
      "data-col": st.col0 + j }, short(L.k[st.col0 + j])));
    svg.onmouseleave = () => { if (!st.pinned && st.sel !== null) { st.sel = null; render(); } };
  }

  function drawHeat(rows, nr, nc) {
    const cv = $("heat"), cell = clamp(Math.floor(512 / Math.max(nr, nc)), 2, 24);
    cv.width = nc * cell; cv.height = nr * cell;
    const g = cv.getContext("2d");
    let max = 1e-12;
    for (let i = 0; i < nr; i++) for (let j = 0; j < nc; j++) max = Math.max(max, rows[i][st.col0 + j]);
    for (let i = 0; i < nr; i++) for (let j = 0; j < nc; j++) {
      const v = Math.round(255 * (1 - rows[i][st.col0 + j] / max));
      g.fillStyle = `rgb(${v},${v},255)`; g.fillRect(j * cell, i * cell, cell, cell);
    }
    if (st.sel !== null && st.sel >= st.row0 && st.sel < st.row0 + nr) {
      g.strokeStyle = "#c00"; g.lineWidth = 2; g.strokeRect(1, (st.sel - st.row0) * cell + 1, nc * cell - 2, cell - 2);
    }
    cv.onclick = (e) => {
      const i = Math.floor(e.offsetY / cell);
      if (i >= 0 && i < nr) { st.sel = st.row0 + i; st.pinned = true; render(); }
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
    let max = 1e-12;
    for (const v of w) max = Math.max(max, v);
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
