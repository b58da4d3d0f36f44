// The page of `vsa serve`: plain DOM, no framework, no network beyond this server.
// Routes (in the URL's hash): #/search?q=..[&minus=..]  #/photo/ID  #/like/ID  #/index  #/dropped  #/dupes
// (search and dupes also carry the metadata filters: &after=&before=&camera=&near=&km=)
"use strict";

const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0aa7c4", "#f032e6", "#7a9a16",
  "#d4677f", "#469990", "#8a63c9", "#9a6324", "#800000", "#2e8b57", "#808000", "#000075"];
const main = document.getElementById("main");
const qInput = document.getElementById("q");
const minusInput = document.getElementById("minus");
const NEGATIVE = "#111"; // boxes and chips of a "without" word: one colour, dashed
let generation = "";
let dropped = null; // {blob, url, name} of the last photo dropped on the page
// Each route() opens a new view; a response that comes back after the user has moved on is not drawn over the
// newer page (a slow search answered after a faster one). main's data-shown names the view once it is drawn.
let routed = 0; // how many views have been opened
function current() { const mine = routed; return () => mine === routed; }

// ------------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "colour") e.style.setProperty("--c", v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}

async function api(url, options) {
  const r = await fetch(url, options);
  let body;
  try { body = await r.json(); } catch { body = {error: `${r.status} ${r.statusText}`}; }
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  const g = r.headers.get("X-VSA-Generation");
  if (g) generation = g;
  return body;
}

function toast(msg) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 3500);
}

function imageUrl(id, size) {
  return `/api/photos/${id}/image?size=${size}` + (generation ? `&g=${encodeURIComponent(generation)}` : "");
}

function baseName(p) { return p.split(/[\\/]/).pop(); }

// A photo with labelled boxes over it. boxes: [{box:[x0,y0,x1,y1], label, colour, keys:[...]}]; size: [w, h].
// Each box carries the keys (word or fragment indices) it stands for, for highlighting.
function photoWithBoxes(src, size, boxes, alt) {
  const img = el("img", {src, alt: alt || "", loading: "lazy", draggable: "false",
    onerror: () => toast("a photo could not be shown (was the index rebuilt? search again)")});
  const wrap = el("div", {class: "photo"}, img);
  const [w, h] = size;
  for (const b of boxes) {
    const [x0, y0, x1, y1] = b.box;
    const d = el("div", {class: b.negative ? "box neg" : "box", colour: b.colour, "data-keys": b.keys.join(" "),
      title: b.label},
      b.label ? el("span", {class: "label", text: b.label}) : null);
    d.style.left = `${(100 * x0) / w}%`;
    d.style.top = `${(100 * y0) / h}%`;
    d.style.width = `${(100 * (x1 - x0)) / w}%`;
    d.style.height = `${(100 * (y1 - y0)) / h}%`;
    if (b.hidden) d.classList.add("hidden");
    wrap.append(d);
  }
  return wrap;
}

// Highlight the boxes standing for `key` in a .photo (null: show all equally).
function highlight(photo, key) {
  if (!photo) return;
  photo.classList.toggle("dim", key !== null);
  for (const b of photo.querySelectorAll(".box")) {
    const on = key !== null && b.dataset.keys.split(" ").includes(String(key));
    b.classList.toggle("hl", on);
    if (b.dataset.optional) b.classList.toggle("hidden", !on);
  }
}

// Words that matched the same box share one box, labelled with all of them.
function wordBoxes(words, colourOf) {
  const byBox = new Map();
  words.forEach((m, i) => {
    if (!m.box) return;
    const k = m.box.join(",") + (m.negative ? "-" : "");  // a minus word never shares a query word's box
    if (!byBox.has(k)) byBox.set(k, {box: m.box, words: [], keys: [], negative: !!m.negative});
    byBox.get(k).words.push(m.negative ? `−${m.word}` : m.word);
    byBox.get(k).keys.push(i);
  });
  return [...byBox.values()].map(b => ({box: b.box, keys: b.keys, label: [...new Set(b.words)].join(" "),
    colour: b.negative ? NEGATIVE : colourOf(b.words[0]), negative: b.negative}));
}

function colours() {
  const seen = new Map();
  return w => {
    if (!seen.has(w)) seen.set(w, COLOURS[seen.size % COLOURS.length]);
    return seen.get(w);
  };
}

function wordChips(words, colourOf, photo) {
  return el("div", {class: "chips"}, words.map((m, i) => el("span", {
    class: m.negative ? "chip neg" : "chip", colour: m.negative ? NEGATIVE : colourOf(m.word), "data-word": m.word,
    "data-key": i, "data-negative": m.negative ? "1" : null,
    title: `${m.negative ? "without " : ""}${m.word}: ${m.score.toFixed(3)}` +
      (m.region === 0 ? " (full image)" : ` (region ${m.region})`),
    text: m.negative ? `−${m.word}` : m.word,
    onmouseenter: () => highlight(photo(), i), onmouseleave: () => highlight(photo(), null),
  })));
}

function setActiveNav(route) {
  document.getElementById("nav-index").classList.toggle("active", route === "index");
  document.getElementById("nav-dupes").classList.toggle("active", route === "dupes");
}

// ------------------------------------------------------------------ metadata filters

const FILTERS = ["after", "before", "camera", "near", "km"];

// The filters as query parameters ("" when none), from the filter bar.
function filterParams() {
  const p = new URLSearchParams();
  for (const f of FILTERS) {
    const v = document.getElementById(`f-${f}`).value.trim();
    if (v) p.set(f, v);
  }
  if (!p.has("near")) p.delete("km");
  return p;
}

// Fill the filter bar from a route's parameters (so a link or the back button restores them).
function setFilters(params) {
  for (const f of FILTERS) document.getElementById(`f-${f}`).value = params.get(f) || "";
}

// A route with its own parameters and the filters (encodeURIComponent: a space stays %20, as links had it).
function withFilters(base, extra) {
  const parts = Object.entries(extra || {});
  for (const [k, v] of filterParams()) parts.push([k, v]);
  return parts.length ? `${base}?${parts.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&")}` : base;
}

// What a filter could not judge (photos without a date, ...), as the CLI prints it on stderr.
function filterNote(res) {
  const notes = (res.filter && res.filter.notes) || res.notes || [];
  return notes.length ? el("p", {class: "filter-note", id: "filter-note", text: notes.join(" · ")}) : null;
}

// ------------------------------------------------------------------ search

async function showSearch(q, params) {
  params = params || new URLSearchParams();
  qInput.value = q;
  minusInput.value = params.get("minus") || "";
  setFilters(params);
  if (!q.trim()) return showHome();
  document.title = `${q} · vsa`;
  main.replaceChildren(el("p", {class: "spinner", text: "searching…"}));
  const live = current();
  const t0 = performance.now();
  let res;
  try {
    const p = new URLSearchParams(params);
    p.set("q", q);
    p.set("k", "24");
    res = await api(`/api/search?${p}`);
  } catch (e) {
    if (live()) main.replaceChildren(el("p", {class: "error", id: "search-error", text: e.message}));
    return;
  }
  if (!live()) return;
  const ms = Math.round(performance.now() - t0);
  const without = (res.minus || []).map(m => m.text).join(", ");
  const summary = el("p", {class: "summary", id: "summary"},
    `${res.hits.length} photo${res.hits.length === 1 ? "" : "s"} for “${res.words.join(" ")}”` +
      (without ? ` without “${without}”` : "") + ` · ${ms} ms`,
    res.ignored.length ? el("span", {class: "ignored", text: ` · not in the vocabulary: ${res.ignored.join(", ")}`}) : null);
  const colourOf = colours();
  res.words.forEach(colourOf);
  const below = !res.hits.length && (res.below_floor || []).length;
  const shown = below ? res.below_floor : res.hits;
  const grid = el("div", {class: "grid", id: "results"});
  shown.forEach((hit, i) => grid.append(resultCard(hit, i + 1, wordBoxes(hit.words, colourOf),
    photo => wordChips(hit.words, colourOf, () => photo), below)));
  if (res.filter) summary.append(el("span", {class: "filtered", text: ` · filtered: ${res.filter.kept} kept`}));
  const note = below ? el("p", {class: "floor-note", id: "floor-note",
    text: `no photo matches “${q.trim()}” well (every hit is below the relevance floor, P(right) < ${res.floor.toFixed(3)}); the best few anyway:`}) : null;
  main.replaceChildren(summary, filterNote(res) || "", note || "", shown.length ? grid : el("p", {class: "empty", text: "no results"}));
  const first = grid.querySelector(".card");
  if (first && document.activeElement !== qInput) first.focus();
}

// One result: the photo with its boxes, rank, score (and P(right) when calibrated), and "more like this".
function resultCard(hit, rank, boxes, chips, below) {
  const photo = photoWithBoxes(imageUrl(hit.id, 400), hit.size, boxes, baseName(hit.path));
  const more = el("button", {type: "button", class: "more-like", text: "more like this", title: "photos like this one",
    onclick: e => { e.stopPropagation(); location.hash = `#/like/${hit.id}`; }});
  return el("article", {class: below ? "card below" : "card", tabindex: "0", "data-id": hit.id, "data-path": hit.path,
    "data-rank": rank, onclick: () => openPhoto(hit.id), onkeydown: e => { if (e.key === "Enter") openPhoto(hit.id); }},
  photo,
  el("div", {class: "meta"},
    el("div", {class: "title"}, el("span", {class: "rank", text: below ? "below floor" : `#${rank}`}),
      el("span", {class: "score"}, `S = ${hit.score.toFixed(3)}`,
        hit.probability !== undefined ? el("span", {class: "prob", text: `P ${hit.probability.toFixed(2)}`}) : null)),
    el("div", {class: "name", title: hit.path, text: baseName(hit.path)}),
    hit.taken !== undefined ? el("div", {class: "name exif", text: [hit.taken ? hit.taken.slice(0, 10) : "no date",
      hit.camera || "", hit.gps ? hit.gps.map(x => x.toFixed(3)).join(", ") : ""].filter(Boolean).join(" · ")}) : null,
    chips(photo), more));
}

// ------------------------------------------------------------------ more like this

// The region pairs a hit shows: box n on the hit is the best match of box n on the query photo.
function pairBoxes(hit, side) {
  return hit.regions.filter(p => p.shown).map((p, i) => ({box: side === "query" ? p.query_box : p.box, keys: [i],
    label: `${i + 1}`, colour: COLOURS[i % COLOURS.length]}));
}

async function showLike(id) {
  document.title = `like photo ${id} · vsa`;
  main.replaceChildren(el("p", {class: "spinner", text: "finding photos like it…"}));
  const live = current();
  let res;
  try {
    res = await api(`/api/photos/${id}/like?k=24`);
  } catch (e) {
    if (live()) main.replaceChildren(el("p", {class: "error", id: "search-error", text: e.message}));
    return;
  }
  if (!live()) return;
  const q = res.like;
  const holder = el("div", {id: "like-query"});
  const showPairs = hit => holder.replaceChildren(photoWithBoxes(imageUrl(q.id, 640), q.size,
    hit ? pairBoxes(hit, "query") : [], baseName(q.photo)));
  const grid = el("div", {class: "grid", id: "results"});
  const colourOf = colours();
  res.hits.forEach((hit, i) => {
    const card = resultCard(hit, i + 1, [...wordBoxes(hit.words, colourOf), ...pairBoxes(hit, "hit")],
      photo => wordChips(hit.words, colourOf, () => photo));
    card.addEventListener("mouseenter", () => showPairs(hit));
    card.addEventListener("focus", () => showPairs(hit));
    grid.append(card);
  });
  showPairs(res.hits[0]);
  const head = el("div", {class: "like-head"}, holder, el("div", {},
    el("h2", {text: `Photos like ${baseName(q.photo)}`}),
    el("p", {class: "summary", id: "summary", text: `${res.hits.length} photos, by each region of this photo ` +
      "against its best region in theirs: box n on a photo is the best match of box n here (hover a photo to see its pairs)"}),
    el("a", {class: "back", href: `#/photo/${q.id}`, text: "open this photo"})));
  main.replaceChildren(head, res.hits.length ? grid : el("p", {class: "empty", text: "no other photos"}));
}

function openPhoto(id) { location.hash = `#/photo/${id}`; }

async function showHome() {
  document.title = "vsa search";
  main.replaceChildren(el("p", {class: "empty", text: "Type what you are looking for: each word's box is drawn on the photo it matched. Drop a photo anywhere to caption it."}));
  qInput.focus();
}

// ------------------------------------------------------------------ one photo

async function showPhoto(id) {
  main.replaceChildren(el("p", {class: "spinner", text: "loading…"}));
  const live = current();
  let info;
  try {
    info = await api(`/api/photos/${id}`);
  } catch (e) {
    if (live()) main.replaceChildren(el("p", {class: "error", text: e.message}));
    return;
  }
  if (!live()) return;
  generation = info.generation;
  document.title = `${baseName(info.path)} · vsa`;
  const view = photoView(imageUrl(id, 1024), info.size, baseName(info.path), info.path, {
    caption: () => api(`/api/photos/${id}/caption?beam=7`),
    regions: () => api(`/api/photos/${id}/caption?regions=1&top=6&beam=3`),
    align: s => api(`/api/photos/${id}/align?sentence=${encodeURIComponent(s)}`),
  });
  view.querySelector(".side").prepend(el("a", {class: "upload", id: "more-like", href: `#/like/${id}`,
    text: "More like this"}));
  main.replaceChildren(view);
}

// The detail view, shared by an indexed photo and a dropped one: caption, region captions, align field.
function photoView(src, size, name, path, calls, extra) {
  const holder = el("div", {class: "photo-holder", id: "detail-photo"});
  let current = photoWithBoxes(src, size, [], name);
  holder.append(current);
  const setBoxes = boxes => {
    const next = photoWithBoxes(src, size, boxes, name);
    holder.replaceChildren(next);
    current = next;
  };
  const caption = el("div", {class: "caption", id: "caption"}, el("span", {class: "spinner", text: "captioning (beam 7)…"}));
  const regionList = el("ul", {class: "regions-list", id: "region-captions"});
  const fragments = el("div", {class: "fragments", id: "fragments"});
  const sentence = el("input", {id: "sentence", type: "text", placeholder: "type a sentence to align to the photo", autocomplete: "off"});
  const form = el("form", {id: "align-form", onsubmit: async e => {
    e.preventDefault();
    if (!sentence.value.trim()) return;
    fragments.replaceChildren(el("span", {class: "spinner", text: "aligning…"}));
    try {
      const a = await calls.align(sentence.value);
      const boxes = a.fragments.map((f, i) => ({box: f.box, keys: [i], label: f.text, colour: COLOURS[i % COLOURS.length]}));
      setBoxes(boxes);
      fragments.replaceChildren(...a.fragments.map((f, i) => el("div", {
        class: "fragment", colour: COLOURS[i % COLOURS.length], "data-key": i,
        onmouseenter: () => highlight(current, i), onmouseleave: () => highlight(current, null)},
      el("span", {class: "text", text: f.text}),
      el("span", {class: "score", text: `${f.region === 0 ? "full image" : "region " + f.region} · ${f.score.toFixed(3)}`}))));
    } catch (err) {
      fragments.replaceChildren(el("span", {class: "error", text: err.message}));
    }
  }}, sentence, el("button", {type: "submit", text: "Align"}));

  const regionsBtn = el("button", {type: "button", id: "show-regions", text: "Region captions", onclick: async () => {
    regionsBtn.disabled = true;
    regionList.replaceChildren(el("li", {class: "spinner", text: "captioning every region…"}));
    try {
      const r = await calls.regions();
      const caps = r.photos[0].regions;
      setBoxes(caps.map((c, i) => ({box: c.box, keys: [i], label: c.caption, colour: COLOURS[i % COLOURS.length]})));
      regionList.replaceChildren(...caps.map((c, i) => el("li", {colour: COLOURS[i % COLOURS.length], "data-key": i,
        onmouseenter: () => highlight(current, i), onmouseleave: () => highlight(current, null)},
      c.caption, el("span", {class: "where", text: c.region === 0 ? "full image" : `region ${c.region}`}))));
    } catch (err) {
      regionList.replaceChildren(el("li", {class: "error", text: err.message}));
    }
    regionsBtn.disabled = false;
  }});

  calls.caption().then(c => {
    caption.replaceChildren(el("span", {text: c[0].caption}), " ",
      el("span", {class: "logprob", text: `(log p ${c[0].logprob.toFixed(2)})`}));
  }).catch(err => caption.replaceChildren(el("span", {class: "error", text: err.message})));

  const side = el("div", {class: "side"},
    el("div", {class: "panel"}, el("h2", {text: "Caption"}), caption, el("div", {class: "path", text: path})),
    extra || null,
    el("div", {class: "panel"}, el("h2", {text: "Align a sentence"}), form, fragments),
    el("div", {class: "panel"}, el("h2", {text: "Regions"}), regionsBtn, regionList));
  return el("div", {},
    el("a", {class: "back", href: "#", onclick: e => { e.preventDefault(); history.back(); }, text: "← back"}),
    el("div", {class: "detail"}, holder, side));
}

// ------------------------------------------------------------------ a dropped photo

async function uploadPhoto(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { toast(`${file.name}: not an image`); return; }
  if (dropped) URL.revokeObjectURL(dropped.url);
  dropped = {blob: file, url: URL.createObjectURL(file), name: file.name || "photo"};
  if (location.hash === "#/dropped") route(); else location.hash = "#/dropped";
}

function post(url, blob) {
  return api(url, {method: "POST", body: blob, headers: {"Content-Type": blob.type || "application/octet-stream"}});
}

async function showDropped() {
  if (!dropped) { location.hash = "#/"; return; }
  const d = dropped;
  const live = current();
  const img = new Image();
  img.src = d.url;
  try {
    await img.decode();
  } catch {
    if (live()) main.replaceChildren(el("p", {class: "error", text: `${d.name}: the browser cannot show this photo`}));
    return;
  }
  if (!live()) return;
  const size = [img.naturalWidth, img.naturalHeight];
  const n = encodeURIComponent(d.name);
  const list = el("ul", {class: "sentences", id: "sentences"}, el("li", {class: "spinner", text: "finding the nearest sentences…"}));
  const likeThumbs = el("div", {class: "thumbs", id: "like-thumbs"}, el("span", {class: "spinner", text: "finding photos like it…"}));
  const panel = el("div", {}, el("div", {class: "panel"}, el("h2", {text: "Photos like this"}), likeThumbs),
    el("div", {class: "panel"}, el("h2", {text: "Nearest sentences"}), list));
  let view;
  const calls = {
    caption: () => post(`/api/caption?beam=7&name=${n}`, d.blob),
    regions: () => post(`/api/caption?regions=1&top=6&beam=3&name=${n}`, d.blob),
    align: s => post(`/api/align?sentence=${encodeURIComponent(s)}&name=${n}`, d.blob),
  };
  view = photoView(d.url, size, d.name, d.name, calls, panel);
  main.replaceChildren(view);
  document.title = `${d.name} · vsa`;
  post(`/api/like?k=8&name=${n}`, d.blob).then(r => likeThumbs.replaceChildren(...r.hits.map(h =>
    el("a", {href: `#/photo/${h.id}`, title: `${h.path} · S = ${h.score.toFixed(3)}`, "data-id": h.id},
      el("img", {src: imageUrl(h.id, 240), alt: baseName(h.path), loading: "lazy"})))))
    .catch(e => likeThumbs.replaceChildren(el("span", {class: "error", text: e.message})));
  try {
    const r = await post(`/api/search/image?k=8&name=${n}`, d.blob);
    const colourOf = colours();
    list.replaceChildren(...r.hits.map(h => el("li", {"data-source": h.source,
      onmouseenter: () => {
        // Show where this sentence's words land on the photo.
        const holder = document.getElementById("detail-photo");
        holder.replaceChildren(photoWithBoxes(d.url, size, wordBoxes(h.words, colourOf), d.name));
      }},
    el("span", {text: h.text}), el("span", {class: "source", text: `${h.source} · S = ${h.score.toFixed(3)}`}))));
    if (!r.hits.length) list.replaceChildren(el("li", {class: "empty", text: "no sentences"}));
  } catch (e) {
    list.replaceChildren(el("li", {class: "error", text: e.message}));
  }
}

// ------------------------------------------------------------------ the index page

function fmtBytes(n) {
  for (const u of ["B", "KB", "MB", "GB"]) { if (n < 1024 || u === "GB") return u === "B" ? `${n} B` : `${n.toFixed(1)} ${u}`; n /= 1024; }
  return `${n}`;
}

async function showIndex() {
  document.title = "index · vsa";
  main.replaceChildren(el("p", {class: "spinner", text: "reading the index…"}));
  const live = current();
  let status, skipped, photos;
  try {
    [status, skipped, photos] = await Promise.all([api("/api/status"), api("/api/skipped"), api("/api/photos?limit=120")]);
  } catch (e) {
    if (live()) main.replaceChildren(el("p", {class: "error", text: e.message}));
    return;
  }
  if (!live()) return;
  generation = photos.generation;
  const rows = [];
  const p = status.photos || {};
  rows.push(["index", status.index], ["photos", p.photos], ["regions", p.regions], ["skipped files", p.skipped],
    ["index type", p.index_type], ["dimensions", p.dim], ["size on disk", p.bytes !== undefined ? fmtBytes(p.bytes) : ""],
    ["model", `${p.model} (${p.model_path})`], ["folders", (p.roots || []).join(", ")], ["generation", photos.generation]);
  if (status.sentences) rows.push(["sentence index", `${status.sentences.sentences} sentences, ${status.sentences.words} words`]);
  else rows.push(["sentence index", "none (vsa index text FILE adds one: dropped photos then get their nearest sentences)"]);
  const table = el("table", {class: "status", id: "status"}, rows.map(([k, v]) => el("tr", {}, el("th", {text: k}), el("td", {text: String(v ?? "")}))));
  const thumbs = el("div", {class: "thumbs", id: "thumbs"});
  // A changed photo (edited, replaced or gone since the build) is not served: its name says so instead.
  const addThumbs = list => list.forEach(ph => thumbs.append(ph.changed
    ? el("span", {class: "changed", title: `${ph.path}: changed since it was indexed (rebuild the index)`},
      el("span", {text: `changed: ${baseName(ph.path)}`}))
    : el("a", {href: `#/photo/${ph.id}`, title: ph.path},
      el("img", {src: imageUrl(ph.id, 240), alt: baseName(ph.path), loading: "lazy"}))));
  addThumbs(photos.photos);
  let offset = photos.photos.length;
  const more = el("button", {type: "button", text: "more photos", hidden: offset >= photos.total, onclick: async () => {
    const next = await api(`/api/photos?offset=${offset}&limit=120`);
    addThumbs(next.photos);
    offset += next.photos.length;
    more.hidden = offset >= next.total;
  }});
  const skippedItems = skipped.skipped;
  main.replaceChildren(
    el("div", {class: "panel"}, el("h2", {text: "Index"}), table),
    el("div", {class: "panel"}, el("h2", {text: `Skipped files (${skippedItems.length})`}),
      skippedItems.length ? el("ul", {class: "skipped", id: "skipped"}, skippedItems.map(s => el("li", {text: s.reason || s.path})))
        : el("p", {class: "summary", text: "none: every file was read"})),
    el("div", {class: "panel"}, el("h2", {text: `Photos (${photos.total})`}), thumbs, more));
}

// ------------------------------------------------------------------ near-duplicates

async function showDupes(params) {
  document.title = "duplicates · vsa";
  setFilters(params);
  const threshold = params.get("threshold") || "";
  const input = el("input", {id: "threshold", type: "number", step: "any", value: threshold,
    placeholder: "default"});
  const form = el("form", {class: "dupes-form", id: "dupes-form", onsubmit: e => {
    e.preventDefault();
    location.hash = withFilters("#/dupes", input.value ? {threshold: input.value} : {});
  }}, el("label", {}, "similarity threshold ", input), el("button", {type: "submit", text: "Find"}));
  main.replaceChildren(form, el("p", {class: "spinner", text: "comparing the photos…"}));
  const live = current();
  let res;
  try {
    const p = new URLSearchParams(params);
    res = await api(`/api/dupes?${p}`);
  } catch (e) {
    if (live()) main.replaceChildren(form, el("p", {class: "error", id: "dupes-error", text: e.message}));
    return;
  }
  if (!live()) return;
  if (!threshold) input.placeholder = String(res.threshold);
  const summary = el("p", {class: "summary", id: "summary", text: res.groups.length
    ? `${res.groups.length} group${res.groups.length === 1 ? "" : "s"} of near-duplicates among ${res.photos} photos (threshold ${res.threshold}); nothing is deleted`
    : `no near-duplicates among ${res.photos} photos (threshold ${res.threshold})`});
  const groups = el("div", {id: "groups"}, res.groups.map((g, n) => el("section", {class: "panel group", "data-keep": g.keep},
    el("h2", {text: `group ${n + 1} · ${g.photos.length} photos · keep ${baseName(g.keep)}: ${g.why}`}),
    el("div", {class: "row"}, g.photos.map(ph => el("figure", {class: ph.path === g.keep ? "keep" : "", "data-path": ph.path},
      el("a", {href: `#/photo/${ph.id}`, title: ph.path}, el("img", {src: imageUrl(ph.id, 240), alt: baseName(ph.path), loading: "lazy"})),
      el("figcaption", {title: ph.path}, ph.path === g.keep ? el("span", {class: "badge", text: "keep"}) : null, baseName(ph.path)),
      el("figcaption", {text: `${ph.width}×${ph.height} · ${ph.similarity.toFixed(3)}` + (ph.rotation ? ` · turned ${ph.rotation}°` : "")})))))));
  main.replaceChildren(form, summary, filterNote(res) || "", groups);
}

// ------------------------------------------------------------------ routing and keys

function route() {
  const h = location.hash || "#/";
  const n = ++routed;
  delete main.dataset.shown;
  Promise.resolve(show(h)).finally(() => { if (n === routed) main.dataset.shown = h; });
}

// The page a route shows (a promise that settles once it is drawn).
function show(h) {
  let m;
  setActiveNav(h.startsWith("#/index") ? "index" : h.startsWith("#/dupes") ? "dupes" : "");
  if ((m = h.match(/^#\/search\?(.*)$/))) {
    const p = new URLSearchParams(m[1]);
    const q = p.get("q") || "";
    p.delete("q");
    return showSearch(q, p);
  }
  if ((m = h.match(/^#\/dupes(?:\?(.*))?$/))) return showDupes(new URLSearchParams(m[1] || ""));
  if ((m = h.match(/^#\/like\/(\d+)$/))) return showLike(Number(m[1]));
  if ((m = h.match(/^#\/photo\/(\d+)$/))) return showPhoto(Number(m[1]));
  if (h === "#/index") return showIndex();
  if (h === "#/dropped") return showDropped();
  return showHome();
}

document.getElementById("search-form").addEventListener("submit", e => {
  e.preventDefault();
  const q = qInput.value.trim();
  if (!q) return;
  const minus = minusInput.value.trim();
  const target = withFilters("#/search", minus ? {q, minus} : {q});
  qInput.blur();
  if (location.hash === target) route(); else location.hash = target;
});

function moveFocus(dx, dy) {
  const cards = [...document.querySelectorAll("#results .card")];
  if (!cards.length) return false;
  let i = cards.indexOf(document.activeElement);
  if (i < 0) { cards[0].focus(); return true; }
  const top = cards[0].offsetTop;
  const cols = Math.max(1, cards.filter(c => c.offsetTop === top).length);
  const j = i + dx + dy * cols;
  if (j >= 0 && j < cards.length) { cards[j].focus(); cards[j].scrollIntoView({block: "nearest"}); }
  return true;
}

document.addEventListener("keydown", e => {
  const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (e.key === "/" && !typing) { e.preventDefault(); qInput.focus(); qInput.select(); return; }
  if (e.key === "Escape") {
    if (typing) { document.activeElement.blur(); return; }
    if (location.hash.startsWith("#/photo/") || location.hash.startsWith("#/like/") || location.hash === "#/dropped") {
      history.back();
    }
    return;
  }
  if (typing) return;
  const moves = {ArrowRight: [1, 0], ArrowLeft: [-1, 0], ArrowDown: [0, 1], ArrowUp: [0, -1], j: [1, 0], k: [-1, 0]};
  if (moves[e.key] && moveFocus(...moves[e.key])) e.preventDefault();
});

// Drop a photo anywhere on the page.
const dropZone = document.getElementById("drop");
let dragDepth = 0;
window.addEventListener("dragenter", e => { if (e.dataTransfer.types.includes("Files")) { dragDepth++; dropZone.hidden = false; } });
window.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) dropZone.hidden = true; });
window.addEventListener("dragover", e => e.preventDefault());
window.addEventListener("drop", e => {
  e.preventDefault();
  dragDepth = 0;
  dropZone.hidden = true;
  uploadPhoto(e.dataTransfer.files[0]);
});
document.getElementById("file").addEventListener("change", e => uploadPhoto(e.target.files[0]));

// Apply or clear the filters: the page shown again with them (a search, or the duplicates).
function refilter() {
  const h = location.hash;
  if (h.startsWith("#/dupes")) {
    const t = new URLSearchParams(h.split("?")[1] || "").get("threshold");
    location.hash = withFilters("#/dupes", t ? {threshold: t} : {});
  } else if (qInput.value.trim()) {
    location.hash = withFilters("#/search", {q: qInput.value.trim()});
  }
}
document.getElementById("filters").addEventListener("submit", e => { e.preventDefault(); refilter(); });
document.getElementById("f-clear").addEventListener("click", () => { setFilters(new URLSearchParams()); refilter(); });

window.addEventListener("hashchange", route);
api("/api/status").then(s => {
  const p = s.photos || {};
  document.getElementById("footer-index").textContent = `${s.index}: ${p.photos} photos, ${p.regions} regions`;
}).catch(e => toast(e.message));
route();
