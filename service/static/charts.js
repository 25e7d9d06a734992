/* Hand-made SVG charts for the ESNAC dashboard (no library, nothing fetched at run time). */
"use strict";

window.ESNACCharts = (() => {
  const W = 560, H = 300;
  const M = { top: 16, right: 18, bottom: 42, left: 56 };
  const PW = W - M.left - M.right, PH = H - M.top - M.bottom;

  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }

  /* About n round tick values covering [lo, hi]. */
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return { ticks: out, step };
  }

  function padRange(lo, hi, frac) {
    if (hi === lo) { const d = Math.abs(lo) * 0.05 || 0.05; return [lo - d, hi + d]; }
    const d = (hi - lo) * frac;
    return [lo - d, hi + d];
  }

  function fmtCount(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1).replace(/\.0$/, "") + "M";
    if (n >= 1e3) return (n / 1e3).toFixed(n >= 1e4 ? 0 : 1).replace(/\.0$/, "") + "k";
    return String(Math.round(n));
  }

  function frame(xTicks, yTicks, xLabel, yLabel) {
    let s = `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" xmlns="http://www.w3.org/2000/svg">`;
    s += `<g transform="translate(${M.left},${M.top})">`;
    for (const t of yTicks) {
      s += `<line class="grid" x1="0" x2="${PW}" y1="${t.p}" y2="${t.p}"/>`;
      s += `<text class="tick" x="-8" y="${t.p}" dy="0.32em" text-anchor="end">${esc(t.label)}</text>`;
    }
    for (const t of xTicks) {
      s += `<line class="grid" y1="0" y2="${PH}" x1="${t.p}" x2="${t.p}"/>`;
      s += `<text class="tick" y="${PH + 16}" x="${t.p}" text-anchor="middle">${esc(t.label)}</text>`;
    }
    s += `<rect class="plot" x="0" y="0" width="${PW}" height="${PH}"/>`;
    s += `<text class="axis-label" x="${PW / 2}" y="${PH + 34}" text-anchor="middle">${esc(xLabel)}</text>`;
    s += `<text class="axis-label" transform="translate(${-44},${PH / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`;
    return s;
  }

  function empty(text) {
    return `<div class="chart-empty">${esc(text)}</div>`;
  }

  /* Best reward so far (step line) and every finished trial's reward (dots), against the
     number of finished trials.  points: [{n, reward, best, id}] in finishing order. */
  function bestSoFar(points) {
    if (!points.length) return empty("No finished trials yet");
    const ys = points.map((p) => p.reward).concat(points.map((p) => p.best));
    const [ylo, yhi] = padRange(Math.min(...ys), Math.max(...ys), 0.08);
    const xhi = Math.max(points.length, 2);
    const X = (n) => ((n - 1) / (xhi - 1)) * PW;
    const Y = (v) => PH - ((v - ylo) / (yhi - ylo)) * PH;
    const xt = niceTicks(1, xhi, 6).ticks.filter((v) => v >= 1 && Number.isInteger(v));
    const yt = niceTicks(ylo, yhi, 5);
    const digits = Math.max(0, -Math.floor(Math.log10(yt.step)));
    let s = frame(
      xt.map((v) => ({ p: X(v), label: String(v) })),
      yt.ticks.filter((v) => v >= ylo && v <= yhi).map((v) => ({ p: Y(v), label: v.toFixed(digits) })),
      "finished trials", "reward",
    );
    let d = "";
    points.forEach((p, i) => {
      const x = X(p.n), y = Y(p.best);
      d += i === 0 ? `M${x},${y}` : `H${x}V${y}`;
    });
    d += `H${X(points.length)}`;
    s += `<path class="best-line" d="${d}"/>`;
    for (const p of points) {
      const cls = p.reward === p.best ? "dot dot-best" : "dot";
      s += `<circle class="${cls}" cx="${X(p.n)}" cy="${Y(p.reward)}" r="3.5">` +
        `<title>trial ${p.id}: reward ${p.reward.toFixed(4)} (best so far ${p.best.toFixed(4)})</title></circle>`;
    }
    s += `</g></svg>`;
    return s;
  }

  /* Pareto front of (params, accuracy): fewer parameters and higher accuracy are better. */
  function paretoFront(points) {
    const sorted = points.slice().sort((a, b) => a.x - b.x || b.y - a.y);
    const front = [];
    let best = -Infinity;
    for (const p of sorted) {
      if (p.y > best) { front.push(p); best = p.y; }
    }
    return front;
  }

  /* The x-axes the accuracy scatter can use: a label and how one value is written. */
  const fmtMs = (v) => (v >= 10 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toPrecision(2)) + " ms";
  const AXES = {
    params: { label: "parameters (log scale)", unit: "params", fmt: fmtCount },
    flops: { label: "FLOPs (log scale)", unit: "FLOPs", fmt: fmtCount },
    latency: { label: "measured latency (log scale)", unit: "latency", fmt: fmtMs },
  };

  /* Accuracy vs size (log scale: parameters, FLOPs or measured latency), coloured by reward,
     Pareto front drawn, teacher marked.
     points: [{x, y: accuracy, reward, id}]; teacher: {x, y, label} or null; axis: AXES key. */
  function scatter(points, teacher, axis = "params") {
    const ax = AXES[axis];
    const fmt = ax.fmt;
    const lg = (v) => Math.log10(Math.max(1e-6, v));
    if (!points.length) return empty("No evaluated students yet");
    const all = points.concat(teacher ? [teacher] : []);
    const lx = all.map((p) => lg(p.x));
    let [xlo, xhi] = padRange(Math.min(...lx), Math.max(...lx), 0.06);
    const ys = all.map((p) => p.y);
    const [ylo, yhi] = padRange(Math.min(...ys), Math.max(...ys), 0.08);
    const X = (v) => ((lg(v) - xlo) / (xhi - xlo)) * PW;
    const Y = (v) => PH - ((v - ylo) / (yhi - ylo)) * PH;
    const xTicks = [];
    for (let e = Math.floor(xlo); e <= Math.ceil(xhi); e++) {
      for (const m of [1, 2, 5]) {
        const v = m * Math.pow(10, e);
        const l = Math.log10(v);
        if (l >= xlo && l <= xhi) xTicks.push({ p: X(v), label: fmt(v) });
      }
    }
    const yt = niceTicks(ylo * 100, yhi * 100, 5);
    const digits = Math.max(0, -Math.floor(Math.log10(yt.step)));
    let s = frame(
      xTicks,
      yt.ticks.filter((v) => v >= ylo * 100 && v <= yhi * 100)
        .map((v) => ({ p: Y(v / 100), label: v.toFixed(digits) + "%" })),
      ax.label, "accuracy",
    );
    const front = paretoFront(points);
    if (front.length > 1) {
      let d = "";
      front.forEach((p, i) => { d += (i ? "L" : "M") + X(p.x) + "," + Y(p.y); });
      s += `<path class="pareto-line" d="${d}"/>`;
    }
    const rs = points.map((p) => p.reward);
    const rlo = Math.min(...rs), rhi = Math.max(...rs);
    const onFront = new Set(front.map((p) => p.id));
    for (const p of points) {
      const t = rhi > rlo ? (p.reward - rlo) / (rhi - rlo) : 1;
      const hue = 210 - 180 * t;  // blue (low reward) -> orange (high)
      const cls = onFront.has(p.id) ? "pt pt-front" : "pt";
      s += `<circle class="${cls}" cx="${X(p.x)}" cy="${Y(p.y)}" r="${onFront.has(p.id) ? 5 : 4}" ` +
        `style="fill:hsl(${hue},75%,52%)"><title>trial ${p.id}: ${fmt(p.x)} ${ax.unit}, ` +
        `accuracy ${(100 * p.y).toFixed(2)}%, reward ${p.reward.toFixed(4)}` +
        `${onFront.has(p.id) ? " (Pareto front)" : ""}</title></circle>`;
    }
    if (teacher) {
      const x = X(teacher.x), y = Y(teacher.y), r = 7;
      s += `<path class="teacher-mark" d="M${x},${y - r}L${x + r},${y}L${x},${y + r}L${x - r},${y}Z">` +
        `<title>${esc(teacher.label)}: ${fmt(teacher.x)} ${ax.unit}, accuracy ` +
        `${(100 * teacher.y).toFixed(2)}%</title></path>`;
      const anchor = x > PW - 80 ? "end" : "start";
      const dx = anchor === "end" ? -10 : 10;
      // above the mark, or below it when the mark is at the top edge of the plot
      const ty = y - 8 < 12 ? y + 18 : y - 8;
      s += `<text class="teacher-label" x="${x + dx}" y="${ty}" text-anchor="${anchor}">teacher</text>`;
    }
    s += `</g></svg>`;
    return s;
  }

  return { bestSoFar, scatter, paretoFront, niceTicks, fmtCount, fmtMs, AXES };
})();
