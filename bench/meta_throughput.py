"""How much faster is one batched population inner step than stepping the members one by one?

    python bench/meta_throughput.py --quick                 # CPU: the tiny and small presets' tasks
    python bench/meta_throughput.py --device cuda --preset small

One inner step of meta-training, for all 2N perturbed members of an estimator (docs/ALGORITHM.md §7):
the loss and gradient of every member on its batch, then one μLO update per member with its own
meta-weights θ ± ε_i.

* ``population``: what :class:`mulo.meta.unroll.PopulationUnroll` runs: the task's batched gradients
  (``Task.population_grads_and_losses``: for the MLP tasks a hand-written batched forward/backward) and ONE
  call of the population step of ``--inner-backend`` (``cpu``: ``mulo::lopt_population_step`` on the stacks);
* ``population_vmap``: the inner step as it was before both (issue 15's "today's path"): one
  ``torch.func.vmap`` forward/backward for all members, and the backend's population step on every member's
  views, one tensor per member with a meta-weight index (``cpu``: ``CpuBackend.population_step_views``, the
  three separate passes; other backends: their one population step), timed in the same run so the speedup
  is read off one table. It shares the element-wise kernels, so their own speedups count in neither ratio;
* ``loop``: member by member, a ``torch.func.grad`` forward/backward and a reference-backend step with that
  member's meta-weights (the same math, nothing batched).

Both see the same parameters, batches and meta-weights. Warm-up steps are not timed; each method is timed
``--repeats`` times, interleaved, as the median (p20/p80) of per-step wall times (CUDA synchronized), and of
the process's CPU times (``*_cpu_ms``: on a CPU shared with other jobs, what the step costs without the waits).
Rows (one per task and method pair, with the ratio loop/population and member-steps per second) are
APPENDED as JSON lines to bench/results/meta_throughput.jsonl with provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import provenance, summarize, sync  # noqa: E402
from mulo.backends import resolve_backend  # noqa: E402
from mulo.backends.population import backend_population_step, init_population_state  # noqa: E402
from mulo.lopt.network import LOptConfig, LOptNet  # noqa: E402
from mulo.meta import theta as theta_mod  # noqa: E402
from mulo.meta.presets import preset  # noqa: E402
from mulo.meta.tasks import ImageMLPFamily  # noqa: E402


def setup(spec, members: int, device: torch.device, seed: int = 0):
    task = ImageMLPFamily(spec, device).sample(torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    inits = [task.init(gen) for _ in range(members)]
    params = {k: torch.stack([p[k] for p in inits]).to(device) for k in inits[0]}
    states = {k: init_population_state(v) for k, v in params.items()}
    config = LOptConfig()
    thetas = torch.stack([theta_mod.flatten(LOptNet(config, generator=gen)) for _ in range(members)]).to(device)
    weights = theta_mod.population_weights(thetas, config)
    x, y = task.batches(gen, members)
    return task, params, states, weights, (x, y)


def views_step(backend, step_fn):
    """The backend's population step on per-member views (the baseline of ``population_vmap``), or
    ``step_fn`` for backends that have only one."""
    return getattr(backend, "population_step_views", step_fn)


def population_inner_step(task, params, states, weights, batch, grad_fn, step_fn):
    names = list(params)
    grads, _ = grad_fn(params, batch)
    step_fn(
        [params[k] for k in names],
        [grads[k] for k in names],
        [states[k] for k in names],
        [task.roles[k].lr_scale for k in names],
        [0.0] * len(names),
        weights,
    )


def loop_inner_step(task, params, states, weights, batch, grad_fn, backend):
    names = list(params)
    x, y = batch
    for j in range(weights.size):
        member = {k: params[k][j] for k in names}  # views: the update writes through
        grads = grad_fn(member, (x[j], y[j]))
        st = [{key: value[j] for key, value in states[k].items()} for k in names]
        backend.step(
            [member[k] for k in names],
            [grads[k] for k in names],
            st,
            [task.roles[k].lr_scale for k in names],
            [0.0] * len(names),
            weights.member(j),
        )


def time_steps(fn, device, steps: int) -> tuple[list[float], list[float]]:
    """Wall times and this process's CPU times (ms) of ``steps`` calls: on a CPU shared with other jobs the CPU
    time is what the step itself costs, the wall time adds the waits for a core."""
    wall, cpu = [], []
    for _ in range(steps):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def bench_one(
    spec, members: int, device: torch.device, steps: int, repeats: int, warmup: int, inner_backend: str = "reference"
) -> dict:
    task, params, states, weights, batch = setup(spec, members, device)
    vmap_grad = torch.func.vmap(torch.func.grad_and_value(task.loss))
    one_grad = torch.func.grad(task.loss)
    step_fn = backend_population_step(inner_backend, device)
    backend = resolve_backend(inner_backend, device)  # the loop baseline steps each member with the same backend
    baseline_step = views_step(backend, step_fn)

    def pop():
        with torch.no_grad():
            population_inner_step(task, params, states, weights, batch, task.population_grads_and_losses, step_fn)

    def pop_vmap():
        with torch.no_grad():
            population_inner_step(task, params, states, weights, batch, vmap_grad, baseline_step)

    def loop():
        with torch.no_grad():
            loop_inner_step(task, params, states, weights, batch, one_grad, backend)

    methods = {"population": pop, "population_vmap": pop_vmap, "loop": loop}
    for _ in range(warmup):
        for fn in methods.values():
            fn()
    times = {name: [] for name in methods}
    cpu_times = {name: [] for name in methods}
    for _ in range(repeats):  # interleaved, so load changes hit all
        for name, fn in methods.items():
            wall, cpu = time_steps(fn, device, steps)
            times[name] += wall
            cpu_times[name] += cpu
    summary = {k: summarize(v) for k, v in times.items()}
    cpu_summary = {k: summarize(v) for k, v in cpu_times.items()}
    n_params = sum(v[0].numel() for v in params.values())
    return {
        "bench": "meta_throughput",
        "task": f"{spec.parameterization}_mlp_{spec.dataset}_w{spec.width}_d{spec.depth}_b{spec.batch_size}",
        "members": members,
        "inner_backend": backend.name,
        "vmap_baseline_step": getattr(baseline_step, "__name__", "population_step"),
        "params_per_member": n_params,
        "dtype": "float32",
        "population_ms": summary["population"],
        "population_vmap_ms": summary["population_vmap"],
        "loop_ms": summary["loop"],
        "speedup": summary["loop"]["median_ms"] / summary["population"]["median_ms"],
        "speedup_over_vmap": summary["population_vmap"]["median_ms"] / summary["population"]["median_ms"],
        # process CPU time (all threads), the same steps: robust to waits for a shared core
        "population_cpu_ms": cpu_summary["population"],
        "population_vmap_cpu_ms": cpu_summary["population_vmap"],
        "speedup_over_vmap_cpu": cpu_summary["population_vmap"]["median_ms"] / cpu_summary["population"]["median_ms"],
        "ns_per_member_param": summary["population"]["median_ms"] * 1e6 / (members * n_params),
        "ns_per_member_param_vmap": summary["population_vmap"]["median_ms"] * 1e6 / (members * n_params),
        "member_steps_per_s_population": members / (summary["population"]["median_ms"] / 1e3),
        "member_steps_per_s_loop": members / (summary["loop"]["median_ms"] / 1e3),
        **provenance(device),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", action="append", help="preset(s) whose task families to time (default tiny, small)")
    p.add_argument("--members", type=int, default=None, help="2N (default: the preset's)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--inner-backend", default="reference", help="backend of the optimizer steps (reference, cpu, ...)")
    p.add_argument("--quick", action="store_true", help="fewer timed steps (CPU smoke run)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "meta_throughput.jsonl"))
    p.add_argument(
        "--compare",
        metavar="SHA",
        help="time nothing: print the population inner step of the rows of commit SHA against this checkout's "
        "(the rows of --out measured on this device since --since; bench/meta_throughput_against.sh writes them)",
    )
    p.add_argument("--since", default=None, help="with --compare: rows dated on or after this ISO date (default today)")
    args = p.parse_args(argv)
    if args.compare:
        return compare(Path(args.out), args.compare, args.since)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps, repeats = (2, 2) if args.quick else (args.steps, args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.preset or ["tiny", "small"]:
        cfg = preset(name)
        members = args.members or 2 * cfg.num_pairs
        for spec in cfg.families:
            row = {"preset": name, **bench_one(spec, members, device, steps, repeats, args.warmup, args.inner_backend)}
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{row['task']:32s} M={members:3d}  population {row['population_ms']['median_ms']:8.2f} ms "
                f"({row['ns_per_member_param']:.0f} ns/member-param)  "
                f"vmap {row['population_vmap_ms']['median_ms']:8.2f} ms ({row['speedup_over_vmap']:.2f}x; "
                f"CPU time {row['population_cpu_ms']['median_ms']:.2f} vs "
                f"{row['population_vmap_cpu_ms']['median_ms']:.2f} ms, {row['speedup_over_vmap_cpu']:.2f}x)  "
                f"loop {row['loop_ms']['median_ms']:8.2f} ms ({row['speedup']:.1f}x)"
            )
    print(f"appended to {out}")
    return 0


def compare(path: Path, base_sha: str, since: str | None) -> int:
    """Per task, the median over rows of the population inner step (ms) of commit ``base_sha`` and of this
    checkout's commit, on this machine's device since ``since``, and their ratio (how many times faster)."""
    import datetime
    import statistics

    from bench.common import device_name, git_sha

    since = since or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    here, device = git_sha(), device_name(torch.device("cpu"))
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("device") == device and r.get("date", "") >= since and r.get("git_sha")]
    by = {}
    for r in rows:
        side = "base" if r["git_sha"].startswith(base_sha) else "here" if r["git_sha"] == here else None
        if side and r.get("inner_backend") == "cpu":
            by.setdefault((r["task"], r["members"]), {}).setdefault(side, []).append(r["population_ms"]["median_ms"])
    if not by:
        print(f"no rows of {base_sha} and {here[:8]} on {device} since {since} in {path}")
        return 1
    print(f"population inner step, median over rounds (ms): {base_sha[:8]} vs this checkout {here[:8]} on {device}")
    for (task, members), sides in sorted(by.items()):
        if "base" in sides and "here" in sides:
            b, h = statistics.median(sides["base"]), statistics.median(sides["here"])
            print(
                f"{task:32s} M={members:3d}  {b:8.2f} ms ({len(sides['base'])} rounds)  {h:8.2f} ms "
                f"({len(sides['here'])} rounds)  {b / h:.2f}x faster"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
