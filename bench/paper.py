"""The papers' reported numbers (``paper_results.csv``), to print beside ours (``gasbench table
--with-paper``).

One row per printed number: ``paper`` (gas | s4s | dlms), ``table`` (e.g. "GAS Table 2a"),
``teacher``, ``method``, ``nfe`` (empty for a teacher's own single value, shown under every NFE),
``metric``, ``value`` (exactly as printed, e.g. "0.90") and ``note``. The numbers were extracted
from the papers' text tables cell by cell, never retyped. A number a paper repeats verbatim in
another table of its own (same teacher, method, NFE, metric and value) is kept once, under the
first of its tables in this order: the complete grids (GAS Table 2, S4S Tables 13-18, DLMS Table
5), then the others by number.

Tables included (values kept):

* GAS (Oganov et al., ICLR 2026): Table 2a (135), 2b (90), 2c (28), 3 (32: FID and LPIPS),
  4 (5: NFE not printed, 4 as in its Figure 4), 5 (4), 6 (1), 7a (8), 7b (8), 8 (8: precision,
  recall, density, coverage), 9 (7: coverage, consistency distillation), 10 (8), 11 (6), 12a (16),
  12b (10), 13a (8), 13b (5). Left out: Tables 14-16 (training time, memory and inference time on
  the authors' GPUs), Tables 17-18 (teacher FIDs, equal to Table 2's teacher rows), the time and
  GPU columns of Table 13.
* S4S (Frankel et al., 2025): the full FID grids, Tables 13 (AFHQv2, 344), 14 (CIFAR-10, 400),
  15 (FFHQ, 344), 16 (ImageNet, 258), 17 (LSUN-Bedroom, 300), 18 (MS-COCO, 300); the teachers'
  FIDs of Figures 5-7 (3); Tables 2 (18), 3 (18), 4 (10), 5 (10), 6 (6), 8 (12), 9 (24), 10 (16),
  11 (3). Table 12 repeats Table 4 plus training costs; Tables 1 and 7 hold no numbers.
* DLMS (Liang et al.): Tables 5 (157), 1 (21), 3 (28), 4 (12). Table 2 (search GPU hours) is left
  out.

Teachers: our names where gasbench has that teacher (cifar10, ffhq, afhqv2: EDM; lsun-bedroom,
imagenet256: LDM, CFG 2.0; sd15: Stable Diffusion v1.5), else the paper's, lowercase-hyphen:
``sd14`` (S4S's MS-COCO runs use Stable Diffusion v1.4), ``imagenet64`` (DLMS, EDM),
``imagenet256-guided-diffusion`` (DLMS's pixel-space ADM ImageNet 256, CFG 2.0, FID on 10k).

Methods are written as gasbench labels them (:func:`gasbench.runner.method_label`): the registered
solver and the options that differ from its defaults, sorted, ``+key=value`` each, so a run with
those options lands on the same row name. Options a paper does not state are left out (the note
says so where it matters). Paper -> label:

* DPM++ (3M), DPM-Solver++ (3M), DPM (GAS Table 11) -> ``dpmpp3m``; UniPC (3M), variant not
  stated -> ``unipc``; iPNDM (3M) / (2M) -> ``ipndm+order=3`` / ``ipndm+order=2``.
* A schedule -> ``+schedule=``: GITS ``gits``, DMN ``dmn``, Time EDM ``edm``, Time LogSNR
  ``logsnr``, Time Quadratic ``time-quadratic``, Time Uniform / t-Unif ``time-uniform``, and
  ``ld3`` for LD3's learned steps under another solver (S4S's grids).
* Best LD3, Best Trad. (LD3) -> ``ld3`` (the best of its base solvers, as the note says).
* iPNDM-S4S -> ``s4s``; DPM-Solver++-S4S -> ``s4s+init=dpmpp``; Gaussian-S4S ->
  ``s4s+init=gaussian``; UniPC-S4S (UniPC is a predictor-corrector) -> ``s4s-pc``;
  DPM-Solver-S4S (2S) -> ``s4s-ss``; S4S Alt / S4S-Alt -> ``s4s-alt``; S4S Tables 5 and 9:
  order -> ``+order=``, "r = 0" -> ``+relax=0``, "L2" -> ``+loss=l2``.
* GS, GAS (Ours) -> ``gs``, ``gas``; GAS Table 3 "S4S" and Table 10 "S4S LMS + PC" ->
  ``gs+parametrization=s4s-pc``, Table 10 "S4S LMS" -> ``gs+parametrization=s4s`` (GAS's
  implementation in its own code, as gasbench's options are); Table 5 "w/o theory" ->
  ``gs+guidance=false``; Table 12, N samples after 10k/20k iterations ->
  ``gs+iterations=10000+train_size=N`` (and ``gas+...``).
* DLMS -> ``dlms``; "w/o AFS" -> ``dlms+afs=false``; Table 4's M -> ``dlms+interpolation_steps=M``. DLMS's
  handcrafted baselines on its EDM teachers (CIFAR10, FFHQ, ImageNet-64) come from the
  diff-solvers toolbox it cites, whose README gives the same numbers and the settings:
  ``dpmpp3m+schedule=logsnr``, ``unipc-bh2+schedule=logsnr``, ``deis+schedule=time-quadratic``;
  on its other teachers the settings are not stated (``dpmpp3m``, ``unipc-bh2``, ``deis``).
* A teacher's own row -> ``teacher``.

Methods gasbench does not have keep the paper's name: dpm-solver-v3 (DPM-v3), deis, amed-plugin,
usf, gits (DLMS Table 1, its solver not stated), bns, cd (consistency distillation), pd
(progressive distillation), ecm, ict-deep, dpm-solver-2s, dpm-solver-s4s-3s,
consistent-dpm-solver-s4s-2s, joint-obj (S4S Table 6), s4s-global-phi and s4s-alt-global-phi
(S4S Table 9 "Glob. phi"), gas-traditional (GAS Table 6), gs-from-ffhq, gas-from-ffhq,
gs-from-afhqv2, gas-from-afhqv2 (GAS Table 7, printed GS' and GAS'), dlms-without-... (DLMS
Table 3's ablations) and handcrafted-best (DLMS Table 3).

Metrics: fid, lpips (backbone not stated, shown beside lpips-alex and lpips-vgg), l1, precision,
recall, density, coverage. Where a paper's numbers disagree with its own other tables, the value
is kept as printed and the note says so (S4S Table 2's ImageNet time-uniform rows equal Table 15's
FFHQ logSNR rows; S4S Tables 8 and 10 FFHQ rows equal other rows).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

import pandas as pd

from gasbench.core.errors import GasbenchError

PAPER_RESULTS = Path(__file__).with_name("paper_results.csv")
PAPERS = {"gas": "GAS", "s4s": "S4S", "dlms": "DLMS"}
COLUMNS = ["paper", "table", "teacher", "method", "nfe", "metric", "value", "note"]
NAME = r"[a-z0-9]+(?:-[a-z0-9]+)*"
LABEL = re.compile(rf"({NAME})((?:\+[a-z_]+=[a-z0-9.-]+)*)")
VALUE = re.compile(r"\d+(?:\.\d+)?")


def base_method(label: str) -> str:
    """The solver name of a method label: ``s4s+init=dpmpp+schedule=gits`` -> ``s4s``."""
    return label.split("+", 1)[0]


def label_options(label: str) -> dict[str, str]:
    """The ``+key=value`` options of a method label, in their order."""
    return dict(part.split("=", 1) for part in label.split("+")[1:])


def _check_row(row: dict[str, str]) -> Optional[str]:
    """What is wrong with one CSV row, or None."""
    if row["paper"] not in PAPERS:
        return f"paper '{row['paper']}' is not one of {', '.join(PAPERS)}"
    if not row["table"].startswith(PAPERS[row["paper"]] + " "):
        return f"table '{row['table']}' does not name the {PAPERS[row['paper']]} paper"
    for column in ("teacher", "metric"):
        if not re.fullmatch(NAME, row[column]):
            return f"{column} '{row[column]}' is not lowercase-hyphen"
    if not LABEL.fullmatch(row["method"]):
        return f"method '{row['method']}' is not a label like 'name+key=value'"
    keys = list(label_options(row["method"]))
    if keys != sorted(keys):
        return f"method '{row['method']}' has its options out of order (sort them, as gasbench labels do)"
    if row["nfe"] and not (row["nfe"].isdigit() and int(row["nfe"]) >= 1):
        return f"nfe '{row['nfe']}' is not a positive integer"
    if not VALUE.fullmatch(row["value"]):
        return f"value '{row['value']}' is not a number"
    return None


def read_table(path: Path, columns: list[str], what: str) -> pd.DataFrame:
    """A csv of text cells with exactly ``columns``, or one GasbenchError saying what is wrong."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as exc:
        raise GasbenchError(f"cannot read {what} '{path}': {exc}") from None
    if list(raw.columns) != columns:
        raise GasbenchError(f"{path} must have the columns {','.join(columns)}, found {','.join(raw.columns)}.")
    return raw


@lru_cache(maxsize=4)
def load_paper_results(path: Path = PAPER_RESULTS) -> pd.DataFrame:
    """Every reported number, validated: columns as in the module docstring plus ``printed`` (the
    value's text as printed); ``nfe`` is a nullable integer and ``value`` a float. One row per
    (paper, table, teacher, method, nfe, metric), or a GasbenchError naming the bad line. The frame
    is cached per path: treat it as read-only."""
    raw = read_table(path, COLUMNS, "the papers' results")
    for line, row in enumerate(raw.to_dict("records"), start=2):
        problem = _check_row(row)
        if problem:
            raise GasbenchError(f"{path}, line {line}: {problem}.")
    key = ["paper", "table", "teacher", "method", "nfe", "metric"]
    repeated = raw[raw.duplicated(key)]
    if not repeated.empty:
        again = repeated.iloc[0]
        raise GasbenchError(f"{path}, line {repeated.index[0] + 2}: {again['table']} {again['teacher']} "
                            f"{again['method']} NFE {again['nfe'] or '-'} {again['metric']} is listed more than once.")
    return raw.assign(
        printed=raw["value"],
        value=raw["value"].astype(float),
        nfe=pd.array([int(n) if n else None for n in raw["nfe"]], dtype="Int64"),
    )


def paper_numbers(teacher: str, metric: str, path: Path = PAPER_RESULTS) -> pd.DataFrame:
    """The reported numbers of one teacher and metric, in the file's order (paper, table, row).
    A paper's ``lpips`` (backbone not stated) counts for both ``lpips-alex`` and ``lpips-vgg``."""
    results = load_paper_results(path)
    metrics = {metric, "lpips"} if metric.startswith("lpips-") else {metric}
    return results[(results.teacher == teacher) & results.metric.isin(metrics)].reset_index(drop=True)
