"""report.html in a real browser: Debian's headless chromium driven by selenium through the system's
chromedriver (never a downloaded browser). Skipped, with the reason, where either is missing; .ci/run
installs them when it runs as root."""

import os
import pathlib
import shutil
import time

import cv2
import numpy as np
import pytest

from onnxcam.report import write_report
from test_report import CLASSES, HOSTILE_NAMES, SHOWN_UNDECODABLE, UNDECODABLE, add_hostile, write_records

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WINDOW = (1280, 900)
RECORDS = 150


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + (
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # a driver path: no Selenium Manager
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """RECORDS synthetic run records (every fifth with its map) plus hostile names and broken records."""
    path = str(tmp_path_factory.mktemp("report"))
    records = write_records(path, RECORDS, npy_every=5)
    broken = add_hostile(path)
    write_report(path)
    return path, records, broken


def open_report(driver, path):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    driver.get(pathlib.Path(path, "report.html").as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.documentElement.dataset.ready"))


def choose(driver, select_id, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def matching(driver) -> int:
    return int(driver.find_element("id", "count").get_attribute("data-matches"))


def names_shown(driver) -> list:
    return driver.execute_script("return [...document.querySelectorAll('#cards .card')].map(c => c.dataset.name)")


def type_into(driver, element_id, text):
    box = driver.find_element("id", element_id)
    box.clear()
    box.send_keys(text)
    driver.execute_script(f"document.getElementById('{element_id}').dispatchEvent(new Event('change'))")


def test_opens_with_every_record_and_escaped_names(browser, folder):
    path, records, broken = folder
    open_report(browser, path)
    total = RECORDS + len(broken)
    assert matching(browser) == total
    assert len(names_shown(browser)) == 60
    assert browser.find_element("id", "pageinfo").text == f"page 1 of {-(-total // 60)}"
    assert browser.title == f"onnxcam report: {os.path.basename(path)}"
    for name in HOSTILE_NAMES:
        browser.execute_script(
            "const q = document.getElementById('q'); q.value = arguments[0];q.dispatchEvent(new Event('input'))", name
        )
        (card,) = browser.find_elements("css selector", "#cards .card")
        assert card.get_attribute("data-name") == name
        assert card.find_element("class name", "name").text == name  # shown as text, not markup
        assert card.find_element("class name", "pred").text == f"{CLASSES[3][1]} · 50.0%"
    type_into(browser, "q", "bad ")
    (card,) = browser.find_elements("css selector", "#cards .card")
    assert card.get_attribute("data-name") == SHOWN_UNDECODABLE
    size = browser.execute_script(
        "const i = arguments[0].querySelector('img'); i.loading = 'eager';"
        "return i.decode().then(() => [i.naturalWidth, i.naturalHeight])",
        card,
    )
    assert size == [40, 30]  # the picture whose name is not UTF-8 loads too
    options = [o.text for o in browser.find_elements("css selector", "#cls option")]
    assert f"7 {CLASSES[3][1]} ({RECORDS // 4 + len(HOSTILE_NAMES) + 1})" in options
    errors = [
        e
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]
    assert errors == []


def test_filters(browser, folder):
    path, records, broken = folder
    open_report(browser, path)
    choose(browser, "method", "layercam")
    layercam = [r for r in records if r["method"] == "layercam"]
    assert matching(browser) == len(layercam)
    assert all("layercam" in c.text for c in browser.find_elements("css selector", "#cards .methods"))
    choose(browser, "show", "flat")
    assert matching(browser) == sum(r["flat"] for r in layercam)
    assert len(browser.find_elements("css selector", "#cards .badge.flat")) == sum(r["flat"] for r in layercam)
    choose(browser, "method", "")
    choose(browser, "show", "failed")
    assert sorted(names_shown(browser)) == sorted(n for n, why in broken.items() if why)
    gone = browser.find_element("css selector", ".card[data-name='gone.png']")
    assert gone.find_element("class name", "placeholder").text == "picture missing: gone.gradcam.png"
    choose(browser, "show", "all")
    choose(browser, "cls", "207 golden retriever")
    assert matching(browser) == sum(r["class"] == 207 for r in records)
    choose(browser, "cls", "")
    type_into(browser, "cmin", "50")
    type_into(browser, "cmax", "80")
    in_range = [r for r in records if 0.5 - 1e-9 <= r["confidence"] <= 0.8 + 1e-9]
    assert matching(browser) == len(in_range) + len(HOSTILE_NAMES) + 2  # the hostile ones at 50%, gone.png at 70%
    type_into(browser, "cmin", "0")
    type_into(browser, "cmax", "100")
    type_into(browser, "q", "IMG0001")
    assert names_shown(browser) == [f"img{k:05d}.png" for k in range(10, 20)]


def test_sort_by_confidence(browser, folder):
    path, records, broken = folder
    open_report(browser, path)
    choose(browser, "sort", "confidence")
    browser.find_element("id", "dir").click()
    assert browser.find_element("id", "dir").get_attribute("aria-pressed") == "true"
    rated = [(r["confidence"], r["name"]) for r in records] + [(0.5, n) for n in HOSTILE_NAMES + [SHOWN_UNDECODABLE]]
    rated += [(0.7, "gone.png")]
    expected = [name for _, name in sorted(rated, key=lambda t: (-t[0], t[1].lower()))]
    expected += sorted(n for n, why in broken.items() if why and n != "gone.png")  # no confidence: last
    assert names_shown(browser) == expected[:60]
    browser.find_element("id", "next").click()
    assert names_shown(browser) == expected[60:120]


def test_detail_view(browser, folder):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    path, records, _ = folder
    open_report(browser, path)
    type_into(browser, "q", "img0000")
    browser.find_elements("css selector", "#cards .card")[0].click()
    dialog = browser.find_element("id", "detail")
    wait = WebDriverWait(browser, 10)  # a loaded machine may paint a step later: wait for each state, then check
    wait.until(lambda d: dialog.get_attribute("open") is not None)
    assert browser.find_element("id", "detail-title").text == "img00000.png"
    main = browser.find_element("css selector", "#detail-body img.full")
    assert main.get_attribute("data-file") == records[0]["picture"]
    size = browser.execute_script(
        "const i = arguments[0]; return i.decode().then(() => [i.naturalWidth, i.naturalHeight])", main
    )
    assert size == [64, 48]  # the synthetic picture itself, loaded from the folder
    rows = browser.find_elements("css selector", "#detail-body table")[0].find_elements("css selector", "tbody tr")
    assert [r.text.split()[0] for r in rows] == [str(records[0]["class"]), "900", "901", "902", "903"]
    # the map alone: the synthetic map grows with x * y: JET blue at the top left, red at the bottom right
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script(
            "return document.querySelector('#detail-body canvas.map').dataset.drawn === 'map and box'"
        )
    )
    corners = browser.execute_script(
        "const c = document.querySelector('#detail-body canvas.map'); const g = c.getContext('2d');"
        "return [[...g.getImageData(2, 2, 1, 1).data], [...g.getImageData(c.width - 3, c.height - 3, 1, 1).data],"
        " c.width / c.height, c.getAttribute('aria-label')]"
    )
    (top_left, bottom_right, aspect, label) = corners
    assert top_left[2] > 100 and top_left[0] < 50 and bottom_right[0] > 100 and bottom_right[2] < 50
    assert abs(aspect - 64 / 48) < 0.02 and label.startswith("gradcam map alone of img00000.png")
    dialog.send_keys(Keys.ARROW_RIGHT)
    wait.until(lambda d: d.find_element("id", "detail-title").text == "img00001.png")
    assert "shown when the run saved it (--npy)" in browser.find_element("id", "detail-body").text
    dialog.send_keys(Keys.ESCAPE)
    wait.until(lambda d: dialog.get_attribute("open") is None)
    assert browser.switch_to.active_element.get_attribute("data-name") == "img00001.png"


def test_keyboard(browser, folder):
    from selenium.webdriver.common.keys import Keys

    path, records, broken = folder
    open_report(browser, path)
    cards = browser.find_elements("css selector", "#cards .card")
    columns = sum(c.location["y"] == cards[0].location["y"] for c in cards)
    assert columns > 1
    browser.find_element("tag name", "body").send_keys("/")
    assert browser.switch_to.active_element.get_attribute("id") == "q"
    cards[0].send_keys(Keys.ARROW_RIGHT)
    assert browser.switch_to.active_element.get_attribute("data-pos") == "1"
    browser.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    assert browser.switch_to.active_element.get_attribute("data-pos") == str(1 + columns)
    browser.switch_to.active_element.send_keys(Keys.END)
    assert browser.switch_to.active_element.get_attribute("data-pos") == "59"
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)  # on to the next page
    assert browser.switch_to.active_element.get_attribute("data-pos") == "60"
    assert browser.find_element("id", "pageinfo").text.startswith("page 2 of")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    in_order = sorted(
        [r["name"] for r in records] + [n.replace(UNDECODABLE, SHOWN_UNDECODABLE) for n in broken], key=str.lower
    )
    assert browser.find_element("id", "detail-title").text == in_order[60]
    assert browser.find_element("id", "detail").get_attribute("open") is not None


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshot_structure(browser, folder, scheme):
    """The page as drawn: the scheme's background, a grid of cards of equal size with their pictures in them."""
    path, _, _ = folder
    open_report(browser, path)
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]}
    )
    type_into(browser, "q", "img")  # the synthetic overlays (gradients), not the hostile names' plain pictures
    browser.execute_script("document.getElementById('cards').scrollIntoView()")
    browser.execute_script(
        "return Promise.all([...document.querySelectorAll('#cards img')].filter(i => "
        "i.getBoundingClientRect().bottom < innerHeight).map(i => i.decode()))"
    )
    shot = cv2.imdecode(np.frombuffer(browser.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)
    cards = browser.execute_script(  # [card rect, picture rect] of each card in view, in CSS pixels
        "return [...document.querySelectorAll('#cards .card')].map(c => [c, c.querySelector('.thumb')]"
        ".map(e => e.getBoundingClientRect())).filter(([c]) => c.bottom < innerHeight)"
        ".map(rs => rs.map(r => [r.left, r.top, r.right, r.bottom].map(v => Math.round(v * devicePixelRatio))))"
    )
    assert len(cards) >= 8
    gray = cv2.cvtColor(shot, cv2.COLOR_BGR2GRAY).astype(float)
    y = (cards[0][0][1] + cards[0][0][3]) // 2
    background = np.median(gray[y - 20 : y + 20, 2 : cards[0][0][0] - 2])  # the page's left margin beside the cards
    assert background > 200 if scheme == "light" else background < 60
    widths = [c[2] - c[0] for c, _ in cards]
    assert max(widths) - min(widths) <= 1 and len({c[1] for c, _ in cards}) >= 2  # a grid of equal cards
    for (card, thumb), (after, _) in zip(cards[:-1], cards[1:], strict=True):
        assert card[0] < thumb[0] < thumb[2] < card[2] and card[1] < thumb[1] < thumb[3] < card[3]
        picture = gray[thumb[1] + 4 : thumb[3] - 4, thumb[0] + 4 : thumb[2] - 4]
        assert picture.std() > 20  # a picture is drawn there (the synthetic overlays are gradients)
        if after[1] == card[1]:  # the gap to the next card in the row is the page itself
            gap = gray[card[1] : card[3], (card[2] + after[0]) // 2]
            assert abs(np.median(gap) - background) < 4
        inside = gray[(thumb[3] + card[3]) // 2, card[0] + 3 : thumb[0] - 1]  # the card's own background
        assert abs(np.median(inside) - background) >= 6


def test_thousands_of_images_load_fast(browser, tmp_path):
    """A report over 2,000 records: printed timings (not asserted tightly: the machine is shared)."""
    path = str(tmp_path)
    write_records(path, 2000, npy_every=1)  # every image with its map: the largest page
    t0 = time.perf_counter()
    write_report(path)
    written = time.perf_counter() - t0
    open_report(browser, path)
    timing = browser.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return [n.domInteractive, n.domContentLoadedEventEnd, n.loadEventEnd,"
        " performance.getEntriesByName('onnxcam-interactive')[0].startTime]"
    )
    assert matching(browser) == 2000 and len(names_shown(browser)) == 60
    refilter = browser.execute_script(
        "const t = performance.now(); const s = document.getElementById('sort'); s.value = 'confidence';"
        "s.dispatchEvent(new Event('change')); return performance.now() - t"
    )
    size = os.path.getsize(os.path.join(path, "report.html")) / 1e6
    print(
        f"\nreport over 2000 images: report.html {size:.1f} MB written in {written:.2f} s; in chromium: "
        f"DOM parsed {timing[0]:.0f} ms, interactive (first page drawn, handlers on) {timing[3]:.0f} ms, "
        f"DOMContentLoaded {timing[1]:.0f} ms, load event {timing[2]:.0f} ms; re-sorting all 2000 "
        f"{refilter:.0f} ms"
    )
    assert timing[3] < 10_000 and timing[2] < 20_000
