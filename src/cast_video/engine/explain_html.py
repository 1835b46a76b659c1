# ruff: noqa: E501  (an HTML/JS template; its lines are the page's)
"""The template of `cast-video explain`'s index.html: one page, no network; the data replaces `/*DATA*/null`."""

PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>CAST explain</title>
<style>
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 4px} .sub{color:#666;font-size:12px;margin-bottom:10px}
.row{display:flex;gap:6px;flex-wrap:wrap;align-items:flex-start}
.cell{text-align:center;font-size:11px;color:#555} canvas{cursor:crosshair;display:block}
.controls{margin:10px 0;display:flex;gap:14px;flex-wrap:wrap;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin-right:18px} td,th{padding:2px 8px;text-align:left}
.preds{display:flex;flex-wrap:wrap;margin:8px 0} .bar{background:#e8743b;height:8px}
.note{font-size:12px;color:#444;max-width:900px;margin:6px 0}
</style></head><body>
<h1>What CAST looked at</h1><div class="sub" id="video"></div>
<div class="preds" id="preds"></div>
<div class="controls">
 <label>view <select id="mode"><option value="attn">cross-attention</option><option value="rel">Grad-CAM relevance</option></select></label>
 <label>layer <select id="layer"></select></label>
 <label>direction <select id="dir"></select></label>
 <label>head <select id="head"></select></label>
 <label>relevance of <select id="rel"></select></label>
</div>
<div class="note" id="note"></div>
<div class="row" id="frames"></div>
<script>
const D = /*DATA*/null;
const $ = id => document.getElementById(id);
const N = D.grid * D.grid, T = D.steps;
let query = {t: D.query[0], q: D.query[1]};  // the most relevant token (Grad-CAM) to start with
const imgs = D.frames.map(b => { const i = new Image(); i.src = "data:image/png;base64," + b; return i; });
const bytes = {};
function mapBytes(layer, dir) {
  const k = layer + dir;
  if (!bytes[k]) { const s = atob(D.maps[layer][dir].data); const a = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); bytes[k] = a; }
  return bytes[k];
}
function opt(sel, values, labels) { sel.innerHTML = values.map((v, i) => `<option value="${v}">${labels[i]}</option>`).join(""); }
function nearestQuery(qs, q) {  // the stored query patch closest to q
  const r = Math.floor(q / D.grid), c = q % D.grid; let best = 0, bd = 1e9;
  qs.forEach((p, i) => { const d = (Math.floor(p / D.grid) - r) ** 2 + (p % D.grid - c) ** 2; if (d < bd) { bd = d; best = i; } });
  return best;
}
function heat() {  // (T, N) values in [0, 1] for the current selection
  const out = [...Array(T)].map(() => new Float32Array(N));
  if ($("mode").value === "rel") {
    const [h, e] = $("rel").value.split("|"); const m = D.relevance[h][e];
    for (let t = 0; t < T; t++) for (let n = 0; n < N; n++) out[t][n] = m[t][n];
    return out;
  }
  const layer = $("layer").value, dir = $("dir").value, M = D.maps[layer][dir], a = mapBytes(layer, dir);
  const h = +$("head").value, S = M.shape, qi = nearestQuery(M.queries, query.q);
  if (M.window === "space") {  // (H+1, T, Q, N): each frame, the same query patch at its own step
    for (let t = 0; t < T; t++) for (let n = 0; n < N; n++) out[t][n] = a[((h * S[1] + t) * S[2] + qi) * S[3] + n];
  } else if (M.window === "time") {  // (H+1, N, T, T): every place's attention from step t to each key step
    for (let t = 0; t < T; t++) for (let n = 0; n < N; n++) out[t][n] = a[((h * S[1] + n) * S[2] + query.t) * S[3] + t];
  } else {  // (H+1, T, Q, T*N): the one query's row
    for (let t = 0; t < T; t++) for (let n = 0; n < N; n++) out[t][n] = a[((h * S[1] + query.t) * S[2] + qi) * S[3] + t * N + n];
  }
  return out;
}
function colour(v) {  // inferno-like ramp
  const stops = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
  const x = Math.min(1, Math.max(0, v)) * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  return stops[i].map((s, k) => Math.round(s + f * (stops[i + 1][k] - s)));
}
function draw() {
  const hm = heat(); let peak = 1e-12; hm.forEach(r => r.forEach(v => { peak = Math.max(peak, v); }));
  const box = $("frames"); box.innerHTML = "";
  const attn = $("mode").value === "attn", M = attn ? D.maps[$("layer").value][$("dir").value] : null;
  hm.forEach((row, t) => {
    const cell = document.createElement("div"); cell.className = "cell";
    const cv = document.createElement("canvas"), img = imgs[t], W = img.width || 160; cv.width = cv.height = W;
    const g = cv.getContext("2d"); g.imageSmoothingEnabled = false; g.drawImage(img, 0, 0, W, W);
    const s = W / D.grid;
    for (let n = 0; n < N; n++) { const v = row[n] / peak, [r, gg, b] = colour(v);
      g.fillStyle = `rgba(${r},${gg},${b},${(0.7 * v).toFixed(3)})`; g.fillRect((n % D.grid) * s, Math.floor(n / D.grid) * s, s, s); }
    if (attn) { const showT = M.window === "space" || t === query.t;
      if (showT) { g.strokeStyle = "#0f0"; g.lineWidth = 2;
        g.strokeRect((query.q % D.grid) * s + 1, Math.floor(query.q / D.grid) * s + 1, s - 2, s - 2); } }
    cv.onclick = ev => { const rect = cv.getBoundingClientRect();
      const c = Math.floor((ev.clientX - rect.left) / s), r = Math.floor((ev.clientY - rect.top) / s);
      query = {t: t, q: r * D.grid + c}; draw(); };
    cell.appendChild(cv); cell.appendChild(document.createTextNode(D.frame_labels[t])); box.appendChild(cell);
  });
  const notes = {space: "S2T-style space window: each frame shows where the green query patch, at that frame's own step, looks across the other expert's patches of the same step. Click a patch to move the query.",
    time: "T2S-style time window: frame k shows, for every place, how much its token at the query step (green frame) attends to the other expert's token at step k; at each place the values over the frames sum to 1. Click a frame to choose the query step.",
    spacetime: "space-time window: the full attention of the green query token over every key token of every frame. Click to move the query."};
  $("note").textContent = attn ? notes[M.window] + " Colours are scaled to the largest value shown."
    : "Grad-CAM: ReLU(sum over channels of (mean gradient of the chosen class) x token) on the tokens entering the last block.";
}
function layerChanged() {
  const dirs = Object.keys(D.maps[$("layer").value] || {}); const cur = $("dir").value;
  opt($("dir"), dirs, dirs.map(d => d.toUpperCase() + " (" + D.maps[$("layer").value][d].window + ")"));
  if (dirs.includes(cur)) $("dir").value = cur;
  draw();
}
$("video").textContent = D.video + " — " + (D.view ? D.view + "; " : "") + "frame numbers in the original video under each frame";
$("preds").innerHTML = Object.entries(D.top).map(([h, rows]) => `<table><tr><th colspan=2>${h}</th></tr>` +
  rows.map(r => `<tr><td>${r.name}</td><td><div class="bar" style="width:${Math.round(r.score * 120)}px"></div>${r.score.toFixed(3)}</td></tr>`).join("") + "</table>").join("");
const layers = Object.keys(D.maps);
opt($("layer"), layers, layers.map(l => "block " + l));
opt($("head"), [...Array(D.heads + 1).keys()].map(String), [...[...Array(D.heads).keys()].map(h => "head " + h), "mean of heads"]);
$("head").value = String(D.heads);
const rel = Object.entries(D.relevance).flatMap(([h, r]) => ["spatial", "temporal"].map(e => [h + "|" + e, `${h} = ${r.target} (${e} expert)`]));
opt($("rel"), rel.map(r => r[0]), rel.map(r => r[1]));
if (layers.length) $("layer").value = layers[layers.length - 1];  // the block nearest the heads first
else $("mode").value = "rel";
// a view can be linked: index.html#layer=3&dir=s2t&head=4&t=1&q=9 (also mode=rel&rel=noun|spatial)
const wanted = Object.fromEntries(new URLSearchParams(location.hash.slice(1)));
function applyWanted() {
  for (const id of ["mode", "layer", "head", "rel"]) if (wanted[id] !== undefined) $(id).value = wanted[id];
  if (wanted.t !== undefined) query = {t: +wanted.t, q: +wanted.q};
}
["mode", "head", "rel", "dir"].forEach(id => $(id).onchange = draw); $("layer").onchange = layerChanged;
Promise.all(imgs.map(i => i.decode ? i.decode().catch(() => 0) : 0)).then(() => {
  applyWanted();
  if (!layers.length) return draw();
  layerChanged();
  if (wanted.dir !== undefined) { $("dir").value = wanted.dir; draw(); }
});
</script></body></html>
"""
