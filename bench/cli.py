"""The `gasbench` command line (Typer)."""

from __future__ import annotations

import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import click
import typer
from rich.markup import escape
from rich.table import Table

from gasbench.budgets import BUDGETS, DEFAULT_REFERENCE
from gasbench.cli_common import PluginOption, console, err_console, key_values, load_plugins, parse_ints, split_list
from gasbench.cli_tools import bench_app, claims, data_app, status, teacher_app, teachers
from gasbench.core import distributed
from gasbench.core.errors import GasbenchError
from gasbench.core.registry import METRICS, SCHEDULES, SOLVERS, TEACHERS, default_run_solvers
from gasbench.teachers.load import load_teacher

# typer >= 0.24 vendors its own click: its usage errors are not click's classes
try:
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:
    _TyperClickException = click.ClickException
USAGE_ERRORS = (click.ClickException, _TyperClickException)
ABORTS = (click.exceptions.Abort, typer.Abort)

app = typer.Typer(add_completion=True, no_args_is_help=False, help=__doc__,
                  epilog="Add --debug anywhere on the command line to see the full traceback of an error.")
app.add_typer(data_app, name="data")
app.add_typer(teacher_app, name="teacher")
app.add_typer(bench_app, name="bench")
app.command(epilog="Example: gasbench teachers --check")(teachers)
app.command(epilog="Example: gasbench claims --results-dir results --into docs/claims.md")(claims)
app.command(epilog="Example: gasbench status --results-dir sweep")(status)


def _run_config(values: dict, source: str):
    """A RunConfig from option values as the command line or a YAML file gives them."""
    from gasbench.config import split_methods
    from gasbench.runner import RunConfig

    def listed(value) -> list[str]:
        return split_list([str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)])

    names, per_method = split_methods(values["methods"] if not isinstance(values["methods"], list)
                                      else ",".join(map(str, values["methods"])), source)
    solver_args = values["solver_args"]
    if isinstance(solver_args, dict):
        solver_args = {str(k): v for k, v in solver_args.items()}
    else:
        solver_args = key_values(solver_args)
    def optional_path(value) -> Optional[Path]:
        return None if value is None else Path(value)

    try:
        return RunConfig(
            teacher=str(values["dataset"]), methods=names or None, nfes=parse_ints(listed(values["nfe"]), "--nfe"),
            seed=int(values["seed"]), num_samples=None if values["num_samples"] is None else int(values["num_samples"]),
            batch_size=_batch_size(str(values["batch_size"])), results_dir=Path(values["results_dir"]),
            schedule=values["schedule"], solver_args=solver_args, overwrite=bool(values["overwrite"]),
            metrics=listed(values["metrics"]) if values["metrics"] else None, seed_sets=int(values["seeds"]),
            weights=optional_path(values["weights"]), device=str(values["device"]), precision=str(values["precision"]),
            reference_images=optional_path(values["reference_images"]), method_options=per_method,
            budget=None if values.get("budget") is None else str(values["budget"]),
            matched_to=str(values.get("matched_to") or DEFAULT_REFERENCE),
            threads=None if values.get("threads") is None else int(values["threads"]),
        )
    except (TypeError, ValueError) as exc:
        raise GasbenchError(f"{source}: an option has a value of the wrong type ({exc}).") from None


def _batch_size(text: str) -> int:
    from gasbench.sampling import AUTO_BATCH

    if text.strip().lower() == "auto":
        return AUTO_BATCH
    value = text.strip()
    if not value.isdigit() or int(value) < 1:
        raise GasbenchError(f"--batch-size expects a positive integer or 'auto', got {text!r}.")
    return int(value)


@app.command(epilog="""Examples:

  gasbench run                                              # every method on the built-in digits teacher

  gasbench run -m gas,s4s -d afhqv2 --nfe 4,6 --device cuda --precision bf16 --reference-images afhqv2-64x64.zip

  gasbench run -d diffusers:google/ddpm-cifar10-32 -m unipc,gs --nfe 4

  gasbench run --config paper/cifar10_gs.yaml -n 5000       # a shipped paper configuration, -n from the command line

  torchrun --nproc_per_node=2 -m gasbench run -d cifar10 -m dpmpp3m  # shard sampling over 2 processes""")
def run(
    ctx: typer.Context,
    methods: Optional[list[str]] = typer.Option(None, "--methods", "-m", help="Comma-separated methods; default: all registered."),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Teacher name (see `gasbench list teachers`)."),
    nfe: list[str] = typer.Option(["4,6,8,10"], "--nfe", help="Comma-separated NFE values."),
    seed: int = typer.Option(50_000, "--seed", help="First evaluation seed; sample i uses seed + i."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", "-n", help="Evaluation samples per cell; default: the teacher's (1,000 on the built-in teachers, the papers' 50,000 on theirs)."),
    batch_size: str = typer.Option("256", "--batch-size", help="Samples per denoiser call, or 'auto' (from free GPU memory)."),
    results_dir: Path = typer.Option(Path("results"), "--results-dir", help="Where records are written."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="Time-step schedule for every method (see `gasbench list schedules`), or 'tuned': each handcrafted solver's best on validation seeds, per NFE; default: a handcrafted solver's paper's schedule for this teacher, a learned one's own."),
    solver_arg: Optional[list[str]] = typer.Option(None, "--solver-arg", help="key=value option for every method that has it (repeatable)."),
    metrics: Optional[list[str]] = typer.Option(None, "--metrics", help="Comma-separated metrics; default: the teacher's (see `gasbench list metrics`)."),
    seeds: int = typer.Option(1, "--seeds", help="Independent evaluation seed sets; tables show mean +/- std over them."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute cells that already have a matching record."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="The teacher's weights file (default: the pinned file in $GASBENCH_HOME/weights, downloaded when online)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N: where the teacher's network runs."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or bf16 to run the teacher's network under bfloat16 autocast."),
    reference_images: Optional[Path] = typer.Option(None, "--reference-images", help="Real images (folder, .zip or .npz) for fid/precision/recall on teachers without built-in data."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Learned methods' training budget: paper (each method's own paper), cpu (the built-in teachers' CPU budgets) or matched (the same training pairs and network passes as --matched-to); default: paper on the papers' teachers, cpu on the built-in ones."),
    matched_to: str = typer.Option("gs", "--matched-to", help="With --budget matched: the learned method whose training pairs and network passes every learned method gets."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch; default: torch's own (OMP_NUM_THREADS, else the machine's cores), or the cores shared out among --jobs. Recorded in each record's environment."),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: only every N-th cell from the I-th (a job array's task I of N; see `gasbench status`)."),
    jobs: str = typer.Option("auto", "--jobs", "-j", envvar="GASBENCH_JOBS", help="Processes sharing the cells on this machine: a count, or auto (one per CPU core up to 4; one on a GPU or under torchrun)."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A YAML file of these options (methods may carry their own options); the command line wins. See configs/paper/."),
    plugin: Optional[list[str]] = PluginOption,
):
    """Sample every method on the same seeds, score against the teacher, record one file per cell.

    --dataset takes a registered teacher (`gasbench teachers`) or diffusers:<hub id or folder>."""
    from gasbench import jobs as local_jobs
    from gasbench.runner import run as run_benchmark
    from gasbench.tables import render

    load_plugins(plugin)
    shard_spec = local_jobs.parse_shard(shard) if shard else None
    values = dict(methods=methods, dataset=dataset, nfe=nfe, seed=seed, num_samples=num_samples, batch_size=batch_size,
                  results_dir=results_dir, schedule=schedule, solver_args=solver_arg, metrics=metrics, seeds=seeds,
                  overwrite=overwrite, weights=weights, device=device, precision=precision, reference_images=reference_images,
                  budget=budget, matched_to=matched_to, threads=threads)
    config_provenance = None
    if config_file is not None:
        from gasbench.config import file_provenance, read_config

        parameter = {"solver_args": "solver_arg"}
        for key, value in read_config(config_file).items():
            # typer vendors its own click, so the source is compared by name
            source = ctx.get_parameter_source(parameter.get(key, key))
            if source is None or source.name == "DEFAULT":
                values[key] = value
        config_provenance = file_provenance(config_file)
    config = _run_config(values, str(config_file or "the command line"))
    config.config_file = config_provenance
    # recorded, to rerun it; a --jobs worker records the command the user typed
    config.command = os.environ.get(local_jobs.COMMAND_ENV) or shlex.join(["gasbench", *sys.argv[1:]])
    from gasbench.tuning import TUNED

    if config.schedule not in (None, TUNED):
        SCHEDULES.resolve(config.schedule)
    if config.budget is not None and config.budget not in BUDGETS:
        raise GasbenchError(f"--budget {config.budget}: choose one of {', '.join(BUDGETS)}.")
    SOLVERS.resolve(config.matched_to)
    results_dir = config.results_dir
    cells = len(config.methods or default_run_solvers()) * len(config.nfes)
    job_count = local_jobs.resolve_jobs(jobs, config.device, cells)
    if job_count > 1 and config.threads is None:
        config.threads = local_jobs.threads_per_job(job_count)
    start, timings = time.perf_counter(), {}
    workers = local_jobs.start_workers(sys.argv[1:], job_count, config.threads, results_dir) if job_count > 1 else []
    try:
        records = run_benchmark(config, err_console, timings, shard_spec)
        local_jobs.finish_workers(workers)
    finally:
        local_jobs.stop_workers(workers)
    if not distributed.is_main() or local_jobs.is_worker():  # under torchrun rank 0 reports; --jobs: the user's process
        return
    if workers:
        err_console.print(f"{job_count} processes with {config.threads} threads each shared the cells "
                          f"(the others' output: {results_dir / '.jobs'})")
    total = time.perf_counter() - start
    err_console.print(f"{len(records)} cells recorded under {results_dir} in {total:.1f} s")
    if total > 0:
        shares = ", ".join(f"{label} {seconds:.1f} s ({100 * seconds / total:.0f}%)"
                           for label, seconds in sorted(timings.items(), key=lambda kv: -kv[1]))
        whose = " (the cells this process computed; every cell's: gasbench bench profile)" if workers else ""
        err_console.print(f"time per method{whose}: {shares}")
    console.print(render(results_dir, (config.metrics or [])[:1] or None, "markdown", teacher=records[0]["teacher"]["name"]))


@app.command(epilog="Examples:\n\n  gasbench table --metric fd,rmse --teacher digits\n\n  gasbench table --with-paper --teacher cifar10 -m gs,gas\n\n  gasbench table --format latex --into paper.tex")
def table(
    results_dir: Path = typer.Option(Path("results"), "--results-dir", help="Where records were written."),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="Comma-separated metrics to tabulate (see `gasbench list metrics`); default: each teacher's first."),
    fmt: str = typer.Option("markdown", "--format", help="markdown, latex or csv."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Only this teacher's table."),
    methods: Optional[list[str]] = typer.Option(None, "--methods", "-m", help="Comma-separated method labels or patterns to show (e.g. 'gs*,dpmpp3m'); default: all."),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", help="Comma-separated patterns of method labels to leave out (e.g. '*+*': non-default configurations)."),
    into: Optional[Path] = typer.Option(None, "--into", help="Also write the tables between the gasbench-table markers of this file (e.g. README.md)."),
    block: Optional[str] = typer.Option(None, "--block", help="With --into: fill the markers named <!-- gasbench-table:BLOCK:start/end --> instead."),
    with_paper: bool = typer.Option(False, "--with-paper", help="Add the GAS, S4S and DLMS papers' reported numbers for the same teacher and metric, as rows 'method (Paper Table N)'."),
    nfe: Optional[list[str]] = typer.Option(None, "--nfe", help="Comma-separated NFE columns to show; default: every NFE recorded."),
    vs: Optional[str] = typer.Option(None, "--vs", help="Show each cell as its paired difference (mean ± std over seed sets) to 'teacher' or a method."),
    sort: bool = typer.Option(False, "--sort", help="Order the rows by value within each group (teacher, handcrafted, learned; ablations in their own table)."),
):
    """Render leaderboards from recorded results: rows = methods, columns = NFE, best in bold."""
    from gasbench.tables import render, write_into

    text = render(results_dir, split_list(metric) or None, fmt, teacher, split_list(methods) or None, split_list(exclude) or None,
                  with_paper=with_paper, nfes=parse_ints(nfe, "--nfe") if nfe else None, vs=vs, sort=sort)
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    if into is not None:
        write_into(into, text, block)


@app.command(epilog="Example: gasbench show results/digits/gs/nfe4")
def show(
    cell: Path = typer.Argument(..., help="A learned method's cell directory, e.g. results/digits/gs/nfe4."),
    decimals: int = typer.Option(4, "--decimals", help="Digits after the point in the coefficient tables."),
):
    """A learned solver's saved state: configuration, training, time steps (learned vs initial) and
    the Eq. 13 coefficient tables a (on previous points) and c (on denoiser outputs); for a solver
    that picks them per sample while sampling (DLMS), their means over validation seeds."""
    from gasbench.solvers.cells import load_cell
    from gasbench.solvers.executor import AdaptiveTable
    from gasbench.solvers.learned import CONFIG_FILE

    solver, teacher, nfe = load_cell(cell)
    if not solver.learned:
        raise GasbenchError(f"{cell} holds no saved learned solver ({CONFIG_FILE}); pass the cell directory of a learned "
                            f"method, e.g. results/digits/gs/nfe4.")
    console.print(f"[bold]{solver.name}[/] for teacher '{teacher.name}' at NFE {nfe} ({cell})")
    console.print("options: " + ", ".join(f"{k}={v}" for k, v in solver.resolved_config(teacher).items()), highlight=False)
    if solver.summary:
        console.print("training: " + ", ".join(f"{k}={v}" for k, v in solver.summary.items()), highlight=False)
    learned = solver.steps(solver.params, teacher, nfe)
    initial = solver.steps(solver.parameters_for(teacher, nfe), teacher, nfe)
    steps = Table(title="steps n = 0 .. NFE-1, learned and (initial)", title_justify="left")
    steps.add_column("")
    for n in range(nfe):
        steps.add_column(str(n), justify="right")
    for name in learned:
        steps.add_row(name, *(f"{float(v):.4g}" for v in learned[name]))
        steps.add_row(f"({name})", *(f"{float(v):.4g}" for v in initial[name]), style="dim")
    console.print(steps)
    table = solver.table(teacher, nfe)
    if isinstance(table, AdaptiveTable):
        console.print("coefficients and steps are chosen per sample while sampling (means above)")
        console.print(f"output noise level: {table.sigma_final:.5g}")
        return
    for name, operand, matrix in (("a", "the points x_j", table.a), ("c", "the denoiser outputs D_j", table.c)):
        out = Table(title=escape(f"{name}[n, j] on {operand}: row n makes x_(n+1)"), title_justify="left")
        out.add_column("n", justify="right")
        for j in range(nfe):
            out.add_column(f"j={j}", justify="right")
        for n in range(nfe):
            out.add_row(str(n), *(f"{float(matrix[n, j]):.{decimals}f}" if j <= n else "" for j in range(nfe)))
        console.print(out)
    console.print(f"output noise level: {table.sigma_final:.5g}")


@app.command("list", epilog="Examples: gasbench list solvers; gasbench list teachers --plugin my_solvers.py")
def list_(
    what: Optional[str] = typer.Argument(None, help="solvers, teachers, schedules or metrics; default: all."),
    plugin: Optional[list[str]] = PluginOption,
):
    """The registered solvers, teachers, schedules and metrics, one line each."""
    load_plugins(plugin)
    registries = {"solvers": SOLVERS, "teachers": TEACHERS, "schedules": SCHEDULES, "metrics": METRICS}
    if what is not None and what not in registries:
        raise GasbenchError(f"cannot list '{what}'; choose one of {', '.join(registries)}.")
    for name, registry in registries.items():
        if what not in (None, name):
            continue
        out = Table(title=name, title_justify="left", show_header=True)
        out.add_column("name", style="bold")
        out.add_column("aliases")
        out.add_column("description")
        if name == "solvers":
            out.add_column("options")
        for entry in registry:
            row = [entry.name, ", ".join(entry.aliases), entry.description]
            if name == "solvers":
                row.append(", ".join(f"{k}={v}" for k, v in entry.obj.options.items()))
            out.add_row(*row)
        console.print(out)


@app.command(epilog="Examples:\n\n  gasbench budgets\n\n  gasbench budgets -d cifar10 --nfe 10\n\n  gasbench budgets -d digits --into docs/budgets.md --block budgets-digits")
def budgets(
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Teacher whose budgets to show (its weights are not needed)."),
    nfe: int = typer.Option(4, "--nfe", help="NFE the network passes are counted at."),
    matched_to: str = typer.Option("gs", "--matched-to", help="The reference method of the matched budget."),
    into: Optional[Path] = typer.Option(None, "--into", help="Also write the table between the gasbench-table markers of this file (e.g. docs/budgets.md)."),
    block: Optional[str] = typer.Option(None, "--block", help="With --into: fill the markers named <!-- gasbench-table:BLOCK:start/end --> instead."),
    plugin: Optional[list[str]] = PluginOption,
):
    """What each learned method is given under each training budget (cpu, paper, matched)."""
    import inspect

    from tabulate import tabulate

    from gasbench.budgets import budget_rows

    load_plugins(plugin)
    if nfe < 1:
        raise GasbenchError(f"--nfe must be at least 1, got {nfe}.")
    factory = TEACHERS.get(dataset) if not dataset.startswith("diffusers:") else None
    # a registered teacher's class states what its budgets depend on, without loading weights
    teacher = factory if inspect.isclass(factory) else load_teacher(dataset)
    text = tabulate(budget_rows(teacher, nfe, SOLVERS.resolve(matched_to).name), headers="keys", tablefmt="github")
    print(text)
    if into is not None:
        from gasbench.tables import write_into

        write_into(into, text, block)


@app.command(epilog="Example: gasbench report --results-dir results --out report.html")
def report(
    results_dir: Path = typer.Option(Path("results"), "--results-dir", help="Where records were written."),
    out: Optional[Path] = typer.Option(None, "--out", help="The HTML file to write; default: <results-dir>/report.html."),
):
    """Write one self-contained HTML page of the results: leaderboards, metrics against NFE, sample
    grids, learned time steps and coefficients, training cost."""
    from gasbench.report import write_report

    console.print(f"wrote {write_report(results_dir, out)}")


@app.command(epilog="Example: gasbench export results/diffusers-ddpm-cifar10-32/gs/nfe4 schedulers/gs4 --to diffusers")
def export(
    cell: Path = typer.Argument(..., help="A result cell, e.g. results/diffusers-ddpm-cifar10-32/gs/nfe4."),
    out: Path = typer.Argument(..., help="Directory to write scheduler_config.json to."),
    to: str = typer.Option("diffusers", "--to", help="Export format; diffusers (a scheduler) is the one there is."),
    teacher: Optional[str] = typer.Option(
        None, "--teacher", help="Load the cell's teacher from here, e.g. diffusers:<folder or hub id> (default: the "
                                "name or folder the cell records)."),
    plugin: Optional[list[str]] = PluginOption,
):
    """A cell's solver as a diffusers scheduler that reproduces gasbench's sampling with it (GAS Eq. 13)."""
    if to != "diffusers":
        raise GasbenchError(f"--to {to!r}: the only export format is diffusers.")
    load_plugins(plugin)
    from gasbench.diffusers_export import export_cell  # imports diffusers: only when exporting

    scheduler = export_cell(cell, out, teacher)
    source = scheduler.config.source
    console.print(f"wrote {Path(out) / scheduler.config_name}: {source['solver']} for teacher '{source['teacher']}' "
                  f"at NFE {scheduler.nfe}", highlight=False)
    console.print(f"use: from gasbench.diffusers_export import GasbenchScheduler; pipe.scheduler = "
                  f"GasbenchScheduler.from_pretrained({str(out)!r}); pipe(num_inference_steps={scheduler.nfe})",
                  highlight=False, markup=False)


@app.command(epilog="Examples:\n\n  gasbench verify results/digits/gs/nfe4\n\n  gasbench verify results/digits/euler/nfe6 --samples 16 --all-seeds")
def verify(
    cell: Path = typer.Argument(..., help="A result cell, e.g. results/digits/gs/nfe4."),
    samples: int = typer.Option(8, "--samples", "-k", help="How many of the first evaluation seeds to re-sample (1-16)."),
    all_seeds: bool = typer.Option(False, "--all-seeds", help="Also re-sample every seed set and compare its sha256."),
    device: Optional[str] = typer.Option(None, "--device", help="Where to re-sample; default: the device the record was computed on."),
    plugin: Optional[list[str]] = PluginOption,
):
    """Re-sample a cell's first evaluation seeds and check them, the teacher's weights and the solver
    (configuration hash; learned: saved state's sha256) against its record; exit 1 on a mismatch."""
    from gasbench.verify import verify_cell

    load_plugins(plugin)
    result = verify_cell(cell, samples, all_seeds, device)
    console.print(result.render(), highlight=False, markup=False)
    if not result.ok:
        sys.exit(1)  # not typer.Exit: main() runs the app with standalone_mode=False, which returns its code


@app.command("import-release", epilog="Example: gasbench import-release GAS-students/edm/cifar10/gas_nfe4.pt -d cifar10 --kind gas")
def import_release(
    path: Path = typer.Argument(..., help="A student file of the GAS release (bayes-group-diffusion/GAS-students)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="The teacher the student was trained for (e.g. cifar10)."),
    kind: str = typer.Option("gas", "--kind", help="gs or gas: which of the authors' students it is (the file does not say)."),
    t_eps: Optional[float] = typer.Option(None, "--t-eps", help="The student's last time step; default: the release config's for the teacher."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="The teacher's weights file (as for `gasbench run`)."),
    results_dir: Path = typer.Option(Path("results"), "--results-dir"),
):
    """Put the GAS authors' trained student in a result cell, read without running code; then
    `gasbench run -d <teacher> -m gas-release` (or gs-release) evaluates it like every other method."""
    from gasbench.solvers.release import import_release_student

    cell = import_release_student(path, load_teacher(dataset, weights), kind.lower(), t_eps, results_dir)
    console.print(f"imported {path} into {cell}; evaluate it with "
                  f"`gasbench run -d {dataset} -m {kind.lower()}-release --nfe {cell.name[3:]} --results-dir {results_dir}`")


def main() -> None:
    """Entry point: user errors print one line and exit 2, Ctrl-C exits 130; `--debug` shows tracebacks."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        # without standalone mode typer returns, not raises, an exit code: Ctrl-C's as 130
        code = app(standalone_mode=False)
    except KeyboardInterrupt:  # where typer does not turn it into 130 (outside the command)
        code = 130
    except GasbenchError as exc:
        if debug:
            traceback.print_exc()
        # escaped: a message quoting the user's input ("[/b]") must not be read as console markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        sys.exit(2)
    except ABORTS:
        err_console.print("aborted")
        sys.exit(130)
    except USAGE_ERRORS as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001  (last resort: never a bare traceback for users)
        if debug:
            raise
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} (rerun with --debug for the traceback)")
        sys.exit(1)
    if code == 130:
        err_console.print("interrupted; completed cells are recorded, rerun the same command to resume")
    if isinstance(code, int) and code:  # a command's return value is None; an exit code is an int
        sys.exit(code)
