"""The classical baseline: Shi-Malik normalized cut on the image itself (no weights needed).

Shi & Malik (2000) segment an image by cutting the graph whose affinity combines brightness/colour
and position: w_ij = exp(-|F_i - F_j|^2 / sigma_c^2) * exp(-|X_i - X_j|^2 / sigma_x^2) for pixels
closer than a radius, 0 beyond. Here F is CIELAB colour of a downsampled pixel grid (long side
``grid``), X its position in grid units, and the cut is the same recursive engine as DiffCut's.
Concept assignment back to full resolution gives every pixel the segment whose prototype (mean
colour and position) is nearest in the same scaled (colour, position) space, using the full-
resolution colours, so boundaries follow the image rather than the coarse grid.

It lets ``diffuseg segment`` run anywhere, offline, and it is the floor every diffusion method
must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffuseg.graph.ncut import recursive_ncut
from diffuseg.methods import MethodSpec, register
from diffuseg.methods.assign import segment_prototypes
from diffuseg.methods.common import finish, output_size_for, working_size
from diffuseg.methods.config import MethodConfig, setting
from diffuseg.types import Encoding, Segmentation


@dataclass(frozen=True)
class ClassicNCutConfig(MethodConfig):
    """Settings of the classical image normalized cut.

    Attributes:
        grid: long side of the pixel grid the graph is built on (nodes = grid^2 * aspect).
        sigma_color: colour scale in CIELAB units.
        sigma_space: spatial scale as a fraction of the grid's long side.
        radius: neighbours farther than this fraction of the long side get zero affinity.
        tau: accept a split when its NCut < tau.
        min_size: smallest segment as a fraction of the node count.
        max_depth: depth limit of the recursion.
        refine: PAMR + median filter after assignment.
        refine_iterations, refine_dilations, median: PAMR iterations and dilations, median size.
        max_side: labels are computed at the output size capped to this long side.
    """

    grid: int = setting(48, ge=2)
    sigma_color: float = setting(12.0, gt=0)
    sigma_space: float = setting(0.25, gt=0)
    radius: float = setting(0.35, gt=0)
    tau: float = setting(0.1, gt=0)
    min_size: float = setting(0.01, ge=0, lt=0.5)
    max_depth: int | None = setting(8, ge=0)
    refine: bool = False
    refine_iterations: int = setting(10, ge=1)
    refine_dilations: tuple[int, ...] = setting((1, 2, 4, 8), ge=1)
    median: int = setting(3, ge=1, odd=True)
    max_side: int | None = setting(1024, ge=1)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (3, H, W) float in [0, 1] to CIELAB (D65 white) (3, H, W): L in [0, 100]."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = torch.tensor(
        [[0.4124564, 0.3575761, 0.1804375],
         [0.2126729, 0.7151522, 0.0721750],
         [0.0193339, 0.1191920, 0.9503041]],
        dtype=rgb.dtype, device=rgb.device,
    )
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,jhw->ihw", to_xyz, linear) / white[:, None, None]
    eps = 216 / 24389
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), (24389 / 27 * xyz + 16) / 116)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _scaled_features(image: torch.Tensor, size: tuple[int, int], long_side: int,
                     config: ClassicNCutConfig) -> torch.Tensor:
    """(h*w, 5) features [Lab / sigma_color, y / sigma, x / sigma] of ``image`` resized to size.

    Positions are measured in units of the graph grid (whose long side is ``long_side``), so the
    same prototype is comparable at every resolution.
    """
    h, w = size
    small = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                          antialias=True)[0].clamp(0, 1)
    lab = rgb_to_lab(small).reshape(3, -1).T / config.sigma_color
    scale = long_side / max(h, w)
    ys, xs = torch.meshgrid(
        (torch.arange(h, dtype=image.dtype) + 0.5) * scale,
        (torch.arange(w, dtype=image.dtype) + 0.5) * scale,
        indexing="ij",
    )
    sigma = config.sigma_space * long_side
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1) / sigma
    return torch.cat([lab, pos], dim=1)


def image_affinity(
    features: torch.Tensor, config: ClassicNCutConfig, long_side: int
) -> torch.Tensor:
    """Shi-Malik affinity of (N, 5) scaled colour+position features: (N, N) float32."""
    colour, pos = features[:, :3], features[:, 3:]
    d_colour = torch.cdist(colour, colour).square_()
    d_pos = torch.cdist(pos, pos).square_()
    weights = torch.exp_(-(d_colour + d_pos))
    too_far = d_pos > (config.radius / config.sigma_space) ** 2
    weights[too_far] = 0.0
    return weights


def run_classic(
    encoding: Encoding, config: ClassicNCutConfig, output_size: tuple[int, int] | None = None
) -> Segmentation:
    """Segment ``encoding.image`` by a recursive normalized cut of its colour+position graph.

    Args:
        encoding: needs ``image`` (H, W, 3) uint8.
        config: the settings.
        output_size: (H, W) of the labels; default the original image size.
    Returns:
        Segmentation with labels (H, W), the cut hierarchy and the grid's token labels.
    """
    if encoding.image is None:
        raise ValueError("the classical ncut method needs Encoding.image")
    if config.grid < 2:
        raise ValueError("grid must be at least 2")
    image = torch.from_numpy(np.ascontiguousarray(encoding.image)).permute(2, 0, 1).float() / 255
    height, width = encoding.image.shape[:2]
    scale = config.grid / max(height, width)
    grid = (max(1, round(height * scale)), max(1, round(width * scale)))
    long_side = max(grid)
    tokens = _scaled_features(image, grid, long_side, config)
    weights = image_affinity(tokens, config, long_side)
    n = tokens.shape[0]
    cut = recursive_ncut(
        weights,
        config.tau,
        min_size=max(1, int(round(config.min_size * n))),
        max_depth=config.max_depth,
        self_loops=False,
    )
    k = cut.num_segments
    prototypes = segment_prototypes(tokens, cut.labels, k)
    out = output_size_for(encoding, output_size)
    work = working_size(out, config.max_side)
    pixels = _scaled_features(image, work, long_side, config)
    # argmin |f - p|^2 == argmax 2 f.p - |p|^2
    scores = pixels @ (2 * prototypes.T) - prototypes.square().sum(dim=1)[None]
    labels = scores.argmax(dim=1).reshape(work)
    return finish(
        labels,
        encoding,
        out,
        config,
        "ncut",
        hierarchy=cut.hierarchy,
        token_labels=cut.labels.reshape(grid),
    )


register(
    MethodSpec(
        name="ncut",
        config_cls=ClassicNCutConfig,
        run=run_classic,
        needs=frozenset({"image"}),
        summary="classical Shi-Malik normalized cut on colour and position (no weights needed)",
    )
)
