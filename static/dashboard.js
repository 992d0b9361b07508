// The dashboard: plain DOM, no framework. Everything shown is built with
// textContent, never innerHTML, so user-supplied names cannot inject markup.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const badge = (text) => el("span", { class: `badge b-${text}` }, text);

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => null);
  return { ok: response.ok, status: response.status, body };
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : new Date(iso).toLocaleString();
}

function renderStep(step) {
  const attempts = step.attempts.length;
  const last = step.attempts[attempts - 1];
  const failed = step.attempts.filter((a) => a.error);
  return el("div", { class: `step s-${step.status}` },
    el("div", { class: "name" }, step.name),
    el("div", {}, badge(step.status)),
    attempts ? el("div", { class: "att" }, `${attempts} attempt${attempts > 1 ? "s" : ""}` +
      (step.durationMs != null ? ` · ${step.durationMs} ms` : "")) : null,
    step.retryAt && step.status === "RETRYING" ? el("div", { class: "att" }, `retry at ${new Date(step.retryAt).toLocaleTimeString()}`) : null,
    ...failed.map((a) => el("div", { class: "err" }, `#${a.number}: ${a.error}`)),
    last && !last.finishedAt ? el("div", { class: "att" }, "running…") : null,
  );
}

const details = new Map();

async function refreshRuns() {
  const status = $("#status-filter").value;
  const { ok, body } = await api(`/api/workflows?limit=30${status ? `&status=${status}` : ""}`);
  if (!ok) return;
  const container = $("#runs");
  const nodes = [];
  for (const run of body.workflows) {
    let detail = details.get(run.id);
    if (!detail || detail.updatedAt !== run.updatedAt) {
      const answer = await api(`/api/workflows/${run.id}`);
      if (!answer.ok) continue;
      detail = answer.body;
      details.set(run.id, detail);
    }
    nodes.push(el("article", { class: "run", "aria-label": `run for ${run.email}` },
      el("div", { class: "run-head" },
        el("span", { class: "email" }, run.email), badge(detail.status), badge(detail.user.status),
        el("span", { class: "meta" }, `${run.id} · ${ago(run.createdAt)}`)),
      el("div", { class: "steps" }, ...detail.steps.map(renderStep)),
    ));
  }
  container.replaceChildren(...(nodes.length ? nodes : [el("p", { class: "hint" }, "No runs yet: sign someone up.")]));
}

async function verify(link, button) {
  button.disabled = true;
  const token = new URL(link).searchParams.get("token");
  const { ok, body } = await api("/api/verify", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }),
  });
  button.textContent = ok ? "Verified" : (body && body.error ? body.error.message : "Failed");
  refresh();
}

async function refreshOutbox() {
  const { ok, status, body } = await api("/api/outbox?limit=20");
  if (status === 404) { $("#outbox-card").hidden = true; return; }
  if (!ok) return;
  $("#outbox").replaceChildren(...body.emails.map((email) => {
    const user = users.get(email.userId);
    const done = user && user.verifiedAt;
    return el("li", {},
      el("div", {}, el("div", {}, `${email.subject} → ${email.to}`),
        el("div", { class: "meta" }, `${email.kind} · ${email.messageId} · ${ago(email.sentAt)}`)),
      el("button", { type: "button", onclick: (ev) => verify(email.link, ev.target), ...(done ? { disabled: "" } : {}) },
        done ? "Verified" : "Verify email"));
  }));
}

const users = new Map();

async function refreshUsers() {
  const { ok, body } = await api("/api/users?limit=50");
  if (!ok) return;
  for (const user of body.users) users.set(user.id, user);
  $("#users tbody").replaceChildren(...body.users.map((u) => el("tr", {},
    el("td", {}, u.email), el("td", {}, u.name), el("td", {}, badge(u.status)),
    el("td", {}, u.risk ? badge(u.risk.decision) : "—"), el("td", {}, u.risk ? u.risk.score : "—"),
    el("td", {}, u.risk ? u.risk.source : "—"), el("td", { class: "reasons" }, u.risk ? u.risk.reasons.join("; ") : ""))));
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try { await refreshUsers(); await Promise.all([refreshRuns(), refreshOutbox()]); }
  catch (err) { console.warn("refresh failed", err); }
  finally { busy = false; }
}

$("#signup").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const msg = $("#signup-msg");
  const { ok, body } = await api("/api/signup", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: form.name.value, email: form.email.value }),
  });
  msg.className = ok ? "ok" : "error";
  msg.textContent = ok ? `Signed up: run ${body.workflowId}` : body.error.message;
  if (ok) form.reset();
  refresh();
});
$("#status-filter").addEventListener("change", refresh);

refresh();
setInterval(refresh, 1000);
