// The rsjax search page: calls /api/search and /api/similar/{id}, draws the grid. No framework.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let last = null;  // {kind: "text", q} or {kind: "similar", id}: what a mode switch repeats

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function params(extra) {
  const p = new URLSearchParams({k: $("k").value, mode: mode(), ...extra});
  const bbox = $("bbox").value.trim();
  if (bbox) p.set("bbox", bbox);
  return p;
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "muted";
}

function card(hit, origin) {
  const div = document.createElement("div");
  div.className = "card" + (hit.id === origin ? " origin" : "");
  div.dataset.id = hit.id;
  // A pair index's result: its before and after images side by side, each labelled.
  const pictures = hit.before ? [["before", hit.before], ["after", hit.after]] : [[null, hit]];
  const images = document.createElement("div");
  images.className = hit.before ? "images pair" : "images";
  for (const [side, picture] of pictures) {
    const figure = document.createElement("figure");
    if (side) figure.className = side;
    const img = document.createElement("img");
    img.src = picture.thumb;
    img.alt = (side ? side + ": " : "") + picture.name;
    img.title = picture.path;
    img.loading = "lazy";
    figure.append(img);
    if (side) {
      const label = document.createElement("figcaption");
      label.textContent = side;
      figure.append(label);
    }
    images.append(figure);
  }
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = hit.before ? `${hit.before.name} → ${hit.after.name}` : hit.name;
  name.title = hit.before ? `${hit.before.path} → ${hit.after.path}` : hit.path;
  const meta = document.createElement("div");
  meta.className = "meta";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = (mode() === "binary" ? "hamming " + hit.score.toFixed(0)
                       : "score " + hit.score.toFixed(3));
  const more = document.createElement("button");
  more.type = "button";
  more.className = "more";
  more.textContent = "more like this";
  more.addEventListener("click", () => similar(hit.id));
  meta.append(score, more);
  div.append(images, name, meta);
  return div;
}

async function run(url, what) {
  setStatus("searching…");
  const t0 = performance.now();
  let body;
  try {
    const res = await fetch(url);
    body = await res.json();
    if (!res.ok) {
      setStatus(body.error || res.statusText, true);
      return;
    }
  } catch (e) {
    setStatus("the server did not answer: " + e, true);
    return;
  }
  const total = performance.now() - t0;
  const grid = $("grid");
  grid.replaceChildren(...body.results.map((h) => card(h, body.similar_to)));
  setStatus(`${body.results.length} results for ${what} (${body.mode}) in ` +
            `${body.milliseconds.toFixed(1)} ms on the server, ${total.toFixed(1)} ms in all`);
  document.body.dataset.state = "done";  // for tests: a search has been drawn
}

function search() {
  const q = $("q").value;
  if (!q.trim()) { setStatus("type some text to search for", true); return; }
  last = {kind: "text", q};
  run("/api/search?" + params({q}), JSON.stringify(q));
}

function similar(id) {
  last = {kind: "similar", id};
  run(`/api/similar/${id}?` + params({}), `image ${id}`);
}

function repeat() {
  if (!last) return;
  if (last.kind === "text") search(); else similar(last.id);
}

async function start() {
  $("form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", repeat);
  }
  try {
    info = await (await fetch("/api/info")).json();
  } catch (e) {
    $("info").textContent = "the server did not answer";
    return;
  }
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.disabled = !info.modes.includes(radio.value);
  }
  $("bbox-label").hidden = !info.footprints;
  if (info.extent) $("bbox").placeholder = info.extent.map((v) => v.toFixed(3)).join(",");
  if (info.pairs) {
    document.body.classList.add("pairs");
    $("q").placeholder = "describe a change: e.g. two buildings were built near the road";
  }
  const rows = info.pairs ? "before/after pairs" : "images";
  $("info").textContent = `${info.rows.toLocaleString()} ${rows}, ${info.dim}-d ` +
    `${info.dense_dtype}` + (info.bits ? `, ${info.bits}-bit codes` : ", no binary codes") +
    (info.footprints ? `, ${info.footprints} with footprints` : "") +
    ` · model step ${info.model_step}`;
  document.body.dataset.ready = "1";
}

start();
