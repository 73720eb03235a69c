"""report.html: one self-contained page over an output folder of `run --json`, `eval` and `sanity`.

The page embeds the records as JSON (made safe to sit inside a <script> element), its own CSS and
JavaScript, and refers to the pictures by their file names, relative to the folder; it fetches
nothing. The records are untrusted files: each is checked field by field, and a corrupt, partial or
foreign JSON, a missing picture or a broken map becomes a problem listed on its card, never an
exception. The browser draws one page of cards at a time, with lazy-loaded pictures, so a folder of
thousands of images opens at once. Also the HTML that `Explanation` shows in a notebook.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field

import cv2
import numpy as np

from onnxcam.errors import OnnxcamError
from onnxcam.writer import TEMP_PREFIX, picture_bytes, write_files

REPORT_NAME = "report.html"
ASSETS = os.path.dirname(os.path.abspath(__file__))
MAX_JSON_BYTES = 16 << 20  # a run record is a few kB: anything larger is not one, and is not read
MAX_NPY_BYTES = 64 << 20
MAP_SIDE = 64  # embedded maps: gray PNGs of about 1 kB (run's maps are smooth upsamplings of a coarse layer)
PICTURE_EXTENSIONS = (".png", ".jpg")
NOTEBOOK_IMAGES = 16  # a notebook cell shows this many images of a batch, and says how many it left out
RUN_KEYS = {"predictions", "explanations"}  # a JSON object with either is a run record (perhaps a broken one)


@dataclass
class Folder:
    """What a folder holds for the report: run records, eval's and sanity's, and what could not be used."""

    path: str
    items: list = field(default_factory=list)  # one dict per run record (or per unreadable run record)
    evaluation: dict | None = None
    sanity: list = field(default_factory=list)
    notices: list = field(default_factory=list)  # folder-level problems: foreign JSON, a broken eval.json


@dataclass(frozen=True)
class Written:
    """What write_report wrote: the page's path and what it shows."""

    path: str
    images: int
    problems: int  # cards with a problem (a corrupt record, a missing picture...)
    notices: int
    evaluation: bool
    sanity: int


def write_report(folder: str) -> Written:
    """Write FOLDER/report.html over the folder's JSON records (atomically); say what it holds."""
    found = scan(folder)
    if not (found.items or found.evaluation or found.sanity):
        raise OnnxcamError(
            f"nothing to report in {folder}: no JSON written by `onnxcam run --json`, `eval` or "
            "`sanity`" + (f" ({len(found.notices)} other JSON files)" if found.notices else "")
        )
    path = os.path.join(folder, REPORT_NAME)
    write_files({path: page(found).encode("utf-8")})
    return Written(
        path,
        len(found.items),
        sum(bool(i["problems"]) for i in found.items),
        len(found.notices),
        found.evaluation is not None,
        len(found.sanity),
    )


def scan(folder: str) -> Folder:
    """Read every JSON file of the folder (not its subfolders), sorted by name."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise OnnxcamError(f"cannot read the folder {folder}: {exc.strerror or exc}") from None
    files = {n for n in names if os.path.isfile(os.path.join(folder, n))}
    found = Folder(folder)
    for name in names:
        if not name.lower().endswith(".json") or name.startswith((".", TEMP_PREFIX)) or name not in files:
            continue
        data, error = _read_json(os.path.join(folder, name))
        if name == "eval.json":
            _add_eval(found, data, error, files)
        elif name.endswith(".sanity.json"):
            _add_sanity(found, name, data, error, files)
        elif error:
            found.items.append(_failed(name, error))
        elif isinstance(data, dict) and RUN_KEYS & data.keys():
            found.items.append(run_item(folder, name, data, files))
        else:
            found.notices.append(f"{name}: not a record of onnxcam run, eval or sanity (ignored)")
    if found.evaluation:
        _attach_eval_rows(found)
    return found


def _read_json(path):
    """(data, None) or (None, why it cannot be read)."""
    try:
        if os.path.getsize(path) > MAX_JSON_BYTES:
            return None, f"larger than {MAX_JSON_BYTES >> 20} MB: not a record"
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8")), None
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except (ValueError, RecursionError) as exc:
        return None, f"not valid JSON ({str(exc)[:120]})"


def _failed(name, why) -> dict:
    return _item(name=name, json=name, problems=[f"{name}: {why}"])


def _item(**fields) -> dict:
    item = {
        "name": "",
        "image": None,
        "json": "",
        "picture": None,
        "predictions": [],
        "confidence": None,
        "top": None,
        "explanations": [],
        "methods": [],
        "flat": False,
        "layers": [],
        "model": None,
        "provider": None,
        "preprocess": None,
        "score": None,
        "timings": {},
        "pictures": [],
        "units": [],
        "eval": None,
        "problems": [],
        "urls": {},
    }
    item.update(fields)
    return item


def run_item(folder: str, name: str, record: dict, files: set) -> dict:
    """One card from a run record: checked field by field; what is missing or malformed is a problem."""
    problems = []
    image = _text(record.get("image"))
    stem = os.path.splitext(os.path.basename(image))[0] if image else name.rsplit(".", 2)[0]
    predictions = []
    for p in _list(record.get("predictions"), "predictions", problems):
        share = p.get("probability", p.get("fraction")) if isinstance(p, dict) else None  # fraction: segmentation
        if isinstance(p, dict) and _int(p.get("class")) is not None and _number(share) is not None:
            predictions.append(
                {
                    "class": _int(p["class"]),
                    "label": _text(p.get("label")) or f"class {p['class']}",
                    "probability": _number(share),
                }
            )
        else:
            problems.append("a prediction without a class index and a probability")
    if not predictions:
        problems.append("no predictions")
    outputs = [os.path.basename(o) for o in _list(record.get("outputs"), "outputs", problems) if isinstance(o, str)]
    problems += [f"missing file: {o}" for o in outputs if o not in files and not o.endswith(".json")]
    explanations = []
    for e in _list(record.get("explanations"), "explanations", problems):
        explanations.append(_explanation(folder, stem, e, outputs, files, problems))
    if not explanations:
        problems.append("no explanations")
    # pictures the record lists are shown even when missing: the page then says "picture missing" in their place
    grid = next((o for o in outputs if o.startswith(f"{stem}.grid.") and o.endswith(PICTURE_EXTENSIONS)), None)
    first = next((e["picture"] for e in explanations if e["picture"]), None)
    used = {grid} | {e["picture"] for e in explanations}
    others = [o for o in outputs if o.endswith(PICTURE_EXTENSIONS) and o not in used]
    timings = record.get("timings_s") if isinstance(record.get("timings_s"), dict) else {}
    units = record.get("units") if isinstance(record.get("units"), list) else []
    layers = record.get("layers") if isinstance(record.get("layers"), list) else []
    return _item(
        name=os.path.basename(image) if image else name,
        image=image,
        json=name,
        picture=grid or first,
        predictions=predictions[:5],
        confidence=predictions[0]["probability"] if predictions else None,
        top=_class_name(predictions[0]) if predictions else None,
        explanations=explanations,
        methods=list(dict.fromkeys(e["method"] for e in explanations)),
        flat=any(e["flat"] for e in explanations),
        layers=[t for t in layers if isinstance(t, str)],
        model=_text(record.get("model")),
        provider=_text(record.get("provider")),
        preprocess=_text(record.get("preprocess")),
        score=_text(record.get("score")),
        timings={k: _number(v) for k, v in timings.items() if _number(v) is not None},
        units=[
            {"channel": _int(u.get("channel")), "contribution": _number(u.get("contribution"))}
            for u in units
            if isinstance(u, dict)
        ],
        pictures=others,
        urls={n: url(n) for n in [grid, first, *others] + [e["picture"] for e in explanations] if n},
        problems=[f"{name}: {p}" for p in dict.fromkeys(problems)],
    )


def _explanation(folder, stem, e, outputs, files, problems) -> dict:
    if not isinstance(e, dict):
        problems.append("an explanation that is not an object")
        return {
            "method": "?",
            "class": None,
            "label": None,
            "box": None,
            "boxes": [],
            "flat": False,
            "gradients": None,
            "picture": None,
            "map": None,
        }
    method = _text(e.get("method")) or "?"
    target = e.get("target") if isinstance(e.get("target"), dict) else {}
    cls = _int(target.get("class"))
    tags = [f"{method}.c{cls}", method] if cls is not None else [method]
    picture = next((f"{stem}.{t}{x}" for t in tags for x in PICTURE_EXTENSIONS if f"{stem}.{t}{x}" in outputs), None)
    npy = next((f"{stem}.{t}.npy" for t in tags if f"{stem}.{t}.npy" in outputs and f"{stem}.{t}.npy" in files), None)
    box = _box(e.get("box"))
    regions = e.get("boxes") if isinstance(e.get("boxes"), list) else []  # run --boxes all: every region's
    boxes = [b for b in (_box(r.get("box")) for r in regions if isinstance(r, dict)) if b] or ([box] if box else [])
    out = {
        "method": method,
        "class": cls,
        "label": _text(target.get("label")),
        "box": box,
        "boxes": boxes,
        "flat": e.get("flat") is True,
        "gradients": _text(e.get("gradients")),
        "picture": picture,
        "map": None,
    }
    if npy:
        try:
            out["map"] = embedded_map(os.path.join(folder, npy))
        except ValueError as exc:
            problems.append(f"{npy}: {exc}")
    return out


def _box(value) -> list | None:
    """[x0, y0, x1, y1] as integers, or None for anything else."""
    if isinstance(value, list) and len(value) == 4 and all(_int(v) is not None for v in value):
        return [int(v) for v in value]
    return None


def embedded_map(path: str) -> str:
    """A saved map (.npy, 2-D, in [0, 1]) as a MAP_SIDE x MAP_SIDE gray PNG, base64: the page colours it."""
    if os.path.getsize(path) > MAX_NPY_BYTES:
        raise ValueError(f"larger than {MAX_NPY_BYTES >> 20} MB: not a map")
    try:
        heat = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"not a readable .npy map ({str(exc)[:80]})") from None
    if heat.ndim != 2 or heat.dtype.kind != "f" or not heat.size or not np.isfinite(heat).all():
        raise ValueError(f"not a finite 2-D float map (shape {list(heat.shape)}, {heat.dtype})")
    small = cv2.resize(np.float32(heat), (MAP_SIDE, MAP_SIDE), interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", np.uint8(np.clip(small, 0, 1) * 255 + 0.5), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    assert ok, "OpenCV encodes any small uint8 array as PNG"
    return base64.b64encode(png.tobytes()).decode("ascii")


def _class_name(p) -> str:
    return f"{p['class']} {p['label']}"


def _list(value, what, problems) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"'{what}' is not a list")
        return []
    return value


def _text(value):
    return value if isinstance(value, str) else None


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _add_eval(found, data, error, files):
    summary = data.get("summary") if isinstance(data, dict) else None
    if error or not isinstance(summary, dict):
        found.notices.append(f"eval.json: {error or 'no summary: not written by onnxcam eval'} (table left out)")
        return
    rows = {
        m: {k: v for k, v in s.items() if _number(v) is not None or v is None}
        for m, s in summary.items()
        if isinstance(m, str) and isinstance(s, dict)
    }
    found.evaluation = {
        "summary": rows,
        "data": data,
        "curves": "eval.curves.png" if "eval.curves.png" in files else None,
    }


def _attach_eval_rows(found):
    """eval's per-image values on the card of the same image (by path as given, else by file name)."""
    images = found.evaluation["data"].get("images")
    by_path, by_name = {}, {}
    for method, rows in images.items() if isinstance(images, dict) else ():
        for row in rows if isinstance(rows, list) else ():
            if isinstance(row, dict) and isinstance(row.get("image"), str):
                values = {k: v for k, v in row.items() if _number(v) is not None and k not in ("target",)}
                by_path.setdefault(os.path.normpath(row["image"]), {})[method] = values
                by_name.setdefault(os.path.basename(row["image"]), {})[method] = values
    for item in found.items:
        if item["image"]:
            item["eval"] = by_path.get(os.path.normpath(item["image"])) or by_name.get(os.path.basename(item["image"]))


def _add_sanity(found, name, data, error, files):
    methods = data.get("methods") if isinstance(data, dict) else None
    if error or not isinstance(methods, dict):
        found.notices.append(f"{name}: {error or 'no methods: not written by onnxcam sanity'} (left out)")
        return
    stem = name[: -len(".sanity.json")]
    rows = {}
    for method, r in methods.items():
        if isinstance(r, dict) and isinstance(r.get("spearman"), list):
            rows[str(method)] = {
                "spearman": [_number(c) for c in r["spearman"]],
                "verdict": _text(r.get("verdict")) or "",
                "passed": r.get("passed") is True,
            }
    found.sanity.append(
        {
            "name": name,
            "image": _text(data.get("image")) or stem,
            "label": _text(data.get("label")),
            "class": _int(data.get("class")),
            "methods": rows,
            "steps": [
                len(s["nodes"]) if isinstance(s, dict) and isinstance(s.get("nodes"), list) else None
                for s in data.get("steps") or []
            ]
            if isinstance(data.get("steps"), list)
            else [],
            "pictures": [p for p in (f"{stem}.sanity.png", f"{stem}.sanity.maps.png") if p in files],
        }
    )


# -- the page ---------------------------------------------------------------------------------------------------


def page(found: Folder) -> str:
    """The whole report as one HTML string."""
    title = f"onnxcam report: {os.path.basename(os.path.abspath(found.path))}"
    # The maps (most of the page's bytes) sit in a block of their own that the page parses on the first detail
    # view, not before its first paint; an explanation holds its map's index there.
    maps, items = [], []
    for item in found.items:
        explanations = []
        for e in item["explanations"]:
            if e["map"] is not None:
                maps.append(e["map"])
                e = {**e, "map": len(maps) - 1}
            explanations.append(e)
        items.append({**item, "explanations": explanations})
    models = sorted({i["model"] for i in found.items if i["model"]})
    summary = f"{len(found.items)} image{'s' * (len(found.items) != 1)}"
    if models:
        summary += " · model " + ", ".join(models)
    with open(os.path.join(ASSETS, "report.css"), encoding="utf-8") as f:
        css = f.read()
    with open(os.path.join(ASSETS, "report.js"), encoding="utf-8") as f:
        js = f.read()
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        '<meta name="color-scheme" content="light dark">\n',
        # the page may show pictures of its folder and run its own inline code; nothing else, nothing fetched
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' data: file:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n",
        f"<title>{_h(title)}</title>\n<style>\n{css}</style>\n</head>\n<body>\n",
        f'<header><h1>{_h(title)}</h1><p class="meta">{_h(summary)}</p>{_toc(found)}</header>\n<main>\n',
        _notices(found),
        _gallery(found),
        _eval_section(found.evaluation),
        _sanity_section(found.sanity),
        "</main>\n",
        DETAIL,
        f'<script type="application/json" id="data">{script_json({"items": items})}</script>\n',
        f'<script type="application/json" id="maps">{script_json(maps)}</script>\n',
        f"<script>\n{js}</script>\n</body>\n</html>\n",
    ]
    return "".join(parts)


def script_json(data) -> str:
    """JSON that can sit inside <script>: no '<', '>' or '&' (so no '</script>' or '<!--'), ASCII only, and
    no lone surrogate (a file name's byte that is not UTF-8) for the browser to choke on: U+FFFD instead."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    if "\\ud" in text:
        text = json.dumps(_well_formed(data), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


SURROGATE = re.compile("[\ud800-\udfff]")  # in a Python str, any of these stands alone


def _well_formed(data):
    if isinstance(data, str):
        return SURROGATE.sub("\ufffd", data)
    if isinstance(data, dict):
        return {_well_formed(k): _well_formed(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_well_formed(v) for v in data]
    return data


def _h(text) -> str:
    return html.escape(str(text), quote=True)


def url(name: str) -> str:
    """A file of the folder as a relative URL: its name's bytes percent-encoded ('#', '?', '%' and spaces are
    file name characters; so are bytes that are not UTF-8, which os.listdir hands over as surrogates)."""
    return urllib.parse.quote(os.fsencode(name))


def _src(name: str) -> str:
    return _h(url(name))


def _toc(found) -> str:
    links = [("gallery", "Images")] if found.items else []
    links += [("evaluation", "Evaluation")] if found.evaluation else []
    links += [("sanity", "Sanity")] if found.sanity else []
    links += [("notices", "Notices")] if found.notices else []
    if len(links) < 2:
        return ""
    return (
        '<nav aria-label="Sections"><ul class="toc">'
        + "".join(f'<li><a href="#{i}">{t}</a></li>' for i, t in links)
        + "</ul></nav>"
    )


def _notices(found) -> str:
    if not found.notices:
        return ""
    return (
        '<section id="notices" aria-labelledby="notices-h"><h2 id="notices-h">Notices</h2><ul>'
        + "".join(f"<li>{_h(n)}</li>" for n in found.notices)
        + "</ul></section>\n"
    )


def _gallery(found) -> str:
    if not found.items:
        return ""
    return GALLERY


GALLERY = """<section id="gallery" aria-labelledby="gallery-h">
<h2 id="gallery-h">Images</h2>
<form id="controls" role="search" aria-label="Filter and sort the images">
<label>File name <input id="q" type="search" placeholder="search (press /)" autocomplete="off"></label>
<label>Class <select id="cls"><option value="">all classes</option></select></label>
<label>Method <select id="method"><option value="">all methods</option></select></label>
<fieldset><legend>Confidence (%)</legend>
<label>from <input id="cmin" type="number" min="0" max="100" step="1" value="0"></label>
<label>to <input id="cmax" type="number" min="0" max="100" step="1" value="100"></label></fieldset>
<label>Show <select id="show"><option value="all">all</option><option value="ok">without problems</option>
<option value="flat">flat maps</option><option value="failed">problems (failed)</option></select></label>
<label>Sort by <select id="sort"><option value="name">file name</option><option value="confidence">confidence</option>
<option value="class">class</option><option value="method">method</option><option value="time">time per image</option>
<option value="problems">problems first</option></select></label>
<button id="dir" type="button" aria-pressed="false" title="reverse the order">ascending</button>
<label>Per page <select id="size"><option>24</option><option selected>60</option><option>120</option>
<option>240</option></select></label>
</form>
<p id="count" role="status" aria-live="polite"></p>
<ul id="cards" aria-label="Images (arrow keys move, Enter opens)"></ul>
<nav id="pager" aria-label="Pages"><button id="prev" type="button">&larr; previous</button>
<span id="pageinfo"></span><button id="next" type="button">next &rarr;</button></nav>
<noscript><p>The image gallery needs JavaScript.</p></noscript>
</section>
"""

DETAIL = """<dialog id="detail" aria-labelledby="detail-title">
<div class="bar"><h2 id="detail-title"></h2>
<span class="nav"><button id="d-prev" type="button" aria-label="previous image">&larr;</button>
<span id="d-pos"></span>
<button id="d-next" type="button" aria-label="next image">&rarr;</button>
<button id="d-close" type="button" aria-label="close">&times;</button></span></div>
<div id="detail-body"></div>
</dialog>
"""

EVAL_HEADINGS = {  # eval.json summary keys the table shows first, with their headings; others follow as named
    "images": "images",
    "images_with_boxes": "with boxes",
    "localization": "loc. acc %",
    "pointing_game": "pointing %",
    "energy_in_box": "energy %",
    "average_drop": "avg drop %",
    "increase_in_confidence": "incr conf %",
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
    "flat_maps": "flat maps",
    "seconds_per_image": "s / image",
}


def _eval_section(evaluation) -> str:
    if not evaluation:
        return ""
    summary = evaluation["summary"]
    keys = [k for k in EVAL_HEADINGS if any(k in s for s in summary.values())]
    keys += list(dict.fromkeys(k for s in summary.values() for k in s if k not in EVAL_HEADINGS))
    head = "".join(f'<th scope="col" class="n">{_h(EVAL_HEADINGS.get(k, k))}</th>' for k in keys)
    body = "".join(
        f'<tr><th scope="row">{_h(m)}</th>' + "".join(f'<td class="n">{_cell(s.get(k))}</td>' for k in keys) + "</tr>"
        for m, s in summary.items()
    )
    data = evaluation["data"]
    meta = " · ".join(_h(f"{k} {data[k]}") for k in ("model", "provider", "preprocess") if _text(data.get(k)))
    curves = (
        f'<figure><img src="{_src(evaluation["curves"])}" alt="Mean deletion and insertion curves of each '
        f'method" loading="lazy"><figcaption>Deletion (lower is better) and insertion (higher is better) '
        f"curves, averaged over the images</figcaption></figure>"
        if evaluation["curves"]
        else '<p class="problem">eval.curves.png is missing</p>'
    )
    return (
        f'<section id="evaluation" aria-labelledby="eval-h"><h2 id="eval-h">Evaluation</h2>'
        f'<p class="meta">{meta}</p><div class="scroll"><table><thead><tr><th scope="col">method</th>'
        f"{head}</tr></thead><tbody>{body}</tbody></table></div>{curves}</section>\n"
    )


def _cell(value) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float) and not value.is_integer():
        return _h(f"{value:.4g}")
    return _h(f"{value:g}" if isinstance(value, float) else value)


def _sanity_section(runs) -> str:
    if not runs:
        return ""
    out = ['<section id="sanity" aria-labelledby="sanity-h"><h2 id="sanity-h">Sanity: model randomization</h2>']
    for r in runs:
        methods = list(r["methods"])
        steps = max([len(m["spearman"]) for m in r["methods"].values()] + [0])
        target = f" · class {r['class']} {r['label'] or ''}" if r["class"] is not None else ""
        out.append(
            f"<article><h3>{_h(r['image'])}{_h(target)}</h3><ul>"
            + "".join(
                f'<li class="{"pass" if m["passed"] else "problem"}">'
                f"{_h(m['verdict'] or n + (': passes' if m['passed'] else ': fails'))}</li>"
                for n, m in r["methods"].items()
            )
            + "</ul>"
        )
        head = "".join(f'<th scope="col" class="n">{_h(m)}</th>' for m in methods)
        rows = []
        for k in range(steps):
            nodes = r["steps"][k - 1] if 0 < k <= len(r["steps"]) else None
            what = "trained model" if k == 0 else f"+ {nodes} layer{'s' * (nodes != 1)}" if nodes is not None else ""
            cells = "".join(f'<td class="n">{_corr(r["methods"][m]["spearman"], k)}</td>' for m in methods)
            rows.append(f'<tr><th scope="row" class="n">{k}</th><td>{_h(what)}</td>{cells}</tr>')
        out.append(
            f'<div class="scroll"><table><caption>Spearman rank correlation with the trained model\'s map, '
            f're-initializing from the logits down</caption><thead><tr><th scope="col">step</th>'
            f'<th scope="col">re-initialized</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            "</div>"
        )
        out += [
            f'<figure><img src="{_src(p)}" alt="{_h(p)}: '
            f'{"correlation curves" if p.endswith(".sanity.png") else "maps at each step"}" loading="lazy">'
            f"</figure>"
            for p in r["pictures"]
        ]
        out.append("</article>")
    out.append("</section>\n")
    return "".join(out)


def _corr(values, k) -> str:
    value = values[k] if k < len(values) else None
    return "flat" if value is None else f"{value:.3f}"


# -- notebooks --------------------------------------------------------------------------------------------------


def explanation_html(res, images=None, labels=None, head=None, resize="stretch") -> str:
    """An Explanation as HTML for Jupyter: per map, the map (over `images`, RGB uint8 arrays one per image, when
    given, fit back as `resize` fit them: Explainer.resize) and what it explains: a classifier's class and top-5
    predictions (named by `labels`, with the probabilities of the `head` kind, Explainer.head; by default softmax,
    or binary for one logit), a detector's detections (their boxes drawn, with label and score). Pictures are
    embedded."""
    from onnxcam import heads, render
    from onnxcam.preprocess import fit

    def name(c):
        return f"{c} {labels[c]}" if labels is not None and 0 <= c < len(labels) else f"class {c}"

    detect = res.detections is not None
    scores = res.scores.reshape(len(res.scores), -1)
    probs = None if detect else heads.probabilities(scores, head or ("binary" if scores.shape[1] == 1 else "softmax"))
    cells = []
    for i in range(min(len(res.maps), NOTEBOOK_IMAGES)):
        heat = res.maps[i]
        found = res.detections[i] if detect else []
        if images is not None:
            rgb = images[int(res.images[i]) if detect else i]
            geometry = fit(resize, heat.shape, rgb.shape[:2])
            picture = render.overlay(rgb, geometry.map_to_image(heat))
            boxes = [geometry.box_to_image(d.box) for d in found]
        else:
            picture = render.overlay(np.zeros((*heat.shape, 3), np.uint8), heat, alpha=1.0)
            boxes = [[int(round(v)) for v in d.box] for d in found]
        for d, box in zip(found, boxes):
            render.labelled_box(picture, box, f"{name(d.cls)} {d.score:.2f}")
        scale = 224 / max(picture.shape[:2])
        if scale < 1:
            picture = cv2.resize(
                picture,
                (round(picture.shape[1] * scale), round(picture.shape[0] * scale)),
                interpolation=cv2.INTER_AREA,
            )
        uri = "data:image/png;base64," + base64.b64encode(picture_bytes(picture)).decode("ascii")
        target = int(res.targets[i])
        flat = res.flat is not None and bool(res.flat[i])
        if detect:
            rows = "".join(
                f'<tr><td style="text-align:right">{d.score:.2f}</td><td>{_h(name(d.cls))}</td></tr>' for d in found
            )
        else:
            rows = "".join(
                f'<tr><td style="text-align:right">{probs[i, c]:.1%}</td><td>{_h(name(int(c)))}</td></tr>'
                for c in np.argsort(-probs[i])[:5]
            )
        what = "overlay" if images is not None else "map"
        cells.append(
            f'<figure style="display:inline-block;vertical-align:top;margin:4px 12px 4px 0">'
            f'<img src="{uri}" alt="{_h(res.method)} {what} for {_h(name(target))}">'
            f"<figcaption>{_h(res.method)}: {_h(name(target))}{' (flat map)' if flat else ''}"
            f'<table style="font-size:90%">{rows}</table></figcaption></figure>'
        )
    more = len(res.maps) - NOTEBOOK_IMAGES
    layers = ", ".join(res.layers)
    return (
        f'<div class="onnxcam">{"".join(cells)}'
        f'<p style="font-size:90%">layer {_h(layers)}'
        + (f" · gradients {_h(res.gradients)}" if res.gradients else "")
        + (f" · {more} more {'maps' if detect else 'images'} not shown" if more > 0 else "")
        + "</p></div>"
    )
