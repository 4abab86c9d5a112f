"""`gasbench teacher`, `gasbench teachers`, `gasbench data` and `gasbench bench`: reproducing and
listing the teachers' weights, the trajectory cache, and the speed and memory benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from gasbench.cli_common import PluginOption, console, key_values, load_plugins, parse_ints, split_list
from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS, TEACHERS
from gasbench.teachers.load import load_teacher

teacher_app = typer.Typer(help="Train or inspect teachers.")
bench_app = typer.Typer(help="Speed and memory benchmarks that print figures.")
data_app = typer.Typer(help="The teacher-trajectory cache.")


@teacher_app.command("train", epilog="Example: gasbench teacher train digits --out digits.safetensors")
def teacher_train(
    name: str = typer.Argument("digits", help="Built-in teacher to train: digits or fashion."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the safetensors weights (default NAME.safetensors)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Training iterations; default: the committed run's."),
    seed: int = typer.Option(0, "--seed"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint file to resume from / write to."),
    threads: int = typer.Option(2, "--threads", help="CPU threads; the committed weights were made with 2 (another count changes the floating-point sums, so the sha256)."),
):
    """Reproduce a built-in teacher's committed weights and compare them with the pinned sha256."""
    import torch

    from gasbench.core.weights import sha256_of
    from gasbench.teachers import training

    if name not in training.RECIPES:
        raise GasbenchError(f"no trainer for teacher '{name}'; trainable: {', '.join(training.RECIPES)}.")
    out = out or Path(f"{name}.safetensors")
    torch.set_num_threads(threads)
    training.train_builtin_teacher(name, out, iterations=iterations, seed=seed, checkpoint_path=checkpoint)
    sha = sha256_of(out)
    same = "identical to" if sha == TEACHERS.get(name).weights.pin else "different from"
    console.print(f"wrote {out} (sha256 {sha}), {same} the committed weights")


@teacher_app.command("train-classifier", epilog="Example: gasbench teacher train-classifier fashion --out fashion-classifier.safetensors")
def teacher_train_classifier(
    name: str = typer.Argument(..., help="Dataset of a built-in teacher: digits or fashion."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the weights (default NAME-classifier.safetensors)."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(2, "--threads", help="CPU threads; the committed weights were made with 2 (another count changes the floating-point sums, so the sha256)."),
):
    """Reproduce the classifier whose features give a built-in teacher's domain FD."""
    import torch

    from gasbench.core.weights import sha256_of
    from gasbench.teachers import classifier

    if name not in classifier.CLASSIFIER_RECIPES:
        raise GasbenchError(f"no classifier recipe for '{name}'; trainable: {', '.join(classifier.CLASSIFIER_RECIPES)}.")
    out = out or Path(f"{name}-classifier.safetensors")
    torch.set_num_threads(threads)
    metadata = classifier.train_classifier(name, out, seed=seed)
    sha = sha256_of(out)
    same = "identical to" if sha == classifier.CLASSIFIER_SHA256[name] else "different from"
    console.print(f"wrote {out} (test accuracy {metadata['test_accuracy']:.4f}, sha256 {sha}), {same} the committed weights")


@data_app.command("info", epilog="Example: gasbench data info")
def data_info():
    """List the cached teacher trajectories: teacher, seeds, reference solver, shards, size."""
    from gasbench.trajectories import cache_root, describe_caches

    rows = describe_caches()
    out = Table(title=f"trajectory caches under {cache_root()}", title_justify="left")
    columns = ("teacher", "seeds", "samples", "states", "reference", "shards", "size_mb", "directory")
    for col in columns:
        out.add_column(col)
    for row in rows:
        out.add_row(*(str(row[c]) for c in columns))
    console.print(out if rows else f"no trajectory caches under {cache_root()}")


@bench_app.command("overhead", epilog="Example: gasbench bench overhead -d digits --nfe 4,10 --batch-size 256")
def bench_overhead(
    dataset: str = typer.Option("digits", "--dataset", "-d"),
    methods: Optional[list[str]] = typer.Option(None, "--methods", "-m", help="Default: every handcrafted solver."),
    nfe: list[str] = typer.Option(["4,10"], "--nfe"),
    batch_size: int = typer.Option(256, "--batch-size"),
    repeats: int = typer.Option(3, "--repeats"),
):
    """Solver arithmetic time / denoiser time per sampling call (target <= 1% at batch 256)."""
    import torch

    from gasbench.overhead import measure_overhead
    from gasbench.solvers.base import HandcraftedSolver

    teacher = load_teacher(dataset)
    names = split_list(methods) or [e.name for e in SOLVERS if issubclass(e.obj, HandcraftedSolver)]
    rows = measure_overhead(teacher, names, parse_ints(nfe, "--nfe"), batch_size, repeats)
    out = Table(title=f"solver overhead on {dataset}, batch {batch_size}, {torch.get_num_threads()} threads")
    for col in ("method", "NFE", "denoiser ms", "solver ms", "solver / denoiser", "table build ms (once)"):
        out.add_column(col, justify="right")
    for r in rows:
        out.add_row(r["method"], str(r["nfe"]), f"{r['denoiser_ms']:.1f}", f"{r['solver_ms']:.2f}",
                    f"{r['overhead_pct']:.2f}%", f"{r['table_ms']:.1f}")
    console.print(out)


@bench_app.command("training", epilog="Example: gasbench bench training -m gs -d fashion --nfe 4")
def bench_training(
    method: str = typer.Option("gs", "--method", "-m", help="A learned method."),
    dataset: str = typer.Option("digits", "--dataset", "-d"),
    nfe: list[str] = typer.Option(["4,10"], "--nfe"),
    batch_size: int = typer.Option(24, "--batch-size"),
    repeats: int = typer.Option(3, "--repeats"),
):
    """One training iteration against the student's own network passes, and its peak memory, with
    and without gradient checkpointing."""
    import torch

    from gasbench.overhead import measure_training_step

    if not getattr(SOLVERS.get(method), "learned", False):
        raise GasbenchError(f"'{method}' is not a learned method; `gasbench list solvers` shows which are.")
    teacher = load_teacher(dataset)
    rows = measure_training_step(teacher, SOLVERS.resolve(method).name, parse_ints(nfe, "--nfe"), batch_size, repeats)
    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    out = Table(title=f"{method} training step on {dataset}, batch {batch_size} ({device})")
    for col in ("NFE", "checkpointing", "step ms", "network fwd+bwd ms", "step / network", "peak MB"):
        out.add_column(col, justify="right")
    for r in rows:
        out.add_row(str(r["nfe"]), "yes" if r["checkpointing"] else "no", f"{r['step_ms']:.0f}",
                    f"{r['network_ms']:.0f}", f"{r['ratio']:.2f}", f"{r['peak_mb']:.0f}")
    console.print(out)


@bench_app.command("metrics", epilog="Example: gasbench bench metrics -d digits -n 200 --metrics fd,fid,lpips-vgg")
def bench_metrics(
    dataset: str = typer.Option("digits", "--dataset", "-d"),
    metrics: Optional[list[str]] = typer.Option(None, "--metrics", help="Default: the teacher's metrics plus fid, lpips-alex and lpips-vgg."),
    num_samples: int = typer.Option(200, "--num-samples", "-n"),
):
    """Images per second of each metric's pipeline on CPU or GPU (one-off setup reported apart)."""
    import torch

    from gasbench.overhead import measure_metric_speed
    from gasbench.tables import default_metrics

    names = split_list(metrics) or list(dict.fromkeys([*default_metrics(dataset), "fid", "lpips-alex", "lpips-vgg"]))
    teacher = load_teacher(dataset)
    rows = measure_metric_speed(teacher, names, num_samples)
    out = Table(title=f"metric speed on {dataset}, {num_samples} samples, {torch.get_num_threads()} threads")
    for col in ("metric", "setup s (once)", "compute s", "images/s"):
        out.add_column(col, justify="right")
    for r in rows:
        out.add_row(r["metric"], f"{r['setup_s']:.2f}", f"{r['compute_s']:.3f}", f"{r['images_per_s']:.1f}")
    console.print(out)


@bench_app.command("profile", epilog="Example: gasbench bench profile --results-dir benchmarks/default-run --into benchmarks/profile.md")
def bench_profile(
    results_dir: Path = typer.Option(Path("results"), "--results-dir"),
    teacher: Optional[str] = typer.Option(None, "--teacher", "-d", help="Only this teacher's cells."),
    into: Optional[Path] = typer.Option(None, "--into", help="Also write the table between the gasbench-table markers of this file."),
    block: Optional[str] = typer.Option(None, "--block", help="With --into: fill the markers named <!-- gasbench-table:BLOCK:start/end --> instead."),
):
    """Where a run's time went: seconds per phase (teacher solves, fit forward/backward, validation,
    sampling, metrics) of every recorded cell, then per method with its share of the run."""
    from gasbench.profile import profile_markdown, profile_rows
    from gasbench.tables import write_into

    rows = profile_rows(results_dir, teacher)
    if not rows:
        raise GasbenchError(f"no record under {results_dir} has phase times (records written before gasbench "
                            f"recorded them, or no learned or handcrafted cell); run `gasbench run --results-dir {results_dir}` first.")
    text = profile_markdown(rows)
    print(text)
    if into is not None:
        write_into(into, text, block)


def status(
    results_dir: Path = typer.Option(Path("results"), "--results-dir"),
    all_cells: bool = typer.Option(False, "--all", help="List recorded cells too, not only running and missing ones."),
):
    """Which cells of the runs started on a results directory are recorded, running (another
    process holds the cell's lock) or missing, per command (every shard of a sweep writes the plan)."""
    from gasbench.jobs import cell_states

    rows = cell_states(results_dir)
    if not rows:
        raise GasbenchError(f"no run on {results_dir} has written its plan ({results_dir}/.plans): a run writes it "
                            f"once its teacher row is recorded; `gasbench run --results-dir {results_dir}` starts one.")
    for command in dict.fromkeys(r["command"] for r in rows):
        mine = [r for r in rows if r["command"] == command]
        counts = {s: sum(r["state"] == s for r in mine) for s in ("recorded", "running", "missing")}
        out = Table(title=f"{command}: " + ", ".join(f"{n} {s}" for s, n in counts.items()), title_justify="left")
        out.add_column("cell")
        out.add_column("state")
        for r in mine:
            if all_cells or r["state"] != "recorded":
                out.add_row(r["cell"], r["state"])
        console.print(out)


def claims(
    results_dir: Path = typer.Option(Path("results"), "--results-dir"),
    into: Optional[Path] = typer.Option(None, "--into", help="Also write the table between the gasbench-table:BLOCK markers of this file."),
    block: str = typer.Option("claims", "--block", help="With --into: fill <!-- gasbench-table:BLOCK:start/end -->."),
    fmt: str = typer.Option("markdown", "--format", help="markdown or csv."),
):
    """The papers' pairwise claims (claims.csv) against the recorded results: the paper's numbers,
    our paired differences per teacher and NFE, and whether each claim holds, is reversed or cannot
    be separated by the seed sets."""
    from gasbench.claims import render_claims
    from gasbench.tables import write_into

    text = render_claims(results_dir, fmt)
    print(text)
    if into is not None:
        write_into(into, text, block)


def teachers(
    check: bool = typer.Option(False, "--check", help="Hash the weights files found and compare them with the pins."),
    plugin: Optional[list[str]] = PluginOption,
):
    """The registered teachers, the weights each needs, whether they are present, and where they are looked for."""
    from gasbench.core.weights import sha256_of, weights_dir
    from gasbench.teachers.base import declared_weights

    load_plugins(plugin)
    out = Table(title=f"teachers (weights looked for in: --weights PATH, then {weights_dir()}, then the URL when online)",
                title_justify="left")
    for column in ("name", "weights file", "pinned sha256", "present", "source"):
        out.add_column(column, style="bold" if column == "name" else None)
    for entry in TEACHERS:
        declared = declared_weights(entry.obj)
        if declared.hub_id is not None:
            out.add_row(entry.name, f"hub: {declared.hub_id}", "-", "diffusers' cache", declared.obtained())
            continue
        path, pin = declared.path, declared.sha256
        if path is None:
            out.add_row(entry.name, "-", "-", "not needed", entry.description)
            continue
        present = "no"
        if path.is_file():
            present = "yes"
            if check:
                present = "yes, sha256 matches" if sha256_of(path) == pin else "yes, sha256 DIFFERS" if pin else "yes, unpinned"
        out.add_row(entry.name, str(path), pin or "(not pinned)", present, declared.obtained())
    console.print(out)
    console.print("Also: --dataset diffusers:<hub id or folder> wraps any diffusers pipeline (hub downloads need a connection).")


@bench_app.command("power", epilog="Example: gasbench bench power -d fashion --nfe 4 --seed-sets 3,5,8 --samples 1000,2000")
def bench_power(
    dataset: str = typer.Option("fashion", "--dataset", "-d"),
    nfe: list[str] = typer.Option(["4"], "--nfe", help="The pilot's NFE columns to read."),
    metric: str = typer.Option("fd", "--metric"),
    seed_sets: list[str] = typer.Option(["3,5,8"], "--seed-sets", help="Designs: seed sets."),
    samples: list[str] = typer.Option(["1000"], "--samples", help="Designs: samples per seed set."),
    results_dir: Path = typer.Option(Path("results"), "--results-dir", help="The pilot run's records."),
    into: Optional[Path] = typer.Option(None, "--into", help="Also write the tables between the markers of this file (--block)."),
    block: Optional[str] = typer.Option(None, "--block"),
):
    """How many seed sets of how many samples tell a leaderboard's neighbouring rows apart: a
    power analysis of the paired tests from a pilot run's per-seed-set values."""
    from gasbench.power import neighbour_pairs, power_markdown, power_rows
    from gasbench.tables import write_into

    designs = parse_ints(seed_sets, "--seed-sets")
    if min(designs) < 2:
        raise GasbenchError("--seed-sets must be at least 2: one seed set has no paired test.")
    pairs, pilot_sets, pilot_samples = neighbour_pairs(results_dir, dataset, metric, parse_ints(nfe, "--nfe"))
    rows = power_rows(pairs, pilot_sets, pilot_samples, designs, parse_ints(samples, "--samples"))
    text = power_markdown(pairs, rows, pilot_sets, pilot_samples)
    print(text)
    if into is not None:
        write_into(into, text, block)


@bench_app.command("pretrain-discriminator", epilog="Example: gasbench bench pretrain-discriminator -d fashion --iterations 2000")
def bench_pretrain_discriminator(
    dataset: str = typer.Option("fashion", "--dataset", "-d"),
    nfe: int = typer.Option(4, "--nfe", help="The fakes: DPM-Solver++(3M) at this NFE, where GS starts."),
    iterations: int = typer.Option(2000, "--iterations"),
    seed: int = typer.Option(0, "--seed"),
):
    """Pre-train GAS's compact discriminator on the teacher's samples, for
    `--solver-arg discriminator=compact-pretrained` (the analogue of GAS's pretrained R3GAN)."""
    from gasbench.gas_curve import gradient_ratio, pretrain_discriminator

    teacher = load_teacher(dataset)
    info = pretrain_discriminator(teacher, nfe=nfe, iterations=iterations, seed=seed)
    console.print(f"wrote {info['path']}: {iterations} iterations; on {info['real'].split('(')[1].rstrip(')')}, "
                  f"it ranks the teacher's sample above the DPM-Solver++(3M) one for "
                  f"{100 * info['held_out_ranked_right']:.1f}% of pairs")
    ratios = {d: gradient_ratio(teacher, d, nfe) for d in ("compact", "compact-pretrained")}
    console.print(f"at GS's start the adversarial loss's gradient is {ratios['compact']:.3g} x the L1 loss's with a "
                  f"fresh discriminator, {ratios['compact-pretrained']:.3g} x with this one")


@bench_app.command("gas-curve", epilog="Example: gasbench bench gas-curve -d fashion --iterations 0,300,1000,2000,3000 "
                   "--solver-arg discriminator=compact-pretrained --solver-arg adv_weight=1.0")
def bench_gas_curve(
    dataset: str = typer.Option("fashion", "--dataset", "-d"),
    nfe: int = typer.Option(4, "--nfe"),
    iterations: list[str] = typer.Option(["0,300,1000,2000,3000"], "--iterations", help="The milestones scored."),
    seeds: int = typer.Option(3, "--seeds", help="Seed sets."),
    num_samples: int = typer.Option(1000, "--num-samples", "-n"),
    solver_arg: Optional[list[str]] = typer.Option(None, "--solver-arg", help="key=value for GAS (and GS where it has the option)."),
    out: Path = typer.Option(Path("results/fashion/gas-curve"), "--out"),
    into: Optional[Path] = typer.Option(None, "--into", help="Also write the table between the markers of this file (--block)."),
    block: Optional[str] = typer.Option(None, "--block"),
):
    """GS and GAS fitted from the same start on the same pairs, FD and KD after each milestone
    (paired over the seed sets); resumable: the same command continues where it stopped."""
    from gasbench.gas_curve import curve_markdown, fit_curves
    from gasbench.tables import write_into

    teacher = load_teacher(dataset)
    args = key_values(solver_arg)
    methods = {"gs": {k: v for k, v in args.items() if k in SOLVERS.get("gs").options},
               "gas": args}
    unknown = set(args) - set(SOLVERS.get("gas").options)
    if unknown:
        raise GasbenchError(f"GAS has no option {', '.join(sorted(unknown))}; `gasbench show gas` lists its options.")
    seed_sets = [list(range(50_000 + k * num_samples, 50_000 + (k + 1) * num_samples)) for k in range(seeds)]
    curve = fit_curves(teacher, methods, nfe, parse_ints(iterations, "--iterations"), seed_sets, out)
    table = curve_markdown(curve, "gs", "gas")
    console.print(table)
    if into is not None:
        write_into(into, table, block)
