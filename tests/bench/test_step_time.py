"""The step-time harness itself: parameter sets against the published parameter counts, the byte/FLOP
model against hand-computed values, percentiles, floors, the row schema and provenance of a tiny run,
and the README table (bench/common.py, bench/step_time.py, bench/plot.py)."""

import json
import math

import pytest
import torch

from bench import common, plot, step_time
from mulo.backends import available_backends

# Published parameter counts (GPT-2 with tied head and wpe, timm's vit_base_patch16_224, LLaMA-3.2-1B).
PUBLISHED = {
    "gpt2-124m": 124_439_808,
    "gpt2-355m": 354_823_168,
    "vit-b16": 86_567_656,
    "llama-1b": 1_235_814_400,
    # GPT-3 XL in GPT-2 layout: wte 50257·2048 + wpe 2048·2048 + 24·(12d² + 13d) + ln_f 2d, d = 2048.
    "gpt3-xl-1.3b": 50257 * 2048 + 2048 * 2048 + 24 * (12 * 2048**2 + 13 * 2048) + 2 * 2048,
}

PROVENANCE_FIELDS = [
    "device",
    "device_type",
    "torch_version",
    "triton_version",
    "cuda_version",
    "git_sha",
    "date",
    "python_version",
]
ROW_FIELDS = [
    "schema",
    "run_id",
    "set",
    "n_elements",
    "n_tensors",
    "shapes",
    "param_dtype",
    "grad_dtype",
    "state_dtype",
    "optimizer",
    "backend",
    "status",
    "timer",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "iters",
    "ratio_to_adamw_fused",
    "baseline",
    "bytes_model",
    "flops_model",
    "floor_ms",
    "frac_of_floor",
    "copy_bandwidth_GBps",
    "matmul_fp32_TFLOPs",
    "peak_mem_bytes",
    "state_bytes",
    "state_bytes_per_element",
    *PROVENANCE_FIELDS,
]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_model_sets_match_published_parameter_counts(name):
    pset = common.param_set(name)
    assert pset.numel == PUBLISHED[name]
    assert len({s.name for s in pset.specs}) == len(pset.specs), "duplicate tensor names"


def test_roles_and_lr_scales():
    pset = common.param_set("gpt2-124m")
    by = {s.name: s for s in pset.specs}
    assert by["wte"].role == "input" and by["wte"].lr_scale == 1.0
    assert by["h.0.attn.c_attn.weight"].shape == (2304, 768)
    assert by["h.0.attn.c_attn.weight"].lr_scale == 1 / 768
    assert by["h.3.mlp.c_proj.weight"].lr_scale == 1 / 3072  # (d, 4d): fan_in is 4d
    assert by["h.0.ln_1.bias"].role == "other" and by["h.0.ln_1.bias"].lr_scale == 1.0
    vit = {s.name: s for s in common.param_set("vit-b16").specs}
    assert vit["patch_embed.proj.weight"].shape == (768, 3, 16, 16)
    assert vit["patch_embed.proj.weight"].role == "input"
    assert vit["head.weight"].role == "output" and vit["pos_embed"].shape == (1, 197, 768)
    llama = {s.name: s for s in common.param_set("llama-1b").specs}
    assert llama["layers.0.self_attn.k_proj.weight"].shape == (512, 2048)
    assert common.param_set("synthetic-4096").specs[0].shape == (4, 1024)
    with pytest.raises(ValueError, match="multiple of 1024"):
        common.param_set("synthetic-1000")
    with pytest.raises(ValueError, match="unknown parameter set 'gpt5'"):
        common.param_set("gpt5")


def test_shape_summary_counts_repeats():
    summary = common.param_set("gpt2-tiny").shape_summary()
    assert {"shape": [192, 64], "role": "hidden", "count": 2} in summary
    assert sum(e["count"] for e in summary) == len(common.param_set("gpt2-tiny").specs)


def test_byte_model_hand_computed():
    # (4, 8) fp32: 32 elements × 72 B + row (3×4) and col (3×8) accumulators, 4 accesses × 4 B each.
    assert common.mulo_bytes((4, 8)) == 32 * 72 + 4 * 3 * (4 + 8) * 4 == 2880
    # 1-d: full accumulators u₁₋₃ read in B, read and written in C: 72 + 9·4 = 108 B per element.
    assert common.mulo_bytes((10,)) == 10 * 108
    assert common.mulo_bytes(()) == 108  # a 0-d scalar is one element of shape (1,)
    # (2, 3, 4): d0 = axis 2, d1 = axis 1 → row (2, 3), col (2, 4).
    assert common.mulo_bytes((2, 3, 4)) == 24 * 72 + 4 * 3 * (6 + 8) * 4
    # bf16 parameters and gradients, fp32 state: 3·2 + 3·2 + 12·4 = 60 B per element.
    assert common.mulo_bytes((4, 8), 2, 2, 4) == 32 * 60 + 576
    assert common.adamw_bytes((4, 8)) == 32 * 28
    big = common.mulo_bytes((1024, 1024)) / 1024**2
    assert 72 < big < 72.1
    assert big / 28 == pytest.approx(2.57, abs=0.01)  # docs/ALGORITHM.md §5: ≈ 2.6 at the memory limit


def test_flop_model_hand_computed():
    assert common.MLP_MACS_PER_ELEMENT == 1984
    pset = common.synthetic(4096)
    mulo_cost = {"bytes_model": 4096 * 72 + 4 * 3 * 1028 * 4, "flops_model": 2 * 1984 * 4096}
    assert common.model_cost(pset, "mulo", 4, 4, 4) == mulo_cost
    assert common.model_cost(pset, "adamw", 4, 4, 4) == {"bytes_model": 4096 * 28, "flops_model": 15 * 4096}


def test_summarize_percentiles():
    s = common.summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["iters"] == 5
    assert s["p20_ms"] == pytest.approx(1.8) and s["p80_ms"] == pytest.approx(4.2)
    assert common.summarize([2.5])["p80_ms"] == 2.5
    with pytest.raises(ValueError):
        common.summarize([])


def test_floor_fields_hand_computed():
    floors = {"copy_bandwidth_GBps": 100.0, "matmul_fp32_TFLOPs": 1.0, "compute_floor_basis": "fp32"}
    f = common.floor_fields({"bytes_model": 10**9, "flops_model": 5 * 10**9}, floors, 20.0)
    assert f["bw_floor_ms"] == pytest.approx(10.0) and f["compute_floor_ms"] == pytest.approx(5.0)
    assert f["floor_ms"] == pytest.approx(10.0) and f["frac_of_floor"] == pytest.approx(0.5)
    floors.update(matmul_tf32_TFLOPs=10.0, compute_floor_basis="tf32")
    f = common.floor_fields({"bytes_model": 0, "flops_model": 5 * 10**9}, floors, None)
    assert f["compute_floor_ms"] == pytest.approx(0.5) and f["frac_of_floor"] is None


def test_grad_sets_cover_the_cache():
    tiny, big = common.synthetic(4096), common.synthetic(1 << 24)
    assert common.grad_sets_for(tiny, 4, 32 << 20, None) == 8
    assert common.grad_sets_for(big, 4, 32 << 20, None) == 2
    assert common.grad_sets_for(big, 4, 32 << 20, free_bytes=100 << 20) == 1


def test_setup_factory_rotates_gradients():
    setup = common.make_setup(common.param_set("vit-tiny"), torch.device("cpu"), n_grad_sets=3)
    assert [tuple(p.shape) for p in setup.params] == [s.shape for s in setup.pset.specs]
    setup.use_grads(4)
    assert all(p.grad is g for p, g in zip(setup.params, setup.grad_sets[1]))
    groups = setup.groups(2.0)
    hidden = next(g for g in groups if g["role"] == "hidden")
    assert hidden["lr_scale"] == 1 / 64 and hidden["lr"] == 2.0
    adam = setup.groups(2.0, scale_lr=True)  # μAdam: hidden weights get lr / fan_in, the rest lr
    assert [g["lr"] for g in adam] == [2.0 * s.lr_scale for s in setup.pset.specs]
    assert {g["lr"] for g in adam} == {2.0, 2.0 / 64, 2.0 / 256}


def test_fused_adamw_exists_on_cpu():
    assert step_time.fused_adamw_supported(torch.device("cpu"), torch.float32)  # torch ≥ 2.4


def test_tiny_run_rows_have_schema_and_provenance(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_text('{"kept": "earlier row"}\n')
    argv = ["--device", "cpu", "--sets", "llama-tiny", "--sizes", "4096", "--warmup", "1", "--iters", "2"]
    argv += ["--min-iters", "1", "--max-seconds", "1", "--out", str(out)]
    rows = step_time.run(argv)
    lines = out.read_text().splitlines()
    assert lines[0] == '{"kept": "earlier row"}', "results must be appended, never overwritten"
    assert [json.loads(x) for x in lines[1:]] == rows
    backends = available_backends("cpu", torch.float32, auto=True)
    expected = {("adamw_fused", "torch"), ("adamw_foreach", "torch"), ("adamw_forloop", "torch")}
    expected |= {("mulo", b) for b in backends}
    celo2 = available_backends("cpu", torch.float32, auto=True, rule="celo2")  # --celo2-backends' default
    expected |= {(name, b) for b in celo2 for name in ("celo2", "celo2_base")} | {("celo2_newton_schulz", "torch")}
    for name in ("llama-tiny", "synthetic-4096"):
        got = {(r["optimizer"], r["backend"]) for r in rows if r["set"] == name}
        assert got == expected
    assert len({r["run_id"] for r in rows}) == 1
    for r in rows:
        missing = [k for k in ROW_FIELDS if k not in r]
        assert not missing, f"row lacks {missing}"
        assert r["status"] == "ok", r.get("error")
        for k in ("device", "torch_version", "git_sha", "date", "triton_version"):
            assert r[k], f"provenance field {k} is empty"
        assert r["torch_version"] == torch.__version__ and r["device_type"] == "cpu"
        assert "hostname" not in json.dumps(r).lower()
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["baseline"] == "adamw_fused"
        assert r["frac_of_floor"] == pytest.approx(r["floor_ms"] / r["median_ms"])
        assert r["param_dtype"] == r["grad_dtype"] == "float32"
        base = next(b for b in rows if b["set"] == r["set"] and b["optimizer"] == "adamw_fused")
        assert r["ratio_to_adamw_fused"] == pytest.approx(r["median_ms"] / base["median_ms"])
    synth = {(r["optimizer"], r["backend"]): r for r in rows if r["set"] == "synthetic-4096"}
    ref = synth[("mulo", "reference")]
    # (4, 1024) weight: m (3×) and v fp32, row (3, 4) and col (3, 1024) accumulators, step and skip counters.
    assert ref["state_bytes"] == 4 * 4096 * 4 + 3 * (4 + 1024) * 4 + 4 + 4
    assert ref["bytes_model"] == 4096 * 72 + 4 * 3 * 1028 * 4 and ref["flops_model"] == 2 * 1984 * 4096
    assert ref["shapes"] == [{"shape": [4, 1024], "role": "hidden", "count": 1}]
    adam = synth[("adamw_fused", "torch")]
    assert adam["ratio_to_adamw_fused"] == 1.0 and adam["state_bytes"] == 4096 * 8 + 4  # m, v and the step


def test_quick_runs_save_nothing_unless_asked():
    parse = step_time.build_parser().parse_args
    assert step_time.output_paths(parse(["--quick"])) == []
    assert step_time.output_paths(parse([])) == [common.RESULTS_DIR / "step_time.jsonl"]
    assert [str(p) for p in step_time.output_paths(parse(["--quick", "--out", "a.jsonl", "--out", "b.jsonl"]))] == [
        "a.jsonl",
        "b.jsonl",
    ]


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        step_time.run(["--device", "cpu", "--backends", "nope", "--out", str(tmp_path / "x.jsonl")])


def _row(run_id, date, optimizer, backend, set_name, median, ratio, status="ok"):
    return {
        "schema": common.SCHEMA,
        "run_id": run_id,
        "date": date,
        "device_type": "cpu",
        "device": "Test CPU",
        "cpu_threads": 2,
        "torch_version": "2.x",
        "git_sha": "0123456789abcdef",
        "copy_bandwidth_GBps": 10.0,
        "optimizer": optimizer,
        "backend": backend,
        "set": set_name,
        "n_elements": 1 << 20,
        "status": status,
        "median_ms": median,
        "ratio_to_adamw_fused": ratio,
        "frac_of_floor": 0.25,
        "ns_per_element": 1.0,
        "floor_ms": 0.1,
    }


def test_readme_table_uses_the_latest_run_and_rewrites_between_markers(tmp_path):
    old = [_row("old", "2026-01-01T00:00:00+00:00", "adamw_fused", "torch", "synthetic-1048576", 9.0, 1.0)]
    new = [
        _row("new", "2026-02-01T00:00:00+00:00", "adamw_fused", "torch", "synthetic-1048576", 2.0, 1.0),
        _row("new", "2026-02-01T00:00:00+00:00", "mulo", "reference", "synthetic-1048576", 200.0, 100.0),
        _row("new", "2026-02-01T00:00:00+00:00", "mulo", "fast", "synthetic-1048576", 5.0, 2.5),
    ]
    runs = plot.latest_runs(old + new)
    assert [r["run_id"] for r in runs["cpu"]] == ["new"] * 3
    table = plot.readme_table(runs)
    assert "| synthetic-1048576 | 1,048,576 | 2 ms | 100× (25%) | 2.5× (25%) |" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{plot.BEGIN}\nstale\n{plot.END}\noutro\n")
    assert plot.rewrite_readme(table, readme)
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro\n") and text.endswith("outro\n") and table in text
    assert plot.rewrite_readme(table, readme) and readme.read_text() == text  # idempotent
    bare = tmp_path / "bare.md"
    bare.write_text("no markers")
    assert not plot.rewrite_readme(table, bare) and bare.read_text() == "no markers"
    figs = plot.plot(runs, tmp_path / "figs")
    assert sorted(p.name for p in figs) == ["step_time_cpu_ratio.png", "step_time_cpu_synthetic.png"]
    assert all(p.stat().st_size > 1000 for p in figs)


def test_plot_loads_only_step_time_rows(tmp_path):
    f = tmp_path / "r.jsonl"
    row = _row("a", "2026-01-01", "adamw_fused", "torch", "synthetic-1048576", 1.0, 1.0)
    f.write_text(json.dumps(row) + "\n\n" + json.dumps({"schema": "other"}) + "\n")
    assert plot.load_rows([f]) == [row]
    f.write_text("not json\n")
    with pytest.raises(SystemExit, match="r.jsonl:1"):
        plot.load_rows([f])
    assert math.isclose(72 / 28, 2.571, abs_tol=1e-3)


def test_triton_gets_a_deterministic_mode_row(monkeypatch):
    """With triton among the backends, step_time also times its deterministic mode (the flag on during each
    step and restored after), as ``mulo_deterministic``."""
    setup = common.make_setup(common.param_set("synthetic-4096"), torch.device("cpu"), n_grad_sets=1)
    names = [(o, b) for o, b, _ in step_time.optimizers(setup, torch.device("cpu"), torch.float32, ["triton"], None)]
    assert ("mulo", "triton") in names and ("mulo_deterministic", "triton") in names
    seen = []

    class Probe:
        state: dict = {}

        def step(self):
            seen.append(torch.are_deterministic_algorithms_enabled())

    assert not torch.are_deterministic_algorithms_enabled()
    step_time.Deterministic(Probe()).step()
    assert seen == [True] and not torch.are_deterministic_algorithms_enabled()
