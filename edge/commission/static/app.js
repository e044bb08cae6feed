// The commissioning page: polls /api/status every second while visible; POSTs carry the
// session's CSRF token. Plain DOM, no framework, no build step.
"use strict";
let csrf = "";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body || {}),
  });
  if (!response.ok) throw new Error(await response.text());
  return response.json();
}

function banner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}

function fmtAge(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.round(seconds / 60)} min`;
}

function renderDevices(devices) {
  const box = $("devices");
  box.replaceChildren();
  for (const d of devices) {
    const loc = Object.values(d.location || {}).filter(Boolean).join(", ");
    const points = el("div", { class: "points" });
    for (const [point, r] of Object.entries(d.points)) {
      const value = Number(r.value.toFixed(2));
      points.append(
        el("span", {}, point),
        el("span", { class: "value", "data-point": point }, `${value} ${r.unit}`),
        el("span", { class: r.age_s > 10 ? "age stale" : "age" }, fmtAge(r.age_s)),
      );
    }
    box.append(el("div", { class: "device", "data-device": d.id },
      el("div", { class: "head" },
        el("span", { class: "id" }, d.id),
        el("span", { class: `pill ${d.status}` }, d.status)),
      el("div", { class: "meta" }, `${d.model} · ${d.bus} / ${d.address ?? "-"} · ${loc}`),
      d.reason ? el("div", { class: "meta" }, d.reason) : "",
      points));
  }
}

function renderAlarms(status) {
  $("buzzer").textContent = `buzzer ${status.buzzer}`;
  $("buzzer").className = `pill ${status.buzzer}`;
  const list = $("alarms");
  list.replaceChildren();
  if (!status.alarms.length) list.append(el("li", { class: "muted" }, "none"));
  for (const a of status.alarms) {
    list.append(el("li", { class: "alarm" },
      `${a.device}: ${a.rule} (${a.severity}) ${a.value ?? ""}${a.silenced ? " · silenced" : ""}`));
  }
}

function renderBuses(buses, scan) {
  const table = el("table", {}, el("tr", {}, ...["bus", "kind", "requests", "timeouts", "errors"]
    .map((h) => el("th", {}, h))));
  for (const [id, b] of Object.entries(buses)) {
    table.append(el("tr", {}, el("td", {}, id), el("td", {}, b.kind),
      el("td", {}, String(b.requests ?? "-")), el("td", {}, String(b.timeouts ?? "-")),
      el("td", {}, String(b.errors ?? "-"))));
  }
  const box = $("buses");
  box.replaceChildren(table);
  if (scan) box.append(scan);
}

let lastScan = null;
function renderScan(result) {
  const list = el("ul", { class: "list", id: "scan-result" });
  for (const [bus, b] of Object.entries(result.buses)) {
    for (const d of b.devices) {
      list.append(el("li", {}, `${bus} / ${d.address ?? "-"}: ${d.device} ${d.answers ? "answers" : "does not answer"}`));
    }
    if (b.idle && b.kind.startsWith("modbus")) {
      const sweep = el("button", { type: "button", class: "small", "data-sweep": bus }, "Sweep 1-247");
      sweep.addEventListener("click", () => runSweep(bus, sweep));
      list.append(el("li", {}, `${bus}: no device yet `, sweep));
    }
  }
  return list;
}

async function runSweep(bus, button) {
  button.disabled = true;
  button.textContent = "sweeping…";
  const result = await post("/api/scan", { sweep: bus });
  button.textContent = "Sweep 1-247";
  button.disabled = false;
  if (!result.ok) { banner(`Sweep refused: ${result.error}`); return; }
  const found = result.found.map((f) => `${f.address}${f.models.length ? ` (${f.models.join(", ")})` : ""}`);
  lastScan.append(el("li", { class: "sweep" }, `${bus}: ${found.length ? `answer at ${found.join(", ")}` : "nothing answers"} (${result.seconds.toFixed(1)} s)`));
}

function renderOutputs(outputs) {
  for (const step of document.querySelectorAll(".step")) {
    const present = outputs[step.dataset.output];
    step.querySelector(".run").disabled = !present || step.dataset.running === "1";
    step.querySelector(".ask").hidden = !present;
    step.classList.toggle("absent", !present);
  }
}

function renderAnswers(answers) {
  for (const step of document.querySelectorAll(".step")) {
    const value = answers[step.dataset.output];
    step.querySelector(".answer").textContent = value === null ? "" : value ? "✔ yes" : "✘ no";
  }
}

async function refresh() {
  if (document.visibilityState === "hidden") return;
  try {
    const response = await fetch("/api/status");
    if (response.status === 401) { banner("Session ended: run edge commission again."); return; }
    const data = await response.json();
    if (!data.ok) { banner(`Gateway not answering: ${data.error}`); return; }
    banner("");
    renderDevices(data.status.devices);
    renderAlarms(data.status);
    renderBuses(data.status.buses, lastScan);
    renderOutputs(data.status.outputs);
    renderAnswers(data.answers);
  } catch (error) {
    banner(`The commissioning server does not answer (${error.message}).`);
  }
}

async function start() {
  const session = await (await fetch("/api/session")).json();
  csrf = session.csrf;
  $("site").textContent = session.site.name;
  $("gateway").textContent = `${session.gateway} · ${session.site.address || ""}`;
  const checks = await (await fetch("/api/checks")).json();
  $("checks").replaceChildren(
    el("div", { class: checks.valid ? "" : "alarm" }, checks.valid ? "valid" : "has errors"),
    ...checks.lines.map((line) => el("div", { class: "muted" }, line)));
  for (const step of document.querySelectorAll(".step")) {
    const output = step.dataset.output;
    const run = step.querySelector(".run");
    run.addEventListener("click", async () => {
      run.disabled = true;
      step.dataset.running = "1";
      const label = run.textContent;
      run.textContent = "running…";
      try {
        const result = await post("/api/selftest", { output });
        if (!result.ok) banner(`Self-test refused: ${result.error}`);
      } catch (error) { banner(error.message); }
      run.textContent = label;
      step.dataset.running = "";
      run.disabled = false;
    });
    for (const [cls, yes] of [["yes", true], ["no", false]]) {
      step.querySelector(`.${cls}`).addEventListener("click", async () => {
        renderAnswers((await post("/api/answer", { output, yes })).answers);
      });
    }
  }
  $("scan").addEventListener("click", async () => {
    const result = await post("/api/scan");
    if (!result.ok) { banner(`Scan refused: ${result.error}`); return; }
    lastScan = renderScan(result);
    refresh();
  });
  $("record-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = await post("/api/record", { by: $("by").value, notes: $("notes").value });
    $("record").hidden = false;
    $("record-result").textContent = result.submitted
      ? `Record sent to the platform (${result.record.at}).`
      : `Record kept here but not sent: ${result.error}`;
  });
  refresh();
  setInterval(refresh, 1000);
}

document.addEventListener("DOMContentLoaded", start);
