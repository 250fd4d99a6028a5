// spotdiff's page: two images in, POST /v1/detect, the boxes drawn over both (plain JS, no build step).
// Boxes are SVG rects in each image's own pixels (viewBox = the image's size), so they scale with it.
// The same number in A and B is the same change; hovering or tapping one highlights both.
"use strict";

// render.py's palette: box k gets PALETTE[(k - 1) % 10], as in `spotdiff detect`'s PNGs
const PALETTE = ["#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7", "#ff0000",
                 "#00ffff", "#ff00ff"];
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const files = { a: null, b: null };
let report = null;      // the last answer of POST /v1/detect
let catalogue = null;   // GET /v1/models
let latest = 0;         // the newest request: an older answer arriving late is dropped
let pending = null;     // a request scheduled for the next tick (two files dropped at once: one request)

function colour(label) { return PALETTE[(label - 1) % PALETTE.length]; }

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

// ---------------------------------------------------------------- choosing the images

function setFile(slot, file) {
  if (!file) return;
  files[slot] = file;
  const drop = $("drop-" + slot);
  const thumb = drop.querySelector(".thumb");
  if (thumb.src) URL.revokeObjectURL(thumb.src);
  thumb.src = URL.createObjectURL(file);
  drop.classList.add("filled");
  drop.querySelector(".hint").innerHTML = `<b>Image ${slot.toUpperCase()}</b><br>${escapeHtml(file.name || "pasted")}`;
  $("run").disabled = !(files.a && files.b);
  scheduleDetect();
}

function scheduleDetect() {
  if (!(files.a && files.b)) return;
  clearTimeout(pending);
  pending = setTimeout(detect, 0);
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

for (const slot of ["a", "b"]) {
  const drop = $("drop-" + slot);
  $("file-" + slot).addEventListener("change", (e) => setFile(slot, e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const list = [...e.dataTransfer.files].filter((f) => f.type.startsWith("image/") || f.type === "");
    if (list.length >= 2 && slot === "a") { setFile("a", list[0]); setFile("b", list[1]); }
    else setFile(slot, list[0]);
  });
}

// Paste from the clipboard: into the focused slot, else the first empty one, else B.
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
  if (!item) return;
  const focused = document.activeElement && document.activeElement.dataset && document.activeElement.dataset.slot;
  const slot = focused || (!files.a ? "a" : "b");
  const blob = item.getAsFile();
  setFile(slot, new File([blob], `pasted-${slot}.png`, { type: blob.type }));
});

// ---------------------------------------------------------------- methods and models

async function loadCatalogue() {
  try {
    catalogue = await (await fetch("/v1/models")).json();
  } catch (e) {
    setStatus("cannot reach the server: " + e, true);
    return;
  }
  const select = $("model");
  select.innerHTML = "";
  for (const m of catalogue.models.filter((m) => m.available)) {
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = `${m.kind === "published" ? "authors' published" : m.kind}: ${m.id}`;
    select.appendChild(opt);
  }
  const cyws = $("method").querySelector('option[value="cyws"]');
  if (!select.options.length) {
    cyws.disabled = true;
    cyws.textContent = "cyws — no model on this server";
  }
  showModelRow();
}

function showModelRow() { $("model-row").hidden = $("method").value !== "cyws"; }
$("method").addEventListener("change", () => { showModelRow(); scheduleDetect(); });
$("model").addEventListener("change", scheduleDetect);
$("run").addEventListener("click", detect);

// ---------------------------------------------------------------- one request

async function detect() {
  if (!(files.a && files.b)) return;
  const mine = ++latest;
  const form = new FormData();
  form.append("image_a", files.a, files.a.name || "a.png");
  form.append("image_b", files.b, files.b.name || "b.png");
  form.append("method", $("method").value);
  if ($("method").value === "cyws" && $("model").value) form.append("model", $("model").value);
  form.append("include", "shown,maps");
  document.body.dataset.state = "busy";
  $("run").disabled = true;
  setStatus("finding the differences…");
  const t0 = performance.now();
  try {
    const res = await fetch("/v1/detect", { method: "POST", body: form });
    const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
    if (mine !== latest) return;  // a newer request is on its way
    if (!res.ok) {
      setStatus(body.error || `HTTP ${res.status}`, true);
      document.body.dataset.state = "error";
      return;
    }
    report = body;
    await show(report);
    const secs = ((performance.now() - t0) / 1000).toFixed(2);
    setStatus(`${report.num_changes} change(s) by ${report.method}${report.model ? " (" + report.model + ")" : ""} in ${secs} s`);
    document.body.dataset.state = "done";
  } catch (e) {
    if (mine !== latest) return;
    setStatus("request failed: " + e, true);
    document.body.dataset.state = "error";
  } finally {
    if (mine === latest) $("run").disabled = false;
  }
}

// ---------------------------------------------------------------- drawing

function loadImage(img, file) {
  return new Promise((resolve) => {
    img.onload = resolve;
    img.onerror = resolve;
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(file);
  });
}

async function show(rep) {
  $("results").hidden = false;
  await Promise.all([loadImage($("img-a"), files.a), loadImage($("img-b"), files.b)]);
  const shown = rep.shown || rep;  // the boxes the method shows people (the API's `include=shown`)
  const scores = shown.images.flatMap((im) => im.scores);
  const top = scores.length ? Math.max(...scores) : 1;
  const slider = $("min-score");
  slider.max = String(top);  // at the far right only the best box(es) remain
  slider.step = "any";
  slider.value = 0;
  ["a", "b"].forEach((slot, i) => {
    const im = shown.images[i];
    $("cap-" + slot).textContent = `${slot.toUpperCase()}: ${im.path}  ${im.width}×${im.height}` +
      (shown.rule ? `  (boxes ${shown.rule})` : "");
    drawBoxes($("boxes-" + slot), im);
  });
  setupOverlay(rep);
  applyMinScore();
}

function drawBoxes(svg, im) {
  svg.innerHTML = "";
  svg.setAttribute("viewBox", `0 0 ${im.width} ${im.height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  // labels at least 13 screen pixels high, however small the image is shown (a phone)
  const onScreen = svg.getBoundingClientRect().width || im.width;
  const font = Math.max(Math.max(im.width, im.height) / 40, 13 * im.width / onScreen);
  im.boxes.forEach(([x1, y1, x2, y2], i) => {
    const label = im.labels[i];
    const g = document.createElementNS(SVG, "g");
    g.setAttribute("class", "box");
    g.dataset.label = label;
    g.dataset.score = im.scores[i];
    const halo = document.createElementNS(SVG, "rect");
    const rect = document.createElementNS(SVG, "rect");
    for (const r of [halo, rect]) {
      r.setAttribute("x", x1); r.setAttribute("y", y1);
      r.setAttribute("width", Math.max(1, x2 - x1)); r.setAttribute("height", Math.max(1, y2 - y1));
    }
    halo.setAttribute("class", "halo");
    rect.setAttribute("stroke", colour(label));
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", x1 + 2);
    text.setAttribute("y", y1 - 4 >= font ? y1 - 4 : y1 + font);
    text.setAttribute("font-size", font);
    text.setAttribute("fill", colour(label));
    text.textContent = `#${label} ${Number(im.scores[i]).toFixed(2)}`;
    const title = document.createElementNS(SVG, "title");
    title.textContent = `change #${label}, score ${Number(im.scores[i]).toFixed(3)}`;
    g.append(halo, rect, text, title);
    g.addEventListener("mouseenter", () => highlight(label));
    g.addEventListener("mouseleave", () => highlight(null));
    g.addEventListener("click", (e) => { e.stopPropagation(); highlight(svg.dataset.hot == label ? null : label); });
    svg.appendChild(g);
  });
}

function highlight(label) {
  for (const svg of document.querySelectorAll("svg.boxes")) {
    svg.dataset.hot = label == null ? "" : label;
    svg.classList.toggle("dim", label != null);
    for (const g of svg.querySelectorAll(".box")) g.classList.toggle("hot", label != null && g.dataset.label == label);
  }
}

// The slider re-filters the boxes already received: no new request.
function applyMinScore() {
  const min = parseFloat($("min-score").value);
  $("min-score-value").textContent = min.toFixed(2);
  const shown = { a: 0, b: 0 }, total = { a: 0, b: 0 };
  for (const slot of ["a", "b"]) {
    for (const g of $("boxes-" + slot).querySelectorAll(".box")) {
      const hide = parseFloat(g.dataset.score) < min;
      g.classList.toggle("hidden", hide);
      total[slot] += 1;
      if (!hide) shown[slot] += 1;
    }
  }
  const shownA = shown.a, shownB = shown.b;
  $("count").textContent = `boxes shown: A ${shownA} of ${total.a}, B ${shownB} of ${total.b}`;
  $("count").dataset.a = shownA;
  $("count").dataset.b = shownB;
}
$("min-score").addEventListener("input", applyMinScore);

// ---------------------------------------------------------------- overlays: difference map / co-attention

function setupOverlay(rep) {
  const maps = rep.maps || [];
  const box = $("overlay");
  box.checked = false;
  for (const slot of ["a", "b"]) $("heat-" + slot).style.display = "none";
  $("pane-a").classList.remove("attention");
  $("overlay-caption").textContent = "";
  $("overlay-row").hidden = maps.length === 0;
  if (!maps.length) return;
  const map = maps[0];
  $("overlay-label").textContent = map.kind === "attention" ? "co-attention (click a point in A)" : "difference map";
  box.onchange = () => {
    if (map.kind === "picture") {
      const canvas = $("heat-" + map.image);
      if (box.checked) {
        const pic = new Image();
        pic.onload = () => {
          canvas.width = pic.naturalWidth; canvas.height = pic.naturalHeight;
          canvas.getContext("2d").drawImage(pic, 0, 0);
          canvas.style.opacity = 1;  // the picture is already blended over the image
          canvas.style.display = "block";
        };
        pic.src = map.png;
      } else canvas.style.display = "none";
      $("overlay-caption").textContent = box.checked ? map.caption : "";
    } else {
      $("pane-a").classList.toggle("attention", box.checked);
      if (!box.checked) $("heat-b").style.display = "none";
      $("overlay-caption").textContent = box.checked ? map.caption + ": click or tap image A" : "";
    }
  };
  $("pane-a").querySelector(".stage").onclick = (e) => {
    if (map.kind !== "attention" || !box.checked) return;
    const r = e.currentTarget.getBoundingClientRect();
    drawAttention(map, (e.clientX - r.left) / r.width, (e.clientY - r.top) / r.height);
  };
}

// JET-like colour for t in [0, 1] (the server's maps use OpenCV's JET)
function jet(t) {
  const c = (x) => Math.round(255 * Math.min(1, Math.max(0, x)));
  return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
}

function drawAttention(map, fx, fy) {
  const [h, w] = map.grid;
  const qx = Math.min(w - 1, Math.max(0, Math.floor(fx * w)));
  const qy = Math.min(h - 1, Math.max(0, Math.floor(fy * h)));
  const row = map.a_to_b[qy * w + qx];
  const hi = Math.max(...row), lo = Math.min(...row);
  const canvas = $("heat-b");
  canvas.width = w; canvas.height = h;  // the browser scales it up smoothly over B
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(w, h);
  row.forEach((v, i) => {
    const [r, g, b] = jet(hi > lo ? (v - lo) / (hi - lo) : 0);
    data.data.set([r, g, b, 255], i * 4);
  });
  ctx.putImageData(data, 0, 0);
  canvas.style.opacity = 0.55;
  canvas.style.display = "block";
  // mark the clicked cell on A
  const svg = $("boxes-a");
  svg.querySelectorAll(".probe").forEach((n) => n.remove());
  const im = report.images[0];
  const dot = document.createElementNS(SVG, "circle");
  dot.setAttribute("class", "probe");
  dot.setAttribute("cx", fx * im.width); dot.setAttribute("cy", fy * im.height);
  dot.setAttribute("r", Math.max(4, Math.max(im.width, im.height) / 80));
  dot.setAttribute("fill", "#fff"); dot.setAttribute("stroke", "#000");
  svg.appendChild(dot);
  $("overlay-caption").textContent = `${map.caption}: cell (${qx}, ${qy}) of ${w}×${h}`;
}

// ---------------------------------------------------------------- downloads

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function stem(name) { return (name || "image").replace(/\.[^.]*$/, ""); }

$("dl-json").addEventListener("click", () => {
  if (!report) return;
  const base = `${stem(report.images[0].path)}_vs_${stem(report.images[1].path)}`;
  download(new Blob([JSON.stringify(report, null, 2)], { type: "application/json" }), base + ".json");
});

// The annotated PNG of what is on screen (the boxes above the slider's minimum score).
function annotated(slot) {
  const img = $("img-" + slot);
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const s = Math.max(canvas.width, canvas.height) / 500;
  ctx.lineWidth = Math.max(2, Math.round(2.5 * s));
  ctx.font = `bold ${Math.max(12, Math.round(16 * s))}px sans-serif`;
  for (const g of $("boxes-" + slot).querySelectorAll(".box:not(.hidden)")) {
    const r = g.querySelector("rect:not(.halo)");
    const [x, y, w, h] = ["x", "y", "width", "height"].map((k) => parseFloat(r.getAttribute(k)));
    ctx.strokeStyle = "#000"; ctx.strokeRect(x - 1, y - 1, w + 2, h + 2);
    ctx.strokeStyle = colour(+g.dataset.label); ctx.strokeRect(x, y, w, h);
    const text = g.querySelector("text").textContent;
    const tw = ctx.measureText(text).width, th = Math.max(12, Math.round(16 * s));
    const ty = y - th - 4 >= 0 ? y - th - 4 : y;
    ctx.fillStyle = colour(+g.dataset.label); ctx.fillRect(x, ty, tw + 6, th + 4);
    ctx.fillStyle = "#000"; ctx.fillText(text, x + 3, ty + th);
  }
  canvas.toBlob((blob) => download(blob, `${stem(report.images[slot === "a" ? 0 : 1].path)}.boxes.png`), "image/png");
}
$("dl-a").addEventListener("click", () => report && annotated("a"));
$("dl-b").addEventListener("click", () => report && annotated("b"));

loadCatalogue();
