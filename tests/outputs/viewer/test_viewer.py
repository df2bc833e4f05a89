"""The HTML viewer (salip.outputs.viewer): validation, the embedded data's round trip, the size of
a 512x512x200 CT, and a real browser (Debian's chromium through Playwright) with every
network request blocked and recorded."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest

from salip.core.errors import OutputError
from salip.io import read_input, to_canonical
from salip.io.slicing import display_slice
from salip.outputs.viewer import (
    CT_RANGE,
    MAX_BYTES,
    ViewerData,
    decode_viewer,
    display_stack,
    viewer_html,
)
from tests.conftest import REPO, TOTALSEG, require_data

#: Saturated colours, far from any grey, so overlay pixels can be counted on the canvas.
COLOURS = {"liver": (255, 0, 255), "spleen": (0, 255, 0), "kidney_left": (0, 160, 255)}
#: Their values in TotalSegmentator's label map (labels_total.json).
TOTALSEG_VALUES = {"liver": 5, "spleen": 1, "kidney_left": 3}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _tiny(**changes) -> ViewerData:
    """A valid 2x4x5 viewer input; ``changes`` replace fields."""
    labels = np.zeros((2, 4, 5), np.uint8)
    labels[0, 1:3, 1:4] = 1
    data = ViewerData(
        image=np.arange(40, dtype=np.float32).reshape(2, 4, 5),
        labels=labels,
        organs=(("liver", 1, (255, 0, 255)),),
        slice_numbers=(7, 6),
        pixel_spacing=(1.0, 1.0),
        modality="ct",
        boxes={0: [{"organ": "liver", "bbox": [1, 1, 2, 1], "probability": 0.9}]},
        profiles={"liver": [{"side": None, "profile": [[0, 0.2], [1, 0.3]], "seeds": [0]}]},
        title="tiny",
    )
    return dataclasses.replace(data, **changes)


def _real_ct() -> tuple[ViewerData, dict[str, int]]:
    """example_ct_sm as display slices with three reference organs, a box on each of two
    organs of the slice where both are largest, and a profile; and that slice's facts."""
    volume = read_input(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    reference = np.asarray(nib.load(require_data(TOTALSEG / "example_seg.nii.gz")).dataobj)
    source = display_stack(to_canonical(reference, volume.geometry), False, "axial")
    labels = np.zeros(source.shape, np.uint8)
    for value, name in enumerate(COLOURS, start=1):
        labels[source == TOTALSEG_VALUES[name]] = value
    areas = np.stack([(labels == v).sum(axis=(1, 2)) for v in (1, 2)])
    k = int(np.argmax(areas.min(axis=0)))
    boxes = []
    for value, (name, others) in enumerate(
        [("liver", {"spleen": 0.05, "stomach": 0.04}), ("spleen", {})], start=1
    ):
        ys, xs = np.nonzero(labels[k] == value)
        bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs)), int(np.ptp(ys))]
        boxes.append(
            {"organ": name, "bbox": bbox, "probability": 0.91 if value == 1 else 0.8,
             "margin": 0.42, "clip_score": 0.291, "side": None, "competitors": others}
        )  # fmt: skip
    n = len(labels)
    profile = {
        "side": None,
        "profile": [[s, 0.5 + 0.4 * np.sin(s / 5)] for s in range(0, n, 3)],
        "extent": [3, n - 3],
        "seeds": [k],
        "stops": [
            {"seed": k, "direction": 1, "stopped_at": n - 3, "reason": "area changed 2.4x"},
            {"seed": k, "direction": -1, "stopped_at": 3, "reason": "no overlap"},
        ],
    }
    data = ViewerData(
        image=display_stack(volume.data, False, "axial"),
        labels=labels,
        organs=tuple((name, v, COLOURS[name]) for v, name in enumerate(COLOURS, start=1)),
        slice_numbers=tuple(range(n)),
        pixel_spacing=(3.0, 3.0),
        modality="ct",
        boxes={k: boxes},
        profiles={"liver": [profile]},
        title="example_ct_sm.nii.gz: liver, spleen, kidney_left",
        orientation=("A", "P", "R", "L"),
    )
    return data, {"slice": k}


@pytest.fixture(scope="module")
def real_ct() -> tuple[ViewerData, dict[str, int]]:
    return _real_ct()


# --- validation ---------------------------------------------------------------------------

BAD = [
    ({"image": np.zeros((4, 5), np.float32)}, "NxHxW"),
    ({"image": np.full((2, 4, 5), np.nan, np.float32)}, "NaN"),
    ({"labels": np.zeros((2, 4, 6), np.uint8)}, "labels shape"),
    ({"labels": np.zeros((2, 4, 5), np.int64)}, "uint8"),
    ({"labels": np.full((2, 4, 5), 2, np.uint8)}, "value 2 but only 1 organs"),
    ({"organs": (("liver", 2, (255, 0, 255)),)}, "label order"),
    ({"organs": (("liver", 1, (300, 0, 0)),)}, "0-255"),
    ({"slice_numbers": (1,)}, "slice_numbers"),
    ({"pixel_spacing": (0.0, 1.0)}, "pixel_spacing"),
    ({"modality": "pet"}, "modality"),
    ({"boxes": {2: []}}, "boxes key"),
    ({"boxes": {0: [{"organ": "lung", "bbox": [0, 0, 1, 1]}]}}, "names organ 'lung'"),
    ({"boxes": {0: [{"organ": "liver", "bbox": [0, 0, -1, 1]}]}}, r"\[x, y, w, h\]"),
    ({"boxes": {0: [{"organ": "liver", "bbox": [0, 0, 1, 1], "margin": float("nan")}]}}, "margin"),
    ({"profiles": {"kidney": []}}, "profiles name organ 'kidney'"),
    ({"profiles": {"liver": [{"profile": [[5, 0.1]]}]}}, "display slice index from 0 to 1"),
    (
        {"profiles": {"liver": [{"profile": [], "stops": [{"seed": 0, "direction": 2}]}]}},
        "direction",
    ),
]


@pytest.mark.parametrize(("changes", "message"), BAD, ids=[m for _, m in BAD])
def test_malformed_data_is_refused_with_a_message(changes, message):
    assert viewer_html(_tiny())  # the unchanged input is valid
    with pytest.raises(OutputError, match=message) as caught:
        viewer_html(_tiny(**changes))
    assert "\n" not in str(caught.value)


# --- the embedded data --------------------------------------------------------------------


def test_ct_round_trip_is_exact_to_one_hu(real_ct):
    data, _ = real_ct
    html = viewer_html(data)
    image, labels, meta = decode_viewer(html)
    np.testing.assert_array_equal(image, np.clip(np.rint(data.image), *CT_RANGE))
    np.testing.assert_array_equal(labels, data.labels)
    assert meta["image"]["factor"] == 1 and meta["image"]["units"] == "HU"
    windows = {w["id"]: (w["width"], w["level"]) for w in meta["windows"]}
    assert windows["soft"] == (400, 40) and windows["liver"] == (150, 30)
    assert windows["lung"] == (1500, -600) and windows["bone"] == (1800, 400)
    low, high = np.clip([data.image.min(), data.image.max()], *CT_RANGE)
    assert windows["auto"] == pytest.approx((high - low, (high + low) / 2))
    assert meta["defaultWindow"] == "soft"
    labelled = (data.labels > 0).sum(axis=(1, 2))
    assert meta["start"] == int(np.argmax(labelled))
    liver = meta["organs"][0]
    assert liver["voxels"] == int((data.labels == 1).sum())
    assert liver["best"] == int(np.argmax((data.labels == 1).sum(axis=(1, 2))))
    assert len(html.encode()) < 2_000_000
    assert "default-src 'none'" in html  # the page may request nothing
    assert re.findall(r"\w+://[^\s'\"]*", html) == ["http://www.w3.org/2000/svg"]  # a namespace


def test_float_mr_round_trip_within_half_a_step_and_percentile_window():
    volume = read_input(require_data(TOTALSEG / "example_mr_sm.nii.gz"))
    image = display_stack(volume.data, False, "axial") * np.float32(0.731) + np.float32(0.1)
    n = len(image)
    data = ViewerData(
        image=image,
        labels=np.zeros(image.shape, np.uint8),
        organs=(),
        slice_numbers=tuple(range(n)),
        modality="mr",
    )
    decoded, labels, meta = decode_viewer(viewer_html(data))
    step = meta["image"]["step"]
    assert meta["image"]["factor"] == 1 and step == pytest.approx(np.ptp(image) / 65535)
    assert np.abs(decoded - image).max() <= step / 2 + 1e-4
    assert not labels.any() and meta["defaultWindow"] == "auto"
    auto = next(w for w in meta["windows"] if w["id"] == "auto")
    p1, p99 = np.percentile(image, [1, 99])
    assert auto["level"] - auto["width"] / 2 == pytest.approx(p1, abs=1.0)
    assert auto["level"] + auto["width"] / 2 == pytest.approx(p99, abs=1.0)


def test_a_small_budget_coarsens_the_step_and_a_tiny_one_is_refused(real_ct):
    data, _ = real_ct
    exact = len(viewer_html(data).encode())
    budget = int(exact * 0.6)
    html = viewer_html(data, max_bytes=budget)
    assert len(html.encode()) <= budget
    image, labels, meta = decode_viewer(html)
    step = meta["image"]["step"]
    assert meta["image"]["factor"] > 1 and step == meta["image"]["factor"]
    assert meta["image"]["offset"] % step == 0  # 0 HU stays on the grid
    assert np.abs(image - np.clip(data.image, *CT_RANGE)).max() <= step / 2 + 1e-3
    np.testing.assert_array_equal(labels, data.labels)
    with pytest.raises(OutputError, match="do not fit"):
        viewer_html(data, max_bytes=60_000)


def test_text_cannot_break_out_of_the_page():
    title = 'a</script><script>alert(1)</script> & "b" \u2028'
    organs = (("li</script>ver", 1, (255, 0, 255)),)
    html = viewer_html(_tiny(title=title, organs=organs, boxes={}, profiles={}))
    assert html.count("<script") == 4  # metadata, image, labels, code
    assert "<title>a&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html
    _, _, meta = decode_viewer(html)
    assert meta["title"] == title and meta["organs"][0]["name"] == "li</script>ver"


def test_display_stack_matches_the_display_slices():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(6, 7, 8)).astype(np.float32)
    for axis, count in (("axial", 8), ("coronal", 7), ("sagittal", 6)):
        stack = display_stack(volume, False, axis)
        assert stack.shape[0] == count
        for k in (0, count - 1):
            np.testing.assert_array_equal(stack[k], display_slice(volume, False, axis, k))
    rgb = rng.integers(0, 256, size=(5, 4, 3)).astype(np.uint8)
    grey = display_stack(rgb, True)
    assert grey.shape == (1, 5, 4)
    assert grey[0, 2, 1] == pytest.approx(rgb[2, 1] @ [0.299, 0.587, 0.114], rel=1e-5)
    grey_rgb = np.repeat(rgb[..., :1], 3, axis=2)
    np.testing.assert_array_equal(display_stack(grey_rgb, True), rgb[None, ..., 0])
    with pytest.raises(OutputError, match="unknown axis"):
        display_stack(volume, False, "oblique")


def test_a_512x512x200_ct_fits_in_25_mb():
    """The real 20-slice DICOM CT tiled 10 times with its real TotalSegmentator labels."""
    volume = read_input(require_data(TOTALSEG / "example_ct_dicom"))
    reference = nib.load(require_data(TOTALSEG / "example_seg_dicom.nii.gz"))
    source = display_stack(to_canonical(np.asarray(reference.dataobj), volume.geometry), False)
    names = json.loads(require_data(TOTALSEG / "labels_total.json").read_text())
    values = [int(v) for v in np.unique(source) if v]
    remap = np.zeros(256, np.uint8)
    remap[values] = np.arange(1, len(values) + 1)
    image = np.tile(display_stack(volume.data, False), (10, 1, 1))
    labels = np.tile(remap[source], (10, 1, 1))
    assert image.shape == (200, 512, 512) and len(values) > 10
    data = ViewerData(
        image=image,
        labels=labels,
        organs=tuple(
            (names[str(v)], i, (255, 37 * i % 256, 91 * i % 256)) for i, v in enumerate(values, 1)
        ),
        slice_numbers=tuple(range(200)),
        pixel_spacing=tuple(volume.spacing[:2]),
        modality="ct",
    )
    html = viewer_html(data)
    assert len(html.encode()) <= MAX_BYTES == 25_000_000
    decoded, decoded_labels, meta = decode_viewer(html)
    step = meta["image"]["step"]
    assert step <= 16  # coarser would be visible in a soft-tissue window
    for k in (0, 57, 199):
        assert np.abs(decoded[k] - np.clip(image[k], *CT_RANGE)).max() <= step / 2
    np.testing.assert_array_equal(decoded_labels, labels)


def test_the_template_is_installed_as_package_data():
    from salip.core.errors import ConfigError
    from salip.core.toml_files import read_toml

    project = read_toml(REPO / "pyproject.toml", "pyproject", ConfigError)
    data = project["tool"]["setuptools"].get("package-data", {})
    assert "viewer_template.html" in data.get("salip.outputs.viewer", []), (
        'add "salip.outputs.viewer" = ["viewer_template.html"] to [tool.setuptools.package-data]'
    )


# --- a real browser -----------------------------------------------------------------------

_CANVAS_JS = """() => {
  const c = document.getElementById('view');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = '';
  for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
  return [c.width, c.height, btoa(s)];
}"""


_NEW_GLOBALS_JS = """() => {
  const frame = document.createElement('iframe');
  document.body.append(frame);
  const blank = new Set(Object.keys(frame.contentWindow));
  frame.remove();
  return Object.keys(window).filter((k) => !blank.has(k));
}"""


def _canvas(page) -> np.ndarray:
    """The canvas's HxWx3 uint8 RGB pixels as rendered."""
    width, height, data = page.evaluate(_CANVAS_JS)
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 4)[..., :3]


def _near(pixels: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((np.abs(pixels.astype(int) - colour) <= 8).all(axis=-1).sum())


def _set_range(page, selector: str, value: int) -> None:
    page.eval_on_selector(
        selector, "(e, v) => { e.value = String(v); e.dispatchEvent(new Event('input')); }", value
    )


def _browser():
    """Playwright's sync API and Debian's chromium, or a skip saying which is missing."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium executable on PATH (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    return sync_playwright, chromium


@contextlib.contextmanager
def opened_viewer(path):
    """A chromium page with the viewer at ``path`` loaded and ready (or a skip)."""
    sync_playwright, chromium = _browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(path.as_uri())
            page.evaluate("window.salipViewer.ready")
            yield page
        finally:
            browser.close()


def test_the_viewer_in_a_real_browser_offline(tmp_path, real_ct):
    sync_playwright, chromium = _browser()
    data, facts = real_ct
    path = tmp_path / "viewer.html"
    path.write_text(viewer_html(data), encoding="utf-8")
    url = path.as_uri()
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            # A request the Content-Security-Policy refuses is logged as a console error.
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.route("**/*", lambda r: r.continue_() if r.request.url == url else r.abort())
            page.goto(url)
            assert page.evaluate("window.salipViewer.ready.then(r => r.slices)") == len(data.image)
            assert page.evaluate(_NEW_GLOBALS_JS) == ["salipViewer"]
            _check_slices_overlay_and_boxes(page, data, facts["slice"])
        finally:
            browser.close()
    assert errors == []
    assert [r for r in requests if r != url and not r.startswith("data:")] == []
    assert url in requests


def _check_slices_overlay_and_boxes(page, data: ViewerData, k: int) -> None:
    _set_range(page, "#opacity", 100)  # overlay pixels take the organ's exact colour
    _set_range(page, "#slice", k)
    assert page.evaluate("window.salipViewer.slice") == k
    # One numbering throughout (the input file's, as in the report), and the patient's
    # directions at the edges of the slice.
    assert page.text_content("#slice-label") == f"slice {k} (the input file's index; 30 slices)"
    edges = {e: page.text_content(f"#orient-{e}") for e in ("top", "bottom", "left", "right")}
    assert edges == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert "voxels · slices" in page.inner_text("#organs") and " px" not in page.inner_text(
        "#organs"
    )
    before = _canvas(page)
    liver, spleen = _near(before, COLOURS["liver"]), _near(before, COLOURS["spleen"])
    assert liver > 100 and spleen > 100
    # The wheel and the arrow keys move along the slices; the pixels follow.
    box = page.locator("#view").bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.wheel(0, 100)
    assert page.evaluate("window.salipViewer.slice") == k + 1
    assert not np.array_equal(_canvas(page), before)
    page.keyboard.press("ArrowDown")
    assert page.evaluate("window.salipViewer.slice") == k
    np.testing.assert_array_equal(_canvas(page), before)
    # Toggling the liver off removes its colour (overlay, box and label) and nothing else.
    page.click('input[data-organ="liver"]')
    after = _canvas(page)
    assert _near(after, COLOURS["liver"]) == 0 and _near(after, COLOURS["spleen"]) == spleen
    page.click('input[data-organ="liver"]')
    assert _near(_canvas(page), COLOURS["liver"]) == liver
    # Hovering the liver's box shows its competitors' probabilities.
    x, y, w, h = data.boxes[k][0]["bbox"]
    scale = box["width"] / data.image.shape[2]
    page.mouse.move(box["x"] + (x + (w + 1) / 2) * scale, box["y"] + (y + (h + 1) / 2) * scale)
    info = page.locator("#box-info")
    assert info.is_visible()
    rows = info.locator("tr").all_inner_texts()
    assert [re.sub(r"\s+", " ", r).strip() for r in rows] == [
        "class probability",
        "liver 0.910",
        "spleen 0.050",
        "stomach 0.040",
    ]
    assert "margin +0.420" in info.inner_text()
    # Clicking a point of the score profile jumps to its slice; the walks are listed.
    page.locator("#profiles circle").nth(2).click()
    assert page.evaluate("window.salipViewer.slice") == 6
    assert "stopped at slice 27 (area changed 2.4x)" in page.inner_text("#profiles")


def test_the_preview_names_its_organs_and_slices(tmp_path):
    """Below the tiles, a legend of each organ's colour and name; on each tile, the slice's
    index in the input file (as the report counts them)."""
    from PIL import Image

    import salip
    from salip.outputs.preview import COLOURS as PREVIEW_COLOURS

    def boxes(images, organs, indices):
        out = []
        for image in images:
            h, w = image.shape[:2]
            first, second = np.zeros((h, w), bool), np.zeros((h, w), bool)
            first[h // 4 : h // 2, w // 4 : w // 2] = True
            second[h // 2 : 3 * h // 4, w // 2 : 3 * w // 4] = True
            out.append({organs[0].name: first, organs[1].name: second})
        return out

    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    result = salip.segment(ct, organs="liver,spleen", output=tmp_path / "m.nii.gz",
                           preview=tmp_path / "p.png", segmenter=boxes)  # fmt: skip
    strip = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    tiles, legend = strip[:384], strip[384:]
    assert legend.shape[0] > 10  # the legend bar
    for value in (1, 2):  # each organ's swatch is in the legend, in its exact colour
        assert _near(legend, tuple(int(c) for c in PREVIEW_COLOURS[value - 1])) > 50
    caption = tiles[:16, :60]  # the caption's dark box, with light text on it
    assert (caption.max(axis=-1) <= 20).mean() > 0.5 and (caption.min(axis=-1) > 150).sum() > 10
    assert result.report["organs"]["liver"]["slices"]  # the slices the captions number


def test_the_viewer_marks_a_hinted_slice(tmp_path):
    """A box from a user's hint is labelled "(hint)" and its slice says it was hinted."""
    hinted = {"organ": "liver", "bbox": [1, 1, 2, 1], "probability": None, "hint": True}
    path = tmp_path / "viewer.html"
    path.write_text(viewer_html(_tiny(boxes={1: [hinted]})), encoding="utf-8")
    with opened_viewer(path) as page:
        _set_range(page, "#slice", 0)
        assert "hinted" not in page.text_content("#slice-label")
        _set_range(page, "#slice", 1)
        assert page.text_content("#slice-label").endswith(" · hinted: liver")
