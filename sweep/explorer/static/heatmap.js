// The overview heatmap: ONE <canvas> drawn from /api/matrix (a float32 grid per metric), not a DOM node per
// cell, so 360 x 360 stays responsive. Hover reads the numbers from memory; a drag or the wheel zooms; a click
// opens the cell. Text from the data only ever reaches the page as textContent.
"use strict";

(function () {
  const canvas = document.getElementById("heatmap");
  const tooltip = document.getElementById("tooltip");
  const select = document.getElementById("metric");
  const resetButton = document.getElementById("reset-zoom");
  const WIDTH = 780, HEIGHT = 640;
  const MARGIN = { left: 58, right: 104, top: 12, bottom: 48 };
  const MISSING = [226, 226, 226], FAILED = [214, 39, 40];
  const DRAG_PX = 4; // a press that moves less than this is a click
  // matplotlib's viridis at 17 stops (the report's colour map), interpolated to 256 entries below.
  const VIRIDIS_STOPS = [[68, 1, 84], [72, 24, 106], [71, 45, 123], [66, 64, 134], [59, 82, 139], [51, 99, 141],
    [44, 114, 142], [38, 130, 142], [33, 145, 140], [31, 160, 136], [40, 174, 128], [63, 188, 115], [94, 201, 98],
    [132, 212, 75], [173, 220, 48], [216, 226, 25], [253, 231, 37]];
  const LUT = buildLut(VIRIDIS_STOPS);
  const LABELS = { score: "score", full_match_rate: "full-match rate", mean_prefix_match: "mean exact prefix",
    nll: "NLL", tf_accuracy: "tf accuracy", n: "sequences", seen_share: "seen by this checkpoint",
    full_match_rate_never_seen: "full-match rate, never seen", full_match_rate_seen: "full-match rate, seen" };

  const ctx = canvas.getContext("2d");
  const ratio = window.devicePixelRatio || 1;
  canvas.width = WIDTH * ratio;
  canvas.height = HEIGHT * ratio;
  canvas.style.width = WIDTH + "px";
  canvas.style.height = HEIGHT + "px";

  let matrix = null;  // {ckpts, chunks, grids: {column: Float32Array}, metrics: {column: metric}, failed: Set}
  let metric = canvas.dataset.metric;
  let view = null;    // visible columns [c0, c1) and rows [r0, r1), in grid positions
  let image = null;   // one pixel per cell, the first checkpoint in the bottom row
  let range = null;   // [low, high] of the current metric over every landed cell
  let press = null;   // {x0, y0, x1, y1} while the mouse button is down
  let hovered = null; // {r, c}: the cell under the pointer, outlined so the tooltip's cell is plain to see

  function buildLut(stops) {
    const lut = [];
    for (let i = 0; i < 256; i++) {
      const at = i / 255 * (stops.length - 1), k = Math.min(Math.floor(at), stops.length - 2), f = at - k;
      lut.push(stops[k].map((v, j) => Math.round(v + (stops[k + 1][j] - v) * f)));
    }
    return lut;
  }

  function decodeGrid(base64) {
    const text = atob(base64), bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }

  function plot() {
    return { x: MARGIN.left, y: MARGIN.top, w: WIDTH - MARGIN.left - MARGIN.right, h: HEIGHT - MARGIN.top - MARGIN.bottom };
  }

  // ---- colours -----------------------------------------------------------------------------------------

  function colourOf(value) {
    if (!Number.isFinite(value)) return MISSING;
    const [low, high] = range;
    let t = high > low ? (value - low) / (high - low) : 0.5;
    if (matrix.metrics[metric].lower_is_memorized) t = 1 - t;  // bright = memorized, whatever the metric
    return LUT[Math.max(0, Math.min(255, Math.round(t * 255)))];
  }

  function paintImage() {
    const grid = matrix.grids[metric], rows = matrix.ckpts.length, cols = matrix.chunks.length;
    let low = Infinity, high = -Infinity;
    for (const v of grid) if (Number.isFinite(v)) { low = Math.min(low, v); high = Math.max(high, v); }
    range = low <= high ? [low, high] : [0, 1];
    const off = document.createElement("canvas");
    off.width = cols;
    off.height = rows;
    const offCtx = off.getContext("2d"), pixels = offCtx.createImageData(cols, rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const failed = matrix.failed.has(r * cols + c) && !Number.isFinite(grid[r * cols + c]);
        const rgb = failed ? FAILED : colourOf(grid[r * cols + c]);
        const at = ((rows - 1 - r) * cols + c) * 4;
        pixels.data[at] = rgb[0]; pixels.data[at + 1] = rgb[1]; pixels.data[at + 2] = rgb[2]; pixels.data[at + 3] = 255;
      }
    }
    offCtx.putImageData(pixels, 0, 0);
    image = off;
  }

  // ---- drawing -----------------------------------------------------------------------------------------

  function draw() {
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, WIDTH, HEIGHT);
    const p = plot(), rows = matrix.ckpts.length;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, view.c0, rows - view.r1, view.c1 - view.c0, view.r1 - view.r0, p.x, p.y, p.w, p.h);
    drawStaircase(p);
    if (hovered) outlineCell(p, hovered);
    drawAxes(p);
    drawColourBar(p);
    if (press && isDrag(press)) {
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1.5;
      ctx.setLineDash([4, 3]);
      ctx.strokeRect(Math.min(press.x0, press.x1), Math.min(press.y0, press.y1),
        Math.abs(press.x1 - press.x0), Math.abs(press.y1 - press.y0));
      ctx.setLineDash([]);
    }
  }

  // The seen/unseen boundary: in each row, after the chunks that checkpoint has trained on, inside the cell of a chunk
  // it is part way through (the server's staircase, sweep/timeline.py).
  function drawStaircase(p) {
    const cw = p.w / (view.c1 - view.c0), rh = p.h / (view.r1 - view.r0);
    ctx.save();
    ctx.beginPath();
    ctx.rect(p.x, p.y, p.w, p.h);
    ctx.clip();
    ctx.beginPath();
    for (let r = view.r0; r < view.r1; r++) {
      const seen = matrix.staircase[r];
      const x = p.x + (seen - view.c0) * cw, bottom = p.y + (view.r1 - r) * rh, top = bottom - rh;
      if (r === view.r0) ctx.moveTo(x, bottom); else ctx.lineTo(x, bottom);
      ctx.lineTo(x, top);
    }
    ctx.strokeStyle = "#e8161b";
    ctx.lineWidth = 2;
    ctx.stroke();
    ctx.restore();
  }

  function outlineCell(p, cell) {
    if (cell.c < view.c0 || cell.c >= view.c1 || cell.r < view.r0 || cell.r >= view.r1) return;
    const cw = p.w / (view.c1 - view.c0), rh = p.h / (view.r1 - view.r0);
    const x = p.x + (cell.c - view.c0) * cw, y = p.y + (view.r1 - 1 - cell.r) * rh;
    for (const [colour, width] of [["#000", 3], ["#fff", 1.5]]) {  // visible on dark and bright cells alike
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.strokeRect(x + 1, y + 1, Math.max(cw - 2, 1), Math.max(rh - 2, 1));
    }
  }

  function tickPositions(first, last) {
    const count = last - first, wanted = 10;
    let step = 1;
    for (const s of [1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000]) { step = s; if (count / s <= wanted) break; }
    const ticks = [];
    for (let i = Math.ceil(first / step) * step; i < last; i += step) ticks.push(i);
    return ticks;
  }

  function drawAxes(p) {
    const cw = p.w / (view.c1 - view.c0), rh = p.h / (view.r1 - view.r0);
    ctx.fillStyle = "#333";
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeRect(p.x - 0.5, p.y - 0.5, p.w + 1, p.h + 1);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const c of tickPositions(view.c0, view.c1)) {
      const x = p.x + (c - view.c0 + 0.5) * cw;
      ctx.fillText(String(matrix.chunks[c]), x, p.y + p.h + 5);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const r of tickPositions(view.r0, view.r1)) {
      const y = p.y + (view.r1 - r - 0.5) * rh;
      ctx.fillText(String(matrix.ckpts[r]), p.x - 6, y);
    }
    ctx.font = "12px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    ctx.fillText("data chunk", p.x + p.w / 2, HEIGHT - 6);
    ctx.save();
    ctx.translate(14, p.y + p.h / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText("checkpoint", 0, 0);
    ctx.restore();
  }

  function drawColourBar(p) {
    const x = p.x + p.w + 16, width = 14, flipped = matrix.metrics[metric].lower_is_memorized;
    for (let i = 0; i < p.h; i++) {
      const rgb = LUT[Math.round((1 - i / Math.max(p.h - 1, 1)) * 255)];
      ctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      ctx.fillRect(x, p.y + i, width, 1);
    }
    ctx.strokeStyle = "#999";
    ctx.strokeRect(x - 0.5, p.y - 0.5, width + 1, p.h + 1);
    const [low, high] = range, top = flipped ? low : high, bottom = flipped ? high : low;
    ctx.fillStyle = "#333";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(format(top), x + width + 4, p.y);
    ctx.textBaseline = "bottom";
    ctx.fillText(format(bottom), x + width + 4, p.y + p.h);
    ctx.save();
    ctx.translate(x + width + 30, p.y + p.h / 2);
    ctx.rotate(Math.PI / 2);
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText(matrix.metrics[metric].label, 0, 0, p.h);
    ctx.restore();
  }

  function format(value) {
    if (!Number.isFinite(value)) return "–";
    return Math.abs(value) >= 1000 || Number.isInteger(value) ? String(value) : value.toPrecision(4);
  }

  // ---- positions ---------------------------------------------------------------------------------------

  function canvasPoint(event) {
    const box = canvas.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  }

  function cellAt(point) {
    const p = plot();
    if (point.x < p.x || point.y < p.y || point.x >= p.x + p.w || point.y >= p.y + p.h) return null;
    const c = view.c0 + Math.floor((point.x - p.x) / p.w * (view.c1 - view.c0));
    const r = view.r1 - 1 - Math.floor((point.y - p.y) / p.h * (view.r1 - view.r0));
    return { r, c };
  }

  function isDrag(pr) { return Math.abs(pr.x1 - pr.x0) >= DRAG_PX || Math.abs(pr.y1 - pr.y0) >= DRAG_PX; }

  function isFullView() {
    return view.c0 === 0 && view.r0 === 0 && view.c1 === matrix.chunks.length && view.r1 === matrix.ckpts.length;
  }

  // ---- interaction -------------------------------------------------------------------------------------

  // A cell's share of its chunk the checkpoint trained on: the staircase crosses the row in column order, so it is
  // the part of the row's crossing that lies in this column.
  function seenText(share) {
    if (share >= 1) return "trained on (seen)";
    if (share <= 0) return "not yet trained on (unseen)";
    return `partly trained on (seen: ${Math.round(share * 100)}% of the chunk)`;
  }

  function showTooltip(point, cell) {
    const cols = matrix.chunks.length, at = cell.r * cols + cell.c;
    const ckpt = matrix.ckpts[cell.r], chunk = matrix.chunks[cell.c];
    const lines = [[`ckpt ${ckpt} · chunk ${chunk}`, "title"],
      [seenText(Math.min(Math.max(matrix.staircase[cell.r] - cell.c, 0), 1)), "muted"]];
    if (Number.isFinite(matrix.grids.n[at])) {
      for (const column of Object.keys(matrix.metrics)) lines.push([`${LABELS[column]}: ${format(matrix.grids[column][at])}`, ""]);
      lines.push([`sequences: ${format(matrix.grids.n[at])}`, ""]);
      lines.push(["click to open the cell", "muted"]);
    } else {
      lines.push([matrix.failed.has(at) ? "failed (see Failures)" : "not landed", "muted"]);
    }
    tooltip.replaceChildren(...lines.map(([text, kind]) => {
      const div = document.createElement("div");
      div.textContent = text;
      if (kind) div.className = kind;
      return div;
    }));
    tooltip.hidden = false;
    const left = point.x + 16 + tooltip.offsetWidth > WIDTH ? point.x - 16 - tooltip.offsetWidth : point.x + 16;
    tooltip.style.left = `${left}px`;
    tooltip.style.top = `${Math.max(0, point.y - 10)}px`;
  }

  function setView(next) {
    view = next;
    resetButton.disabled = isFullView();
    const links = { json: "/api/cells", csv: "/api/cells.csv", parquet: "/api/cells.parquet" };
    const query = isFullView() ? "" : "?" + new URLSearchParams({
      ckpt_min: matrix.ckpts[view.r0], ckpt_max: matrix.ckpts[view.r1 - 1],
      chunk_min: matrix.chunks[view.c0], chunk_max: matrix.chunks[view.c1 - 1] }).toString();
    for (const [fmt, path] of Object.entries(links)) document.getElementById(`download-${fmt}`).href = path + query;
    draw();
  }

  function zoomTo(a, b) {
    const first = cellAt({ x: Math.min(a.x, b.x), y: Math.max(a.y, b.y) }) || clampCell(a, b, "low");
    const last = cellAt({ x: Math.max(a.x, b.x), y: Math.min(a.y, b.y) }) || clampCell(a, b, "high");
    setView({ c0: first.c, c1: last.c + 1, r0: first.r, r1: last.r + 1 });
  }

  // A rectangle dragged past the plot's edge is cut at that edge.
  function clampCell(a, b, end) {
    const p = plot(), inset = 0.01;
    const x = end === "low" ? Math.min(a.x, b.x) : Math.max(a.x, b.x);
    const y = end === "low" ? Math.max(a.y, b.y) : Math.min(a.y, b.y);
    return cellAt({ x: Math.min(Math.max(x, p.x + inset), p.x + p.w - inset),
      y: Math.min(Math.max(y, p.y + inset), p.y + p.h - inset) });
  }

  canvas.addEventListener("mousedown", (event) => {
    const point = canvasPoint(event);
    if (!matrix || !cellAt(point)) return;
    press = { x0: point.x, y0: point.y, x1: point.x, y1: point.y };
    event.preventDefault();
  });

  window.addEventListener("mousemove", (event) => {
    if (!matrix) return;
    const point = canvasPoint(event);
    if (press) {
      press.x1 = point.x;
      press.y1 = point.y;
      tooltip.hidden = true;
      draw();
      return;
    }
    const cell = event.target === canvas ? cellAt(point) : null;
    if (cell) showTooltip(point, cell); else tooltip.hidden = true;
    if ((cell && hovered && cell.r === hovered.r && cell.c === hovered.c) || cell === hovered) return;
    hovered = cell;
    draw();
  });

  window.addEventListener("mouseup", (event) => {
    if (!press) return;
    const done = press;
    press = null;
    if (isDrag(done)) {
      zoomTo({ x: done.x0, y: done.y0 }, { x: done.x1, y: done.y1 });
      return;
    }
    const cell = cellAt({ x: done.x0, y: done.y0 });
    draw();
    if (cell && Number.isFinite(matrix.grids.n[cell.r * matrix.chunks.length + cell.c])) {
      window.location.href = `/cell/${matrix.ckpts[cell.r]}/${matrix.chunks[cell.c]}`;
    }
  });

  canvas.addEventListener("mouseleave", () => {
    if (press) return;
    tooltip.hidden = true;
    hovered = null;
    draw();
  });

  canvas.addEventListener("wheel", (event) => {
    if (!matrix) return;
    const point = canvasPoint(event), cell = cellAt(point);
    if (!cell) return;
    event.preventDefault();
    const factor = event.deltaY < 0 ? 0.8 : 1.25;
    const zoomAxis = (low, high, at, size) => {
      const width = Math.max(1, Math.min(size, Math.round((high - low) * factor)));
      const start = Math.round(at - (at - low) * width / (high - low));
      const clamped = Math.max(0, Math.min(size - width, start));
      return [clamped, clamped + width];
    };
    const [c0, c1] = zoomAxis(view.c0, view.c1, cell.c, matrix.chunks.length);
    const [r0, r1] = zoomAxis(view.r0, view.r1, cell.r, matrix.ckpts.length);
    setView({ c0, c1, r0, r1 });
  }, { passive: false });

  resetButton.addEventListener("click", () => setView({ c0: 0, c1: matrix.chunks.length, r0: 0, r1: matrix.ckpts.length }));

  select.addEventListener("change", () => {
    metric = select.value;
    paintImage();
    draw();
    history.replaceState(null, "", "?" + new URLSearchParams({ metric }).toString());
  });

  // ---- loading -----------------------------------------------------------------------------------------

  function message(text) {
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, WIDTH, HEIGHT);
    ctx.fillStyle = "#555";
    ctx.font = "14px system-ui, sans-serif";
    ctx.fillText(text, MARGIN.left, MARGIN.top + 20);
  }

  async function load() {
    message("loading the checkpoint x chunk matrix…");
    const response = await fetch("/api/matrix");
    if (!response.ok) { message(`could not load the matrix: ${(await response.text()).slice(0, 200)}`); return; }
    const payload = await response.json();
    const cols = payload.chunks.length;
    const grids = {};
    for (const [column, base64] of Object.entries(payload.values)) grids[column] = decodeGrid(base64);
    const metrics = {};
    for (const m of payload.metrics) metrics[m.column] = m;
    const index = (ids) => new Map(ids.map((id, i) => [id, i]));
    const rowOf = index(payload.checkpoints), colOf = index(payload.chunks);
    matrix = {
      ckpts: payload.checkpoints, chunks: payload.chunks, grids, metrics,
      failed: new Set(payload.failed.filter(([c, j]) => rowOf.has(c) && colOf.has(j)).map(([c, j]) => rowOf.get(c) * cols + colOf.get(j))),
      staircase: payload.staircase,
    };
    const wanted = metric;
    if (!(metric in metrics)) metric = payload.metrics[0].column;
    paintImage();
    setView({ c0: 0, c1: cols, r0: 0, r1: payload.checkpoints.length });
    canvas.dataset.ready = "true";
    loadExposureMetrics(wanted);
  }

  // The metrics from exposure counts take one pass over every checkpoint the first time, so they load after the
  // heatmap and join the menu when they arrive (switching to one if the address asked for it).
  async function loadExposureMetrics(wanted) {
    const response = await fetch("/api/matrix/exposures");
    if (!response.ok) return;
    const payload = await response.json();
    const sameAxes = payload.checkpoints.join() === matrix.ckpts.join() && payload.chunks.join() === matrix.chunks.join();
    if (payload.metrics.length && sameAxes) {  // (cells that landed meanwhile: a reload shows them)
      for (const [column, base64] of Object.entries(payload.values)) matrix.grids[column] = decodeGrid(base64);
      for (const m of payload.metrics) {
        matrix.metrics[m.column] = m;
        const option = document.createElement("option");
        option.value = m.column;
        option.textContent = m.label;
        select.appendChild(option);
      }
      if (wanted in payload.values && wanted !== metric) {
        metric = wanted;
        select.value = wanted;
        paintImage();
        draw();
      }
    }
    canvas.dataset.exposures = "true";
  }

  // For tests and notebooks driving the page: where a cell is drawn (CSS px from the canvas's top-left corner),
  // and what is in view.
  window.memsweepHeatmap = {
    cellCenter(ckpt, chunk) {
      const r = matrix.ckpts.indexOf(ckpt), c = matrix.chunks.indexOf(chunk), p = plot();
      if (r < view.r0 || r >= view.r1 || c < view.c0 || c >= view.c1) return null;
      return { x: p.x + (c - view.c0 + 0.5) * p.w / (view.c1 - view.c0), y: p.y + (view.r1 - r - 0.5) * p.h / (view.r1 - view.r0) };
    },
    view() {
      return { ckpts: [matrix.ckpts[view.r0], matrix.ckpts[view.r1 - 1]], chunks: [matrix.chunks[view.c0], matrix.chunks[view.c1 - 1]] };
    },
  };

  load().catch((error) => message(`could not load the matrix: ${error}`));
})();
