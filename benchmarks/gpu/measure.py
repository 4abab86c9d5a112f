"""GAS Appendix C on one GPU: training cost (Tables 14a, 15a) and sampling time (Table 16) of
gasbench's GS and GAS on EDM's CIFAR-10 architecture, from random weights.

The network is EDM's DDPM++ CIFAR-10 UNet (``edm-cifar10-32x32-uncond-vp.pkl``: SongUNet, 128
channels, multipliers 2-2-2, 4 blocks per level, attention at 16x16; 55.7M parameters) behind EDM's
preconditioning, initialised at random: a step's time and memory do not depend on the weights, and
none can be downloaded where this runs. Figures, each written to ``<date>-<gpu>.json`` and a
markdown table beside the paper's:

* training (:func:`gasbench.overhead.measure_training_step`, what ``gasbench bench training``
  prints): GS and GAS at NFE 4 and 10, batch 24 (GAS D.4.1), with and without the ``checkpointing``
  option (each denoiser call recomputed in the backward pass); the step time, the student's own
  network passes alone (NFE forward + backward at the batch), their ratio, the rise of peak GPU
  memory, and 10k iterations projected from the step. gasbench's loss is its default L1; the paper's
  pixel loss is LPIPS-VGG on images upsampled to 224, timed here alone on a random VGG trunk (its
  cost does not depend on the weights) and added for a second projection;
* sampling (Table 16's protocol: 1,024 images at batch 64): dpmpp3m and untrained GS through
  :func:`gasbench.sampling.sample_seeds`, against the network's raw forward throughput on the
  GPU; the solver overhead is the sampling time beyond NFE raw forwards per batch;
* ``--batch-size auto``: the batch :func:`gasbench.sampling.auto_batch_size` picks for this
  network, and the peak memory of one call at that batch.

``--dry-run`` takes the same paths on the CPU with a tiny UNet at 8x8 and small batches.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import re
import sys
import time
import traceback
import warnings
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from gasbench.core.registry import SOLVERS, TEACHERS
from gasbench.overhead import measure_training_step, peak_memory_mb
from gasbench.sampling import auto_batch_size, sample_seeds
from gasbench.solvers.executor import ExecutionStats
from gasbench.teachers.edm_networks import PRECONDS

SCHEMA = "gasbench.gpu_benchmark.v1"
ITERATIONS = 10_000  # GAS Table 14: "10k iterations scenarios"
METHODS = ("gs", "gas")
SAMPLERS = ("dpmpp3m", "gs")
PAPER_SOURCE = "GAS (Oganov et al., 2025, arXiv:2510.17699), Appendix C, one H100"
# Table 14a (minutes for 10k iterations) and Table 15a (peak memory, GB), CIFAR-10, by NFE
PAPER_MINUTES = {"gs": {4: 30, 6: 40, 8: 50, 10: 60}, "gas": {4: 85, 6: 100, 8: 115, 10: 130}}
PAPER_PEAK_GB = {"gs": {4: 17, 6: 23, 8: 28, 10: 34}, "gas": {4: 19, 6: 25, 8: 30, 10: 35}}
# Table 16: minutes for 1,024 ImageNet-256 (LDM) images at batch 64, UniPC(3M) and GS, by NFE
PAPER_INFERENCE_MINUTES = {"unipc": {4: 0.36, 5: 0.46, 6: 0.55, 7: 0.64}, "gs": {4: 0.36, 5: 0.45, 6: 0.55, 7: 0.64}}
# issue 20's goals for gasbench on one GPU
GOALS = {"gs_nfe4_10k_minutes": 10.0, "nfe10_checkpointed_peak_gb": 8.0, "solver_overhead_pct": 1.0}
# EDM train.py --arch=ddpmpp on CIFAR-10 (--augment 0.12 gives augment_dim 9, dropout 0.13)
DDPMPP_CIFAR10 = dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.13,
                      augment_dim=9, embedding_type="positional", encoder_type="standard", decoder_type="standard",
                      channel_mult_noise=1, resample_filter=[1, 1])
TINY = dict(DDPMPP_CIFAR10, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])


@dataclass(frozen=True)
class Sizes:
    """What one run measures at: the GPU's figures, or the dry run's tiny ones."""

    resolution: int
    network: dict
    batch: int
    nfes: tuple[int, ...]
    repeats: int
    images: int
    sample_batch: int
    lpips_size: int


FULL = Sizes(32, DDPMPP_CIFAR10, batch=24, nfes=(4, 10), repeats=3, images=1024, sample_batch=64, lpips_size=224)
DRY = Sizes(8, TINY, batch=4, nfes=(4, 10), repeats=1, images=16, sample_batch=8, lpips_size=32)


@dataclass
class Report:
    """Everything one run measured; written whole after every section, so a run stopped by its
    time limit still leaves what it had."""

    created: str
    dry_run: bool
    machine: dict
    network: dict
    sizes: dict
    tests: dict = field(default_factory=dict)
    training: list = field(default_factory=list)
    lpips_loss: dict = field(default_factory=dict)
    auto_batch: dict = field(default_factory=dict)
    forward: dict = field(default_factory=dict)
    sampling: list = field(default_factory=list)
    goals: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    paper: dict = field(default_factory=lambda: {
        "source": PAPER_SOURCE, "table14a_minutes_10k": PAPER_MINUTES, "table15a_peak_gb": PAPER_PEAK_GB,
        "table16_minutes_1024_images": PAPER_INFERENCE_MINUTES})
    schema: str = SCHEMA


START = time.perf_counter()


def say(message: str) -> None:
    print(f"[gpu-bench measure {time.perf_counter() - START:6.1f}s] {message}", flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the teacher ---------------------------------------------------------------------------------


def random_cifar10_teacher(sizes: Sizes, device: torch.device):
    """The registered ``cifar10`` teacher (sigma range, reference, time) with a random-init DDPM++
    network in place of the release weights."""
    release = TEACHERS.get("cifar10")

    class RandomInitCIFAR10(release):
        def __init__(self, net):
            self.net, self.feature_dim = net, net.model.bottleneck_channels
            self.shape = (3, sizes.resolution, sizes.resolution)

    torch.manual_seed(0)
    net = PRECONDS["EDMPrecond"](img_resolution=sizes.resolution, img_channels=3, model_type="SongUNet",
                                     **sizes.network)
    teacher = RandomInitCIFAR10(net.eval().requires_grad_(False))
    teacher.precision = "fp32"
    return teacher.to(device)


def machine(device: torch.device) -> dict:
    info = {"device": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version(), tf32_convolutions=torch.backends.cudnn.allow_tf32,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return info


def output_stem(report: Report) -> str:
    """``<date>-<gpu name>``, the name lower-cased with runs of other characters as one hyphen."""
    name = report.machine.get("gpu", report.machine["device"])
    return f"{report.created[:10]}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"


# --- the measurements ----------------------------------------------------------------------------


def projected_minutes(step_ms: float, iterations: int = ITERATIONS) -> float:
    return step_ms * iterations / 60_000


def training_rows(teacher, sizes: Sizes, method: str) -> list[dict]:
    """GAS Tables 14a/15a for ``method``: measure_training_step's rows with the projection and
    the paper's figures at the same NFE."""
    rows = []
    for row in measure_training_step(teacher, method, list(sizes.nfes), sizes.batch, repeats=sizes.repeats):
        nfe = row["nfe"]
        rows.append({"method": method, **row, "peak_gb": row["peak_mb"] / 1024,
                     "minutes_10k": projected_minutes(row["step_ms"]),
                     "paper_minutes_10k": PAPER_MINUTES[method].get(nfe), "paper_peak_gb": PAPER_PEAK_GB[method].get(nfe)})
        say(f"{method} NFE {nfe} checkpointing={row['checkpointing']}: step {row['step_ms']:.1f} ms, network passes "
            f"{row['network_ms']:.1f} ms (x{row['ratio']:.2f}), peak {row['peak_mb']:.0f} MiB, "
            f"10k iterations {rows[-1]['minutes_10k']:.1f} min")
    return rows


def lpips_loss_cost(teacher, sizes: Sizes) -> dict:
    """Forward + backward of LPIPS-VGG between two batches upsampled to ``lpips_size`` (GAS's
    pixel loss, gasbench's ``loss=lpips-vgg``), on a random VGG trunk, best of ``repeats``."""
    import lpips

    from gasbench.core.lpips_metric import lpips_distance

    with warnings.catch_warnings():  # lpips asks torchvision with its deprecated pretrained=False
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    model = model.to(teacher.device).eval().requires_grad_(False)
    shape = (sizes.batch, *teacher.shape)
    student = torch.rand(shape, device=teacher.device, requires_grad=True)
    target = torch.rand(shape, device=teacher.device)

    def step() -> None:
        lpips_distance(student, target, model, resize_to=sizes.lpips_size).mean().backward()
        synchronize(teacher.device)

    seconds = best_of(step, sizes.repeats)
    return {"resize_to": sizes.lpips_size, "batch": sizes.batch, "ms": 1e3 * seconds, "peak_mb": peak_memory_mb(step),
            "trunk": "random VGG16 (torchvision layout; lpips's own linear heads)"}


def best_of(fn: Callable[[], None], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up, in seconds."""
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def forward_throughput(teacher, batch: int, repeats: int) -> dict:
    """The network alone: one denoiser call on a batch already on the device, no solver, no copies."""
    x = torch.randn(batch, *teacher.shape, device=teacher.device) * 10
    sigma = torch.tensor(10.0, device=teacher.device)

    def call() -> None:
        teacher.denoise(x, sigma, None)
        synchronize(teacher.device)

    seconds = best_of(call, 5 * repeats)  # cheap: more calls, a steadier best
    return {"batch": batch, "ms_per_call": 1e3 * seconds, "images_per_s": batch / seconds}


def sampling_rows(teacher, sizes: Sizes, forward_ms: float) -> list[dict]:
    """Table 16's protocol for dpmpp3m and untrained GS: wall time of ``images`` samples at
    ``sample_batch`` against NFE raw forward calls per batch (the solver's overhead)."""
    seeds = list(range(sizes.images))
    batches = math.ceil(sizes.images / sizes.sample_batch)
    rows = []
    for method in SAMPLERS:
        for nfe in sizes.nfes:
            table = SOLVERS.get(method)().table(teacher, nfe)
            sample_seeds(teacher, table, seeds[: sizes.sample_batch], sizes.sample_batch)  # warm-up
            stats = ExecutionStats()
            t0 = time.perf_counter()
            sample_seeds(teacher, table, seeds, sizes.sample_batch, stats=stats)
            seconds = time.perf_counter() - t0
            network_s = nfe * batches * forward_ms / 1e3
            rows.append({"method": method, "nfe": nfe, "images": sizes.images, "batch": sizes.sample_batch,
                         "seconds": seconds, "images_per_s": sizes.images / seconds,
                         "minutes_1024": seconds / 60 * 1024 / sizes.images, "network_seconds": network_s,
                         "overhead_pct": 100 * (seconds - network_s) / network_s,
                         "executor_solver_pct": 100 * stats.solver_seconds / stats.denoiser_seconds,
                         "paper_minutes_1024": PAPER_INFERENCE_MINUTES["unipc" if method == "dpmpp3m" else "gs"].get(nfe)})
            say(f"sampling {method} NFE {nfe}: {rows[-1]['images_per_s']:.0f} images/s, overhead over raw network "
                f"{rows[-1]['overhead_pct']:.1f}% (solver arithmetic {rows[-1]['executor_solver_pct']:.2f}% of denoiser time)")
    return rows


@torch.no_grad()
def auto_batch(teacher, sizes: Sizes) -> dict:
    """``--batch-size auto``'s choice for this network and the memory one call at it takes."""
    chosen = auto_batch_size(teacher)
    x = torch.randn(chosen, *teacher.shape, device=teacher.device)
    free = torch.cuda.mem_get_info(teacher.device)[0] if teacher.device.type == "cuda" else None
    peak = peak_memory_mb(lambda: (teacher.denoise(x, torch.tensor(1.0, device=teacher.device), None),
                                   synchronize(teacher.device)))
    return {"batch": chosen, "peak_mb": peak,
            "free_mb_before": None if free is None else free / 2**20}


def goals(report: Report) -> list[dict]:
    """Issue 20's three goals against what was measured (None where the figure is missing)."""
    def first(rows, **match):
        return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)

    gs4 = first(report.training, method="gs", nfe=4, checkpointing=False)
    nfe10 = [r for r in report.training if r["nfe"] == 10 and r["checkpointing"]]
    sampled = [r["overhead_pct"] for r in report.sampling]
    measured = {
        "gs_nfe4_10k_minutes": gs4 and gs4["minutes_10k"],
        "nfe10_checkpointed_peak_gb": max((r["peak_gb"] for r in nfe10), default=None),
        "solver_overhead_pct": max(sampled, default=None),
    }
    return [{"goal": name, "target_at_most": target, "measured": measured[name],
             "met": None if measured[name] is None else measured[name] <= target} for name, target in GOALS.items()]


def read_tests(xml_path: Optional[Path], returncode: Optional[int]) -> dict:
    """The summary of the `pytest -m gpu` run from its JUnit XML."""
    if xml_path is None or not xml_path.is_file():
        return {"ran": False, "returncode": returncode}
    suite = ElementTree.parse(xml_path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = {"passed": [], "failed": [], "skipped": []}
    reasons = set()
    for case in suite.iter("testcase"):
        name = case.get("name")
        if case.find("failure") is not None or case.find("error") is not None:
            cases["failed"].append(name)
        elif (skip := case.find("skipped")) is not None:
            cases["skipped"].append(name)
            reasons.add(skip.get("message", ""))
        else:
            cases["passed"].append(name)
    return {"ran": True, "returncode": returncode, **cases, "skip_reasons": sorted(reasons)}


# --- output --------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def markdown(report: Report) -> str:
    """The figures as tables, each beside the paper's (GAS Tables 14a, 15a, 16)."""
    m, net = report.machine, report.network
    lines = [f"# gasbench on {m.get('gpu', 'CPU (dry run)')}, {report.created[:10]}", "",
             f"{'Dry run: tiny sizes on the CPU; not a measurement. ' if report.dry_run else ''}"
             f"torch {m['torch']}, CUDA {m.get('cuda')}; network: {net['name']}, {net['parameters'] / 1e6:.1f}M parameters, "
             f"random init, fp32. Paper: {PAPER_SOURCE}.", "",
             f"## Training (GAS Tables 14a, 15a; batch {report.sizes['batch']}, gasbench's L1 loss)", "",
             "| method | NFE | checkpointing | step ms | network ms | step / network | peak GB | 10k it. min "
             "| + LPIPS min | paper 10k min | paper peak GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lpips_ms = report.lpips_loss.get("ms")
    for r in report.training:
        with_lpips = None if lpips_ms is None else projected_minutes(r["step_ms"] + lpips_ms)
        lines.append(f"| {r['method']} | {r['nfe']} | {_fmt(r['checkpointing'])} | {_fmt(r['step_ms'])} | "
                     f"{_fmt(r['network_ms'])} | {_fmt(r['ratio'], 2)} | {_fmt(r['peak_gb'], 2)} | {_fmt(r['minutes_10k'])} | "
                     f"{_fmt(with_lpips)} | {_fmt(r['paper_minutes_10k'])} | {_fmt(r['paper_peak_gb'])} |")
    if report.lpips_loss:
        lines += ["", f"LPIPS-VGG at {report.lpips_loss['resize_to']} (the paper's pixel loss) on a batch of "
                      f"{report.lpips_loss['batch']}: {_fmt(lpips_ms)} ms forward + backward, peak "
                      f"{_fmt(report.lpips_loss['peak_mb'] / 1024, 2)} GB; '+ LPIPS' adds it to each step."]
    lines += ["", f"## Sampling (GAS Table 16's protocol: {report.sizes['images']:,} images at batch "
                  f"{report.sizes['sample_batch']}; the paper's figures are ImageNet-256 LDM)", "",
              "| method | NFE | images/s | min per 1,024 | network-only s | overhead % | solver arithmetic % "
              "| paper min per 1,024 |", "|---|---|---|---|---|---|---|---|"]
    for r in report.sampling:
        lines.append(f"| {r['method']} | {r['nfe']} | {_fmt(r['images_per_s'], 0)} | {_fmt(r['minutes_1024'], 3)} | "
                     f"{_fmt(r['network_seconds'], 2)} | {_fmt(r['overhead_pct'], 2)} | {_fmt(r['executor_solver_pct'], 2)} | "
                     f"{_fmt(r['paper_minutes_1024'], 2)} |")
    if report.forward:
        lines += ["", f"Raw network forward at batch {report.forward['batch']}: {_fmt(report.forward['ms_per_call'], 2)} ms "
                      f"({_fmt(report.forward['images_per_s'], 0)} images/s)."]
    if report.auto_batch:
        a = report.auto_batch
        lines += [f"`--batch-size auto` picks {a['batch']}; one call at it raised peak memory by "
                  f"{_fmt(a['peak_mb'] / 1024, 2)} GB (free before: {_fmt(a['free_mb_before'] and a['free_mb_before'] / 1024, 1)} GB)."]
    lines += ["", "## Goals (issue 20)", "", "| goal | at most | measured | met |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {_fmt(g['target_at_most'])} | {_fmt(g['measured'], 2)} | {_fmt(g['met'])} |" for g in report.goals]
    t = report.tests
    if t.get("ran"):
        lines += ["", f"`pytest -m gpu`: {len(t['passed'])} passed, {len(t['failed'])} failed, {len(t['skipped'])} skipped"
                      f"{' (' + '; '.join(t['skip_reasons']) + ')' if t['skip_reasons'] else ''}."]
        lines += [f"- failed: `{name}`" for name in t["failed"]]
    lines += [f"- skipped section: {s}" for s in report.skipped]
    return "\n".join(lines) + "\n"


def write(report: Report, out: Path) -> Path:
    report.goals = goals(report)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{output_stem(report)}.json"
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(report))
    return path


# --- the run -------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for <date>-<gpu>.json and .md")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: the same code paths")
    parser.add_argument("--budget-s", type=float, default=math.inf, help="skip what would start after this many seconds")
    parser.add_argument("--tests-xml", type=Path, help="JUnit XML of the `pytest -m gpu` run, summarised in the JSON")
    parser.add_argument("--tests-rc", type=int, help="that run's exit status")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if not args.dry_run and not torch.cuda.is_available():
        say("no CUDA device: run with --dry-run on a CPU machine")
        return 2
    sizes = DRY if args.dry_run else FULL
    device = torch.device("cpu" if args.dry_run else "cuda")
    teacher = random_cifar10_teacher(sizes, device)
    parameters = sum(p.numel() for p in teacher.net.parameters())
    report = Report(created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    dry_run=args.dry_run, machine=machine(device), sizes=asdict(sizes),
                    network={"name": "EDM DDPM++ CIFAR-10 (SongUNet, EDMPrecond)" if not args.dry_run else
                             "tiny SongUNet (dry run)", "parameters": parameters, "shape": list(teacher.shape)},
                    tests=read_tests(args.tests_xml, args.tests_rc))
    say(f"{report.network['name']}: {parameters / 1e6:.2f}M parameters on {device}; writing to {args.out}")
    sections = [(f"training {method}", lambda m=method: report.training.extend(training_rows(teacher, sizes, m)))
                for method in METHODS]
    sections += [
        ("LPIPS loss", lambda: report.lpips_loss.update(lpips_loss_cost(teacher, sizes))),
        ("raw forward", lambda: report.forward.update(forward_throughput(teacher, sizes.sample_batch, sizes.repeats))),
        ("sampling", lambda: report.sampling.extend(sampling_rows(teacher, sizes, report.forward["ms_per_call"]))),
        ("auto batch", lambda: report.auto_batch.update(auto_batch(teacher, sizes))),
    ]
    path, failed = write(report, args.out), False
    for name, run in sections:
        if time.perf_counter() - started > args.budget_s:
            report.skipped.append(f"{name}: out of time ({args.budget_s:.0f} s budget)")
            say(f"skipping {name}: out of time")
            continue
        say(f"{name} ...")
        try:
            run()
        except Exception as exc:  # one broken section (an out-of-memory batch, say) must not lose the others
            traceback.print_exc()
            report.skipped.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
            failed = True
            if device.type == "cuda":
                torch.cuda.empty_cache()
        path = write(report, args.out)
    say(f"wrote {path} and {path.with_suffix('.md').name} in {time.perf_counter() - started:.0f} s")
    print(markdown(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
