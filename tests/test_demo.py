"""The web demo: driven through its API with gradio_client, and in a real headless browser."""

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from diffuseg.demo import DemoState, launch  # noqa: E402
from diffuseg.demo.app import EXAMPLE_IMAGE, METHOD_DEFAULT, DemoError  # noqa: E402
from diffuseg.io import coco_rle_to_mask, load_image, read_label_png  # noqa: E402
from diffuseg.types import Encoding  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "out" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo on a free port of 127.0.0.1, with small upload limits; encodes are counted."""
    from tiny_clip import make_tiny_clip

    state = DemoState(max_pixels=1_000_000, max_bytes=2_000_000,
                      workdir=tmp_path_factory.mktemp("demo-work"),
                      clip=str(make_tiny_clip(tmp_path_factory.mktemp("clip"))))
    encoded = []
    real_encode = state._encode

    def counting_encode(image, backbone):
        encoded.append((image.shape, backbone))
        return real_encode(image, backbone)

    state._encode = counting_encode
    demo = launch(port=free_port(), prevent_thread_lock=True, state=state)
    assert demo.local_url.startswith("http://127.0.0.1:")
    yield demo, state, encoded
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0].local_url, verbose=False)


def segment(client, path, method="ncut", tau=0.1, backbone=METHOD_DEFAULT, folder="", k=6,
            refine=False, classes=""):
    return client.predict(handle_file(str(path)), backbone, folder, method, tau, 10.0, k, 16,
                          refine, classes, api_name="/segment")


def read_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_segment_round_trip_then_resegment_from_cache(client, server):
    _, state, encoded = server
    before = len(encoded)
    overlay, label_map, segments, levels, files, status = segment(client, EXAMPLE_IMAGE, tau=0.1)
    image = load_image(EXAMPLE_IMAGE)
    assert image.shape == (480, 640, 3)
    assert read_rgb(overlay).shape == (480, 640, 3)
    assert read_rgb(label_map).shape == (480, 640, 3)
    names = [Path(f).name for f in files]
    assert names == ["example.labels.png", "example.masks.json", "example.encoding.safetensors"]
    labels = read_label_png(files[0])
    assert labels.shape == image.shape[:2]
    k = len(np.unique(labels))
    assert k >= 3 and f"**{k} segments**" in status
    # the masks JSON (COCO RLE) gives the label map back exactly
    doc = json.loads(Path(files[1]).read_text())
    rebuilt = np.zeros_like(labels)
    for ann in doc["annotations"]:
        rebuilt[coco_rle_to_mask(ann)] = ann["label"]
    np.testing.assert_array_equal(rebuilt, labels)
    assert doc["config"]["method"] == "ncut" and doc["config"]["tau"] == 0.1
    # the Encoding download loads back and holds the image
    enc = Encoding.load(files[2])
    np.testing.assert_array_equal(enc.image, image)
    # one gallery picture per segment, one hierarchy picture per level from depth 0
    assert len(segments) == k
    assert levels[0]["caption"] == "depth 0: 1 segments"
    assert levels[-1]["caption"] == f"depth {len(levels) - 1}: {k} segments"
    assert len(encoded) == before + 1

    # a different tau: re-segmented from the cached Encoding, the image is not encoded again
    overlay2, _, _, _, files2, status2 = segment(client, EXAMPLE_IMAGE, tau=0.3)
    labels2 = read_label_png(files2[0])
    assert labels2.shape == labels.shape
    assert len(np.unique(labels2)) > k  # a higher threshold accepts more splits
    assert "from cache" in status2
    assert len(encoded) == before + 1  # still one encode
    assert not np.array_equal(read_rgb(overlay2), read_rgb(overlay))


def test_class_names_name_and_merge_the_segments(client, server):
    _, state, encoded = server
    _, _, _, _, plain_files, _ = segment(client, EXAMPLE_IMAGE, tau=0.2)
    classes = ["tote", "box", "bottle"]
    overlay, _, segments, levels, files, status = segment(client, EXAMPLE_IMAGE, tau=0.2,
                                                          classes=", ".join(classes))
    labels = read_label_png(files[0])
    doc = json.loads(Path(files[1]).read_text())
    names = [ann["name"] for ann in doc["annotations"]]
    assert set(names) <= set(classes) and len(names) == len(set(names))  # merged by class
    plain_labels = read_label_png(plain_files[0])
    assert len(np.unique(labels)) == len(names) <= len(np.unique(plain_labels))
    # every merged segment is a union of whole segments of the unnamed run
    for k in np.unique(plain_labels):
        assert len(np.unique(labels[plain_labels == k])) == 1
    assert doc["config"]["classes"] == classes
    assert all(item["caption"].split(":")[0] in classes for item in segments)
    assert ", ".join(sorted(set(names))) in status
    with pytest.raises(Exception, match="each class name once"):
        segment(client, EXAMPLE_IMAGE, tau=0.2, classes="cat, cat")


def test_bad_uploads_give_a_clear_message_and_the_server_keeps_answering(client, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(AppError, match="Cannot use 'notes.png' as an image: not an image"):
        segment(client, text)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(AppError, match="empty"):
        segment(client, empty)
    big = tmp_path / "big.png"  # 1.2 megapixels > max_pixels = 1,000,000; a tiny file
    Image.new("RGB", (1200, 1000), (10, 20, 30)).save(big)
    assert big.stat().st_size < 100_000
    with pytest.raises(AppError, match=r"too large: 1200x1000 = 1,200,000 pixels"):
        segment(client, big)
    heavy = tmp_path / "noise.png"  # 0.9 megapixels (allowed) but ~2.7 MB > max_bytes = 2 MB
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (900, 1000, 3), dtype=np.uint8)).save(heavy)
    with pytest.raises(AppError, match=r"'noise.png' is too large: 2\.\d MB.*2\.0 MB"):
        segment(client, heavy)
    # the server still answers
    small = tmp_path / "small.png"
    Image.open(EXAMPLE_IMAGE).convert("RGB").resize((96, 72)).save(small)
    *_, files, status = segment(client, small)
    assert read_label_png(files[0]).shape == (72, 96) and "segments" in status


def test_missing_weights_is_a_clear_message(client, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(AppError, match=r"weights.*local model folder"):
        segment(client, EXAMPLE_IMAGE, method="diffcut")
    with pytest.raises(AppError, match="not-a-model"):
        segment(client, EXAMPLE_IMAGE, method="diffseg", folder=str(tmp_path / "not-a-model"))
    *_, status = segment(client, EXAMPLE_IMAGE, method="ncut", tau=0.1)
    assert "segments" in status


def test_a_local_model_folder_encodes_once_for_every_method(client, server, tmp_path_factory):
    from tiny_models import make_tiny_pipeline

    _, _, encoded = server
    folder = make_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd1", family="sd1")
    photo = tmp_path_factory.mktemp("img") / "photo.png"
    Image.open(EXAMPLE_IMAGE).convert("RGB").resize((160, 120)).save(photo)
    before = len(encoded)
    *_, files, status = segment(client, photo, method="kmeans", folder=str(folder), k=4)
    labels = read_label_png(files[0])
    assert labels.shape == (120, 160) and len(np.unique(labels)) == 4
    assert "encoded in" in status and str(folder) in status
    *_, files, status = segment(client, photo, method="kmeans", folder=str(folder), k=7)
    assert len(np.unique(read_label_png(files[0]))) == 7
    *_, files, status = segment(client, photo, method="diffcut", folder=str(folder), tau=0.5)
    assert read_label_png(files[0]).shape == (120, 160) and "from cache" in status
    assert len(encoded) == before + 1  # features + attention captured once, shared by methods
    enc = Encoding.load(files[2])
    assert enc.features is not None and enc.attention


def test_state_settings_and_limits(tmp_path):
    state = DemoState(max_bytes=10, workdir=tmp_path)
    assert state.overrides("kmeans", {"k": 5.0, "tau": 0.3, "refine": True}) == {"k": 5}
    assert state.overrides("ncut", {"tau": 0.25, "alpha": 3, "refine": True}) == {
        "tau": 0.25, "refine": True}
    assert state.overrides("diffseg", {"anchor_grid": 8.0, "refine": True}) == {
        "anchor_grid": 8, "refine_kmeans": True}
    assert state.backbone_for("ncut", "sd15", "/x") is None
    assert state.backbone_for("diffcut", METHOD_DEFAULT, "") == "ssd-1b"
    assert state.backbone_for("diffseg", "sd15", " ") == "sd15"
    assert state.backbone_for("diffseg", "sd15", "/models/m ") == "/models/m"
    assert state.defaults("diffcut", "sd15")["tau"] == 0.2  # the SD 1.x default, not 0.5
    with pytest.raises(ValueError, match="too large"):
        state.load_upload(EXAMPLE_IMAGE)
    with pytest.raises(ValueError, match="Upload an image first"):
        state.load_upload(None)
    with pytest.raises(ValueError):
        DemoState(cache_size=0, workdir=tmp_path)


def test_settings_are_checked_on_the_server(tmp_path):
    """Whatever the sliders allow, a request carrying NaN or out-of-range values is refused with
    the setting's name and range, before any encoding."""
    state = DemoState(workdir=tmp_path)
    for settings, match in (({"tau": float("nan")}, "tau must be a finite number"),
                            ({"tau": -1.0}, "tau must be > 0"),
                            ({"k": 0.0}, "k must be >= 1")):
        method = "kmeans" if "k" in settings else "ncut"
        with pytest.raises(DemoError, match=match):
            state.run(EXAMPLE_IMAGE, method, None, settings)


def test_encoding_cache_is_bounded(tmp_path):
    state = DemoState(cache_size=2, workdir=tmp_path)
    images = [np.full((16, 16, 3), v, np.uint8) for v in (0, 1, 2)]
    for image in images:
        state.encoding(image, None)
    assert state.encode_calls == 3
    state.encoding(images[2], None)
    assert state.encode_calls == 3  # cached
    state.encoding(images[0], None)
    assert state.encode_calls == 4  # the oldest was dropped


@pytest.mark.browser
def test_headless_browser_uploads_and_sees_the_overlay(server):
    """Debian's Chromium (no browser download) loads the page, uploads the example image; the
    overlay appears at the image's size. The screenshot is kept under out/test-artifacts/."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing under CI: make test installs it (apt-get)")
        pytest.skip("chromium is not installed (make test installs it: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    demo, _, _ = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "demo-overlay.png"
    blank = ARTIFACTS / "demo-before.png"
    profile = tempfile.mkdtemp(prefix="diffuseg-chromium-")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"]
    try:
        with sync_api.sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=args,
                viewport={"width": 1280, "height": 1000},
            )
            try:
                page = context.new_page()
                page.goto(demo.local_url, wait_until="load", timeout=60_000)
                page.locator("#segment").wait_for(state="visible", timeout=60_000)
                page.screenshot(path=str(blank))
                page.locator("#upload input[type=file]").set_input_files(str(EXAMPLE_IMAGE))
                page.wait_for_function(
                    "() => { const i = document.querySelector('#overlay img');"
                    " return i && i.complete && i.naturalWidth > 0; }",
                    timeout=90_000,
                )
                size = page.evaluate(
                    "() => { const i = document.querySelector('#overlay img');"
                    " return [i.naturalWidth, i.naturalHeight]; }"
                )
                status = page.locator("#status").inner_text()
                deadline = time.monotonic() + 30
                while "segments" not in status and time.monotonic() < deadline:
                    time.sleep(0.2)
                    status = page.locator("#status").inner_text()
                page.screenshot(path=str(shot), full_page=True)
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert size == [640, 480]  # the overlay image is the full-size segmentation
    assert "segments" in status and "ncut" in status
    after, before = read_rgb(shot), read_rgb(blank)
    assert after.shape[1] == 1280 and after.shape[0] >= 1000
    # the overlay region holds many colours (a photo with segment colours), the page before not
    assert len(np.unique(after.reshape(-1, 3), axis=0)) > 2000
    assert len(np.unique(after.reshape(-1, 3), axis=0)) > 4 * len(
        np.unique(before.reshape(-1, 3), axis=0))


def test_demo_command_serves_on_localhost(tmp_path):
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from diffuseg.cli import main; main()", "demo", "--port",
         str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline, page = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    page = r.read().decode("utf-8", "replace")
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, proc.stderr.read() if proc.poll() is not None else "timeout"
        assert "<title>diffuseg</title>" in page or "diffuseg" in page
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # it said where it listens, the port it actually took included
    assert f"diffuseg demo on http://127.0.0.1:{port}" in proc.stderr.read()


def test_demo_share_is_a_flag():
    from typer.testing import CliRunner

    from diffuseg.cli import app

    result = CliRunner().invoke(app, ["demo", "--share", "maybe"])  # a flag takes no value
    assert result.exit_code == 2 and "unexpected extra argument" in result.output
