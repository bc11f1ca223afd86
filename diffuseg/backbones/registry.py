"""Backbone presets: which diffusion model, at which resolution, read where, with which defaults.

A preset names a Hugging Face repository (or a local folder), its architecture family ("sd1",
"sd2", "sdxl"), the input resolution it was trained at, DiffCut's noise timestep, the module that
holds DiffCut's features, and per-method config overrides (e.g. DiffCut's tau 0.2 on SD 1.x).

:func:`resolve_backbone` turns a preset name, a preset's repository id, a local diffusers folder
or another hub repository id into a :class:`BackbonePreset`. Nothing here loads weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any


class WeightsNotFoundError(ValueError):
    """The backbone's weights (or configs) are not available: hub unreachable, not in the cache,
    or not a model folder. The message is one line that says how to provide them."""


_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (read now, not at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _hub_reachable(repo_id: str) -> bool:
    """Whether the hub answers for ``repo_id`` (one quick request, no retries).

    Returns False when the network is unreachable (then only the cache is used, instead of each
    file download retrying for ~20 s). Raises WeightsNotFoundError if the hub answers that the
    repository does not exist or is gated.
    """
    try:
        from huggingface_hub import HfApi
        from huggingface_hub import errors as hub_errors
    except ImportError:  # pragma: no cover
        return True
    try:
        HfApi().model_info(repo_id, timeout=10)
    except Exception as exc:
        fatal = tuple(
            c
            for c in (
                getattr(hub_errors, "RepositoryNotFoundError", None),
                getattr(hub_errors, "GatedRepoError", None),
                getattr(hub_errors, "HFValidationError", None),
            )
            if isinstance(c, type)
        )
        if fatal and isinstance(exc, fatal):
            raise WeightsNotFoundError(
                f"the Hugging Face hub cannot give {repo_id!r} ({exc.__class__.__name__}). "
                f"{weights_help(repo_id)}"
            ) from None
        return False
    return True


def hub_kwargs(local_folder: bool, repo_id: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` / ``hf_hub_download``.

    ``local_files_only`` when the source is a local folder, when ``HF_HUB_OFFLINE`` is set, or when
    ``repo_id`` is given and the hub cannot be reached; plus the cache folder from
    ``HF_HUB_CACHE`` / ``HF_HOME`` as they are set *now* (huggingface_hub reads them once at
    import).
    """
    offline = local_folder or hub_offline()
    if not offline and repo_id is not None and not _hub_reachable(repo_id):
        offline = True
    kwargs: dict[str, Any] = {"local_files_only": offline}
    if not local_folder:
        if os.environ.get("HF_HUB_CACHE"):
            kwargs["cache_dir"] = os.environ["HF_HUB_CACHE"]
        elif os.environ.get("HF_HOME"):
            kwargs["cache_dir"] = os.path.join(os.environ["HF_HOME"], "hub")
    return kwargs


def hub_snapshot(repo_id: str, patterns: list[str], what: str, help_text: str) -> Path:
    """The local snapshot of ``repo_id`` holding only ``patterns``: downloaded (with progress)
    if needed, read from the cache only when offline (:func:`hub_kwargs`).

    Raises:
        WeightsNotFoundError: "cannot get {what}: {reason}. {help_text}" (one line).
    """
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=patterns,
                                   **hub_kwargs(False, repo_id))
    except Exception as exc:  # offline cache miss, network, missing repo, bad id
        raise WeightsNotFoundError(
            f"cannot get {what}: {describe_missing(exc)}. {help_text}"
        ) from None
    return Path(folder)


def describe_missing(exc: BaseException) -> str:
    """A short, one-line reason for a loading failure (for WeightsNotFoundError messages)."""
    name = exc.__class__.__name__
    if name == "LocalEntryNotFoundError" or (name == "OfflineModeIsEnabled"):
        return "not found in the local Hugging Face cache"
    text = " ".join(str(exc).split()).rstrip(".")
    if len(text) > 160:
        text = text[:157].rstrip(". ") + "..."
    return f"{name}: {text}" if text else name


DIFFUSERS_FOLDER = ("--backbone FOLDER (backbone=FOLDER in Python: a diffusers pipeline folder, "
                    "written by save_pretrained or by `hf download OWNER/NAME --local-dir FOLDER`)")


def weights_help(repo_id: str | None, local: str = DIFFUSERS_FOLDER) -> str:
    """One sentence (no newline) on how to provide weights for ``repo_id``.

    Args:
        repo_id: the hub repository, or None when unknown (then no download command is named).
        local: how to name a local copy, e.g. the option and the folder layout it wants.
    """
    text = f"Provide the weights with {local}"
    if repo_id:
        text += f", or download them once with `hf download {repo_id}`"
    if hub_offline():
        text += " (HF_HUB_OFFLINE is set: only the local Hugging Face cache is searched)."
    else:
        text += "; HF_HUB_OFFLINE=1 uses the cache without network."
    if local == DIFFUSERS_FOLDER:
        text += " `--method ncut` needs no weights."
    return text


FAMILIES = ("sd1", "sd2", "sdxl")

#: DiffCut's feature layer: ``attn1`` of the last transformer block of the last attention module
#: of the last down block that has attention (SDXL family: ``down_blocks[-1]``; SD 1.x/2.x:
#: ``down_blocks[-2]``, the last one being attention-free).
FEATURE_BLOCKS = {
    "sdxl": "down_blocks[-1].attentions[-1].transformer_blocks[-1].attn1",
    "sd1": "down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1",
    "sd2": "down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1",
}

#: DiffCut's noise timestep (METHODS.md section 1).
DIFFCUT_TIMESTEP = 50

#: Per-family method defaults (METHODS.md section 3; SD 1.x tau from the official repo's issue #5).
FAMILY_METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "sdxl": {"diffcut": {"tau": 0.5, "alpha": 10}, "diffseg": {}, "dwc": {}},
    "sd1": {"diffcut": {"tau": 0.2, "alpha": 10}, "diffseg": {}, "dwc": {}},
    "sd2": {"diffcut": {"tau": 0.2, "alpha": 10}, "diffseg": {}, "dwc": {}},
}


def _freeze(d: dict[str, dict[str, Any]]) -> MappingProxyType:
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in d.items()})


@dataclass(frozen=True)
class BackbonePreset:
    """A diffusion backbone and how diffuseg reads it.

    Attributes:
        name: the name users type (``"ssd-1b"``), or the folder / repository for ad-hoc models.
        repo_id: Hugging Face repository id, or an absolute local folder path.
        family: "sd1", "sd2" or "sdxl" (SDXL, SSD-1B, Vega: two text encoders, time ids).
        resolution: the input's long side in pixels (the training resolution), a multiple of 64.
        timestep: DiffCut's noise timestep (``scheduler.add_noise`` at this t).
        feature_block: dotted path (with ``[i]`` indices) from the UNet to DiffCut's feature layer.
        method_defaults: method name -> config overrides applied before the user's (read-only).
    """

    name: str
    repo_id: str
    family: str
    resolution: int
    timestep: int = DIFFCUT_TIMESTEP
    feature_block: str = ""
    method_defaults: Any = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if not self.feature_block:
            object.__setattr__(self, "feature_block", FEATURE_BLOCKS[self.family])
        object.__setattr__(self, "method_defaults", _freeze(dict(self.method_defaults)))

    @property
    def is_local(self) -> bool:
        """True if ``repo_id`` is a local folder."""
        return os.path.isdir(self.repo_id)

    def defaults_for(self, method: str) -> dict[str, Any]:
        """A fresh dict of the config overrides this backbone sets for ``method`` (maybe empty)."""
        return dict(self.method_defaults.get(method, {}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (for ``diffuseg backbones`` and result metadata)."""
        return {
            "name": self.name,
            "repo_id": self.repo_id,
            "family": self.family,
            "resolution": self.resolution,
            "timestep": self.timestep,
            "feature_block": self.feature_block,
            "method_defaults": {k: dict(v) for k, v in self.method_defaults.items()},
        }


def _preset(name: str, repo_id: str, family: str, resolution: int) -> BackbonePreset:
    return BackbonePreset(
        name=name,
        repo_id=repo_id,
        family=family,
        resolution=resolution,
        timestep=DIFFCUT_TIMESTEP,
        feature_block=FEATURE_BLOCKS[family],
        method_defaults=FAMILY_METHOD_DEFAULTS[family],
    )


PRESETS: dict[str, BackbonePreset] = {
    p.name: p
    for p in (
        _preset("sd14", "CompVis/stable-diffusion-v1-4", "sd1", 512),
        _preset("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd1", 512),
        _preset("sd21", "stabilityai/stable-diffusion-2-1", "sd2", 768),
        _preset("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024),
        _preset("ssd-1b", "segmind/SSD-1B", "sdxl", 1024),
        _preset("vega", "segmind/Segmind-Vega", "sdxl", 1024),
    )
}

_ALIASES = {
    "sd1.4": "sd14",
    "sd-1.4": "sd14",
    "sd1.5": "sd15",
    "sd-1.5": "sd15",
    "sd2.1": "sd21",
    "sd-2.1": "sd21",
    "ssd1b": "ssd-1b",
    "ssd_1b": "ssd-1b",
    "segmind-vega": "vega",
    "runwayml/stable-diffusion-v1-5": "sd15",
}


def list_backbones() -> list[str]:
    """Names of the built-in presets, in a stable order (SD 1.x first, SDXL family last)."""
    return list(PRESETS)


def get_preset(name: str) -> BackbonePreset | None:
    """The preset called ``name`` (case-insensitive; a preset's repo id also works), else None."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    for preset in PRESETS.values():
        if preset.repo_id.lower() == key:
            return preset
    return None


def looks_like_path(name: str) -> bool:
    """A path rather than a hub id ``owner/name``."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or (len(name) > 1 and name[1] == ":")  # Windows drive
        or os.path.exists(name)
    )


def family_from_configs(model_index: dict[str, Any] | None, unet_config: dict[str, Any]) -> str:
    """Architecture family from a pipeline's ``model_index.json`` and its UNet ``config.json``.

    SDXL family if the pipeline has a second text encoder or the UNet takes SDXL's time ids
    (``addition_embed_type == "text_time"``); otherwise SD 2.x if ``cross_attention_dim`` is 1024,
    else SD 1.x.
    """
    if (model_index and model_index.get("text_encoder_2")) or unet_config.get(
        "addition_embed_type"
    ) == "text_time":
        return "sdxl"
    cross = unet_config.get("cross_attention_dim")
    if isinstance(cross, (list, tuple)):
        cross = cross[0]
    return "sd2" if cross == 1024 else "sd1"


def resolution_from_configs(unet_config: dict[str, Any], vae_config: dict[str, Any] | None) -> int:
    """Input resolution in pixels: ``unet.sample_size * vae_scale_factor``.

    The VAE scale factor is ``2 ** (len(vae.block_out_channels) - 1)`` (8 for Stable Diffusion).
    """
    sample = unet_config.get("sample_size") or 64
    if isinstance(sample, (list, tuple)):
        sample = max(sample)
    channels = (vae_config or {}).get("block_out_channels") or (0, 0, 0, 0)
    return int(sample) * 2 ** (len(channels) - 1)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsNotFoundError(
            f"cannot read {path} ({exc.__class__.__name__}). {weights_help(str(path.parent))}"
        ) from None


def _preset_from_folder(folder: Path, name: str | None = None) -> BackbonePreset:
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise WeightsNotFoundError(f"no model folder at {folder}. {weights_help(None)}")
    index_path = folder / "model_index.json"
    unet_path = folder / "unet" / "config.json"
    if not unet_path.is_file():
        raise WeightsNotFoundError(
            f"{folder} is not a diffusers pipeline folder (no unet/config.json). "
            f"{weights_help(None)}"
        )
    model_index = _read_json(index_path) if index_path.is_file() else None
    unet_config = _read_json(unet_path)
    vae_path = folder / "vae" / "config.json"
    vae_config = _read_json(vae_path) if vae_path.is_file() else None
    family = family_from_configs(model_index, unet_config)
    return BackbonePreset(
        name=name or folder.name,
        repo_id=str(folder),
        family=family,
        resolution=resolution_from_configs(unet_config, vae_config),
        timestep=DIFFCUT_TIMESTEP,
        feature_block=FEATURE_BLOCKS[family],
        method_defaults=FAMILY_METHOD_DEFAULTS[family],
    )


def _preset_from_hub(repo_id: str) -> BackbonePreset:
    """Describe a hub repository that is not a preset, from its configs (download or cache)."""
    kwargs = hub_kwargs(local_folder=False, repo_id=repo_id)
    try:
        from huggingface_hub import hf_hub_download

        index = json.loads(Path(hf_hub_download(repo_id, "model_index.json", **kwargs)).read_text())
        unet = json.loads(Path(hf_hub_download(repo_id, "unet/config.json", **kwargs)).read_text())
        vae_file = hf_hub_download(repo_id, "vae/config.json", **kwargs)
        vae = json.loads(Path(vae_file).read_text())
    except Exception as exc:  # hub errors, offline cache misses, bad repo ids, bad JSON
        raise WeightsNotFoundError(
            f"cannot find the model {repo_id!r}: {describe_missing(exc)}. {weights_help(repo_id)}"
        ) from None
    family = family_from_configs(index, unet)
    return BackbonePreset(
        name=repo_id,
        repo_id=repo_id,
        family=family,
        resolution=resolution_from_configs(unet, vae),
        method_defaults=FAMILY_METHOD_DEFAULTS[family],
    )


def resolve_backbone(name_or_path: str | os.PathLike | BackbonePreset) -> BackbonePreset:
    """A :class:`BackbonePreset` for a preset name, a local folder, or a hub repository id.

    Args:
        name_or_path: a preset name from :func:`list_backbones` (case-insensitive), a preset's
            repository id, a local diffusers pipeline folder (family detected from its
            ``model_index.json`` / ``unet/config.json``, resolution = ``unet.sample_size`` x the
            VAE's scale factor), or another ``owner/name`` hub repository (its configs are fetched,
            from the cache only when ``HF_HUB_OFFLINE`` is set).
    Raises:
        WeightsNotFoundError: a path that is not a model folder, or a repository that cannot be
            reached or found in the cache.
    """
    if isinstance(name_or_path, BackbonePreset):
        return name_or_path
    name = os.fspath(name_or_path)
    preset = get_preset(name)
    if preset is not None:
        return preset
    if os.path.isdir(os.path.expanduser(name)) or looks_like_path(name):
        return _preset_from_folder(Path(name))
    if name.count("/") == 1 and all(name.split("/")):
        return _preset_from_hub(name)
    raise ValueError(
        f"unknown backbone {name!r}: use one of {list_backbones()}, a local diffusers folder, "
        "or a Hugging Face repository id (owner/name)"
    )
