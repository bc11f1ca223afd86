"""The papers' published numbers, as data with citations (values in percent, as printed).

Sources (transcribed in /work/shared/design/METHODS.md sections 2 and 3):
- DiffSeg: Tian et al., "Diffuse, Attend, and Segment", CVPR 2024 (arXiv 2308.12469), main
  comparison table (Table 1): SD 1.4, 512x512, per-image Hungarian, no refinement.
- DiffCut: Couairon et al., "DiffCut", NeurIPS 2024 (arXiv 2406.02842), main comparison table
  (Table 1: SSD-1B with PAMR), its ablation without PAMR, and the SD 1.4 backbone row; 1024 input,
  scored at 128x128, per-image Hungarian with the many-to-one background rule on VOC, Context
  and COCO-Object.
- DiffCut's open-vocabulary numbers (metric ``"miou_open_vocab"``, :data:`PUBLISHED_OPEN_VOCAB`):
  its open-vocabulary comparison, SSD-1B with PAMR, segments named by CLIP ConvNeXt-L
  (``convnext_large_d_320`` / ``laion2b_s29b_b131k_ft_soup``) mask classification; the metric is
  per-image Jaccard averaged over images (``eval_diffcut_openvoc.py``; see eval/openvocab.py).
  These three values (VOC 63.0, Context 24.6, COCO-Object 36.0) are not in METHODS.md: they
  are quoted from the paper by the project's issue 7 ("Naming the segments"); the paper's table
  itself could not be read here to check the setting (backbone, PAMR) they belong to.
  DiffCut's script scores them at 1024x1024 with PAMR run at 1024 (15 iterations, dilations
  1, 2, 4, 8, 12, 24, 32, 64); they are listed under the "diffcut" protocol.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from diffuseg.backbones.registry import get_preset


@dataclass(frozen=True)
class Published:
    """One published number.

    Attributes:
        method, backbone (preset name), dataset (registry name), metric ("miou",
        "pixel_accuracy" or "miou_open_vocab"), value (percent), refine (PAMR on), protocol,
        source (citation).
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
_DIFFCUT_OV = ("Couairon et al. NeurIPS 2024 (DiffCut), open-vocabulary comparison (SSD-1B + PAMR, "
               "CLIP ConvNeXt-L mask classification, per-image Jaccard)")

#: The metric name of open-vocabulary mIoU (DiffCut's per-image Jaccard averaged over images).
OPEN_VOCAB_METRIC = "miou_open_vocab"

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

#: Open-vocabulary mIoU (kept apart from :data:`PUBLISHED`, the unsupervised numbers).
PUBLISHED_OPEN_VOCAB: tuple[Published, ...] = tuple(
    Published("diffcut", "ssd-1b", d, OPEN_VOCAB_METRIC, v, True, "diffcut", _DIFFCUT_OV)
    for d, v in (("voc", 63.0), ("context-59", 24.6), ("coco-object", 36.0))
)


def _preset_name(backbone: str | None) -> str | None:
    if backbone is None:
        return None
    preset = get_preset(str(backbone))
    return preset.name if preset is not None else str(backbone)


def lookup(method: str, dataset: str, backbone: str | None, refine: bool | None = None,
           protocol: str | None = None, metric: str | None = None) -> list[Published]:
    """Published numbers for this method, dataset and backbone (preset names or aliases).

    ``refine``, ``protocol`` and ``metric``, when given, must match too (without ``metric``:
    every metric, the open-vocabulary one included). Returns [] when none exist.
    """
    name = _preset_name(backbone)
    return [
        p for p in (*PUBLISHED, *PUBLISHED_OPEN_VOCAB)
        if p.method == method and p.dataset == dataset and p.backbone == name
        and (refine is None or p.refine == bool(refine))
        and (protocol is None or p.protocol == protocol)
        and (metric is None or p.metric == metric)
    ]
