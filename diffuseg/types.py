"""The two values that flow through diffuseg: an ``Encoding`` (what the diffusion model saw) and a
``Segmentation`` (what a method made of it).

``Backbone.encode`` is the expensive step (one UNet pass); ``Method.segment`` is cheap and pure.
An Encoding is saved to / loaded from ``.safetensors`` so that a user encodes once and segments
many times with other settings, without the model.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

_ATTN_PREFIX = "attention."

#: Encoding.meta keys whose value must be a string (when present).
_META_STRINGS = ("backbone", "repo", "dtype", "feature_layer", "source")
#: Encoding.meta keys whose value must be [H, W], two positive integers (when present).
_META_SIZES = ("original_size", "image_size")


def _meta_int(value: Any, key: str, minimum: int | None = None) -> int:
    """``value`` as an int: an int (numpy's too; not a bool) or an integral finite float (48.0),
    >= minimum."""
    what = "an integer" if minimum is None else f"an integer >= {minimum}"
    if (isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real)
            or (not isinstance(value, numbers.Integral)
                and not float(value).is_integer())  # 47.9, nan, inf
            or (minimum is not None and value < minimum)):
        raise ValueError(f"meta {key!r} must be {what}, got {value!r}")
    return int(value)


def _meta_ints(value: Any, key: str, count: int, what: str, minimums: tuple[int, ...]) -> list[int]:
    if not isinstance(value, list | tuple) or len(value) != count:
        raise ValueError(f"meta {key!r} must be {what}, got {value!r}")
    try:
        return [_meta_int(v, key, m) for v, m in zip(value, minimums, strict=True)]
    except ValueError:
        raise ValueError(f"meta {key!r} must be {what}, got {value!r}") from None


def _checked_meta(meta: Any) -> dict[str, Any]:
    """Validate the keys of ``Encoding.meta`` that diffuseg reads; returns ``meta`` itself, or a
    shallow copy with integral floats (48.0) made ints. Other keys are free.

    Schema: a dict with string keys; ``original_size`` / ``image_size`` two positive integers;
    ``crop`` null or [top, left, height, width] (top, left >= 0, height, width >= 1); ``family``
    one of the known families (``diffuseg.backbones.registry.FAMILIES``); ``backbone``, ``repo``,
    ``dtype``, ``feature_layer``, ``source`` strings; ``seed`` an integer; ``timestep`` an integer
    >= 0; ``attention_timestep`` an integer >= 0 or a non-empty list of them.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict (a JSON object), got {type(meta).__name__}")
    bad_keys = [k for k in meta if not isinstance(k, str)]
    if bad_keys:
        raise ValueError(f"meta keys must be strings, got {bad_keys[0]!r}")
    fixed: dict[str, Any] = {}
    for key in _META_SIZES:
        if key in meta:
            fixed[key] = _meta_ints(meta[key], key, 2, "[H, W], two positive integers", (1, 1))
    if "crop" in meta and meta["crop"] is not None:
        fixed["crop"] = _meta_ints(meta["crop"], "crop", 4, "null or [top, left, height, width] "
                                   "(integers, top and left >= 0, height and width >= 1)",
                                   (0, 0, 1, 1))
    for key in _META_STRINGS:
        if key in meta and not isinstance(meta[key], str):
            raise ValueError(f"meta {key!r} must be a string, got {meta[key]!r}")
    if "family" in meta:
        from diffuseg.backbones.registry import FAMILIES

        if not isinstance(meta["family"], str) or meta["family"] not in FAMILIES:
            raise ValueError(
                f"meta 'family' must be one of {', '.join(FAMILIES)}, got {meta['family']!r}"
            )
    if "seed" in meta:
        fixed["seed"] = _meta_int(meta["seed"], "seed")
    if "timestep" in meta:
        fixed["timestep"] = _meta_int(meta["timestep"], "timestep", 0)
    if "attention_timestep" in meta:
        value = meta["attention_timestep"]
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("meta 'attention_timestep' must be an integer >= 0 or a "
                                 "non-empty list of them, got []")
            fixed["attention_timestep"] = [_meta_int(v, "attention_timestep", 0) for v in value]
        else:
            fixed["attention_timestep"] = _meta_int(value, "attention_timestep", 0)
    # repr tells 48.0 from 48 and (48, 64) from [48, 64], which == does not
    changed = {k: v for k, v in fixed.items() if repr(meta[k]) != repr(v)}
    return {**meta, **changed} if changed else meta


def _load_error(path: Path, exc: BaseException, what: str, hint: str = "") -> ValueError:
    """One-line ``ValueError`` naming ``path`` for an error met while loading it (kept as it is
    when it already names the file)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if str(path) in message:
        return ValueError(message)
    return ValueError(f"{what} {path}: {hint + ': ' if hint else ''}{message}")


def _grid_of_key(key: str) -> tuple[int, int]:
    """(h, w) of an ``attention.<h>x<w>`` tensor name."""
    parts = key[len(_ATTN_PREFIX):].split("x")
    if len(parts) != 2 or not all(p.isdigit() and p.isascii() for p in parts):
        raise ValueError(f"tensor {key!r} is not named attention.<h>x<w>")
    h, w = int(parts[0]), int(parts[1])
    if h < 1 or w < 1:
        raise ValueError(f"tensor {key!r} names an empty grid")
    return h, w


@dataclass
class Encoding:
    """What one image looks like to a diffusion UNet.

    Attributes:
        features: float tensor (C, h, w), the feature map at the backbone's feature layer
            (DiffCut's signal), or None if not captured. (h, w) is the real token grid.
        attention: query grid (h, w) -> float tensor (h*w, h, w): head-averaged self-attention
            probabilities averaged over the layers of that grid; row q is a probability map over
            keys (sums to 1). Empty if not captured.
        image: (H, W, 3) uint8, the processed image the backbone saw (after resizing), or None.
        meta: JSON-serialisable facts: backbone, timestep, sizes, seed, ... The keys diffuseg
            reads are checked on construction and on :meth:`load` (``_checked_meta``: sizes two
            positive integers, a known family, string names, ...; integral floats such as 48.0
            are kept as ints, 47.9 is a ``ValueError``); other keys are free.

    Construction checks structure only (shapes, dtypes, grids, meta); the values (NaN, inf,
    negative attention) are checked by the methods that read them.
    """

    features: torch.Tensor | None = None
    attention: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    image: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Cheap structural checks only (shapes, dtypes, meta schema); the values (NaN, negative
        # attention, ...) are checked by the methods that read them.
        if self.features is not None:
            if not isinstance(self.features, torch.Tensor):
                self.features = torch.as_tensor(np.asarray(self.features))
            if self.features.ndim != 3:
                raise ValueError(
                    f"Encoding.features must be (C, h, w), got shape {tuple(self.features.shape)}"
                )
            if not torch.is_floating_point(self.features):
                raise ValueError(f"Encoding.features must be floating point, got "
                                 f"{self.features.dtype}")
            if min(self.features.shape) < 1:
                raise ValueError(
                    "Encoding.features must have at least one channel and a non-empty token "
                    f"grid, got shape {tuple(self.features.shape)}"
                )
        if not isinstance(self.attention, dict):
            raise ValueError(f"Encoding.attention must be a dict grid -> tensor, got "
                             f"{type(self.attention).__name__}")
        for grid, attn in list(self.attention.items()):
            if not (isinstance(grid, tuple) and len(grid) == 2 and all(
                    isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in grid)):
                raise ValueError(f"attention grids must be (h, w) tuples of positive ints, got "
                                 f"{grid!r}")
            if not isinstance(attn, torch.Tensor):
                attn = self.attention[grid] = torch.as_tensor(np.asarray(attn))
            h, w = grid
            if tuple(attn.shape) != (h * w, h, w):
                raise ValueError(
                    f"attention for grid {grid} must be ({h * w}, {h}, {w}), got "
                    f"{tuple(attn.shape)}"
                )
            if not torch.is_floating_point(attn):
                raise ValueError(f"attention for grid {grid} must be floating point, got "
                                 f"{attn.dtype}")
        self.meta = _checked_meta(self.meta)
        if self.image is not None:
            img = np.asarray(self.image)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError("Encoding.image must be an (H, W, 3) uint8 array")
            self.image = img

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid (h, w) of the features, else of the finest attention grid."""
        if self.features is not None:
            return int(self.features.shape[1]), int(self.features.shape[2])
        if self.attention:
            return max(self.attention, key=lambda g: g[0] * g[1])
        raise ValueError("this Encoding holds neither features nor attention")

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the processed image, else of the original image recorded in meta."""
        if self.image is not None:
            return int(self.image.shape[0]), int(self.image.shape[1])
        if "image_size" in self.meta:
            h, w = self.meta["image_size"]
            return int(h), int(w)
        raise ValueError("this Encoding records no image size")

    def to(self, device: torch.device | str) -> Encoding:
        """A copy whose tensors live on ``device``."""
        return Encoding(
            features=None if self.features is None else self.features.to(device),
            attention={g: a.to(device) for g, a in self.attention.items()},
            image=self.image,
            meta=dict(self.meta),
        )

    def save(self, path: str | Path) -> None:
        """Write to ``path`` (.safetensors), atomically (temp file, then rename)."""
        from safetensors.torch import save_file

        from diffuseg.io import atomic_path

        tensors: dict[str, torch.Tensor] = {}
        if self.features is not None:
            tensors["features"] = self.features.detach().to("cpu").contiguous()
        for (h, w), attn in self.attention.items():
            tensors[f"{_ATTN_PREFIX}{h}x{w}"] = attn.detach().to("cpu").contiguous()
        if self.image is not None:
            tensors["image"] = torch.from_numpy(np.ascontiguousarray(self.image))
        metadata = {"diffuseg.meta": json.dumps(self.meta), "diffuseg.format": "encoding/1"}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Encoding:
        """Read an Encoding written by :meth:`save` (safetensors: no code is unpickled).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: naming the file, for anything else wrong with it: not a safetensors file
                (random bytes, truncated), not a diffuseg Encoding, ``diffuseg.meta`` not a JSON
                object or breaking the meta schema (sizes two positive integers, a known family,
                string names, ...), tensors of the wrong rank, shape or dtype (features (C, h, w),
                attention ``attention.<h>x<w>`` of shape (h*w, h, w), image (H, W, 3) uint8).
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no Encoding file at {path}")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                metadata = f.metadata() or {}
                if metadata.get("diffuseg.format") != "encoding/1":
                    raise ValueError(f"{path} is a safetensors file but not a diffuseg Encoding")
                keys = list(f.keys())
                features = f.get_tensor("features") if "features" in keys else None
                attention: dict[tuple[int, int], torch.Tensor] = {}
                for key in keys:
                    if key.startswith(_ATTN_PREFIX):
                        grid = _grid_of_key(key)
                        if grid in attention:
                            raise ValueError(f"two attention tensors for grid {grid}")
                        attention[grid] = f.get_tensor(key)
                image = None
                if "image" in keys:
                    pixels = f.get_tensor("image")
                    if pixels.dtype != torch.uint8:
                        raise ValueError(f"image must be uint8, got {pixels.dtype}")
                    image = pixels.cpu().numpy()
        except Exception as exc:  # safetensors raises its own error type on bad headers
            corrupt = type(exc).__name__ == "SafetensorError" or isinstance(exc, OSError)
            raise _load_error(path, exc, "cannot read Encoding", "not a valid safetensors file "
                              "(truncated or corrupt)" if corrupt else "") from exc
        text = metadata.get("diffuseg.meta", "{}")
        try:
            meta = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"invalid Encoding {path}: diffuseg.meta is not valid JSON "
                             f"({' '.join(str(exc).split())})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"invalid Encoding {path}: diffuseg.meta must be a JSON object, got "
                             f"{'null' if meta is None else type(meta).__name__}")
        try:
            return cls(features=features, attention=attention, image=image, meta=meta)
        except ValueError as exc:
            raise _load_error(path, exc, "invalid Encoding") from None


@dataclass
class HierarchyNode:
    """One node of a recursive cut: a set of tokens, and whether (and how well) it was split.

    Attributes:
        id: index in ``Hierarchy.nodes`` (the root is 0).
        parent: parent id, None for the root.
        children: the two child ids if the split was accepted, else ().
        depth: 0 at the root.
        size: number of tokens in the node.
        ncut: NCut value of the best bipartition found (None if none was possible).
        leaves: labels of the leaf segments below this node (a leaf holds its own label).
    """

    id: int
    parent: int | None
    children: tuple[int, ...]
    depth: int
    size: int
    ncut: float | None
    leaves: tuple[int, ...]

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass
class Hierarchy:
    """The binary tree of accepted splits of a recursive cut; leaves are the segments."""

    nodes: list[HierarchyNode]

    @property
    def depth(self) -> int:
        return max((n.depth for n in self.nodes), default=0)

    def labels_at_depth(self, labels: np.ndarray | torch.Tensor, depth: int) -> np.ndarray:
        """Merge a leaf label map up to the tree cut at ``depth``.

        Args:
            labels: int array of leaf labels (any shape).
            depth: 0 gives one segment; >= ``self.depth`` gives the leaves.
        Returns:
            int32 array of the same shape, labels 0..K_d-1 ordered by each region's smallest
            leaf label (so the leaves themselves keep their labels).
        """
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        remap = np.zeros(max((max(n.leaves) for n in self.nodes if n.leaves), default=0) + 1,
                         dtype=np.int32)
        regions = sorted((n.leaves for n in self.nodes
                          if n.leaves and (n.depth == depth or (n.is_leaf and n.depth < depth))),
                         key=min)
        for k, leaves in enumerate(regions):
            remap[list(leaves)] = k
        return remap[labels]

    def to_dict(self) -> list[dict[str, Any]]:
        return [
            {
                "id": n.id,
                "parent": n.parent,
                "children": list(n.children),
                "depth": n.depth,
                "size": n.size,
                "ncut": n.ncut,
                "leaves": list(n.leaves),
            }
            for n in self.nodes
        ]

    @classmethod
    def from_dict(cls, rows: list[dict[str, Any]]) -> Hierarchy:
        return cls(
            [
                HierarchyNode(
                    id=r["id"],
                    parent=r["parent"],
                    children=tuple(r["children"]),
                    depth=r["depth"],
                    size=r["size"],
                    ncut=r["ncut"],
                    leaves=tuple(r["leaves"]),
                )
                for r in rows
            ]
        )


def segment_records(labels: np.ndarray) -> list[dict[str, Any]]:
    """Per-label records of a label map: label, area (pixels), bbox [x, y, w, h] (XYWH).

    Args:
        labels: (H, W) int array with values 0..K-1.
    """
    labels = np.asarray(labels)
    records = []
    for k in np.unique(labels):
        ys, xs = np.nonzero(labels == k)
        x0, y0 = int(xs.min()), int(ys.min())
        records.append(
            {
                "label": int(k),
                "area": int(ys.size),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
            }
        )
    return records


@dataclass
class Segmentation:
    """What a method made of an image.

    Attributes:
        labels: (H, W) int32, values 0..K-1, every value present.
        hierarchy: tree of the recursive cut (cut-based methods), else None.
        segments: one record per label: {"label", "area", "bbox" [x, y, w, h]}, plus
            "leaf" (cut-based methods) and "name" (+ "score" for classes, "merged_from" when
            segments of one class were merged) once named (:meth:`Segmenter.name`).
        config: the resolved settings that produced it (method, backbone, every parameter).
        token_labels: (h, w) int32 labels on the token grid before concept assignment, if any.
    """

    labels: np.ndarray
    hierarchy: Hierarchy | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    token_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 2:
            raise ValueError(f"Segmentation.labels must be (H, W), got {labels.shape}")
        self.labels = labels.astype(np.int32, copy=False)
        if not self.segments:
            self.segments = segment_records(self.labels)

    @property
    def num_segments(self) -> int:
        return len(self.segments)

    def labels_at_depth(self, depth: int) -> np.ndarray:
        """The label map with the hierarchy cut at ``depth`` (0: one segment; deep: the leaves).

        Hierarchy leaves are leaf ids of the cut; each segment record's ``"leaf"`` says which leaf
        a label came from (they differ only when refinement removed a segment).
        """
        if self.hierarchy is None:
            raise ValueError("this segmentation has no hierarchy (not a cut-based method)")
        return self.hierarchy.labels_at_depth(self.method_labels, depth)

    def at_depth(self, depth: int) -> Segmentation:
        """A new Segmentation of the regions at ``depth`` of the hierarchy (0: one segment).

        Its labels are :meth:`labels_at_depth`; each record lists, as ``"leaves"``, the leaf
        ids of the full cut the region merges; ``config["depth"]`` says the depth. It has no
        hierarchy of its own (the tree is the full segmentation's).

        Raises:
            ValueError: no hierarchy, or a negative depth.
        """
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        labels = self.labels_at_depth(depth)
        leaves = self.method_labels
        records = segment_records(labels)
        for record in records:
            record["leaves"] = sorted(int(x) for x in np.unique(leaves[labels == record["label"]]))
        return Segmentation(labels=labels, segments=records,
                            config={**self.config, "depth": int(depth)})

    @property
    def method_labels(self) -> np.ndarray:
        """(H, W) int64: each pixel's id as the method made it, before labels were made
        consecutive (a cut's leaf id, DiffSeg's proposal index): ``labels`` mapped through each
        record's ``"leaf"``. Ids of segments that never won a pixel are absent. Evaluation scores
        these raw ids, as the official code does (they decide Hungarian ties)."""
        leaf_of_label = np.zeros(int(self.labels.max()) + 1 if self.labels.size else 0, np.int64)
        for s in self.segments:
            leaf_of_label[s["label"]] = s.get("leaf", s["label"])
        return leaf_of_label[self.labels]

    @property
    def names(self) -> dict[int, str]:
        """{label: name} of the named segments (after naming by classes or a caption)."""
        return {s["label"]: s["name"] for s in self.segments if s.get("name") is not None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary: config, segments, hierarchy (no pixel data)."""
        return {
            "config": self.config,
            "size": list(self.labels.shape),
            "num_segments": self.num_segments,
            "segments": self.segments,
            "hierarchy": None if self.hierarchy is None else self.hierarchy.to_dict(),
        }
