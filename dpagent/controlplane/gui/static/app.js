// dpagent GUI: a dependency-free single page over /gui/api/*. Pages are built with DOM calls (never innerHTML),
// so names from the store cannot inject markup, and the page's strict CSP needs no inline script or style.
"use strict";

const ui = { version: null, open: new Set(), filter: "", statusFilter: "", sortKey: "name", sortDir: 1, seq: 0,
             lastMesh: "default", renderedAt: 0 };

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

async function api(path) {
  const resp = await fetch("/gui/api/" + path, { credentials: "same-origin", cache: "no-store" });
  if (resp.status === 401) { window.location.href = "/gui/login"; throw new Error("login required"); }
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.title || resp.statusText);
  if (body.missing) throw new Error(body.missing);
  return body;
}

// ---- formatting ------------------------------------------------------------------------------------------------

function span(seconds) {
  const s = Math.abs(Math.round(seconds));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}
const now = () => Date.now() / 1000;
function rel(t) {
  if (!t) return "-";
  const d = t - now();
  return d >= 0 ? "in " + span(d) : span(d) + " ago";
}
const stamp = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "-");
const pct = (a, b) => (b ? Math.round((100 * a) / b) : 100);
const badge = (status) => h("span", { class: "badge " + status, "data-k": "status" }, status);
const tagList = (tags) => h("span", { class: "tags" }, Object.entries(tags || {}).map(([k, v]) => h("span", { class: "tag" }, k + "=" + v)));
const dpLink = (mesh, name) => h("a", { href: "#/dataplane/" + encodeURIComponent(mesh) + "/" + encodeURIComponent(name) }, name);

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-k": k }, v)]));
}

function keep(key, el) { // a <details> that stays open across live refreshes
  el.setAttribute("data-key", key);
  if (ui.open.has(key)) el.open = true;
  el.addEventListener("toggle", () => (el.open ? ui.open.add(key) : ui.open.delete(key)));
  return el;
}

function table(head, rows, attrs) {
  return h("div", { class: "scroll" }, h("table", attrs || {}, h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows)));
}

function certBar(row) {
  if (!row.cert_expires) return h("span", { class: "muted" }, "-");
  const left = row.cert_expires - now();
  const life = Math.max(1, row.cert_expires - (row.cert_issued || row.cert_expires - 86400));
  const frac = Math.max(0, Math.min(1, left / life));
  const cls = left <= 0 ? "bar bad" : frac < 0.2 ? "bar warn" : "bar";
  return h("div", { title: "expires " + stamp(row.cert_expires) + " (" + row.cert_backend + ")" },
    h("span", {}, left <= 0 ? "expired" : rel(row.cert_expires)),
    h("div", { class: cls, "data-k": "cert-bar" }, h("span", { style: { width: (frac * 100).toFixed(1) + "%" } })));
}

// ---- pages -----------------------------------------------------------------------------------------------------

async function overview() {
  const d = await api("overview");
  const cp = d.cp;
  return h("section", { id: "overview" },
    h("h1", {}, "Overview"),
    h("div", { class: "cards" },
      h("div", { class: "card", id: "cp-card" }, h("h2", {}, "Control plane"),
        kv([["version", cp.version], ["store", cp.store + (cp.store_location ? " (" + cp.store_location + ")" : "")],
            ["leader", cp.leader], ["uptime", span(cp.uptime)], ["started", stamp(cp.started)]])),
      d.meshes.map((m) => h("div", { class: "card mesh-card", "data-mesh": m.name },
        h("h2", {}, "Mesh ", h("a", { href: "#/services/" + encodeURIComponent(m.name) }, m.name)),
        kv([["mTLS", m.mtls], ["services", h("span", { "data-k": "count-services" }, m.services)]]),
        h("div", { class: "counts" },
          h("a", { class: "count", href: "#/dataplanes", "data-k": "count-dataplanes" }, h("b", {}, m.dataplanes), "dataplanes"),
          h("div", { class: "count online", "data-k": "count-online" }, h("b", {}, m.online), "online"),
          h("div", { class: "count offline", "data-k": "count-offline" }, h("b", {}, m.offline), "offline"),
          h("div", { class: "count nacking", "data-k": "count-nacking" }, h("b", {}, m.nacking), "NACKing")),
        h("h3", {}, "Policies"),
        Object.keys(m.policies).length
          ? h("ul", { class: "policy-counts" }, Object.entries(m.policies).map(([k, n]) =>
              h("li", { "data-kind": k }, h("a", { href: "#/policies" }, k), ": ", h("b", {}, n))))
          : h("p", { class: "muted" }, "none")))));
}

const DP_COLUMNS = [
  ["mesh", "Mesh"], ["name", "Name"], ["services", "Services"], ["tags", "Tags"], ["address", "Address"],
  ["status", "Status"], ["agent_version", "Agent"], ["envoy_version", "Envoy"], ["cert_expires", "Certificate"],
  ["last_nack", "Last NACK"],
];

function sortValue(row, key) {
  const v = row[key];
  if (key === "last_nack") return v ? v.at : 0;
  if (Array.isArray(v)) return v.join(",");
  if (v && typeof v === "object") return JSON.stringify(v);
  return v === null || v === undefined ? "" : v;
}

async function dataplanes() {
  const d = await api("dataplanes");
  const section = h("section", { id: "dataplanes" }, h("h1", {}, "Dataplanes"));
  const tbodyHolder = h("div", {});
  const draw = () => {
    const f = ui.filter.toLowerCase();
    let rows = d.items.filter((r) => (!ui.statusFilter || r.status === ui.statusFilter) &&
      (!f || [r.mesh, r.name, r.address, r.status, r.services.join(" "), Object.entries(r.tags).map((e) => e.join("=")).join(" ")]
        .join(" ").toLowerCase().includes(f)));
    rows = rows.slice().sort((a, b) => {
      const x = sortValue(a, ui.sortKey), y = sortValue(b, ui.sortKey);
      return (x < y ? -1 : x > y ? 1 : 0) * ui.sortDir || (a.name < b.name ? -1 : 1);
    });
    const head = DP_COLUMNS.map(([key, label]) => h("th", {
      class: "sortable" + (ui.sortKey === key ? (ui.sortDir > 0 ? " sorted-asc" : " sorted-desc") : "") +
        (["tags", "agent_version", "envoy_version"].includes(key) ? " hide-narrow" : ""),
      "data-sort": key,
      onclick: () => { ui.sortDir = ui.sortKey === key ? -ui.sortDir : 1; ui.sortKey = key; draw(); },
    }, label));
    const body = rows.map((r) => h("tr", { "data-name": r.name, "data-mesh": r.mesh, "data-status": r.status },
      h("td", {}, r.mesh), h("td", {}, dpLink(r.mesh, r.name)), h("td", {}, r.services.join(", ")),
      h("td", { class: "hide-narrow" }, tagList(r.tags)), h("td", {}, r.address),
      h("td", {}, badge(r.status), h("div", { class: "muted" }, r.since ? (r.status === "offline" ? "since " : "up ") + rel(r.since).replace(" ago", "") : "")),
      h("td", { class: "hide-narrow" }, r.agent_version || "-"), h("td", { class: "hide-narrow" }, r.envoy_version || "-"),
      h("td", {}, certBar(r)),
      h("td", { "data-k": "last-nack" }, r.last_nack ? h("span", { class: "error", title: r.last_nack.error },
        r.last_nack.type + " " + rel(r.last_nack.at) + ": " + r.last_nack.error.slice(0, 80)) : "-")));
    tbodyHolder.replaceChildren(
      h("p", { class: "muted", id: "dp-count" }, rows.length + " of " + d.total + " dataplanes"),
      h("div", { class: "scroll" }, h("table", { id: "dp-table" }, h("thead", {}, h("tr", {}, head)), h("tbody", {}, body))));
  };
  const search = h("input", { type: "search", id: "dp-filter", placeholder: "filter: name, service, tag, address…", value: ui.filter,
    oninput: (e) => { ui.filter = e.target.value; draw(); } });
  const status = h("select", { id: "dp-status", onchange: (e) => { ui.statusFilter = e.target.value; draw(); } },
    ["", "online", "offline", "nacking"].map((s) => h("option", { value: s, selected: ui.statusFilter === s }, s || "any status")));
  section.append(h("div", { class: "toolbar" }, search, status), tbodyHolder);
  draw();
  return section;
}

function confBlock(conf) {
  if (conf === null || conf === undefined || (typeof conf === "object" && !Object.keys(conf).length)) return h("span", { class: "muted" }, "-");
  return h("pre", {}, JSON.stringify(conf, null, 2));
}

async function dataplane(mesh, name) {
  const d = await api("dataplanes/" + encodeURIComponent(mesh) + "/" + encodeURIComponent(name));
  const r = d.row, ins = d.inspect, cert = ins.certificate || {}, xds = ins.xds || {};
  const kinds = (ins.policies || []).filter((k) => k.policies.length);
  const types = Object.entries(xds.types || {});
  return h("section", { id: "dataplane", "data-name": name },
    h("h1", {}, "Dataplane ", name, " ", badge(r.status)),
    h("div", { class: "cards" },
      h("div", { class: "card" }, h("h2", {}, "Summary"),
        kv([["mesh", mesh], ["address", r.address], ["services", r.services.join(", ")], ["tags", tagList(r.tags)],
            ["agent", r.agent_version || "-"], ["Envoy", r.envoy_version || "-"],
            [r.status === "offline" ? "offline since" : "connected since", stamp(r.since)],
            ["streams", xds.streams || 0], ["pushes", xds.pushes || 0]])),
      h("div", { class: "card" }, h("h2", {}, "Certificate"),
        kv([["backend", cert.backend || "-"], ["serial", cert.serial || "-"], ["SPIFFE ID", cert.spiffeId || "-"],
            ["expires", cert.notAfter ? stamp(Date.parse(cert.notAfter) / 1000) : "-"], ["lifetime left", certBar(r)],
            ["issued", stamp(cert.issued)], ["regenerations", cert.regenerations ?? "-"]])),
      h("div", { class: "card" }, h("h2", {}, "Connection history"),
        d.history.length ? h("ul", { id: "history" }, d.history.slice().reverse().map((e) =>
          h("li", {}, stamp(e.at), " ", h("b", {}, e.event), " (", rel(e.at), ")"))) : h("p", { class: "muted" }, "never connected"))),
    ins.warnings && ins.warnings.length ? h("ul", { class: "warnings" }, ins.warnings.map((w) => h("li", {}, w))) : null,
    h("h2", {}, "Delivery (xDS)"),
    table(["type", "generated", "ACKed", "NACK"], types.map(([url, t]) => h("tr", {},
      h("td", {}, url.split(".").pop()), h("td", {}, h("code", {}, t.snapshot_version || "-")),
      h("td", {}, h("code", {}, t.acked_version || "-"), t.acked_version && t.acked_version === t.snapshot_version ? " ✓" : ""),
      h("td", { class: t.nack ? "error" : "" }, t.nack ? t.nack.error : "-")))),
    h("h2", {}, "Matched policies"),
    kinds.length ? h("div", { id: "matched" }, kinds.map((k) => h("div", { class: "card kind", "data-kind": k.kind },
      h("h3", {}, k.kind, ": ", k.policies.map((p, i) => [i ? ", " : "",
        h("a", { href: "#/policy/" + encodeURIComponent(mesh) + "/" + k.kind + "/" + encodeURIComponent(p), "data-policy": p }, p)])),
      k.inbounds.length ? table(["inbound", "policies", "effective conf"], k.inbounds.map((ib) =>
        h("tr", {}, h("td", {}, ib.inbound), h("td", {}, ib.policies.join(", ")), h("td", {}, confBlock(ib.conf))))) : null,
      k.outbounds.length ? table(["outbound", "policies", "merged conf"], k.outbounds.map((ob) =>
        h("tr", {}, h("td", {}, ob.service), h("td", {}, ob.policies.join(", ")), h("td", {}, confBlock(ob.conf))))) : null,
      k.warnings.length ? h("ul", { class: "warnings" }, k.warnings.map((w) => h("li", {}, w))) : null)))
      : h("p", { class: "muted" }, "no policy selects this dataplane"),
    h("h2", {}, "Generated Envoy config"),
    h("div", { id: "config" }, Object.entries(d.config).map(([type, resources]) =>
      keep("cfg:" + name + ":" + type, h("details", { "data-type": type },
        h("summary", {}, type + " (" + Object.keys(resources).length + ")"),
        Object.entries(resources).map(([rn, res]) => keep("cfg:" + name + ":" + type + ":" + rn,
          h("details", { class: "resource" }, h("summary", {}, h("code", {}, rn)), h("pre", {}, JSON.stringify(res, null, 2))))))))),
    keep("yaml:" + name, h("details", {}, h("summary", {}, "Dataplane YAML"), h("pre", {}, d.yaml))));
}

async function meshNames() {
  return (await api("overview")).meshes.map((m) => m.name);
}

async function services(mesh) {
  const meshes = await meshNames();
  mesh = mesh || (meshes.includes(ui.lastMesh) ? ui.lastMesh : meshes[0]);
  if (!mesh) return h("p", { class: "muted" }, "no meshes");
  ui.lastMesh = mesh;
  const d = await api("services/" + encodeURIComponent(mesh));
  const m = d.matrix;
  const picker = h("select", { id: "mesh-pick", onchange: (e) => { window.location.hash = "#/services/" + encodeURIComponent(e.target.value); } },
    meshes.map((n) => h("option", { value: n, selected: n === mesh }, n)));
  const policyLinks = (list) => list.length ? list.map((p, i) => {
    const [kind, name] = p.split("/");
    return [i ? ", " : "", h("a", { href: "#/policy/" + encodeURIComponent(mesh) + "/" + kind + "/" + encodeURIComponent(name) }, p)];
  }) : h("span", { class: "muted" }, "-");
  return h("section", { id: "services", "data-mesh": mesh },
    h("h1", {}, "Services"), h("div", { class: "toolbar" }, h("label", { for: "mesh-pick" }, "mesh"), picker),
    table(["service", "protocol", "instances", "policies on its proxies", "to it", "from it"], d.services.map((s) =>
      h("tr", { "data-service": s.name },
        h("td", {}, h("b", {}, s.name)), h("td", {}, s.protocol),
        h("td", {}, keep("svc:" + mesh + ":" + s.name, h("details", {},
          h("summary", { "data-k": "health" }, s.healthy + "/" + s.instances.length + " healthy"),
          h("ul", {}, s.instances.map((i) => h("li", {}, dpLink(mesh, i.name), " ", badge(i.status), i.ready ? "" : " not ready")))))),
        h("td", {}, policyLinks(s.on_proxies)), h("td", {}, policyLinks(s.to)), h("td", {}, policyLinks(s.from))))),
    h("h2", {}, "Who may call whom (MeshTrafficPermission)"),
    !m ? h("p", { class: "muted" }, "no dataplanes yet") :
      [m.enforced ? h("p", { class: "muted" }, "Rows call columns. A cell is what the callee's inbounds do with the caller's identity (spiffe://" + mesh + "/<service>); mixed: its instances disagree.")
        : h("p", { class: "muted" }, "mTLS is off in this mesh: callers have no identity, nothing is enforced."),
      h("div", { class: "scroll" }, h("table", { class: "matrix", id: "matrix" },
        h("thead", {}, h("tr", {}, h("th", {}, "caller ↓ / callee →"), m.services.map((s) => h("th", {}, s)))),
        h("tbody", {}, m.services.map((caller) => h("tr", {}, h("th", { class: "caller" }, caller),
          m.services.map((callee) => {
            const c = m.decisions[caller][callee], pols = m.policies[callee] || [];
            return h("td", { class: c, "data-caller": caller, "data-callee": callee, "data-decision": c,
              title: caller + " → " + callee + ": " + c + (pols.length ? " (" + pols.join(", ") + ")" : "") }, c);
          }))))))]);
}

async function policies() {
  const d = await api("policies");
  const kinds = Object.entries(d.kinds).filter(([, list]) => list.length);
  return h("section", { id: "policies" }, h("h1", {}, "Policies"),
    kinds.length ? kinds.map(([kind, list]) => h("div", { "data-kind": kind },
      h("h2", {}, kind + " (" + list.length + ")"),
      table(["mesh", "name", "target", "modified"], list.map((p) => h("tr", { "data-name": p.name },
        h("td", {}, p.mesh), h("td", {}, h("a", { href: "#/policy/" + encodeURIComponent(p.mesh) + "/" + kind + "/" + encodeURIComponent(p.name) }, p.name)),
        h("td", {}, h("code", {}, p.target)), h("td", {}, rel(p.modified))))))) : h("p", { class: "muted" }, "no policies"));
}

async function policy(mesh, kind, name) {
  const d = await api("policies/" + encodeURIComponent(mesh) + "/" + encodeURIComponent(kind) + "/" + encodeURIComponent(name));
  return h("section", { id: "policy" }, h("h1", {}, kind, " ", name),
    h("p", { class: "muted" }, "mesh " + mesh),
    h("h2", {}, "YAML"), h("pre", { id: "policy-yaml" }, d.yaml),
    h("h2", {}, "Affected dataplanes (" + d.affected.length + ")"),
    d.affected.length ? table(["dataplane", "inbounds it selects"], d.affected.map((a) => h("tr", { "data-name": a.name },
      h("td", {}, dpLink(mesh, a.name)), h("td", {}, a.inbounds.join(", ") || "-")))) : h("p", { class: "muted" }, "none"));
}

function chart(values, cls, labels) {
  const max = Math.max(1, ...values);
  return [h("div", { class: "chart " + cls }, values.map((v, i) => h("span", { title: labels(i) + ": " + v, style: { height: (100 * v / max) + "%" } }))),
    h("div", { class: "legend" }, h("span", {}, labels(0)), h("span", {}, labels(values.length - 1)))];
}

function progressBar(done, total, id, label) {
  const p = pct(done, total);
  return h("div", { "data-k": id },
    h("div", {}, label + ": ", h("b", { "data-k": id + "-text" }, done + "/" + total + " (" + p + " %)")),
    h("div", { class: "progress" + (p >= 100 ? " done" : "") }, h("span", { style: { width: p + "%" } })));
}

async function certificates() {
  const d = await api("certificates");
  return h("section", { id: "certificates" }, h("h1", {}, "Certificates and CA rotation"),
    d.meshes.map((m) => {
      const t = m.timeline, p = m.progress;
      return h("div", { class: "card mesh-certs", "data-mesh": m.mesh }, h("h2", {}, "Mesh " + m.mesh),
        !m.mtls ? h("p", { class: "muted" }, "mTLS is off") : null,
        h("h3", {}, "CA backends"),
        table(["name", "type", "enabled", "root in trust bundle", "leaf lifetime"], m.backends.map((b) =>
          h("tr", { "data-backend": b.name }, h("td", {}, b.name), h("td", {}, b.type + (b.mode ? " (" + b.mode + ")" : "")),
            h("td", {}, b.enabled ? "✓ enabled" : ""), h("td", {}, b.in_bundle ? "✓" : ""), h("td", {}, b.leaf_lifetime)))),
        h("h3", {}, "Trust bundle (" + m.bundle.length + " roots)"),
        table(["backend", "subject", "serial", "valid until"], m.bundle.map((c) => h("tr", {},
          h("td", {}, c.backend), h("td", {}, c.subject), h("td", {}, h("code", {}, c.serial)), h("td", {}, stamp(c.not_after))))),
        p ? [h("h3", {}, "CA switch to " + p.enabled),
          h("p", { "data-k": "switch-state" }, p.done ? "done: every proxy trusts " + p.enabled + " and every live leaf comes from it"
            : "in progress" + (p.issuing_new ? ": renewals use " + p.enabled : ": renewals keep the old root until every proxy ACKed the new bundle")),
          progressBar(p.bundle_acked, p.connected, "bundle-acked", "proxies that ACKed the bundle with " + p.enabled + "'s root"),
          progressBar(p.leaves_new, p.leaves_total, "leaves-new", "live leaves issued by " + p.enabled),
          Object.keys(p.leaves_old).length ? h("p", {}, "leaves from other roots: ",
            Object.entries(p.leaves_old).map(([b, n]) => b + ": " + n).join(", ")) : null] : null,
        h("h3", {}, "Leaf certificates"),
        h("div", { class: "counts" },
          h("div", { class: "count", "data-k": "expired" }, h("b", {}, t.expired), "expired"),
          h("div", { class: "count", "data-k": "next-hour" }, h("b", {}, t.next_hour), "expire within 1 h"),
          h("div", { class: "count", "data-k": "next-day" }, h("b", {}, t.next_day), "within 24 h"),
          h("div", { class: "count", "data-k": "later" }, h("b", {}, t.later), "later"),
          h("div", { class: "count", "data-k": "issued-hour" }, h("b", {}, t.issued_last_hour), "issued in the last hour")),
        h("div", { class: "cards" },
          h("div", {}, h("div", { class: "muted" }, "issued per hour, last 24 h"), chart(t.issued_by_hour, "issued", (i) => (i === 23 ? "this hour" : (23 - i) + " h ago"))),
          h("div", {}, h("div", { class: "muted" }, "expiring per hour, next 24 h"), chart(t.expiry_by_hour, "expiry", (i) => (i === 0 ? "within 1 h" : "in " + i + "–" + (i + 1) + " h")))));
    }));
}

async function audit() {
  const d = await api("audit");
  return h("section", { id: "audit" }, h("h1", {}, "Audit log"),
    h("p", { class: "muted" }, "The newest " + d.items.length + " entries: every write, token and key change, refusals included (dpagent audit for filters)."),
    table(["time", "user", "from", "access", "resource", "outcome", "detail"], d.items.map((e) =>
      h("tr", { "data-id": e.id, class: e.outcome }, h("td", {}, e.time.replace("T", " ").slice(0, 19) + "Z"),
        h("td", { title: e.groups.join(", ") }, e.user), h("td", {}, e.source), h("td", {}, e.access),
        h("td", {}, [e.mesh, e.kind, e.name].filter((x) => x).join("/")), h("td", { "data-k": "outcome" }, e.outcome),
        h("td", {}, e.detail)))));
}

// ---- routing and live refresh ----------------------------------------------------------------------------------

function route() {
  const parts = (window.location.hash || "#/overview").slice(2).split("/").map(decodeURIComponent);
  const page = parts[0] || "overview";
  const pages = {
    overview: () => overview(), dataplanes: () => dataplanes(), dataplane: () => dataplane(parts[1], parts[2]),
    services: () => services(parts[1]), policies: () => policies(), policy: () => policy(parts[1], parts[2], parts[3]),
    certificates: () => certificates(), audit: () => audit(),
  };
  const nav = { dataplane: "dataplanes", policy: "policies" }[page] || page;
  return [nav, pages[page] || pages.overview];
}

async function render() {
  const seq = ++ui.seq;
  const [nav, build] = route();
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === nav));
  let content;
  try {
    content = await build();
  } catch (e) {
    content = h("p", { class: "error", id: "page-error" }, String(e.message || e));
  }
  if (seq !== ui.seq) return; // a newer render started meanwhile
  const main = document.getElementById("main");
  const y = window.scrollY;
  const focused = document.activeElement && document.activeElement.id;
  main.replaceChildren(content);
  document.body.setAttribute("data-rendered", String(seq));
  window.scrollTo(0, y);
  if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
}

async function poll() {
  const live = document.getElementById("live");
  try {
    const v = (await api("version")).version;
    // At most one refresh a second: on a big mesh ACKs move the version all the time, and a page of a thousand
    // rows need not be rebuilt at every poll. A change is still on screen within about a second.
    if (v !== ui.version && Date.now() - ui.renderedAt >= 1000) {
      ui.version = v;
      ui.renderedAt = Date.now();
      await render();
    }
    live.textContent = "live · " + new Date().toLocaleTimeString();
    live.classList.remove("down");
  } catch (e) {
    live.textContent = "control plane unreachable";
    live.classList.add("down");
  }
}

window.addEventListener("hashchange", () => render());
document.addEventListener("DOMContentLoaded", () => {
  poll();
  setInterval(poll, 500);
});
