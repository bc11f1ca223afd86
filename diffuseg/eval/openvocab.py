"""The open-vocabulary metric as DiffCut reports it: per-image Jaccard, averaged over images.

DiffCut's ``eval_diffcut_openvoc.py`` calls torchmetrics' ``JaccardIndex(task="multiclass",
num_classes=N)`` (macro average) once per image and averages those values over the images. The
macro average of one image is the mean IoU over the classes present in its ground truth or its
prediction (a class absent from both has no union and is left out). No matching: predictions are
class ids. That is not the dataset-level mIoU of the unsupervised protocol (one confusion matrix
over all images); :class:`OpenVocabScores` reports both.

Class names (with background where the dataset has one) come from ``eval/labelmaps.py``:
VOC 21, Pascal Context 60, COCO-Object 81 (:data:`OPEN_VOCAB_CLASSES`, the names reports use).

The text CLIP compares against is DiffCut's vocabulary (:data:`DIFFCUT_VOCABULARY`), not the bare
names. Facts, from DiffCut's ``eval_diffcut_openvoc.py`` (PaulCouairon/DiffCut) and the FC-CLIP
files it reads (bytedance/fc-clip ``fcclip/data/datasets``):

- DiffCut takes its class names from FC-CLIP's detectron2 metadata, which are FC-CLIP's
  prompt-engineered synonym lists (``pascal_voc_21_with_prompt_eng.txt``,
  ``pascal_ctx_59_with_prompt_eng.txt``, ``coco_panoptic_with_prompt_eng.txt``). VOC uses the
  21 ``stuff_classes`` of ``openvocab_pascal21_sem_seg_val`` as they are, background included
  (whose line lists many stuff words: "background, crops, bush, ..."). Pascal Context uses the 59
  ``stuff_classes`` of ``openvocab_pascal_ctx59_sem_seg_val`` and COCO-Object the 80
  ``thing_classes`` of ``openvocab_coco_2017_val_panoptic`` (that metadata has no
  ``stuff_classes``), each with a plain "background" inserted first.
- Synonyms of a class are scored by their maximum ("max ensemble"), each synonym's embedding
  being the mean over the 14 ViLD templates (``diffuseg.labels.clip.build_text_classifier``).
- The argmax runs over every class: ``get_classification_logits`` appends one extra column (a
  copy of the last synonym's logit, labelled "void") and the script drops exactly that column.
- Ground truth: VOC void (255) and Pascal Context's unlabeled become background, and COCO-Object
  stuff and unlabeled become background (DiffCut's ``get_fine_to_coarse`` maps them to -1, then
  adds 1); no pixel is ignored. The loaders of ``eval/datasets.py`` already do the same.

Transcription notes: the synonym lists are FC-CLIP's text (its spelling "childeren" kept: it is what
CLIP reads); the two repeated words of VOC's background line ("bag", "tiles") are listed once,
which cannot change a maximum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffuseg.eval import labelmaps as lm

__all__ = [
    "DIFFCUT_VOCABULARY",
    "OPEN_VOCAB_CLASSES",
    "VOCABULARIES",
    "OpenVocabScores",
    "class_counts",
    "class_iou",
    "counts_jaccard",
    "image_jaccard",
    "open_vocab_prompts",
]

#: dataset name -> class names in class-id order (background first).
OPEN_VOCAB_CLASSES: dict[str, tuple[str, ...]] = {
    "voc": tuple(lm.VOC_CLASSES),
    "context-59": tuple(lm.CONTEXT59_CLASSES),
    "coco-object": ("background", *lm.COCO_THING_CLASSES),
}

_PERSON = ("person, child, girl, boy, woman, man, people, childeren, girls, boys, women, men, "
           "lady, guy, ladies, guys")
_POTTED = "pottedplant, pottedplants, plant pot, plant pots, planter, planters"
_TRAIN = "train, trains, locomotive, locomotives, freight train"

#: DiffCut's text for each class id (FC-CLIP's prompt-engineered synonyms, comma-separated).
DIFFCUT_VOCABULARY: dict[str, tuple[str, ...]] = {
    "voc": (
        "background, crops, bush, shrub, tiles, pavement, rug, carpet, box, boxes, speaker, "
        "storage, painting, board, panel, poster, clock, cage, drinking glass, park, plaything, "
        "toy, fireplace, bag, bed, bench, book, books, building, buildings, cabinet, drawer, "
        "ceiling, computer, computer case, cup, cups, door, fence, floor, flower, grass, lawn, "
        "turf, ground, soil, dirt, keyboard, lamp, mountain, hills, mouse, curtain, platform, "
        "sign, street, rock, stone, shelf, sidewalk, sky, clouds, snow, track, train track, tree, "
        "trees, wall, water, window, wood, woods",
        "aeroplane, airplane, aeroplanes, airplanes",
        "bicycle, bicycles, bike, bikes",
        "bird, birds",
        "boat, boats",
        "bottle, bottles, water bottle",
        "bus, buses",
        "car, cars",
        "cat, cats, kitties, kitty",
        "chair, chairs",
        "cow, cows, calf",
        "diningtable, dining table, diningtables, dining tables, plate, plates",
        "dog, dogs, puppy, puppies",
        "horse, horses, foal",
        "motorbike, motorcycle, motorbikes, motorcycles",
        _PERSON + ", clothes",
        _POTTED,
        "sheep",
        "sofa, sofas",
        _TRAIN,
        "tvmonitor, monitor, tv",
    ),
    "context-59": (
        "background",
        "aeroplane, aeroplanes, airplanes, airplane",
        "bag, bags",
        "bed, beds",
        "bedclothes",
        "bench, benches",
        "bicycle, bicycles",
        "bird, birds",
        "boat, boats",
        "book, books",
        "bottle, bottles, water bottle",
        "building, buildings",
        "bus, buses",
        "cabinet, cabinets, drawer, drawers",
        "car, cars",
        "cat, cats, kitties, kitty",
        "ceiling",
        "chair, chairs",
        "cloth, clothes",
        "computer case",
        "cow, cows",
        "cup, cups",
        "curtain, curtains",
        "dog, dogs, puppy, puppies",
        "door, doors",
        "fence, fences",
        "floor, tile ground, carpet, rug, flooring",
        "flower, flowers",
        "food",
        "grass, grasses, lawn, turf",
        "ground, soil, soil ground, dirt ground",
        "horse, horses, foal",
        "keyboard, keyboards",
        "lamp, lamps, bulb, bulbs",
        "motorbike, motorcycle, motorbikes, motorcycles",
        "mountain, mountains",
        "mouse",
        _PERSON,
        "plate, plates",
        "platform, platforms",
        _POTTED,
        "street, streets",
        "rock, rocks, stone, stones",
        "sheep",
        "shelves, shelf",
        "sidewalk",
        "sign, signs",
        "sky, clouds",
        "snow",
        "sofa",
        "diningtable, diningtables, table, tables, desk, desks, side table, side tables, "
        "coffee table",
        "track, train track, railroad",
        _TRAIN,
        "tree, trees",
        "truck, trucks",
        "tvmonitor, monitor, tv",
        "wall, walls",
        "water",
        "window, windows",
        "wood piece",
    ),
    "coco-object": (
        "background",
        _PERSON.replace("childeren", "children") + ", clothes",
        "bicycle, bicycles, bike, bikes",
        "car, cars",
        "motorcycle, motorcycles",
        "airplane, airplanes",
        "bus, buses",
        _TRAIN,
        "truck, trucks",
        "boat, boats",
        "traffic light",
        "fire hydrant",
        "stop sign",
        "parking meter",
        "bench, benches",
        "bird, birds",
        "cat, cats, kitties, kitty",
        "dog, dogs, puppy, puppies",
        "horse, horses, foal",
        "sheep",
        "cow, cows, calf",
        "elephant, elephants",
        "bear, bears",
        "zebra, zebras",
        "giraffe, giraffes",
        "backpack, backpacks",
        "umbrella, umbrellas",
        "handbag, handbags",
        "tie",
        "suitcase, suitcases",
        "frisbee",
        "skis",
        "snowboard",
        "sports ball",
        "kite, kites",
        "baseball bat",
        "baseball glove",
        "skateboard",
        "surfboard",
        "tennis racket",
        "bottle, bottles, water bottle",
        "wine glass, wine glasses, wineglass",
        "cup, cups, water cup, water glass",
        "fork, forks",
        "knife, knives",
        "spoon, spoons",
        "bowl, bowls",
        "banana, bananas",
        "apple, apples, apple fruit",
        "sandwich, sandwiches",
        "orange fruit",
        "broccoli",
        "carrot, carrots",
        "hot dog",
        "pizza",
        "donut, donuts",
        "cake, cakes",
        "chair, chairs",
        "couch, sofa, sofas",
        "potted plant, potted plants, pottedplant, pottedplants, planter, planters",
        "bed, beds",
        "dining table, dining tables, diningtable, diningtables, plate, plates, "
        "diningtable tablecloth",
        "toilet",
        "tv",
        "laptop",
        "mouse",
        "tv remote, remote control",
        "keyboard",
        "cell phone, mobile",
        "microwave",
        "oven, ovens",
        "toaster",
        "sink, sinks",
        "refrigerator, fridge",
        "book, books",
        "clock",
        "vase, vases",
        "scissor, scissors",
        "teddy bear, teddy bears",
        "hair drier",
        "toothbrush, toothbrushes",
    ),
}

#: Vocabulary name -> dataset -> text per class id: "diffcut" (DiffCut's synonym lists, the
#: default) or "names" (the bare class names of :data:`OPEN_VOCAB_CLASSES`).
VOCABULARIES: dict[str, dict[str, tuple[str, ...]]] = {
    "diffcut": DIFFCUT_VOCABULARY,
    "names": OPEN_VOCAB_CLASSES,
}

for _name, _names in OPEN_VOCAB_CLASSES.items():
    assert len(DIFFCUT_VOCABULARY[_name]) == len(_names), _name


def open_vocab_prompts(dataset: str, vocabulary: str = "diffcut") -> tuple[str, ...]:
    """The text of each class id of an open-vocabulary dataset.

    Args:
        dataset: "voc", "context-59" or "coco-object".
        vocabulary: "diffcut" (synonym lists, scored by their maximum) or "names".
    Raises:
        ValueError: another dataset or vocabulary (the message lists the valid ones).
    """
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {vocabulary!r}; available: "
                         f"{', '.join(VOCABULARIES)}")
    if dataset not in OPEN_VOCAB_CLASSES:
        raise ValueError(f"open-vocabulary evaluation is defined for "
                         f"{', '.join(OPEN_VOCAB_CLASSES)} (DiffCut's benchmark), not {dataset!r}")
    return VOCABULARIES[vocabulary][dataset]


def _confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int,
               ignore_index: int | None) -> np.ndarray:
    gt = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred differ in size: {gt.size} vs {pred.size}")
    keep = np.ones(gt.shape, dtype=bool) if ignore_index is None else gt != ignore_index
    gt, pred = gt[keep], pred[keep]
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f"ground-truth class ids outside 0..{num_classes - 1}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted class ids outside 0..{num_classes - 1}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _macro_iou(hist: np.ndarray) -> float:
    inter = np.diag(hist).astype(np.float64)
    union = hist.sum(0) + hist.sum(1) - inter
    seen = union > 0
    if not seen.any():
        return float("nan")
    return float((inter[seen] / union[seen]).mean())


def image_jaccard(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                  ignore_index: int | None = 255) -> float:
    """Mean IoU of one image over the classes present in ``gt`` or ``pred``.

    Args:
        gt: (H, W) int class ids 0..num_classes-1, or ``ignore_index`` for pixels not scored.
        pred: (H, W) int predicted class ids 0..num_classes-1.
        num_classes: N.
        ignore_index: ground-truth value whose pixels are left out (None: none; DiffCut's code
            has none, its loaders map void to a class).
    Returns:
        float in [0, 1]; NaN if no pixel is scored.
    """
    return _macro_iou(_confusion(gt, pred, num_classes, ignore_index))


def class_counts(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                 ignore_index: int | None = 255) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class pixel counts of one image: (tp, fp, fn), each int64 (num_classes,).

    tp = pixels of class c predicted c, fp = predicted c but another class, fn = class c
    predicted as another class; pixels whose ground truth is ``ignore_index`` are left out.
    """
    h = _confusion(gt, pred, num_classes, ignore_index)
    tp = np.diag(h).astype(np.int64)
    return tp, h.sum(0).astype(np.int64) - tp, h.sum(1).astype(np.int64) - tp


def class_iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """IoU per class, tp / (tp + fp + fn); NaN for a class with no union."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    union = tp + fp + fn
    out = np.full(tp.shape, np.nan)
    np.divide(tp, union, out=out, where=union > 0)
    return out


def counts_jaccard(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """Macro Jaccard from per-class counts: the mean IoU over the classes with a union (the value
    :func:`image_jaccard` gives for one image's counts, the dataset mIoU for summed counts);
    NaN when no class has one."""
    iou = class_iou(tp, fp, fn)
    seen = ~np.isnan(iou)
    return float(iou[seen].mean()) if seen.any() else float("nan")


@dataclass
class OpenVocabScores:
    """Accumulates per-image Jaccard (DiffCut's number) and a dataset confusion matrix.

    Usage::

        scores = OpenVocabScores(num_classes=21)
        for gt, pred in pairs:
            scores.add(gt, pred)
        scores.miou             # mean of per-image Jaccard (images with no scored pixel skipped)
        scores.dataset_miou     # mIoU of the summed confusion matrix
    """

    num_classes: int
    ignore_index: int | None = 255
    per_image: list[float] = field(default_factory=list)
    hist: np.ndarray | None = None

    def add(self, gt: np.ndarray, pred: np.ndarray) -> float:
        """Score one image; returns its Jaccard (NaN if nothing scored)."""
        h = _confusion(gt, pred, self.num_classes, self.ignore_index)
        self.hist = h if self.hist is None else self.hist + h
        value = _macro_iou(h)
        self.per_image.append(value)
        return value

    @property
    def miou(self) -> float:
        """Per-image Jaccard averaged over the images that have scored pixels (NaN if none)."""
        vals = [v for v in self.per_image if not np.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def dataset_miou(self) -> float:
        """Mean IoU over the classes seen in the summed confusion matrix."""
        return float("nan") if self.hist is None else _macro_iou(self.hist)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "miou_per_image": self.miou,
            "miou_dataset": self.dataset_miou,
            "images": len(self.per_image),
        }
