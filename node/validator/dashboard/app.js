// The dashboard reads the validator's public API and renders tables; no build step.
"use strict";

const API = "v1/";

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    const error = new Error(`${path}: HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function rowsOf(data, key) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data[key])) return data[key];
  if (data && Array.isArray(data.items)) return data.items;
  return [];
}

function text(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function short(value) {
  const s = text(value);
  return /^0x[0-9a-fA-F]{40,}$/.test(s) ? `${s.slice(0, 8)}…${s.slice(-6)}` : s;
}

const WEI_FIELDS = /(amount|reward|stake|slashed)/i;

function evidenceSummary(value) {
  // Slashing evidence carries the verifier's figures; its `reason` line says which chunk failed and by how much.
  const figures = value.figures || {};
  const line = figures.reason || value.reason;
  return typeof line === "string" ? line : JSON.stringify(value);
}

function formatCell(column, value) {
  if (value && typeof value === "object" && !Array.isArray(value)) return evidenceSummary(value);
  const s = text(value);
  if (WEI_FIELDS.test(column) && /^\d+$/.test(s) && s.length > 12) {
    return `${(Number(BigInt(s) / 10n ** 12n) / 1e6).toFixed(6)} ETH`;
  }
  return short(value);
}

function renderTable(table, rows, columns, emptyText) {
  table.innerHTML = "";
  if (!rows.length) {
    table.innerHTML = `<tbody><tr><td class="muted">${emptyText}</td></tr></tbody>`;
    return;
  }
  const cols = columns || Object.keys(rows[0]);
  const head = document.createElement("thead");
  head.innerHTML = "<tr>" + cols.map((c) => `<th>${c.replaceAll("_", " ")}</th>`).join("") + "</tr>";
  const body = document.createElement("tbody");
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const col of cols) {
      const td = document.createElement("td");
      const value = row[col];
      td.textContent = formatCell(col, value);
      td.title = text(value);
      if (typeof value === "number" || /^\d+$/.test(text(value))) td.className = "num";
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  table.append(head, body);
}

function renderGroups(container, groups) {
  container.innerHTML = "";
  container.classList.remove("muted");
  if (!groups.length) {
    container.textContent = "no groups formed yet";
    container.classList.add("muted");
    return;
  }
  for (const group of groups) {
    const div = document.createElement("div");
    div.className = "group";
    const title = document.createElement("strong");
    title.textContent = `group ${text(group.group_id ?? group.id)}`;
    div.appendChild(title);
    const table = document.createElement("table");
    renderTable(table, rowsOf(group, "stages"), null, "no stages");
    div.appendChild(table);
    container.appendChild(div);
  }
}

async function refresh() {
  const health = document.getElementById("health");
  try {
    const status = await getJSON("health");
    health.textContent = `validator ${text(status.status ?? "ok")} · updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    health.textContent = `validator unreachable: ${error.message}`;
  }
  const views = [
    ["leaderboard", (d) => renderTable(document.getElementById("leaderboard"), rowsOf(d, "workers"),
      ["rank", "address", "rewards", "accepted_jobs", "work_units", "slashes", "slashed_amount", "stake"], "no workers yet")],
    ["slashes", (d) => renderTable(document.getElementById("slashes"), rowsOf(d, "slashes"),
      ["seq", "worker", "stage", "job_id", "amount", "reason", "evidence", "chain_status", "chain_tx"], "nobody slashed")],
    ["groups", (d) => renderGroups(document.getElementById("groups"), rowsOf(d, "groups"))],
    ["epochs", (d) => renderTable(document.getElementById("epochs"), rowsOf(d, "epochs"), null, "no epoch closed yet")],
  ];
  await Promise.all(
    views.map(async ([path, render]) => {
      try {
        render(await getJSON(API + path));
      } catch (error) {
        const el = document.getElementById(path);
        el.textContent = error.status === 404 && path === "groups"
          ? "this validator does not orchestrate workers (it validates bundles only)"
          : `could not load ${path}: ${error.message}`;
      }
    }),
  );
  document.body.dataset.loaded = "true";
}

refresh();
setInterval(refresh, 5000);
