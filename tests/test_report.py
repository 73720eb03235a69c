"""report.html built from output folders: real runs, synthetic records, and hostile or broken folders.
The page's behaviour in a browser is tested in test_report_browser.py."""

import base64
import html.parser
import json
import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CHELSEA, COFFEE, DEMO, YOLO
from onnxcam.cli import main
from onnxcam.errors import OnnxcamError
from onnxcam.report import MAP_SIDE, REPORT_NAME, explanation_html, write_report

CLASSES = [(285, "Egyptian cat"), (207, "golden retriever"), (967, "espresso"), (7, 'a "cock" </script><!-- <b> & co')]
METHODS = ["gradcam", "layercam"]
# names a file system allows that HTML, JSON-in-script and URLs must escape
HOSTILE_NAMES = ["quo\"te's <b>&amp; é<script>.png", "100% #1?.png", "日本語 ü.png"]
UNDECODABLE = os.fsdecode(b"bad \xff.png")  # not UTF-8: os.listdir hands it over with a surrogate
SHOWN_UNDECODABLE = "bad \ufffd.png"  # how the page names it


def write_records(folder, count, *, npy_every=0, side=(48, 64)):
    """`count` records shaped like `run --json`'s, each with a small overlay picture; returns what each should
    show: name, method, class label, confidence (distinct), flat, picture."""
    os.makedirs(folder, exist_ok=True)
    expected = []
    y, x = np.mgrid[0 : side[0], 0 : side[1]]
    for k in range(count):
        stem = f"img{k:05d}"
        method = METHODS[k % len(METHODS)]
        cls, label = CLASSES[k % len(CLASSES)]
        confidence = 0.05 + 0.9 * ((k * 7919) % count) / count  # 7919 is prime: distinct for any count < 7919
        flat = k % 7 == 3
        rgb = np.stack([(x * 4 + k) % 256, (y * 5) % 256, np.full_like(x, (k * 37) % 256)], axis=-1).astype(np.uint8)
        picture = f"{stem}.{method}.png"
        cv2.imwrite(os.path.join(folder, picture), rgb[..., ::-1])
        outputs = [os.path.join(folder, picture)]
        if npy_every and k % npy_every == 0:
            np.save(os.path.join(folder, f"{stem}.{method}.npy"), np.float32(x * y / x.max() / y.max()))
            outputs.append(os.path.join(folder, f"{stem}.{method}.npy"))
        json_name = f"{stem}.{method}.json"
        record = run_record(
            f"images/{stem}.png",
            cls,
            label,
            confidence,
            method,
            flat,
            outputs + [os.path.join(folder, json_name)],
            seconds=0.01 + k * 1e-5,
        )
        with open(os.path.join(folder, json_name), "w") as f:
            json.dump(record, f)
        expected.append(
            {
                "name": f"{stem}.png",
                "method": method,
                "label": label,
                "class": cls,
                "confidence": confidence,
                "flat": flat,
                "picture": picture,
            }
        )
    return expected


def run_record(image, cls, label, confidence, method, flat, outputs, seconds=0.02):
    rest = (1 - confidence) / 4
    return {
        "image": image,
        "model": "models/demo.onnx",
        "layers": ["/head/Relu_output_0"],
        "provider": "CPUExecutionProvider",
        "preprocess": "imagenet",
        "score": "logit",
        "predictions": [{"class": cls, "label": label, "probability": confidence, "logit": 3.0}]
        + [{"class": 900 + r, "label": f"other {r}", "probability": rest, "logit": 1.0} for r in range(4)],
        "explanations": [
            {
                "method": method,
                "target": {"class": cls, "label": label},
                "gradients": "analytic",
                "box": None if flat else [4, 2, 40, 30],
                "flat": flat,
            }
        ],
        "units": None,
        "timings_s": {"setup": 0.5, "image": seconds},
        "outputs": outputs,
    }


def add_hostile(folder):
    """Names to escape, a corrupt record, a record whose picture is gone, a foreign JSON and one with bad fields;
    returns {name: what is wrong or None}."""
    expected = {}
    for k, name in enumerate(HOSTILE_NAMES + [UNDECODABLE]):
        stem = os.path.splitext(name)[0]
        with open(os.path.join(folder, f"{stem}.gradcam.png"), "wb") as f:
            f.write(cv2.imencode(".png", np.full((30, 40, 3), 60 * k, np.uint8))[1].tobytes())
        record = run_record(
            name,
            *CLASSES[3],
            0.5,
            "gradcam",
            False,
            [os.path.join(folder, f"{stem}.gradcam.png"), os.path.join(folder, f"{stem}.gradcam.json")],
        )
        with open(os.path.join(folder, f"{stem}.gradcam.json"), "w", encoding="utf-8") as f:
            json.dump(record, f)  # as run writes it: \u escapes, a surrogate for the byte that is not UTF-8
        expected[name] = None
    with open(os.path.join(folder, "broken.gradcam.json"), "w") as f:
        f.write('{"image": "broken.png", "predictions": [{"cla')
    expected["broken.gradcam.json"] = "not valid JSON"
    gone = run_record("gone.png", 285, "Egyptian cat", 0.7, "gradcam", False, ["out/gone.gradcam.png"])
    with open(os.path.join(folder, "gone.gradcam.json"), "w") as f:
        json.dump(gone, f)
    expected["gone.png"] = "missing file: gone.gradcam.png"
    with open(os.path.join(folder, "odd.gradcam.json"), "w") as f:
        json.dump({"image": 12, "predictions": "many", "explanations": [7]}, f)
    expected["odd.gradcam.json"] = "'predictions' is not a list"
    with open(os.path.join(folder, "package.json"), "w") as f:
        json.dump({"name": "not-onnxcam", "version": "1.0.0"}, f)
    return expected


class _Scripts(html.parser.HTMLParser):
    """The page's <script> elements: (attributes, text)."""

    def __init__(self):
        super().__init__()
        self.scripts, self._open = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._open = (dict(attrs), [])

    def handle_data(self, data):
        if self._open:
            self._open[1].append(data)

    def handle_endtag(self, tag):
        if tag == "script" and self._open:
            self.scripts.append((self._open[0], "".join(self._open[1])))
            self._open = None


def page_data(folder):
    """The records embedded in FOLDER/report.html, read back the way a browser's parser splits the page."""
    with open(os.path.join(folder, REPORT_NAME), encoding="utf-8") as f:
        text = f.read()
    parser = _Scripts()
    parser.feed(text)
    blocks = {attrs.get("id"): body for attrs, body in parser.scripts}
    assert len(parser.scripts) == 3 and {"data", "maps"} <= set(blocks), "the data, maps, code: no script broke out"
    assert blocks["data"].isascii() and blocks["maps"].isascii()
    data, maps = json.loads(blocks["data"]), json.loads(blocks["maps"])
    for item in data["items"]:  # each map back in its place, as bytes
        for e in item["explanations"]:
            e["map"] = (
                None
                if e["map"] is None
                else cv2.imdecode(np.frombuffer(base64.b64decode(maps[e["map"]]), np.uint8), cv2.IMREAD_UNCHANGED)
            )
    return text, data


def test_report_of_a_real_run(tmp_path):
    out = str(tmp_path / "out")
    result = CliRunner().invoke(main, ["run", DEMO, CHELSEA, COFFEE, "--json", "--npy", "--out", out])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["report", out])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote     {os.path.join(out, REPORT_NAME)} (2 images)"
    _, data = page_data(out)
    assert [i["name"] for i in data["items"]] == ["chelsea.png", "coffee.png"]
    for item in data["items"]:
        stem = item["name"][:-4]
        with open(os.path.join(out, f"{stem}.gradcam.json")) as f:
            record = json.load(f)
        assert item["problems"] == []
        assert item["picture"] == f"{stem}.gradcam.png" and os.path.isfile(os.path.join(out, item["picture"]))
        assert [p["class"] for p in item["predictions"]] == [p["class"] for p in record["predictions"]]
        assert item["confidence"] == record["predictions"][0]["probability"]
        explained = item["explanations"][0]
        assert explained["box"] == record["explanations"][0]["box"] and explained["method"] == "gradcam"
        embedded = explained["map"]
        assert embedded.shape == (MAP_SIDE, MAP_SIDE) and embedded.dtype == np.uint8
        heat = np.load(os.path.join(out, f"{stem}.gradcam.npy"))
        # the embedded map is the saved one, smaller: its peak sits where the saved map's does
        peak = np.unravel_index(np.argmax(embedded), embedded.shape)
        assert heat[tuple(int((p + 0.5) * s / MAP_SIDE) for p, s in zip(peak, heat.shape, strict=True))] > 0.9


def test_run_eval_and_sanity_write_the_report(tmp_path):
    """--report: the same page over each command's output folder; run's implies --json."""
    out = str(tmp_path)
    result = CliRunner().invoke(main, ["run", DEMO, CHELSEA, COFFEE, "--out", out, "--report"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"wrote     {os.path.join(out, REPORT_NAME)} (2 images)")
    assert os.path.isfile(os.path.join(out, "chelsea.gradcam.json"))
    result = CliRunner().invoke(main, ["eval", DEMO, CHELSEA, "--steps", "4", "--out", out, "--report"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"{REPORT_NAME} (2 images, eval)")
    result = CliRunner().invoke(main, ["sanity", DEMO, CHELSEA, "--steps", "2", "--out", out, "--report"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"{REPORT_NAME} (2 images, eval, 1 sanity check)")
    text, data = page_data(out)
    assert 'id="evaluation"' in text and 'id="sanity"' in text and 'src="chelsea.sanity.png"' in text
    assert next(i for i in data["items"] if i["name"] == "chelsea.png")["eval"]["gradcam"]["y"] > 0


def test_report_of_a_method_grid(tmp_path):
    out = str(tmp_path)
    result = CliRunner().invoke(
        main, ["run", DEMO, CHELSEA, "--methods", "gradcam,layercam", "--npy", "--json", "--out", out]
    )
    assert result.exit_code == 0, result.output
    write_report(out)
    (item,) = page_data(out)[1]["items"]
    assert item["picture"] == "chelsea.grid.png" and item["methods"] == ["gradcam", "layercam"]
    assert [e["picture"] for e in item["explanations"]] == [None, None]  # one picture holds both
    assert all(e["map"].shape == (MAP_SIDE, MAP_SIDE) for e in item["explanations"])
    assert item["urls"] == {"chelsea.grid.png": "chelsea.grid.png"} and item["problems"] == []


def test_embedded_map_is_the_saved_map_averaged(tmp_path):
    """A map twice MAP_SIDE on each side comes out as its 2 x 2 block means (independent of OpenCV)."""
    folder = str(tmp_path)
    write_records(folder, 1, npy_every=1)
    rng = np.random.default_rng(1)
    heat = np.float32(rng.uniform(0, 1, (2 * MAP_SIDE, 2 * MAP_SIDE)))
    np.save(os.path.join(folder, "img00000.gradcam.npy"), heat)
    write_report(folder)
    _, data = page_data(folder)
    embedded = data["items"][0]["explanations"][0]["map"]
    blocks = heat.reshape(MAP_SIDE, 2, MAP_SIDE, 2).mean(axis=(1, 3))
    assert np.abs(embedded / 255.0 - blocks).max() <= 0.6 / 255


def test_hostile_names_are_escaped_and_round_trip(tmp_path):
    folder = str(tmp_path)
    write_records(folder, 3)
    expected = add_hostile(folder)
    written = write_report(folder)
    assert (written.images, written.problems, written.notices) == (3 + len(expected), 3, 1)
    text, data = page_data(folder)
    by_name = {i["name"]: i for i in data["items"]}
    for name in HOSTILE_NAMES + [SHOWN_UNDECODABLE]:
        assert by_name[name]["problems"] == [] and by_name[name]["top"] == f"7 {CLASSES[3][1]}"
        assert by_name[name]["picture"] == f"{os.path.splitext(name)[0]}.gradcam.png"
    assert by_name["100% #1?.png"]["urls"] == {"100% #1?.gradcam.png": "100%25%20%231%3F.gradcam.png"}
    assert by_name[SHOWN_UNDECODABLE]["urls"] == {"bad \ufffd.gradcam.png": "bad%20%FF.gradcam.png"}
    assert "<b>" not in text and "<!--" not in text and "&amp;amp;" not in text


def test_broken_records_show_as_problems(tmp_path):
    folder = str(tmp_path)
    write_records(folder, 2, npy_every=1)
    expected = add_hostile(folder)
    with open(os.path.join(folder, "img00000.gradcam.npy"), "wb") as f:
        f.write(b"\x93NUMPY garbage")
    np.save(os.path.join(folder, "img00001.layercam.npy"), np.array([{"a": 1}], dtype=object))
    write_report(folder)
    text, data = page_data(folder)
    by_name = {i["name"]: i for i in data["items"]}
    for name, why in expected.items():
        if why:
            assert any(why in p for p in by_name[name]["problems"]), (name, by_name[name]["problems"])
    assert "not a readable .npy map" in by_name["img00000.png"]["problems"][0]
    assert "not a readable .npy map" in by_name["img00001.png"]["problems"][0]  # pickles are never loaded
    assert by_name["img00000.png"]["picture"] == "img00000.gradcam.png"  # the rest of the record still shows
    assert "package.json: not a record of onnxcam run, eval or sanity (ignored)" in text


def test_eval_and_sanity_sections(tmp_path):
    folder = str(tmp_path)
    write_records(folder, 2)
    summary = {
        "images": 2,
        "images_with_boxes": 0,
        "localization": None,
        "average_drop": 25.96,
        "deletion_auc": 0.2809,
        "insertion_auc": 0.612,
        "flat_maps": 0,
        "seconds_per_image": 0.0516,
        "deletion_curve": [0.8, 0.1],
        "insertion_curve": [0.0, 0.8],
    }
    rows = [
        {
            "image": "images/img00000.png",
            "target": 285,
            "label": "Egyptian cat",
            "y": 0.78,
            "o": 0.48,
            "deletion_auc": 0.4168,
            "insertion_auc": 0.6256,
            "flat": False,
        }
    ]
    with open(os.path.join(folder, "eval.json"), "w") as f:
        json.dump({"model": "m<1>.onnx", "summary": {"grad<cam>": summary}, "images": {"gradcam": rows}}, f)
    with open(os.path.join(folder, "x<y>.sanity.json"), "w") as f:
        json.dump(
            {
                "image": "x<y>.png",
                "class": 285,
                "label": "Egyptian cat",
                "steps": [{"nodes": ["a"]}],
                "methods": {"gradcam": {"spearman": [1.0, 0.25], "passed": True, "verdict": "gradcam: PASS"}},
            },
            f,
        )
    cv2.imwrite(os.path.join(folder, "x<y>.sanity.png"), np.zeros((8, 8, 3), np.uint8))
    written = write_report(folder)
    assert written.evaluation and written.sanity == 1
    text, data = page_data(folder)
    assert (
        '<th scope="row">grad&lt;cam&gt;</th><td class="n">2</td><td class="n">0</td>'
        '<td class="n">&ndash;</td><td class="n">25.96</td>'
    ) in text
    assert "eval.curves.png is missing" in text and "model m&lt;1&gt;.onnx" in text
    assert '<td class="n">0.250</td>' in text and 'src="x%3Cy%3E.sanity.png"' in text and "x.sanity.maps" not in text
    item = next(i for i in data["items"] if i["name"] == "img00000.png")
    assert item["eval"] == {"gradcam": {"y": 0.78, "o": 0.48, "deletion_auc": 0.4168, "insertion_auc": 0.6256}}


def test_foreign_eval_json_is_a_notice(tmp_path):
    folder = str(tmp_path)
    write_records(folder, 1)
    with open(os.path.join(folder, "eval.json"), "w") as f:
        json.dump([1, 2, 3], f)
    written = write_report(folder)
    assert not written.evaluation and written.notices == 1
    assert "eval.json: no summary: not written by onnxcam eval (table left out)" in page_data(folder)[0]


def test_nothing_to_report(tmp_path):
    with open(tmp_path / "package.json", "w") as f:
        f.write("{}")
    with pytest.raises(OnnxcamError, match="nothing to report in .*1 other JSON files"):
        write_report(str(tmp_path))
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not os.path.exists(tmp_path / REPORT_NAME)


def test_report_replaces_the_old_one_atomically(tmp_path):
    folder = str(tmp_path)
    write_records(folder, 2)
    with open(tmp_path / REPORT_NAME, "w") as f:
        f.write("old")
    write_report(folder)
    assert page_data(folder)[1]["items"][1]["name"] == "img00001.png"
    assert sorted(os.listdir(folder)) == sorted(n for n in os.listdir(folder) if not n.startswith("."))


def test_explanation_html(demo_explainer):
    res = demo_explainer.explain([CHELSEA, COFFEE])
    labels = demo_explainer.info.labels
    page = explanation_html(res, images=[cv2.imread(path)[..., ::-1] for path in (CHELSEA, COFFEE)], labels=labels)
    probs = np.exp(res.scores - res.scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for i in range(2):
        for c in np.argsort(-probs[i])[:5]:
            assert f'<td style="text-align:right">{probs[i, c]:.1%}</td><td>{c} {labels[c]}</td>' in page
    uris = [s.split('"')[0] for s in page.split('src="data:image/png;base64,')[1:]]
    assert len(uris) == 2
    first = cv2.imdecode(np.frombuffer(base64.b64decode(uris[0]), np.uint8), cv2.IMREAD_COLOR)
    assert first.shape == (149, 224, 3)  # chelsea (451 x 300) scaled to 224 wide
    assert "gradcam overlay for" in page and f"layer {res.layers[0]}" in page
    bare = explanation_html(res)
    assert f"gradcam map for class {res.targets[0]}" in bare
    assert res._repr_html_() == bare


def test_explanation_html_of_a_binary_head():
    """One logit z: class 1 at sigmoid(z), class 0 at 1 - sigmoid(z)."""
    from onnxcam.explainer import Explanation

    res = Explanation(
        maps=np.zeros((1, 8, 8), np.float32),
        raw=None,
        targets=np.array([1]),
        scores=np.array([[np.log(3.0)]]),
        method="gradcam",
        layers=["a<b"],
    )
    page = explanation_html(res, labels=["cat", "dog"])
    first = page.index('<td style="text-align:right">75.0%</td><td>1 dog</td>')
    assert first < page.index('<td style="text-align:right">25.0%</td><td>0 cat</td>') and "layer a&lt;b" in page


def test_explanation_html_of_a_large_batch():
    """A notebook cell shows the first NOTEBOOK_IMAGES images and says how many it left out."""
    from onnxcam.explainer import Explanation
    from onnxcam.report import NOTEBOOK_IMAGES

    n = NOTEBOOK_IMAGES + 4
    res = Explanation(
        maps=np.zeros((n, 8, 8), np.float32),
        raw=None,
        targets=np.zeros(n, np.int64),
        scores=np.zeros((n, 3)),
        method="cam",
        layers=["x"],
        flat=np.ones(n, bool),
    )
    page = res._repr_html_()
    assert page.count("<img ") == NOTEBOOK_IMAGES and "· 4 more images not shown" in page
    assert page.count("cam: class 0 (flat map)") == NOTEBOOK_IMAGES


def test_explanation_html_of_a_detector_on_a_letterboxed_picture():
    """A detector's maps: one figure a map, over its own image, captioned by its detections (label and score, no
    class probabilities); the box is drawn where the letterbox puts it back on the picture."""
    from onnxcam import Explainer
    from onnxcam.preprocess import fit

    ex = Explainer(YOLO, device="cpu")
    coffee = cv2.imread(COFFEE)[..., ::-1]
    pictures = [cv2.resize(coffee, (200, 120)), cv2.resize(coffee, (120, 200))]  # 5:3 and 3:5, under 224
    res = ex.explain(pictures, max_det=2)
    assert ex.resize == "letterbox" and set(res.images) == {0, 1}
    page = explanation_html(res, images=pictures, labels=ex.info.labels, resize=ex.resize)
    uris = [s.split('"')[0] for s in page.split('src="data:image/png;base64,')[1:]]
    assert len(uris) == len(res.maps) and "%</td>" not in page  # scores, not class probabilities
    for k, uri in enumerate(uris):
        (d,) = res.detections[k]
        assert f'<td style="text-align:right">{d.score:.2f}</td><td>{d.cls} {ex.info.labels[d.cls]}</td>' in page
        picture = cv2.imdecode(np.frombuffer(base64.b64decode(uri), np.uint8), cv2.IMREAD_COLOR)
        h, w = pictures[res.images[k]].shape[:2]
        assert picture.shape == (h, w, 3)  # not scaled: the pixels are the picture's
        x1, y1, x2, y2 = fit("letterbox", ex.info.size, (h, w)).box_to_image(d.box)
        assert tuple(picture[(y1 + y2) // 2, x1]) == (0, 255, 0)  # the box's left edge, mid-height
