"""Record open_clip's outputs for seeded weights: the parity fixture of ``clip_model.py``.

Run where open_clip imports (it needs torchvision and timm), from the repository root::

    python tests/data/make_open_clip_golden.py

It writes ``tests/data/open_clip_golden.safetensors``: for each test config, open_clip's dense
trunk features, image embeddings, head outputs, tokens and text embeddings, with the config, the
prompts and open_clip's parameter names and shapes in the metadata. Weights are not stored: both
sides draw them with ``tests/tiny_clip.py``'s ``seeded_state_dict``.
Recorded with open_clip 3.3.0, timm 1.0.31, torch 2.14.1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared seeding

from tiny_clip import golden_inputs, seeded_state_dict  # noqa: E402

OUT = Path(__file__).with_name("open_clip_golden.safetensors")

#: Test configs in open_clip's layout: DiffCut's head (mlp) and the linear head with a bias, on
#: timm's smallest ConvNeXt that has DiffCut's block layout (channels-last MLP).
CONFIGS = {
    "mlp": {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "convnext_tiny", "timm_pool": "", "timm_proj": "mlp",
                       "image_size": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4,
                     "layers": 2},
    },
    "linear": {
        "embed_dim": 24,
        "vision_cfg": {"timm_model_name": "convnext_tiny", "timm_pool": "",
                       "timm_proj": "linear", "timm_proj_bias": True, "image_size": 64},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 3,
                     "layers": 1},
    },
}

PROMPTS = [
    "a photo of a cat.",
    "There is a large fire hydrant in the scene.",
    "This is a photo of a motorbike, with hot-dog's sauce & café crème!",
    "a photo of a " + "very " * 80 + "long thing.",  # longer than any context: truncated
]


def main() -> None:
    import open_clip
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {"prompts": json.dumps(PROMPTS), "open_clip": open_clip.__version__}
    tokenizer = open_clip.get_tokenizer("convnext_large_d_320")
    for name, cfg in CONFIGS.items():
        model = CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"]).eval()
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        state = {k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes).items()}
        model.load_state_dict(state, strict=True)
        x, pooled = (torch.from_numpy(a) for a in golden_inputs(model.visual.trunk.num_features))
        tokens = tokenizer(PROMPTS, context_length=cfg["text_cfg"]["context_length"])
        with torch.no_grad():
            trunk = model.visual.trunk
            dense = trunk.norm_pre(trunk.stages(trunk.stem(x)))
            head = model.visual.head(trunk.head(pooled.reshape(3, -1, 1, 1)))
            tensors.update({
                f"{name}.dense": dense,
                f"{name}.image_embed": model.encode_image(x),
                f"{name}.head": head,
                f"{name}.tokens": tokens.to(torch.int64),
                f"{name}.text_embed": model.encode_text(tokens),
            })
        meta[f"{name}.config"] = json.dumps(cfg)
        meta[f"{name}.shapes"] = json.dumps({k: list(v) for k, v in shapes.items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT), metadata=meta)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
