// Gatehouse dashboard: reads /v1/overview every few seconds with the token kept in this
// tab's session storage; its buttons call the same admin API as the CLI. Data is written
// with textContent only: names from DNS or the API never become markup.
"use strict";

const REFRESH_MS = 2000;
const KEY = "gatehouse-admin-token";
let previous = null; // the last overview, for rates
let timer = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(method, path) {
  const token = sessionStorage.getItem(KEY) || "";
  const r = await fetch(path, { method, headers: { Authorization: "Bearer " + token } });
  let body = null;
  try { body = await r.json(); } catch (_) { body = { error: r.statusText }; }
  if (!r.ok) {
    const err = new Error((body && body.error) || r.status + "");
    err.status = r.status;
    throw err;
  }
  return body;
}

function ago(unix, now) {
  if (!unix) return "never";
  const s = Math.max(0, now - unix);
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function setRows(table, rows) {
  const body = $(table).tBodies[0];
  body.replaceChildren(...rows);
}

function card(label, value, cls) {
  return el("div", { class: "card" }, el("b", { class: cls || "" }, value), label);
}

function instanceLine(app, i) {
  const state = i.drained ? ["drained", "warn"] : !i.up ? ["down", "bad"] : !i.healthy ? ["backing off", "warn"] : ["serving", "ok"];
  const action = i.drained ? "undrain" : "drain";
  const button = el("button", {
    "data-action": action, "data-app": app.id, "data-address": i.address,
    onclick: async (ev) => {
      ev.target.disabled = true;
      try {
        await api(i.drained ? "DELETE" : "POST", `/v1/apps/${encodeURIComponent(app.id)}/instances/${encodeURIComponent(i.address)}/drain`);
      } catch (e) { alert(action + " failed: " + e.message); }
      refresh();
    },
  }, i.drained ? "Undrain" : "Drain");
  return el("div", { class: "instance", "data-instance": app.id + "/" + i.address },
    el("span", { class: "mono" }, i.address),
    el("span", { class: "badge " + state[1], "data-state": state[0] }, state[0]),
    el("span", { class: "muted" }, i.source + ", " + i.active + " active"),
    button);
}

function appRow(app, dt) {
  let rate = "–", latency = "–";
  if (app.requests) {
    const before = previous && previous.apps.find((a) => a.id === app.id);
    if (before && before.requests && dt > 0) {
      const n = app.requests.total - before.requests.total;
      rate = (n / dt).toFixed(1);
      latency = n > 0 ? ((app.requests.sum_micros - before.requests.sum_micros) / n / 1000).toFixed(1) + " ms" : "–";
    }
  }
  return el("tr", { "data-app": app.id },
    el("td", {}, el("b", {}, app.id), el("div", { class: "muted" }, app.names.join(", ")), el("div", { class: "muted" }, app.origin)),
    el("td", {}, app.mode),
    el("td", {}, app.active_connections + (app.max_connections ? " / " + app.max_connections : "")),
    el("td", {}, rate),
    el("td", {}, latency),
    el("td", {}, ...(app.instances.length ? app.instances.map((i) => instanceLine(app, i)) : [el("span", { class: "muted" }, "no instance")])));
}

function certRow(c, caa, now) {
  const days = c.days_left;
  const cls = days < 7 ? "bad" : days < 21 ? "warn" : "ok";
  const verdicts = c.names.map((n) => caa.verdicts[n.replace(/^\*\./, "")] || caa.verdicts[n]).filter(Boolean);
  const lock = verdicts.length === 0 ? ["not checked", "muted"] : verdicts.every((v) => v.startsWith("locked")) ? ["locked", "ok"] : ["NOT locked", "bad"];
  const renew = c.id ? el("button", {
    "data-action": "renew", "data-cert": c.id,
    onclick: async (ev) => {
      ev.target.disabled = true;
      try { await api("POST", `/v1/certificates/${encodeURIComponent(c.id)}/renew`); } catch (e) { alert("renew failed: " + e.message); }
      refresh();
    },
  }, "Renew") : null;
  return el("tr", {},
    el("td", { class: "mono" }, c.names.join(", ")),
    el("td", { class: cls }, days),
    el("td", {}, c.key_origin),
    el("td", { class: "muted" }, c.issuer),
    el("td", { class: lock[1] }, lock[0]),
    el("td", {}, c.next_renewal ? new Date(c.next_renewal * 1000).toISOString().slice(0, 16).replace("T", " ") : "–"),
    el("td", {}, renew));
}

function attestation(a) {
  const dl = $("attestation");
  if (a.error) { dl.replaceChildren(el("dt", {}, "status"), el("dd", { class: "warn" }, a.error)); return; }
  const ok = a.tcb_status === "UpToDate";
  const keys = (a.keys || []).map((k) => k.spki_sha256.slice(0, 12) + "… " +
    (k.origin === "tee" ? "made in the TEE, sealed by " + k.sealing : k.origin === "imported" ? "imported from a file (the operator holds it)" : k.origin)).join("; ");
  const facts = [["TEE", a.tee, a.tee === "tdx" ? "ok" : "warn"], ["TCB status", a.tcb_status, ok ? "ok" : "warn"],
    ["Sealing", a.sealing, a.sealing === "tee" ? "ok" : "warn"], ["MRTD", a.mrtd, "mono"],
    ["RTMR0", a.rtmr[0], "mono"], ["RTMR1", a.rtmr[1], "mono"], ["RTMR2", a.rtmr[2], "mono"], ["RTMR3", a.rtmr[3], "mono"],
    ["Keys", keys || "none", ""]];
  dl.replaceChildren(...facts.flatMap(([k, v, cls]) => [el("dt", {}, k), el("dd", { class: cls }, v)]));
}

function render(o) {
  const dt = previous ? o.now - previous.now : 0;
  const drained = o.apps.reduce((n, a) => n + a.instances.filter((i) => i.drained).length, 0);
  const instances = o.apps.reduce((n, a) => n + a.instances.length, 0);
  const soonest = o.certificates.length ? Math.min(...o.certificates.map((c) => c.days_left)) : null;
  $("summary").replaceChildren(
    card("apps", o.apps.length),
    card("instances (" + drained + " drained)", instances, drained ? "warn" : ""),
    card("connections open", o.connections.active),
    card("connections/s", previous && dt > 0 ? ((o.connections.accepted - previous.connections.accepted) / dt).toFixed(1) : "–"),
    card("days to the first expiry", soonest === null ? "–" : soonest, soonest !== null && soonest < 21 ? "warn" : "ok"),
    card("TCB", o.attestation.tcb_status || "off", o.attestation.tcb_status === "UpToDate" ? "ok" : "warn"));
  setRows("apps", o.apps.map((a) => appRow(a, dt)));
  setRows("certs", o.certificates.map((c) => certRow(c, o.caa, o.now)));
  attestation(o.attestation);
  $("vpc-section").hidden = !o.vpc;
  if (o.vpc) {
    const byKey = Object.fromEntries(o.vpc.leases.map((l) => [l.public_key, l]));
    setRows("vpc", o.vpc.peers.map((p) => {
      const l = byKey[p.public_key];
      const fresh = p.last_handshake && o.now - p.last_handshake < 180;
      return el("tr", {}, el("td", { class: "mono" }, p.public_key.slice(0, 12) + "…"),
        el("td", {}, l ? l.app_id + " " + l.address : "gateway"), el("td", { class: "mono" }, p.endpoint || "–"),
        el("td", { class: fresh ? "ok" : "warn" }, ago(p.last_handshake, o.now)), el("td", {}, bytes(p.rx_bytes)), el("td", {}, bytes(p.tx_bytes)));
    }));
  }
  $("nodes-section").hidden = !o.nodes || !o.nodes.members;
  if (o.nodes && o.nodes.members) {
    setRows("nodes", o.nodes.members.map((m) => el("tr", {}, el("td", {}, m.info.name), el("td", { class: "mono" }, (m.info.listen || []).join(", ")),
      el("td", {}, m.info.version), el("td", {}, ago(m.last_heartbeat, o.now)))));
  }
  $("status").textContent = "updated " + new Date(o.now * 1000).toISOString().slice(11, 19) + " UTC";
  previous = o;
}

async function refresh() {
  try {
    render(await api("GET", "/v1/overview"));
  } catch (e) {
    if (e.status === 401) return signOut("the token was refused");
    $("status").textContent = "cannot reach the gateway: " + e.message;
  }
}

function signedIn() {
  $("login").hidden = true;
  $("board").hidden = false;
  $("signout").hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

function signOut(why) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  previous = null;
  $("board").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = why || "";
  $("status").textContent = "signed out";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    try { await api("GET", "/v1/overview"); signedIn(); } catch (e) { signOut(e.status === 401 ? "the token was refused" : e.message); }
  });
  $("signout").addEventListener("click", () => signOut());
  if (sessionStorage.getItem(KEY)) signedIn();
  document.body.dataset.ready = "1"; // the handlers are in place (tests wait for this)
});
