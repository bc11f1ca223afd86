"""The papers' numbers are found for the matching setting and shown beside ours."""

from __future__ import annotations

from diffuseg.eval.published import PUBLISHED, lookup
from diffuseg.eval.runner import results_markdown


def test_lookup_by_method_dataset_backbone_and_refinement():
    (p,) = lookup("diffcut", "coco-stuff-27", "ssd-1b", refine=True)
    assert p.value == 49.1 and p.protocol == "diffcut" and "DiffCut" in p.source
    assert lookup("diffcut", "voc", "ssd1b", refine=False)[0].value == 62.0  # alias
    assert lookup("diffcut", "ade20k-150", "sd1.4", refine=True)[0].value == 36.7
    diffseg = {q.metric: q.value for q in lookup("diffseg", "coco-stuff-27", "sd14")}
    assert diffseg == {"miou": 43.6, "pixel_accuracy": 72.5}
    assert lookup("ncut", "voc", None) == [] and lookup("diffcut", "voc", "/some/folder") == []
    assert len(PUBLISHED) == 3 + 18


def test_markdown_puts_published_beside_ours():
    pubs = [q.to_dict() for q in lookup("diffseg", "coco-stuff-27", "sd14")]
    row = {"dataset": "coco-stuff-27", "method": "diffseg", "backbone": "sd14",
           "protocol": "diffseg", "score_resolution": [512, 512], "num_images": 2175,
           "matching": "hungarian", "miou": 0.4312, "pixel_accuracy": 0.7201, "published": pubs}
    md = results_markdown([row])
    assert "| 512x512 | 2175 | hungarian | 43.1 | 72.0 | 43.6 | 72.5 |" in md
