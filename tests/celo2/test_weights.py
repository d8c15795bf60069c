"""Celo2 meta-weights: the published layout (written here, offline), save/load round trip, the layout check,
Hub ids, and the shipped placeholder."""

import json
import warnings

import pytest
import torch

import mulo
from mulo.celo2 import Celo2Config, Celo2Net, pretrained
from tests.celo2.common import PUBLISHED_CONFIG, PUBLISHED_KEYS, random_celo2_net, write_published_layout


def test_state_dict_has_the_published_keys():
    assert {k: tuple(v.shape) for k, v in Celo2Net().state_dict().items()} == PUBLISHED_KEYS


def test_published_layout_loads_and_round_trips(tmp_path):
    tensors = write_published_layout(tmp_path / "published")
    net = Celo2Net.from_pretrained(tmp_path / "published")
    for key, value in tensors.items():
        assert torch.equal(net.state_dict()[key], value), key
    net.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == PUBLISHED_CONFIG
    again = Celo2Net.from_pretrained(str(tmp_path / "again"))
    for key, value in tensors.items():
        assert torch.equal(again.state_dict()[key], value), key


def test_loaded_weights_step_like_the_network_object(tmp_path):
    net = random_celo2_net(5)
    net.save_pretrained(tmp_path / "w")
    a = torch.randn(4, 6, dtype=torch.float64)
    b = a.clone()
    opts = [mulo.Celo2([a], meta_weights=net), mulo.Celo2([b], meta_weights=tmp_path / "w")]
    a.grad = torch.randn_like(a)
    b.grad = a.grad.clone()
    for opt in opts:
        opt.step()
    assert torch.equal(a, b)


def test_forward_takes_feature_last_groups():
    net = random_celo2_net(6)
    groups = [torch.randn(5, 7, d) for d in Celo2Config().feature_dims]
    out = net(groups)
    h = torch.relu(sum(x @ w for x, w in zip(groups, net.w0)) + net.b0)
    h = torch.relu(h @ net.dense_w[0] + net.dense_b[0])
    torch.testing.assert_close(out, h @ net.dense_w[1] + net.dense_b[1])
    assert out.shape == (5, 7, 3)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda t: t.pop("dense_b.1"), r"missing \['dense_b.1'\]"),
        (lambda t: t.update({"w0.14": torch.zeros(1, 8)}), r"unexpected \['w0.14'\]"),
        (lambda t: t.update({"w0.3": torch.zeros(1, 8)}), r"'w0.3' \(1, 8\) \(expected \(3, 8\)\)"),
        (lambda t: t.update({"dense_w.0": torch.zeros(8, 8).T[:4]}), r"'dense_w.0' \(4, 8\)"),
        (lambda t: t["b0"].fill_(float("nan")), r"\['b0'\] hold non-finite values"),
    ],
)
def test_layout_check_names_what_is_wrong(tmp_path, change, match):
    tensors = {k: torch.randn(s) for k, s in PUBLISHED_KEYS.items()}
    change(tensors)
    write_published_layout(tmp_path / "bad", {k: v.contiguous() for k, v in tensors.items()})
    with pytest.raises(ValueError, match=match):
        Celo2Net.from_pretrained(tmp_path / "bad")


@pytest.mark.parametrize(
    "config, error, match",
    [
        ({**PUBLISHED_CONFIG, "feature_dims": [1] * 14}, ValueError, "feature_dims must be"),
        ({**PUBLISHED_CONFIG, "activation": "gelu"}, ValueError, "activation"),
        ({**PUBLISHED_CONFIG, "hidden_layers": 0}, ValueError, "hidden_layers ≥ 1"),
        ({**PUBLISHED_CONFIG, "hiden_size": 8}, ValueError, r"unknown config keys \['hiden_size'\]; known keys are"),
        (
            {"input_size": 39, "hidden_size": 32, "hidden_layers": 1},
            ValueError,
            r"a μLO \(LOptNet\) config, not a Celo2 one",
        ),
    ],
)
def test_bad_config_is_named(tmp_path, config, error, match):
    write_published_layout(tmp_path / "c", config=config)
    with pytest.raises(error, match=match):
        Celo2Net.from_pretrained(tmp_path / "c")


def test_other_network_sizes_load(tmp_path):
    config = {**PUBLISHED_CONFIG, "hidden_size": 4, "hidden_layers": 3, "activation": "tanh"}
    shapes = Celo2Config(**{**config, "feature_dims": tuple(config["feature_dims"])}).tensor_shapes()
    assert shapes["dense_w.2"] == (4, 3) and shapes["w0.0"] == (1, 4)
    write_published_layout(tmp_path / "n", {k: torch.randn(s) for k, s in shapes.items()}, config)
    net = Celo2Net.from_pretrained(tmp_path / "n")
    w = torch.randn(3, 5)
    opt = mulo.Celo2([w], meta_weights=net)
    w.grad = torch.randn_like(w)
    opt.step()
    assert torch.isfinite(w).all()


def test_missing_files_and_unknown_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        Celo2Net.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="shipped Celo2 weights"):
        Celo2Net.from_pretrained("mulo_cpu")  # a μLO name is not a Celo2 one
    with pytest.raises(FileNotFoundError, match="neither an existing directory"):
        mulo.Celo2([torch.randn(2, 2)], meta_weights=tmp_path / "nowhere")


def test_hub_id_resolves_through_snapshot_download(monkeypatch, tmp_path):
    """A Hub id goes through huggingface_hub.snapshot_download (the μLO loader's path) for the two files."""
    import huggingface_hub

    tensors = write_published_layout(tmp_path / "snap")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw) or str(tmp_path / "snap"))
    net = Celo2Net.from_pretrained("DiamondXL/celo2", revision="main")
    assert calls == [
        {"repo_id": "DiamondXL/celo2", "revision": "main", "allow_patterns": ["model.safetensors", "config.json"]}
    ]
    assert torch.equal(net.w0[5], tensors["w0.5"])


def test_hub_id_offline_gives_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="could not fetch meta-weights 'someone/no-such-celo2'"):
        Celo2Net.from_pretrained("someone/no-such-celo2")


def test_shipped_placeholder_is_its_builder_and_regenerates_byte_for_byte(tmp_path):
    assert pretrained.DEFAULT == "celo2_cpu" and {pretrained.DEFAULT, pretrained.PLACEHOLDER} <= set(pretrained.names())
    net = Celo2Net.from_pretrained(pretrained.PLACEHOLDER)
    assert net.is_placeholder and net.config.info["name"] == pretrained.PLACEHOLDER
    for key, value in pretrained.build_handset_adam().state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    pretrained.write_placeholder(tmp_path / "regenerated")
    shipped = pretrained.weights_dir(pretrained.PLACEHOLDER)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "regenerated" / name).read_bytes() == (shipped / name).read_bytes(), name


def test_placeholder_direction_is_the_normalized_adam_feature():
    """The placeholder's direction is exactly the normalized m₁ · rsqrt(v + 1e-8) feature."""
    from mulo.celo2 import reference

    w = pretrained.build_handset_adam().meta_weights("cpu", torch.float64)
    shape = (4, 6)
    state = reference.init_state(shape, False, "last2", torch.float64, torch.device("cpu"))
    g, p = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    acc = reference.accumulate(g, state)
    groups = reference.features(g, p, acc)
    normalized = reference.normalize_features(groups, reference.feature_sumsq(groups), 24)
    d = reference.direction(normalized, w)
    torch.testing.assert_close(d, normalized[pretrained.HANDSET_GROUP][0], rtol=0, atol=0)


def test_placeholder_warns_and_meta_trained_weights_do_not(tmp_path):
    with pytest.warns(mulo.PlaceholderMetaWeightsWarning, match="celo2_cpu"):
        mulo.Celo2([torch.randn(2, 2)], meta_weights=pretrained.PLACEHOLDER)
    with warnings.catch_warnings():  # the default, celo2_cpu, is meta-trained
        warnings.simplefilter("error")
        opt = mulo.Celo2([torch.randn(2, 2)])
    assert opt.net.config.info["name"] == "celo2_cpu" and not opt.net.is_placeholder
    random_celo2_net().save_pretrained(tmp_path / "w")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mulo.Celo2([torch.randn(2, 2)], meta_weights=str(tmp_path / "w"))
