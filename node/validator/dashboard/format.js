// How the dashboard writes values for people: ether with its unit, short addresses that link, times, tables.
"use strict";

const WEI_PER_ETH = 10n ** 18n;
const EXPLORERS = { 1: "https://etherscan.io", 11155111: "https://sepolia.etherscan.io", 17000: "https://holesky.etherscan.io",
  8453: "https://basescan.org", 84532: "https://sepolia.basescan.org", 10: "https://optimistic.etherscan.io", 42161: "https://arbiscan.io" };
let chainId = null;  // set from /health, for transaction links

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function toBig(wei) {
  try { return BigInt(String(wei ?? "0")); } catch (_) { return 0n; }
}

// wei (a decimal string) as ether with its unit: "0 ETH", "0.25 ETH", "-0.000001 ETH"; the title keeps the wei.
function ether(wei, digits = 6) {
  const value = toBig(wei);
  const sign = value < 0n ? "-" : "";
  const abs = value < 0n ? -value : value;
  const whole = abs / WEI_PER_ETH;
  let fraction = (abs % WEI_PER_ETH).toString().padStart(18, "0");
  let shown = fraction.slice(0, digits).replace(/0+$/, "");
  if (!shown && abs % WEI_PER_ETH !== 0n) shown = fraction.replace(/0+$/, "");  // tiny amounts: every digit
  return `${sign}${whole.toLocaleString("en")}${shown ? "." + shown : ""} ETH`;
}

function etherCell(wei) {
  return `<span class="eth" title="${esc(String(wei ?? "0"))} wei">${esc(ether(wei))}</span>`;
}

function short(hex) {
  const s = String(hex ?? "");
  return /^0x[0-9a-fA-F]{16,}$/.test(s) ? `${s.slice(0, 8)}…${s.slice(-6)}` : s;
}

function workerLink(address) {
  if (!address) return "";
  return `<a class="addr" href="#/worker/${esc(address)}" title="${esc(address)}">${esc(short(address))}</a>`;
}

function jobLink(jobId) {
  if (!jobId) return "";
  return `<a class="addr" href="#/job/${esc(jobId)}" title="${esc(jobId)}">${esc(short(jobId))}</a>`;
}

function txLink(tx) {
  if (!tx) return '<span class="muted">—</span>';
  const explorer = EXPLORERS[chainId];
  const href = explorer ? `${explorer}/tx/${tx}` : `#/tx/${tx}`;
  return `<a class="addr tx" href="${esc(href)}" title="${esc(tx)}">${esc(short(tx))}</a>`;
}

function when(value) {
  if (value === null || value === undefined || value === "") return "";
  const date = typeof value === "number" ? new Date(value) : new Date(value);
  if (Number.isNaN(date.getTime())) return esc(value);
  return `<time datetime="${esc(date.toISOString())}">${esc(date.toLocaleString())}</time>`;
}

function outcomeBadge(outcome) {
  if (!outcome) return '<span class="muted">pending</span>';
  const kind = outcome === "accepted" ? "good" : outcome === "blamed" ? "bad" : "muted";
  return `<span class="badge ${kind}">${esc(outcome.replace("_", " "))}</span>`;
}

// A pass rate (0..1, or null without a checker) as a percentage with a bar.
function passRate(rate) {
  if (rate === null || rate === undefined) return '<span class="muted">—</span>';
  const percent = Math.round(Number(rate) * 100);
  return `<span class="rate"><meter min="0" max="1" value="${esc(rate)}"></meter> ${esc(percent)} %</span>`;
}

// A table from rows and [heading, row -> HTML] columns.
function table(rows, columns, emptyText) {
  if (!rows.length) return `<p class="muted empty">${esc(emptyText)}</p>`;
  const head = columns.map(([heading]) => `<th>${esc(heading)}</th>`).join("");
  const body = rows.map((row) => "<tr>" + columns.map(([, cell]) => `<td>${cell(row) ?? ""}</td>`).join("") + "</tr>").join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}
