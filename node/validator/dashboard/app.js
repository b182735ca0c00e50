// The dashboard: one page over the validator's public API, refreshed every few seconds; no build step.
// Routes: #/ (overview), #/worker/0x… (a worker's jobs, verdicts, rewards, slashes, claimable amount),
// #/job/0x… (a job's stages and verdict), #/tasks (every task's samples and pass rate per model),
// #/tx/0x… (a transaction on a chain with no known explorer).
"use strict";

const API = "v1/";
const PAGE = 10;
const REFRESH_MS = 5000;
const offsets = {};     // list id -> offset, kept across refreshes
const renderers = {};   // list id -> () => Promise, to redraw one list when its pager moves
const sizes = {};       // list id -> rows a page
const charts = {};
let chain = null;

class HttpError extends Error {
  constructor(path, status) { super(`${path}: HTTP ${status}`); this.status = status; }
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new HttpError(path, response.status);
  return response.json();
}

function el(id) { return document.getElementById(id); }

async function show(id, render) {
  try {
    await render();
  } catch (error) {
    const target = el(id);
    if (target) target.innerHTML = `<p class="muted">could not load ${esc(id)}: ${esc(error.message)}</p>`;
  }
}

// A list with a pager: `url` answers {items, total?}; `columns` as format.js `table` takes them.
function paged(id, url, columns, emptyText, size = PAGE) {
  sizes[id] = size;
  renderers[id] = async () => {
    const offset = offsets[id] || 0;
    const data = await getJSON(`${url}${url.includes("?") ? "&" : "?"}limit=${size + 1}&offset=${offset}`);
    const rows = data.items.slice(0, size);
    const total = typeof data.total === "number" ? data.total : null;
    const more = total !== null ? offset + size < total : data.items.length > size;
    const range = rows.length ? `${offset + 1}–${offset + rows.length}${total !== null ? ` of ${total}` : ""}` : "";
    const pager = offset > 0 || more
      ? `<nav class="pager" data-for="${id}"><button data-step="-1" ${offset > 0 ? "" : "disabled"}>← previous</button>` +
        `<span>${range}</span><button data-step="1" ${more ? "" : "disabled"}>next →</button></nav>`
      : (total ? `<nav class="pager"><span>${range}</span></nav>` : "");
    el(id).innerHTML = table(rows, columns, emptyText) + pager;
  };
  return show(id, renderers[id]);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest(".pager button");
  if (!button) return;
  const id = button.parentElement.dataset.for;
  offsets[id] = Math.max(0, (offsets[id] || 0) + Number(button.dataset.step) * (sizes[id] || PAGE));
  show(id, renderers[id]);
});

function why(data, fallback) {
  // The verifier's one line: which chunk failed and by how much (the evidence figures' `reason`).
  const figures = (data && data.figures) || {};
  return figures.reason || (data && data.reason) || fallback || "";
}

// ------------------------------------------------------------------------------------------------ overview

async function renderChain() {
  const health = await getJSON("health").catch((error) => ({ status: `unreachable (${error.message})`, chain: {} }));
  chain = health.chain || {};
  chainId = chain.chain_id ?? null;
  el("chain").classList.remove("muted");
  el("chain").innerHTML =
    `<dt>validator</dt><dd>${esc(health.status)}${health.validator ? " · " + workerLink(health.validator) : ""}</dd>` +
    `<dt>chain id</dt><dd id="chain-id">${esc(chain.chain_id ?? "—")}</dd>` +
    `<dt>staking contract</dt><dd id="contract" class="addr" title="${esc(chain.staking_contract)}">${esc(chain.staking_contract ?? "—")}</dd>` +
    `<dt>min stake</dt><dd>${etherCell(chain.min_stake_wei ?? health.min_stake_wei)}</dd>` +
    `<dt>queue</dt><dd>${esc(health.queue_depth ?? "—")} waiting</dd>`;
}

async function renderProgress() {
  let progress;
  try {
    progress = await getJSON(API + "orchestrator/progress");
  } catch (error) {
    if (error.status !== 404) throw error;
    el("progress").innerHTML = '<p class="muted">this validator does not orchestrate workers (it validates bundles only)</p>';
    return;
  }
  if (!progress.tasks_total && !progress.jobs) {
    el("progress").innerHTML = '<p class="muted">no task dispatch has run yet</p>';
    return;
  }
  const card = (label, value, note = "") => `<div class="card"><span>${esc(label)}</span><strong>${value}</strong><small>${note}</small></div>`;
  el("progress").innerHTML =
    card("tasks done", `${progress.tasks_done} / ${progress.tasks_total}`, progress.running ? "running" : "finished") +
    card("tokens/s", esc(progress.tokens_per_s), `${progress.tokens} tokens in ${progress.elapsed_s}s`) +
    card("reroutes", esc(progress.reroutes), `over ${progress.jobs} pipeline jobs`) +
    card("correct", progress.accuracy === null ? "—" : `${Math.round(progress.accuracy * 100)}%`, `${progress.correct} of ${progress.checked} checked`) +
    card("failed", esc(progress.tasks_failed), "tasks");
}

// Buckets with nothing in them are not in the series: put them back as zeros, from at least 30 buckets ago to now,
// so a quiet minute shows as one and the time axis moves on while nothing happens.
function densify(items, bucketS) {
  const step = bucketS * 1000;
  const now = Math.floor(Date.now() / step) * step;
  const byStart = new Map(items.map((b) => [b.start_ms, b]));
  const first = Math.min(items.length ? items[0].start_ms : now, now - 29 * step);
  const last = Math.max(items.length ? items[items.length - 1].start_ms : now, now);
  const out = [];
  for (let t = Math.max(first, last - 999 * step); t <= last; t += step) {
    out.push(byStart.get(t) || { start_ms: t, tokens_per_s: 0, rewards_wei: "0", slashes: 0 });
  }
  return out;
}

function compact(value) {
  if (value === 0) return "0";
  const abs = Math.abs(value);
  return abs < 1e-3 || abs >= 1e6 ? value.toExponential(1) : String(+value.toFixed(4));
}

function drawChart(id, label, color, xs, ys) {
  const target = el(id);
  if (!xs.length) {
    if (charts[id]) { charts[id].destroy(); delete charts[id]; }
    target.innerHTML = '<p class="muted empty">no data yet</p>';
    return;
  }
  const data = [xs, ys];
  if (charts[id]) { charts[id].setData(data); return; }
  target.innerHTML = "";
  charts[id] = new uPlot({
    width: Math.max(260, target.clientWidth || 360), height: 170, legend: { show: false },
    scales: {
      x: { time: true },
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
    },
    series: [{}, { label, stroke: color, fill: color + "22", width: 2, points: { show: true, size: 5 } }],
    axes: [{ size: 30 }, { size: 56, values: (u, values) => values.map(compact) }],
  }, data, target);
}

async function renderCharts() {
  const series = await getJSON(API + "stats/series?bucket_s=60&buckets=120");
  const items = series.items.length ? densify(series.items, series.bucket_s) : [];
  const xs = items.map((b) => b.start_ms / 1000);
  drawChart("chart-throughput", "tokens/s", "#1570ef", xs, items.map((b) => b.tokens_per_s));
  drawChart("chart-rewards", "ETH", "#067647", xs, items.map((b) => Number(toBig(b.rewards_wei)) / 1e18));
  drawChart("chart-slashes", "slashes", "#b42318", xs, items.map((b) => b.slashes));
}

async function renderGroups() {
  let data;
  try {
    data = await getJSON(API + "groups");
  } catch (error) {
    if (error.status !== 404) throw error;
    el("groups").innerHTML = el("regions").innerHTML = '<p class="muted">this validator does not orchestrate workers</p>';
    return;
  }
  const workers = new Map(data.workers.map((w) => [w.address, w]));
  const pipelines = data.groups.map((group) => {
    const stages = group.stages.map((stage) => {
      const worker = workers.get(stage.worker);
      const healthy = worker ? worker.healthy : false;
      const rate = stage.layer_tokens_per_s / Math.max(1, stage.layer_end - stage.layer_start);
      return `<li class="stage ${healthy ? "ok" : "down"}"><b>stage ${stage.index}</b> <span class="dot" title="${healthy ? "healthy" : "missed heartbeats"}"></span>` +
        `<br>${workerLink(stage.worker)}<br><small>layers ${stage.layer_start}–${stage.layer_end} · ${esc(stage.region)}</small>` +
        `<br><small>${healthy ? "healthy" : "unhealthy"} · est. ${rate.toFixed(1)} tok/s</small></li>`;
    }).join('<li class="arrow">→</li>');
    const measured = group.measured_tokens_per_s;
    return `<div class="pipeline" data-group="${esc(group.group_id)}"><div class="pipe-head"><b title="${esc(group.group_id)}">group ${esc(short(group.group_id))}</b>` +
      ` · measured <b>${measured === null || measured === undefined ? "—" : esc(measured)}</b> tok/s` +
      ` <span class="muted">(estimated ${esc(group.estimated_tokens_per_s)}) · ${esc(group.regions.join(", "))}</span></div><ol class="stages">${stages}</ol></div>`;
  });
  el("groups").classList.remove("muted");
  el("groups").innerHTML = pipelines.length ? pipelines.join("") : '<p class="muted">no groups formed yet</p>';

  const place = new Map();
  for (const group of data.groups) for (const stage of group.stages) place.set(stage.worker, `stage ${stage.index} of ${short(group.group_id)}`);
  const regions = new Map();
  for (const worker of data.workers) {
    if (!regions.has(worker.region)) regions.set(worker.region, []);
    regions.get(worker.region).push(worker);
  }
  el("regions").classList.remove("muted");
  el("regions").innerHTML = regions.size ? [...regions.keys()].sort().map((region) => {
    const rows = regions.get(region).map((w) => `<li><span class="dot ${w.healthy ? "ok" : "down"}"></span> ${workerLink(w.address)}` +
      ` <small>${esc(place.get(w.address) || (data.spares.includes(w.address) ? "spare" : "unassigned"))} · stake ${etherCell(w.stake_wei)}</small></li>`).join("");
    return `<div class="region" data-region="${esc(region)}"><h3>${esc(region)} <small class="muted">${regions.get(region).length} workers</small></h3><ul>${rows}</ul></div>`;
  }).join("") : '<p class="muted">no worker registered</p>';
}

// Per task and model: accepted samples, how many the checker passed, the pass rate (GET /v1/tasks).
const TASK_COLUMNS = [
  ["task", (r) => `<span class="task" title="${esc(r.task_source)}">${esc(r.task_id)}</span>`],
  ["model", (r) => `<span class="addr" title="${esc(r.model_id)}">${esc(short(r.model_id))}</span>`],
  ["samples", (r) => esc(r.samples)],
  ["correct", (r) => r.checked ? `${esc(r.correct)} / ${esc(r.checked)}` : '<span class="muted">no checker</span>'],
  ["pass rate", (r) => passRate(r.pass_rate)],
];

function renderLists() {
  return Promise.all([
    paged("tasks", API + "tasks", TASK_COLUMNS, "no accepted samples yet"),
    paged("standings", API + "standings", [
      ["#", (r) => esc(r.rank)],
      ["worker", (r) => workerLink(r.address) + (r.slashes ? ' <span class="badge bad">slashed</span>' : "")],
      ["net", (r) => etherCell(r.net_wei)],
      ["rewards", (r) => etherCell(r.rewards)],
      ["slashed", (r) => etherCell(r.slashed_amount)],
      ["jobs", (r) => esc(r.accepted_jobs)],
      ["slashes", (r) => esc(r.slashes)],
      ["stake", (r) => etherCell(r.stake)],
    ], "no workers yet"),
    paged("slashed", API + "slashes/by-worker", [
      ["worker", (r) => workerLink(r.worker)],
      ["times", (r) => `<b>${esc(r.count)}×</b>`],
      ["amount", (r) => etherCell(r.amount_wei)],
      ["last", (r) => when(r.last_at_ms)],
      ["last job", (r) => jobLink(r.last_job_id) + (r.last_stage !== null ? ` <small>stage ${esc(r.last_stage)}</small>` : "")],
      ["why", (r) => `<span class="figures">${esc(r.last_reason)}</span>`],
      ["chain", (r) => r.last_chain_tx ? txLink(r.last_chain_tx) : `<span class="muted">${esc(r.last_chain_status || "—")}</span>`],
    ], "nobody slashed"),
    paged("epochs", API + "epochs", [
      ["epoch", (r) => esc(r.number)],
      ["entries", (r) => esc(r.entry_count)],
      ["rewards", (r) => etherCell(r.total_rewards)],
      ["closed", (r) => when(r.closed_at)],
      ["anchor tx", (r) => txLink(r.anchor_tx)],
    ], "no epoch closed yet"),
    paged("jobs", API + "jobs", [
      ["job", (r) => jobLink(r.job_id)],
      ["status", (r) => esc(r.status)],
      ["verdict", (r) => outcomeBadge(r.outcome) + (r.blamed_stage !== null ? ` <small>stage ${esc(r.blamed_stage)}</small>` : "")],
      ["group", (r) => `<span class="addr" title="${esc(r.group_id)}">${esc(short(r.group_id))}</span>`],
      ["received", (r) => when(r.received_at)],
    ], "no jobs yet"),
  ]);
}

// ------------------------------------------------------------------------------------------------ detail pages

async function renderWorker(address) {
  const detail = el("detail");
  const [worker, claim] = await Promise.all([
    getJSON(`${API}workers/${address}`),
    getJSON(`${API}workers/${address}/claimable`).catch(() => null),
  ]);
  const net = toBig(worker.rewards) - toBig(worker.slashed_amount);
  if (detail.dataset.view !== `worker/${address}`) {
    detail.dataset.view = `worker/${address}`;
    detail.innerHTML = `<p><a href="#/">← overview</a></p><h2>Worker <span class="addr">${esc(worker.address)}</span></h2>` +
      '<section id="worker-figures" class="cards"></section>' +
      '<section><h3>Jobs</h3><div id="worker-jobs" class="paged"></div></section>' +
      '<div class="columns"><section><h3>Rewards</h3><div id="worker-rewards" class="paged"></div></section>' +
      '<section><h3>Slashes</h3><div id="worker-slashes" class="paged"></div></section></div>';
  }
  const card = (label, value, note = "") => `<div class="card"><span>${esc(label)}</span><strong>${value}</strong><small>${note}</small></div>`;
  el("worker-figures").innerHTML =
    card("rank", esc(worker.rank), "by rewards") +
    card("rewards", etherCell(worker.rewards), `${worker.accepted_jobs} accepted jobs`) +
    card("slashed", etherCell(worker.slashed_amount), `${worker.slashes} slashes`) +
    card("net", etherCell(net.toString()), "rewards − slashed") +
    card("stake", etherCell(worker.stake), "") +
    `<div class="card" id="claimable"><span>claimable</span><strong>${claim ? etherCell(claim.cumulative_wei) : etherCell("0")}</strong>` +
    `<small>${claim && claim.epoch ? `cumulative through epoch ${esc(claim.epoch)} (the contract pays it less what it paid before)` : "no epoch closed with a reward yet"}` +
    `${claim ? `; ${esc(ether(claim.pending_wei))} waits for the next epoch` : ""}</small></div>`;
  await Promise.all([
    paged("worker-jobs", `${API}workers/${address}/jobs`, [
      ["job", (r) => jobLink(r.job_id)],
      ["stage", (r) => esc(r.stage)],
      ["tokens", (r) => esc(r.token_count)],
      ["verdict", (r) => outcomeBadge(r.outcome) + (r.blamed ? " <small>(its stage)</small>" : r.blamed_stage !== null ? ` <small>(stage ${esc(r.blamed_stage)})</small>` : "")],
      ["why", (r) => `<span class="figures">${esc(r.reason)}</span>`],
      ["reward", (r) => etherCell(r.reward_wei)],
      ["slashed", (r) => etherCell(r.slashed_wei)],
      ["decided", (r) => when(r.decided_at)],
    ], "no jobs"),
    paged("worker-rewards", `${API}workers/${address}/entries?kind=reward`, [
      ["#", (r) => esc(r.seq)],
      ["job", (r) => jobLink(r.job_id)],
      ["amount", (r) => etherCell(r.amount)],
      ["work units", (r) => esc(r.work_units)],
      ["at", (r) => when(r.at_ms)],
    ], "no rewards"),
    paged("worker-slashes", `${API}slashes?worker=${address}`, [
      ["#", (r) => esc(r.seq)],
      ["job", (r) => jobLink(r.job_id) + ` <small>stage ${esc(r.stage)}</small>`],
      ["amount", (r) => etherCell(r.amount)],
      ["why", (r) => `<span class="figures">${esc(why(r.evidence, r.reason))}</span>`],
      ["at", (r) => when(r.at_ms)],
      ["chain", (r) => r.chain_tx ? txLink(r.chain_tx) : `<span class="muted">${esc(r.chain_status || "—")}</span>`],
    ], "never slashed"),
  ]);
}

async function renderJob(jobId) {
  const job = await getJSON(`${API}jobs/${jobId}`);
  const verdict = job.verdict || {};
  el("detail").dataset.view = `job/${jobId}`;
  el("detail").innerHTML = `<p><a href="#/">← overview</a></p><h2>Job <span class="addr">${esc(job.job_id)}</span></h2>` +
    `<p>${esc(job.status)} · ${outcomeBadge(verdict.outcome)} · group <span class="addr">${esc(short(job.group_id))}</span> · received ${when(job.received_at)}` +
    `${verdict.evidence_hash ? ` · <a href="${API}jobs/${esc(job.job_id)}/evidence">evidence</a>` : ""} · <a href="${API}jobs/${esc(job.job_id)}">JSON</a></p>` +
    (verdict.reason ? `<p id="why" class="figures">${verdict.blamed_stage !== null ? `stage ${esc(verdict.blamed_stage)} blamed (${esc(verdict.reason)}): ` : ""}` +
      `${esc(verdict.why || verdict.reason)}</p>` : "") +
    table(job.stages, [
      ["stage", (s) => esc(s.stage)],
      ["worker", (s) => workerLink(s.worker)],
      ["layers", (s) => `${esc(s.layer_start)}–${esc(s.layer_end)}`],
      ["tokens", (s) => esc(s.token_count)],
      ["reward", (s) => etherCell((verdict.rewards_wei || [])[s.stage] ?? "0")],
      ["slashed", (s) => etherCell(verdict.blamed_stage === s.stage ? verdict.slash_wei : "0")],
    ], "no stages");
}

async function renderTasks() {
  const detail = el("detail");
  if (detail.dataset.view !== "tasks") {
    detail.dataset.view = "tasks";
    detail.innerHTML = '<p><a href="#/">← overview</a></p><h2>Tasks</h2>' +
      '<p class="muted">One line per task and model: the accepted samples of the task (blamed jobs never count), how many ' +
      'a checker passed, and the pass rate. The dataset with every sample and its proof: <code>stagewise dataset export</code>.</p>' +
      '<section><div id="all-tasks" class="paged"></div></section>';
  }
  await paged("all-tasks", API + "tasks", TASK_COLUMNS, "no accepted samples yet", 50);
}

function renderTx(tx) {
  el("detail").dataset.view = `tx/${tx}`;
  el("detail").innerHTML = `<p><a href="#/">← overview</a></p><h2>Transaction</h2><p class="addr">${esc(tx)}</p>` +
    `<p>on chain ${esc(chainId ?? "?")}, staking contract <span class="addr">${esc(chain && chain.staking_contract)}</span>.` +
    ` No public explorer is known for this chain: <code>cast tx ${esc(tx)} --rpc-url ${esc((chain && chain.rpc_url) || "RPC")}</code></p>`;
}

// ------------------------------------------------------------------------------------------------ routing

async function render() {
  const route = location.hash.replace(/^#\/?/, "").split("/");
  const detail = ["worker", "job", "tx", "tasks"].includes(route[0]);
  el("overview").hidden = detail;
  el("detail").hidden = !detail;
  document.body.dataset.route = route[0] || "overview";
  await renderChain();
  if (route[0] === "worker") await show("detail", () => renderWorker(route[1]));
  else if (route[0] === "job") await show("detail", () => renderJob(route[1]));
  else if (route[0] === "tasks") await show("detail", renderTasks);
  else if (route[0] === "tx") renderTx(route[1]);
  else await Promise.all([show("progress", renderProgress), show("charts", renderCharts), show("groups", renderGroups), renderLists()]);
  el("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.loaded = "true";
}

window.addEventListener("hashchange", () => { el("detail").dataset.view = ""; render(); });
render();
setInterval(render, REFRESH_MS);
