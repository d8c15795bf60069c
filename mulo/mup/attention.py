"""μP attention: logits scaled by 1/d_head instead of 1/√d_head (docs/ALGORITHM.md §4).

Under μP the queries and keys of a wide model become correlated during training, so their dot product
grows like d_head, not √d_head; dividing by d_head keeps attention logits O(1) at every width.

* :class:`MuMultiheadAttention` is ``nn.MultiheadAttention`` with that scale (same parameters and names).
* :func:`install_sdpa_scale` makes every ``F.scaled_dot_product_attention`` call made inside a model's
  forward without an explicit ``scale=`` use ``scale = 1/d_head`` (a ``TorchFunctionMode`` entered by a
  forward pre-hook of the model and left by its forward hook; calls that pass ``scale=`` are untouched).
"""

from __future__ import annotations

import contextvars
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# True while a MuMultiheadAttention runs: it already scaled its queries, so the SDPA mode must not.
_QUERIES_SCALED = contextvars.ContextVar("mulo_mup_queries_scaled", default=False)
_MODE_STACK = "_mulo_sdpa_modes"


class MuMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose attention logits are ``q·k / d_head`` (μP) instead of ``/ √d_head``.

    The query projection (weight and bias) is multiplied by ``1/√d_head`` on the fly before torch's own
    ``F.multi_head_attention_forward``, which divides by ``√d_head`` once more; parameters, their names,
    masks, dropout and ``need_weights`` behave as in ``nn.MultiheadAttention``. Torch's fused inference
    fast paths (which would read the unscaled weights) are never taken. :func:`mulo.mup.prepare` converts
    an existing ``nn.MultiheadAttention`` in place (its class changes, its parameters stay).
    """

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        e = self.embed_dim
        s = 1.0 / math.sqrt(self.head_dim)
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            q_w, k_w, v_w = w[:e] * s, w[e : 2 * e], w[2 * e :]
        else:
            q_w, k_w, v_w = self.q_proj_weight * s, self.k_proj_weight, self.v_proj_weight
        b = self.in_proj_bias
        if b is not None:
            b = torch.cat([b[:e] * s, b[e:]])
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        token = _QUERIES_SCALED.set(True)
        try:
            out, weights = F.multi_head_attention_forward(
                query,
                key,
                value,
                e,
                self.num_heads,
                None,
                b,
                self.bias_k,
                self.bias_v,
                self.add_zero_attn,
                self.dropout,
                self.out_proj.weight,
                self.out_proj.bias,
                training=self.training,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                use_separate_proj_weight=True,
                q_proj_weight=q_w,
                k_proj_weight=k_w,
                v_proj_weight=v_w,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        finally:
            _QUERIES_SCALED.reset(token)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        return out, weights


def _block_fused_encoder_path(module: nn.Module, args) -> None:
    """A no-op forward pre-hook. ``nn.TransformerEncoderLayer`` skips its fused inference kernel (which reads
    ``in_proj_weight`` directly, at 1/√d_head) when any of its submodules has a hook: this is that hook."""
    return None


def convert_multihead_attention(mha: nn.MultiheadAttention) -> MuMultiheadAttention:
    """Turn ``mha`` into a :class:`MuMultiheadAttention` in place (same object, parameters and hooks)."""
    if not isinstance(mha, MuMultiheadAttention):
        mha.__class__ = MuMultiheadAttention
        mha.register_forward_pre_hook(_block_fused_encoder_path)
    return mha


class _SDPAScale(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` without ``scale=`` gets ``scale = 1/d_head``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and kwargs.get("scale") is None and not _QUERIES_SCALED.get():
            query = args[0] if args else kwargs["query"]
            kwargs = {**kwargs, "scale": 1.0 / query.shape[-1]}
        return func(*args, **kwargs)


def _enter_sdpa_scale(module: nn.Module, args) -> None:
    mode = _SDPAScale()
    mode.__enter__()
    getattr(module, _MODE_STACK).append(mode)


def _exit_sdpa_scale(module: nn.Module, args, output) -> None:
    stack = getattr(module, _MODE_STACK)
    if stack:
        stack.pop().__exit__(None, None, None)


def install_sdpa_scale(model: nn.Module) -> bool:
    """Make ``F.scaled_dot_product_attention`` calls inside ``model``'s forward use 1/d_head when they pass no
    ``scale``. Idempotent; returns whether it was newly installed."""
    if hasattr(model, _MODE_STACK):
        return False
    setattr(model, _MODE_STACK, [])
    model.register_forward_pre_hook(_enter_sdpa_scale)
    model.register_forward_hook(_exit_sdpa_scale, always_call=True)
    return True


def has_sdpa_scale(model: nn.Module) -> bool:
    return hasattr(model, _MODE_STACK)
