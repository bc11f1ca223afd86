"""The CLIP model of DiffCut's open-vocabulary step, in plain torch, reading open_clip's files.

DiffCut classifies masks with open_clip's ConvNeXt CLIP (``convnext_large_d_320``,
``laion2b_s29b_b131k_ft_soup``). open_clip itself cannot be imported on a torch without a
matching torchvision (it builds its transforms and timm towers with it), and its loader unpickles
``.bin`` checkpoints. So this module rebuilds the two towers that mask classification needs, with
open_clip's state-dict names, and loads open_clip's own files (``open_clip_config.json`` +
``open_clip_model.safetensors``, the hub layout) with safetensors only:

- image tower: timm's ConvNeXt trunk (stem, four stages, head norm) + open_clip's projection head
  (``mlp`` or ``linear``); :meth:`ClipModel.dense` returns the trunk's output before the head
  (DiffCut's ``clip_vis_dense``), :meth:`ClipModel.head` maps pooled features to the joint space.
- text tower: open_clip's causal transformer, pooled at the end-of-text token, projected.

Parity with open_clip 3.3 / timm 1.0 is a test: ``tests/data/open_clip_golden.safetensors`` holds
open_clip's outputs for weights drawn by a seeded NumPy generator (``tests/data/
make_open_clip_golden.py`` writes it where open_clip imports), and our model reproduces them.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_CLIP",
    "ClipConfig",
    "ClipModel",
    "load_clip",
]

#: DiffCut's CLIP: open_clip model name and pretrained tag.
DEFAULT_CLIP = "convnext_large_d_320:laion2b_s29b_b131k_ft_soup"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"

#: open_clip "name:tag" -> Hugging Face repository (open_clip 3.3 ``pretrained.py``).
KNOWN_PRETRAINED: dict[str, str] = {
    "convnext_large_d_320:laion2b_s29b_b131k_ft_soup":
        "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup",
    "convnext_large_d_320:laion2b_s29b_b131k_ft":
        "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft",
    "convnext_large_d:laion2b_s26b_b102k_augreg":
        "laion/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg",
    "convnext_base_w:laion2b_s13b_b82k": "laion/CLIP-convnext_base_w-laion2B-s13B-b82K",
    "convnext_xxlarge:laion2b_s34b_b82k_augreg_soup":
        "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup",
}

#: timm ConvNeXt sizes (timm 1.0 ``convnext.py``): depths, widths, LayerNorm eps.
TIMM_CONVNEXT: dict[str, tuple[tuple[int, ...], tuple[int, ...], float]] = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768), 1e-6),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768), 1e-6),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024), 1e-6),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536), 1e-6),
    "convnext_xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048), 1e-6),
    "convnext_xxlarge": ((3, 4, 30, 3), (384, 768, 1536, 3072), 1e-5),
}

#: open_clip's ``open_clip_config.json`` model section for DiffCut's model (open_clip
#: ``model_configs/convnext_large_d_320.json``), used when a hub snapshot lacks the file.
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "convnext_large_d_320": {
        "embed_dim": 768,
        "vision_cfg": {"timm_model_name": "convnext_large", "timm_pool": "",
                       "timm_proj": "mlp", "image_size": 320},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12,
                     "layers": 16},
    },
}

#: open_clip text-tower options (``text_cfg``) and the only values this rebuild implements
#: (open_clip's defaults, those of every ConvNeXt CLIP).
_TEXT_SUPPORTED: dict[str, Any] = {
    "no_causal_mask": False, "pool_type": "argmax", "embed_cls": False,
    "final_ln_after_pool": False, "proj_bias": False, "proj_type": "linear", "pad_id": 0,
    "act_kwargs": {}, "norm_kwargs": {},
}

#: OpenAI CLIP's normalisation (open_clip's default for these models).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipConfig:
    """The architecture, read from an open_clip model config.

    Attributes:
        embed_dim: D, the joint image-text space.
        depths, dims, norm_eps: the ConvNeXt trunk (C = dims[-1] dense channels).
        proj, proj_bias: open_clip's image head, "mlp" (D*2 hidden, GELU) or "linear".
        image_size: the model's training resolution (informative; dense features take any size).
        context_length, vocab_size, width, heads, layers, mlp_ratio: the text transformer.
        mean, std: the input normalisation (``preprocess_cfg`` of the hub config, else OpenAI
            CLIP's).
    """

    embed_dim: int
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    norm_eps: float
    proj: str
    proj_bias: bool
    image_size: int
    context_length: int
    vocab_size: int
    width: int
    heads: int
    layers: int
    mlp_ratio: float = 4.0
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> ClipConfig:
        """From open_clip's config (``{"embed_dim", "vision_cfg", "text_cfg"}``, or the whole
        ``open_clip_config.json`` with a ``model_cfg`` section).

        Only timm ConvNeXt image towers with ``timm_pool`` "" are supported (DiffCut's family).
        ``vision_cfg`` may give ``depths``/``dims``/``norm_eps`` instead of a timm name (this
        package's extension, for small test models).
        """
        pre = cfg.get("preprocess_cfg") or {}
        cfg = cfg.get("model_cfg", cfg)
        v, t = dict(cfg.get("vision_cfg", {})), dict(cfg.get("text_cfg", {}))
        name = v.get("timm_model_name")
        if "depths" in v and "dims" in v:
            depths, dims = tuple(v["depths"]), tuple(v["dims"])
            eps = float(v.get("norm_eps", 1e-6))
        elif name in TIMM_CONVNEXT:
            depths, dims, eps = TIMM_CONVNEXT[name]
        else:
            raise ValueError(
                f"unsupported CLIP image tower {name!r}: mask classification needs an open_clip "
                f"ConvNeXt model ({', '.join(sorted(TIMM_CONVNEXT))})"
            )
        if v.get("timm_pool", "") not in ("", None):
            raise ValueError(f"unsupported timm_pool {v['timm_pool']!r} (ConvNeXt CLIP uses '')")
        proj = v.get("timm_proj", "linear")
        if proj not in ("mlp", "linear"):
            raise ValueError(f"unsupported timm_proj {proj!r} (mlp or linear)")
        for key in ("hf_model_name", "hf_tokenizer_name"):
            if t.get(key):
                raise ValueError("CLIP text towers from Hugging Face models are not supported")
        # open_clip options this rebuild does not implement: refuse rather than differ
        for section, supported in ((t, _TEXT_SUPPORTED), (cfg, {"quick_gelu": False})):
            for key, value in supported.items():
                if section.get(key) is not None and section[key] != value:
                    raise ValueError(f"unsupported CLIP option {key}={section[key]!r}")
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError("a ConvNeXt trunk has four stages")
        size = v.get("image_size", 224)
        return cls(
            embed_dim=int(cfg["embed_dim"]), depths=tuple(int(d) for d in depths),
            dims=tuple(int(d) for d in dims), norm_eps=eps, proj=proj,
            proj_bias=bool(v.get("timm_proj_bias", False)),
            image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
            context_length=int(t.get("context_length", 77)),
            vocab_size=int(t.get("vocab_size", 49408)), width=int(t.get("width", 512)),
            heads=int(t.get("heads", 8)), layers=int(t.get("layers", 12)),
            mlp_ratio=float(t.get("mlp_ratio", 4.0)),
            mean=tuple(float(x) for x in pre.get("mean", CLIP_MEAN)),
            std=tuple(float(x) for x in pre.get("std", CLIP_STD)),
        )

    def to_open_clip(self) -> dict[str, Any]:
        """``open_clip_config.json``'s layout (model section with explicit depths/dims, so any
        size round-trips, and the preprocessing's mean/std)."""
        model = {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"timm_model_name": "convnext", "timm_pool": "",
                           "timm_proj": self.proj, "timm_proj_bias": self.proj_bias,
                           "image_size": self.image_size, "depths": list(self.depths),
                           "dims": list(self.dims), "norm_eps": self.norm_eps},
            "text_cfg": {"context_length": self.context_length, "vocab_size": self.vocab_size,
                         "width": self.width, "heads": self.heads, "layers": self.layers,
                         "mlp_ratio": self.mlp_ratio},
        }
        return {"model_cfg": model,
                "preprocess_cfg": {"mean": list(self.mean), "std": list(self.std)}}


# ---------------------------------------------------------------------------------------------
# image tower (timm ConvNeXt names)
# ---------------------------------------------------------------------------------------------
class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int, bias_out: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out, bias=bias_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, 4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1)))  # channels last
        return x + (y * self.gamma).permute(0, 3, 1, 2)


class _Stage(nn.Module):
    def __init__(self, dim_in: int, dim: int, depth: int, eps: float) -> None:
        super().__init__()
        self.downsample = (
            nn.Identity() if dim_in == dim
            else nn.Sequential(_LayerNorm2d(dim_in, eps=eps), nn.Conv2d(dim_in, dim, 2, stride=2))
        )
        self.blocks = nn.Sequential(*[_ConvNeXtBlock(dim, eps) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class _TrunkHead(nn.Module):
    """timm's head after ``reset_classifier(0)``: global average pool and LayerNorm."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.norm = _LayerNorm2d(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.mean((2, 3), keepdim=True)).flatten(1)


class _Trunk(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        d0, eps = cfg.dims[0], cfg.norm_eps
        self.stem = nn.Sequential(nn.Conv2d(3, d0, 4, stride=4), _LayerNorm2d(d0, eps=eps))
        dims_in = (d0, *cfg.dims[:-1])
        self.stages = nn.Sequential(*[
            _Stage(a, b, n, eps) for a, b, n in zip(dims_in, cfg.dims, cfg.depths, strict=True)
        ])
        self.head = _TrunkHead(cfg.dims[-1], eps)


class _ProjHead(nn.Module):
    """open_clip's ``TimmModel.head``: ``mlp`` (fc1 2D, GELU, fc2) or ``linear`` (proj)."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        c, d = cfg.dims[-1], cfg.embed_dim
        if cfg.proj == "mlp":
            self.mlp = _Mlp(c, 2 * d, d, bias_out=cfg.proj_bias)
        else:
            self.proj = nn.Linear(c, d, bias=cfg.proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) if hasattr(self, "mlp") else self.proj(x)


class _Visual(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.trunk = _Trunk(cfg)
        self.head = _ProjHead(cfg)


# ---------------------------------------------------------------------------------------------
# text tower (open_clip names)
# ---------------------------------------------------------------------------------------------
class _TextMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class _Attention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (in_proj, out_proj), causal, batch first."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, w // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, w))


class _ResBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = _TextMlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            [_ResBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers)]
        )


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class ClipModel(nn.Module):
    """open_clip's ConvNeXt CLIP, split the way mask classification needs it.

    Parameter names equal open_clip's, so its ``open_clip_model.safetensors`` loads strictly.
    Build with :func:`load_clip`; ``ClipModel(cfg)`` alone has untrained, default-initialised
    weights and no tokenizer.
    """

    def __init__(self, cfg: ClipConfig, tokenizer: Any = None) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"text width {cfg.width} is not a multiple of {cfg.heads} heads")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.visual = _Visual(cfg)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.transformer = _Transformer(cfg)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.zeros(cfg.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    @property
    def device(self) -> torch.device:
        return self.positional_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.positional_embedding.dtype

    # image --------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, size: int | tuple[int, int],
                   normalize: bool = True) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, h, w) input resized bilinearly (antialiased when shrinking,
        as PIL) to ``size`` (an int: a square), in [0, 1] and, if ``normalize``, standardised
        with CLIP's mean and std (DiffCut's evaluation script skips that step)."""
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h < 32 or w < 32:
            raise ValueError(f"CLIP input must be at least 32x32, got {h}x{w}")
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255
        if (h, w) != arr.shape[:2]:
            shrink = h < arr.shape[0] or w < arr.shape[1]
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                              antialias=shrink).clamp_(0, 1)
        if not normalize:
            return x
        mean = torch.tensor(self.cfg.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def dense_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) normalised images -> (B, C, h/32, w/32) trunk features before the head
        (DiffCut's ``clip_vis_dense``), in the model's dtype."""
        trunk = self.visual.trunk
        return trunk.stages(trunk.stem(x.to(self.device, self.dtype)))

    def dense(self, image: np.ndarray, size: int | tuple[int, int] = 1024,
              normalize: bool = True) -> torch.Tensor:
        """Dense features of one (H, W, 3) uint8 image resized to ``size``.

        Args:
            normalize: standardise with CLIP's mean / std (False: [0, 1] RGB, as DiffCut's
                open-vocabulary script feeds it).
        Returns:
            float32 (C, h/32, w/32) on the CPU (C = 1536 for ConvNeXt-L).
        """
        return self.dense_input(self.preprocess(image, size, normalize))[0].float().cpu()

    @torch.inference_mode()
    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """(K, C) pooled dense features -> (K, D) image embeddings: timm's head on a 1x1 map (its
        pooling is then the identity, its norm applies), then open_clip's projection (DiffCut's
        ``visual_prediction_forward_convnext``)."""
        x = pooled.to(self.device, self.dtype).reshape(pooled.shape[0], -1, 1, 1)
        return self.visual.head(self.visual.trunk.head(x)).float().cpu()

    @torch.inference_mode()
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) normalised images -> (B, D) embeddings (open_clip's ``encode_image``)."""
        feats = self.dense_input(x)
        return self.visual.head(self.visual.trunk.head(feats)).float().cpu()

    # text ---------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """open_clip's tokenisation: ``<start>`` + BPE + ``<end>``, zero-padded to the context
        length, truncated with ``<end>`` kept last. Returns int64 (n, context_length)."""
        if self.tokenizer is None:
            raise ValueError("this ClipModel has no tokenizer (load it with load_clip)")
        n_ctx = self.cfg.context_length
        out = torch.zeros(len(prompts), n_ctx, dtype=torch.long)
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        for i, text in enumerate(prompts):
            ids = [bos, *self.tokenizer.encode(str(text), add_special_tokens=False), eos]
            if len(ids) > n_ctx:
                ids = ids[:n_ctx]
                ids[-1] = eos
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    @torch.inference_mode()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, L) token ids -> (n, D) text embeddings (unnormalised), pooled at the end token
        (the largest id of each row, open_clip's ``argmax`` pooling)."""
        tokens = tokens.to(self.device)
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.transformer.resblocks:
            x = block(x)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(-1)]
        return (x @ self.text_projection).float().cpu()

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """(n,) prompts -> (n, D) float32 text embeddings (unnormalised), on the CPU."""
        return self.encode_tokens(self.tokenize(list(prompts)))


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def _tokenizer() -> Any:
    from diffuseg.labels.tokens import clip_tokenizer

    # the BPE tables are written once per process to a temporary folder
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = clip_tokenizer(Path(tempfile.mkdtemp(prefix="diffuseg-clip-bpe-")))
    return _TOKENIZER


_TOKENIZER: Any = None


def _resolve(name_or_path: str) -> tuple[Path, str | None]:
    """The local folder of the files, and the model name when a known one was asked."""
    from diffuseg.backbones.registry import (
        WeightsNotFoundError,
        hub_snapshot,
        looks_like_path,
        weights_help,
    )

    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path, None
    if looks_like_path(text):
        raise WeightsNotFoundError(f"CLIP model folder {text} does not exist")
    model_name = None
    if text in KNOWN_PRETRAINED:
        model_name, repo = text.split(":")[0], KNOWN_PRETRAINED[text]
    elif text.startswith("hf-hub:"):
        repo = text[len("hf-hub:"):]
    elif text.count("/") == 1 and ":" not in text:
        repo = text
    else:
        raise WeightsNotFoundError(
            f"unknown CLIP model {text!r}: give a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, "
            f"a hub id (org/repo), or one of {', '.join(KNOWN_PRETRAINED)}"
        )
    local = f"--clip PATH (a folder with {CONFIG_NAME} and {WEIGHTS_NAME})"
    folder = hub_snapshot(repo, [CONFIG_NAME, WEIGHTS_NAME], f"the CLIP weights {text!r} ({repo})",
                          weights_help(repo, local))
    return folder, model_name


def load_clip(
    name_or_path: str | Path = DEFAULT_CLIP,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> ClipModel:
    """Load an open_clip ConvNeXt CLIP for mask classification.

    Args:
        name_or_path: a local folder in open_clip's hub layout (``open_clip_config.json`` and
            ``open_clip_model.safetensors``), a hub id (``org/repo`` or ``hf-hub:org/repo``), or
            an open_clip ``name:tag`` from :data:`KNOWN_PRETRAINED` (default DiffCut's). Hub
            files go to the Hugging Face cache; with ``HF_HUB_OFFLINE=1`` only the cache is read.
        device: default CUDA when available, else CPU.
        dtype: default float16 on CUDA, float32 elsewhere.
    Raises:
        WeightsNotFoundError: the files cannot be found (one line saying how to provide them);
            also for a folder holding only a pickled ``.bin`` checkpoint, which is never loaded.
        ValueError: the config is not an open_clip ConvNeXt CLIP.
    """
    from safetensors.torch import load_file

    from diffuseg.backbones.diffusion import default_device, resolve_dtype
    from diffuseg.backbones.registry import WeightsNotFoundError

    folder, model_name = _resolve(str(name_or_path))
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt"))
        extra = (f" ({', '.join(pickled)} are pickled checkpoints, never loaded: convert them "
                 "to safetensors)") if pickled else ""
        raise WeightsNotFoundError(f"no {WEIGHTS_NAME} in {folder}{extra}")
    config_file = folder / CONFIG_NAME
    if config_file.is_file():
        raw = json.loads(config_file.read_text())
    elif model_name in BUILTIN_CONFIGS:
        raw = BUILTIN_CONFIGS[model_name]
    else:
        raise WeightsNotFoundError(f"no {CONFIG_NAME} in {folder}")
    cfg = ClipConfig.from_open_clip(raw)
    dev = torch.device(device) if device is not None else default_device()
    dt = resolve_dtype(dtype, dev)
    with torch.device("meta"):
        model = ClipModel(cfg)
    state = load_file(str(weights))
    state.pop("attn_mask", None)  # open_clip's causal mask buffer, rebuilt on the fly here
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match the config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.tokenizer = _tokenizer()
    return model.to(dev, dt).eval()
