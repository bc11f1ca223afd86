"""The diffuseg web demo: upload an image, pick a backbone and a method, move the sliders.

The image is encoded once (one UNet pass, or nothing at all for ``ncut``) and the Encoding is kept
in a small in-memory LRU cache keyed by the image's content hash, the backbone and the encode
size; every slider then re-segments from the cached Encoding without touching the model. The
page shows the overlay, the label map, one picture per segment and the hierarchy level by level,
and offers the label PNG, the COCO RLE masks JSON and the Encoding (.safetensors) for download.

Bad uploads (not an image, corrupt, too many pixels or bytes) and missing weights give one clear
message in the page (``gr.Error``) and never take the server down.

Run it with ``diffuseg demo`` or::

    from diffuseg.demo import launch
    launch()  # http://127.0.0.1:7860
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from diffuseg.io import ImageLoadError, load_image, write_label_png, write_masks_json
from diffuseg.methods import get_method, list_methods
from diffuseg.types import Encoding, Segmentation
from diffuseg.viz import colorize, hierarchy_levels, overlay, segment_cutouts

log = logging.getLogger(__name__)

#: The bundled example image (also offered by the page's "Use the example image" button).
EXAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "assets" / "example.jpg"

#: Backbone dropdown entry meaning "the method's own (paper) backbone".
METHOD_DEFAULT = "(method default)"

#: Sliders shown for the methods whose config dataclass has a field of that name:
#: name -> (label, minimum, maximum, step).
SLIDERS: dict[str, tuple[str, float, float, float]] = {
    "tau": ("tau: cut / merge threshold", 0.01, 1.0, 0.01),
    "alpha": ("alpha: affinity exponent", 1.0, 20.0, 0.5),
    "k": ("k: clusters (k-means) / walk steps (DWC)", 1, 30, 1),
    "anchor_grid": ("anchor grid (DiffSeg)", 4, 32, 1),
}
#: Per-method slider ranges that differ from :data:`SLIDERS` (DiffSeg's tau is a KL distance).
RANGE_OVERRIDES: dict[tuple[str, str], tuple[float, float]] = {("diffseg", "tau"): (0.1, 2.0)}
#: The refinement checkbox drives the first of these fields the method has.
REFINE_FIELDS = ("refine", "refine_kmeans")

GALLERY_SEGMENTS = 24
HIERARCHY_LEVELS = 8


class DemoError(ValueError):
    """A problem the person using the page can fix; the message is shown as is."""


@dataclass
class Result:
    """What one segmentation request produced (before it is turned into Gradio outputs)."""

    image: np.ndarray
    segmentation: Segmentation
    files: list[str]
    cached: bool
    encode_seconds: float
    segment_seconds: float
    backbone: str | None


def _field_types(method: str) -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(get_method(method).config_cls)}


def _cast(value: Any, type_name: str) -> Any:
    if value is None:
        return None
    if "bool" in type_name:
        return bool(value)
    if "int" in type_name and "float" not in type_name:
        return int(round(float(value)))
    if "float" in type_name:
        return float(value)
    return value


class DemoState:
    """The models, the Encoding cache and the output folder behind one app. Thread-safe.

    Args:
        max_pixels: largest accepted upload, width x height (checked from the file header).
        max_bytes: largest accepted upload file, in bytes.
        cache_size: Encodings kept in memory (least recently used dropped first).
        device, dtype: where the backbone runs (default: CUDA if available, else CPU fp32).
        size: long side the image is encoded at (default: the backbone preset's).
        workdir: folder for the downloadable files (default: a new temporary folder).
        keep_outputs: download folders of this many recent requests are kept.
        clip: the CLIP model that names segments when class names are given (folder, hub id or
            open_clip ``name:tag``; default DiffCut's), loaded on the first such request.

    Attributes:
        encode_calls: how many times an image was actually encoded (cache misses).
    """

    def __init__(
        self,
        max_pixels: int = 16_000_000,
        max_bytes: int = 25_000_000,
        cache_size: int = 4,
        device: str | None = None,
        dtype: str | None = None,
        size: int | None = None,
        workdir: str | os.PathLike | None = None,
        keep_outputs: int = 16,
        clip: str | os.PathLike | None = None,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.max_pixels = int(max_pixels)
        self.max_bytes = int(max_bytes)
        self.cache_size = int(cache_size)
        self.device = device
        self.dtype = dtype
        self.size = size
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="diffuseg-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_outputs = max(1, int(keep_outputs))
        self.encode_calls = 0
        self._cache: OrderedDict[tuple, Encoding] = OrderedDict()
        self._encoding_files: dict[tuple, Path] = {}
        self._backbones: dict[str, Any] = {}
        self.clip = str(clip) if clip is not None else None
        self._namer: Any = None
        self._requests = 0
        self._lock = threading.RLock()

    # -- inputs ----------------------------------------------------------------------------

    def load_upload(self, path: str | os.PathLike | None) -> np.ndarray:
        """The uploaded file as (H, W, 3) uint8, or DemoError with a message for the page."""
        if path is None or str(path) == "":
            raise DemoError("Upload an image first (or click 'Use the example image').")
        p = Path(path)
        try:
            nbytes = p.stat().st_size
        except OSError as exc:
            raise DemoError(f"Cannot read the upload {p.name!r}: {exc.strerror or exc}") from None
        if nbytes > self.max_bytes:
            raise DemoError(
                f"The upload {p.name!r} is too large: {nbytes / 1e6:.1f} MB; this demo accepts "
                f"files up to {self.max_bytes / 1e6:.1f} MB."
            )
        try:
            return load_image(p, max_pixels=self.max_pixels)
        except ImageLoadError as exc:
            reason = str(exc).split(f"{p}: ", 1)[-1]
            raise DemoError(f"Cannot use {p.name!r} as an image: {reason}") from None

    @staticmethod
    def backbone_for(method: str, choice: str | None = None, path: str | None = None) -> str | None:
        """The backbone a request uses: the folder typed in, else the dropdown's preset, else
        the method's default; None for methods that need none (``ncut``)."""
        spec = get_method(method)
        if not spec.needs_backbone:
            return None
        if path and path.strip():
            return str(Path(path.strip()).expanduser())
        if choice and choice != METHOD_DEFAULT:
            return choice
        return spec.default_backbone

    # -- the model and the cache -------------------------------------------------------------

    def _backbone(self, name: str):
        from diffuseg.backbones import load_backbone

        if name not in self._backbones:
            self._backbones.clear()  # one model in memory at a time
            gc.collect()
            self._backbones[name] = load_backbone(name, device=self.device, dtype=self.dtype)
        return self._backbones[name]

    def _encode(self, image: np.ndarray, backbone: str | None) -> Encoding:
        """The one place that runs a model: features and attention, so that every method on
        this backbone can re-segment from the same Encoding."""
        self.encode_calls += 1
        if backbone is None:
            return Encoding(image=image, meta={"original_size": list(image.shape[:2])})
        (encoding,) = self._backbone(backbone).encode(
            [image], features=True, attention=True, size=self.size
        )
        return encoding

    @staticmethod
    def cache_key(image: np.ndarray, backbone: str | None, size: int | None) -> tuple:
        digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16)
        digest.update(str(image.shape).encode())
        return (digest.hexdigest(), backbone, size)

    def encoding(self, image: np.ndarray, backbone: str | None) -> tuple[Encoding, bool, tuple]:
        """(Encoding, was it cached, cache key) for ``image`` on ``backbone``."""
        key = self.cache_key(image, backbone, self.size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], True, key
            encoding = self._encode(image, backbone)
            self._cache[key] = encoding
            while len(self._cache) > self.cache_size:
                old, _ = self._cache.popitem(last=False)
                stale = self._encoding_files.pop(old, None)
                if stale is not None:
                    stale.unlink(missing_ok=True)
            return encoding, False, key

    # -- settings ----------------------------------------------------------------------------

    @staticmethod
    def defaults(method: str, backbone: str | None) -> dict[str, Any]:
        """The method's resolved default settings on ``backbone`` (no weights are loaded)."""
        from diffuseg.segmenter import backbone_defaults

        spec = get_method(method)
        extra = {}
        if spec.needs_backbone:
            try:
                extra = backbone_defaults(method, backbone)
            except (ValueError, OSError):  # a folder that is not a model: no backbone defaults
                extra = {}
        config = spec.make_config(defaults=extra)
        return {f.name: getattr(config, f.name) for f in fields(config)}

    @staticmethod
    def overrides(method: str, settings: dict[str, Any]) -> dict[str, Any]:
        """The subset of ``settings`` that ``method``'s config has, cast to the field types;
        ``refine`` drives the method's refinement field (see :data:`REFINE_FIELDS`)."""
        types = _field_types(method)
        out = {}
        for name, value in settings.items():
            if name == "refine":
                target = next((f for f in REFINE_FIELDS if f in types), None)
                if target is not None and value is not None:
                    out[target] = bool(value)
            elif name in types and value is not None:
                out[name] = _cast(value, types[name])
        return out

    # -- the request -------------------------------------------------------------------------

    def _new_output_dir(self) -> Path:
        with self._lock:
            self._requests += 1
            folder = self.workdir / f"request-{self._requests:06d}"
            old = self._requests - self.keep_outputs
            if old > 0:
                shutil.rmtree(self.workdir / f"request-{old:06d}", ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _encoding_file(self, key: tuple, encoding: Encoding, stem: str) -> Path:
        with self._lock:
            path = self._encoding_files.get(key)
            if path is None or not path.is_file():
                path = self.workdir / "encodings" / key[0] / f"{stem}.encoding.safetensors"
                encoding.save(path)
                self._encoding_files[key] = path
            return path

    def namer(self) -> Any:
        """The Segmenter that names segments by class, one for the demo's life: CLIP loads on
        the first request that names, and each class list's text embeddings are computed once
        (naming reads no segmentation method, hence ``ncut``)."""
        with self._lock:
            if self._namer is None:
                from diffuseg.segmenter import Segmenter

                self._namer = Segmenter("ncut", clip=self.clip, device=self.device,
                                        dtype=self.dtype)
            return self._namer

    @staticmethod
    def class_names(text: str | None) -> list[str] | None:
        """Comma-separated class names from the page (None when the box is empty)."""
        names = [c.strip() for c in (text or "").split(",") if c.strip()]
        if len(set(names)) != len(names):
            raise DemoError("each class name once, please")
        return names or None

    def run(
        self,
        path: str | os.PathLike | None,
        method: str,
        backbone: str | None,
        settings: dict[str, Any] | None = None,
        classes: list[str] | None = None,
    ) -> Result:
        """Load, encode (or take from the cache), segment, name the segments by ``classes``
        (CLIP, segments of one class merged) when given, and write the downloads.

        Raises:
            DemoError: a bad upload or setting; WeightsNotFoundError: the backbone's weights are
            missing (both carry a one-line message for the page).
        """
        from diffuseg.segmenter import Segmenter

        image = self.load_upload(path)
        stem = Path(str(path)).stem or "image"
        try:
            segmenter = Segmenter(method, backbone)
            overrides = self.overrides(method, settings or {})
            # every value checked here, on the server, before any encoding: a slider's range
            # is the browser's business, NaN or 1e9 sent over HTTP must not get further
            segmenter.spec.make_config(overrides)
        except ValueError as exc:
            raise DemoError(str(exc)) from None
        t0 = time.perf_counter()
        encoding, cached, key = self.encoding(image, backbone)
        t1 = time.perf_counter()
        try:
            segmentation = segmenter.segment(encoding, output_size=image.shape[:2], **overrides)
        except ValueError as exc:
            raise DemoError(f"{method} cannot segment this: {exc}") from None
        if classes:
            segmentation = self.namer().name(segmentation, image, classes=classes)
        t2 = time.perf_counter()
        folder = self._new_output_dir()
        labels_path = folder / f"{stem}.labels.png"
        masks_path = folder / f"{stem}.masks.json"
        write_label_png(labels_path, segmentation.labels)
        write_masks_json(masks_path, segmentation.labels, segmentation.config,
                         names=segmentation.names, input=Path(path).name)
        encoding_path = self._encoding_file(key, encoding, stem)
        return Result(
            image=image,
            segmentation=segmentation,
            files=[str(labels_path), str(masks_path), str(encoding_path)],
            cached=cached,
            encode_seconds=t1 - t0,
            segment_seconds=t2 - t1,
            backbone=backbone,
        )

    def example_copy(self) -> str:
        """A copy of the example image inside the work folder (Gradio serves files from there)."""
        target = self.workdir / "example" / EXAMPLE_IMAGE.name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(EXAMPLE_IMAGE, target)
        return str(target)


def _status(result: Result, method: str) -> str:
    seg = result.segmentation
    where = f"on `{result.backbone}`" if result.backbone else "on the image itself (no weights)"
    encoded = (
        "encoding from cache"
        if result.cached
        else f"encoded in {result.encode_seconds:.1f} s"
    )
    depth = f", hierarchy depth {seg.hierarchy.depth}" if seg.hierarchy is not None else ""
    if seg.names:
        depth += " · " + ", ".join(sorted(set(seg.names.values())))
    h, w = seg.labels.shape
    return (
        f"**{seg.num_segments} segments**{depth} · `{method}` {where} · {w}x{h} px · "
        f"{encoded} · segmented in {result.segment_seconds:.2f} s"
    )


def _gallery(result: Result) -> tuple[list, list]:
    seg = result.segmentation
    total = seg.labels.size
    names = seg.names
    segments = [
        (crop, f"{names[k] if k in names else f'#{k}'}: "
               f"{100 * int((seg.labels == k).sum()) / total:.0f}%")
        for k, crop in segment_cutouts(result.image, seg.labels, max_segments=GALLERY_SEGMENTS)
    ]
    levels = []
    for depth, labels in hierarchy_levels(seg, HIERARCHY_LEVELS):
        k = len(np.unique(labels))
        name = "leaves" if depth is None else f"depth {depth}"
        levels.append((overlay(result.image, labels), f"{name}: {k} segments"))
    return segments, levels


def build_app(
    state: DemoState | None = None,
    method: str | None = None,
    backbone: str | None = None,
):
    """The demo as a ``gr.Blocks`` (not launched).

    Args:
        state: models, cache and limits (default: a new :class:`DemoState`).
        method: method selected at start; default ``diffcut`` when ``backbone`` is a local model
            folder, else ``ncut`` (runs anywhere, no weights).
        backbone: preset name or local folder selected at start (default: each method's own).
    Returns:
        gr.Blocks whose public API endpoint ``/segment`` takes (image file, backbone preset,
        backbone folder, method, tau, alpha, k, anchor_grid, refine, class names) and returns
        (overlay, label map, segments gallery, hierarchy gallery, [labels PNG, masks JSON,
        Encoding], status). Class names (comma-separated, may be empty) name the segments with
        CLIP and merge those of one class.
    """
    import gradio as gr

    from diffuseg.backbones import WeightsNotFoundError, list_backbones

    state = state or DemoState()
    methods = list_methods()
    folder = backbone if backbone and Path(backbone).expanduser().is_dir() else None
    preset = backbone if backbone and folder is None else None
    if method is None:
        method = "diffcut" if folder and "diffcut" in methods else "ncut"
    get_method(method)  # fail now on an unknown name
    presets = [METHOD_DEFAULT, *list_backbones()]
    if preset and preset not in presets:
        presets.append(preset)

    def slider_updates(method_name: str, choice: str | None, path: str | None) -> list:
        name = state.backbone_for(method_name, choice, path)
        defaults = state.defaults(method_name, name)
        updates = []
        for field, (label, lo, hi, step) in SLIDERS.items():
            if field not in defaults or defaults[field] is None:
                updates.append(gr.update(visible=False))
                continue
            lo, hi = RANGE_OVERRIDES.get((method_name, field), (lo, hi))
            value = defaults[field]
            updates.append(gr.update(visible=True, value=value, minimum=min(lo, value),
                                     maximum=max(hi, value), step=step, label=label))
        refine_field = next((f for f in REFINE_FIELDS if f in defaults), None)
        updates.append(
            gr.update(visible=refine_field is not None,
                      value=bool(defaults.get(refine_field, False)))
        )
        return updates

    def segment(path, choice, folder_text, method_name, tau, alpha, k, anchor_grid, refine,
                classes_text=""):
        try:
            name = state.backbone_for(method_name, choice, folder_text)
            settings = {"tau": tau, "alpha": alpha, "k": k, "anchor_grid": anchor_grid,
                        "refine": refine}
            result = state.run(path, method_name, name, settings,
                               classes=state.class_names(classes_text))
        except DemoError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except WeightsNotFoundError as exc:
            hint = " Here: type the model's folder under 'local model folder', or use ncut."
            raise gr.Error(f"{exc}{hint}", print_exception=False) from None
        except Exception as exc:  # never take the server down; say what happened
            log.exception("segmentation failed")
            raise gr.Error(f"Segmentation failed: {type(exc).__name__}: {exc}",
                           print_exception=False) from None
        segments, levels = _gallery(result)
        labels = result.segmentation.labels
        return (
            overlay(result.image, labels),
            colorize(labels),
            segments,
            levels,
            result.files,
            _status(result, method_name),
        )

    def resegment(path, *args):
        """Automatic re-segmentation (sliders, method): nothing to do without an image."""
        if not path:
            return [gr.skip()] * 6
        return segment(path, *args)

    initial = slider_updates(method, preset, folder)
    with gr.Blocks(title="diffuseg", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# diffuseg\nSegment any image with no training, by reading a pre-trained diffusion "
            "model. Upload an image, pick a method, move the sliders: the image is encoded once "
            "and every change re-segments at once. `ncut` needs no model weights."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                upload = gr.File(label="Image", file_types=["image"], type="filepath",
                                 elem_id="upload")
                example_button = gr.Button("Use the example image", elem_id="example")
                method_box = gr.Dropdown(methods, value=method, label="Method",
                                         elem_id="method")
                backbone_box = gr.Dropdown(presets, value=preset or METHOD_DEFAULT,
                                           label="Backbone (preset)", elem_id="backbone")
                folder_box = gr.Textbox(value=folder or "", label="...or a local model folder",
                                        placeholder="/path/to/a/diffusers/model",
                                        elem_id="backbone-folder")
                sliders = []
                for (field, (label, lo, hi, step)), update in zip(
                    SLIDERS.items(), initial, strict=False
                ):
                    sliders.append(
                        gr.Slider(minimum=update.get("minimum", lo),
                                  maximum=update.get("maximum", hi), step=step,
                                  value=update.get("value", lo), label=label,
                                  visible=update.get("visible", False), elem_id=field)
                    )
                refine_box = gr.Checkbox(label="Refinement (PAMR / k-means)",
                                         value=initial[-1].get("value", False),
                                         visible=initial[-1].get("visible", False),
                                         elem_id="refine")
                classes_box = gr.Textbox(value="", label="Name segments: class names, "
                                         "comma-separated (CLIP; empty: no names)",
                                         placeholder="cat, dog, grass", elem_id="classes")
                run_button = gr.Button("Segment", variant="primary", elem_id="segment")
                status = gr.Markdown("Upload an image to start.", elem_id="status")
            with gr.Column(scale=2):
                with gr.Row():
                    overlay_image = gr.Image(label="Overlay", type="numpy", format="png",
                                             interactive=False, elem_id="overlay")
                    labels_image = gr.Image(label="Label map", type="numpy", format="png",
                                            interactive=False, elem_id="labels")
                segments_gallery = gr.Gallery(label="Segments", columns=6, height="auto",
                                              elem_id="segments")
                levels_gallery = gr.Gallery(label="Hierarchy, level by level", columns=4,
                                            height="auto", elem_id="hierarchy")
                downloads = gr.File(label="Downloads: label PNG, masks JSON (COCO RLE), "
                                    "Encoding (.safetensors)", file_count="multiple",
                                    interactive=False, elem_id="downloads")

        inputs = [upload, backbone_box, folder_box, method_box, *sliders, refine_box,
                  classes_box]
        outputs = [overlay_image, labels_image, segments_gallery, levels_gallery, downloads,
                   status]
        common = {"concurrency_id": "segment", "concurrency_limit": 1}
        run_button.click(segment, inputs, outputs, api_name="segment", **common)
        upload.upload(resegment, inputs, outputs, api_visibility="private", **common)
        for slider in sliders:
            slider.release(resegment, inputs, outputs, api_visibility="private", **common)
        refine_box.input(resegment, inputs, outputs, api_visibility="private", **common)
        classes_box.submit(resegment, inputs, outputs, api_visibility="private", **common)
        for box in (method_box, backbone_box, folder_box):
            event = box.input if box is not folder_box else box.submit
            event(
                slider_updates, [method_box, backbone_box, folder_box], [*sliders, refine_box],
                api_visibility="private",
            ).then(resegment, inputs, outputs, api_visibility="private", **common)
        example_button.click(
            state.example_copy, None, upload, api_visibility="private"
        ).then(resegment, inputs, outputs, api_visibility="private", **common)
    demo.diffuseg_state = state
    return demo


def _theme():
    import gradio as gr

    # System fonts only: the default theme asks a web font service, unreachable offline.
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "monospace"]
    return gr.themes.Default(font=system, font_mono=mono)


def launch(
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    backbone: str | None = None,
    method: str | None = None,
    max_pixels: int = 16_000_000,
    max_bytes: int = 25_000_000,
    prevent_thread_lock: bool = False,
    state: DemoState | None = None,
    clip: str | None = None,
    **launch_kwargs: Any,
):
    """Build and serve the demo.

    Args:
        host: address to listen on (127.0.0.1: this machine only; 0.0.0.0 to expose it).
        port: port (default: Gradio's, the first free from 7860).
        share: ask Gradio for a public share link.
        backbone, method: selected at start (see :func:`build_app`).
        max_pixels, max_bytes: the largest accepted upload.
        prevent_thread_lock: return at once, serving in a background thread.
        state: a :class:`DemoState` to use (its limits and CLIP win over ``max_pixels``,
            ``max_bytes`` and ``clip``).
        clip: the CLIP model for class names (see :class:`DemoState`).
        **launch_kwargs: passed on to ``gr.Blocks.launch``.
    Returns:
        the launched ``gr.Blocks`` (``.close()`` stops it; ``.local_url`` is its address).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    state = state or DemoState(max_pixels=max_pixels, max_bytes=max_bytes, clip=clip)
    demo = build_app(state, method=method, backbone=backbone)
    demo.queue(default_concurrency_limit=1)
    kwargs = {
        "server_name": host,
        "server_port": port,
        "share": share,
        "prevent_thread_lock": prevent_thread_lock,
        "show_error": True,
        # Gradio's own limit stops a huge upload before it is stored; ours gives the message.
        "max_file_size": max(4 * state.max_bytes, 1_000_000),
        "theme": _theme(),
        "quiet": True,
    }
    kwargs.update(launch_kwargs)
    demo.launch(**kwargs)
    return demo
