"""Seeded open_clip-format CLIP models for tests (no download, no open_clip import).

- :func:`seeded_state_dict`: deterministic weights for given parameter names and shapes, drawn
  with NumPy's legacy generator (stable across versions), so that open_clip (in
  ``tests/data/make_open_clip_golden.py``) and our ``ClipModel`` get the very same weights.
- :func:`make_tiny_clip`: a tiny model folder in open_clip's hub layout
  (``open_clip_config.json`` + ``open_clip_model.safetensors``) that ``load_clip`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: A tiny ConvNeXt CLIP (explicit depths/dims, this package's config extension): 8x8-pixel-cheap.
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"timm_model_name": "convnext", "timm_pool": "", "timm_proj": "mlp",
                   "image_size": 64, "depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}


def seeded_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 weights for the given parameter names and shapes.

    Keys are visited in sorted order with one ``np.random.RandomState(seed)``; norm weights are
    near 1, vectors (biases, layer scales) small, matrices scaled by 1/sqrt(fan-in), the logit
    scale log(1/0.07): activations stay of order one through every layer.
    """
    rng = np.random.RandomState(seed)
    out = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if not shape:
            out[key] = np.array(np.log(1 / 0.07), dtype=np.float32)
            continue
        z = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 1:
            is_norm = key.endswith(".weight") and any(
                s in key for s in ("norm", ".ln_", "ln_final", "stem.1", "downsample.0"))
            value = (1 + 0.1 * z) if is_norm else 0.1 * z
        elif key in ("positional_embedding", "token_embedding.weight"):
            value = 0.1 * z
        elif key == "text_projection":
            value = z / np.sqrt(shape[0])
        else:
            value = z / np.sqrt(float(np.prod(shape[1:])))
        out[key] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def golden_inputs(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The parity fixture's inputs: two normalised 64x96 images and three pooled C-vectors."""
    rng = np.random.RandomState(1)
    x = rng.standard_normal((2, 3, 64, 96)).astype(np.float32)
    return x, rng.standard_normal((3, channels)).astype(np.float32)


def make_tiny_clip(folder: str | Path, config: dict | None = None, seed: int = 0) -> Path:
    """Write a seeded CLIP in open_clip's hub layout to ``folder`` and return it."""
    import torch
    from safetensors.torch import save_file

    from diffuseg.labels.clip_model import CONFIG_NAME, WEIGHTS_NAME, ClipConfig, ClipModel

    cfg = config or TINY_CLIP_CONFIG
    with torch.device("meta"):
        model = ClipModel(ClipConfig.from_open_clip(cfg))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes, seed).items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps({"model_cfg": cfg}, indent=2))
    return folder
