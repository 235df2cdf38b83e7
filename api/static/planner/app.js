/* dpflows planner: plain JS + SVG, no build step, no third-party code, works offline.
 *
 * Flow: log in with a key (sessionStorage) → list datasets → pick a question → POST /v1/quote
 * → show what it will cost (ε per window, remaining after, or "reused: free") → only on
 * confirmation POST the query → draw the answer (flows as lines between zone centroids,
 * presence as a choropleth, patterns as a weekday×hour grid) and a table, every number with
 * its ± error bound → refresh the budget from /v1/budget.
 *
 * Maps are drawn from the public zoning: its GeoJSON polygons when it has them, else the
 * Voronoi regions of its cells (cell coordinates are public), merged by zone.
 */
"use strict";

(function () {
  const KEY_STORAGE = "dpflows.apiKey";
  const WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MAP_W = 800, MAP_H = 560, PAD = 24;
  const MAX_FLOWS_DRAWN = 300;
  const MAX_TABLE_ROWS = 500;
  const MAX_VORONOI_CELLS = 8000;

  const $ = (id) => document.getElementById(id);
  const state = {
    key: sessionStorage.getItem(KEY_STORAGE),
    datasets: [],
    zoningCache: new Map(),
    pending: null,   // {kind, body, quote}
    answer: null,    // {kind, doc, zoning}
    keyFields: {},   // kind -> key fields of its values, from the OpenAPI document
  };

  // ---------------------------------------------------------------- HTTP

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.code = err.code || `http_${status}`;
      this.field = err.field || null;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
      });
    } catch (e) {
      throw new ApiError(0, { error: { code: "connection_failed", message: "the service cannot be reached" } });
    }
    let doc = null;
    const text = await resp.text();
    if (text) { try { doc = JSON.parse(text); } catch (e) { doc = null; } }
    if (!resp.ok) {
      if (resp.status === 401) logout("Your key was not accepted (unknown or revoked). Log in again.");
      throw new ApiError(resp.status, doc);
    }
    return doc;
  }

  // ---------------------------------------------------------------- small helpers

  function el(tag, attrs, ...children) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v; else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  // A dataset accounted in zCDP budgets in ρ (field "rho"), any other in ε (field "epsilon").
  const lossField = () => (((currentDataset() || {}).accounting || {}).measure === "zcdp" ? "rho" : "epsilon");
  const lossSymbol = () => (lossField() === "rho" ? "ρ" : "ε");
  const fmtEps = (x) => (x === null || x === undefined || Number.isNaN(Number(x))) ? "–" : `${lossSymbol()} ${+Number(x).toFixed(6)}`;
  const chargedOf = (doc) => doc[`${doc.accounting === "zcdp" ? "rho" : "epsilon"}_charged`];
  const fmtNum = (x) => Number(x).toLocaleString("en-US", { maximumFractionDigits: 1 });
  const fmtErr = (e) => `± ${fmtNum(Math.ceil(Number(e) * 10) / 10)}`;
  const withErr = (c, e) => `${fmtNum(c)} ${fmtErr(e)}`;
  const addDays = (iso, n) => { const d = new Date(iso + "T00:00:00Z"); d.setUTCDate(d.getUTCDate() + n); return d.toISOString().slice(0, 10); };
  // field names as the API contract gives them, with the library's names as fallbacks
  const dsStart = (d) => d.start || d.first_day || (d.time_span || {}).start;
  const dsEnd = (d) => d.end || d.end_day || (d.time_span || {}).end;
  const remainingOf = (w) => Number(w.budget_remaining ?? w.remaining ?? 0);

  function showError(target, err) {
    const box = $(target);
    document.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
    if (!err) { box.hidden = true; box.textContent = ""; return; }
    box.hidden = false;
    box.textContent = err.field ? `${err.message}` : err.message;
    const fieldInput = { epsilon: "epsilon", rho: "epsilon", max_error: "max-error", start: "start", end: "end", hours: "hour-from",
      weekdays: "weekdays", zoning: "zoning", dataset: "dataset", zone: "zone", measure: "measure", case_ref: "case-ref" }[err.field];
    if (fieldInput && $(fieldInput)) $(fieldInput).setAttribute("aria-invalid", "true");
  }

  // ---------------------------------------------------------------- login

  function logout(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    $("workspace").hidden = true; $("budget").hidden = true; $("logout").hidden = true;
    $("login").hidden = false;
    showError("login-error", message ? { message } : null);
  }

  async function login(key) {
    state.key = key;
    const [doc, keyFields] = await Promise.all([api("GET", "/v1/datasets"), loadKeyFields()]);
    state.keyFields = keyFields;
    sessionStorage.setItem(KEY_STORAGE, key);
    state.datasets = Array.isArray(doc) ? doc : (doc.datasets || []);
    $("login").hidden = true; $("workspace").hidden = false; $("logout").hidden = false;
    const sel = $("dataset");
    sel.replaceChildren(...state.datasets.map((d) => el("option", { value: d.name, text: d.name })));
    if (!state.datasets.length) { showError("form-error", { message: "No datasets are loaded yet; ask an administrator." }); return; }
    await onDatasetChange();
  }

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("login-error", null);
    const key = $("api-key").value.trim();
    try { await login(key); $("api-key").value = ""; }
    catch (e) { state.key = null; showError("login-error", e.status === 401 ? { message: "That key was not accepted." } : e); }
  });
  $("logout").addEventListener("click", () => logout());

  // ---------------------------------------------------------------- form

  function currentDataset() { return state.datasets.find((d) => d.name === $("dataset").value); }

  function fillStatic() {
    const from = $("hour-from"), to = $("hour-to");
    for (let h = 0; h < 24; h++) from.append(el("option", { value: h, text: `${String(h).padStart(2, "0")}:00` }));
    for (let h = 1; h <= 24; h++) to.append(el("option", { value: h, text: `${String(h).padStart(2, "0")}:00` }));
    from.value = "0"; to.value = "24";
    const box = $("weekdays");
    WEEKDAYS.forEach((name, i) => box.append(el("label", {}, el("input", { type: "checkbox", value: i, checked: true, "data-weekday": i }), name)));
    document.querySelectorAll("input[name=price]").forEach((r) => r.addEventListener("change", () => {
      const byErr = document.querySelector("input[name=price]:checked").value === "max_error";
      $("epsilon").disabled = byErr; $("max-error").disabled = !byErr; $("confidence").disabled = !byErr;
    }));
    $("kind").addEventListener("change", onKindChange);
    $("dataset").addEventListener("change", onDatasetChange);
    $("zoning").addEventListener("change", onZoningChange);
  }

  async function onDatasetChange() {
    const d = currentDataset();
    if (!d) return;
    const zs = (d.zonings || []).map((z) => (typeof z === "string" ? { name: z } : z));
    const ordered = [...zs.filter((z) => z.name !== "cell"), ...zs.filter((z) => z.name === "cell")];
    $("zoning").replaceChildren(...ordered.map((z) => el("option", { value: z.name,
      text: `${z.name}${z.zones ? ` (${z.zones} zones${z.coarse ? ", coarse" : ""})` : ""}` })));
    const wd = d.window_days ? `${d.window_days}-day privacy windows` : "privacy windows";
    const bounds = d.bounds ? `; each person counts at most ${d.bounds.trips} trips and ${d.bounds.presence} presence-hours per window` : "";
    $("dataset-info").textContent = `${dsStart(d)} to ${dsEnd(d)} (end exclusive), ${wd}${bounds}`;
    $("start").min = dsStart(d); $("start").max = dsEnd(d); $("end").min = dsStart(d); $("end").max = dsEnd(d);
    $("start").value = dsStart(d);
    const zcdp = lossField() === "rho";
    $("price-unit").textContent = lossSymbol();
    $("epsilon").setAttribute("aria-label", zcdp ? "rho" : "epsilon");
    if (zcdp && $("epsilon").value === "0.25") $("epsilon").value = "0.005";  // ρ budgets are small numbers
    if (!zcdp && $("epsilon").value === "0.005") $("epsilon").value = "0.25";
    $("epsilon").step = zcdp ? "0.001" : "0.01"; $("epsilon").min = zcdp ? "0.0001" : "0.001";
    $("end").value = addDays(dsStart(d), d.window_days || 7) > dsEnd(d) ? dsEnd(d) : addDays(dsStart(d), d.window_days || 7);
    await Promise.all([refreshBudget(), onZoningChange()]);
  }

  function onKindChange() {
    $("patterns-options").hidden = $("kind").value !== "patterns";
    $("residents-options").hidden = $("kind").value !== "residents";
  }

  /** The key fields of each kind's values, as the server's OpenAPI document declares them
   * (`x-key-fields` of POST /v1/<kind>): the page keeps no copy of the server's table. */
  async function loadKeyFields() {
    const spec = await api("GET", "/openapi.json");
    const keys = {};
    for (const [path, ops] of Object.entries((spec && spec.paths) || {})) {
      const fields = ops && ops.post && ops.post["x-key-fields"];
      if (Array.isArray(fields) && path.startsWith("/v1/")) keys[path.slice(4)] = fields;
    }
    return keys;
  }
  const WINDOW_KINDS = ["residents", "commuting"];

  async function loadZoning(dataset, zoning) {
    const k = `${dataset}/${zoning}`;
    if (!state.zoningCache.has(k)) {
      state.zoningCache.set(k, api("GET", `/v1/datasets/${encodeURIComponent(dataset)}/zonings/${encodeURIComponent(zoning)}`)
        .then(normalizeZoning).catch((e) => { state.zoningCache.delete(k); throw e; }));
    }
    return state.zoningCache.get(k);
  }

  async function onZoningChange() {
    const d = currentDataset(); const z = $("zoning").value;
    if (!d || !z) return;
    try {
      const zoning = await loadZoning(d.name, z);
      $("zone").replaceChildren(el("option", { value: "", text: "whole area" }), ...zoning.zones.map((id) => el("option", { value: id, text: id })));
      if (!state.answer) drawBaseMap($("base-map"), zoning);
    } catch (e) { showError("form-error", e); }
  }

  function queryBody() {
    const kind = $("kind").value;
    const body = { dataset: $("dataset").value, zoning: $("zoning").value, start: $("start").value, end: $("end").value };
    const hf = +$("hour-from").value, ht = +$("hour-to").value;
    const whole = WINDOW_KINDS.includes(kind); // residents and commuting count whole weeks: no hours or weekdays
    if (!whole && !(hf === 0 && ht === 24)) body.hours = [hf, ht];
    const days = [...document.querySelectorAll("[data-weekday]")].filter((c) => c.checked).map((c) => +c.value);
    if (!whole && days.length !== 7) body.weekdays = days;
    if (kind === "residents") body.place = $("place").value;
    if (document.querySelector("input[name=price]:checked").value === "epsilon") body[lossField()] = Number($("epsilon").value);
    else { body.max_error = Number($("max-error").value); body.confidence = Number($("confidence").value); }
    if ($("clamp").checked) body.clamp_negative = true;
    if ($("case-ref").value.trim()) body.case_ref = $("case-ref").value.trim();
    if (kind === "patterns") { body.measure = $("measure").value; if ($("zone").value) body.zone = $("zone").value; }
    return { kind, body };
  }

  // ---------------------------------------------------------------- quote → confirm → run

  $("query-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("form-error", null);
    const { kind, body } = queryBody();
    if (body.weekdays && !body.weekdays.length) { showError("form-error", { message: "Pick at least one weekday.", field: "weekdays" }); return; }
    $("quote-button").disabled = true;
    try {
      const quote = await api("POST", "/v1/quote", { ...body, query: kind });
      state.pending = { kind, body, quote };
      showConfirm(kind, body, quote);
    } catch (e) { showError("form-error", e); }
    finally { $("quote-button").disabled = false; }
  });

  function showConfirm(kind, body, q) {
    const box = $("confirm-text");
    const charged = Number(chargedOf(q) ?? q[lossField()]);
    const parts = [];
    if (q.reused) {
      parts.push(el("p", { class: "free", "data-testid": "confirm-free", text: `An identical question was already answered: you get the stored answer again, free (${fmtEps(0)}).` }));
    } else {
      parts.push(el("p", {}, "This will cost ", el("strong", { "data-testid": "confirm-epsilon", text: fmtEps(charged) }),
        ` in each of ${q.windows.length} privacy window${q.windows.length === 1 ? "" : "s"} it touches.`));
    }
    if (q.epsilon_derived || body.max_error !== undefined) parts.push(el("p", { class: "hint", text: `${lossSymbol()} derived from your target error ± ${body.max_error} at ${Math.round((body.confidence || 0.95) * 100)}% confidence.` }));
    parts.push(el("p", {}, "Each released value will be within ", el("strong", { text: fmtErr(q.error_bound_95) }), " of the truth with 95% confidence."));
    const rows = q.windows.map((w) => {
      const before = remainingOf(w);
      const after = before - charged;
      return el("tr", {}, el("td", { text: `window ${w.window}` }), el("td", { text: `${w.start} – ${w.end}` }),
        el("td", { text: fmtEps(before) }), el("td", { class: after < -1e-12 ? "error" : "", text: after < -1e-12 ? "not enough budget" : fmtEps(Math.max(after, 0)) }));
    });
    parts.push(el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "Window" }), el("th", { text: "Days" }), el("th", { text: "Remaining now" }), el("th", { text: "Remaining after" }))), el("tbody", {}, ...rows)));
    const short = !q.reused && q.windows.some((w) => remainingOf(w) - charged < -1e-12);
    if (short) parts.push(el("p", { class: "error", "data-testid": "confirm-short", text: `Not enough budget left in every window this question touches: it would be refused. Ask for fewer weeks, a smaller ${lossSymbol()} or a larger target error.` }));
    box.replaceChildren(...parts);
    $("confirm-run").disabled = short;
    $("confirm-run").textContent = q.reused ? "Show the stored answer (free)" : `Spend ${fmtEps(charged)} and run`;
    $("confirm").hidden = false;
    $("confirm-run").focus();
  }

  $("confirm-cancel").addEventListener("click", () => { state.pending = null; $("confirm").hidden = true; });
  $("confirm-run").addEventListener("click", async () => {
    const p = state.pending;
    if (!p) return;
    $("confirm-run").disabled = true;
    try {
      const doc = await api("POST", `/v1/${p.kind}`, p.body);
      const zoning = await loadZoning(p.body.dataset, p.body.zoning);
      state.answer = { kind: p.kind, doc, zoning };
      $("confirm").hidden = true; state.pending = null;
      renderAnswer();
    } catch (e) { $("confirm").hidden = true; showError("form-error", e); }
    finally { $("confirm-run").disabled = false; refreshBudget(); }
  });

  // ---------------------------------------------------------------- budget

  async function refreshBudget() {
    const d = currentDataset();
    if (!d) return;
    try {
      const b = await api("GET", `/v1/budget?dataset=${encodeURIComponent(d.name)}`);
      const wins = b.windows || [];
      const remaining = b.budget_remaining ?? (wins.length ? Math.min(...wins.map(remainingOf)) : 0);
      $("budget").hidden = false;
      $("budget-dataset").textContent = `on ${d.name} (least in any window):`;
      $("budget-remaining").textContent = fmtEps(remaining);
      $("budget-remaining").dataset.value = String(remaining);
      $("budget").classList.toggle("low", Number(remaining) <= 0);
      const top = Math.max(1e-9, ...wins.map((w) => remainingOf(w) + Number(w.spent ?? w.client_spent ?? 0)));
      $("budget-windows").replaceChildren(...wins.map((w) => {
        const bar = el("span", { title: `window ${w.window} (${w.start} – ${w.end}): ${fmtEps(remainingOf(w))} left` });
        bar.style.height = `${Math.max(1, Math.round(18 * remainingOf(w) / top))}px`;
        return bar;
      }));
    } catch (e) {
      if (e.status !== 401) { $("budget").hidden = false; $("budget-remaining").textContent = "unavailable"; }
    }
  }

  // ---------------------------------------------------------------- geography

  /** Normalize the zoning document of GET /v1/datasets/<d>/zonings/<z>: zones [{zone_id, cells,
   *  centroid: [lat, lon]}], cells [{cell_id, lat, lon, zone_id}], geometry (GeoJSON or null).
   *  Returns zones (ids), cells, centroids (zone -> [lon, lat], GeoJSON order) and polygons. */
  function normalizeZoning(doc) {
    const cells = (doc.cells || []).map((c) => ({ id: c.cell_id, lat: +c.lat, lon: +c.lon, zone: String(c.zone_id ?? c.zone) }));
    const zoneObjs = (doc.zones || []).map((z) => (typeof z === "object" ? z : { zone_id: z }));
    let zones = zoneObjs.map((z) => String(z.zone_id ?? z.zone ?? z.id));
    const polygons = new Map();
    for (const f of ((doc.geometry || {}).features || [])) {
      const p = f.properties || {};
      const id = p.zone_id ?? p.zone ?? p.id ?? p.name ?? f.id;
      const g = f.geometry || {};
      if (id === undefined || id === null) continue;
      if (g.type === "Polygon") polygons.set(String(id), [g.coordinates]);
      else if (g.type === "MultiPolygon") polygons.set(String(id), g.coordinates);
    }
    const centroids = new Map();
    zoneObjs.forEach((z, i) => { if (Array.isArray(z.centroid)) centroids.set(zones[i], [+z.centroid[1], +z.centroid[0]]); });
    if (!centroids.size) {
      const acc = new Map();
      for (const c of cells) { const a = acc.get(c.zone) || [0, 0, 0]; a[0] += c.lon; a[1] += c.lat; a[2] += 1; acc.set(c.zone, a); }
      for (const [z, a] of acc) centroids.set(z, [a[0] / a[2], a[1] / a[2]]);
    }
    if (!zones.length) zones = [...new Set([...centroids.keys(), ...polygons.keys()])].sort();
    return { name: doc.name, coarse: !!doc.coarse, zones, cells, centroids, polygons, hasGeometry: polygons.size > 0 };
  }

  /** Equirectangular projection fitted to the zoning's extent (no tiles, no network). */
  function projection(zoning) {
    const pts = [];
    for (const c of zoning.cells) pts.push([c.lon, c.lat]);
    for (const rings of zoning.polygons.values()) for (const poly of rings) for (const ring of poly) for (const p of ring) pts.push(p);
    for (const c of zoning.centroids.values()) pts.push(c);
    if (!pts.length) return null;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const [x, y] of pts) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    const kx = Math.cos(((y0 + y1) / 2) * Math.PI / 180);
    const spanX = Math.max((x1 - x0) * kx, 1e-6), spanY = Math.max(y1 - y0, 1e-6);
    // room for the Voronoi regions of the outer cells: half a typical spacing around the extent
    const margin = 0.5 * Math.sqrt((spanX * spanY) / Math.max(zoning.cells.length, 1));
    const s = Math.min((MAP_W - 2 * PAD) / (spanX + 2 * margin), (MAP_H - 2 * PAD) / (spanY + 2 * margin));
    const ox = (MAP_W - s * spanX) / 2, oy = (MAP_H - s * spanY) / 2;
    const project = ([lon, lat]) => [ox + (lon - x0) * kx * s, MAP_H - (oy + (lat - y0) * s)];
    return { project, box: [ox - margin * s, oy - margin * s, ox + (spanX + margin) * s, oy + (spanY + margin) * s].map((v, i) => (i % 2 ? MAP_H - v : v)) };
  }

  /** Voronoi region of each point inside a box, by clipping the box with bisector half-planes.
   *  Neighbours come from a bucket grid, ring by ring outwards; a ring farther than twice the
   *  region's current radius cannot cut it any more, so the work per point stays local. */
  function voronoi(points, box) {
    const [bx0, by1, bx1, by0] = box; // box given as [x0, yBottom, x1, yTop] in screen coordinates
    const base = [[bx0, by0], [bx1, by0], [bx1, by1], [bx0, by1]];
    const w = bx1 - bx0, h = by1 - by0;
    const size = Math.max(Math.sqrt((w * h) / Math.max(points.length, 1)), 1e-9);
    const nx = Math.max(1, Math.ceil(w / size)), ny = Math.max(1, Math.ceil(h / size));
    const gx = (x) => Math.min(nx - 1, Math.max(0, Math.floor((x - bx0) / size)));
    const gy = (y) => Math.min(ny - 1, Math.max(0, Math.floor((y - by0) / size)));
    const buckets = new Map();
    points.forEach((p, i) => { const k = gx(p[0]) + nx * gy(p[1]); if (!buckets.has(k)) buckets.set(k, []); buckets.get(k).push(i); });
    const maxRing = Math.max(nx, ny);
    return points.map((p, i) => {
      let poly = base;
      let r2 = Infinity;
      const cx = gx(p[0]), cy = gy(p[1]);
      for (let ring = 0; ring <= maxRing; ring++) {
        if (ring >= 2 && (ring - 1) * size > 2 * Math.sqrt(r2)) break;
        for (let yy = cy - ring; yy <= cy + ring; yy++) {
          if (yy < 0 || yy >= ny) continue;
          const edgeRow = yy === cy - ring || yy === cy + ring;
          for (let xx = cx - ring; xx <= cx + ring; xx += edgeRow ? 1 : 2 * ring || 1) {
            if (xx < 0 || xx >= nx) continue;
            for (const j of buckets.get(xx + nx * yy) || []) {
              if (j === i) continue;
              const q = points[j];
              const ux = q[0] - p[0], uy = q[1] - p[1];
              if (ux === 0 && uy === 0) continue;
              poly = clip(poly, ux, uy, (ux * (p[0] + q[0]) + uy * (p[1] + q[1])) / 2);
            }
          }
        }
        if (!poly.length) break;
        r2 = Math.max(...poly.map((v) => (v[0] - p[0]) ** 2 + (v[1] - p[1]) ** 2));
      }
      return poly;
    });
  }
  function clip(poly, nx, ny, c) { // keep n·x <= c
    const out = [];
    for (let k = 0; k < poly.length; k++) {
      const a = poly[k], b = poly[(k + 1) % poly.length];
      const da = nx * a[0] + ny * a[1] - c, db = nx * b[0] + ny * b[1] - c;
      if (da <= 0) out.push(a);
      if ((da < 0 && db > 0) || (da > 0 && db < 0)) { const t = da / (da - db); out.push([a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])]); }
    }
    return out;
  }

  const pathOf = (pts) => pts.length ? `M${pts.map((p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join("L")}Z` : "";

  /** Zone shapes in screen space: zone -> [svg path strings]. A polygon (its holes as further
   *  subpaths, filled even-odd) for each zone the geometry has; the Voronoi regions of its cells
   *  for any zone it lacks (a CSV zoning with partial polygons, or none). */
  function zoneShapes(zoning, proj) {
    const shapes = new Map();
    for (const [zone, polys] of zoning.polygons) shapes.set(zone, polys.map((poly) => poly.map((ring) => pathOf(ring.map(proj.project))).join("")));
    if (!zoning.cells.length || zoning.cells.length > MAX_VORONOI_CELLS || zoning.zones.every((z) => shapes.has(z))) return shapes;
    const regions = cellRegions(zoning, proj);
    const drawn = new Set(shapes.keys());
    zoning.cells.forEach((c, i) => {
      if (drawn.has(c.zone)) return;
      if (!shapes.has(c.zone)) shapes.set(c.zone, []);
      shapes.get(c.zone).push(pathOf(regions[i]));
    });
    return shapes;
  }

  const PALETTE = ["#dfe7ef", "#d3e0d6", "#efe3d0", "#e6d9e8", "#d6e4ea", "#ece7cf", "#dcdcec", "#e9dcd6"];

  /** Draw the zoning; `fillFor(zone)` returns a fill colour or null for a neutral palette. */
  function drawZones(svg, zoning, proj, fillFor, titleFor) {
    const shapes = zoneShapes(zoning, proj);
    const g = el("svg:g", { class: "zones" });
    const edges = el("svg:g", {});
    let idx = 0;
    for (const zone of zoning.zones) {
      const paths = shapes.get(zone) || [];
      const fill = (fillFor && fillFor(zone)) || PALETTE[idx++ % PALETTE.length];
      const zg = el("svg:g", { "data-zone": zone });
      for (const d of paths) zg.append(el("svg:path", { d, class: "zone", fill, stroke: fill }));
      if (titleFor) zg.append(el("svg:title", { text: titleFor(zone) }));
      g.append(zg);
      if (zoning.polygons.has(zone)) for (const d of paths) edges.append(el("svg:path", { d, class: "zone-edge" }));
    }
    svg.append(g);
    if (!zoning.hasGeometry && zoning.cells.length <= MAX_VORONOI_CELLS) {
      // boundaries only where neighbouring cells belong to different zones: outline each zone's union
      drawZoneBorders(edges, zoning, proj);
    }
    svg.append(edges);
    if (zoning.cells.length && zoning.cells.length <= 2000) {
      const dots = el("svg:g", {});
      for (const c of zoning.cells) { const [x, y] = proj.project([c.lon, c.lat]); dots.append(el("svg:circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 1.6, class: "cell-dot" })); }
      svg.append(dots);
    }
  }

  /** Voronoi regions of a zoning's cells in screen space, computed once per zoning. */
  function cellRegions(zoning, proj) {
    if (!zoning.regions) zoning.regions = voronoi(zoning.cells.map((c) => proj.project([c.lon, c.lat])), proj.box);
    return zoning.regions;
  }

  /** White borders between Voronoi regions of cells in different zones. */
  function drawZoneBorders(g, zoning, proj) {
    const regions = cellRegions(zoning, proj);
    const key = (p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`;
    const owner = new Map();
    regions.forEach((poly, i) => poly.forEach((a, k) => {
      const b = poly[(k + 1) % poly.length];
      const ek = [key(a), key(b)].sort().join("|");
      const seen = owner.get(ek);
      if (seen === undefined) owner.set(ek, { zone: zoning.cells[i].zone, a, b, shared: false });
      else if (seen.zone !== zoning.cells[i].zone) seen.shared = true; else seen.same = true;
    }));
    let d = "";
    for (const e of owner.values()) if (e.shared || !e.same) d += `M${e.a[0].toFixed(1)},${e.a[1].toFixed(1)}L${e.b[0].toFixed(1)},${e.b[1].toFixed(1)}`;
    g.append(el("svg:path", { d, class: "zone-edge" }));
  }

  function drawLabels(svg, zoning, proj) {
    if (zoning.zones.length > 60) return;
    const g = el("svg:g", {});
    for (const zone of zoning.zones) {
      const c = zoning.centroids.get(zone); if (!c) continue;
      const [x, y] = proj.project(c);
      g.append(el("svg:text", { x: x.toFixed(1), y: (y - 6).toFixed(1), class: "zone-label", "text-anchor": "middle", text: zone }));
    }
    svg.append(g);
  }

  function drawBaseMap(svg, zoning) {
    svg.replaceChildren();
    const proj = projection(zoning);
    if (!proj) { svg.append(el("svg:text", { x: 20, y: 30, text: "This zoning has no public geometry or cell coordinates to draw." })); return; }
    drawZones(svg, zoning, proj, null, (z) => `zone ${z}`);
    drawLabels(svg, zoning, proj);
  }

  // ---------------------------------------------------------------- answers

  function renderAnswer() {
    const { kind, doc } = state.answer;
    $("placeholder").hidden = true; $("answer").hidden = false;
    renderSummary(kind, doc);
    renderMapTools(kind, doc);
    renderMap();
    renderTable(kind, doc);
    $("download-geojson").hidden = kind === "patterns" || kind === "commuting"; // no single geography per value
  }

  function renderSummary(kind, doc) {
    const e = doc.error_bound_95;
    const badge = doc.reused
      ? el("span", { class: "badge reused", "data-testid": "reused", text: `reused: free (stored answer, ${fmtEps(0)})` })
      : el("span", { class: "badge spent", text: `spent ${fmtEps(chargedOf(doc))} per window` });
    const wins = (doc.windows || []).map((w) => `${w.window} (${w.start} – ${w.end})`).join(", ");
    const mech = doc.mechanism || {};
    const post = (doc.postprocessing || []).map((p) => (typeof p === "string" ? p : (p.name || JSON.stringify(p)))).join("; ");
    $("answer-summary").replaceChildren(...[
      el("span", { class: "big", text: `${kind} · ${doc.query?.zoning ?? ""} · ${doc.query?.start ?? ""} – ${doc.query?.end ?? ""}` }),
      badge,
      el("span", {}, "every value ", el("strong", { "data-testid": "error-bound", text: fmtErr(e) }), ` (${Math.round((doc.confidence || 0.95) * 100)}% confidence)`),
      el("span", { class: "muted", text: `windows ${wins}` }),
      el("span", { class: "muted", text: `budget left after: ${fmtEps(doc.budget_remaining)}` }),
      el("span", { class: "muted", text: `privacy unit: ${doc.privacy_unit}` }),
      doc.approx_dp ? el("span", { class: "muted", "data-testid": "approx-dp", text: `this answer alone is (ε ${+Number(doc.approx_dp.epsilon).toFixed(3)}, δ ${doc.approx_dp.delta})-DP` }) : null,
      el("span", { class: "muted", text: `${mech.name || ""} noise, scale ${fmtNum(mech.noise_scale)}, sensitivity ${mech.sensitivity}` }),
      post ? el("span", { class: "muted", text: `post-processing: ${post}` }) : null,
      el("span", { class: "muted", text: `answer ${doc.answer_id}` }),
    ].filter(Boolean));
  }

  function renderMapTools(kind, doc) {
    const tools = $("map-tools");
    tools.replaceChildren();
    const e = Number(doc.error_bound_95);
    if (kind === "flows" || kind === "commuting") {
      const sel = el("select", { id: "flow-filter" },
        el("option", { value: "signal", text: `flows above the error bound (> ${fmtErr(e).slice(2)})` }),
        el("option", { value: "positive", text: "all positive flows" }));
      const top = el("select", { id: "flow-top" }, ...[50, 100, 300].map((n) => el("option", { value: n, text: `top ${n}`, selected: n === 100 })));
      const self = el("label", {}, el("input", { type: "checkbox", id: "flow-self", checked: true }), " flows within a zone");
      tools.append(el("label", {}, "show ", sel), el("label", {}, top), self);
      [sel, top, self.firstChild].forEach((n) => n.addEventListener("change", renderMap));
    } else if (kind === "presence") {
      const hours = [...new Set(doc.values.map((v) => v.hour))].sort((a, b) => a - b);
      const sel = el("select", { id: "presence-hour" }, ...hours.map((h) => el("option", { value: h, text: `${String(h).padStart(2, "0")}:00–${String(h + 1).padStart(2, "0")}:00` })));
      tools.append(el("label", {}, "hour ", sel), el("span", { class: "muted", text: "one hour at a time: each value has its own ± bound; sums of noisy values would not" }));
      sel.addEventListener("change", renderMap);
    }
    if (WINDOW_KINDS.includes(kind)) {
      const windows = [...new Set(doc.values.map((v) => v.window))].sort();
      const sel = el("select", { id: "answer-window" }, ...windows.map((w) => el("option", { value: w, text: `week from ${w}` })));
      tools.append(el("label", {}, "week ", sel));
      sel.addEventListener("change", renderMap);
    }
  }

  /** Values of the chosen week, keyed as the zone maps draw them (commuting as flows home → work). */
  function ofWindow(kind, doc) {
    const w = ($("answer-window") || {}).value ?? doc.values[0]?.window;
    const values = doc.values.filter((v) => v.window === w);
    return kind === "commuting" ? values.map((v) => ({ origin: v.home, destination: v.work, count: v.count })) : values;
  }

  function renderMap() {
    const { kind, doc, zoning } = state.answer;
    const svg = $("map");
    svg.replaceChildren();
    const e = Number(doc.error_bound_95);
    if (kind === "patterns") { drawHeat(svg, doc, e); return; }
    const proj = projection(zoning);
    if (!proj) { svg.append(el("svg:text", { x: 20, y: 30, text: "No public geometry or cell coordinates to draw this zoning; see the table." })); return; }
    if (kind === "presence") drawPresence(svg, doc, zoning, proj, e);
    else if (kind === "commuting") drawFlows(svg, { ...doc, values: ofWindow(kind, doc) }, zoning, proj, e);
    else if (kind === "residents") drawZoneCounts(svg, ofWindow(kind, doc), zoning, proj, e, `people whose ${doc.query.place} lies in each zone, week from ${($("answer-window") || {}).value ?? doc.values[0]?.window}`);
    else if (kind === "inflows" || kind === "outflows") drawZoneCounts(svg, doc.values, zoning, proj, e, `trips ${kind === "inflows" ? "arriving in" : "leaving"} each zone`);
    else drawFlows(svg, doc, zoning, proj, e);
  }

  /** One value per zone as a choropleth (residents, in- and outflows). */
  function drawZoneCounts(svg, values, zoning, proj, e, title) {
    const byZone = new Map(values.map((v) => [String(v.zone), v.count]));
    const max = Math.max(1, ...byZone.values());
    const g = el("svg:g", { "data-testid": "zone-counts" });
    svg.append(g);
    drawZones(g, zoning, proj, (z) => byZone.has(z) ? colorRamp(Math.max(byZone.get(z), 0) / max) : "#eeeeee",
      (z) => `zone ${z}: ${byZone.has(z) ? withErr(byZone.get(z), e) : "no value"}`);
    drawLabels(svg, zoning, proj);
    const steps = [0, 0.25, 0.5, 0.75, 1];
    $("legend").replaceChildren(el("span", { text: `${title}, each ${fmtErr(e)}:` }),
      ...steps.map((t) => { const s = el("span", {}); const sw = el("span", { class: "swatch" }); sw.style.background = colorRamp(t); s.append(sw, ` ${fmtNum(t * max)}`); return s; }),
      noiseWarning([...byZone.values()], e));
  }

  function colorRamp(t) { // light yellow → dark blue, readable in print
    const stops = [[255, 247, 220], [161, 218, 180], [65, 182, 196], [34, 94, 168], [12, 44, 132]];
    const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
    const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function drawPresence(svg, doc, zoning, proj, e) {
    const hour = Number(($("presence-hour") || {}).value ?? doc.values[0]?.hour);
    const byZone = new Map(doc.values.filter((v) => v.hour === hour).map((v) => [String(v.zone), v.count]));
    const max = Math.max(1, ...byZone.values());
    drawZones(svg, zoning, proj, (z) => byZone.has(z) ? colorRamp(Math.max(byZone.get(z), 0) / max) : "#eeeeee",
      (z) => `zone ${z}, ${String(hour).padStart(2, "0")}:00: ${byZone.has(z) ? withErr(byZone.get(z), e) : "no value"}`);
    if (!zoning.hasGeometry && !zoning.cells.length) {
      for (const [z, c] of byZone) { const [x, y] = proj.project(zoning.centroids.get(z) || [0, 0]); svg.append(el("svg:circle", { cx: x, cy: y, r: 8, fill: colorRamp(Math.max(c, 0) / max) })); }
    }
    drawLabels(svg, zoning, proj);
    const steps = [0, 0.25, 0.5, 0.75, 1];
    $("legend").replaceChildren(
      el("span", { text: `people present per zone, ${String(hour).padStart(2, "0")}:00 (person-hours), each ${fmtErr(e)}:` }),
      ...steps.map((t) => { const s = el("span", {}); const sw = el("span", { class: "swatch" }); sw.style.background = colorRamp(t); s.append(sw, ` ${fmtNum(t * max)}`); return s; }),
      el("span", { text: zoning.hasGeometry ? "zones from the zoning's polygons" : "zones drawn as the regions nearest their cells" }),
      noiseWarning([...byZone.values()], e),
    );
  }

  /** A warning when no shown value stands out from its noise: colours would suggest differences that are not there. */
  function noiseWarning(counts, e) {
    const spread = Math.max(...counts) - Math.min(...counts);
    if (!counts.length || spread > 2 * e) return null;
    return el("strong", { class: "error", "data-testid": "noise-warning",
      text: `every difference on this map is within the noise (values span ${fmtNum(spread)}, each ${fmtErr(e)}): ask for longer periods, larger zones or a larger ε` });
  }

  function drawFlows(svg, doc, zoning, proj, e) {
    drawZones(svg, zoning, proj, null, (z) => `zone ${z}`);
    const mode = ($("flow-filter") || {}).value || "signal";
    const top = Number(($("flow-top") || {}).value || 100);
    const showSelf = ($("flow-self") || { checked: true }).checked;
    const threshold = mode === "signal" ? e : 0;
    const flows = doc.values.filter((v) => v.count > threshold && (showSelf || v.origin !== v.destination))
      .sort((a, b) => b.count - a.count).slice(0, Math.min(top, MAX_FLOWS_DRAWN));
    const max = Math.max(1, ...flows.map((v) => v.count));
    const g = el("svg:g", { class: "flows", "data-testid": "flows" });
    for (const v of [...flows].reverse()) { // biggest drawn last, on top
      const a = zoning.centroids.get(String(v.origin)), b = zoning.centroids.get(String(v.destination));
      if (!a || !b) continue;
      const [x1, y1] = proj.project(a), [x2, y2] = proj.project(b);
      const w = 1 + 9 * (v.count / max);
      const title = el("svg:title", { text: `${v.origin} → ${v.destination}: ${withErr(v.count, e)} trips` });
      if (v.origin === v.destination) {
        g.append(el("svg:circle", { cx: x1.toFixed(1), cy: y1.toFixed(1), r: (3 + 12 * Math.sqrt(v.count / max)).toFixed(1), class: "self-flow", "data-flow": `${v.origin}>${v.destination}` }, title));
        continue;
      }
      // bend each line to its right so that A→B and B→A stay apart
      const mx = (x1 + x2) / 2, my = (y1 + y2) / 2, dx = x2 - x1, dy = y2 - y1, len = Math.hypot(dx, dy) || 1;
      const bend = Math.min(40, 0.15 * len);
      const cx = mx - (dy / len) * bend, cy = my + (dx / len) * bend;
      // arrowhead: a triangle at the destination along the curve's end tangent, sized to the line
      const tx = x2 - cx, ty = y2 - cy, tl = Math.hypot(tx, ty) || 1, ux = tx / tl, uy = ty / tl;
      const head = 6 + 1.6 * w, bx = x2 - ux * head, by = y2 - uy * head, hw = head * 0.55;
      const opacity = (0.35 + 0.6 * v.count / max).toFixed(2);
      const flow = el("svg:g", { "data-flow": `${v.origin}>${v.destination}` }, title,
        el("svg:path", { d: `M${x1.toFixed(1)},${y1.toFixed(1)}Q${cx.toFixed(1)},${cy.toFixed(1)} ${bx.toFixed(1)},${by.toFixed(1)}`, class: "flow",
          "stroke-width": w.toFixed(2), "stroke-opacity": opacity }),
        el("svg:path", { d: `M${x2.toFixed(1)},${y2.toFixed(1)}L${(bx - uy * hw).toFixed(1)},${(by + ux * hw).toFixed(1)}L${(bx + uy * hw).toFixed(1)},${(by - ux * hw).toFixed(1)}Z`,
          class: "flow-head", "fill-opacity": opacity }));
      g.append(flow);
    }
    svg.append(g);
    drawLabels(svg, zoning, proj);
    const hidden = doc.values.filter((v) => v.count > 0).length - flows.length;
    $("legend").replaceChildren(
      el("span", { text: `line width ∝ trips; largest ${withErr(max, e)}` }),
      el("span", { text: `${flows.length} flows drawn${hidden > 0 ? `, ${hidden} more positive values not drawn (${mode === "signal" ? "within the error bound or " : ""}below the top ${top})` : ""}` }),
      el("span", { text: zoning.hasGeometry ? "zones from the zoning's polygons" : "zones drawn as the regions nearest their cells; lines join zone centroids" }),
    );
  }

  function drawHeat(svg, doc, e) {
    const hours = [...new Set(doc.values.map((v) => v.hour))].sort((a, b) => a - b);
    const days = [...new Set(doc.values.map((v) => v.weekday))].sort((a, b) => a - b);
    const max = Math.max(1, ...doc.values.map((v) => v.count));
    const cw = Math.min(30, (MAP_W - 70) / hours.length), ch = Math.min(50, (MAP_H - 60) / days.length);
    const g = el("svg:g", { class: "heat" });
    hours.forEach((h, i) => g.append(el("svg:text", { x: 60 + i * cw + cw / 2, y: 20, "text-anchor": "middle", text: h })));
    days.forEach((d, j) => {
      g.append(el("svg:text", { x: 50, y: 30 + j * ch + ch / 2 + 4, "text-anchor": "end", text: WEEKDAYS[d] }));
      hours.forEach((h, i) => {
        const v = doc.values.find((r) => r.weekday === d && r.hour === h);
        const rect = el("svg:rect", { x: 60 + i * cw, y: 30 + j * ch, width: cw - 1, height: ch - 1, fill: colorRamp(Math.max(v ? v.count : 0, 0) / max) },
          el("svg:title", { text: `${WEEKDAYS[d]} ${h}:00: ${v ? withErr(v.count, e) : "no value"}` }));
        g.append(rect);
      });
    });
    svg.append(g);
    $("legend").replaceChildren(el("span", { text: `counts per weekday and hour (summed over the dates asked), each ${fmtErr(e)}; hover a square for its value` }),
      noiseWarning(doc.values.map((v) => v.count), e));
  }

  function renderTable(kind, doc) {
    const e = Number(doc.error_bound_95);
    const keys = state.keyFields[kind];
    const rows = [...doc.values].sort((a, b) => b.count - a.count);
    $("table-title").textContent = `Values (${rows.length}${rows.length > MAX_TABLE_ROWS ? `, largest ${MAX_TABLE_ROWS} shown` : ""}), each ${fmtErr(e)} at ${Math.round((doc.confidence || 0.95) * 100)}% confidence${doc.reused ? " — reused answer, free" : ""}`;
    const head = el("tr", {}, ...keys.map((k) => el("th", { text: k })), el("th", { text: "count ± error" }), el("th", { text: "interval (true value)" }));
    const body = rows.slice(0, MAX_TABLE_ROWS).map((v) => el("tr", { class: Math.abs(v.count) <= e ? "weak" : null },
      ...keys.map((k) => el("td", { text: k === "weekday" ? WEEKDAYS[v[k]] : v[k] })),
      el("td", { class: "num", text: withErr(v.count, e) }),
      el("td", { class: "num", text: `${fmtNum(Math.max(v.count - e, 0))} – ${fmtNum(v.count + e)}` })));
    $("values").tHead.replaceChildren(head);
    $("values").tBodies[0].replaceChildren(...body);
  }

  // ---------------------------------------------------------------- downloads (post-processing, free)

  function save(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = el("a", { href: url, download: name });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function answerMeta(doc) {
    return { answer_id: doc.answer_id, query: doc.query, accounting: doc.accounting, epsilon_charged: doc.epsilon_charged,
      rho_charged: doc.rho_charged, approx_dp: doc.approx_dp, reused: doc.reused,
      privacy_unit: doc.privacy_unit, error_bound_95: doc.error_bound_95, confidence: doc.confidence,
      mechanism: doc.mechanism, postprocessing: doc.postprocessing };
  }

  function valueProps(v, e) { return { count: v.count, error_bound_95: e, lower: Math.max(v.count - e, 0), upper: v.count + e }; }

  /** The same GeoJSON as dpflows.geo: flows as LineStrings between centroids, presence as polygons or points. */
  function answerGeoJSON({ kind, doc, zoning }) {
    const e = Number(doc.error_bound_95);
    const features = [];
    for (const v of doc.values) {
      let geometry = null, keys;
      if (kind === "flows") {
        const a = zoning.centroids.get(String(v.origin)), b = zoning.centroids.get(String(v.destination));
        if (a && b) geometry = v.origin === v.destination ? { type: "Point", coordinates: a } : { type: "LineString", coordinates: [a, b] };
        keys = { origin: v.origin, destination: v.destination, intrazonal: v.origin === v.destination };
      } else {
        const polys = zoning.polygons.get(String(v.zone)), c = zoning.centroids.get(String(v.zone));
        if (polys) geometry = polys.length === 1 ? { type: "Polygon", coordinates: polys[0] } : { type: "MultiPolygon", coordinates: polys };
        else if (c) geometry = { type: "Point", coordinates: c };
        keys = { zone: v.zone, hour: v.hour };
      }
      features.push({ type: "Feature", geometry, properties: { ...keys, ...valueProps(v, e) } });
    }
    return { type: "FeatureCollection", features, dpflows: answerMeta(doc) };
  }

  function answerCSV({ kind, doc }) {
    const e = Number(doc.error_bound_95);
    const keys = state.keyFields[kind];
    const cols = [...keys, "count", "error_bound_95", "lower", "upper"];
    const cell = (x) => (/[",\n]/.test(String(x)) ? `"${String(x).replace(/"/g, '""')}"` : String(x));
    const lines = [cols.join(",")]; // plain CSV for any tool; the answer id is in the file name
    for (const v of doc.values) { const p = valueProps(v, e); lines.push([...keys.map((k) => v[k]), p.count, p.error_bound_95, p.lower, p.upper].map(cell).join(",")); }
    return lines.join("\n") + "\n";
  }

  $("download-csv").addEventListener("click", () => {
    if (state.answer) save(`dpflows-${state.answer.kind}-${state.answer.doc.answer_id}.csv`, "text/csv", answerCSV(state.answer));
  });
  $("download-geojson").addEventListener("click", () => {
    if (state.answer) save(`dpflows-${state.answer.kind}-${state.answer.doc.answer_id}.geojson`, "application/geo+json", JSON.stringify(answerGeoJSON(state.answer)));
  });

  // ---------------------------------------------------------------- start

  fillStatic();
  onKindChange();
  if (state.key) login(state.key).catch(() => logout("Your saved key was not accepted; log in again."));
})();
