"""μLO on DTensor parameters (FSDP2's ``fully_shard``): the exact update of the whole tensor, per shard.

Each rank runs pass A on its shards, one ``all_reduce`` sums every tensor's partial statistics over the
shard group (flattened into one buffer), each rank runs pass B, a second ``all_reduce`` sums the 28
channel sums of squares, and each rank applies the update to its shards (pass C). Two collectives per
step and process group, whatever the number of tensors (see :mod:`mulo.backends.passes`).

State of a DTensor parameter is made of DTensors on the parameter's mesh: element-wise state is sharded
like the parameter; an Adafactor accumulator indexed by the split axis is sharded along it, one that
reduces the split axis is replicated; ``step`` and ``nonfinite_skips`` are plain 0-d tensors. So
``state_dict()`` holds DTensors that ``torch.distributed.checkpoint`` reshards, and a full (single-
process) state loads into a sharded optimizer.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard

from mulo.backends.passes import ShardGeometry, summed_stats
from mulo.lopt.shapes import physical_factored_dims, physical_shape

if TYPE_CHECKING:
    from mulo.optim.mulo import MuLO

_FALLBACK_ANNOUNCED: set[str] = set()


def _where(gi: int, pi: int) -> str:
    return f"param_groups[{gi}]['params'][{pi}]"


def shard_spec(p: DTensor, name: str = "parameter") -> tuple[ShardGeometry, Any, int | None]:
    """(geometry, process group of the split axis or None, its mesh dim) of a DTensor parameter."""
    placements = p.placements
    if any(pl.is_partial() for pl in placements):
        raise ValueError(
            f"{name} is a DTensor with a Partial placement {placements}; MuLO steps parameters, "
            "which are Shard or Replicate (redistribute it first)"
        )
    shards = [(mesh_dim, pl) for mesh_dim, pl in enumerate(placements) if pl.is_shard()]
    shape = physical_shape(p.shape)
    if not shards:
        return ShardGeometry(shape), None, None
    if len(shards) > 1 or type(shards[0][1]) is not Shard:
        raise ValueError(
            f"{name} has placements {placements} on mesh {tuple(p.device_mesh.shape)}; MuLO supports parameters "
            "split along one mesh dimension (FSDP2's Shard(0), HSDP's (Replicate(), Shard(0)), tensor parallel "
            "Shard(k)); gather the other splits (e.g. fully_shard over a 1-d mesh) or use backend-side TP"
        )
    mesh_dim, pl = shards[0]
    return ShardGeometry(shape, pl.dim % p.dim()), p.device_mesh.get_group(mesh_dim), mesh_dim


def state_placements(p: DTensor, key: str, layout: str) -> tuple:
    """Placements of state ``key`` of a DTensor parameter (see the module docstring)."""
    geom, _, mesh_dim = shard_spec(p)
    k = geom.sharded_dim
    out = [Replicate()] * len(p.placements)
    if k is None:
        return tuple(out)
    if key in ("momentum", "full"):
        out[mesh_dim] = Shard(k + 1)
    elif key == "second_moment":
        out[mesh_dim] = Shard(k)
    elif key in ("row", "col"):
        d1, d0 = physical_factored_dims(geom.shape, layout)
        reduced = d0 if key == "row" else d1
        if k != reduced:  # the accumulator is indexed by the split axis
            out[mesh_dim] = Shard(1 + (k - 1 if k > reduced else k))
    return tuple(out)


def init_state(p: DTensor, layout: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Zero μLO state for a DTensor parameter, as DTensors placed by :func:`state_placements`."""
    geom, _, _ = shard_spec(p)
    local = physical_shape(p.to_local().shape)
    device = p.to_local().device
    dims = physical_factored_dims(geom.shape, layout)
    shapes = {"momentum": ((3, *local), (3, *geom.shape)), "second_moment": (local, geom.shape)}
    if dims is None:
        shapes["full"] = ((3, *local), (3, *geom.shape))
    else:
        for key, axis in (("row", dims[1]), ("col", dims[0])):
            drop = [i for i in range(len(local)) if i != axis]
            if geom.sharded_dim == axis:  # replicated: the whole accumulator on every rank
                shapes[key] = ((3, *[geom.shape[i] for i in drop]),) * 2
            else:
                shapes[key] = ((3, *[local[i] for i in drop]), (3, *[geom.shape[i] for i in drop]))
    state: dict[str, torch.Tensor] = {
        "step": torch.zeros((), dtype=torch.float32, device=device),
        "nonfinite_skips": torch.zeros((), dtype=torch.float32, device=device),
    }
    for key, (local_shape, global_shape) in shapes.items():
        t = torch.zeros(local_shape, dtype=dtype, device=device)
        state[key] = _from_local(t, p, key, layout, global_shape)
    return state


def _from_local(t: torch.Tensor, p: DTensor, key: str, layout: str, global_shape) -> DTensor:
    stride = torch.empty(global_shape, device="meta").stride()
    return DTensor.from_local(
        t,
        p.device_mesh,
        state_placements(p, key, layout),
        run_check=False,
        shape=torch.Size(global_shape),
        stride=stride,
    )


def shard_state_value(p: DTensor, key: str, value: torch.Tensor, layout: str) -> torch.Tensor:
    """A state tensor for DTensor parameter ``p``: a DTensor is kept, a plain (whole, e.g. single-process)
    tensor is split like :func:`state_placements` says (every rank must pass the same value)."""
    if isinstance(value, DTensor) or key in ("step", "nonfinite_skips"):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(p.to_local().device), p.device_mesh, state_placements(p, key, layout))


def _all_reduce_sum(items: list[tuple[Any, torch.Tensor]]) -> int:
    """Sum each tensor over its process group, in place: one flat buffer and one ``all_reduce`` per
    (group, device, dtype). Returns the number of collectives issued."""
    buckets: dict[tuple, tuple[Any, list[torch.Tensor]]] = {}
    for group, t in items:
        buckets.setdefault((id(group), t.device, t.dtype), (group, []))[1].append(t)
    for group, tensors in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
    return len(buckets)


def _pass_backend(opt: MuLO, device: torch.device, dtype: torch.dtype):
    """The backend whose passes step this bucket: MuLO's own where its spec declares the "passes"
    capability, else the reference (announced once per backend)."""
    from mulo.backends import has_capability, load_backend

    backend = opt.backend_for(device, dtype)
    if has_capability(backend.name, "passes"):
        return backend
    if backend.name not in _FALLBACK_ANNOUNCED:
        _FALLBACK_ANNOUNCED.add(backend.name)
        from mulo.backends import MuLOBackendNotice

        warnings.warn(
            f"mulo: backend {backend.name!r} does not implement the pass contract (mulo.backends.passes); "
            "DTensor (FSDP2) parameters run through the reference backend's passes",
            MuLOBackendNotice,
            stacklevel=4,
        )
    return load_backend("reference")


@torch.no_grad()
def sharded_step(opt: MuLO, entries: list[tuple[int, int, DTensor, DTensor, dict, float, float]]) -> None:
    """One MuLO step of DTensor parameters: ``entries`` = (group index, param index, param, grad, state,
    lr, weight decay). Collective: every rank of every shard group must call it with the same tensors."""
    layout = opt.layout
    work: dict[tuple[torch.device, torch.dtype], list] = {}
    for gi, pi, p, g, state, lr, wd in entries:
        name = _where(gi, pi)
        geom, group, _ = shard_spec(p, name)
        if not isinstance(g, DTensor):
            raise TypeError(f"{name} is a DTensor but its gradient is a {type(g).__name__}")
        if g.placements != p.placements:
            g = g.redistribute(p.device_mesh, p.placements)
        local_state = {k: v.to_local() if isinstance(v, DTensor) else v for k, v in state.items()}
        lp = p.to_local()
        work.setdefault((lp.device, lp.dtype), []).append((name, lp, g.to_local(), local_state, geom, group, lr, wd))

    runs = []
    for (device, dtype), items in work.items():
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        names, params, grads, states, geoms, groups, lrs, wds = map(list, zip(*items))
        runs.append(
            (
                _pass_backend(opt, device, dtype),
                opt._meta_weights(device, compute),
                names,
                params,
                grads,
                states,
                geoms,
                groups,
                lrs,
                wds,
            )
        )

    # pass A, then one all_reduce of every split statistic
    all_stats, pending = [], []
    for backend, weights, _, params, grads, states, geoms, groups, _, _ in runs:
        stats = backend.pass_a(params, grads, states, geoms, weights)
        for st, geom, group in zip(stats, geoms, groups):
            pending += [(group, st[key]) for key in summed_stats(geom, layout)]
        all_stats.append(stats)
    _all_reduce_sum(pending)

    if opt.options.nonfinite == "raise":
        flat = [(name, st.nonfinite) for run, stats in zip(runs, all_stats) for name, st in zip(run[2], stats)]
        if flat:
            counts = torch.stack([c.to("cpu", torch.float64) for _, c in flat]).tolist()  # one host sync
            for (name, _), count in zip(flat, counts):
                if count != 0:
                    raise FloatingPointError(
                        f"{name} has a non-finite gradient (or one whose square overflows) on some rank; nothing "
                        "was updated. Use MuLO(nonfinite='skip') to skip such updates."
                    )

    # pass B, then one all_reduce of the 28 sums of squares of every split tensor
    all_sumsq, pending = [], []
    for (backend, weights, _, params, grads, states, geoms, groups, _, _), stats in zip(runs, all_stats):
        sumsq = backend.pass_b(params, grads, states, stats, geoms, weights)
        pending += [(group, sq) for sq, geom, group in zip(sumsq, geoms, groups) if geom.sharded_dim is not None]
        all_sumsq.append(sumsq)
    _all_reduce_sum(pending)

    # pass C on every rank's shards
    for (backend, weights, _, params, grads, states, geoms, _, lrs, wds), stats, sumsq in zip(
        runs, all_stats, all_sumsq
    ):
        backend.pass_c(params, grads, states, stats, sumsq, geoms, lrs, wds, weights)
