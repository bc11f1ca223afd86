"""Feature hook (early exit) and self-attention capture."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from diffuseg.backbones.capture import AttentionCapture, FeatureHook, get_module, token_grid

# query grid -> number of attn1 layers, tiny models at a 128 x 128 input (latent 16 x 16)
SD1_COUNTS = {(16, 16): 3, (8, 8): 3, (4, 4): 3, (2, 2): 1}  # down 1+1+1, mid 1, up 2+2+2
SDXL_COUNTS = {(8, 8): 3, (4, 4): 8}  # down 1 | 1x2, mid 2, up 2x2 | 2x1


# ---------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    ("n", "latent", "grid"),
    [
        (256, (16, 16), (16, 16)),
        (64, (16, 16), (8, 8)),
        (4, (16, 16), (2, 2)),
        (8 * 16, (8, 16), (8, 16)),
        (2, (8, 16), (1, 2)),
        (12, (5, 7), (3, 4)),  # odd sizes round up at each stride-2 level
        (4, (5, 7), (2, 2)),
        (64, None, (8, 8)),
    ],
)
def test_token_grid(n, latent, grid):
    assert token_grid(n, latent) == grid


def test_token_grid_errors():
    with pytest.raises(ValueError):
        token_grid(48, (16, 16))
    with pytest.raises(ValueError):
        token_grid(48, None)


def test_get_module_paths():
    root = nn.Module()
    root.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Tanh())])
    assert isinstance(get_module(root, "blocks[-1][1]"), nn.Tanh)
    assert get_module(root, "blocks[0]") is root.blocks[0]
    with pytest.raises(ValueError, match="blocks\\[5\\]"):
        get_module(root, "blocks[5]")
    with pytest.raises(ValueError, match="nope"):
        get_module(root, "blocks[0].nope")


def test_feature_hook_stops_and_cleans_up():
    seen = []
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 6))
    model[2].register_forward_hook(lambda *a: seen.append("last"))
    x = torch.randn(2, 3)
    with FeatureHook(model[1], stop=True) as hook:
        model(x)
        seen.append("after the call")  # never reached: the pass was aborted
    assert hook.stopped and hook.calls == 1 and seen == []
    torch.testing.assert_close(hook.output, model[1](model[0](x)))
    assert not model[1]._forward_hooks  # removed
    with FeatureHook(model[1], stop=False) as hook2:
        y = model(x)
    assert not hook2.stopped and y.shape == (2, 6) and seen == ["last"]
    with pytest.raises(RuntimeError, match="boom"), FeatureHook(model[1]):
        raise RuntimeError("boom")  # other exceptions propagate
    with pytest.raises(RuntimeError, match="did not run"):
        FeatureHook(model[1]).run(model[0], x)


# ---------------------------------------------------------------------------------- attention
def _inputs(backbone, make_image, sizes=((128, 128),), seed=0):
    imgs = [make_image(h, w, seed=seed + i) for i, (h, w) in enumerate(sizes)]
    import numpy as np

    z = backbone.latents(np.stack(imgs))
    h, w = sizes[0]
    return z, backbone._conditioning(len(imgs), h, w)


def test_rows_sum_to_one_and_shapes(backbone, family, make_image):
    (enc,) = backbone.encode([make_image(128, 128)], size=128, features=False, attention=True)
    expected = SD1_COUNTS if family == "sd1" else SDXL_COUNTS
    assert set(enc.attention) == set(expected)
    for (h, w), maps in enc.attention.items():
        assert maps.shape == (h * w, h, w) and maps.dtype == torch.float32
        assert not maps.is_inference()  # usable (in place too) outside inference_mode
        assert maps.device.type == "cpu"
        assert (maps >= 0).all()
        sums = maps.reshape(h * w, -1).sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)
    assert enc.features is None


def test_layer_counts_and_processors_restored(backbone, family, make_image):
    unet = backbone.unet
    before = dict(unet.attn_processors)
    z, cond = _inputs(backbone, make_image)
    with AttentionCapture(unet) as cap, torch.inference_mode():
        inside = unet.attn_processors
        n_attn1 = sum(k.endswith("attn1.processor") for k in inside)
        assert len(cap.layer_names) == n_attn1
        # only attn1 replaced: every attn2 keeps its original processor object
        for k, proc in inside.items():
            if k.endswith("attn2.processor"):
                assert proc is before[k]
            else:
                assert proc is not before[k]
        unet(z, 300, **cond)
        counts = cap.layer_counts
        assert sum(counts.values()) == n_attn1
    assert counts == (SD1_COUNTS if family == "sd1" else SDXL_COUNTS)
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)


def test_unet_output_unchanged_with_capture(backbone, make_image):
    z, cond = _inputs(backbone, make_image, sizes=((128, 192),))
    with torch.inference_mode():
        plain = backbone.unet(z, 300, **cond).sample
        with AttentionCapture(backbone.unet, chunk_bytes=4096):
            captured = backbone.unet(z, 300, **cond).sample
    torch.testing.assert_close(captured, plain, rtol=1e-5, atol=1e-5)


def test_batch_of_two_equals_two_single_passes(backbone, make_image):
    imgs = [make_image(128, 192, seed=1), make_image(128, 192, seed=2)]
    both = backbone.encode(imgs, size=128, features=False, attention=True, batch_size=2)
    for img, enc in zip(imgs, both, strict=True):
        (single,) = backbone.encode([img], size=128, features=False, attention=True)
        assert set(single.attention) == set(enc.attention)
        for grid, maps in single.attention.items():
            torch.testing.assert_close(enc.attention[grid], maps, rtol=1e-5, atol=1e-6)
    # and the two images really differ
    g = max(both[0].attention, key=lambda g: g[0] * g[1])
    assert (both[0].attention[g] - both[1].attention[g]).abs().max() > 1e-3


def _reference_maps(unet, z, cond):
    """Per-grid mean over attn1 layers of the materialised softmax(QK^T * scale), heads averaged."""
    inputs = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args, inputs=inputs: inputs.append((mod, args[0])))
        for name, m in unet.named_modules()
        if name.endswith("attn1")
    ]
    try:
        with torch.inference_mode():
            unet(z, 300, **cond)
    finally:
        for h in handles:
            h.remove()
    sums, counts = {}, {}
    latent = tuple(z.shape[-2:])
    with torch.inference_mode():
        for attn, x in inputs:
            b, n, _ = x.shape
            q = attn.to_q(x).view(b, n, attn.heads, -1).transpose(1, 2)
            k = attn.to_k(x).view(b, n, attn.heads, -1).transpose(1, 2)
            full = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)  # (B, H, N, N)
            grid = token_grid(n, latent)
            sums[grid] = sums.get(grid, 0) + full.mean(dim=1)
            counts[grid] = counts.get(grid, 0) + 1
    return {g: sums[g] / counts[g] for g in sums}, len(inputs)


@pytest.mark.parametrize("chunk_bytes", [2048, 8 << 20])
def test_head_mean_equals_materialised_reference(backbone, make_image, chunk_bytes):
    z, cond = _inputs(backbone, make_image, sizes=((128, 192), (128, 192)), seed=4)
    ref, n_layers = _reference_maps(backbone.unet, z, cond)
    with AttentionCapture(backbone.unet, chunk_bytes=chunk_bytes) as cap, torch.inference_mode():
        backbone.unet(z, 300, **cond)
    maps = cap.maps()
    assert len(maps) == 2 and sum(cap.layer_counts.values()) == 0  # reset after maps()
    assert n_layers == sum(1 for k in backbone.unet.attn_processors if "attn1" in k)
    for b in range(2):
        assert set(maps[b]) == set(ref)
        for (h, w), r in ref.items():
            torch.testing.assert_close(
                maps[b][(h, w)], r[b].reshape(h * w, h, w), rtol=1e-5, atol=1e-6
            )


def test_several_passes_average(backbone, make_image):
    z, cond = _inputs(backbone, make_image)
    with AttentionCapture(backbone.unet) as cap, torch.inference_mode():
        backbone.unet(z, 300, **cond)
        first = {g: m.clone() for g, m in cap.maps()[0].items()}
        backbone.unet(z, 300, **cond)
        backbone.unet(z, 700, **cond)
        counts = cap.layer_counts
        avg = cap.maps()[0]
        backbone.unet(z, 700, **cond)
        late = cap.maps()[0]
    expected = SD1_COUNTS if backbone.family == "sd1" else SDXL_COUNTS
    assert counts == {g: 2 * c for g, c in expected.items()}
    for g in first:
        torch.testing.assert_close(avg[g], (first[g] + late[g]) / 2, rtol=1e-5, atol=1e-6)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_full_attention_tensor_is_built(backbones, make_image):
    backbone = backbones["sd1"]  # 2 heads, finest grid 16 x 16 at 128 px
    z, cond = _inputs(backbone, make_image)
    n = 16 * 16
    full = 1 * 2 * n * n
    with torch.inference_mode():
        with _LargestTensor() as plain_mode:
            backbone.unet(z, 300, **cond)
        with AttentionCapture(backbone.unet, chunk_bytes=16 << 10), _LargestTensor() as mode:
            backbone.unet(z, 300, **cond)
    # largest tensors: the fp32 running sum (N x N, half a full tensor) or the UNet's own ones
    assert mode.largest <= max(n * n, plain_mode.largest) < full


def test_non_square_batches_and_fixed_latent_size(backbone, make_image):
    z, cond = _inputs(backbone, make_image, sizes=((64, 128),))
    with AttentionCapture(backbone.unet, latent_size=(8, 16)) as cap, torch.inference_mode():
        backbone.unet(z, 300, **cond)
    grids = set(cap.maps()[0])
    assert (8, 16) in grids or (4, 8) in grids
    assert all(w == 2 * h for h, w in grids)
