"""LOptNet weight files: round trip, the published μLO_M layout, and clear errors for bad files."""

import hashlib
import json

import pytest
import torch

from mulo import LOptConfig, LOptNet
from mulo.lopt import pretrained
from mulo.lopt.pretrained import build_handset_adam, default_weights_dir

PUBLISHED_KEYS = {
    "network.input.weight": (32, 39),
    "network.input.bias": (32,),
    "network.linear_0.weight": (32, 32),
    "network.linear_0.bias": (32,),
    "network.output.weight": (2, 32),
    "network.output.bias": (2,),
}


def write_published_layout(directory, tensors=None, config=None):
    """A checkpoint written the way the published μLO_M one is: safetensors + the 3-key config."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = tensors or {k: torch.randn(s) for k, s in PUBLISHED_KEYS.items()}
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(
        json.dumps(config or {"input_size": 39, "hidden_size": 32, "hidden_layers": 1})
    )
    return tensors


def test_state_dict_has_published_keys():
    assert {k: tuple(v.shape) for k, v in LOptNet().state_dict().items()} == PUBLISHED_KEYS


def test_fresh_init_statistics():
    net = LOptNet(generator=torch.Generator().manual_seed(0))
    w = net.network["input"].weight
    assert w.abs().max() <= 2 / 39**0.5 + 1e-7  # truncated at 2σ
    assert 0.7 / 39**0.5 < w.std() < 1.0 / 39**0.5  # truncated normal std ≈ 0.88σ
    assert all(layer.bias.abs().max() == 0 for layer in net.network.values())


def test_save_load_round_trip(tmp_path):
    net = LOptNet(LOptConfig(step_mult=0.001, momentum_offsets=(0.1, 0.0, -0.1), layout="jax"))
    net.save_pretrained(tmp_path / "w")
    back = LOptNet.from_pretrained(tmp_path / "w")
    assert back.config == net.config
    for k, v in net.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_load_published_layout(tmp_path):
    tensors = write_published_layout(tmp_path / "mulo_m")
    net = LOptNet.from_pretrained(tmp_path / "mulo_m")
    for k, v in tensors.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert net.config.momentum_decays == LOptConfig().momentum_decays  # constants of the algorithm
    x = torch.randn(5, 39)
    h = torch.relu(x @ tensors["network.input.weight"].T + tensors["network.input.bias"])
    h = torch.relu(h @ tensors["network.linear_0.weight"].T + tensors["network.linear_0.bias"])
    out = h @ tensors["network.output.weight"].T + tensors["network.output.bias"]
    torch.testing.assert_close(net(x), out)
    jax = LOptNet.from_pretrained(tmp_path / "mulo_m", layout="jax", adafactor_offsets=[0.0, 0.0, 0.0])
    assert jax.config.layout == "jax" and jax.config.adafactor_decays == (0.9, 0.99, 0.999)


def test_wrong_shape_names_key(tmp_path):
    tensors = {k: torch.randn(s) for k, s in PUBLISHED_KEYS.items()}
    tensors["network.linear_0.weight"] = torch.randn(32, 31)
    write_published_layout(tmp_path / "bad", tensors)
    with pytest.raises(ValueError, match=r"network\.linear_0\.weight.*\(32, 31\).*\(32, 32\)"):
        LOptNet.from_pretrained(tmp_path / "bad")


def test_missing_key_and_missing_files(tmp_path):
    tensors = {k: torch.randn(s) for k, s in PUBLISHED_KEYS.items() if k != "network.output.bias"}
    write_published_layout(tmp_path / "partial", tensors)
    with pytest.raises(ValueError, match="missing.*network.output.bias"):
        LOptNet.from_pretrained(tmp_path / "partial")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        LOptNet.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither an existing directory, a Hub id"):
        LOptNet.from_pretrained(tmp_path / "does" / "not" / "exist")


def test_bad_config(tmp_path):
    write_published_layout(
        tmp_path / "c", config={"input_size": 39, "hidden_size": 32, "hidden_layers": 1, "hiden_size": 3}
    )
    with pytest.raises(ValueError, match="unknown config keys.*hiden_size"):
        LOptNet.from_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="input_size must be 39"):
        LOptConfig(input_size=40)
    with pytest.raises(ValueError, match="layout"):
        LOptConfig(layout="tf")


def test_non_finite_weights_rejected(tmp_path):
    tensors = {k: torch.randn(s) for k, s in PUBLISHED_KEYS.items()}
    tensors["network.output.bias"][0] = float("nan")
    write_published_layout(tmp_path / "nan", tensors)
    with pytest.raises(ValueError, match="non-finite"):
        LOptNet.from_pretrained(tmp_path / "nan")


def test_hub_id_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="could not fetch meta-weights 'someone/no-such-lopt'"):
        LOptNet.from_pretrained("someone/no-such-lopt")


def test_hub_id_resolves_through_snapshot_download(monkeypatch, tmp_path):
    """The Hub path is real code: it calls huggingface_hub.snapshot_download and loads what it returns."""
    import huggingface_hub

    tensors = write_published_layout(tmp_path / "snap")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    net = LOptNet.from_pretrained("btherien/mulo", revision="main")
    assert calls == [("btherien/mulo", "main", ("model.safetensors", "config.json"))]
    assert torch.equal(net.network["input"].weight, tensors["network.input.weight"])


def test_shipped_placeholder_is_marked_and_matches_its_builder():
    net = LOptNet.from_pretrained(pretrained.PLACEHOLDER)
    assert net.is_placeholder
    built = build_handset_adam()
    for k, v in built.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k


@pytest.mark.parametrize("name", ["mulo_cpu", "mulo_cpu_sp", "mulo_cpu_s2", "mulo_cpu_sp_s2", "mulo_nm"])
def test_shipped_meta_trained_weights_carry_their_provenance(name):
    directory = pretrained.weights_dir(name)
    net = LOptNet.from_pretrained(name)
    assert not net.is_placeholder and net.config.info["name"] == name
    prov = json.loads((directory / "PROVENANCE.json").read_text())
    for key in (
        "preset",
        "command",
        "config",
        "init_weights",
        "data",
        "outer_steps",
        "wall_time_s",
        "hardware",
        "torch_version",
        "git_sha_shipped_at",
        "meta_loss",
    ):
        assert prov.get(key) not in (None, "", {}), key
    assert (
        prov["outer_steps"]
        == net.config.info["outer_steps"]
        == len([r for b in prov["meta_loss"]["curve"] for r in range(b["outer_steps"][0], b["outer_steps"][1] + 1)])
    )
    assert prov["parameterization"] == ("sp" if "_sp" in name else "mup")
    assert net.config.step_mult == (0.001 if "_sp" in name else 0.01)
    assert (directory / "meta_loss.png").stat().st_size > 0
    if name.endswith("_s2"):  # a second stage: its parent is the shipped stage 1, lineage totalled
        parent = pretrained.weights_dir(name[: -len("_s2")])
        assert prov["parent"]["name"] == parent.name and prov["parent"]["outer_steps"] > 0
        assert prov["parent"]["model_sha256"] == hashlib.sha256((parent / "model.safetensors").read_bytes()).hexdigest()
        assert prov["lineage_outer_steps"] == prov["outer_steps"] + prov["parent"]["outer_steps"]
        assert prov["stopped_early"]["reason"].startswith("snapshot chosen by validation")
    # the weights moved away from the hand-set start
    start = LOptNet.from_pretrained(pretrained.PLACEHOLDER)
    moved = sum(float((a - b).abs().sum()) for a, b in zip(net.state_dict().values(), start.state_dict().values()))
    assert moved > 1.0


def test_mulo_nm_carries_its_whole_lineage():
    """mulo_nm is the last of three stages started from mulo_cpu: each stage's provenance is embedded in the
    next, with the starting weights' digest, and the outer steps are totalled over the lineage."""
    net = LOptNet.from_pretrained("mulo_nm")
    assert net.config.time_clamp == 1000.0  # meta-trained with the time features clamped: used the same way
    prov = json.loads((pretrained.weights_dir("mulo_nm") / "PROVENANCE.json").read_text())
    chain, p = [], prov
    while p:
        chain.append(p)
        p = p.get("parent")
    assert [c["name"] for c in chain] == [
        "mulo_nm", "nm_L4000_t1000_lr3e-4_step_20400", "nm_L4000_t1000_step_1800", "mulo_cpu"
    ]  # fmt: skip
    assert prov["lineage_outer_steps"] == sum(c["outer_steps"] for c in chain) == 30000 + 20400 + 1800 + 2500
    cpu = pretrained.weights_dir("mulo_cpu") / "model.safetensors"
    assert chain[-1]["model_sha256"] == hashlib.sha256(cpu.read_bytes()).hexdigest()
    assert [c["outer_steps"] for c in chain[1:3]] == [20400, 1800] and all(c["stopped_early"] for c in chain[1:3])


def test_default_weights_are_the_meta_trained_mulo_nm():
    assert default_weights_dir() == pretrained.weights_dir("mulo_nm")
    assert set(pretrained.names()) >= {"mulo_cpu", "mulo_cpu_sp", pretrained.PLACEHOLDER}


def test_unknown_shipped_name_lists_the_choices():
    with pytest.raises(FileNotFoundError, match="mulo_cpu_sp"):
        LOptNet.from_pretrained("mulo_cpu_spx")
    with pytest.raises(FileNotFoundError, match="choose one of"):
        pretrained.weights_dir("nope")


def test_placeholder_files_regenerate_byte_for_byte(tmp_path):
    """`python -m mulo.lopt.pretrained` rebuilds the shipped hand-set placeholder exactly."""
    from mulo.lopt import pretrained

    out = pretrained.build_handset_adam().save_pretrained(tmp_path / "p")
    shipped = pretrained.weights_dir(pretrained.PLACEHOLDER)
    assert (out / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()
