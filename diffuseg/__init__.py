"""diffuseg: segment any image with no training and no labels, by reading a pre-trained
text-to-image diffusion model. DiffSeg, DiffCut and DWC behind one API.

    >>> import diffuseg
    >>> seg = diffuseg.segment("photo.jpg", method="diffcut", backbone="ssd-1b")
    >>> seg.labels        # (H, W) int32, values 0..K-1
    >>> seg.hierarchy     # the tree of accepted cuts
"""

from diffuseg.methods import list_methods
from diffuseg.segmenter import Segmenter, segment
from diffuseg.types import Encoding, Hierarchy, HierarchyNode, Segmentation

__version__ = "0.1.0"


def list_backbones() -> list[str]:
    """Names of the backbone presets (a local model folder works wherever a name does)."""
    from diffuseg.backbones.registry import list_backbones as _list

    return _list()


def load_backbone(name_or_path, device=None, dtype=None):
    """Load a diffusion backbone by preset name or local folder (see diffuseg.backbones)."""
    from diffuseg.backbones import load_backbone as _load

    return _load(name_or_path, device=device, dtype=dtype)


__all__ = [
    "Encoding",
    "Hierarchy",
    "HierarchyNode",
    "Segmentation",
    "Segmenter",
    "list_backbones",
    "list_methods",
    "load_backbone",
    "segment",
    "__version__",
]
