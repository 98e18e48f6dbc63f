// The Keystile console: a few pages over the admin API, no build step. Every value from the
// API goes into the page as text (textContent), never as markup. The credential lives only in
// the HttpOnly session cookie; raw keys exist on screen only in the one-time box after create
// and rotate, and nowhere else.

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const flash = document.getElementById("flash");
let me = null; // {kind: "operator"} or {kind: "key", org_id, key_id, name, prefix}
let refresher = null;
let loggedOutBecause = null; // why a session ended, for the login page to say
let newSecret = null; // {raw, what}: a rotated secret, shown on every page until dismissed

// ---- DOM and API helpers --------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the admin API answered ${status}`);
    this.status = status;
    this.code = error.code || "";
    this.fields = error.fields || [];
  }
}

// The admin API under the console's own prefix, where the session cookie is sent and
// accepted; /console/session itself is not prefixed.
async function api(method, path, body) {
  if (path.startsWith("/v1/")) path = `/console/api${path}`;
  const init = { method, credentials: "same-origin", headers: { "X-Keystile-Console": "1" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: { message: "the admin API cannot be reached; is it running?" } });
  }
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

function say(message, kind = "error") {
  flash.replaceChildren();
  if (!message) return;
  flash.append(h("p", { class: `flash ${kind}` }, message));
}

// What ends a session: a 401, or the logged-in key itself paused (403 key_paused).
const sessionEnded = (err) => err.status === 401 || (err.code === "key_paused" && me && me.kind === "key");

function sayError(err) {
  if (sessionEnded(err) && me !== null) {
    me = null;
    loggedOutBecause = err.message;
    location.hash = "#/login";
    return;
  }
  const lines = [err.code ? `${err.message} (${err.code})` : err.message];
  const box = h("div", { class: "flash error" }, h("p", {}, lines[0]));
  if (err.fields.length) box.append(h("ul", {}, err.fields.map((f) => h("li", {}, `${f.field}: ${f.message}`))));
  flash.replaceChildren(box);
  flash.scrollIntoView({ block: "nearest" }); // a form far down the page: show its error
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "never");
const link = (href, text) => h("a", { href }, text);

function table(caption, headers, rows) {
  return h("div", { class: "scroll", role: "region", "aria-label": caption, tabindex: "0" },
    h("table", {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))
        : h("tr", {}, h("td", { colspan: String(headers.length) }, "Nothing to show.")))));
}

function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) input.setAttribute("aria-describedby", hintId);
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    hint ? h("small", { id: hintId }, hint) : null);
}

function select(name, options, value) {
  return h("select", { name }, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)));
}

function page(title, ...children) {
  document.title = `${title} · Keystile console`;
  view.replaceChildren(h("h1", {}, title), ...children.filter((c) => c !== null && c !== false));
  // Kept across pages: rotating the key you are logged in with ends the session at once.
  if (newSecret) view.firstChild.after(oneTime(newSecret.raw, newSecret.what, () => { newSecret = null; }));
}

// ---- charts -----------------------------------------------------------------------------------

const SERIES = [ // what a bar is made of, bottom to top; colours keep 3:1 against white
  ["forwarded", "Forwarded", "#1f6f43"],
  ["rate_limited", "Rate limited", "#b3261e"],
  ["usage_exceeded", "Quota or usage limit spent", "#8a4b00"],
  ["other", "Other refusals", "#37474f"],
];

function parts(point) {
  const out = { forwarded: point.forwarded, other: 0 };
  for (const [code, n] of Object.entries(point.refused)) {
    if (SERIES.some(([k]) => k === code)) out[code] = n; else out.other += n;
  }
  return out;
}

function swatch(colour) {
  const el = h("span", { class: "swatch", "aria-hidden": "true" });
  el.style.backgroundColor = colour; // through the CSSOM: the page allows no inline styles
  return el;
}

function chart(series, title) {
  const W = 720, H = 220, pad = 28, n = series.points.length;
  const max = Math.max(1, ...series.points.map((p) => p.requests));
  const bw = (W - pad) / n;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 20}`);
  svg.setAttribute("role", "img");
  const t = series.totals;
  const refused = Object.entries(t.refused).map(([c, k]) => `${k} ${c}`).join(", ") || "none refused";
  svg.setAttribute("aria-label", `${title}: ${t.requests} requests, ${t.forwarded} forwarded, ${refused}`);
  const line = (y, label) => {
    const l = document.createElementNS(ns, "line");
    Object.entries({ x1: pad, x2: W, y1: y, y2: y, class: "grid" }).forEach(([k, v]) => l.setAttribute(k, v));
    const tx = document.createElementNS(ns, "text");
    Object.entries({ x: 0, y: y + 4, class: "axis" }).forEach(([k, v]) => tx.setAttribute(k, v));
    tx.textContent = label;
    svg.append(l, tx);
  };
  line(H, "0");
  line(H / 2, String(Math.round(max / 2)));
  line(4, String(max));
  series.points.forEach((p, i) => {
    let y = H;
    const got = parts(p);
    for (const [k, label, colour] of SERIES) {
      const v = got[k] || 0;
      if (!v) continue;
      const hgt = (v / max) * (H - 4);
      y -= hgt;
      const r = document.createElementNS(ns, "rect");
      Object.entries({ x: pad + i * bw + 1, y, width: Math.max(bw - 2, 1), height: hgt, fill: colour })
        .forEach(([a, val]) => r.setAttribute(a, val));
      const tip = document.createElementNS(ns, "title");
      tip.textContent = `${when(p.at)}: ${v} ${label.toLowerCase()}`;
      r.append(tip);
      svg.append(r);
    }
  });
  const legend = h("ul", { class: "legend" }, SERIES.map(([, label, colour]) =>
    h("li", {}, swatch(colour), label)));
  const busy = series.points.filter((p) => p.requests);
  const data = h("details", {}, h("summary", {}, "Show the numbers"),
    table(`${title}, non-empty intervals`, ["From", "Requests", "Forwarded", "Refused"],
      busy.map((p) => [when(p.at), String(p.requests), String(p.forwarded),
        Object.entries(p.refused).map(([c, k]) => `${c}: ${k}`).join(", ") || "—"])));
  const totals = h("p", { class: "totals" },
    `${t.requests} requests · ${t.forwarded} forwarded · refused: ${refused}`);
  return h("figure", { class: "chart" }, h("figcaption", {}, title), svg, legend, totals, data);
}

const RANGES = [["hour", "Last hour"], ["day", "Last day"], ["30d", "Last 30 days"]];

function usagePanel(subject, heading) {
  const box = h("section", { "aria-labelledby": "usage-h" }, h("h2", { id: "usage-h" }, heading));
  const picker = select("range", RANGES, "hour");
  const holder = h("div", { class: "chart-holder" });
  const load = async () => {
    try {
      const s = await api("GET", `/v1/usage/series${query({ ...subject, range: picker.value })}`);
      const label = RANGES.find(([v]) => v === picker.value)[1];
      holder.replaceChildren(chart(s, `Requests, ${label.toLowerCase()}`));
    } catch (e) { sayError(e); }
  };
  picker.addEventListener("change", load);
  box.append(field("Range", picker), holder);
  load();
  return box;
}

// ---- pages ------------------------------------------------------------------------------------

function login() {
  nav.hidden = true;
  const secret = h("input", { type: "password", name: "credential", autocomplete: "off", required: true });
  const form = h("form", { class: "card", "aria-labelledby": "login-h" },
    h("h2", { id: "login-h" }, "Log in"),
    field("Operator token or root key", secret,
      "Kept by this browser in a cookie scripts cannot read, until it closes or you log out."),
    h("button", { type: "submit" }, "Log in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      me = await api("POST", "/console/session", { credential: secret.value });
      secret.value = "";
      say("");
      location.hash = me.kind === "operator" ? "#/orgs" : `#/orgs/${me.org_id}`;
    } catch (e) { sayError(e); }
  });
  page("Keystile console", form);
  if (loggedOutBecause) { say(`Logged out: ${loggedOutBecause}`); loggedOutBecause = null; }
  secret.focus();
}

async function orgs() {
  if (me.kind !== "operator") { location.hash = `#/orgs/${me.org_id}`; return; }
  const listed = await api("GET", "/v1/orgs?limit=1000");
  page("Organisations",
    table("Organisations", ["Name", "Id", "Provider", "Created"],
      listed.data.map((o) => [link(`#/orgs/${o.id}`, o.name), h("code", {}, o.id), o.provider_id, when(o.created_at)])),
    usagePanel({}, "Every organisation's requests"));
}

async function orgKeys(orgId, params) {
  if (me.kind !== "operator" && orgId !== me.org_id) { location.hash = `#/orgs/${me.org_id}`; return; }
  const org = me.kind === "operator" ? await api("GET", `/v1/orgs/${orgId}`) : { id: orgId, name: "Your organisation" };
  const search = h("input", { type: "search", name: "search", value: params.get("search") || "" });
  const status = select("status", [["", "Any"], ["active", "Active"], ["paused", "Paused"],
    ["revoked", "Revoked"], ["expired", "Expired"]], params.get("status") || "");
  const form = h("form", { class: "filters", role: "search" },
    field("Name, owner or prefix", search), field("Status", status), h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#/orgs/${orgId}${query({ search: search.value, status: status.value })}`;
  });
  const listed = await api("GET", `/v1/keys${query({ org_id: me.kind === "operator" ? orgId : undefined,
    search: params.get("search"), status: params.get("status"), limit: 200 })}`);
  page(`Keys of ${org.name}`,
    h("p", { class: "links" }, link(`#/webhooks/${orgId}`, "Webhooks"), " · ",
      link(`#/audit${query({ org: orgId })}`, "Audit log"), " · ", link(`#/usage${query({ org: orgId })}`, "Usage")),
    form,
    table("Keys", ["Name", "Owner", "Prefix", "Status", "Last used", "Created"],
      listed.data.map((k) => [link(`#/keys/${k.id}`, k.name || k.id), k.owner_id || "—",
        h("code", { class: "prefix" }, k.prefix), h("span", { class: `status ${k.status}` }, k.status), when(k.last_used_at), when(k.created_at)])),
    listed.next_cursor ? h("p", {}, "Showing the first 200; narrow the search to see others.") : null,
    newKeyForm(orgId));
}

function oneTime(raw, what, onDone) {
  const code = h("code", { class: "raw" }, raw);
  const box = h("div", { class: "card once", role: "status" },
    h("h2", {}, `${what}: copy it now`),
    h("p", {}, "This is the only time it is shown. Keystile keeps only its hash."),
    code,
    h("p", {},
      h("button", { type: "button", onclick: () => navigator.clipboard && navigator.clipboard.writeText(raw) }, "Copy"),
      " ",
      h("button", { type: "button", onclick: () => { box.remove(); if (onDone) onDone(); } }, "Done, hide it")));
  return box;
}

function newKeyForm(orgId) {
  const name = h("input", { name: "name", required: true, maxlength: "200" });
  const owner = h("input", { name: "owner_id" });
  const scopes = h("input", { name: "scopes" });
  const form = h("form", { class: "card", "aria-labelledby": "new-h" }, h("h2", { id: "new-h" }, "New key"),
    field("Name", name), field("Owner id (optional)", owner),
    field("Scopes", scopes, "Separated by spaces, e.g. svc:read svc:write"),
    h("button", { type: "submit" }, "Create key"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { name: name.value, scopes: scopes.value.split(/\s+/).filter(Boolean) };
    if (me.kind === "operator") body.org_id = orgId;
    if (owner.value) body.owner_id = owner.value;
    try {
      const made = await api("POST", "/v1/keys", body);
      say("");
      form.replaceWith(oneTime(made.key, `New key ${made.name}`), newKeyForm(orgId));
    } catch (e) { sayError(e); }
  });
  return form;
}

function meter(label, used, limit, extra) {
  return h("div", { class: "meter" },
    h("span", {}, `${label}: ${used} of ${limit}${extra ? ` · ${extra}` : ""}`),
    h("meter", { min: "0", max: String(limit), value: String(Math.min(used, limit)), "aria-label": label }));
}

function limitsForm(key) {
  const rows = h("div", { class: "windows" });
  const addRow = (limit = "", window_s = "") => {
    const lim = h("input", { type: "number", min: "1", name: "limit", value: String(limit), inputmode: "numeric" });
    const win = h("input", { type: "number", min: "1", name: "window_s", value: String(window_s), inputmode: "numeric" });
    const row = h("fieldset", { class: "window" }, h("legend", {}, "Rate-limit window"),
      field("Requests", lim), field("Per seconds", win),
      h("button", { type: "button", onclick: () => row.remove() }, "Remove window"));
    rows.append(row);
  };
  key.rate_limits.forEach((r) => addRow(r.limit, r.window_s));
  const usage = h("input", { type: "number", min: "0", name: "usage_limit", value: key.usage_limit ?? "" });
  const qLimit = h("input", { type: "number", min: "1", name: "quota_limit", value: key.quota ? key.quota.limit : "" });
  const qPeriod = select("quota_period", [["day", "per day"], ["week", "per week"], ["month", "per month"]],
    key.quota ? key.quota.period : "day");
  const shadow = h("input", { type: "checkbox", name: "shadow_limits", checked: key.shadow_limits });
  // novalidate: the API judges the values, and its messages say what to fix.
  const form = h("form", { class: "card", "aria-labelledby": "limits-h", novalidate: true },
    h("h2", { id: "limits-h" }, "Edit limits"), rows,
    h("button", { type: "button", onclick: () => addRow() }, "Add a window"),
    field("Lifetime usage limit", usage, "Empty: no lifetime limit"),
    field("Quota", qLimit, "Empty: no quota"), field("Quota period", qPeriod),
    h("div", { class: "field check" }, shadow, h("label", { for: "shadow" }, "Shadow mode: measure these limits, let requests over them pass")),
    h("button", { type: "submit" }, "Save limits"));
  shadow.id = "shadow";
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    // A number field holding what is not a number reads as empty, which would clear a limit.
    const bad = [...form.querySelectorAll("input[type=number]")].find((i) => i.validity.badInput);
    if (bad) {
      const label = form.querySelector(`label[for="${bad.id}"]`);
      sayError(new ApiError(422, { error: { code: "validation_failed",
        message: `${label ? label.textContent : bad.name}: not a number; use digits only` } }));
      bad.focus();
      return;
    }
    const num = (s) => (s === "" ? null : Number(s));
    const wanted = {
      rate_limits: [...rows.querySelectorAll("fieldset")].map((fs) => ({
        limit: num(fs.querySelector("[name=limit]").value), window_s: num(fs.querySelector("[name=window_s]").value) })),
      usage_limit: num(usage.value),
      quota: qLimit.value === "" ? null : { limit: num(qLimit.value), period: qPeriod.value },
      shadow_limits: shadow.checked,
    };
    // Only what changed is sent: a limit left alone is never rewritten.
    const body = Object.fromEntries(Object.entries(wanted)
      .filter(([k, v]) => JSON.stringify(v) !== JSON.stringify(key[k] ?? null)));
    if (!Object.keys(body).length) { say("Nothing to save: no limit was changed.", "ok"); return; }
    try {
      await api("PATCH", `/v1/keys/${key.id}`, body);
      say("Limits saved.", "ok");
      route();
    } catch (e) { sayError(e); }
  });
  return form;
}

async function keyPage(keyId) {
  const [key, usage, audit] = await Promise.all([api("GET", `/v1/keys/${keyId}`),
    api("GET", `/v1/keys/${keyId}/usage`), api("GET", `/v1/audit${query({ target_id: keyId, limit: 50 })}`)]);
  const own = me.kind === "key" && me.key_id === key.id;
  const act = (label, path, confirmText, body) => h("button", { type: "button", onclick: async () => {
    const ask = own ? `${confirmText || `${label} this key?`} It is the key you are logged in with: this ends your session.`
      : confirmText;
    if (ask && !confirm(ask)) return;
    try {
      const got = await api("POST", `/v1/keys/${keyId}/${path}`, body);
      if (got && got.key) newSecret = { raw: got.key, what: `New secret of ${got.name}` };
      say(`${label}: done.`, "ok");
      await route();
    } catch (e) { sayError(e); }
  } }, label);
  const actions = h("p", { class: "actions" },
    key.status === "paused" ? act("Resume", "resume") : key.status === "active" ? act("Pause", "pause") : null,
    key.status !== "revoked" ? act("Rotate", "rotate", "Give this key a new secret? The old one stops working at once.", { grace_seconds: 0 }) : null,
    key.status !== "revoked" ? act("Revoke", "revoke", "Revoke this key? This cannot be undone.") : null);
  const live = h("section", { "aria-labelledby": "live-h" }, h("h2", { id: "live-h" }, "Live usage"),
    usage.usage_limit !== null ? meter("Lifetime", usage.usage_count, usage.usage_limit) : h("p", {}, `Lifetime usage: ${usage.usage_count} spent, no limit`),
    usage.quota ? meter(`Quota per ${usage.quota.period}`, usage.quota.used, usage.quota.limit, `resets ${when(usage.quota.resets_at)}`) : null,
    usage.rate_limits.map((r) => meter(`${r.limit} per ${r.window_s} s`, r.limit - r.remaining, r.limit, `resets ${when(r.resets_at)}`)),
    key.shadow_limits ? h("p", { class: "note" }, "Shadow mode: requests over these limits pass.") : null);
  const facts = h("dl", { class: "facts" },
    ...[["Id", h("code", {}, key.id)], ["Organisation", link(`#/orgs/${key.org_id}`, key.org_id)], ["Owner", key.owner_id || "—"],
      ["Prefix", h("code", {}, key.prefix)], ["Status", h("span", { class: `status ${key.status}` }, key.status)],
      ["Scopes", key.scopes.join(" ") || "—"], ["Expires", key.expires_at ? when(key.expires_at) : "never"],
      ["Last used", when(key.last_used_at)], ["Created", when(key.created_at)]]
      .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  page(`Key ${key.name || key.id}`, actions, facts, live, usagePanel({ key_id: keyId }, "Requests over time"),
    key.status !== "revoked" ? limitsForm(key) : null,
    h("section", { "aria-labelledby": "audit-h" }, h("h2", { id: "audit-h" }, "Audit trail"), auditTable(audit.data)));
}

function auditTable(entries) {
  return table("Audit entries", ["When", "Who", "Action", "Target", "Changes"],
    entries.map((a) => [when(a.at), a.actor_id ? `${a.actor_type} ${a.actor_id}` : a.actor_type, a.action,
      a.target_type === "key" ? link(`#/keys/${a.target_id}`, a.target_id) : a.target_id,
      h("code", { class: "changes" }, JSON.stringify(a.changes))]));
}

async function auditPage(params) {
  const org = me.kind === "operator" ? params.get("org") : undefined;
  const listed = await api("GET", `/v1/audit${query({ org_id: org, action: params.get("action"), cursor: params.get("cursor"), limit: 100 })}`);
  const action = h("input", { name: "action", value: params.get("action") || "" });
  const form = h("form", { class: "filters", role: "search" }, field("Action, e.g. key.revoke", action),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#/audit${query({ org, action: action.value })}`;
  });
  page("Audit log", form, auditTable(listed.data),
    listed.next_cursor ? h("p", {}, link(`#/audit${query({ org, action: params.get("action"), cursor: listed.next_cursor })}`, "Older entries")) : null);
}

async function usagePage(params) {
  const org = me.kind === "operator" ? params.get("org") || "" : me.org_id;
  const owner = h("input", { name: "owner", value: params.get("owner") || "" });
  const keyId = h("input", { name: "key", value: params.get("key") || "" });
  const orgField = h("input", { name: "org", value: org, readonly: me.kind !== "operator" });
  const form = h("form", { class: "filters" }, field("Organisation id", orgField),
    field("Owner id", owner), field("Key id", keyId), h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#/usage${query({ org: orgField.value, owner: owner.value, key: keyId.value })}`;
  });
  const subject = params.get("key") ? { key_id: params.get("key") }
    : { org_id: me.kind === "operator" ? params.get("org") : undefined, owner_id: params.get("owner") };
  const what = params.get("key") ? `Key ${params.get("key")}` : params.get("owner") ? `Owner ${params.get("owner")}`
    : org ? `Organisation ${org}` : "Every organisation";
  page("Usage", form, usagePanel(subject, what));
}

async function limitedPage() {
  const draw = async () => {
    const got = await api("GET", `/v1/usage/limited${query({ minutes: 5 })}`);
    const body = table("Keys answered 429 in the last 5 minutes", ["Key", "Organisation", "Owner", "429s", "Requests", "Status"],
      got.data.map((k) => [link(`#/keys/${k.key_id}`, k.name || k.key_id), k.org_id, k.owner_id || "—",
        String(k.limited), String(k.requests), k.status || "deleted"]));
    const holder = document.getElementById("limited");
    if (holder) holder.replaceChildren(body, h("p", { class: "note" }, `Updated ${new Date().toLocaleTimeString()}; refreshes every 5 s.`));
  };
  page("Limited now", h("p", {}, "Who is being throttled right now: the keys refused with 429 most in the last five minutes."),
    h("div", { id: "limited", "aria-live": "polite" }));
  await draw();
  refresher = setInterval(() => draw().catch(sayError), 5000);
}

async function webhooksPage(orgId) {
  const listed = await api("GET", `/v1/orgs/${orgId}/webhooks`);
  page("Webhooks", h("p", {}, link(`#/orgs/${orgId}`, "Back to the keys")),
    table("Webhook endpoints", ["URL", "Events", "Enabled", "Failing since", "Deliveries"],
      listed.data.map((w) => [h("code", {}, w.url), w.events.join(", "), w.enabled ? "yes" : `no (${w.disabled_reason || "disabled"})`,
        w.failing_since ? when(w.failing_since) : "—", link(`#/webhooks/${orgId}/${w.id}`, "Deliveries")])));
}

async function deliveriesPage(orgId, wid) {
  const listed = await api("GET", `/v1/orgs/${orgId}/webhooks/${wid}/deliveries?limit=100`);
  const retry = (d) => h("button", { type: "button", onclick: async () => {
    try { await api("POST", `/v1/orgs/${orgId}/webhooks/${wid}/deliveries/${d.id}/retry`); say("Sent again.", "ok"); route(); } catch (e) { sayError(e); }
  } }, "Retry");
  page("Deliveries", h("p", {}, link(`#/webhooks/${orgId}`, "Back to the endpoints")),
    table("Deliveries, newest first", ["Event", "Key", "State", "Attempts", "Last answer", "Created", ""],
      listed.data.map((d) => [d.event_type, d.key_id ? link(`#/keys/${d.key_id}`, d.key_id) : "—", d.state, String(d.attempts),
        d.last_status_code ? `${d.last_status_code} in ${Math.round(d.last_latency_ms)} ms` : d.last_error || "—",
        when(d.created_at), d.state !== "pending" ? retry(d) : ""])));
}

// ---- navigation -------------------------------------------------------------------------------

function drawNav() {
  const items = me.kind === "operator" ? [["#/orgs", "Organisations"]] : [[`#/orgs/${me.org_id}`, "Keys"]];
  items.push(["#/usage", "Usage"], ["#/limited", "Limited now"], ["#/audit", "Audit log"]);
  if (me.kind !== "operator") items.push([`#/webhooks/${me.org_id}`, "Webhooks"]);
  const out = h("button", { type: "button", class: "linkish", onclick: async () => {
    await api("DELETE", "/console/session").catch(() => null);
    me = null;
    location.hash = "#/login";
  } }, "Log out");
  const who = me.kind === "operator" ? "operator" : `root key ${me.prefix}…`;
  nav.replaceChildren(h("ul", {}, items.map(([href, text]) =>
    h("li", {}, h("a", { href, "aria-current": location.hash.startsWith(href) ? "page" : null }, text))),
    h("li", { class: "who" }, `Signed in as ${who} `, out)));
  nav.hidden = false;
}

async function route() {
  clearInterval(refresher);
  const [path, search] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent).map(encodeURIComponent);
  if (me === null) {
    try { me = await api("GET", "/console/session"); } catch (e) { me = null; }
  }
  if (me === null || parts[0] === "login") {
    if (me !== null) { location.hash = "#/"; return; }
    login();
    return;
  }
  drawNav();
  try {
    if (parts[0] === "orgs" && parts[1]) await orgKeys(parts[1], params);
    else if (parts[0] === "keys" && parts[1]) await keyPage(parts[1]);
    else if (parts[0] === "audit") await auditPage(params);
    else if (parts[0] === "usage") await usagePage(params);
    else if (parts[0] === "limited") await limitedPage();
    else if (parts[0] === "webhooks" && parts[2]) await deliveriesPage(parts[1], parts[2]);
    else if (parts[0] === "webhooks" && parts[1]) await webhooksPage(parts[1]);
    else await orgs();
  } catch (e) {
    sayError(e);
    if (me !== null && view.querySelector("h1") === null) page("Something went wrong");
  }
  document.getElementById("main").focus({ preventScroll: true });
}

window.addEventListener("hashchange", () => { say(""); route(); });
route();
