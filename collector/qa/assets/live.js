// maidian live: the events a collector receives, as it judges them, for QA testers.
// Plain JavaScript with no build step and nothing loaded from elsewhere. Event values are only ever
// written with textContent; the coverage fragment comes from the collector, which escapes every value.
"use strict";

(() => {
  const MAX_ROWS = 2000; // rows kept in the table, newest first
  const MAX_WAITING = 2000; // events held while paused; older ones are counted as skipped
  const COVERAGE_EVERY_MS = 2000;
  const INFO_EVERY_MS = 2000;

  const $ = (id) => document.getElementById(id);
  const state = {
    source: null,
    paused: false,
    waiting: [],
    waitingSkipped: 0,
    after: 0, // events up to this seq were cleared from the page
    lastSeq: 0,
    records: new Map(), // seq -> record, for the rows on the page
    tab: "events",
  };

  function filters() {
    return {
      identity: $("f-identity").value.trim(),
      event: $("f-event").value.trim(),
      line: $("f-line").value,
      verdict: $("f-verdict").value,
      tag: $("f-tag").value.trim(),
    };
  }

  function query(extra) {
    const params = new URLSearchParams();
    const all = Object.assign(filters(), extra || {});
    for (const [k, v] of Object.entries(all)) {
      if (v !== "" && v !== undefined && v !== null) params.set(k, String(v));
    }
    return params.toString();
  }

  function setStatus(kind, text) {
    const el = $("status");
    el.dataset.state = kind;
    el.textContent = text;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clock(ms) {
    const d = new Date(ms);
    const pad = (n, w) => String(n).padStart(w, "0");
    return `${pad(d.getHours(), 2)}:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}.${pad(d.getMilliseconds(), 3)}`;
  }

  function identityOf(rec) {
    const ids = rec.identities || {};
    return ids.login_id || ids.anonymous_id || Object.values(ids)[0] || "";
  }

  function reasonText(r) {
    return `${r.rule} ${r.path || "/"}: ${r.message}`;
  }

  function refreshShown() {
    $("n-shown").textContent = String($("rows").children.length);
    $("empty").hidden = $("rows").children.length > 0;
  }

  function clearRows() {
    $("rows").textContent = "";
    state.records.clear();
    state.waiting = [];
    state.waitingSkipped = 0;
    refreshShown();
    updatePausedNote();
  }

  function trim() {
    const rows = $("rows");
    while (rows.children.length > MAX_ROWS) {
      const last = rows.lastElementChild;
      state.records.delete(Number(last.dataset.seq));
      last.remove();
    }
  }

  function addRow(rec) {
    const tr = el("tr", `ev verdict-${rec.verdict}`);
    tr.dataset.seq = String(rec.seq);
    tr.dataset.verdict = rec.verdict;
    tr.dataset.event = rec.event || "";
    tr.tabIndex = 0;
    tr.append(el("td", "time", clock(rec.at)));
    const verdict = el("td", "verdict");
    verdict.append(el("span", `badge ${rec.verdict}`, rec.verdict));
    if (rec.route === "debug") verdict.append(el("span", "badge debug", "debug"));
    tr.append(verdict);
    tr.append(el("td", "name", rec.event || rec.type || "?"));
    tr.append(el("td", "line", rec.line));
    tr.append(el("td", "identity", identityOf(rec)));
    tr.append(el("td", "tag", rec.tag));
    const reasons = el("td", "reasons");
    const list = rec.reasons || [];
    if (list.length) {
      reasons.append(el("span", "reason", reasonText(list[0])));
      if (list.length > 1) reasons.append(el("span", "more", ` +${list.length - 1}`));
    }
    tr.append(reasons);
    tr.addEventListener("click", () => showDetail(rec.seq));
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter") showDetail(rec.seq);
    });
    state.records.set(rec.seq, rec);
    $("rows").prepend(tr);
    trim();
  }

  function addSkipped(n) {
    const tr = el("tr", "skipped");
    tr.dataset.skipped = String(n);
    const td = el("td", null, `${n} events skipped: the page could not keep up (ingestion was not slowed)`);
    td.colSpan = 7;
    tr.append(td);
    $("rows").prepend(tr);
    trim();
  }

  function updatePausedNote() {
    const note = $("paused-note");
    if (!state.paused) {
      note.hidden = true;
      return;
    }
    note.hidden = false;
    let text = `Paused: ${state.waiting.length} new events waiting`;
    if (state.waitingSkipped) text += `, ${state.waitingSkipped} skipped`;
    note.textContent = text + ". Resume to show them.";
  }

  let infoSoon = null;
  function refreshInfoSoon() {
    if (infoSoon === null) {
      infoSoon = setTimeout(() => {
        infoSoon = null;
        refreshInfo();
      }, 300);
    }
  }

  function receive(rec) {
    state.lastSeq = Math.max(state.lastSeq, rec.seq);
    refreshInfoSoon();
    if (state.paused) {
      state.waiting.push(rec);
      if (state.waiting.length > MAX_WAITING) {
        state.waiting.shift();
        state.waitingSkipped += 1;
      }
      updatePausedNote();
      return;
    }
    addRow(rec);
    refreshShown();
  }

  function skipped(n) {
    if (state.paused) {
      state.waitingSkipped += n;
      updatePausedNote();
      return;
    }
    addSkipped(n);
  }

  function connect() {
    if (state.source) state.source.close();
    clearRows();
    const source = new EventSource(`/live/stream?${query({ after: state.after })}`);
    source.addEventListener("hello", () => setStatus(state.paused ? "paused" : "live", state.paused ? "paused" : "live"));
    source.addEventListener("ev", (m) => receive(JSON.parse(m.data)));
    source.addEventListener("skipped", (m) => skipped(JSON.parse(m.data).n));
    source.onerror = () => {
      setStatus("reconnecting", "reconnecting…");
      checkAccess();
    };
    state.source = source;
  }

  function showDetail(seq) {
    const rec = state.records.get(seq);
    if (!rec) return;
    for (const row of document.querySelectorAll("#rows tr.selected")) row.classList.remove("selected");
    const row = document.querySelector(`#rows tr[data-seq="${seq}"]`);
    if (row) row.classList.add("selected");
    $("d-title").textContent = rec.event || rec.type || "?";
    const meta = $("d-meta");
    meta.textContent = "";
    const rows = [
      ["verdict", rec.verdict + (rec.route === "debug" ? " (validate only: /v1/debug, not stored)" : "")],
      ["received", new Date(rec.at).toLocaleString()],
      ["event id", rec.event_id],
      ["sender", rec.source],
      ["business line", rec.line],
      ["test tag", rec.tag],
    ];
    for (const [k, v] of Object.entries(rec.identities || {})) rows.push([k, v]);
    for (const [k, v] of rows) {
      if (v === undefined || v === null || v === "") continue;
      meta.append(el("dt", null, k), el("dd", null, v));
    }
    const reasons = $("d-reasons");
    reasons.textContent = "";
    for (const r of rec.reasons || []) {
      const li = el("li");
      li.append(el("code", "rule", r.rule), " ", el("code", "path", r.path || "/"), " ", el("span", null, r.message));
      reasons.append(li);
    }
    if (!(rec.reasons || []).length) reasons.append(el("li", "none", "none: the event keeps the plan"));
    let payload;
    if (rec.truncated_bytes) payload = `(not shown: ${rec.truncated_bytes} bytes)`;
    else if (rec.unprintable) payload = "(not shown: the event holds values JSON cannot show)";
    else if (rec.payload === null && rec.raw_base64) payload = `undecodable; first bytes, base64:\n${rec.raw_base64}`;
    else payload = JSON.stringify(rec.payload, null, 2);
    $("d-payload").textContent = payload;
    $("detail").hidden = false;
  }

  function pauseToggle() {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(state.paused));
    if (!state.paused) {
      if (state.waitingSkipped) addSkipped(state.waitingSkipped);
      for (const rec of state.waiting) addRow(rec);
      state.waiting = [];
      state.waitingSkipped = 0;
      refreshShown();
      setStatus("live", "live");
    } else {
      setStatus("paused", "paused");
    }
    updatePausedNote();
  }

  function clearAll() {
    state.after = state.lastSeq;
    clearRows();
    $("detail").hidden = true;
  }

  async function fetchInfo() {
    const response = await fetch("/live/info", { cache: "no-store" });
    if (response.status === 401) {
      showLogin();
      return null;
    }
    return response.ok ? response.json() : null;
  }

  let infoLoaded = false;
  async function refreshInfo() {
    let info;
    try {
      info = await fetchInfo();
    } catch (e) {
      return;
    }
    if (!info) return;
    $("n-accepted").textContent = String(info.counts.accepted);
    $("n-quarantined").textContent = String(info.counts.quarantined);
    $("n-duplicate").textContent = String(info.counts.duplicate);
    const tags = $("tags");
    tags.textContent = "";
    for (const t of info.tags) tags.append(Object.assign(el("option"), { value: t }));
    if (!infoLoaded) {
      infoLoaded = true;
      $("plan").textContent = `${info.plan.name} ${info.plan.version}`;
      const line = $("f-line");
      for (const l of info.plan.lines) {
        const option = el("option", null, l.title ? `${l.prefix} ${l.title}` : l.prefix);
        option.value = l.prefix;
        line.append(option);
      }
      const names = $("event-names");
      for (const n of info.plan.events) names.append(Object.assign(el("option"), { value: n }));
    }
  }

  let lastCoverage = "";
  async function refreshCoverage() {
    if (state.tab !== "coverage") return;
    const tag = $("f-tag").value.trim();
    try {
      const response = await fetch(`/live/coverage?format=html&tag=${encodeURIComponent(tag)}`, { cache: "no-store" });
      if (response.status === 401) {
        showLogin();
        return;
      }
      if (!response.ok) return;
      const html = await response.text();
      const box = $("coverage");
      if (html === lastCoverage) return;
      lastCoverage = html;
      const open = new Map();
      for (const d of box.querySelectorAll("details[data-line]")) open.set(d.dataset.line, d.open);
      box.innerHTML = html; // every value in it was escaped by the collector
      for (const d of box.querySelectorAll("details[data-line]")) {
        if (open.has(d.dataset.line)) d.open = open.get(d.dataset.line);
      }
    } catch (e) {
      // the collector stopped; the status line says so
    }
  }

  function showTab(tab) {
    state.tab = tab;
    $("tab-events").classList.toggle("active", tab === "events");
    $("tab-coverage").classList.toggle("active", tab === "coverage");
    $("events-view").hidden = tab !== "events";
    $("coverage-view").hidden = tab !== "coverage";
    refreshCoverage();
  }

  function showLogin() {
    const dialog = $("login");
    if (!dialog.open) dialog.showModal();
  }

  async function checkAccess() {
    try {
      await fetchInfo();
    } catch (e) {
      setStatus("offline", "collector unreachable");
    }
  }

  async function login(event) {
    event.preventDefault();
    const response = await fetch("/live/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("token").value }),
    });
    if (!response.ok) {
      $("login-error").textContent = "That is not the token.";
      return;
    }
    $("login").close();
    $("token").value = "";
    await refreshInfo();
    connect();
  }

  let debounce = null;
  function onFilter() {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      connect();
      refreshCoverage();
    }, 250);
  }

  function start() {
    $("pause").addEventListener("click", pauseToggle);
    $("clear").addEventListener("click", clearAll);
    $("d-close").addEventListener("click", () => {
      $("detail").hidden = true;
    });
    $("tab-events").addEventListener("click", () => showTab("events"));
    $("tab-coverage").addEventListener("click", () => showTab("coverage"));
    $("login-form").addEventListener("submit", login);
    $("filters").addEventListener("submit", (e) => e.preventDefault());
    for (const id of ["f-identity", "f-event", "f-tag"]) $(id).addEventListener("input", onFilter);
    for (const id of ["f-line", "f-verdict"]) $(id).addEventListener("change", onFilter);
    refreshInfo().then(connect);
    setInterval(refreshInfo, INFO_EVERY_MS);
    setInterval(refreshCoverage, COVERAGE_EVERY_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
