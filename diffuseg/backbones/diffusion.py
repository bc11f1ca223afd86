"""Loading a diffusion backbone and encoding images with it: one UNet pass per image batch.

:func:`load_backbone` reads only what segmentation needs (VAE, UNet, text encoder(s),
tokenizer(s), scheduler config) with ``from_pretrained``: from the Hugging Face hub on a user's
machine (with progress), from the local cache when ``HF_HUB_OFFLINE`` is set, or from a local
folder. Safetensors only, never remote code.

:meth:`Backbone.encode` turns images into :class:`~diffuseg.types.Encoding` objects:

- DiffCut features: VAE posterior mean x scaling factor, DDIM ``add_noise`` at t=50 with seeded
  noise shared by the batch, one UNet pass cut short right after the feature layer (``attn1``
  output of the last transformer block of the last attention module of the last attention down
  block).
- DiffSeg / DWC attention: the clean latent with the timestep embedding of t=300, a full pass with
  every ``attn1`` layer's head-averaged probabilities summed per query grid.

Empty-prompt conditioning (SDXL: both text encoders, pooled embeddings and
``add_time_ids = (H, W, 0, 0, H, W)``) is computed once at load time; the text encoders are then
released.

Captions (DiffSeg's caption labels): :meth:`Backbone.cross_attention` runs the same attention pass
conditioned on a caption and captures the cross-attention (``attn2``) to its tokens. The text
encoder(s) are re-loaded from the same folder on the first caption (not kept from load time, so
that the default path stays as lean as before) and then kept until
:meth:`Backbone.release_text_encoders`; :attr:`Backbone.tokenizer` loads only the tokenizer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffuseg.backbones.capture import (
    AttentionCapture,
    CrossAttentionCapture,
    FeatureHook,
    get_module,
    token_grid,
)
from diffuseg.backbones.registry import (
    BackbonePreset,
    WeightsNotFoundError,
    describe_missing,
    hub_snapshot,
    resolve_backbone,
    weights_help,
)
from diffuseg.types import Encoding

__all__ = ["Backbone", "load_backbone", "resize_dims", "default_device", "default_dtype",
           "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)

#: DiffSeg's and DWC's timestep: the clean latent with the embedding of t=300 (METHODS.md s.1).
ATTENTION_TIMESTEP = 300
#: Seed of DiffCut's noise (the features' only random input).
NOISE_SEED = 42


# ---------------------------------------------------------------------------------------------
# devices and dtypes
# ---------------------------------------------------------------------------------------------
def default_device() -> torch.device:
    """``cuda`` if available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """A torch device from a name ("cpu", "cuda", "cuda:1", ...); None: :func:`default_device`.

    Raises:
        ValueError: a name torch does not know, or a CUDA device this machine does not have.
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA device is available here (use cpu)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    return dev


def default_dtype(device: torch.device | str,
                  cuda_dtype: torch.dtype | str | None = None) -> torch.dtype:
    """The precision used when none is asked for: fp32 off CUDA; on CUDA ``cuda_dtype`` (a
    method's published precision, e.g. DiffCut's fp16) or else bf16 where supported, fp16
    elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        if cuda_dtype is not None:
            return resolve_dtype(cuda_dtype, device)
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str,
                  cuda_dtype: torch.dtype | str | None = None) -> torch.dtype:
    """A dtype from a name ("fp16", "bfloat16", ...) or a torch dtype; None or "auto" gives
    :func:`default_dtype` (``cuda_dtype`` is the method's precision on CUDA).

    Raises:
        ValueError: an unknown name.
    """
    if dtype is None or dtype == "auto":
        return default_dtype(device, cuda_dtype)
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


# ---------------------------------------------------------------------------------------------
# image geometry
# ---------------------------------------------------------------------------------------------
def resize_dims(height: int, width: int, size: int, multiple: int = 64) -> tuple[int, int]:
    """Processed (H, W) for an image of (height, width): long side ``size``, both sides multiples
    of ``multiple``, aspect ratio kept as closely as that allows (short side rounded to the
    nearest multiple, at least one multiple).

    Args:
        size: the long side in pixels; rounded to the nearest multiple of ``multiple``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    size = max(multiple, int(round(size / multiple)) * multiple)
    long, short = max(height, width), min(height, width)
    short_out = max(multiple, int(round(short * size / long / multiple)) * multiple)
    return (size, short_out) if height >= width else (short_out, size)


def _center_square(image: np.ndarray) -> tuple[np.ndarray, list[int] | None]:
    h, w = image.shape[:2]
    if h == w:
        return image, None
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side], [top, left, side, side]


def _as_rgb(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[0] == height and image.shape[1] == width:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


# ---------------------------------------------------------------------------------------------
# the backbone
# ---------------------------------------------------------------------------------------------
class Backbone:
    """A loaded diffusion backbone: VAE + UNet + cached empty-prompt conditioning.

    Build with :func:`load_backbone`. The UNet and VAE stay on ``device``; tensors returned by
    :meth:`encode` are float32 on the CPU.

    Attributes:
        preset: the :class:`BackbonePreset` (name, repository, family, resolution, timestep,
            feature layer, per-method defaults).
        unet, vae, scheduler: the diffusers components (``scheduler`` is DDIM, trailing spacing).
        device, dtype: where and in which precision the UNet runs; ``vae_dtype`` for the VAE.
    """

    def __init__(
        self,
        preset: BackbonePreset,
        *,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        scheduler: Any,
        prompt_embeds: torch.Tensor,
        pooled_embeds: torch.Tensor | None = None,
        device: torch.device,
        dtype: torch.dtype,
        vae_dtype: torch.dtype,
    ) -> None:
        self.preset = preset
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype
        self.vae_dtype = vae_dtype
        self._prompt_embeds = prompt_embeds  # (1, L, D) on device, UNet dtype
        self._pooled_embeds = pooled_embeds  # (1, P) on device (SDXL family) or None
        self.feature_module = get_module(unet, preset.feature_block)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        n_down = len(unet.config.block_out_channels) - 1
        # Both sides a multiple of the UNet's total down-sampling, and of 64 px at least (the
        # SD 1.x deepest level; SDXL's 32 px would do, 64 keeps all families on one grid).
        self.multiple = max(64, self.vae_scale_factor * 2**n_down)
        self._feature_level = self._find_feature_level()

    # -- descriptive -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.preset.name

    @property
    def family(self) -> str:
        return self.preset.family

    @property
    def resolution(self) -> int:
        return self.preset.resolution

    def __repr__(self) -> str:
        return (
            f"Backbone({self.preset.name!r}, family={self.family}, "
            f"resolution={self.resolution}, device={self.device}, dtype={self.dtype})"
        )

    def processed_size(
        self, height: int, width: int, *, size: int | None = None, square: bool = False
    ) -> tuple[int, int]:
        """The (H, W) an image of (height, width) is resized to before encoding."""
        if square:
            height = width = min(height, width)
        return resize_dims(height, width, size or self.resolution, self.multiple)

    def feature_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) of the feature layer for a processed image of (height, width)."""
        latent = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        h, w = latent
        for _ in range(self._feature_level):
            h, w = -(-h // 2), -(-w // 2)
        return h, w

    def _find_feature_level(self) -> int:
        # number of down-samplings before the feature layer = index of its down block
        path = self.preset.feature_block
        for i, block in enumerate(self.unet.down_blocks):
            if any(m is self.feature_module for m in block.modules()):
                return i
        raise ValueError(f"feature layer {path!r} is not inside a down block")

    # -- conditioning ------------------------------------------------------------------------
    def _conditioning(
        self, batch: int, height: int, width: int,
        embeds: torch.Tensor | None = None, pooled: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """UNet keyword arguments: prompt embeddings (default: the cached empty prompt's) and,
        for the SDXL family, pooled embeddings and ``add_time_ids = (H, W, 0, 0, H, W)``."""
        if embeds is None:
            embeds, pooled = self._prompt_embeds, self._pooled_embeds
        kwargs: dict[str, Any] = {"encoder_hidden_states": embeds.expand(batch, -1, -1)}
        if pooled is not None:
            time_ids = torch.tensor(
                [[height, width, 0, 0, height, width]], dtype=self.dtype, device=self.device
            )
            kwargs["added_cond_kwargs"] = {
                "text_embeds": pooled.expand(batch, -1),
                "time_ids": time_ids.expand(batch, -1),
            }
        return kwargs

    # -- the pipeline pieces -----------------------------------------------------------------
    @torch.inference_mode()
    def latents(self, images: np.ndarray) -> torch.Tensor:
        """VAE posterior mean x scaling factor of a uint8 batch (B, H, W, 3): float32
        (B, 4, H/8, W/8) on the backbone's device (the VAE runs in ``vae_dtype``)."""
        x = torch.from_numpy(np.array(images, dtype=np.uint8)).to(self.device)  # writable copy
        x = x.permute(0, 3, 1, 2).to(self.vae_dtype) / 127.5 - 1.0
        z = self.vae.encode(x).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            z = z - shift
        z = z * self.vae.config.scaling_factor
        return z.float()

    def _noise(self, latents: torch.Tensor, seed: int) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        shape = (1, *latents.shape[1:])
        eps = torch.randn(shape, generator=gen, device=self.device, dtype=torch.float32)
        return eps.expand_as(latents)

    @torch.inference_mode()
    def features(
        self, latents: torch.Tensor, *, timestep: int | None = None, seed: int = NOISE_SEED
    ) -> torch.Tensor:
        """DiffCut features of clean latents (B, 4, h8, w8): noise at ``timestep`` (default the
        preset's, 50) with seeded noise shared by the batch, run the UNet up to the feature layer
        only. Returns (B, C, h, w) float32 on the CPU."""
        t = int(self.preset.timestep if timestep is None else timestep)
        batch = latents.shape[0]
        eps = self._noise(latents, seed)
        ts = torch.full((batch,), t, dtype=torch.long, device=self.device)
        noisy = self.scheduler.add_noise(latents.float(), eps, ts).to(self.dtype)  # noise in fp32
        height = latents.shape[-2] * self.vae_scale_factor
        width = latents.shape[-1] * self.vae_scale_factor
        hook = FeatureHook(self.feature_module, stop=True)
        out = hook.run(self.unet, noisy, ts, **self._conditioning(batch, height, width))
        if out.ndim == 4:  # (B, C, h, w) already
            return out.float().cpu()
        h, w = token_grid(out.shape[1], tuple(latents.shape[-2:]))
        return out.float().transpose(1, 2).reshape(batch, -1, h, w).cpu()

    @torch.inference_mode()
    def attention(
        self, latents: torch.Tensor, *, timestep: int | Sequence[int] = ATTENTION_TIMESTEP
    ) -> list[dict[tuple[int, int], torch.Tensor]]:
        """Head- and layer-averaged self-attention of clean latents (B, 4, h8, w8) at the
        timestep embedding of ``timestep`` (no noise added); a list of timesteps averages the
        maps over them (one pass each, summed into the same running sums, so memory does not
        grow). Returns per image {(h, w): (h*w, h, w) float32 CPU tensor}, rows summing to 1."""
        batch = latents.shape[0]
        height = latents.shape[-2] * self.vae_scale_factor
        width = latents.shape[-1] * self.vae_scale_factor
        timesteps = [timestep] if isinstance(timestep, int) else list(timestep)
        if not timesteps:
            raise ValueError("attention needs at least one timestep")
        conditioning = self._conditioning(batch, height, width)
        with AttentionCapture(self.unet) as cap:
            for t in timesteps:
                ts = torch.full((batch,), int(t), dtype=torch.long, device=self.device)
                self.unet(latents.to(self.dtype), ts, **conditioning)
        return cap.maps()

    # -- captions: text encoders on demand, cross-attention ------------------------------------
    def _text_loader(self) -> tuple[_Loader, list[str], list[tuple[str, Any]]]:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        load = _Loader(self.preset, _model_folder(self.preset))
        if self.family == "sdxl":
            text = [
                ("text_encoder", CLIPTextModel),
                ("text_encoder_2", CLIPTextModelWithProjection),
            ]
            return load, ["tokenizer", "tokenizer_2"], text
        return load, ["tokenizer"], [("text_encoder", CLIPTextModel)]

    @property
    def tokenizer(self) -> Any:
        """The (first) CLIP tokenizer of the pipeline, loaded on first use (cheap: no weights).

        Its token positions are the prompt positions the cross-attention sees (SDXL's second
        tokenizer splits text identically; only its padding token differs).
        """
        tok = getattr(self, "_tokenizer", None)
        if tok is None:
            from transformers import CLIPTokenizer

            load, token_folders, _ = self._text_loader()
            tok = load.tokenizer(CLIPTokenizer, token_folders[0])
            self._tokenizer = tok
        return tok

    def _text_components(self) -> tuple[list[Any], list[Any]]:
        cached = getattr(self, "_text", None)
        if cached is None:
            from transformers import CLIPTokenizer

            load, token_folders, text = self._text_loader()
            tkw = {transformers_dtype_kw(): self.dtype, "use_safetensors": True}
            tokenizers = [load.tokenizer(CLIPTokenizer, sub) for sub in token_folders]
            encoders = [load(cls, sub, **tkw).to(self.device).eval() for sub, cls in text]
            cached = (tokenizers, encoders)
            self._text = cached
        return cached

    def release_text_encoders(self) -> None:
        """Free the text encoder(s) loaded for captions (they are re-loaded when needed)."""
        self._text = None

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditioning of ``prompt``: (1, L, D) embeddings and, for the SDXL family, the pooled
        (1, P) embedding, on the backbone's device in its dtype (as the empty prompt's).

        Loads the text encoder(s) on first use (see the module docstring).

        Raises:
            WeightsNotFoundError: the text encoder or tokenizer files are not reachable.
        """
        tokenizers, encoders = self._text_components()
        embeds, pooled = _encode_prompt(self.family, encoders, tokenizers, self.device, prompt)
        embeds = embeds.to(device=self.device, dtype=self.dtype)
        if pooled is not None:
            pooled = pooled.to(device=self.device, dtype=self.dtype)
        return embeds, pooled

    @torch.inference_mode()
    def cross_attention(
        self, latents: torch.Tensor, caption: str, *, timestep: int = ATTENTION_TIMESTEP
    ) -> list[dict[tuple[int, int], torch.Tensor]]:
        """Cross-attention of clean latents (B, 4, h8, w8) to the tokens of ``caption``.

        One UNet pass conditioned on the caption at the timestep embedding of ``timestep`` (no
        noise, as :meth:`attention`), with every ``attn2`` layer's head-averaged probabilities
        summed per query grid. Returns per image {(h, w): (T, h, w) float32 CPU tensor}, T the
        prompt length (77); ``[k]`` is the map of token k (position 0 is the start token), the T
        values at each location sum to 1.
        """
        embeds, pooled = self.encode_prompt(caption)
        batch = latents.shape[0]
        height = latents.shape[-2] * self.vae_scale_factor
        width = latents.shape[-1] * self.vae_scale_factor
        kwargs = self._conditioning(batch, height, width, embeds, pooled)
        ts = torch.full((batch,), int(timestep), dtype=torch.long, device=self.device)
        with CrossAttentionCapture(self.unet) as cap:
            self.unet(latents.to(self.dtype), ts, **kwargs)
        return cap.maps()

    # -- the public entry point --------------------------------------------------------------
    def encode(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        *,
        features: bool = True,
        attention: bool = False,
        size: int | None = None,
        timestep: int | None = None,
        seed: int = NOISE_SEED,
        attention_timestep: int | Sequence[int] = ATTENTION_TIMESTEP,
        square: bool = False,
        batch_size: int = 4,
    ) -> list[Encoding]:
        """Encode images: DiffCut features and/or DiffSeg/DWC self-attention.

        Args:
            images: a list of (H, W, 3) uint8 arrays (or one such array). Grayscale (H, W) and
                RGBA inputs are converted.
            features: compute the feature map (C, h, w) at the preset's feature layer.
            attention: compute the self-attention maps {(h, w): (h*w, h, w)}.
            size: long side in pixels after resizing (default the preset's resolution); both
                sides become multiples of :attr:`multiple` (64 for Stable Diffusion).
            timestep: DiffCut noise timestep (default the preset's, 50).
            seed: seed of the noise (shape (1, 4, H/8, W/8), shared by a batch).
            attention_timestep: timestep embedding of the attention pass (300), or a list of
                timesteps to average the attention over (DWC's multi-timestep option).
            square: centre-crop each image to a square first (the evaluation protocol).
            batch_size: images of equal processed size are encoded together, this many at once.
        Returns:
            One :class:`Encoding` per image, in input order: ``image`` the processed uint8 image,
            ``features`` float32 (C, h, w) or None, ``attention`` as above or {}, ``meta`` with
            backbone, repo, family, timestep(s), seed, image_size [H, W], original_size [H, W]
            and crop [top, left, height, width] or None.
        """
        if not features and not attention:
            raise ValueError("encode needs features=True and/or attention=True")
        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8:
            images = [images]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        t = int(self.preset.timestep if timestep is None else timestep)

        prepared = []
        for raw in images:
            img = _as_rgb(raw)
            original = [int(img.shape[0]), int(img.shape[1])]
            crop = None
            if square:
                img, crop = _center_square(img)
            h, w = self.processed_size(img.shape[0], img.shape[1], size=size)
            # a writable copy that belongs to the Encoding (never a view of the caller's array)
            prepared.append((np.array(_resize(img, h, w), dtype=np.uint8), original, crop))

        groups: dict[tuple[int, int], list[int]] = {}
        for i, (img, _, _) in enumerate(prepared):
            groups.setdefault(img.shape[:2], []).append(i)

        results: list[Encoding | None] = [None] * len(prepared)
        for (height, width), indices in groups.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                batch = np.stack([prepared[i][0] for i in chunk])
                z0 = self.latents(batch)
                feats = self.features(z0, timestep=t, seed=seed) if features else None
                maps = self.attention(z0, timestep=attention_timestep) if attention else None
                for j, i in enumerate(chunk):
                    img, original, crop = prepared[i]
                    meta = {
                        "backbone": self.preset.name,
                        "repo": self.preset.repo_id,
                        "family": self.family,
                        "seed": int(seed),
                        "image_size": [int(height), int(width)],
                        "original_size": original,
                        "crop": crop,
                        "dtype": str(self.dtype).replace("torch.", ""),
                    }
                    if features:
                        meta["timestep"] = t
                        meta["feature_layer"] = self.preset.feature_block
                    if attention:
                        meta["attention_timestep"] = (
                            int(attention_timestep) if isinstance(attention_timestep, int)
                            else [int(t) for t in attention_timestep]
                        )
                    results[i] = Encoding(
                        features=None if feats is None else feats[j].clone(),
                        attention={} if maps is None else maps[j],
                        image=img,
                        meta=meta,
                    )
        return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
#: The only files read from a hub repository: configs, tokenizers and safetensors weights of the
#: components segmentation needs (no safety checker, no .bin / .ckpt, no fp16 variants).
HUB_PATTERNS = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "tokenizer_2/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model-*-of-*.safetensors",
    "text_encoder/model.safetensors.index.json",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "text_encoder_2/model-*-of-*.safetensors",
    "text_encoder_2/model.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model-*-of-*.safetensors",
    "unet/diffusion_pytorch_model.safetensors.index.json",
]


def missing_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the files are not there' (not 'the files are broken')."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub import errors as hub_errors
    except ImportError:  # pragma: no cover
        return tuple(errors)
    for name in (
        "HfHubHTTPError",
        "HFValidationError",
        "LocalEntryNotFoundError",
        "EntryNotFoundError",
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "GatedRepoError",
        "OfflineModeIsEnabled",
    ):
        cls = getattr(hub_errors, name, None)
        if isinstance(cls, type):
            errors.append(cls)
    return tuple(errors)


def _model_folder(preset: BackbonePreset) -> Path:
    """The local folder holding the preset's files: the folder itself, or the hub snapshot
    (downloaded with progress if needed, from the cache only when offline)."""
    if preset.is_local:
        return Path(preset.repo_id)
    return hub_snapshot(preset.repo_id, HUB_PATTERNS,
                        f"the weights of backbone {preset.name!r} ({preset.repo_id})",
                        weights_help(preset.repo_id))


def _missing_files(folder: Path, family: str) -> list[str]:
    """What the folder lacks among the files loading needs (checked before reading anything)."""
    text = ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]
    tokenizers = ["tokenizer", "tokenizer_2"] if family == "sdxl" else ["tokenizer"]
    missing = []
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    for sub in tokenizers:
        d = folder / sub
        if not ((d / "tokenizer.json").is_file() or (d / "vocab.json").is_file()):
            missing.append(f"{sub}/vocab.json")
    for sub in [*text, "vae", "unet"]:
        d = folder / sub
        if not (d / "config.json").is_file():
            missing.append(f"{sub}/config.json")
        if not any(d.glob("*.safetensors")):
            missing.append(f"{sub}/*.safetensors")
    return missing


def transformers_dtype_kw() -> str:
    """The keyword transformers' ``from_pretrained`` takes a dtype by ("dtype" from 4.56 on)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class _Loader:
    """Reads one component from a local folder, turning 'not there' into WeightsNotFoundError."""

    def __init__(self, preset: BackbonePreset, folder: Path) -> None:
        self.preset = preset
        self.folder = folder
        self.errors = missing_errors()

    def missing(self, what: str) -> WeightsNotFoundError:
        source = self.preset.repo_id
        repo = None if self.preset.is_local else source
        where = source if self.preset.is_local else f"{source} (files in {self.folder})"
        return WeightsNotFoundError(
            f"cannot load backbone {self.preset.name!r} from {where}: {what}. {weights_help(repo)}"
        )

    def __call__(self, cls: Any, subfolder: str, **kwargs: Any) -> Any:
        if not (self.folder / subfolder).is_dir():
            raise self.missing(f"no {subfolder}/ folder")
        try:
            return cls.from_pretrained(
                str(self.folder), subfolder=subfolder, local_files_only=True, **kwargs
            )
        except self.errors as exc:
            raise self.missing(f"{subfolder}/: {describe_missing(exc)}") from None

    def tokenizer(self, cls: Any, subfolder: str) -> Any:
        # transformers 5 silently builds an empty tokenizer when the files are missing: check.
        d = self.folder / subfolder
        if not ((d / "tokenizer.json").is_file() or (d / "vocab.json").is_file()):
            raise self.missing(f"no {subfolder}/tokenizer.json or {subfolder}/vocab.json")
        return self(cls, subfolder)


def _encode_prompt(
    family: str, text_encoders: list[Any], tokenizers: list[Any], device: torch.device, prompt: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings of ``prompt``: (1, L, D) and, for the SDXL family, pooled (1, P).

    SD 1.x/2.x: the text encoder's last hidden state. SDXL family: the penultimate hidden states
    of both encoders concatenated, and the second encoder's projected pooled output (as
    ``StableDiffusionXLPipeline.encode_prompt`` does for a positive prompt).
    """
    hidden, pooled = [], None
    for enc, tok in zip(text_encoders, tokenizers, strict=True):
        ids = tok(
            prompt,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        with torch.inference_mode():
            if family == "sdxl":
                out = enc(ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
                    pooled = out[0]
            else:
                hidden.append(enc(ids)[0])
    return torch.cat(hidden, dim=-1), pooled


def load_backbone(
    name_or_path: str | os.PathLike | BackbonePreset = "ssd-1b",
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    cuda_dtype: torch.dtype | str | None = None,
) -> Backbone:
    """Load a diffusion backbone for encoding.

    Only the VAE, UNet, text encoder(s), tokenizer(s) and the scheduler config are read
    (safetensors only, never remote code). From the hub, only those files are downloaded
    (``HUB_PATTERNS``); with ``HF_HUB_OFFLINE`` set, or when the hub cannot be reached, only the
    local cache is used.

    Args:
        name_or_path: a preset name (``list_backbones()``), a local diffusers pipeline folder
            (e.g. written by ``save_pretrained``), or a hub repository id.
        device: default ``cuda`` if available, else ``cpu``.
        dtype: default ``cuda_dtype`` on CUDA (else bf16, or fp16), fp32 elsewhere. With an
            fp16 UNet the VAE holds fp16 weights but computes in fp32, as DiffCut's code does
            (its VAE runs under fp32 autocast; the SDXL-family VAE overflows in fp16).
        cuda_dtype: the precision to use on CUDA when ``dtype`` is None: a method's published
            one (``MethodSpec.cuda_dtype``: DiffCut fp16, DiffSeg fp32).
    Raises:
        WeightsNotFoundError: the weights are not reachable (offline, not cached, not a folder);
            the message is one line saying how to provide them.
    """
    preset = resolve_backbone(name_or_path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device, cuda_dtype)
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype

    folder = _model_folder(preset)

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    load = _Loader(preset, folder)
    missing = _missing_files(folder, preset.family)
    if missing:
        raise load.missing("missing " + ", ".join(missing))
    tkw = {transformers_dtype_kw(): dtype, "use_safetensors": True}
    if preset.family == "sdxl":
        text = [("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)]
        token_folders = ["tokenizer", "tokenizer_2"]
    else:
        text = [("text_encoder", CLIPTextModel)]
        token_folders = ["tokenizer"]

    scheduler = load(DDIMScheduler, "scheduler", timestep_spacing="trailing")
    tokenizers = [load.tokenizer(CLIPTokenizer, sub) for sub in token_folders]
    text_encoders = [load(cls, sub, **tkw).to(device).eval() for sub, cls in text]
    prompt_embeds, pooled = _encode_prompt(preset.family, text_encoders, tokenizers, device, "")
    del text_encoders  # only the cached empty-prompt embedding is needed from here on

    # loaded in the UNet's precision, then cast: fp16-rounded weights computing in fp32
    vae = load(AutoencoderKL, "vae", torch_dtype=dtype, use_safetensors=True)
    if vae_dtype != dtype:
        vae = vae.to(vae_dtype)
    unet = load(UNet2DConditionModel, "unet", torch_dtype=dtype, use_safetensors=True)
    vae = vae.to(device).eval()
    unet = unet.to(device).eval()
    return Backbone(
        preset,
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        prompt_embeds=prompt_embeds.to(device=device, dtype=dtype),
        pooled_embeds=None if pooled is None else pooled.to(device=device, dtype=dtype),
        device=device,
        dtype=dtype,
        vae_dtype=vae_dtype,
    )
