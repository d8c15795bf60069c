"""What the Celo2 tests share: a random meta-network, its numpy copy for the oracle, a published-layout writer."""

import json

import torch

import mulo
from mulo.celo2 import Celo2Net
from tests.helpers import hetero_grad

# The published layout of docs/CELO2.md: every key of model.safetensors and its shape.
PUBLISHED_KEYS = {
    **{f"w0.{i}": (d, 8) for i, d in enumerate((1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3))},
    "b0": (8,),
    "dense_w.0": (8, 8),
    "dense_b.0": (8,),
    "dense_w.1": (8, 3),
    "dense_b.1": (3,),
}
PUBLISHED_CONFIG = {
    "feature_dims": [1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3],
    "hidden_size": 8,
    "hidden_layers": 2,
    "output_size": 3,
    "activation": "relu",
}


def random_celo2_net(seed: int = 0) -> Celo2Net:
    """Random weights with non-zero biases, so that every term of the network is exercised."""
    gen = torch.Generator().manual_seed(seed)
    net = Celo2Net(generator=gen)
    with torch.no_grad():
        for b in [net.b0, *net.dense_b]:
            b.normal_(0.0, 0.3, generator=gen)
    return net


def numpy_weights(net: Celo2Net) -> dict:
    return {
        "w0": [w.detach().double().numpy() for w in net.w0],
        "b0": net.b0.detach().double().numpy(),
        "dense": [(w.detach().double().numpy(), b.detach().double().numpy()) for w, b in zip(net.dense_w, net.dense_b)],
    }


def write_published_layout(directory, tensors=None, config=None):
    """A checkpoint written as the public port's Hub mixin writes one: safetensors + its 5-key config."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = tensors if tensors is not None else {k: torch.randn(s) for k, s in PUBLISHED_KEYS.items()}
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config or PUBLISHED_CONFIG))
    return tensors


def pair(shapes, dtype, net, backend: str, device="cpu", **kw):
    """A float64 reference optimizer (on the CPU) and one on ``backend`` over copies of the same parameters on
    ``device`` (two param groups with their own lr and weight decay, so that every tensor of a call carries its
    own)."""
    ref = [torch.randn(s, dtype=torch.float64) for s in shapes]
    fast = [p.to(device, dtype) for p in ref]
    for p in ref:
        p.data.copy_(p.to(dtype).double())  # the same start (bf16 rounding included)

    def groups(ps):
        half = len(ps) // 2
        return [{"params": ps[:half], "weight_decay": 0.1}, {"params": ps[half:], "lr": 0.02}]

    opt_ref = mulo.Celo2(groups(ref), lr=0.01, meta_weights=net, backend="reference", **kw)
    opt_fast = mulo.Celo2(groups(fast), lr=0.01, meta_weights=net, backend=backend, **kw)
    return ref, fast, opt_ref, opt_fast


def set_grads(ref, fast, scale=1.0):
    for a, b in zip(ref, fast):
        b.grad = hetero_grad(a.shape, scale=scale).to(b.device, b.dtype)
        a.grad = b.grad.double().cpu()


def sync_state(opt_ref, opt_fast, ref, fast):
    """The fast optimizer's parameters and state set to the reference's (cast), for a one-step comparison."""
    for a, b in zip(ref, fast):
        b.data.copy_(a)
        opt_fast.state[b] = {k: v.to(b.device, torch.float32).clone() for k, v in opt_ref.state[a].items()}
        a.data.copy_(b.double())  # the reference starts from the representable values too
        for k, v in opt_ref.state[a].items():
            v.copy_(opt_fast.state[b][k])


def check_transposed_slices_share_one_chain(monkeypatch, backend: str, device="cpu"):
    """(5, 3) and (3, 5) slices (an MLP's down and up projections) go through ONE batched Newton–Schulz chain on
    ``backend``, the (5, 3) ones transposed; the step still matches the reference's."""
    from mulo.celo2 import reference
    from tests.tolerances import assert_close

    calls = []
    real = reference.newton_schulz

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    shapes = [(5, 3), (3, 5), (2, 5, 3), (4, 4)]
    ref, fast, opt_ref, opt_fast = pair(shapes, torch.float32, random_celo2_net(5), backend, device=device)
    set_grads(ref, fast)
    before = [a.clone() for a in ref]
    opt_ref.step()
    monkeypatch.setattr(reference, "newton_schulz", counting)
    opt_fast.step()
    assert sorted(calls) == [(1, 4, 4), (4, 3, 5)]
    for a, b, p0 in zip(ref, fast, before):
        step_ref = a - p0
        assert_close(b.double().cpu() - p0, step_ref, ("celo2 step newton-schulz", torch.float32), f"update of "
                     f"{tuple(a.shape)}", scale=step_ref.abs().max())  # fmt: skip
