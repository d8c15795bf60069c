"""What MuLO says at construction about a model that is not set up for μP, what it must not do (advance
torch's global RNG), and reading the non-finite skip counts."""

import warnings

import pytest
import torch
from torch import nn

import mulo
from mulo.mup.models import MuMLP
from mulo.optim.mulo import MuPWarning


def plain_mlp():
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))


def no_mup_warning(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MuPWarning)
        return make()


def test_no_roles_says_so_once_at_the_users_line_with_the_fix():
    model = plain_mlp()
    with pytest.warns(MuPWarning, match=r"without μP roles.*mulo\.mup\.prepare\(model\)") as caught:
        mulo.MuLO(model.parameters())
    assert len(caught) == 1 and caught[0].filename == __file__
    # the SP learned optimizer is meant for plain parameters: nothing to say
    no_mup_warning(lambda: mulo.MuLO(model.parameters(), meta_weights="mulo_cpu_sp"))


def test_roles_on_a_model_that_is_not_mup_say_so():
    model, base = plain_mlp(), nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5))
    groups = mulo.mup.param_groups(model, base_model=base)  # exact roles, but a standard-init nn.Linear head
    with pytest.warns(MuPWarning, match=r"role 'output' for param_groups\[\d\]\['params'\]\[0\] \(5, 32\)"):
        mulo.MuLO(groups)
    with pytest.warns(MuPWarning, match="no parameter has role 'output'"):  # the head guessed 'hidden'
        mulo.MuLO(mulo.mup.param_groups(plain_mlp()))


def test_mup_models_construct_silently():
    model = plain_mlp()
    no_mup_warning(lambda: mulo.MuLO(mulo.mup.prepare(model)))
    m = MuMLP(12, 32, 2, 5)
    no_mup_warning(lambda: mulo.MuLO(mulo.mup.param_groups(m, m.roles())))
    with torch.no_grad():  # a trained μP readout is not zero: still a MuReadout, still fine
        m.readout.weight.normal_()
    no_mup_warning(lambda: mulo.MuLO(mulo.mup.param_groups(m, m.roles())))


@pytest.mark.parametrize("layout", [None, "jax"])
def test_construction_leaves_the_global_rng_alone(layout):
    params = [nn.Parameter(torch.zeros(3, 2))]
    torch.manual_seed(123)
    expected = torch.rand(4)
    for weights in (None, "mulo_cpu_s2", mulo.LOptNet.from_pretrained("mulo_cpu")):
        torch.manual_seed(123)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MuPWarning)
            mulo.MuLO(params, meta_weights=weights, layout=layout, backend="reference")
        assert torch.equal(torch.rand(4), expected), f"MuLO(meta_weights={weights!r}) drew from torch's RNG"


def test_nonfinite_skips_are_read_on_demand():
    a, b = nn.Parameter(torch.ones(3, 2)), nn.Parameter(torch.ones(4))
    opt = mulo.MuLO([{"params": [a]}, {"params": [b]}], backend="reference")
    assert opt.nonfinite_skips().item() == 0 and opt.nonfinite_skips(per_parameter=True) == {}
    for bad in (True, False, True):
        a.grad = torch.full_like(a, float("nan") if bad else 1.0)
        b.grad = torch.ones_like(b)
        opt.step()
    total = opt.nonfinite_skips()
    assert total.shape == () and total.item() == 2
    per = opt.nonfinite_skips(per_parameter=True)
    assert {k: v.item() for k, v in per.items()} == {
        "param_groups[0]['params'][0]": 2.0,
        "param_groups[1]['params'][0]": 0.0,
    }
    assert per["param_groups[0]['params'][0]"] is opt.state[a]["nonfinite_skips"]


def test_offline_hub_error_names_the_hf_cli(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="`hf download someone/no-such-lopt`"):
        mulo.MuLO([nn.Parameter(torch.ones(2))], meta_weights="someone/no-such-lopt")
