// The feature atlas: an index of every retained feature and a page per feature, from the data build_atlas wrote.
// Opens from disk (file://): data arrive as <script> files that call ATLAS_INDEX_READY / ATLAS_CHUNK, never fetch().
"use strict";
var ATLAS = { idx: null, rows: [], shown: 100, sort: { k: "id", dir: 1 }, chunks: {}, waiting: {} };
var B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

function $(s) { return document.querySelector(s); }
function el(tag, attrs, text) {
  var e = document.createElement(tag);
  for (var k in (attrs || {})) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function fmt(v, d) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return v;
  // small values (a latent's mean activation is often ~1e-4) keep two significant digits instead of rounding to 0
  return v !== 0 && Math.abs(v) < 0.01 ? +v.toPrecision(2) : +v.toFixed(d === undefined ? 3 : d);
}
function loadScript(src, onerror) {
  var s = el("script", { src: src }); s.onerror = onerror || function () { $("#status").textContent = "could not load " + src; };
  document.body.appendChild(s);
}
function fid(i) { var I = ATLAS.idx; return I.saes[I.cols.s[i]].id + "/" + I.cols.f[i]; }

function ATLAS_INDEX_READY(idx) {
  ATLAS.idx = idx; var I = idx, C = I.cols, n = C.f.length;
  ATLAS.pos = {};
  for (var i = 0; i < n; i++) ATLAS.pos[fid(i)] = i;
  ATLAS.text = new Array(n);   // what the search box matches: id, every candidate label, the best concepts (labels, benchmark)
  I.bench_concepts = I.bench_concepts || []; C.bk = C.bk || []; C.ba = C.ba || [];
  for (i = 0; i < n; i++) {
    var t = [fid(i)], ls = C.ls[i] || [];
    for (var j = 0; j < ls.length; j++) t.push(I.labels[ls[j]]);
    if (C.k[i] >= 0) t.push(I.concepts[C.k[i]]);
    if (C.bk[i] >= 0) t.push(I.bench_concepts[C.bk[i]]);
    ATLAS.text[i] = t.join(" | ").toLowerCase();
  }
  $("#run").textContent = I.run + " · " + n + " retained features of " + I.saes.length + " SAEs";
  var layers = {};
  I.saes.forEach(function (s) { $("#f-sae").appendChild(el("option", { value: s.id }, s.id)); layers[s.layer] = 1; });
  Object.keys(layers).map(Number).sort(function (a, b) { return a - b; })
    .forEach(function (l) { $("#f-layer").appendChild(el("option", { value: l }, "L" + l)); });
  ["#q", "#f-sae", "#f-layer", "#f-score", "#f-dmin", "#f-dmax", "#f-auc", "#f-bauc", "#f-lab", "#f-steer"].forEach(function (s) {
    ["input", "change"].forEach(function (ev) { $(s).addEventListener(ev, function () { ATLAS.shown = 100; filter(); }); });
  });
  document.querySelectorAll("th[data-k]").forEach(function (th) {
    th.addEventListener("click", function () {
      var k = th.getAttribute("data-k");
      ATLAS.sort = { k: k, dir: ATLAS.sort.k === k ? -ATLAS.sort.dir : (k === "id" || k === "l" || k === "k" || k === "bk" ? 1 : -1) };
      filter();
    });
  });
  $("#more").addEventListener("click", function () { ATLAS.shown += 200; renderTable(); });
  window.addEventListener("hashchange", route);
  filter(); route();
}

function num(id) { var v = $(id).value; return v === "" ? null : parseFloat(v); }
function filter() {
  var I = ATLAS.idx, C = I.cols, q = $("#q").value.trim().toLowerCase(), sae = $("#f-sae").value, layer = $("#f-layer").value;
  var score = num("#f-score"), dmin = num("#f-dmin"), dmax = num("#f-dmax"), auc = num("#f-auc"), bauc = num("#f-bauc");
  var lab = $("#f-lab").checked, steer = $("#f-steer").checked, rows = [];
  for (var i = 0; i < C.f.length; i++) {
    var s = I.saes[C.s[i]], d = C.n[i] / s.n_tracks;
    if (sae && s.id !== sae) continue;
    if (layer !== "" && s.layer !== +layer) continue;
    if (score !== null && !(C.c[i] !== null && C.c[i] >= score)) continue;
    if (dmin !== null && d < dmin) continue;
    if (dmax !== null && d > dmax) continue;
    if (auc !== null && !(C.a[i] !== null && C.a[i] >= auc)) continue;
    if (bauc !== null && !(C.ba[i] !== null && C.ba[i] !== undefined && C.ba[i] >= bauc)) continue;
    if (lab && C.l[i] < 0) continue;
    if (steer && !C.st[i]) continue;
    if (q && ATLAS.text[i].indexOf(q) < 0) continue;
    rows.push(i);
  }
  var k = ATLAS.sort.k, dir = ATLAS.sort.dir;
  var key = function (i) {
    if (k === "id") return null;
    if (k === "layer") return I.saes[C.s[i]].layer;
    if (k === "n") return C.n[i] / I.saes[C.s[i]].n_tracks;
    if (k === "l") return C.l[i] < 0 ? null : I.labels[C.l[i]];
    if (k === "k") return C.k[i] < 0 ? null : I.concepts[C.k[i]];
    if (k === "bk") return C.bk[i] >= 0 ? I.bench_concepts[C.bk[i]] : null;
    if (k === "ba") return C.ba[i] === undefined ? null : C.ba[i];
    return C[k][i];
  };
  rows.sort(function (a, b) {
    var x = key(a), y = key(b);
    if (x === y || k === "id") return (C.s[a] - C.s[b]) || (C.f[a] - C.f[b]);
    if (x === null) return 1; if (y === null) return -1;   // missing values last, whichever the direction
    return (x < y ? -1 : 1) * dir;
  });
  ATLAS.rows = rows;
  document.querySelectorAll("th[data-k]").forEach(function (th) {
    th.className = th.getAttribute("data-k") === k ? (dir > 0 ? "asc" : "desc") : "";
  });
  renderTable();
}

function renderTable() {
  var I = ATLAS.idx, C = I.cols, body = $("#table tbody"), rows = ATLAS.rows;
  body.textContent = "";
  rows.slice(0, ATLAS.shown).forEach(function (i) {
    var s = I.saes[C.s[i]], tr = el("tr", { "data-id": fid(i) }), a = el("a", { href: "#" + fid(i) }, fid(i));
    var td = el("td"); td.appendChild(a); tr.appendChild(td);
    [[s.layer], [C.n[i] / s.n_tracks, 4], [C.m[i]], [C.b[i]], [C.l[i] < 0 ? null : I.labels[C.l[i]]], [C.c[i]],
     [C.k[i] < 0 ? null : I.concepts[C.k[i]]], [C.a[i]], [C.bk[i] >= 0 ? I.bench_concepts[C.bk[i]] : null], [C.ba[i]],
     [C.g[i] < 0 ? null : "L" + C.g[i]]].forEach(function (v) {
      tr.appendChild(el("td", { class: typeof v[0] === "number" ? "num" : "" }, fmt(v[0], v[1])));
    });
    body.appendChild(tr);
  });
  $("#count").textContent = rows.length + " of " + C.f.length + " features" + (rows.length > ATLAS.shown ? " (first " + ATLAS.shown + " shown)" : "");
  $("#more").hidden = rows.length <= ATLAS.shown;
}

function route() {
  var h = decodeURIComponent(location.hash.slice(1));
  var show = h && ATLAS.pos[h] !== undefined;
  $("#index-view").hidden = !!show; $("#feature-view").hidden = !show;
  if (h && !show) $("#status").textContent = "no retained feature " + h;
  else $("#status").textContent = "";
  if (show) openFeature(ATLAS.pos[h]);
}

function ATLAS_CHUNK(sae, c, data) {
  var key = sae + "/" + c; ATLAS.chunks[key] = data;
  (ATLAS.waiting[key] || []).forEach(function (f) { f(data); }); delete ATLAS.waiting[key];
}
function chunk(sae, f, done) {
  var c = Math.floor(f / ATLAS.idx.chunk), key = sae + "/" + c;
  if (ATLAS.chunks[key]) return done(ATLAS.chunks[key]);
  if (!ATLAS.waiting[key]) { ATLAS.waiting[key] = []; loadScript(ATLAS_BASE + "data/" + sae + "/" + c + ".js"); }
  ATLAS.waiting[key].push(done);
}

function section(view, title) { var s = el("div", { class: "sec" }); s.appendChild(el("h2", {}, title)); view.appendChild(s); return s; }
function table(head, rows) {
  var t = el("table"), tr = el("tr");
  head.forEach(function (h) { tr.appendChild(el("th", {}, h)); }); t.appendChild(tr);
  rows.forEach(function (r) {
    var tr = el("tr");
    r.forEach(function (v) {
      var td = el("td", { class: typeof v === "number" ? "num" : "" });
      if (v instanceof Node) td.appendChild(v); else td.textContent = fmt(v);
      tr.appendChild(td);
    });
    t.appendChild(tr);
  });
  return t;
}
function link(id) { return ATLAS.pos[id] === undefined ? document.createTextNode(id) : el("a", { href: "#" + id }, id); }

function histogram(h, hx, hz) {
  var W = 320, H = 80, n = h.length, m = Math.max.apply(null, h.concat([1])), ns = "http://www.w3.org/2000/svg";
  var svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H + 16); svg.setAttribute("class", "hist");
  h.forEach(function (v, i) {
    var r = document.createElementNS(ns, "rect"), bh = H * v / m;
    r.setAttribute("x", i * W / n + 1); r.setAttribute("width", W / n - 2); r.setAttribute("y", H - bh);
    r.setAttribute("height", bh); r.setAttribute("fill", "#4a78b5"); svg.appendChild(r);
  });
  var t = document.createElementNS(ns, "text");
  t.setAttribute("x", 0); t.setAttribute("y", H + 13); t.setAttribute("font-size", "11");
  t.textContent = "max activation per track, 0 … " + fmt(hx) + " (" + hz + " tracks silent)";
  svg.appendChild(t); return svg;
}

function drawCurve(canvas, code, secs, dur) {
  var W = canvas.width, H = canvas.height, g = canvas.getContext("2d"), n = code.length;
  g.clearRect(0, 0, W, H); g.strokeStyle = "#7fffd4"; g.lineWidth = 2; g.beginPath();
  for (var i = 0; i < n; i++) {
    var x = W * (secs * (i + 0.5) / n) / dur, y = H - 2 - (H - 4) * B64.indexOf(code[i]) / 63;
    if (i) g.lineTo(x, y); else g.moveTo(x, y);
  }
  g.stroke();
}

function clipBox(title, audioSrc, specSrc, code, secs, dur) {
  var box = el("div", { class: "ex" }); box.appendChild(el("div", {}, title));
  var spec = el("div", { class: "spec" });
  if (specSrc) spec.appendChild(el("img", { src: specSrc, loading: "lazy", alt: "spectrogram" }));
  if (code) {
    var cv = el("canvas", { width: 320, height: 96 }); spec.appendChild(cv);
    drawCurve(cv, code, secs, dur || secs);
  }
  box.appendChild(spec);
  if (audioSrc) {
    var au = el("audio", { controls: "", preload: "none", src: audioSrc }), head = el("canvas", { width: 320, height: 96 });
    spec.appendChild(head);
    au.addEventListener("timeupdate", function () {   // a playhead over the spectrogram while the clip plays
      var g = head.getContext("2d"), x = head.width * au.currentTime / (au.duration || dur || secs || 1);
      g.clearRect(0, 0, head.width, head.height); g.fillStyle = "rgba(255,255,255,0.8)"; g.fillRect(x, 0, 2, head.height);
    });
    box.appendChild(au);
  }
  return box;
}

function openFeature(i) {
  var I = ATLAS.idx, C = I.cols, s = I.saes[C.s[i]], f = C.f[i], view = $("#feature-view");
  view.textContent = ""; window.scrollTo(0, 0);
  var h = el("h1", {}, s.id + "/" + f); view.appendChild(h);
  var nav = el("p"), k = ATLAS.rows.indexOf(i);
  nav.appendChild(el("a", { href: "#" }, "← index"));
  if (k > 0) { nav.appendChild(document.createTextNode(" · ")); nav.appendChild(el("a", { href: "#" + fid(ATLAS.rows[k - 1]) }, "previous")); }
  if (k >= 0 && k + 1 < ATLAS.rows.length) { nav.appendChild(document.createTextNode(" · ")); nav.appendChild(el("a", { href: "#" + fid(ATLAS.rows[k + 1]) }, "next")); }
  view.appendChild(nav);
  view.appendChild(el("p", {}, "layer " + s.layer + " · expansion " + s.expansion + " · k " + s.k + " · density " +
    fmt(C.n[i] / s.n_tracks, 4) + " (" + C.n[i] + " of " + s.n_tracks + " tracks) · mean activation " + fmt(C.m[i]) + " · β " + fmt(C.b[i])));
  chunk(s.id, f, function (data) { renderFeature(view, i, data[f]); });
}

function renderFeature(view, i, d) {
  var I = ATLAS.idx, C = I.cols, s = I.saes[C.s[i]], f = C.f[i];
  if (!d) { view.appendChild(el("p", {}, "no data for this feature")); return; }
  section(view, "Activation histogram").appendChild(histogram(d.h, d.hx, d.hz));
  var exs = section(view, "Top " + d.ex.length + " clips (activation over time on the spectrogram)"), grid = el("div", { class: "examples" });
  d.ex.forEach(function (e) {
    var clip = e[0], audio = e[6] ? ATLAS_ROOT + "features/" + s.id + "/examples/" + f + "/" + e[1] + ".wav" : null;
    grid.appendChild(clipBox("#" + (e[1] + 1) + " · " + I.clips[clip] + " · mean " + fmt(e[2]) + " · max " + fmt(e[3]),
      audio, I.spec[clip] ? ATLAS_BASE + I.spec[clip] : null, e[5], e[4], I.dur[clip]));
  });
  exs.appendChild(grid);
  if (d.lab && d.lab.length) {
    var keys = [];
    d.lab.forEach(function (c) { Object.keys(c[2]).forEach(function (k) { if (keys.indexOf(k) < 0) keys.push(k); }); });
    section(view, "Candidate labels").appendChild(table(["label", "source"].concat(keys, ["best"]), d.lab.map(function (c, j) {
      return [I.labels[c[0]], c[1]].concat(keys.map(function (k) { return c[2][k] === undefined ? null : c[2][k]; }), [j === d.best ? "★" : ""]);
    })));
  }
  if (d.pr) section(view, "Layer probe").appendChild(el("p", {}, "The layer probe (out-of-fold, " + I.probe + ") guesses layer " + d.pr[0] +
    " (p = " + fmt(d.pr[1]) + "); its probability of the true layer " + s.layer + ": " + fmt(d.pr[2])));
  if (d.con && d.con.length) section(view, "Concepts this feature separates (AUROC of its per-track mean on the " + I.split + " tracks)")
    .appendChild(table(["concept", "AUROC"], d.con.map(function (c) { return [I.concepts[c[0]], c[1]]; })));
  if (d.bm) {   // 05c: [concept, held-out AUROC, its SD, seeds that chose it, seeds, the SAE's best latent, the random twin's]
    var bm = d.bm, bc = I.bench_concepts[bm[0]], bs = section(view, "Benchmark (05c musicbench: the factorial probe corpus, frame level)");
    bs.appendChild(el("p", {}, "Best concept: " + bc + " (chosen on the train clips of " + bm[3] + " of " + bm[4] +
      " split seeds; the AUROC is each seed's choice on the held-out clips, mean ± SD over seeds)."));
    bs.appendChild(table(["", "held-out AUROC at detecting " + bc], [
      ["this feature", fmt(bm[1]) + (bm[2] === null ? "" : " ± " + fmt(bm[2]))],
      ["the SAE's best latent for " + bc, bm[5]], ["the random-weight twin's best latent for " + bc, bm[6]], ["chance", 0.5]]));
  }
  if (d.rec && d.rec.length) section(view, "Concept recovery (05): this feature is the SAE's best unit").appendChild(
    table(["concept", "seeds picked", "held-out AUROC (mean)"], d.rec.map(function (c) { return [I.concepts[c[0]], c[1] + " of " + c[2], c[3]]; })));
  if (d.st && d.st.length) {
    var st = section(view, "Steering (08): clips at each α beside the paired baseline"), alphas = [];
    d.st.forEach(function (c) { if (alphas.indexOf(c[1]) < 0) alphas.push(c[1]); });
    alphas.forEach(function (a) {
      var row = el("div", { class: "steer" });
      if (I.steer_base) row.appendChild(clipBox("baseline", ATLAS_ROOT + I.steer_base[0], ATLAS_BASE + I.steer_base[1]));
      d.st.filter(function (c) { return c[1] === a; }).forEach(function (c) {
        row.appendChild(clipBox(c[0] + " α=" + a + (c[4] === null ? "" : " · Δ " + fmt(c[4])), ATLAS_ROOT + c[2], ATLAS_BASE + c[3]));
      });
      st.appendChild(row);
    });
  }
  if ((d.nn && d.nn.length) || (d.nx && d.nx.length)) {
    var nn = section(view, "Nearest features by decoder cosine");
    nn.appendChild(table(["same SAE", "cosine"], (d.nn || []).map(function (c) { return [link(s.id + "/" + c[0]), c[1]]; })));
    nn.appendChild(table(["other SAEs", "cosine"], (d.nx || []).map(function (c) { return [link(I.saes[c[0]].id + "/" + c[1]), c[2]]; })));
  }
}

loadScript(ATLAS_BASE + "data/index.js");
