// clipsearch's page: one search box, a virtualised grid of thumbnails, a detail view. No framework, no build.
// The URL holds the whole search (the API's own parameter names), so a search can be bookmarked and shared.
"use strict";
(() => {
  const PAGE = 60;           // results fetched at a time
  const MAX_RESULTS = 1000;  // the most the grid loads for one search
  const GAP = 8;
  const CAPTION = 0;         // scores sit on the tile itself
  const FILTER_KEYS = ["folder", "taken_from", "taken_to", "modified_from", "modified_to", "format", "sort", "cutoff",
                       "min_score", "path_glob", "min_width", "min_height", "min_megapixels", "max_megapixels"];
  const DEFAULTS = { sort: "score", cutoff: "none" };

  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  };

  const grid = $("#grid"), q = $("#q"), statusLine = $("#status"), detail = $("#detail"), help = $("#help");
  const S = {
    params: new URLSearchParams(),  // the current search, as in the URL
    results: [], more: false, loading: false, seq: 0, abort: null,
    tiles: new Map(), cols: 1, tile: 160, rowH: 168, active: -1, detailIndex: -1,
    limits: { upload_max_bytes: 20 * 1024 * 1024 },
  };
  window.clipsearchTimings = {};

  // -- the search as URL parameters ---------------------------------------------------------------
  function hasTerms(p) {
    return !!((p.get("q") || "").trim() || p.getAll("like").length || p.get("upload"));
  }

  function formToParams() {
    const p = new URLSearchParams();
    const text = q.value.trim();
    if (text) p.set("q", text);
    for (const id of S.params.getAll("like")) p.append("like", id);
    for (const id of S.params.getAll("unlike")) p.append("unlike", id);
    if (S.params.get("upload")) p.set("upload", S.params.get("upload"));
    const folder = $("#folder").value.trim();
    if (folder) p.set("folder", folder);
    const field = $("#date-field").value;
    if ($("#date-from").value) p.set(field + "_from", $("#date-from").value);
    if ($("#date-to").value) p.set(field + "_to", $("#date-to").value);
    if ($("#format").value) p.set("format", $("#format").value);
    for (const key of ["sort", "cutoff"]) {
      const v = $("#" + key).value;
      if (v && v !== DEFAULTS[key]) p.set(key, v);
    }
    for (const key of ["min_score", "path_glob", "min_width", "min_height", "min_megapixels", "max_megapixels"]) {
      if (S.params.get(key)) p.set(key, S.params.get(key));  // kept from the URL: no control on the page
    }
    return p;
  }

  function paramsToForm(p) {
    q.value = p.get("q") || "";
    $("#folder").value = p.get("folder") || "";
    const field = p.get("modified_from") || p.get("modified_to") ? "modified" : "taken";
    $("#date-field").value = field;
    $("#date-from").value = p.get(field + "_from") || "";
    $("#date-to").value = p.get(field + "_to") || "";
    $("#format").value = p.get("format") || "";
    $("#sort").value = p.get("sort") || DEFAULTS.sort;
    $("#cutoff").value = p.get("cutoff") || DEFAULTS.cutoff;
    const filtered = FILTER_KEYS.some((k) => p.get(k) && p.get(k) !== DEFAULTS[k]);
    if (filtered) toggleFilters(true);
  }

  function sameSearch(a, b) {
    const x = new URLSearchParams(a), y = new URLSearchParams(b);
    x.sort(); y.sort();
    return x.toString() === y.toString();
  }

  function search(p, how = "push") {
    if (how === "push" && !sameSearch(p, location.search.slice(1))) {
      history.pushState(null, "", p.toString() ? "?" + p : location.pathname);
    } else if (how === "replace") {
      history.replaceState(null, "", p.toString() ? "?" + p : location.pathname);
    }
    S.params = p;
    renderTerms();
    reset();
    if (!hasTerms(p)) {
      document.body.dataset.state = "idle";
      setStatus("");
      return;
    }
    fetchPage(0, true);
  }

  // -- fetching -----------------------------------------------------------------------------------
  async function fetchPage(offset, fresh = false) {
    if (fresh && S.abort) S.abort.abort();  // a newer search: drop the older one's answer
    if (!fresh && S.loading) return;
    const seq = fresh ? ++S.seq : S.seq;
    const abort = new AbortController();
    if (fresh) S.abort = abort;
    S.loading = true;
    document.body.dataset.state = "loading";
    const p = new URLSearchParams(S.params);
    p.set("offset", String(offset));
    p.set("limit", String(Math.min(PAGE, MAX_RESULTS - offset)));
    const t0 = performance.now();
    try {
      const res = await fetch("/api/search?" + p, { signal: abort.signal, headers: { Accept: "application/json" } });
      const body = await res.json();
      if (seq !== S.seq) return;
      if (!res.ok) throw new Error(errorText(body, res.status));
      showResults(body, offset, performance.now() - t0);
    } catch (e) {
      if (e.name === "AbortError" || seq !== S.seq) return;
      fail(e.message);
    } finally {
      if (seq === S.seq) S.loading = false;
    }
  }

  async function uploadFile(file) {
    if (!file) return;
    if (S.limits.upload_max_bytes && file.size > S.limits.upload_max_bytes) {
      fail(`that file is ${(file.size / 1048576).toFixed(1)} MiB; the limit is ` +
           `${(S.limits.upload_max_bytes / 1048576).toFixed(0)} MiB`);
      return;
    }
    if (S.abort) S.abort.abort();
    const seq = ++S.seq;
    const abort = new AbortController();
    S.abort = abort;
    const p = formToParams();
    p.delete("upload");
    p.delete("q");  // an example image replaces the words and ids
    p.delete("like");
    p.delete("unlike");
    reset();
    S.loading = true;
    document.body.dataset.state = "loading";
    setStatus("searching by the example image…");
    const query = new URLSearchParams(p);
    query.set("offset", "0");
    query.set("limit", String(PAGE));
    const t0 = performance.now();
    try {
      const res = await fetch("/api/search/image?" + query, {
        method: "POST", body: file, signal: abort.signal,
        headers: { "Content-Type": file.type && file.type.startsWith("image/") ? file.type : "application/octet-stream" },
      });
      const body = await res.json();
      if (seq !== S.seq) return;
      if (!res.ok) throw new Error(errorText(body, res.status));
      p.set("upload", body.upload);
      S.params = p;
      paramsToForm(p);
      history.pushState(null, "", "?" + p);
      renderTerms(file);
      showResults(body, 0, performance.now() - t0);
    } catch (e) {
      if (e.name === "AbortError" || seq !== S.seq) return;
      fail(e.message);
    } finally {
      if (seq === S.seq) S.loading = false;
      $("#file").value = "";
    }
  }

  function errorText(body, status) {
    const d = body && body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d) && d.length) return d.map((x) => `${(x.loc || []).slice(-1)[0]}: ${x.msg}`).join("; ");
    return `the server answered ${status}`;
  }

  function showResults(body, offset, ms) {
    if (offset === 0) S.results = [];
    S.results.push(...body.results);
    S.more = body.more && S.results.length < MAX_RESULTS;
    document.body.dataset.state = "ready";
    const n = S.results.length;
    setStatus(n ? `${n}${S.more ? "+" : ""} result${n === 1 ? "" : "s"} · ${Math.round(ms)} ms` :
              "no results: try other words, or fewer filters");
    layout();
    if (offset === 0) {
      window.clipsearchTimings.results = performance.now();
      whenVisibleLoaded().then(() => { window.clipsearchTimings.grid = performance.now(); });
    }
  }

  function fail(message) {
    document.body.dataset.state = "error";
    setStatus(message, true);
  }

  function setStatus(text, isError = false) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", isError);
    if (!isError && S.results.length && hasTerms(S.params)) {
      const p = new URLSearchParams(S.params);
      p.set("limit", String(Math.min(MAX_RESULTS, Math.max(S.results.length, PAGE))));
      statusLine.append(" · ", el("a", { href: "/api/search?" + p, target: "_blank", rel: "noopener", text: "JSON" }));
    }
  }

  // -- the virtualised grid: only rows near the viewport are in the DOM ---------------------------------
  function reset() {
    S.results = [];
    S.more = false;
    S.active = -1;
    for (const t of S.tiles.values()) t.remove();
    S.tiles.clear();
    grid.style.height = "0px";
    window.clipsearchTimings = {};
  }

  function layout() {
    const width = grid.clientWidth || document.documentElement.clientWidth;
    const min = window.innerWidth < 640 ? 100 : 160;
    S.cols = Math.max(1, Math.floor((width + GAP) / (min + GAP)));
    S.tile = Math.floor((width - GAP * (S.cols - 1)) / S.cols);
    S.rowH = S.tile + CAPTION + GAP;
    const rows = Math.ceil(S.results.length / S.cols);
    grid.style.height = Math.max(0, rows * S.rowH - GAP) + "px";
    for (const [i, t] of S.tiles) place(t, i);
    renderVisible();
  }

  function visibleRange(extraRows = 3) {
    const top = grid.getBoundingClientRect().top;
    const first = Math.max(0, Math.floor(-top / S.rowH) - extraRows);
    const last = Math.ceil((window.innerHeight - top) / S.rowH) + extraRows;
    return [first * S.cols, Math.min(S.results.length, last * S.cols)];
  }

  function renderVisible() {
    const [from, to] = visibleRange();
    for (const [i, t] of S.tiles) {
      if (i < from || i >= to) { t.remove(); S.tiles.delete(i); }
    }
    const frag = document.createDocumentFragment();
    for (let i = from; i < to; i++) {
      if (!S.tiles.has(i)) {
        const t = makeTile(i);
        S.tiles.set(i, t);
        frag.append(t);
      }
    }
    grid.append(frag);
    if (S.more && !S.loading && to >= S.results.length - S.cols * 2) fetchPage(S.results.length);
  }

  function makeTile(i) {
    const r = S.results[i];
    const img = el("img", { src: r.thumb, alt: "", loading: "lazy", decoding: "async", draggable: "false" });
    const t = el("button", { type: "button", class: "tile" + (i === S.active ? " active" : ""), role: "gridcell",
                             "data-index": String(i), "data-id": String(r.id), title: r.path },
                 img, el("span", { class: "score", text: r.score.toFixed(3) }));
    place(t, i);
    t.addEventListener("click", () => { setActive(i, false); openDetail(i); });
    return t;
  }

  function place(t, i) {
    const row = Math.floor(i / S.cols), col = i % S.cols;
    t.style.left = col * (S.tile + GAP) + "px";
    t.style.top = row * S.rowH + "px";
    t.style.width = t.style.height = S.tile + "px";
  }

  function whenVisibleLoaded() {
    const [from, to] = visibleRange(0);
    const imgs = [];
    for (let i = from; i < to; i++) {
      const t = S.tiles.get(i);
      if (t) imgs.push(t.querySelector("img"));
    }
    return Promise.all(imgs.map((img) => img.complete ? null :
      new Promise((done) => { img.addEventListener("load", done, { once: true }); img.addEventListener("error", done, { once: true }); })));
  }

  function setActive(i, focus = true) {
    if (!S.results.length) return;
    i = Math.max(0, Math.min(S.results.length - 1, i));
    const old = S.tiles.get(S.active);
    if (old) old.classList.remove("active");
    S.active = i;
    const rowTop = grid.getBoundingClientRect().top + window.scrollY + Math.floor(i / S.cols) * S.rowH;
    const header = $("#search-form").offsetHeight;
    if (rowTop < window.scrollY + header) window.scrollTo(0, rowTop - header - GAP);
    else if (rowTop + S.rowH > window.scrollY + window.innerHeight) window.scrollTo(0, rowTop + S.rowH - window.innerHeight + GAP);
    renderVisible();
    const t = S.tiles.get(i);
    if (t) {
      t.classList.add("active");
      if (focus) t.focus({ preventScroll: true });
    }
  }

  // -- the query's image terms, shown as chips ---------------------------------------------------------
  function renderTerms(uploadedFile) {
    const box = $("#terms");
    box.textContent = "";
    const chip = (label, thumb, negative, onRemove) => {
      const c = el("span", { class: "chip" + (negative ? " negative" : "") });
      if (thumb) c.append(el("img", { src: thumb, alt: "" }));
      c.append(el("span", { text: label }));
      const x = el("button", { type: "button", "aria-label": "remove " + label, text: "×" });
      x.addEventListener("click", onRemove);
      c.append(x);
      box.append(c);
    };
    const without = (key, value) => () => {
      const p = new URLSearchParams(S.params);
      const keep = p.getAll(key).filter((v) => v !== value);
      p.delete(key);
      for (const v of keep) p.append(key, v);
      paramsToForm(p);
      search(p);
    };
    for (const id of S.params.getAll("like")) chip(`like #${id}`, `/api/images/${id}/thumb`, false, without("like", id));
    for (const id of S.params.getAll("unlike")) chip(`unlike #${id}`, `/api/images/${id}/thumb`, true, without("unlike", id));
    const up = S.params.get("upload");
    if (up) {
      const thumb = uploadedFile ? URL.createObjectURL(uploadedFile) : null;
      chip(uploadedFile ? `example: ${uploadedFile.name}` : "example image", thumb, false, without("upload", up));
    }
  }

  // -- the detail view ------------------------------------------------------------------------------
  async function openDetail(i) {
    const r = S.results[i];
    if (!r) return;
    S.detailIndex = i;
    detail.hidden = false;
    detail.dataset.id = String(r.id);
    $("#detail-img").src = `/api/images/${r.id}/thumb?size=1024`;
    $("#detail-name").textContent = r.path.split("/").pop();
    $("#detail-original").href = `/api/images/${r.id}/original`;
    const facts = $("#detail-facts");
    facts.textContent = "";
    const add = (k, v) => { if (v !== null && v !== undefined && v !== "") facts.append(el("dt", { text: k }), el("dd", { text: String(v) })); };
    add("path", r.path);
    add("score", r.score.toFixed(4));
    $("#detail-close").focus({ preventScroll: true });
    try {
      const res = await fetch(`/api/images/${r.id}`);
      const info = await res.json();
      if (S.detailIndex !== i) return;
      if (!res.ok) throw new Error(errorText(info, res.status));
      const f = info.files.find((x) => x.path === r.path) || info.files[0] || {};
      add("taken", info.taken ? info.taken.replace("T", " ") : "unknown");
      add("size", f.width && f.height ? `${f.width} × ${f.height} px, ${formatBytes(f.size)}` : formatBytes(f.size));
      add("format", info.format);
      add("modified", f.modified ? f.modified.replace("T", " ") : null);
      if (info.files.length > 1) add("copies", info.files.map((x) => x.path).join("\n"));
      if (!info.available) add("note", "its file cannot be shown now (moved, changed or outside the library's folders)");
    } catch (e) {
      add("error", e.message);
    }
  }

  function formatBytes(n) {
    if (n === null || n === undefined) return "";
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1048576).toFixed(1)} MiB`;
  }

  function closeDetail() {
    detail.hidden = true;
    S.detailIndex = -1;
    const t = S.tiles.get(S.active);
    if (t) t.focus({ preventScroll: true });
  }

  function stepDetail(delta) {
    const i = S.detailIndex + delta;
    if (i < 0 || i >= S.results.length) return;
    setActive(i, false);
    openDetail(i);
  }

  function moreLike() {
    const id = detail.dataset.id;
    const p = formToParams();
    for (const key of ["q", "like", "unlike", "upload"]) p.delete(key);
    p.append("like", id);
    closeDetail();
    paramsToForm(p);
    search(p);
  }

  function lessLike() {
    const id = detail.dataset.id;
    const p = formToParams();
    const likes = p.getAll("like").filter((v) => v !== id);
    p.delete("like");
    for (const v of likes) p.append("like", v);
    if (!p.getAll("unlike").includes(id)) p.append("unlike", id);
    closeDetail();
    paramsToForm(p);
    search(p);
  }

  // -- wiring ---------------------------------------------------------------------------------------
  function toggleFilters(open) {
    const box = $("#filters");
    box.hidden = open === undefined ? !box.hidden : !open;
    $("#filters-button").setAttribute("aria-expanded", String(!box.hidden));
  }

  let typing = null;
  q.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      const p = formToParams();
      if (hasTerms(p) && !sameSearch(p, S.params)) search(p, "replace");
    }, 350);
  });
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    clearTimeout(typing);
    search(formToParams());
  });
  for (const id of ["date-field", "date-from", "date-to", "format", "sort", "cutoff"]) {
    $("#" + id).addEventListener("change", () => search(formToParams()));
  }
  $("#folder").addEventListener("change", () => search(formToParams()));
  $("#show-scores").addEventListener("change", (e) => document.body.classList.toggle("hide-scores", !e.target.checked));
  $("#filters-button").addEventListener("click", () => toggleFilters());
  $("#file").addEventListener("change", (e) => uploadFile(e.target.files[0]));
  $("#more-like").addEventListener("click", moreLike);
  $("#less-like").addEventListener("click", lessLike);
  $("#detail-close").addEventListener("click", closeDetail);
  $("#detail-prev").addEventListener("click", () => stepDetail(-1));
  $("#detail-next").addEventListener("click", () => stepDetail(1));
  detail.addEventListener("click", (e) => { if (e.target === detail) closeDetail(); });
  $("#help-button").addEventListener("click", () => { help.hidden = !help.hidden; });
  $("#help-close").addEventListener("click", () => { help.hidden = true; });
  help.addEventListener("click", (e) => { if (e.target === help) help.hidden = true; });

  let dragDepth = 0;
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragenter", (e) => { if (hasFiles(e)) { dragDepth++; $("#drop").hidden = false; } });
  document.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("#drop").hidden = true; } });
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    $("#drop").hidden = true;
    uploadFile(e.dataTransfer.files[0]);
  });

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const inField = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement && document.activeElement.tagName);
    if (e.key === "Escape") {
      if (!detail.hidden) closeDetail();
      else if (!help.hidden) help.hidden = true;
      else if (inField) document.activeElement.blur();
      e.preventDefault();
      return;
    }
    if (!detail.hidden) {
      if (e.key === "ArrowLeft") { stepDetail(-1); e.preventDefault(); }
      else if (e.key === "ArrowRight") { stepDetail(1); e.preventDefault(); }
      return;
    }
    if (inField) {
      if (e.key === "ArrowDown" && document.activeElement === q && S.results.length) { setActive(0); e.preventDefault(); }
      return;
    }
    if (e.key === "/") { q.focus(); q.select(); e.preventDefault(); return; }
    if (e.key === "?") { help.hidden = !help.hidden; e.preventDefault(); return; }
    if (!S.results.length) return;
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: S.cols, ArrowUp: -S.cols };
    if (e.key in moves) {
      if (e.key === "ArrowUp" && S.active < S.cols) { q.focus(); e.preventDefault(); return; }
      setActive(S.active < 0 ? 0 : S.active + moves[e.key]);
      e.preventDefault();
    } else if (e.key === "Enter" && S.active >= 0) {
      openDetail(S.active);
      e.preventDefault();
    }
  });

  let frame = 0;
  const onScroll = () => { if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderVisible(); }); };
  window.addEventListener("scroll", onScroll, { passive: true });
  let laidOutWidth = 0;  // a scroll bar appearing narrows the grid too: lay out again whenever its width changes
  new ResizeObserver(() => {
    if (grid.clientWidth !== laidOutWidth) { laidOutWidth = grid.clientWidth; layout(); }
  }).observe(grid);
  window.addEventListener("popstate", () => {
    const p = new URLSearchParams(location.search);
    paramsToForm(p);
    search(p, "none");
  });

  fetch("/api/status").then((r) => r.json().then((s) => {
    if (!r.ok) throw new Error(errorText(s, r.status));
    S.limits = s;
    Object.assign(DEFAULTS, s.defaults || {});  // the server's defaults: a URL leaves them out
    for (const key of ["sort", "cutoff"]) {
      for (const o of $("#" + key).options) o.textContent = o.textContent.replace(/ \(default\)$/, "") +
        (o.value === DEFAULTS[key] ? " (default)" : "");
      if (!S.params.get(key)) $("#" + key).value = DEFAULTS[key];
    }
    $("#library-info").textContent = `${s.model || "no model"} · ${s.images.toLocaleString()} images · ` +
      `${s.dim ? s.dim + "-d vectors" : "no vectors yet"}`;
    const list = $("#roots");
    for (const root of s.roots) list.append(el("option", { value: root }));
  })).catch((e) => { $("#library-info").textContent = "library status unavailable: " + e.message; });

  const start = new URLSearchParams(location.search);
  paramsToForm(start);
  search(start, "none");
})();
