"""Reading a UNet while it runs: a feature hook with early exit, and self-attention capture.

- :class:`FeatureHook` stores the output of one module (DiffCut's ``attn1``) and, with
  ``stop=True``, aborts the forward pass right there by raising a private exception that the
  context manager itself swallows: the blocks after the hooked module never run.
- :class:`AttentionCapture` swaps the attention processor of every self-attention (``attn1``)
  layer for one that computes softmax(Q K^T * scale) itself, in query chunks, averages over heads
  at once and adds into one fp32 running sum per query grid (h, w) and image. The layer's output is
  the same as the default processor's. All other layers keep their processor.

- :class:`CrossAttentionCapture` does the same for the cross-attention (``attn2``) layers: the
  head-averaged probabilities of every query location over the prompt tokens, (h*w, T) per grid.

Nothing here knows which model it is reading: grids come from the UNet's input latent size and
each layer's token count, devices and dtypes from the tensors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "AttentionCapture",
    "CrossAttentionCapture",
    "FeatureHook",
    "get_module",
    "token_grid",
]

_INDEX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[-?\d+\])*)$")


def get_module(root: nn.Module, path: str) -> nn.Module:
    """The sub-module of ``root`` at ``path``, e.g. ``"down_blocks[-1].attentions[-1].attn1"``.

    Each dotted part is an attribute name followed by any number of ``[i]`` indices (negative
    indices count from the end, as in Python).

    Raises:
        ValueError: the path does not exist in ``root`` (the message names the failing part).
    """
    module: Any = root
    walked = []
    for part in path.split("."):
        m = _INDEX.match(part.strip())
        if m is None:
            raise ValueError(f"bad module path part {part!r} in {path!r}")
        attr, indices = m.group(1), re.findall(r"\[(-?\d+)\]", m.group(2))
        walked.append(part)
        try:
            module = getattr(module, attr)
            for i in indices:
                module = module[int(i)]
        except (AttributeError, IndexError, TypeError):
            raise ValueError(
                f"{type(root).__name__} has no module {'.'.join(walked)!r} (path {path!r})"
            ) from None
    if not isinstance(module, nn.Module):
        raise ValueError(f"{path!r} is not a module of {type(root).__name__}")
    return module


def token_grid(num_tokens: int, latent_size: tuple[int, int] | None) -> tuple[int, int]:
    """The (h, w) grid of a layer that sees ``num_tokens`` tokens.

    Args:
        num_tokens: N, the layer's sequence length.
        latent_size: (H/8, W/8), the UNet input's spatial size. Each down-sampling halves it,
            rounding up (stride-2 convolutions with padding 1); the grid is the level whose
            h * w equals N. Without it, N must be a perfect square.
    Raises:
        ValueError: no level of ``latent_size`` has N tokens.
    """
    if latent_size is not None:
        h, w = int(latent_size[0]), int(latent_size[1])
        for _ in range(16):
            if h * w == num_tokens:
                return h, w
            if h == 1 and w == 1:
                break
            h, w = -(-h // 2), -(-w // 2)
        raise ValueError(
            f"{num_tokens} tokens match no down-sampling level of latent size {tuple(latent_size)}"
        )
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"cannot infer the grid of {num_tokens} tokens without the latent size")
    return side, side


class _EarlyExit(Exception):
    """Raised by a FeatureHook to leave the UNet; caught by the same hook's context manager."""

    def __init__(self, owner: FeatureHook) -> None:
        super().__init__("early exit")
        self.owner = owner


class FeatureHook:
    """Context manager: capture ``module``'s output, and optionally stop the forward pass there.

    Usage::

        with FeatureHook(unet_layer, stop=True) as hook:
            unet(sample, t, encoder_hidden_states=emb)   # raises out of the UNet at the layer
        features = hook.output                           # the layer's output tensor

    With ``stop=True`` the hook raises a private exception right after storing the output; the
    ``with`` block swallows exactly that exception (any other propagates), so code after the UNet
    call inside the block does not run and nothing after the hooked module is computed.

    Attributes:
        output: the module's output (its first element if it returns a tuple), as produced (same
            device and dtype); None until the module ran.
        stopped: True if the forward pass was cut short by this hook.
        calls: how many times the module ran while the hook was installed.
    """

    def __init__(self, module: nn.Module, *, stop: bool = True) -> None:
        self.module = module
        self.stop = stop
        self.output: torch.Tensor | None = None
        self.stopped = False
        self.calls = 0
        self._handle: Any = None

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self.calls += 1
        if self.output is None:
            self.output = output[0] if isinstance(output, (tuple, list)) else output
        if self.stop:
            raise _EarlyExit(self)

    def __enter__(self) -> FeatureHook:
        self.output, self.stopped, self.calls = None, False, 0
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if isinstance(exc, _EarlyExit) and exc.owner is self:
            self.stopped = True
            return True
        return False

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Call ``fn(*args, **kwargs)`` (e.g. the UNet) with the hook installed; return the output.

        Raises:
            RuntimeError: ``fn`` finished without running the hooked module.
        """
        with self:
            fn(*args, **kwargs)
        if self.output is None:
            raise RuntimeError("the hooked module did not run during the forward pass")
        return self.output


def _is_self_attention(name: str) -> bool:
    return name.endswith(".attn1.processor")


class _CaptureProcessor:
    """Attention processor for one self-attention layer: same output as scaled-dot-product
    attention, plus head-averaged probabilities added into the owning AttentionCapture."""

    def __init__(self, owner: AttentionCapture, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if getattr(attn, "spatial_norm", None) is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        is_self = encoder_hidden_states is None
        batch, seq_len, _ = (hidden_states if is_self else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if getattr(attn, "group_norm", None) is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if is_self:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        record = is_self or self.owner._record_cross
        out = self.owner._attend(self.name, query, key, value, attention_mask, attn.scale, record)

        hidden_states = out.transpose(1, 2).reshape(batch, -1, heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class AttentionCapture:
    """Context manager: head-averaged self-attention probabilities of a UNet, per query grid.

    On entry, every ``attn1`` (self-attention) layer of ``unet`` gets a capturing processor (via
    ``unet.set_attn_processor`` with a dict that keeps every other layer's processor); on exit the
    original processors are restored. While installed, each forward pass adds, for every image b
    and every self-attention layer whose query grid is (h, w)::

        sums[(h, w)][b] += mean over heads of softmax(Q K^T * attn.scale)      # (h*w, h*w), fp32

    and counts the layers per grid. Probabilities are computed in query chunks of at most
    ``chunk_bytes`` (batch x heads x rows x N x 4 bytes); no (batch, heads, N, N) tensor is ever
    built (unless one chunk covers all rows), and no per-layer map is kept. The layer output is
    computed from the same probabilities and equals the default processor's (up to float error).

    Usage::

        with AttentionCapture(unet) as cap:
            unet(latents, t, encoder_hidden_states=emb)
        maps = cap.maps()        # [ {(h, w): (h*w, h, w) float32 CPU tensor}, ... ] per image

    Several forward passes inside one ``with`` (same batch and latent size) accumulate, so
    ``maps()`` averages over them too (e.g. several timesteps).

    Args:
        unet: a diffusers model with ``attn_processors`` / ``set_attn_processor``.
        chunk_bytes: memory bound of one chunk of probabilities (default: 8 MiB on the CPU,
            where small chunks stay in cache and keep the extra peak low; 128 MiB on CUDA, where
            fewer, larger kernels are faster).
        latent_size: (H/8, W/8) of the UNet input; by default read from each forward call.
        layer_filter: which processor names to capture (default: names ending in
            ``.attn1.processor``).
    """

    #: record the layers whose keys come from ``encoder_hidden_states`` too (cross-attention)
    _record_cross = False
    _kind = "self-attention (attn1)"
    _default_filter = staticmethod(_is_self_attention)

    def __init__(
        self,
        unet: nn.Module,
        *,
        chunk_bytes: int | None = None,
        latent_size: tuple[int, int] | None = None,
        layer_filter: Callable[[str], bool] | None = None,
    ) -> None:
        self.unet = unet
        self.chunk_bytes = None if chunk_bytes is None else int(chunk_bytes)
        self.latent_size = latent_size
        self.layer_filter = layer_filter or self._default_filter
        self._fixed_latent = latent_size is not None
        self._original: dict[str, Any] | None = None
        self._pre_handle: Any = None
        self._sums: dict[tuple[int, int], list[torch.Tensor]] = {}
        self._counts: dict[tuple[int, int], int] = {}
        self.layer_names: list[str] = []

    # -- installation ---------------------------------------------------------------------
    def __enter__(self) -> AttentionCapture:
        original = dict(self.unet.attn_processors)
        replaced = {}
        self.layer_names = []
        for name, proc in original.items():
            if self.layer_filter(name):
                replaced[name] = _CaptureProcessor(self, name)
                self.layer_names.append(name)
            else:
                replaced[name] = proc
        if not self.layer_names:
            raise ValueError(f"{type(self.unet).__name__} has no {self._kind} layer")
        self._original = original
        self.unet.set_attn_processor(replaced)
        self._pre_handle = self.unet.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._pre_handle is not None:
            self._pre_handle.remove()
            self._pre_handle = None
        if self._original is not None:
            self.unet.set_attn_processor(dict(self._original))
            self._original = None
        return False

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs.get("sample")
        if isinstance(sample, torch.Tensor) and sample.ndim == 4 and not self._fixed_latent:
            size = (int(sample.shape[-2]), int(sample.shape[-1]))
            if self._sums and size != self.latent_size:
                raise RuntimeError(
                    "AttentionCapture: take maps() before a pass with another latent size"
                )
            self.latent_size = size

    # -- the computation ------------------------------------------------------------------
    def _attend(
        self,
        name: str,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scale: float,
        record: bool,
    ) -> torch.Tensor:
        """Attention output (B, heads, N, d) from chunked probabilities; records their head mean.

        query, key, value: (B, heads, N|M, d). mask: additive, broadcastable to (B, heads, N, M).
        """
        batch, heads, n_q, _ = query.shape
        n_k = key.shape[2]
        sums = self._grid_sums(n_q, batch, query.device, n_k) if record else None
        out = torch.empty(
            (batch, heads, n_q, value.shape[-1]), dtype=value.dtype, device=value.device
        )
        key_t = key.transpose(-1, -2)
        query = query * scale  # (N x d, cheaper than scaling every (r x M) chunk)
        budget = self.chunk_bytes
        if budget is None:
            budget = (128 << 20) if query.device.type == "cuda" else (8 << 20)
        rows = max(1, budget // max(1, batch * heads * n_k * 4))
        for start in range(0, n_q, rows):
            stop = min(n_q, start + rows)
            scores = torch.matmul(query[:, :, start:stop], key_t)  # (B, heads, r, M)
            if scores.dtype != torch.float32:
                scores = scores.float()
            if mask is not None:
                m = mask if mask.shape[-2] == 1 else mask[..., start:stop, :]
                scores.add_(m.to(scores.dtype))
            # softmax in place (fp32): no second chunk-sized buffer
            scores.sub_(scores.amax(dim=-1, keepdim=True))
            scores.exp_()
            scores.div_(scores.sum(dim=-1, keepdim=True))
            out[:, :, start:stop] = torch.matmul(scores.to(value.dtype), value)
            if sums is not None:
                with torch.no_grad():
                    mean = scores.mean(dim=1)  # (B, r, M) fp32
                    for b in range(batch):
                        sums[b][start:stop].add_(mean[b])
            del scores
        if sums is not None:
            grid = token_grid(n_q, self.latent_size)
            self._counts[grid] = self._counts.get(grid, 0) + 1
        return out

    def _grid_sums(
        self, n: int, batch: int, device: torch.device, n_keys: int | None = None
    ) -> list[torch.Tensor]:
        grid = token_grid(n, self.latent_size)
        m = n if n_keys is None else int(n_keys)
        sums = self._sums.get(grid)
        if sums is None:
            # normal tensors even when the UNet runs under inference_mode: callers may modify the
            # returned maps in place outside it
            with torch.inference_mode(False):
                sums = [
                    torch.zeros((n, m), dtype=torch.float32, device=device) for _ in range(batch)
                ]
            self._sums[grid] = sums
        elif len(sums) != batch:
            raise RuntimeError("AttentionCapture: take maps() before a pass with another batch")
        elif sums[0].shape[1] != m:
            raise RuntimeError("AttentionCapture: take maps() before a pass with other keys")
        return sums

    # -- results --------------------------------------------------------------------------
    @property
    def layer_counts(self) -> dict[tuple[int, int], int]:
        """Query grid (h, w) -> number of layer calls accumulated so far."""
        return dict(self._counts)

    def maps(self) -> list[dict[tuple[int, int], torch.Tensor]]:
        """Per image: query grid (h, w) -> (h*w, h, w) float32 CPU tensor, the layer average.

        Row q is the head- and layer-averaged attention of query token q over the key grid; rows
        sum to 1. The running sums are divided in place and handed over, then the capture is
        reset (call once per batch).
        """
        if not self._sums:
            return []
        batch = len(next(iter(self._sums.values())))
        result: list[dict[tuple[int, int], torch.Tensor]] = [{} for _ in range(batch)]
        for grid in sorted(self._sums, key=lambda g: -g[0] * g[1]):
            h, w = grid
            count = self._counts[grid]
            for b, s in enumerate(self._sums[grid]):
                s.div_(count)
                result[b][grid] = self._layout(s.to("cpu"), h, w)
            self._sums[grid] = []
        self.reset()
        return result

    @staticmethod
    def _layout(total: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(h*w, keys) running sum -> the map layout :meth:`maps` returns: (h*w, h, w)."""
        return total.view(h * w, h, w)

    def reset(self) -> None:
        """Drop the running sums (e.g. between batches)."""
        self._sums = {}
        self._counts = {}
        if not self._fixed_latent:
            self.latent_size = None


def _is_cross_attention(name: str) -> bool:
    return name.endswith(".attn2.processor")


class CrossAttentionCapture(AttentionCapture):
    """Context manager: head-averaged cross-attention probabilities over the prompt tokens.

    The same machinery as :class:`AttentionCapture` (chunked fp32 softmax, head mean added into
    one running sum per query grid and image, layer outputs equal to the default processor's),
    installed on the cross-attention (``attn2``) layers. For every image b and every layer whose
    query grid is (h, w)::

        sums[(h, w)][b] += mean over heads of softmax(Q K^T * attn.scale)      # (h*w, T), fp32

    where T is the prompt length (77 for CLIP). The running sums are (h*w, T) per grid and image:
    0.3 MiB at 32 x 32, 1.2 MiB at 64 x 64. It can be nested with an :class:`AttentionCapture`
    to read both kinds of attention from one forward pass.

    Usage::

        with CrossAttentionCapture(unet) as cap:
            unet(latents, t, encoder_hidden_states=caption_embeds)
        maps = cap.maps()        # [ {(h, w): (T, h, w) float32 CPU tensor}, ... ] per image

    ``maps()`` puts the token axis first: ``maps[b][(h, w)][k]`` is the spatial map of token k;
    at each location the T values sum to 1 (a probability over tokens).

    Args:
        unet, chunk_bytes, latent_size: as :class:`AttentionCapture`.
        layer_filter: processor names to capture (default: names ending in ``.attn2.processor``).
    """

    _record_cross = True
    _kind = "cross-attention (attn2)"
    _default_filter = staticmethod(_is_cross_attention)

    @staticmethod
    def _layout(total: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(h*w, T) running sum -> (T, h, w): ``maps()[b][grid][k, i, j]`` is the head- and
        layer-averaged probability that location (i, j) attends to prompt token k (sums to 1
        over k)."""
        return total.t().reshape(-1, h, w).contiguous()
