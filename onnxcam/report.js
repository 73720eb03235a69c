/* onnxcam report.html: the image gallery (filters, sorting, pages of cards) and the detail view.
   Text from the records only ever enters the page through textContent and setAttribute, never as markup;
   file names arrive with their relative URLs (it.urls), percent-encoded from the file system's bytes. */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const items = JSON.parse($("data").textContent).items;
  let maps = null;  // the embedded maps (gray PNGs, base64), parsed when a detail view first needs one

  function ready() {
    document.documentElement.dataset.ready = "1";
    performance.mark("onnxcam-interactive");
  }

  // A picture that cannot be loaded (deleted since, or never written) says so in its place.
  document.addEventListener("error", (event) => {
    const img = event.target;
    if (!(img instanceof HTMLImageElement) || img.dataset.failed) return;
    img.dataset.failed = "1";
    const name = img.dataset.file || img.getAttribute("src");
    img.replaceWith(el("span", { class: "placeholder problem" }, "picture missing: " + name));
  }, true);

  if (!$("cards")) { ready(); return; }

  const lower = items.map((it) => it.name.toLowerCase());
  const dialog = $("detail");
  const controls = ["q", "cls", "method", "cmin", "cmax", "show", "sort", "size"];
  let view = [];  // indices into items: filtered, then sorted
  let page = 0;
  let current = -1;  // position in view shown in the detail view
  let descending = false;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function pct(p) { return p === null || p === undefined ? "–" : (p * 100).toFixed(1) + "%"; }
  function seconds(s) { return s < 1 ? (s * 1000).toFixed(1) + " ms" : s.toFixed(2) + " s"; }
  function imageTime(it) { return it.timings && typeof it.timings.image === "number" ? it.timings.image : null; }
  function byText(a, b) { return a < b ? -1 : a > b ? 1 : 0; }

  function fillSelect(select, values) {
    const counts = new Map();
    for (const v of values) counts.set(v, (counts.get(v) || 0) + 1);
    const names = [...counts.keys()].sort((a, b) => byText(a.toLowerCase(), b.toLowerCase()));
    for (const name of names) select.append(el("option", { value: name }, `${name} (${counts.get(name)})`));
  }
  fillSelect($("cls"), items.map((it) => it.top).filter((t) => t));
  fillSelect($("method"), items.flatMap((it) => it.methods));

  function filters() {
    const number = (id, fallback) => {
      const v = parseFloat($(id).value);
      return Number.isFinite(v) ? v / 100 : fallback;
    };
    return {
      q: $("q").value.trim().toLowerCase(), cls: $("cls").value, method: $("method").value,
      min: number("cmin", 0), max: number("cmax", 1), show: $("show").value,
    };
  }

  function matches(it, i, f) {
    if (f.q && !lower[i].includes(f.q)) return false;
    if (f.cls && it.top !== f.cls) return false;
    if (f.method && !it.methods.includes(f.method)) return false;
    if (f.min > 0 || f.max < 1) {  // a narrowed range drops the records that have no confidence
      if (it.confidence === null || it.confidence < f.min - 1e-9 || it.confidence > f.max + 1e-9) return false;
    }
    const failed = it.problems.length > 0;
    if (f.show === "ok" && (failed || it.flat)) return false;
    if (f.show === "flat" && !it.flat) return false;
    if (f.show === "failed" && !failed) return false;
    return true;
  }

  // Each key: [value of an item, compare two values]; a missing value sorts last in either direction.
  const KEYS = {
    name: [(it) => it.name.toLowerCase(), byText],
    confidence: [(it) => it.confidence, (a, b) => a - b],
    class: [(it) => it.top && it.top.toLowerCase(), byText],
    method: [(it) => it.methods.join(",") || null, byText],
    time: [imageTime, (a, b) => a - b],
    problems: [(it) => -it.problems.length, (a, b) => a - b],
  };

  function sortView(key) {
    const [value, compare] = KEYS[key] || KEYS.name;
    const values = items.map(value);
    const sign = descending ? -1 : 1;
    view.sort((i, j) => {
      const a = values[i], b = values[j];
      const tie = () => byText(lower[i], lower[j]) || i - j;
      if (a == null || b == null) return (a == null) - (b == null) || tie();
      return sign * compare(a, b) || tie();
    });
  }

  function apply() {
    const f = filters();
    view = [];
    for (let i = 0; i < items.length; i++) if (matches(items[i], i, f)) view.push(i);
    sortView($("sort").value);
    page = 0;
    render();
  }

  function pageSize() { return parseInt($("size").value, 10) || 60; }

  function render() {
    const size = pageSize();
    const pages = Math.max(1, Math.ceil(view.length / size));
    page = Math.min(Math.max(page, 0), pages - 1);
    const start = page * size;
    const fragment = document.createDocumentFragment();
    view.slice(start, start + size).forEach((index, k) => fragment.append(card(items[index], start + k)));
    $("cards").replaceChildren(fragment);
    const shown = view.length ? `${start + 1}–${Math.min(start + size, view.length)} of ` : "";
    $("count").textContent = `${shown}${view.length} matching image${view.length === 1 ? "" : "s"}` +
      (view.length === items.length ? "" : ` (${items.length} in all)`);
    $("count").dataset.matches = String(view.length);
    $("pageinfo").textContent = `page ${page + 1} of ${pages}`;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  }

  function describe(it) {
    const e = it.explanations[0];
    const what = isGrid(it) ? "methods side by side" : `${e ? e.method : ""} overlay`;
    const pred = it.predictions[0];
    return `${what} of ${it.name}` + (pred ? `: predicted ${pred.label} ${pct(pred.probability)}` : "") +
      (e && e.box ? `, box ${e.box.join(", ")}` : "");
  }

  function isGrid(it) { return it.explanations.length > 1 && it.picture && !it.explanations[0].picture; }

  function picture(it, name, alt, cls, lazy) {
    const attrs = { src: it.urls[name], alt, class: cls, loading: lazy ? "lazy" : null, decoding: "async" };
    return el("img", { ...attrs, "data-file": name });
  }

  function card(it, pos) {
    const pred = it.predictions[0];
    const failed = it.problems.length > 0;
    const none = failed ? el("span", { class: "placeholder problem" }, "record unusable")
      : el("span", { class: "placeholder" }, "no picture written");
    const thumb = el("span", { class: "thumb" }, it.picture ? picture(it, it.picture, describe(it), null, true) : none);
    const problems = `problem${it.problems.length > 1 ? "s" : ""}: ${it.problems.length}`;
    const badges = el("span", { class: "badges" },
      it.flat ? el("span", { class: "badge flat" }, "flat map") : null,
      failed ? el("span", { class: "badge failed" }, problems) : null);
    const button = el("button", { type: "button", class: "card", "data-pos": pos, "data-name": it.name },
      thumb, el("span", { class: "name" }, it.name),
      el("span", { class: "pred" }, pred ? `${pred.label} · ${pct(pred.probability)}` : "no prediction"),
      el("span", { class: "methods" }, it.methods.join(", ")), badges);
    return el("li", {}, button);
  }

  function cards() { return [...$("cards").querySelectorAll(".card")]; }

  function focusPos(pos) {
    const size = pageSize();
    if (Math.floor(pos / size) !== page) { page = Math.floor(pos / size); render(); }
    const target = $("cards").querySelector(`.card[data-pos="${pos}"]`);
    if (target) target.focus();
  }

  // -- the detail view ------------------------------------------------------------------------------------------

  // A map (a gray PNG) coloured with OpenCV's JET colormap, as on the overlays: a promise of a small canvas.
  function jetCanvas(b64) {
    const gray = new Image();
    gray.src = "data:image/png;base64," + b64;
    return gray.decode().then(() => {
      const small = document.createElement("canvas");
      small.width = gray.naturalWidth;
      small.height = gray.naturalHeight;
      const ctx = small.getContext("2d");
      ctx.drawImage(gray, 0, 0);
      const pixels = ctx.getImageData(0, 0, small.width, small.height);
      const d = pixels.data;
      const clamp = (v) => Math.max(0, Math.min(1, v)) * 255;
      for (let k = 0; k < d.length; k += 4) {
        const x = d[k] / 255;
        d[k] = clamp(1.5 - Math.abs(4 * x - 3));
        d[k + 1] = clamp(1.5 - Math.abs(4 * x - 2));
        d[k + 2] = clamp(1.5 - Math.abs(4 * x - 1));
        d[k + 3] = 255;
      }
      ctx.putImageData(pixels, 0, 0);
      return small;
    });
  }

  // The map alone, at the image's aspect ratio (known once its overlay has loaded), with the box.
  function mapFigure(it, e, overlay) {
    const label = `${e.method} map alone of ${it.name}, class ${e.class} ${e.label || ""}` +
      (e.box ? `, box ${e.box.join(", ")}` : "");
    const canvas = el("canvas", { class: "map", role: "img", "aria-label": label, width: 448, height: 448 });
    maps = maps || JSON.parse($("maps").textContent);
    const coloured = jetCanvas(maps[e.map]);
    const draw = (small) => {
      const w = (overlay && overlay.naturalWidth) || small.width;
      const h = (overlay && overlay.naturalHeight) || small.height;
      const scale = 448 / Math.max(w, h);
      canvas.width = Math.round(w * scale);
      canvas.height = Math.round(h * scale);
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
      if (overlay && overlay.naturalWidth) {
        ctx.strokeStyle = "#00ff00";
        ctx.lineWidth = 3;
        for (const [x0, y0, x1, y1] of e.boxes) {  // run --boxes all: every region's; else the largest's
          ctx.strokeRect(x0 * scale, y0 * scale, (x1 - x0 + 1) * scale, (y1 - y0 + 1) * scale);
        }
      }
      canvas.dataset.drawn = overlay && !overlay.naturalWidth ? "map" : "map and box";
    };
    coloured.then(draw);
    if (overlay) overlay.addEventListener("load", () => coloured.then(draw));
    const caption = `${e.method} map alone (class ${e.class}${e.label ? " " + e.label : ""})`;
    return el("figure", {}, canvas, el("figcaption", {}, caption));
  }

  const NUMBER = /^[-+]?[\d.]+(e[-+]?\d+)?( ms| s|%)?$/;  // right-aligned cells

  function table(headings, rows, caption) {
    return el("div", { class: "scroll" }, el("table", {},
      caption ? el("caption", {}, caption) : null,
      el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c, k) => el(k === 0 ? "th" : "td",
        { scope: k === 0 ? "row" : null, class: NUMBER.test(c) ? "n" : null }, c)))))));
  }

  function facts(pairs) {
    const dl = el("dl", { class: "facts" });
    for (const [k, v] of pairs) {
      if (v !== null && v !== undefined && v !== "") dl.append(el("dt", {}, k), el("dd", {}, String(v)));
    }
    return dl;
  }

  function fill() {
    const it = items[view[current]];
    $("detail-title").textContent = it.name;
    $("d-pos").textContent = `${current + 1} of ${view.length}`;
    $("d-prev").disabled = current <= 0;
    $("d-next").disabled = current >= view.length - 1;
    const body = [];
    if (it.problems.length) {
      body.push(el("ul", { class: "problem", "aria-label": "problems" }, ...it.problems.map((p) => el("li", {}, p))));
    }
    const pictures = el("div", { class: "pictures" });
    const main = it.picture ? picture(it, it.picture, describe(it), "full", false) : null;
    if (main) {
      const caption = isGrid(it) ? "the methods side by side" : "overlay (the box in green)";
      pictures.append(el("figure", {}, main, el("figcaption", {}, caption)));
    }
    for (const e of it.explanations) {
      const what = `${e.method}: class ${e.class} ${e.label || ""}`;
      const own = e.picture && e.picture !== it.picture
        ? picture(it, e.picture, `${e.method} overlay of ${it.name}, class ${e.class} ${e.label || ""}`, "full", false)
        : null;
      if (own) pictures.append(el("figure", {}, own, el("figcaption", {}, what)));
      // the map takes its overlay's aspect ratio: not a grid's, which holds several pictures side by side
      if (e.map !== null) pictures.append(mapFigure(it, e, own || (e.picture ? main : null)));
    }
    if (!it.explanations.some((e) => e.map !== null) && it.explanations.length) {
      pictures.append(el("p", { class: "placeholder" }, "The map alone is shown when the run saved it (--npy)."));
    }
    body.push(pictures);
    const left = [];
    if (it.predictions.length) {
      const rows = it.predictions.map((p) => [String(p.class), p.label, pct(p.probability)]);
      left.push(el("h3", {}, "Top predictions"), table(["class", "label", "probability"], rows));
    }
    if (it.explanations.length) {
      left.push(el("h3", {}, "Explanations"), table(["method", "class", "box (x0, y0, x1, y1)", "gradients", "flat"],
        it.explanations.map((e) => [e.method, `${e.class} ${e.label || ""}`, e.boxes.length ? e.boxes.map((b) => b.join(", ")).join("; ") : "none",
          e.gradients || "–", e.flat ? "yes: zero everywhere" : "no"])));
    }
    const right = [el("h3", {}, "Run"), facts([
      ["image", it.image], ["layer", it.layers.join(", ")], ["method", it.methods.join(", ")], ["model", it.model],
      ["provider", it.provider], ["preprocess", it.preprocess], ["score", it.score],
      ["time per image", it.timings.image !== undefined ? seconds(it.timings.image) : null],
      ["setup", it.timings.setup !== undefined ? seconds(it.timings.setup) : null],
      ["record", it.json]])];
    if (it.units.length) {
      right.push(facts([["top units", it.units.map((u) => `${u.channel} (${u.contribution})`).join(", ")]]));
    }
    body.push(el("div", { class: "columns" }, el("div", {}, ...left), el("div", {}, ...right)));
    if (it.eval) {
      const keys = [...new Set(Object.values(it.eval).flatMap((r) => Object.keys(r)))];
      const rows = Object.entries(it.eval).map(([m, r]) =>
        [m, ...keys.map((k) => r[k] === undefined ? "–" : String(+r[k].toFixed(4)))]);
      body.push(el("h3", {}, "Evaluation of this image"), table(["method", ...keys], rows));
    }
    if (it.pictures.length) {
      body.push(el("h3", {}, "Other pictures"), el("div", { class: "pictures" },
        ...it.pictures.map((p) => el("figure", {}, picture(it, p, p, "full", true), el("figcaption", {}, p)))));
    }
    $("detail-body").replaceChildren(...body);
    $("detail-body").scrollTop = 0;
  }

  function openDetail(pos) {
    if (pos < 0 || pos >= view.length) return;
    current = pos;
    fill();
    if (!dialog.open) dialog.showModal();
  }

  dialog.addEventListener("close", () => { if (current >= 0) focusPos(current); });
  dialog.addEventListener("keydown", (event) => {
    if (event.key === "ArrowLeft") { event.preventDefault(); openDetail(current - 1); }
    if (event.key === "ArrowRight") { event.preventDefault(); openDetail(current + 1); }
  });
  $("d-prev").addEventListener("click", () => openDetail(current - 1));
  $("d-next").addEventListener("click", () => openDetail(current + 1));
  $("d-close").addEventListener("click", () => dialog.close());

  // -- controls and keys ----------------------------------------------------------------------------------------

  for (const id of controls) $(id).addEventListener(id === "q" ? "input" : "change", apply);
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("dir").addEventListener("click", () => {
    descending = !descending;
    $("dir").textContent = descending ? "descending" : "ascending";
    $("dir").setAttribute("aria-pressed", String(descending));
    apply();
  });
  $("prev").addEventListener("click", () => { page -= 1; render(); });
  $("next").addEventListener("click", () => { page += 1; render(); });
  $("cards").addEventListener("click", (event) => {
    const button = event.target.closest(".card");
    if (button) openDetail(parseInt(button.dataset.pos, 10));
  });
  $("cards").addEventListener("keydown", (event) => {
    const button = event.target.closest(".card");
    if (!button) return;
    const all = cards();
    const k = all.indexOf(button);
    const columns = all.filter((c) => c.offsetTop === all[0].offsetTop).length || 1;
    const pos = parseInt(button.dataset.pos, 10);
    const moves = {
      ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns, PageDown: pageSize(), PageUp: -pageSize(),
    };
    let target = null;
    if (event.key in moves) target = pos + moves[event.key];
    else if (event.key === "Home") target = pos - k;
    else if (event.key === "End") target = pos - k + all.length - 1;
    if (target === null) return;
    event.preventDefault();
    focusPos(Math.min(Math.max(target, 0), view.length - 1));
  });
  document.addEventListener("keydown", (event) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement && document.activeElement.tagName);
    if (event.key === "/" && !typing && !dialog.open) { event.preventDefault(); $("q").focus(); }
  });

  apply();
  ready();
})();
