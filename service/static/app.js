/* ESNAC dashboard: job list and live job pages, polling the REST API v1 incrementally. */
"use strict";

(() => {
  const POLL_MS = 2000;          // job page: trials are fetched incrementally this often
  const LIST_POLL_MS = 4000;     // job list refresh
  const PAGE_SIZE = 100;         // trial table rows per page
  const FETCH_LIMIT = 500;       // trials per API page while catching up
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const view = document.getElementById("view");
  const conn = document.getElementById("conn");
  const charts = window.ESNACCharts;
  let current = null;            // the active page controller (stopped on navigation)

  window.__esnac = { polls: 0, trials: 0 };  // read by the browser test

  // ------------------------------------------------------------------ helpers
  function esc(s) {
    return String(s ?? "").replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }
  const pct = (x) => (x == null ? "–" : (100 * x).toFixed(2) + "%");
  const num = (x, d = 4) => (x == null ? "–" : Number(x).toFixed(d));
  const count = (n) => (n == null ? "–" : charts.fmtCount(n));

  function duration(sec) {
    if (sec == null || !isFinite(sec)) return "–";
    if (sec < 60) return sec.toFixed(1) + " s";
    const m = Math.floor(sec / 60), s = Math.round(sec % 60);
    if (m < 60) return `${m}m ${String(s).padStart(2, "0")}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
  }
  function age(stamp) {
    if (!stamp) return "–";
    const sec = Math.max(0, (Date.now() - ts(stamp)) / 1000);
    if (sec < 60) return "just now";
    if (sec < 3600) return Math.floor(sec / 60) + " min ago";
    if (sec < 86400) return Math.floor(sec / 3600) + " h ago";
    return Math.floor(sec / 86400) + " d ago";
  }
  /* Server timestamps are UTC, possibly without a zone suffix. */
  const ts = (x) => Date.parse(/[zZ]|[+-]\d\d:\d\d$/.test(x) ? x : x + "Z");
  function trialSeconds(t) {
    if (t.seconds && t.seconds.total != null) return t.seconds.total;
    if (t.started_at && t.finished_at) return (ts(t.finished_at) - ts(t.started_at)) / 1000;
    if (t.status === "running" && t.started_at) return (Date.now() - ts(t.started_at)) / 1000;
    return null;
  }
  const badge = (status) => `<span class="badge badge-${esc(status)}">${esc(status)}</span>`;

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, opts = {}) {
    let res;
    try {
      res = await fetch(path, opts);
    } catch (e) {
      setConn(false, "server unreachable");
      throw new ApiError(0, "the server is unreachable");
    }
    setConn(true);
    if (!res.ok) {
      let msg = res.statusText;
      try {
        const body = await res.json();
        const d = body.detail ?? body;
        msg = typeof d === "string" ? d
          : Array.isArray(d) ? d.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ")
          : JSON.stringify(d);
      } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, msg);
    }
    return res.json();
  }

  function setConn(ok, text) {
    conn.className = "conn " + (ok ? "conn-ok" : "conn-bad");
    conn.textContent = ok ? "live" : text || "offline";
  }

  /* The cluster in the header: Ray nodes and trial workers, from /readyz (every 5 s). */
  async function clusterTick() {
    const el = document.getElementById("cluster");
    try {
      const res = await fetch("readyz", { headers: { Accept: "application/json" } });
      const r = await res.json();
      el.textContent = r.nodes ? `${r.nodes} node${r.nodes === "1" ? "" : "s"} · ${r.workers} workers${r.waiting ? " · waiting for capacity" : ""}` : "";
      el.title = Object.entries(r).map(([k, v]) => `${k}: ${v}`).join("\n");
    } catch (_) { el.textContent = ""; }
  }

  /* Run `tick` now and then every `ms` (no overlap); stop() cancels. */
  function poller(tick, ms) {
    let timer = null, stopped = false;
    const loop = async () => {
      if (stopped) return;
      let again = true;
      try { again = (await tick()) !== false; } catch (e) { console.error(e); }
      if (!stopped && again) timer = setTimeout(loop, ms);
    };
    loop();
    return { stop() { stopped = true; clearTimeout(timer); } };
  }

  // ------------------------------------------------------------------ job list
  function jobListPage() {
    view.innerHTML = `
      <section class="card">
        <div class="card-head"><h2>Jobs</h2>
          <label class="filter">status
            <select id="status-filter">
              <option value="">all</option><option>queued</option><option>running</option>
              <option>finalizing</option><option>succeeded</option><option>failed</option>
              <option>cancelled</option>
            </select></label></div>
        <table class="grid-table" id="jobs">
          <thead><tr><th>job</th><th>status</th><th>teacher</th><th>strategy</th>
            <th class="progress-col">progress</th><th class="num">best reward</th>
            <th class="num">created</th></tr></thead>
          <tbody id="job-rows"><tr><td colspan="7" class="muted">loading…</td></tr></tbody>
        </table>
        <div class="pager"><button id="more" hidden>load older jobs</button></div>
      </section>
      <section class="card">
        <div class="card-head"><h2>Teachers</h2></div>
        <table class="grid-table" id="teachers">
          <thead><tr><th>id</th><th>arch</th><th>dataset</th><th>status</th>
            <th class="num">params</th><th class="num">accuracy</th><th class="num">created</th></tr></thead>
          <tbody id="teacher-rows"></tbody>
        </table>
      </section>`;
    const filter = document.getElementById("status-filter");
    const more = document.getElementById("more");
    let extra = [], cursor = null, teachers = new Map();

    async function tick() {
      const status = filter.value;
      const q = `limit=50${status ? "&status=" + encodeURIComponent(status) : ""}`;
      const [page, ts] = await Promise.all([api(`/v1/jobs?${q}`), api("/v1/teachers")]);
      teachers = new Map(ts.map((t) => [t.id, t]));
      if (cursor === null) cursor = page.next_cursor;
      more.hidden = !cursor;
      const seen = new Set(page.items.map((j) => j.id));
      renderJobs(page.items.concat(extra.filter((j) => !seen.has(j.id))));
      renderTeachers(ts);
      window.__esnac.polls++;
    }
    function renderJobs(jobs) {
      const rows = jobs.map((j) => {
        const p = j.progress, done = p.succeeded + p.failed;
        const t = teachers.get(j.teacher_id);
        const frac = p.total ? Math.min(1, done / p.total) : 0;
        return `<tr data-job-id="${j.id}" class="clickable" onclick="location.hash='#/jobs/${j.id}'">
          <td><a href="#/jobs/${j.id}">#${j.id}</a></td><td>${badge(j.status)}</td>
          <td>${t ? esc(t.arch) + ` <span class="muted">(${esc(t.dataset)})</span>` : "#" + j.teacher_id}</td>
          <td>${esc(j.strategy)}</td>
          <td><div class="bar"><div style="width:${(100 * frac).toFixed(1)}%"></div></div>
            <span class="muted small">${done} / ${p.total}${p.failed ? `, ${p.failed} failed` : ""}</span></td>
          <td class="num">${j.best_trial ? num(j.best_trial.reward) : "–"}</td>
          <td class="num" title="${esc(j.created_at)}">${age(j.created_at)}</td></tr>`;
      });
      document.getElementById("job-rows").innerHTML = rows.join("") ||
        `<tr><td colspan="7" class="muted">No jobs yet. Submit one with <code>esnac submit</code> or <code>POST /v1/jobs</code>.</td></tr>`;
    }
    function renderTeachers(ts) {
      document.getElementById("teacher-rows").innerHTML = ts.slice().reverse().map((t) => `
        <tr><td>#${t.id}</td><td>${esc(t.arch)}</td><td>${esc(t.dataset)}</td>
        <td>${badge(t.status)}${t.status === "training" && t.progress && t.progress.epochs
          ? ` <span class="small muted">epoch ${t.progress.epoch}/${t.progress.epochs}` +
            (t.progress.val_accuracy == null ? "" : ` · val ${pct(t.progress.val_accuracy)}`) + "</span>"
          : ""}${t.error ? ` <span class="error small">${esc(t.error)}</span>` : ""}</td>
        <td class="num">${count(t.params)}</td><td class="num">${pct(t.accuracy)}</td>
        <td class="num">${age(t.created_at)}</td></tr>`).join("") ||
        `<tr><td colspan="7" class="muted">No teachers yet.</td></tr>`;
    }
    more.onclick = async () => {
      const status = filter.value;
      const page = await api(`/v1/jobs?limit=50&cursor=${encodeURIComponent(cursor)}` +
        (status ? "&status=" + encodeURIComponent(status) : ""));
      extra = extra.concat(page.items);
      cursor = page.next_cursor;
      more.hidden = !cursor;
      await tick();
    };
    filter.onchange = () => { extra = []; cursor = null; tick(); };
    return poller(tick, LIST_POLL_MS);
  }

  // ------------------------------------------------------------------ job page
  const COLUMNS = [
    // Trial ids (not the job-local `number`) everywhere: they are what the API and CLI take.
    ["number", "trial", (t) => t.number, (t) => t.id],
    ["status", "status", (t) => t.status, (t) => badge(t.status) + trialProgress(t)],
    ["step", "step", (t) => t.step, (t) => (t.step == null ? "–" : t.step), "num"],
    ["kernel", "kernel", (t) => t.kernel, (t) => (t.tag
      ? `<span class="seed" title="a seed of the budget: ${esc(t.tag)}">${esc(t.tag)}</span>`
      : t.kernel == null ? "–" : t.kernel), "num"],
    ["params", "params", (t) => t.params, (t) => count(t.params), "num"],
    ["flops", "FLOPs", (t) => t.flops, (t) => count(t.flops), "num"],
    ["latency_ms", "latency", (t) => t.latency_ms,
      (t) => (t.latency_ms == null ? "–" : charts.fmtMs(t.latency_ms)), "num"],
    ["accuracy", "accuracy", (t) => t.accuracy, (t) => pct(t.accuracy), "num"],
    ["compression", "C", (t) => t.compression, (t) => num(t.compression), "num"],
    ["reward", "reward", (t) => t.reward, (t) => num(t.reward), "num"],
    ["seconds", "duration", trialSeconds,
      (t) => duration(trialSeconds(t)) + (t.status === "running" ? "…" : ""), "num"],
    ["worker", "worker", (t) => t.worker, (t) => esc(t.worker || "–")],
    ["attempts", "attempts", (t) => t.attempts, (t) => t.attempts, "num"],
    ["error", "error", (t) => t.error, (t) => (t.error
      ? `<span class="error" title="${esc(t.error)}">${esc(t.error_code || "")} ${esc(t.error)}</span>` : "")],
  ];

  // What a job's reward measures, in words.
  function rewardText(job) {
    const lat = job.latency;
    const target = lat ? ` (${esc(lat.backend)}, batch ${lat.batch}, ${lat.threads} thread${lat.threads > 1 ? "s" : ""})` : "";
    if (job.reward === "latency_target") return `reward: accuracy within ${lat.target_ms} ms${target}`;
    if (job.reward === "latency") return `reward on measured latency${target}`;
    if (job.target) return `reward: accuracy within ${budgetText(job.target)}${lat ? ` · latency measured${target}` : ""}`;
    return `reward on ${esc(job.reward)}${lat ? ` · latency measured${target}` : ""}`;
  }

  // A size budget in words: "54.5k params (5× smaller)".
  function budgetText(target) {
    const times = target.times_smaller ? ` (${target.times_smaller}× smaller)` : "";
    return `${count(Math.floor(target.value))} ${esc(target.measure)}${times}`;
  }

  // Whether a student meets the job's size budget (true without one).
  function withinBudget(job, t) {
    if (!job.target) return true;
    const size = t[job.target.measure];
    return size != null && size <= job.target.value;
  }

  // A running trial's epochs as a bar, with its last validation accuracy (from the heartbeat).
  function trialProgress(t) {
    const p = t.progress;
    if (t.status !== "running" || !p || !p.epochs) return "";
    const frac = Math.min(1, p.epoch / p.epochs);
    const acc = p.val_accuracy == null ? "" : ` · val ${pct(p.val_accuracy)}`;
    return `<div class="trial-progress" title="epoch ${p.epoch} of ${p.epochs}${acc}">
      <div class="bar"><div style="width:${(100 * frac).toFixed(1)}%"></div></div>
      <span class="small muted">epoch ${p.epoch}/${p.epochs}${acc}</span></div>`;
  }

  function jobPage(jobId) {
    view.innerHTML = `
      <div class="crumbs"><a href="#/">Jobs</a> / job #${jobId}</div>
      <section class="card" id="job-head"><div class="muted">loading…</div></section>
      <div class="two-col">
        <section class="card"><div class="card-head"><h2>Best reward so far</h2></div>
          <div id="chart-best" class="chart-box"></div></section>
        <section class="card"><div class="card-head"><h2>Accuracy vs
          <select id="scatter-x" title="x-axis"><option value="params">parameters</option>
            <option value="flops">FLOPs</option>
            <option value="latency" disabled title="not measured: give the job a latency target">latency</option></select></h2>
          <span class="legend"><i class="lg-front"></i>Pareto front <i class="lg-teacher"></i>teacher
          <i class="lg-reward"></i>colour: reward, low → high</span></div>
          <div id="chart-scatter" class="chart-box"></div></section>
      </div>
      <section class="card" id="topk-card" hidden><div class="card-head"><h2>Fully trained students</h2></div>
        <div id="topk"></div></section>
      <section class="card">
        <div class="card-head"><h2>Trials <span id="trial-count" class="muted"></span></h2>
          <label class="filter">show
            <select id="trial-filter"><option value="">all</option><option>running</option>
              <option>pending</option><option>succeeded</option><option>failed</option></select></label></div>
        <div class="table-wrap"><table class="grid-table trials" id="trials">
          <thead><tr>${COLUMNS.map(([k, label, , , cls]) =>
            `<th data-key="${k}" class="sortable ${cls || ""}">${label}</th>`).join("")}</tr></thead>
          <tbody id="trial-rows"></tbody></table></div>
        <div class="pager" id="trial-pager"></div>
      </section>`;

    const trials = new Map();
    let cursor = null, job = null, teacher = null, page = 0, finishedPolls = 0, dirty = true;
    let sort = { key: "number", dir: -1 };
    const filter = document.getElementById("trial-filter");
    const axisSelect = document.getElementById("scatter-x");
    axisSelect.addEventListener("change", () => renderCharts());

    async function tick() {
      job = await api(`/v1/jobs/${jobId}`);
      if (!teacher || teacher.status === "training") teacher = await api(`/v1/teachers/${job.teacher_id}`);
      let more = true;
      while (more) {
        const q = `limit=${FETCH_LIMIT}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");
        const res = await api(`/v1/jobs/${jobId}/trials?${q}`);
        for (const t of res.items) { trials.set(t.id, t); dirty = true; }
        cursor = res.next_cursor || cursor;
        more = res.has_more && res.items.length > 0;
      }
      window.__esnac.polls++;
      window.__esnac.trials = trials.size;
      renderHead();
      if (dirty) { renderCharts(); renderTable(); renderTopK(); dirty = false; }
      else if (job.progress.running > 0) renderTable();  // running durations tick
      if (TERMINAL.has(job.status)) finishedPolls++;
      return finishedPolls < 2;  // one more poll after the end picks up the last writes
    }

    function renderHead() {
      const p = job.progress, done = p.succeeded + p.failed;
      const frac = p.total ? Math.min(1, done / p.total) : 0;
      const s = job.search, f = job.full_training;
      const canCancel = !TERMINAL.has(job.status);
      const best = job.best_trial;
      document.getElementById("job-head").innerHTML = `
        <div class="card-head"><h2>Job #${job.id} ${badge(job.status)}</h2>
          ${canCancel ? `<button id="cancel" class="danger">Cancel job</button>` : ""}</div>
        ${job.error ? `<div class="error block">${esc(job.error)}</div>` : ""}
        ${job.waiting ? `<div class="waiting block">${esc(job.waiting)}</div>` : ""}
        <div class="summary">
          <div class="stat"><span class="label">teacher</span>
            <span class="value">${esc(teacher.name || teacher.arch)} <span class="muted">${teacher.name ? `${esc(teacher.arch)} ` : ""}#${teacher.id}</span></span>
            <span class="sub">${esc(teacher.dataset)} · ${count(teacher.params)} params · ${pct(teacher.accuracy)}</span></div>
          <div class="stat"><span class="label">search</span>
            <span class="value">${esc(job.strategy)}</span>
            <span class="sub">${job.steps} steps × ${job.per_step} · ${s.epochs} epoch${s.epochs > 1 ? "s" : ""} KD · ${rewardText(job)}</span></div>
          <div class="stat"><span class="label">progress</span>
            <span class="value">${done} / ${p.total}</span>
            <span class="sub">${p.running} running · ${p.pending} pending · ${p.failed} failed</span></div>
          <div class="stat"><span class="label">best reward</span>
            <span class="value">${best ? num(best.reward) : "–"}</span>
            <span class="sub">${best ? `trial ${best.id} · ${count(best.params)} params · ${pct(best.accuracy)}` : "no finished trial yet"}</span></div>
          <div class="stat"><span class="label">full training</span>
            <span class="value">${p.finalized} / ${job.top_k}</span>
            <span class="sub">top ${job.top_k} · ${f.epochs} epoch${f.epochs > 1 ? "s" : ""}</span></div>
          <div class="stat"><span class="label">time</span>
            <span class="value">${duration(((job.finished_at ? ts(job.finished_at) : Date.now()) - ts(job.created_at)) / 1000)}</span>
            <span class="sub">created ${age(job.created_at)}</span></div>
        </div>
        <div class="bar big"><div style="width:${(100 * frac).toFixed(1)}%"></div></div>`;
      const btn = document.getElementById("cancel");
      if (btn) btn.onclick = cancel;
    }

    async function cancel() {
      let token = sessionStorage.getItem("esnac-token");
      if (!token) {
        token = prompt("API token (ESNAC_API_TOKEN) to cancel this job:");
        if (token === null) return;
      }
      try {
        await api(`/v1/jobs/${jobId}/cancel`, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
        sessionStorage.setItem("esnac-token", token);
        finishedPolls = 0;
        await tick();
      } catch (e) {
        if (e.status === 401) sessionStorage.removeItem("esnac-token");
        alert(`Could not cancel: ${e.message}`);
      }
    }

    function renderCharts() {
      const done = [...trials.values()].filter((t) => t.status === "succeeded" && t.reward != null);
      const byFinish = done.slice().sort((a, b) =>
        (a.finished_at || "").localeCompare(b.finished_at || "") || a.number - b.number);
      let best = -Infinity;
      const line = byFinish.map((t, i) => {
        best = Math.max(best, t.reward);
        return { n: i + 1, reward: t.reward, best, id: t.id };
      });
      document.getElementById("chart-best").innerHTML = charts.bestSoFar(line);
      // x: parameters, FLOPs or the measured latency (offered once a trial has one)
      const measured = done.filter((t) => t.latency_ms != null);
      const latencyOption = axisSelect.querySelector("option[value=latency]");
      latencyOption.disabled = measured.length === 0;
      const axis = axisSelect.value;
      const key = { params: "params", flops: "flops", latency: "latency_ms" }[axis];
      const pts = done.filter((t) => t[key] != null && t.accuracy != null)
        .map((t) => ({ x: t[key], y: t.accuracy, reward: t.reward, id: t.id }));
      // the teacher: its parameters; its latency is the median of the workers' measurements
      // of it; its FLOPs are not recorded, so that axis has no teacher mark
      let tx = null;
      if (axis === "params" && teacher) tx = teacher.params;
      if (axis === "latency" && measured.length) {
        const ts = measured.map((t) => t.teacher_latency_ms).sort((a, b) => a - b);
        const mid = Math.floor(ts.length / 2);
        tx = ts.length % 2 ? ts[mid] : (ts[mid - 1] + ts[mid]) / 2;
      }
      const tmark = teacher && teacher.accuracy != null && tx != null
        ? { x: tx, y: teacher.accuracy, label: `teacher ${teacher.name || teacher.arch}` } : null;
      document.getElementById("chart-scatter").innerHTML = charts.scatter(pts, tmark, axis);
    }

    function sortedTrials() {
      const col = COLUMNS.find((c) => c[0] === sort.key);
      const want = filter.value;
      const rows = [...trials.values()].filter((t) => !want || t.status === want);
      rows.sort((a, b) => {
        const va = col[2](a), vb = col[2](b);
        if (va == null && vb == null) return a.number - b.number;
        if (va == null) return 1;
        if (vb == null) return -1;
        return (va < vb ? -1 : va > vb ? 1 : 0) * sort.dir || a.number - b.number;
      });
      return rows;
    }

    function renderTable() {
      const rows = sortedTrials();
      const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
      page = Math.min(page, pages - 1);
      const slice = rows.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
      const tbody = document.getElementById("trial-rows");
      // no latency column when the job measures none (it would be all dashes)
      const measured = (job && job.latency) || [...trials.values()].some((t) => t.latency_ms != null);
      document.getElementById("trials").classList.toggle("no-latency", !measured);
      tbody.innerHTML = slice.map((t) => `<tr data-trial-id="${t.id}" class="st-${esc(t.status)}${t.final ? " final" : ""}">` +
        COLUMNS.map(([k, , , render, cls]) => `<td data-col="${k}"${cls ? ` class="${cls}"` : ""}>${render(t)}</td>`).join("") +
        `</tr>`).join("") || `<tr><td colspan="${COLUMNS.length}" class="muted">No trials yet — the searcher is proposing candidates…</td></tr>`;
      const c = [...trials.values()].reduce((acc, t) => (acc[t.status] = (acc[t.status] || 0) + 1, acc), {});
      document.getElementById("trial-count").textContent =
        `${trials.size} · ${c.succeeded || 0} succeeded · ${c.running || 0} running · ${c.failed || 0} failed`;
      for (const th of document.querySelectorAll("#trials th")) {
        th.classList.toggle("sorted-asc", th.dataset.key === sort.key && sort.dir > 0);
        th.classList.toggle("sorted-desc", th.dataset.key === sort.key && sort.dir < 0);
      }
      const pager = document.getElementById("trial-pager");
      pager.innerHTML = pages > 1 ? `<button data-p="-1" ${page === 0 ? "disabled" : ""}>‹ newer</button>
        <span class="muted">page ${page + 1} of ${pages}</span>
        <button data-p="1" ${page >= pages - 1 ? "disabled" : ""}>older ›</button>` : "";
      for (const b of pager.querySelectorAll("button")) {
        b.onclick = () => { page += Number(b.dataset.p); renderTable(); };
      }
    }

    function renderTopK() {
      const finals = [...trials.values()].filter((t) => t.final)
        .sort((a, b) => (b.reward ?? 0) - (a.reward ?? 0));
      const card = document.getElementById("topk-card");
      card.hidden = finals.length === 0 && job.top_k === 0;
      if (card.hidden) return;
      document.getElementById("topk").innerHTML = finals.length ? `<table class="grid-table">
        <thead><tr><th>trial</th><th class="num">params</th><th class="num">times smaller</th>
          <th class="num">search acc.</th><th class="num">final acc.</th><th class="num">reward</th>
          ${job.target ? "<th>budget</th>" : ""}
          <th>download</th></tr></thead><tbody>${finals.map((t) => `<tr data-final-id="${t.id}">
          <td>${t.id}${t.tag ? ` <span class="seed">${esc(t.tag)}</span>` : ""}</td><td class="num">${count(t.final.params)}</td>
          <td class="num">${teacher ? (teacher.params / t.final.params).toFixed(2) + "×" : "–"}</td>
          <td class="num">${pct(t.accuracy)}</td><td class="num"><b>${pct(t.final.accuracy)}</b></td>
          <td class="num">${num(t.reward)}${t.finish ? ` <span class="sub" title="the finishing evaluation: ${t.finish.epochs} more epochs on every image">(finish ${num(t.finish.reward)})</span>` : ""}</td>
          ${job.target ? `<td class="budget">${withinBudget(job, t) ? "meets" : "over"}</td>` : ""}
          <td><a class="dl" href="/v1/trials/${t.id}/weights" download="trial-${t.id}.safetensors">weights</a>
            ${t.final.has_onnx ? `<a class="dl" href="/v1/trials/${t.id}/onnx" download="trial-${t.id}.onnx">ONNX</a>` : ""}</td>
          </tr>`).join("")}</tbody></table>`
        : `<div class="muted">The best ${job.top_k} student${job.top_k > 1 ? "s are" : " is"} fully trained after the search.</div>`;
    }

    for (const th of view.querySelectorAll("#trials th")) {
      th.onclick = () => {
        sort = th.dataset.key === sort.key ? { key: sort.key, dir: -sort.dir }
          : { key: th.dataset.key, dir: ["number", "reward", "accuracy", "compression"].includes(th.dataset.key) ? -1 : 1 };
        renderTable();
      };
    }
    filter.onchange = () => { page = 0; renderTable(); };

    return poller(async () => {
      try { return await tick(); } catch (e) {
        if (e.status === 404) {
          view.innerHTML = `<div class="crumbs"><a href="#/">Jobs</a></div><section class="card"><div class="error block">Job #${jobId}: ${esc(e.message)}</div></section>`;
          return false;
        }
        throw e;
      }
    }, POLL_MS);
  }

  // ------------------------------------------------------------------ router
  function route() {
    if (current) current.stop();
    const m = location.hash.match(/^#\/jobs\/(\d+)/);
    current = m ? jobPage(Number(m[1])) : jobListPage();
  }
  window.addEventListener("hashchange", route);
  route();
  poller(clusterTick, 5000);
})();
