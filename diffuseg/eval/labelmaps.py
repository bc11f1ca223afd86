"""Label maps of the evaluation datasets, as plain data with their sources.

Every dataset's raw label PNG is turned into evaluation class ids through a 256-entry lookup table
(:func:`lookup_table`): raw value v -> class id, or :data:`IGNORE` (255) for pixels not scored.

Sources (facts carried over, written out here):
- COCO-Stuff fine ids are the pixel values of the ``stuffthingmaps_trainval2017`` PNGs: COCO
  category id - 1, so 0..90 are things (11 of them unused since COCO 2017), 91..181 stuff,
  255 unlabeled. The fine -> 27 coarse map is IIC's ``cocostuff_fine_to_coarse`` (Ji et al. 2019),
  reused verbatim by PiCIE and STEGO (mhamilton723/STEGO ``src/data.py``, ``Coco.fine_to_coarse``)
  and by DiffSeg / DiffCut; coarse ids 0..11 are things, 12..26 stuff, in STEGO's order.
- COCO-Object: the 80 COCO thing categories in category-id order -> 1..80, every stuff id and 255
  -> 0 (background), as METHODS.md section 6 specifies. (DiffCut's code reads the same mapping
  from a pickle, ``coco_object_mapping.pickle``, that we do not load: never unpickle.)
- Cityscapes-27: ``gtFine_labelIds`` 7..33 -> 0..26 (the 27 classes of the cityscapesScripts
  ``labels.py`` table with ids 7..33, in id order), every other id ignored (STEGO / DiffSeg).
- Pascal VOC 2012: 0 background, 1..20 the classes, 255 void -> background (METHODS.md section 6).
- Pascal Context-59: 0 background, 1..59 in the order of mmsegmentation's
  ``PascalContextDataset59`` (the 59 most frequent classes of Mottaghi et al. 2014).
- ADE20K-150 (SceneParsing ``ADEChallengeData2016``): 0 "other" ignored, 1..150 -> 0..149, names
  in mmsegmentation's ``ADE20KDataset`` order. ``diffcut_compat``: DiffCut's code scores raw
  values 0..149 as classes and drops 150 (METHODS.md section 6).
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

# -- COCO-Stuff ---------------------------------------------------------------------------------
#: Coarse class of each fine COCO-Stuff id 0..181 (IIC / STEGO ``fine_to_coarse``), 10 a line.
COCO_FINE_TO_COARSE27: tuple[int, ...] = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8,  # 0-9: person, bicycle..truck, boat
    8, 8, 8, 8, 8, 7, 7, 7, 7, 7,  # 10-19
    7, 7, 7, 7, 7, 6, 6, 6, 6, 6,  # 20-29
    6, 6, 6, 10, 10, 10, 10, 10, 10, 10,  # 30-39
    10, 10, 10, 5, 5, 5, 5, 5, 5, 5,  # 40-49
    5, 2, 2, 2, 2, 2, 2, 2, 2, 2,  # 50-59
    2, 3, 3, 3, 3, 3, 3, 3, 3, 3,  # 60-69
    3, 0, 0, 0, 0, 0, 0, 1, 1, 1,  # 70-79
    1, 1, 1, 4, 4, 4, 4, 4, 4, 4,  # 80-89
    4, 17, 17, 22, 20, 20, 22, 15, 25, 16,  # 90-99: ..., banner, blanket, branch, bridge
    13, 12, 12, 17, 17, 23, 15, 15, 17, 15,  # 100-109
    21, 15, 25, 13, 13, 13, 13, 13, 22, 26,  # 110-119
    14, 14, 15, 22, 21, 21, 24, 20, 22, 15,  # 120-129
    17, 16, 15, 22, 24, 21, 17, 25, 16, 21,  # 130-139
    17, 22, 16, 21, 21, 25, 21, 26, 21, 24,  # 140-149
    20, 17, 14, 21, 26, 15, 23, 20, 21, 24,  # 150-159
    15, 24, 22, 25, 15, 20, 17, 17, 22, 14,  # 160-169
    18, 18, 18, 18, 18, 18, 18, 26, 26, 19,  # 170-179
    19, 24,  # 180-181: window-blind, window-other
)

#: The 27 coarse classes (STEGO's order: 12 things, then 15 stuff).
COCO_STUFF27_CLASSES: tuple[str, ...] = (
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen",
    "accessory", "animal", "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial", "textile", "wall",
    "window", "building", "ground", "plant", "sky", "solid", "structural", "water",
)

#: COCO category ids (1-based) removed from the 2017 release: never present in the maps.
COCO_UNUSED_THING_IDS: tuple[int, ...] = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)

#: The 80 COCO thing classes in category-id order (COCO-Object classes 1..80).
COCO_THING_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

# -- Cityscapes ---------------------------------------------------------------------------------
#: labelIds 7..33 in id order (cityscapesScripts ``helpers/labels.py``).
CITYSCAPES27_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail",
    "bridge", "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "caravan", "trailer", "train",
    "motorcycle", "bicycle",
)
CITYSCAPES_FIRST_ID = 7

# -- Pascal -------------------------------------------------------------------------------------
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

CONTEXT59_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate",
    "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water",
    "window", "wood",
)

# -- ADE20K -------------------------------------------------------------------------------------
ADE20K150_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


# -- lookup tables ------------------------------------------------------------------------------
def _table(default: int) -> np.ndarray:
    return np.full(256, default, dtype=np.int64)


def coco_stuff27_table() -> np.ndarray:
    """Fine COCO-Stuff id (0..181, 255) -> coarse 0..26; 182..254 and 255 -> IGNORE."""
    lut = _table(IGNORE)
    lut[: len(COCO_FINE_TO_COARSE27)] = COCO_FINE_TO_COARSE27
    return lut


def coco_object_table() -> np.ndarray:
    """Fine COCO-Stuff id -> COCO-Object class: the 80 used thing ids -> 1..80, all else -> 0."""
    lut = _table(0)
    things = [i for i in range(1, 91) if i not in COCO_UNUSED_THING_IDS]  # 1-based category ids
    for k, cat_id in enumerate(things, start=1):
        lut[cat_id - 1] = k  # map pixel value = category id - 1
    return lut


def cityscapes27_table() -> np.ndarray:
    """Cityscapes labelId -> 0..26 for ids 7..33, else IGNORE."""
    lut = _table(IGNORE)
    n = len(CITYSCAPES27_CLASSES)
    lut[CITYSCAPES_FIRST_ID : CITYSCAPES_FIRST_ID + n] = np.arange(n)
    return lut


def voc_table() -> np.ndarray:
    """VOC SegmentationClass index -> 0..20; 255 (void boundary) -> 0 (background)."""
    lut = _table(IGNORE)
    lut[:21] = np.arange(21)
    lut[255] = 0
    return lut


def context59_table() -> np.ndarray:
    """Pascal Context-59 label -> 0..59 (0 background); 255 and anything above 59 -> 0."""
    lut = _table(0)
    lut[:60] = np.arange(60)
    return lut


def ade20k150_table(diffcut_compat: bool = False) -> np.ndarray:
    """ADE20K label -> class. Default: 0 -> IGNORE, 1..150 -> 0..149. ``diffcut_compat``:
    0..149 -> 0..149 unchanged (0 "other" scored as class 0), 150 and 255 -> IGNORE."""
    lut = _table(IGNORE)
    if diffcut_compat:
        lut[:150] = np.arange(150)
    else:
        lut[1:151] = np.arange(150)
    return lut


def lookup_table(name: str, **kw) -> np.ndarray:
    """The 256-entry lookup table of a dataset name (see :data:`TABLES`)."""
    return TABLES[name](**kw)


TABLES = {
    "coco-stuff-27": coco_stuff27_table,
    "coco-object": coco_object_table,
    "cityscapes-27": cityscapes27_table,
    "voc": voc_table,
    "context-59": context59_table,
    "ade20k-150": ade20k150_table,
}

assert len(COCO_FINE_TO_COARSE27) == 182
assert len(COCO_STUFF27_CLASSES) == 27 and len(CITYSCAPES27_CLASSES) == 27
assert len(COCO_THING_CLASSES) == 80 and len(VOC_CLASSES) == 21
assert len(CONTEXT59_CLASSES) == 60 and len(ADE20K150_CLASSES) == 150
