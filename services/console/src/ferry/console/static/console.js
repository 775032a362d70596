// Ferry console: one snapshot of the KV views, then the audit stream as server-sent
// events. Progress events are applied in place; any other event re-reads the snapshot
// (the controller's stored state is the truth), so the page never reloads and never
// polls. The browser's EventSource resends the last event id on reconnect, and the
// server resumes the stream right after it.
"use strict";

const S = { snap: null, applied: 0, log: [], rates: {}, drafts: {}, es: null, refreshTimer: null, probes: {} };
const LOG_MAX = 1000;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `${s.toFixed(0)}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

function notice(text) { $("notice").textContent = text; }
function token() { return sessionStorage.getItem("ferry-token") || ""; }

// -- actions (each needs the token) -----------------------------------------------

async function act(path, body, what) {
  if (!token()) { notice(`${what}: enter the token first (ferry up printed it).`); return; }
  const response = await fetch(path, {
    method: "POST",
    headers: { "Authorization": `Bearer ${token()}`, "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  const text = (await response.text()).trim();
  if (response.status === 401) notice(`${what}: the token was refused.`);
  else if (!response.ok) notice(`${what}: ${text}`);
  else notice(`${what}: requested.`);
  return response.ok;
}

const startPlan = (plan) => act(`/api/plans/${encodeURIComponent(plan)}/start`, {}, `start ${plan}`);
const cancel = (mig, vm) => act(`/api/migrations/${encodeURIComponent(mig)}/cancel`, vm ? { vm } : {}, `cancel ${vm || mig}`);
const cutover = (mig) => act(`/api/migrations/${encodeURIComponent(mig)}/cutover`, { cutover: S.drafts[`cutover:${mig}`] || "now" }, `cutover of ${mig}`);

// -- rendering ------------------------------------------------------------------------

function renderVm(vm) {
  const rate = S.rates[vm.key];
  const steps = vm.steps.map((s) => el("li", {
    class: `step ${s.status}`,
    title: `${s.status}${s.reason ? `: ${s.reason}` : ""}`,
    "data-step": s.name,
  }, s.name, s.attempt > 1 ? ` ×${s.attempt}` : "", s.seconds !== null ? ` ${seconds(s.seconds)}` : ""));
  const disks = vm.disks.map((d) => el("div", { class: "disk", "data-disk": d.id },
    el("span", {}, d.name),
    el("progress", { max: d.total || 1, value: d.done }),
    el("span", { class: "disk-bytes" }, `${bytes(d.done)} / ${bytes(d.total)}`)));
  const errors = vm.errors.map((e) => el("div", { class: "errors" },
    `${e.step} (attempt ${e.attempt})${e.permanent ? " permanent" : ""}: ${e.reason}`));
  const ended = ["Succeeded", "Failed", "Canceled"].includes(vm.status);
  return el("div", { class: "vm", "data-vm": vm.key },
    el("div", { class: "vm-head" },
      el("strong", {}, vm.name),
      el("span", { class: `status ${vm.status}` }, vm.status),
      el("span", { class: "phase" }, vm.phase),
      vm.warm ? el("span", {}, `precopy rounds: ${vm.precopy}`) : null,
      el("span", { class: "bytes" }, `${bytes(vm.done)} / ${bytes(vm.total)}`),
      el("span", { class: "rate" }, rate ? `${bytes(rate)}/s` : ""),
      vm.stage ? el("span", { class: "stage" }, vm.stage) : null,
      vm.estimated === null || vm.estimated === undefined ? null : el("span", { class: "estimated" },
        `estimated ${clock(vm.estimated)}` + (vm.estimate_error === null || vm.estimate_error === undefined
          ? "" : ` (${vm.estimate_error >= 0 ? "+" : ""}${Math.round(vm.estimate_error * 100)}%)`)),
      ended ? null : el("button", { class: "danger cancel-vm", onclick: () => cancel(vm.migration, vm.vm) }, "Cancel VM")),
    el("ul", { class: "pipeline" }, steps),
    disks, errors,
    vm.cancel_reason ? el("div", { class: "errors" }, `canceled: ${vm.cancel_reason}`) : null);
}

function reasons(map) {
  const items = Object.entries(map || {}).flatMap(([vm, rs]) => rs.map((r) => el("li", {}, `${vm}: ${r}`)));
  return items.length ? el("ul", { class: "reasons" }, items) : null;
}

function renderMigration(m) {
  const key = `cutover:${m.name}`;
  const warm = m.vms.some((v) => v.warm);
  return el("div", { class: "card migration", "data-migration": m.name },
    el("h3", {},
      el("span", {}, m.name),
      el("span", { class: `status ${m.phase}` }, m.phase),
      el("span", {}, `plan ${m.plan}`),
      m.started ? el("span", {}, `started ${m.started}`) : null,
      m.cutover ? el("span", {}, `cutover ${m.cutover}`) : null,
      m.ended ? null : el("button", { class: "danger cancel-migration", onclick: () => cancel(m.name) }, "Cancel migration"),
      m.ended || !warm ? null : el("span", {},
        el("input", { placeholder: "RFC 3339 or now", value: S.drafts[key] || "", oninput: (e) => { S.drafts[key] = e.target.value; } }),
        el("button", { onclick: () => cutover(m.name) }, m.cutover ? "Move cutover" : "Set cutover"))),
    reasons(m.reasons),
    m.vms.map(renderVm));
}

function renderPlan(p) {
  return el("div", { class: "card plan", "data-plan": p.name },
    el("h3", {}, el("span", {}, p.name), el("span", {}, `${p.source} → ${p.destination}`),
      el("span", {}, p.warm ? "warm" : "cold"),
      el("button", { class: "start-plan", onclick: () => startPlan(p.name) }, "Start migration")),
    p.description ? el("div", {}, p.description) : null,
    el("div", {}, "VMs: ", p.vms.map((v) => v.name || v.id).join(", "),
      p.succeeded.length ? ` (already migrated: ${p.succeeded.length})` : ""),
    reasons(p.reasons),
    renderEstimate(p.estimate, p.cold_only));
}

const clock = (s) => {
  s = Math.round(s);
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
};

const WARM_ONLY_INPUTS = new Set(["final_delta"]);

// Every number with the inputs behind it, measured or assumed, so a person can judge it;
// a source that cannot run warm (coldOnly says why) gets the cold figures only.
function renderEstimate(e, coldOnly) {
  if (!e) return null;
  const heads = ["VM", "size", "cold", "cold downtime"].concat(coldOnly ? [] : ["warm", "warm downtime"]);
  return el("div", { class: "estimate" },
    el("div", {}, `Estimate (${e.warm ? "warm" : "cold"}): whole plan ≈ ${clock(e.duration)}`),
    coldOnly ? el("div", { class: "cold-only" }, `cold only: ${coldOnly}`) : null,
    el("table", {},
      el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))),
      el("tbody", {}, e.vms.map((v) => el("tr", {},
        el("td", {}, v.name), el("td", {}, v.bytes ? bytes(v.bytes) : "unknown"),
        el("td", {}, clock(v.cold_duration)), el("td", {}, clock(v.cold_downtime)),
        coldOnly ? null : el("td", {}, clock(v.warm_duration)),
        coldOnly ? null : el("td", {}, clock(v.warm_downtime)))))),
    el("ul", { class: "inputs" }, e.inputs.filter((i) => !(coldOnly && WARM_ONLY_INPUTS.has(i.name))).map((i) => el("li", {},
      `${i.name}: ${i.unit === "B/s" ? bytes(i.value) + "/s" : i.unit === "s" ? clock(i.value) : i.value + " " + i.unit}`
      + ` (${i.probed ? "probed" : i.measured ? "measured" : "assumed"}${i.basis ? ": " + i.basis : ""})`))));
}

function renderProvider(p) {
  return el("div", { class: "card provider", "data-provider": p.name },
    el("h3", {}, el("span", {}, p.name), el("span", {}, p.type), p.url ? el("code", {}, p.url) : null,
      p.inventory_read ? el("span", { class: "read" }, `read ${p.inventory_read}`) : null),
    p.inventory_error ? el("div", { class: "errors" }, `cannot read: ${p.inventory_error}`) : null,
    p.inventory_left_out ? el("div", {}, `… and ${p.inventory_left_out} more VMs not listed`) : null,
    p.inventory.length ? el("table", {},
      el("thead", {}, el("tr", {}, ["VM", "power", "CPUs", "memory", "host", "disks", "warnings"].map((h) => el("th", {}, h)))),
      el("tbody", {}, p.inventory.map((v) => el("tr", {},
        el("td", {}, v.name), el("td", {}, v.power), el("td", {}, v.cpus), el("td", {}, `${v.memory_mib} MiB`),
        el("td", {}, v.host), el("td", {}, v.disks.map((d) => `${d.name} ${bytes(d.capacity)}`).join(", ")),
        el("td", {}, v.warnings.join("; ")))))) : el("p", { class: "empty" }, p.inventory_read ? "No VM at this source." : "Not read yet."));
}

function fill(id, items, render) {
  const box = $(id);
  if (!items.length) return;
  box.replaceChildren(...items.map(render));
}

function options(id, values) {
  const select = $(id);
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"), ...[...values].sort().map((v) => el("option", { value: v }, v)));
  select.value = chosen;
}

function render() {
  const s = S.snap;
  fill("migrations", s.migrations, renderMigration);
  fill("plans", s.plans, renderPlan);
  fill("providers", s.providers, renderProvider);
  options("f-plan", new Set(S.log.map((e) => e.data.plan).filter(Boolean)));
  options("f-migration", new Set(S.log.map((e) => e.data.migration).filter(Boolean)));
  options("f-vm", new Set(S.log.map((e) => e.data.vm).filter((v) => v && v !== "*")));
  renderLog();
}

function summary(e) {
  const d = e.data;
  const parts = [];
  if (d.step) parts.push(d.step);
  if (d.attempt > 1) parts.push(`attempt ${d.attempt}`);
  if (d.total) parts.push(`${bytes(d.done)} / ${bytes(d.total)}`);
  if (d.stage) parts.push(d.stage);
  if (d.reason) parts.push(d.reason);
  if (d.reasons) parts.push(Object.entries(d.reasons).map(([vm, rs]) => `${vm}: ${rs.join("; ")}`).join(" | "));
  if (d.seconds) parts.push(seconds(d.seconds));
  return parts.join(" · ");
}

function renderLog() {
  const f = { plan: $("f-plan").value, migration: $("f-migration").value, vm: $("f-vm").value };
  const rows = S.log.filter((e) => (!f.plan || e.data.plan === f.plan)
    && (!f.migration || e.data.migration === f.migration) && (!f.vm || e.data.vm === f.vm));
  $("log").tBodies[0].replaceChildren(...rows.slice(-300).reverse().map((e) => el("tr", { class: /fail|reject/.test(e.type) ? "errors" : "" },
    el("td", {}, e.seq), el("td", {}, e.time), el("td", {}, e.type), el("td", {}, e.data.migration),
    el("td", {}, e.data.vm), el("td", {}, summary(e)))));
}

// -- the live stream --------------------------------------------------------------------

function findVm(d) {
  for (const m of S.snap.migrations) {
    if (m.name !== d.migration) continue;
    return m.vms.find((v) => v.vm === d.vm) || null;
  }
  return null;
}

function apply(e) {
  const d = e.data;
  const vm = findVm(d);
  if (e.type === "migration.progress.v1" && vm) {
    const seen = S.rates[`${vm.key}:last`];
    const now = Date.parse(e.time) / 1000;
    if (seen && now > seen.t && d.done >= seen.done) S.rates[vm.key] = (d.done - seen.done) / (now - seen.t);
    S.rates[`${vm.key}:last`] = { t: now, done: d.done };
    vm.done = d.done; vm.total = d.total || vm.total;
    for (const disk of vm.disks) if (d.disks[disk.id] !== undefined) disk.done = d.disks[disk.id];
    return true;
  }
  if (e.type === "volume.disk_progress.v1" && vm) {
    const disk = vm.disks.find((x) => x.id === d.disk_id);
    if (disk) { disk.done = d.done; disk.total = d.total || disk.total; }
    if (d.rate) S.rates[vm.key] = d.rate;
    if (d.precopy > vm.precopy) vm.precopy = d.precopy;
    return true;
  }
  if (e.type === "conversion.progress.v1" && vm) {
    vm.stage = `${d.stage}${d.percent !== null && d.percent !== undefined ? ` ${d.percent.toFixed(0)}%` : ""}`;
    return true;
  }
  return false;
}

function scheduleRefresh() {
  clearTimeout(S.refreshTimer);
  S.refreshTimer = setTimeout(refresh, 250);
}

async function refresh() {
  const response = await fetch("/api/snapshot", { cache: "no-store" });
  if (!response.ok) { notice(`cannot read the views: ${response.status}`); return; }
  const snap = await response.json();
  const stages = {};
  if (S.snap) for (const m of S.snap.migrations) for (const v of m.vms) if (v.stage) stages[v.key] = v.stage;
  for (const m of snap.migrations) for (const v of m.vms) if (stages[v.key] && v.status === "Running") v.stage = stages[v.key];
  for (const p of snap.plans) if (p.probing && S.probes[p.name]) { p.estimate = S.probes[p.name]; p.probing = false; }
  S.snap = snap;
  S.applied = Math.max(S.applied, snap.position);
  render();
  for (const p of snap.plans) if (p.probing) probe(p.name);
}

// A plan whose pair never migrated: the snapshot shows the assumed throughput while the
// console reads the source; this one request waits for that read (a few seconds at most)
// and puts the probed estimate in place. The page is never held by it.
const probing = new Set();
async function probe(plan) {
  if (probing.has(plan)) return;
  probing.add(plan);
  try {
    const response = await fetch(`/api/plans/${encodeURIComponent(plan)}/estimate`, { cache: "no-store" });
    if (!response.ok) return;
    const got = await response.json();
    S.probes[plan] = got.estimate;
    const p = S.snap && S.snap.plans.find((x) => x.name === plan);
    if (p) { p.estimate = got.estimate; p.probing = got.probing; p.cold_only = got.cold_only; render(); }
  } finally {
    probing.delete(plan);
  }
}

function follow() {
  const after = Math.max(0, S.snap.position - (S.snap.event_log || 0));
  const es = new EventSource(`/api/events?after=${after}`);
  S.es = es;
  es.onopen = () => { $("live").textContent = "live"; $("live").className = "live on"; };
  es.onerror = () => { $("live").textContent = "reconnecting…"; $("live").className = "live off"; };
  es.addEventListener("audit", (msg) => {
    const e = JSON.parse(msg.data);
    S.log.push(e);
    if (S.log.length > LOG_MAX) S.log.splice(0, S.log.length - LOG_MAX);
    // Events up to the snapshot's position are already in it: they only fill the log.
    if (e.seq > S.applied) {
      S.applied = e.seq;
      if (!apply(e)) { scheduleRefresh(); }
    }
    render();
  });
}

async function main() {
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("ferry-token", $("token").value.trim());
    $("token").value = "";
    const ok = await act("/api/session", {}, "token");
    $("token-state").textContent = ok ? "accepted" : "refused";
  });
  for (const id of ["f-plan", "f-migration", "f-vm"]) $(id).addEventListener("change", renderLog);
  await refresh();
  follow();
}

main().catch((err) => notice(`console failed to start: ${err}`));
