"""The papers' published numbers, as data with citations (values in percent, as printed).

Sources (transcribed in /work/shared/design/METHODS.md sections 2 and 3):
- DiffSeg: Tian et al., "Diffuse, Attend, and Segment", CVPR 2024 (arXiv 2308.12469), main
  comparison table (Table 1): SD 1.4, 512x512, per-image Hungarian, no refinement.
- DiffCut: Couairon et al., "DiffCut", NeurIPS 2024 (arXiv 2406.02842), main comparison table
  (Table 1: SSD-1B with PAMR), its ablation without PAMR, and the SD 1.4 backbone row; 1024 input,
  scored at 128x128, per-image Hungarian with the many-to-one background rule on VOC, Context
  and COCO-Object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from diffuseg.backbones.registry import get_preset


@dataclass(frozen=True)
class Published:
    """One published number.

    Attributes:
        method, backbone (preset name), dataset (registry name), metric ("miou" or
        "pixel_accuracy"), value (percent), refine (PAMR on), protocol, source (citation).
    """

    method: str
    backbone: str
    dataset: str
    metric: str
    value: float
    refine: bool
    protocol: str
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


_DIFFSEG = "Tian et al. CVPR 2024 (DiffSeg), Table 1"
_DIFFCUT = "Couairon et al. NeurIPS 2024 (DiffCut), Table 1"
_DIFFCUT_NOPAMR = "Couairon et al. NeurIPS 2024 (DiffCut), ablation without PAMR"
_DIFFCUT_SD14 = "Couairon et al. NeurIPS 2024 (DiffCut), SD 1.4 backbone"

_DATASETS = ("voc", "context-59", "coco-object", "coco-stuff-27", "cityscapes-27", "ade20k-150")


def _diffcut_rows(backbone: str, refine: bool, values: tuple[float, ...], source: str) -> list:
    return [Published("diffcut", backbone, d, "miou", v, refine, "diffcut", source)
            for d, v in zip(_DATASETS, values, strict=True)]


PUBLISHED: tuple[Published, ...] = (
    Published("diffseg", "sd14", "coco-stuff-27", "pixel_accuracy", 72.5, False, "diffseg",
              _DIFFSEG),
    Published("diffseg", "sd14", "coco-stuff-27", "miou", 43.6, False, "diffseg", _DIFFSEG),
    Published("diffseg", "sd14", "cityscapes-27", "miou", 21.2, False, "diffseg", _DIFFSEG),
    *_diffcut_rows("ssd-1b", True, (65.2, 56.5, 34.1, 49.1, 30.6, 44.3), _DIFFCUT),
    *_diffcut_rows("ssd-1b", False, (62.0, 54.1, 32.0, 46.1, 28.4, 42.4), _DIFFCUT_NOPAMR),
    *_diffcut_rows("sd14", True, (57.5, 52.8, 30.0, 45.2, 24.5, 36.7), _DIFFCUT_SD14),
)


def _preset_name(backbone: str | None) -> str | None:
    if backbone is None:
        return None
    preset = get_preset(str(backbone))
    return preset.name if preset is not None else str(backbone)


def lookup(method: str, dataset: str, backbone: str | None, refine: bool | None = None,
           protocol: str | None = None) -> list[Published]:
    """Published numbers for this method, dataset and backbone (preset names or aliases).

    ``refine`` and ``protocol``, when given, must match too. Returns [] when none exist.
    """
    name = _preset_name(backbone)
    return [
        p for p in PUBLISHED
        if p.method == method and p.dataset == dataset and p.backbone == name
        and (refine is None or p.refine == bool(refine))
        and (protocol is None or p.protocol == protocol)
    ]
