// The page of `mlx-text2sql serve`. Plain DOM, no framework, nothing loaded from elsewhere.
// Everything that comes from a database or the model is put in the page as text
// (textContent / createElement), never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "mlx-text2sql-history";
const KEY_KEY = "mlx-text2sql-key";
let databases = [];

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(method, path, body) {
  const opts = { method, headers: headers() };
  if (body !== undefined) opts.body = JSON.stringify(body);
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new Error("the server cannot be reached (" + e.message + ")");
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) {
    const msg = data && data.error ? data.error.message : resp.status + " " + resp.statusText;
    const err = new Error(msg);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(text) { $("status").textContent = text || ""; }

function busy(on) {
  $("ask").disabled = on;
  $("run").disabled = on;
}

// ------------------------------------------------------------------ schema

function renderSchema(name) {
  const box = $("schema");
  box.replaceChildren();
  const db = databases.find((d) => d.name === name);
  if (!db) return;
  db.tables.forEach((t, i) => {
    const details = el("details");
    if (i < 3) details.open = true;
    const summary = el("summary", t.name);
    summary.append(el("span", t.rows === null ? "" : " " + t.rows + " rows", "muted"));
    details.append(summary);
    const table = el("table");
    const head = el("tr");
    head.append(el("th", "column"), el("th", "type"));
    table.append(head);
    t.columns.forEach((c) => {
      const tr = el("tr");
      const td = el("td", c.name);
      if (c.primary_key) td.append(el("span", "PK", "key"));
      tr.append(td, el("td", c.type));
      table.append(tr);
    });
    details.append(table);
    t.foreign_keys.forEach((fk) => {
      details.append(el("div", fk.column + " \u2192 " + fk.table + "." + fk.references, "fk"));
    });
    box.append(details);
  });
}

// ------------------------------------------------------------------ results

function renderResult(columns, rows, truncated) {
  const table = $("result");
  table.replaceChildren();
  if (!columns) return;
  const head = el("tr");
  columns.forEach((c) => head.append(el("th", c)));
  table.append(head);
  rows.forEach((row) => {
    const tr = el("tr");
    row.forEach((cell) => {
      if (cell === null) tr.append(el("td", "NULL", "null"));
      else tr.append(el("td", typeof cell === "object" ? JSON.stringify(cell) : cell));
    });
    table.append(tr);
  });
  return rows.length + (rows.length === 1 ? " row" : " rows") + (truncated ? " (more not shown)" : "");
}

function fmt(s) { return (s * 1000).toFixed(0) + " ms"; }

function repairsText(a) {
  // what name and value repair changed in the model's query, one phrase each
  const names = (a.name_fixes || []).map((f) => f.kind + " " + f.old + " \u2192 " + f.new);
  const values = (a.value_fixes || []).map((f) => f.column + " = '" + f.old + "' \u2192 '" + f.new + "'");
  const parts = [];
  if (names.length) parts.push("name repair: " + names.join(", "));
  if (values.length) parts.push("value repair: " + values.join(", "));
  return parts.join("; ");
}

function showAnswer(a) {
  $("sql").value = a.sql || "";
  const repairs = repairsText(a);
  $("repairs").textContent = repairs;
  $("repairs").hidden = !repairs;
  $("reply").textContent = a.reply || "";
  const t = a.timings;
  $("timings").textContent = "queue " + fmt(t.queue_s) + " \u00b7 prompt " + fmt(t.prompt_s) +
    " \u00b7 decode " + fmt(t.decode_s) + " \u00b7 execute " + fmt(t.execute_s) + " \u00b7 total " + fmt(t.total_s);
  const rowsText = renderResult(a.columns, a.rows || [], a.truncated);
  if (a.error) showError((a.error_kind ? a.error_kind + ": " : "") + a.error);
  setStatus(rowsText || (a.sql ? "" : "no SQL in the reply"));
}

// ------------------------------------------------------------------ history (this tab only)

function loadHistory() {
  try { return JSON.parse(sessionStorage.getItem(HISTORY_KEY) || "[]"); } catch (e) { return []; }
}

function addHistory(entry) {
  const items = loadHistory();
  items.unshift(entry);
  sessionStorage.setItem(HISTORY_KEY, JSON.stringify(items.slice(0, 50)));
  renderHistory();
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  loadHistory().forEach((h) => {
    const li = el("li", h.question);
    li.append(el("span", "[" + h.database + "] " + (h.sql || "(no SQL)"), "sql"));
    li.addEventListener("click", () => {
      if (databases.some((d) => d.name === h.database)) {
        $("database").value = h.database;
        renderSchema(h.database);
      }
      $("question").value = h.question;
      $("sql").value = h.sql || "";
    });
    list.append(li);
  });
}

// ------------------------------------------------------------------ actions

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  const database = $("database").value;
  if (!question || !database) return;
  showError("");
  busy(true);
  setStatus("asking\u2026");
  try {
    const a = await api("POST", "/v1/sql", {
      database, question,
      execute: $("opt-execute").checked,
      fix_values: $("opt-fix").checked,
      fix_names: $("opt-fix-names").checked,
      constrain_names: $("opt-constrain-names").checked,
      exec_guided: parseInt($("opt-guided").value, 10) || 0,
      max_rows: parseInt($("opt-rows").value, 10) || 100,
    });
    showAnswer(a);
    addHistory({ database, question, sql: a.sql });
  } catch (e) {
    setStatus("");
    showError(e.message);
  } finally {
    busy(false);
  }
}

async function run() {
  const sql = $("sql").value.trim();
  const database = $("database").value;
  if (!sql || !database) return;
  showError("");
  busy(true);
  setStatus("running\u2026");
  try {
    const r = await api("POST", "/v1/execute", { database, sql, max_rows: parseInt($("opt-rows").value, 10) || 100 });
    $("timings").textContent = "execute " + fmt(r.execute_s);
    const rowsText = renderResult(r.columns, r.rows || [], r.truncated);
    if (r.error) showError((r.error_kind ? r.error_kind + ": " : "") + r.error);
    setStatus(rowsText || "");
  } catch (e) {
    setStatus("");
    showError(e.message);
  } finally {
    busy(false);
  }
}

async function loadDatabases() {
  const select = $("database");
  try {
    const data = await api("GET", "/v1/databases");
    databases = data.data;
    const keep = select.value;
    select.replaceChildren();
    databases.forEach((d) => select.append(el("option", d.name)));
    if (databases.some((d) => d.name === keep)) select.value = keep;
    renderSchema(select.value);
    showError("");
  } catch (e) {
    showError(e.status === 401 ? "this server needs an API key: type it above" : e.message);
  }
}

async function init() {
  $("ask-form").addEventListener("submit", ask);
  $("run").addEventListener("click", run);
  $("database").addEventListener("change", () => renderSchema($("database").value));
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask-form").requestSubmit(); }
  });
  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem(KEY_KEY) || "";
  keyInput.addEventListener("change", () => { sessionStorage.setItem(KEY_KEY, keyInput.value.trim()); loadDatabases(); });
  renderHistory();
  try {
    const h = await api("GET", "/health");
    $("model").textContent = h.model;
    $("key-box").hidden = !h.auth;
  } catch (e) {
    showError(e.message);
  }
  await loadDatabases();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
