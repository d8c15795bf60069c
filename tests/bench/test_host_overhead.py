"""bench/host_overhead.py runs and writes its row: every optimizer timed, each MuLO backend also on the same
elements as one tensor, and the per-tensor work as the difference (no timing is asserted)."""

import json

from bench import host_overhead


def test_row_has_the_per_tensor_decomposition(tmp_path):
    out = tmp_path / "rows.jsonl"
    assert host_overhead.main(["--steps", "2", "--repeats", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["tensors"] == 148 and row["ratio_to_fused_adamw"]["adamw_fused"] == 1.0
    assert {"mulo_cpu", "mulo_cpu_unplanned", "mulo_cpu_one_tensor"} <= set(row["step_ms"])
    expected = row["step_ms"]["mulo_cpu"]["median_ms"] - row["step_ms"]["mulo_cpu_one_tensor"]["median_ms"]
    assert row["per_tensor_ms"] == {"mulo_cpu": expected}
    assert row["git_sha"] and row["device"]
