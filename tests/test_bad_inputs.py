"""The catalogue of bad inputs: each one, given to the real command line next to results that are
already recorded, is one clear message and a non-zero exit, with no traceback (unless --debug),
no record written and every recorded file byte-identical afterwards.

Each case builds what it needs (a damaged file, a plugin, an environment variable) and returns the
command; the bad-input table of docs/reliability.md lists the same cases."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import Payload, gasbench, short_fit, tiny_edm, write_lightning_checkpoint, write_release

from gasbench.teachers.builtin import DigitsTeacher, FashionTeacher

# Teachers a plugin registers: one whose network turns NaN below sigma 1, one that overflows to
# inf, and a well-behaved one without data of its own (its real images are the user's).
PLUGIN = '''
import torch
from gasbench.core.registry import register_teacher
from gasbench.teachers.base import ReferenceSolver, Teacher


class Flat(Teacher):
    shape = (1, 4, 4)
    reference = ReferenceSolver("euler", 6, "logsnr")
    domain_space = "pixels"
    broken_value = None

    def __init__(self, weights=None):
        pass

    def denoise(self, x, sigma, cond):
        out = torch.zeros_like(x)
        if self.broken_value is not None and float(torch.as_tensor(sigma).max()) < 1.0:
            out[:, 0, 0, 0] = self.broken_value
        return out


@register_teacher("nan-teacher")
class NaNTeacher(Flat):
    name = "nan-teacher"
    broken_value = float("nan")


@register_teacher("inf-teacher")
class InfTeacher(Flat):
    name = "inf-teacher"
    broken_value = float("inf")


@register_teacher("flat-teacher")
class FlatTeacher(Flat):
    name = "flat-teacher"
'''


@dataclass
class Setup:
    """What a case builds on: the recorded results and its own scratch directory; ``markers`` are
    files a code payload would create, which must not exist after the command."""

    recorded: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest
    markers: list[Path] = field(default_factory=list)

    def file(self, name: str, data: "bytes | str") -> Path:
        path = self.tmp / name
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
        return path

    def marker(self) -> Path:
        self.markers.append(self.tmp / f"payload-ran-{len(self.markers)}")
        return self.markers[-1]

    def plugin(self) -> Path:
        """The plugin file of the teachers in :data:`PLUGIN`, registered until the case ends."""
        from gasbench.core.registry import TEACHERS

        for name in ("nan-teacher", "inf-teacher", "flat-teacher"):
            self.request.addfinalizer(lambda name=name: TEACHERS.unregister(name))
        return self.file("teachers_plugin.py", PLUGIN)


# a valid, cheap `gasbench run` whose one cell the recorded results hold already
RUN = ("run", "-d", "gmm", "-m", "euler", "--nfe", "4", "-n", "32")


def run(setup: Setup, *options) -> list:
    """:data:`RUN` on the recorded results with ``options`` added: a repeated single-valued option
    replaces the default, a repeated list option (-m, --nfe, --metrics) adds to it."""
    return [*RUN, "--results-dir", setup.recorded, *options]


CASES: dict[str, tuple[str, Callable[[Setup], list]]] = {}


def case(message: str):
    """Register a case: a function of a :class:`Setup` returning the command; ``message`` must
    appear in what the command prints to stderr."""
    def add(build: Callable[[Setup], list]) -> Callable[[Setup], list]:
        CASES[build.__name__.replace("_", " ")] = (message, build)
        return build
    return add


def run_case(name: str, message: str, *options) -> None:
    """Register a case that is :func:`run` with ``options``."""
    CASES[name] = (message, lambda setup: run(setup, *options))


# --- names -----------------------------------------------------------------------------------
run_case("unknown method", "Unknown solver 'dpmpp3n'. Did you mean: dpmpp3m", "-m", "dpmpp3n")
run_case("unknown teacher", "Unknown teacher 'gmn'. Did you mean: gmm", "-d", "gmn")
run_case("unknown metric", "Unknown metric 'psnrr'. Did you mean: psnr", "--metrics", "psnrr")
run_case("unknown schedule", "Unknown schedule 'logsn'. Did you mean: logsnr", "--schedule", "logsn")
run_case("a name that looks like console markup", "Unknown solver '[/b]'", "-m", "[/b]")
run_case("missing plugin file", "plugin file 'absent_plugin.py' does not exist", "--plugin", "absent_plugin.py")
run_case("unknown option", "No such option: --nfes", "--nfes", "4")
run_case("non-integer seed", "Invalid value for '--seed'", "--seed", "fifty")
# --- NFE, samples, seeds ---------------------------------------------------------------------
run_case("NFE 0", "NFE must be at least 1, got [0, 4]", "--nfe", "0")
run_case("negative NFE", "NFE must be at least 1, got [-3, 4]", "--nfe", "-3")
run_case("NFE too large", "NFE 100000 is above gasbench's limit of 1000", "--nfe", "100000")
run_case("NFE beyond a fixed-list schedule (gits 9)",
         "the gits schedule has fixed lists for [4, 5, 6, 7, 8] steps only, not 9",
         "-m", "ipndm", "--schedule", "gits", "--nfe", "9")
run_case("odd NFE for a two-evaluation step", "cannot run at NFE 5", "-m", "heun", "--nfe", "5")
run_case("non-integer NFE", "--nfe must be integers", "--nfe", "4.5")


@case("no NFE to run")
def empty_nfe_list(setup):
    return ["run", "-d", "gmm", "-m", "euler", "--nfe", ",", "--results-dir", setup.recorded]  # RUN without --nfe 4


run_case("zero samples", "--num-samples must be at least 1, got 0", "-n", "0")
run_case("zero seed sets", "--seeds must be at least 1, got 0", "--seeds", "0")
# --- solver options, device, precision, batch ------------------------------------------------
run_case("unknown solver option", "no selected method has the option(s) ordr",
         "-m", "ipndm", "--solver-arg", "ordr=2")
run_case("solver option of the wrong type", "option order='two' of solver 'ipndm' is not a valid int",
         "-m", "ipndm", "--solver-arg", "order=two")
run_case("solver option outside its choices", "solver 'gs' supports parametrization in",
         "-m", "gs", "--solver-arg", "parametrization=spline")
run_case("solver option without a value", "--solver-arg expects key=value, got 'order'", "--solver-arg", "order")
run_case("unknown device", "--device 'tpu:7' is not a device", "--device", "tpu:7")
run_case("unknown precision", "--precision 'fp8' is not one of fp32, bf16", "--precision", "fp8")
run_case("zero batch size", "--batch-size expects a positive integer or 'auto', got '0'", "--batch-size", "0")
run_case("non-integer batch size", "--batch-size expects a positive integer or 'auto', got 'lots'",
         "--batch-size", "lots")


# --- configuration files -----------------------------------------------------------------------
@case("is not valid YAML at line 3")
def malformed_yaml(setup):
    return run(setup, "--config", setup.file("run.yaml", "dataset: gmm\nnfe: [4\n"))


@case("unknown option 'method'. Did you mean 'methods'?")
def unknown_yaml_key(setup):
    return run(setup, "--config", setup.file("run.yaml", "method: [euler]\n"))


@case("an option has a value of the wrong type")
def wrong_typed_yaml_value(setup):
    return run(setup, "--config", setup.file("run.yaml", "seed: {first: 3}\n"))


@case("is not valid YAML")
def yaml_that_would_run_code(setup):
    payload = f"seed: !!python/object/apply:os.system ['touch {setup.marker()}']\n"
    return run(setup, "--config", setup.file("run.yaml", payload))


@case("--config absent.yaml: cannot read it")
def missing_config_file(setup):
    return run(setup, "--config", "absent.yaml")


# --- weights -----------------------------------------------------------------------------------
@case("is not a gasbench network file")
def truncated_safetensors(setup):
    cut = setup.file("digits.safetensors", DigitsTeacher.weights.shipped.read_bytes()[:4096])
    return run(setup, "-d", "digits", "--weights", cut)


@case("is not a gasbench network file")
def foreign_safetensors(setup):
    from safetensors.torch import save_file

    save_file({"weight": torch.ones(3)}, setup.tmp / "other.safetensors")
    return run(setup, "-d", "digits", "--weights", setup.tmp / "other.safetensors")


@case("holds a network for (1, 28, 28) samples of 10 classes; teacher 'digits' samples (1, 8, 8) of 10")
def another_teachers_weights_renamed(setup):
    renamed = setup.file("digits.safetensors", FashionTeacher.weights.shipped.read_bytes())
    return run(setup, "-d", "digits", "--weights", renamed)


@case("does not exist")
def missing_weights_file(setup):
    return run(setup, "-d", "digits", "--weights", setup.tmp / "absent.safetensors")


@case("corrupt or not the official")
def cached_weights_with_the_wrong_sha256(setup):
    from gasbench.teachers.edm import RELEASE_TEACHERS

    setup.monkeypatch.setenv("GASBENCH_HOME", str(setup.tmp / "home"))
    setup.monkeypatch.setenv("GASBENCH_OFFLINE", "1")
    (setup.tmp / "home" / "weights").mkdir(parents=True)
    (setup.tmp / "home" / "weights" / RELEASE_TEACHERS["cifar10"].weights.source.filename).write_bytes(b"not the release")
    return run(setup, "-d", "cifar10")


@case("asks to load 'builtins.exec'")
def edm_pickle_with_a_code_payload(setup):
    setup.request.getfixturevalue("recording")
    payload = Payload("builtins.exec", setup.marker())
    path = write_release(tiny_edm("EDMPrecond-ddpmpp"), setup.tmp / "edm.pkl", extra={"payload": payload})
    return run(setup, "-d", "cifar10", "--weights", path)


@case("which a checkpoint has no reason to run; refusing it")
def ldm_checkpoint_with_a_code_payload(setup):
    payload = Payload("posix.system", setup.marker())
    write_lightning_checkpoint(setup.tmp / "model.ckpt", {"betas": torch.ones(3)}, payload=payload)
    return run(setup, "-d", "lsun-bedroom", "--weights", setup.tmp / "model.ckpt")


# --- the teacher's outputs and data ------------------------------------------------------------
@case("teacher 'nan-teacher' returned NaN or inf")
def teacher_returning_nan(setup):
    return run(setup, "--plugin", setup.plugin(), "-d", "nan-teacher")


@case("teacher 'inf-teacher' returned NaN or inf")
def teacher_returning_inf(setup):
    return run(setup, "--plugin", setup.plugin(), "-d", "inf-teacher")


@case("has no captions")
def empty_prompt_file(setup):
    setup.monkeypatch.setenv("GASBENCH_SD15_PROMPTS", str(setup.file("prompts.txt", "\n  \n")))
    return run(setup, "-d", "sd15", "--weights", setup.tmp)


@case("expected a folder, a .zip or an .npz of images")
def reference_images_that_are_not_images(setup):
    return run(setup, "--plugin", setup.plugin(), "-d", "flat-teacher", "--metrics", "fd",
               "--reference-images", setup.file("images.txt", "not images"))


# --- where results go --------------------------------------------------------------------------
@case("cannot write results to")
def read_only_results_directory(setup):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the next case covers an unwritable path")
    (setup.tmp / "ro").mkdir(mode=0o555)
    return run(setup, "--results-dir", setup.tmp / "ro")


@case("cannot write results to")
def results_path_under_a_file(setup):
    return run(setup, "--results-dir", setup.file("results", "a file") / "sub")


@case("No space left on device")
def full_disk(setup):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("which file a descriptor writes is read from /proc")
    fsync = os.fsync

    def full_results_disk(fd):  # the disk holding the results fills up; caches elsewhere still write
        if Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(setup.recorded):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    setup.monkeypatch.setattr(os, "fsync", full_results_disk)
    return run(setup, "--overwrite")  # the recorded cell's files are rewritten: none may be lost


# --- the other commands ------------------------------------------------------------------------
@case("is not a readable record")
def table_of_a_corrupt_record(setup):
    copy = setup.tmp / "results"
    shutil.copytree(setup.recorded, copy)
    record = copy / "gmm" / "euler" / "nfe4" / "metrics.json"
    record.write_bytes(record.read_bytes()[:100])
    return ["table", "--results-dir", copy]


@case("Unknown metric 'fidd'. Did you mean: fid")
def table_of_an_unknown_metric(setup):
    return ["table", "--metric", "fidd", "--results-dir", setup.recorded]


@case("holds no saved learned solver")
def show_a_handcrafted_cell(setup):
    return ["show", setup.recorded / "gmm" / "euler" / "nfe4"]


@case("holds no saved learned solver")
def show_a_directory_that_is_no_cell(setup):
    return ["show", setup.tmp]


@case("dlms chooses its steps and coefficients per sample")
def export_a_dlms_cell(setup):
    gmm = setup.request.getfixturevalue("gmm")
    short_fit("dlms", gmm, 4, iterations=0).save_state(setup.tmp / "dlms", gmm, 4)
    return ["export", setup.tmp / "dlms", setup.tmp / "out"]


@case("is not a gasbench result cell")
def export_a_directory_that_is_no_cell(setup):
    return ["export", setup.tmp, setup.tmp / "out"]


@case("--to 'onnx': the only export format is diffusers")
def export_to_an_unknown_format(setup):
    return ["export", setup.recorded / "gmm" / "euler" / "nfe4", setup.tmp / "out", "--to", "onnx"]


@case("refused before anything in it ran")
def import_release_of_a_malicious_pickle(setup):
    path = setup.file("student.pt", pickle.dumps({"ema": {"shadow_params": [Payload("posix.system", setup.marker())]}}))
    return ["import-release", path, "-d", "gmm", "--t-eps", "1e-3", "--results-dir", setup.recorded]


@case("no results recorded under")
def report_of_an_empty_directory(setup):
    return ["report", "--results-dir", setup.tmp]


def recorded_files(results: Path) -> dict[Path, bytes]:
    """Every file under ``results`` but the run plans (``.plans/``: what a command set out to do,
    for `gasbench status`, written by any run that got as far as the teacher row)."""
    return {p: p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file() and ".plans" not in p.parts}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_message(name, recorded, tmp_path, monkeypatch, capsys,
                                        request):
    message, command = CASES[name]
    setup = Setup(recorded, tmp_path, monkeypatch, request)
    monkeypatch.chdir(tmp_path)  # relative names (absent.yaml) resolve here
    args = command(setup)
    before, records = recorded_files(recorded), set(tmp_path.rglob("metrics.json"))
    code, out, err = gasbench(monkeypatch, capsys, *args)
    assert code != 0, err
    assert message in " ".join(err.split()), err
    assert err.lower().count("error:") == 1 and "internal error" not in err, err
    assert "Traceback" not in out + err
    assert recorded_files(recorded) == before  # nothing lost, altered or added
    assert set(tmp_path.rglob("metrics.json")) == records
    assert not [marker for marker in setup.markers if marker.exists()]  # no payload ran


def test_a_second_run_waits_for_the_cell_another_is_computing(recorded, monkeypatch, capsys):
    """Two runs writing the same cell at once: the second waits with one message, then reuses the
    first one's record (here the first is this thread holding the cell's lock)."""
    from gasbench.core import locks

    before = recorded_files(recorded)
    held, done = threading.Event(), threading.Event()

    def first_run():
        with locks.exclusive(recorded / "gmm" / "euler" / "nfe4"):
            held.set()
            done.wait(timeout=60)

    holder = threading.Thread(target=first_run)
    holder.start()
    assert held.wait(timeout=60)
    acquire = locks._acquire  # the first run finishes once the second one waits for it
    monkeypatch.setattr(locks, "_acquire",
                        lambda path, on_wait: acquire(path, lambda: (on_wait and on_wait(), done.set())))
    try:
        code, _, err = gasbench(monkeypatch, capsys, *RUN, "--results-dir", recorded)
    finally:
        done.set()
        holder.join()
    assert code == 0, err
    assert "another gasbench process is computing this cell; waiting for it" in " ".join(err.split())
    assert recorded_files(recorded) == before


def test_debug_shows_the_traceback(recorded, monkeypatch, capsys):
    before = recorded_files(recorded)
    code, _, err = gasbench(monkeypatch, capsys, "--debug", *RUN, "-m", "dpmpp3n", "--results-dir", recorded)
    assert code == 2 and "Traceback" in err and "Unknown solver 'dpmpp3n'" in err
    assert recorded_files(recorded) == before
