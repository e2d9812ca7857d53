"use strict";
// The support view: sign in, find a person, read their timeline, watch it live. Every value is set as text.

const T = {
  zh: {
    title: "客户行为序列", tab_timeline: "行为序列", tab_audit: "审计日志", lang: "English", logout: "退出",
    login_title: "坐席登录", account: "账号", password: "密码", login: "登录", any_type: "任意标识",
    value_hint: "客户号、登录账号、资金账号、设备ID或手机号", reason_hint: "查询原因（工单号/来电号，必填）",
    search: "查询", person: "客户", person_id: "主体ID", id_type: "标识类型", id_value: "值（按存储脱敏）",
    first_seen: "首次出现", live_off: "未连接实时更新", live_on: "实时更新中", export: "导出（JSON Lines）",
    all_lines: "全部业务线", event_hint: "事件名", since: "从", until: "到", apply: "筛选",
    quarantined: "被隔离的事件", more: "加载更早的事件", end: "没有更早的事件了", when: "时间", actor: "操作人",
    role: "角色", action: "操作", reason: "原因", wrong_login: "账号或密码错误", locked: "登录失败次数过多，账号已锁定，请稍后再试",
    not_found: "没有找到拥有该标识的客户", reason_required: "请填写查询原因（至少4个字）", session_ended: "会话已过期，请重新登录",
    forbidden: "无权执行此操作", exported: "已导出 {n} 条事件", no_events: "没有符合条件的事件", session: "会话",
    role_agent: "坐席", role_officer: "合规专员", error: "出错了",
    act_lookup: "查询", act_lookup_miss: "查询未命中", act_view: "查看序列", act_export: "导出",
  },
  en: {
    title: "Customer behaviour sequence", tab_timeline: "Timeline", tab_audit: "Audit log", lang: "中文", logout: "Sign out",
    login_title: "Staff sign-in", account: "Account", password: "Password", login: "Sign in", any_type: "Any identity",
    value_hint: "Customer no., login id, fund account, device id or mobile", reason_hint: "Reason (ticket or call ref., required)",
    search: "Search", person: "Customer", person_id: "Person id", id_type: "Identity type", id_value: "Value (masked as stored)",
    first_seen: "First seen", live_off: "Live updates not connected", live_on: "Live", export: "Export (JSON Lines)",
    all_lines: "All business lines", event_hint: "Event name", since: "From", until: "To", apply: "Filter",
    quarantined: "Quarantined events", more: "Load earlier events", end: "No earlier events", when: "When", actor: "Actor",
    role: "Role", action: "Action", reason: "Reason", wrong_login: "Wrong account or password",
    locked: "Too many failed sign-ins: locked, try again later", not_found: "No customer has that identity",
    reason_required: "Say why you look this customer up (4 characters at least)", session_ended: "Session ended: sign in again",
    forbidden: "Not allowed", exported: "Exported {n} events", no_events: "No events match", session: "Session",
    role_agent: "agent", role_officer: "officer", error: "Something went wrong",
    act_lookup: "lookup", act_lookup_miss: "lookup, not found", act_view: "timeline viewed", act_export: "export",
  },
};

const state = { lang: localStorage.getItem("support-lang") || "zh", me: null, cursor: null, notes: {}, seen: new Set(), stream: null, lines: {} };
const $ = (id) => document.getElementById(id);
const t = (key) => (T[state.lang][key] || key);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function translate() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-t]").forEach((n) => { n.textContent = t(n.dataset.t); });
  document.querySelectorAll("[data-tp]").forEach((n) => { n.placeholder = t(n.dataset.tp); });
  document.title = t("title") + " · maidian";
  if (state.me) $("who").textContent = state.me.account + " · " + t("role_" + state.me.role);
  $("live-text").textContent = t(state.stream && state.stream.readyState === 1 ? "live_on" : "live_off");
}

async function api(method, path, body) {
  const headers = {};
  if (method === "POST") {
    headers["Content-Type"] = "application/json";
    if (state.me) headers["X-CSRF-Token"] = state.me.csrf;
  }
  const response = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined, credentials: "same-origin" });
  if (response.status === 401 && path !== "/support/api/login") { showLogin(t("session_ended")); throw new Error("unauthenticated"); }
  return response;
}

function showLogin(message) {
  state.me = null;
  if (state.stream) state.stream.close();
  $("login-pane").hidden = false;
  $("app").hidden = $("audit-pane").hidden = $("logout").hidden = $("tab-timeline").hidden = $("tab-audit").hidden = true;
  $("who").textContent = "";
  $("login-error").textContent = message || "";
}

async function start() {
  const response = await fetch("/support/api/me", { credentials: "same-origin" });
  if (response.status !== 200) { showLogin(""); return; }
  state.me = await response.json();
  $("login-pane").hidden = true;
  $("app").hidden = $("logout").hidden = $("tab-timeline").hidden = false;
  $("tab-audit").hidden = state.me.role !== "officer";
  $("export").hidden = state.me.role !== "officer";
  const type = $("search-type");
  type.length = 1;
  for (const it of state.me.identity_types) { const o = el("option", "", it.name); o.value = it.name; type.append(o); }
  const line = $("f-line");
  line.length = 1;
  for (const l of state.me.lines) { state.lines[l.prefix] = l.title; const o = el("option", "", l.title + " (" + l.prefix + ")"); o.value = l.prefix; line.append(o); }
  const names = $("event-names");
  names.replaceChildren(...state.me.events.map((n) => { const o = el("option"); o.value = n; return o; }));
  showTab(location.hash === "#audit" && state.me.role === "officer" ? "audit" : "timeline");
  translate();
}

function showTab(which) {
  history.replaceState(null, "", which === "audit" ? "#audit" : location.pathname);
  $("app").hidden = which !== "timeline";
  $("audit-pane").hidden = which !== "audit";
  $("tab-timeline").classList.toggle("on", which === "timeline");
  $("tab-audit").classList.toggle("on", which === "audit");
  if (which === "audit") loadAudit();
}

async function login(event) {
  event.preventDefault();
  const response = await api("POST", "/support/api/login", { name: $("login-name").value, password: $("login-password").value });
  $("login-password").value = "";
  if (response.status === 429) { $("login-error").textContent = t("locked"); return; }
  if (response.status !== 200) { $("login-error").textContent = t("wrong_login"); return; }
  await start();
}

async function search(event) {
  event.preventDefault();
  $("search-error").textContent = "";
  const reason = $("search-reason").value.trim();
  if (reason.length < 4) { $("search-error").textContent = t("reason_required"); return; }
  const valueBox = $("search-value");
  const response = await api("POST", "/support/api/search", { value: valueBox.value, type: $("search-type").value, reason });
  valueBox.value = "";  // a mobile number typed in clear does not stay on the screen
  if (state.stream) { state.stream.close(); state.stream = null; }
  if (response.status !== 200) {
    const body = await response.json().catch(() => ({}));
    const code = body.error ? body.error.code : "";
    $("search-error").textContent = t(code === "not_found" ? "not_found" : code === "reason_required" ? "reason_required" : "error");
    $("person-pane").hidden = true;
    return;
  }
  const found = await response.json();
  $("person-id").textContent = found.person;
  const rows = $("identities").tBodies[0];
  rows.replaceChildren(...found.identities.map((i) => {
    const tr = el("tr");
    tr.append(el("td", "", i.identity_type), el("td", "", i.value), el("td", "", i.first_seen_local || ""));
    return tr;
  }));
  $("person-pane").hidden = false;
  await loadTimeline(true);
  follow();
}

function filters() {
  const line = $("f-line").value, name = $("f-event").value.trim();
  return { lines: line ? [line] : [], events: name ? [name] : [], since: $("f-since").value || null, until: $("f-until").value || null };
}

async function loadTimeline(fresh) {
  const body = filters();
  if (!fresh) body.cursor = state.cursor;
  const response = await api("POST", "/support/api/timeline", body);
  if (response.status !== 200) { $("search-error").textContent = t("error"); return; }
  const page = await response.json();
  Object.assign(state.notes, page.notes);
  if (fresh) {
    $("timeline").replaceChildren();
    state.seen.clear();
    state.lastDay = state.lastSession = null;
    const q = page.quarantined || [];
    $("q-count").textContent = q.length;
    $("quarantine-box").hidden = q.length === 0;
    $("quarantine").replaceChildren(...q.map((e) => eventNode(e, true)));
    if (!page.events.length) $("timeline").append(el("p", "empty", t("no_events")));
  }
  for (const e of page.events) appendEvent(e);
  state.cursor = page.cursor;
  $("more").hidden = !page.cursor;
  $("end").hidden = !!page.cursor || !page.events.length;
}

function appendEvent(e) {
  if (state.seen.has(e.event_id)) return;
  state.seen.add(e.event_id);
  const box = $("timeline");
  if (e.day !== state.lastDay) { box.append(el("div", "day", e.day)); state.lastDay = e.day; state.lastSession = null; }
  if (e.session && e.session !== state.lastSession) { box.append(el("div", "session", t("session") + " " + e.session)); state.lastSession = e.session; }
  box.append(eventNode(e, false));
}

function prependLive(e) {
  if (state.seen.has(e.event_id)) return;
  state.seen.add(e.event_id);
  const box = $("timeline");
  const empty = box.querySelector(".empty");
  if (empty) empty.remove();
  const node = eventNode(e, e.verdict === "quarantined");
  node.classList.add("fresh");
  const first = box.querySelector(".day");
  if (!first || first.textContent !== e.day) {
    const day = el("div", "day", e.day);
    box.prepend(day, node);
  } else {
    first.after(node);
  }
}

function eventNode(e, quarantined) {
  const node = el("details", "ev" + (quarantined ? " quarantined" : ""));
  node.dataset.event = e.event;
  node.dataset.id = e.event_id;
  const note = state.notes[e.event] || { description: "", properties: {} };
  const summary = el("summary");
  const name = el("span", "name", e.event);
  if (note.description) name.append(" ", el("span", "desc", note.description));
  const flags = el("span", "flag", [...(e.flags || []), ...(quarantined ? ["quarantined"] : [])].join(" "));
  summary.append(el("span", "clock", (quarantined ? e.day + " " : "") + e.clock), el("span", "line", state.lines[e.line] || e.line || "—"), name, flags);
  node.append(summary);
  if (e.reasons && e.reasons.length) {
    const list = el("ul", "reasons");
    for (const r of e.reasons) list.append(el("li", "", typeof r === "string" ? r : (r.rule || "") + ": " + (r.message || JSON.stringify(r))));
    node.append(list);
  }
  const table = el("table", "props");
  const rows = [];
  for (const [k, v] of Object.entries(e.properties || {})) rows.push([k, v, note.properties[k] || ""]);
  for (const [k, v] of Object.entries(e.identities || {})) rows.push(["identities." + k, v, ""]);
  rows.push(["event_id", e.event_id, ""], ["source", e.source || "", ""]);
  for (const [k, v, d] of rows) {
    const tr = el("tr");
    tr.append(el("td", "", k), el("td", "", typeof v === "object" ? JSON.stringify(v) : v), el("td", "", d));
    table.append(tr);
  }
  node.append(table);
  return node;
}

function follow() {
  const source = new EventSource("/support/api/stream");
  state.stream = source;
  source.addEventListener("hello", () => { $("live-dot").classList.add("on"); translate(); });
  source.addEventListener("events", (m) => {
    const data = JSON.parse(m.data);
    Object.assign(state.notes, data.notes);
    for (const e of data.events) prependLive(e);
  });
  source.onerror = () => { $("live-dot").classList.remove("on"); translate(); };
}

async function exportPerson() {
  const response = await api("POST", "/support/api/export", {});
  if (response.status !== 200) { $("export-status").textContent = t("forbidden"); return; }
  const text = await response.text();
  const n = text.split("\n").filter((l) => l).length;
  const link = el("a");
  link.href = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
  link.download = "person-" + $("person-id").textContent + ".jsonl";
  link.click();
  $("export-status").textContent = t("exported").replace("{n}", n);
}

async function loadAudit() {
  const response = await api("GET", "/support/api/audit");
  if (response.status !== 200) return;
  const data = await response.json();
  $("audit").tBodies[0].replaceChildren(...data.records.map((r) => {
    const tr = el("tr");
    const action = el("td", "", t("act_" + r.action));
    action.dataset.action = r.action;
    tr.append(el("td", "", r.local), el("td", "", r.actor), el("td", "", t("role_" + r.role)), action, el("td", "", r.person), el("td", "", r.reason));
    return tr;
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", login);
  $("search").addEventListener("submit", search);
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); loadTimeline(true); });
  $("more").addEventListener("click", () => loadTimeline(false));
  $("export").addEventListener("click", exportPerson);
  $("tab-timeline").addEventListener("click", () => showTab("timeline"));
  $("tab-audit").addEventListener("click", () => showTab("audit"));
  $("lang").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem("support-lang", state.lang);
    translate();
    if (!$("audit-pane").hidden) loadAudit();
  });
  $("logout").addEventListener("click", async () => { await api("POST", "/support/api/logout", {}); showLogin(""); });
  translate();
  start();
});
