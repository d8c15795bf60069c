"""``mulo.mup.prepare``: make a model written with plain ``torch.nn`` μP-ready for μLO in one call.

What it does, in place (docs/ALGORITHM.md §4):

1. **Readout.** The output layer (``readout=`` names it; otherwise the ``nn.Linear`` tied to an embedding,
   else the last one whose output size is an embedding's vocabulary, else the last ``nn.Linear`` whose
   output size no other layer produces) becomes a :class:`MuReadout`:
   the same module object, parameters, shape, dtype and device, whose output is multiplied by
   ``output_mult / in_features`` after the bias. A readout tied to an ``nn.Embedding`` (GPT-style) stays
   tied: the shared weight is initialized as the embedding (N(0, 1)) instead of zero, has role ``input``
   (lr · 1, like the readout it also is) and the logits still get the 1/width multiplier.
2. **Attention.** Every ``nn.MultiheadAttention`` becomes a :class:`MuMultiheadAttention` (logits q·k/d_head);
   ``F.scaled_dot_product_attention`` calls in the model's forward without ``scale=`` get
   ``scale = 1/d_head`` (``attention="keep"`` leaves both alone).
3. **Roles.** Exactly from ``base_model`` (the same architecture at another width) when given, else from
   structure (:func:`mulo.mup.infer_roles`); ``overrides`` corrects either.
4. **Initialization** (:func:`mulo.mup.init_`): embeddings N(0, 1) (padding row zero); Linear, Conv and
   attention input/hidden weights truncated N(0, 1/fan_in) at ±2σ; the readout weight zero (unless tied);
   biases zero; norm gains/biases and raw parameters of custom modules as they were.

It returns :func:`mulo.mup.param_groups` for :class:`mulo.MuLO`. Call it on a freshly built model, before
loading a checkpoint (the parameter names do not change, so ``load_state_dict`` works afterwards), before
``torch.compile``, DDP or FSDP. What it cannot convert it refuses with :class:`PrepareError`, naming the
module and the fix: recurrent layers, transposed convolutions, ``nn.Bilinear``, sparse embeddings, lazy
modules, a model without an ``nn.Linear`` readout, and raw ≥2-d parameters whose role it cannot tell.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from mulo.mup import (
    ROLES,
    MuReadout,
    _owners,
    _structural_role,
    describe,
    infer_roles,
    init_,
    is_embedding_weight,
    mark_readout,
    param_groups,
    width_dims,
)
from mulo.mup.attention import MuMultiheadAttention, convert_multihead_attention, install_sdpa_scale

log = logging.getLogger("mulo")

ATTENTION = ("mup", "keep")

# Layers prepare has no μP treatment for, and what to do instead.
_UNSUPPORTED = (
    (
        nn.RNNBase,
        "recurrent layers have no μP conversion here; build the groups yourself with "
        "mulo.mup.param_groups(model, base_model=...) and initialize the model yourself",
    ),
    (
        nn.modules.conv._ConvTransposeNd,
        "transposed convolutions store (in, out, ...) weights, which the "
        "roles and the init read the other way round; use a Conv + upsampling, or build the groups yourself "
        "with mulo.mup.param_groups(model, overrides=...)",
    ),
    (
        nn.Bilinear,
        "nn.Bilinear has no μP conversion here; replace it with nn.Linear layers or build the "
        "groups yourself with mulo.mup.param_groups(model, overrides=...)",
    ),
)


class PrepareError(ValueError):
    """:func:`prepare` cannot convert this model; the message names the module and the fix."""


def _refuse_unsupported(model: nn.Module) -> None:
    wrapper = type(model).__name__
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) or hasattr(model, "_orig_mod"):
        raise PrepareError(
            f"the model is wrapped ({wrapper}); call mulo.mup.prepare on the plain model before wrapping it "
            "in DDP/DataParallel or torch.compile"
        )
    for name, mod in model.named_modules():
        where = f"module {name or '<root>'!r} ({type(mod).__name__})"
        for kind, fix in _UNSUPPORTED:
            if isinstance(mod, kind):
                raise PrepareError(f"mulo.mup.prepare cannot convert {where}: {fix}")
        if isinstance(mod, nn.modules.lazy.LazyModuleMixin) and mod.has_uninitialized_params():
            raise PrepareError(f"{where} is a lazy module that has not run yet; run one forward pass first")
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) and mod.sparse:
            raise PrepareError(f"{where} has sparse=True; MuLO needs dense gradients: build it with sparse=False")
        for attr, p in mod.named_parameters(recurse=False):
            if type(p).__name__ == "DTensor":
                raise PrepareError(
                    f"{where}.{attr} is already sharded (DTensor); call mulo.mup.prepare before fully_shard"
                )


def _find_readout(model: nn.Module, readout: str | None) -> tuple[str, nn.Linear]:
    if readout is not None:
        try:
            mod = model.get_submodule(readout)
        except AttributeError as e:
            raise PrepareError(f"readout={readout!r} names no submodule of the model ({e})") from e
        if not (type(mod) is nn.Linear or isinstance(mod, MuReadout)):
            raise PrepareError(
                f"readout={readout!r} is a {type(mod).__name__}; the μP readout must be a plain nn.Linear "
                "(end the model with one, e.g. after pooling or flattening)"
            )
        return readout, mod
    mods = dict(model.named_modules())
    ready = [(n, m) for n, m in mods.items() if isinstance(m, MuReadout)]
    if ready:
        return ready[-1]
    linears = [(n, m) for n, m in mods.items() if type(m) is nn.Linear]
    if not linears:
        raise PrepareError(
            "found no nn.Linear output layer; μP needs the readout to be an nn.Linear: end the model with one "
            "(after pooling/flattening), or name it with readout='module.name'"
        )
    owners = _owners(model)
    tied = [(n, m) for n, m in linears if is_embedding_weight(m.weight, owners[id(m.weight)])]
    if tied:
        return tied[-1]
    vocabularies = {m.num_embeddings for m in mods.values() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    lm_heads = [(n, m) for n, m in linears if m.out_features in vocabularies]  # a language model's head
    if lm_heads:
        return lm_heads[-1]
    # The readout produces the model's output: a size (classes, vocabulary) that no other layer produces.
    for n, m in reversed(linears):
        if m.out_features not in width_dims(model, exclude=(m,)):
            return n, m
    raise PrepareError(
        f"cannot tell the output layer: every nn.Linear's output size is also produced by another layer (the "
        f"last one is {linears[-1][0]!r}, {linears[-1][1].in_features}→{linears[-1][1].out_features}); name it "
        "with readout='module.name'"
    )


def _check_overrides(model: nn.Module, overrides: Mapping[str, str]) -> None:
    known = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_modules()}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PrepareError(f"overrides name no parameter or module of the model: {unknown}")
    bad = sorted(f"{k}={v!r}" for k, v in overrides.items() if v not in ROLES)
    if bad:
        raise PrepareError(f"overrides give unknown roles {bad}; roles are {ROLES}")


def _refuse_ambiguous_raw(model: nn.Module, overrides: Mapping[str, str]) -> None:
    """Raw ≥2-d parameters of custom modules with two width-sized axes may be hidden matrices used as
    ``x @ W``: prepare can neither tell their layout nor initialize them."""
    owners = _owners(model)
    dims = width_dims(model, exclude=tuple(m for m in model.modules() if isinstance(m, MuReadout)))
    for name, p in model.named_parameters():
        mod_name, mod, attr = owners[id(p)][0]
        if name in overrides or (attr == "weight" and mod_name in overrides) or p.dim() < 2:
            continue
        if _structural_role(mod, attr, p, dims) != "other" or is_embedding_weight(p, owners[id(p)]):
            continue
        if isinstance(mod, (nn.MultiheadAttention, nn.Linear, nn.modules.conv._ConvNd)):
            continue
        if sum(int(s) in dims for s in p.shape) >= 2:
            raise PrepareError(
                f"parameter {name!r} {tuple(p.shape)} of module {mod_name or '<root>'!r} "
                f"({type(mod).__name__}) is a raw tensor with two width-sized axes: prepare cannot tell its "
                f"role or initialize it. Use nn.Linear for it, pass base_model=..., or declare it with "
                f"overrides={{{name!r}: 'hidden'}} (then it is initialized truncated-N(0, 1/fan_in), "
                "fan_in = shape[1]·…) or 'other' (left as it is)"
            )


def prepare(
    model: nn.Module,
    *,
    base_model: nn.Module | None = None,
    readout: str | None = None,
    overrides: Mapping[str, str] | None = None,
    output_mult: float = 1.0,
    attention: str = "mup",
    generator: torch.Generator | None = None,
    **group_options,
) -> list[dict]:
    """Convert ``model`` to μP in place and return its param groups for :class:`mulo.MuLO`.

    Args:
        model: a freshly built ``nn.Module`` (its weights are re-initialized).
        base_model: the same architecture at another width (only its parameter shapes are read): roles
            are then exact. Without it they are inferred from structure (:func:`mulo.mup.infer_roles`).
        readout: qualified name of the output ``nn.Linear`` (e.g. ``"lm_head"``) when the default choice
            (the Linear tied to an embedding, else the last one whose output size is an embedding's
            vocabulary, else the last Linear whose output size no other layer produces) is not it.
        overrides: ``{parameter or module name: role}``, as in :func:`mulo.mup.infer_roles`.
        output_mult: the readout's multiplier (logits are ``(x Wᵀ + b) · output_mult / width``).
        attention: ``"mup"`` (default) scales attention logits by 1/d_head; ``"keep"`` leaves attention as
            written.
        generator: random generator for the re-initialization.
        group_options: added to every group (e.g. ``weight_decay=0.1``).

    Returns:
        :func:`mulo.mup.param_groups` of the converted model: ``mulo.MuLO(prepare(model))``. The roles
        chosen are logged at INFO level on the ``"mulo"`` logger (:func:`mulo.mup.describe`).

    Raises:
        PrepareError: for what it cannot convert (see the module docstring); nothing is changed then.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare takes an nn.Module, got {type(model).__name__}")
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    overrides = dict(overrides or {})
    _refuse_unsupported(model)
    readout_name, head = _find_readout(model, readout)
    owners = _owners(model)
    tied = is_embedding_weight(head.weight, owners[id(head.weight)])
    shared = [n for n, m, a in owners[id(head.weight)] if m is not head]
    if shared and not tied:
        raise PrepareError(
            f"the readout {readout_name!r} shares its weight with {shared}, which is not an nn.Embedding; "
            "prepare handles GPT-style embedding/readout tying only: untie it"
        )
    _check_overrides(model, overrides)
    if base_model is None:  # checked before anything changes
        _refuse_ambiguous_raw(model, overrides)

    if not isinstance(head, MuReadout):
        head.__class__ = MuReadout  # in place: the same parameters (and tying), shape, dtype, device, hooks
    head.output_mult = float(output_mult)
    mark_readout(head)
    converted = 0
    if attention == "mup":
        for mod in model.modules():
            if isinstance(mod, nn.MultiheadAttention) and not isinstance(mod, MuMultiheadAttention):
                convert_multihead_attention(mod)
                converted += 1
            if isinstance(mod, nn.TransformerEncoder):
                mod.use_nested_tensor = False  # its nested-tensor inference path bypasses the layers' attention
        install_sdpa_scale(model)

    roles = infer_roles(model, base_model=base_model, overrides=overrides)
    init_(model, roles, generator=generator)
    log.info(
        "mulo.mup.prepare: readout %r (%d→%d%s), %d nn.MultiheadAttention converted, attention %s, roles %s:\n%s",
        readout_name,
        head.in_features,
        head.out_features,
        ", tied to the embedding" if tied else "",
        converted,
        "1/d_head" if attention == "mup" else "as written",
        "from base_model" if base_model is not None else "from structure",
        describe(roles),
    )
    return param_groups(model, roles, **group_options)
