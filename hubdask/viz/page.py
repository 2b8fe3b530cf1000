"""The viewer's single web page (inline script and style, no external assets: it works offline)."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hubdask view</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; background: #fafafa; }
 h1 { font-size: 1.2em; margin: 0 0 .2em 0; } .sub { color: #666; font-size: .9em; margin-bottom: .8em; }
 #controls { display: flex; gap: .6em; align-items: center; margin-bottom: .8em; }
 #slider { flex: 1; min-width: 300px; } #num { width: 9em; }
 #main { display: flex; gap: 1.5em; align-items: flex-start; }
 #pic { image-rendering: pixelated; border: 1px solid #bbb; background: #fff; max-width: 70vw; min-width: 256px; }
 #side { min-width: 300px; } #range { font-family: monospace; margin: .4em 0; white-space: pre; }
 #hist { border: 1px solid #bbb; background: #fff; } #status { color: #a00; margin-top: .6em; }
</style></head>
<body>
<h1 id="title">…</h1><div class="sub" id="sub"></div>
<div id="controls">
 <button id="prev" title="previous slice with written chunks">&#9664; written</button>
 <input type="range" id="slider" min="0" max="0" step="1" value="0" aria-label="index along axis 0">
 <button id="next" title="next slice with written chunks">written &#9654;</button>
 <input type="number" id="num" min="0" value="0" aria-label="index">
</div>
<div id="main">
 <img id="pic" alt="slice">
 <div id="side"><div id="where"></div><div id="range"></div>
  <canvas id="hist" width="320" height="140"></canvas><div id="status"></div></div>
</div>
<script>
const $ = (id) => document.getElementById(id);
let meta = null, want = 0, busy = false;

function fmt(x) { return Number.isInteger(x) ? String(x) : Number(x).toPrecision(6); }

function drawHist(st) {
  const c = $("hist"), g = c.getContext("2d"), n = st.counts.length, top = Math.max(1, ...st.counts);
  g.clearRect(0, 0, c.width, c.height);
  g.fillStyle = "#3b6ea5";
  const w = c.width / n, h = c.height - 16;
  st.counts.forEach((k, j) => { const bh = h * Math.sqrt(k / top); g.fillRect(j * w, h - bh, Math.max(1, w - 1), bh); });
  g.fillStyle = "#222"; g.font = "11px monospace";
  g.fillText(fmt(st.edges[0]), 2, c.height - 3);
  const right = fmt(st.edges[n]); g.fillText(right, c.width - 7 * right.length - 2, c.height - 3);
}

function loadImage(i) {
  return new Promise((ok, fail) => {
    const img = new Image();
    img.onload = () => ok(img.src);
    img.onerror = () => fail(new Error("could not load slice " + i));
    img.src = "slice.png?i=" + i + "&t=" + Date.now();
  });
}

async function load() {
  busy = true;
  const i = want;
  try {
    const [src, st] = await Promise.all([loadImage(i), fetch("stats?i=" + i).then(async (r) => {
      const body = await r.json(); if (!r.ok) throw new Error(body.error); return body; })]);
    $("pic").src = src;
    $("where").textContent = meta.sliced ? `slice ${i} of ${meta.length} (shape ${st.shape.join(" × ")}` +
      (st.step > 1 ? `, every ${st.step}th pixel` : "") + ")" : `shape ${st.shape.join(" × ")}`;
    $("range").textContent = `min  ${fmt(st.min)}\nmax  ${fmt(st.max)}\nmean ${fmt(st.mean)}` + (st.nan ? `\nNaN  ${st.nan}` : "");
    drawHist(st);
    $("status").textContent = "";
    $("pic").dataset.index = String(i);
  } catch (e) { $("status").textContent = String(e.message || e); }
  busy = false;
  if (want !== i) load();
}

function go(i) {
  i = Math.max(0, Math.min(meta.length - 1, Math.round(i)));
  $("slider").value = i; $("num").value = i; want = i;
  if (!busy) load();
}

function jump(dir) {
  const i = want, r = meta.written;
  if (dir > 0) { for (const [a, b] of r) { if (a > i) return go(a); if (i + 1 < b && i >= a) return go(i + 1); } }
  else { for (let k = r.length - 1; k >= 0; k--) { const [a, b] = r[k]; if (b - 1 < i) return go(b - 1); if (i > a && i < b) return go(i - 1); } }
}

async function init() {
  meta = await (await fetch("meta")).json();
  document.title = "hubdask view " + meta.name;
  $("title").textContent = meta.name;
  $("sub").textContent = `${meta.shape.join(" × ")} ${meta.dtype}, chunks ${meta.chunks.join(" × ")}${meta.shards ? ", shards " + meta.shards.join(" × ") : ""}, in ${meta.root}`;
  $("slider").max = meta.length - 1; $("num").max = meta.length - 1;
  if (!meta.sliced) $("controls").style.display = "none";
  $("slider").addEventListener("input", (e) => go(Number(e.target.value)));
  $("num").addEventListener("change", (e) => go(Number(e.target.value)));
  $("prev").addEventListener("click", () => jump(-1));
  $("next").addEventListener("click", () => jump(1));
  go(meta.written.length && meta.sliced ? meta.written[0][0] : 0);
}
init().catch((e) => { $("status").textContent = String(e.message || e); });
</script></body></html>
"""
