"""docs/fidelity.md names options as `name = default` in each method's table: every one exists
on that method with that default, so the ledger cannot drift from the code."""

import re
from pathlib import Path

import yaml

from gasbench.core.registry import SOLVERS

LEDGER = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"
OPTION = re.compile(r"`([a-z_0-9]+) = ([^`]+)`")


def ledger_options() -> list[tuple[str, str, str]]:
    """(method, option, stated default) of every `name = value` in the gasbench column of a table
    under a heading that names a registered method in backticks."""
    method, found = None, []
    for line in LEDGER.read_text().splitlines():
        if line.startswith("#"):
            names = re.findall(r"`([a-z0-9-]+)`", line)
            method = names[-1] if names and names[-1] in SOLVERS else None
        elif method and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 3:
                found += [(method, name, value) for name, value in OPTION.findall(cells[2])]
    return found


def test_ledger_names_options_of_every_learned_method():
    methods = {m for m, _, _ in ledger_options()}
    assert {"gs", "gas", "ld3", "s4s", "s4s-alt", "dlms"} <= methods


def test_every_named_option_exists_with_its_stated_default():
    wrong = []
    for method, name, value in ledger_options():
        options = SOLVERS.get(method).options
        if name not in options:
            wrong.append(f"{method}: no option {name}")
            continue
        stated, actual = yaml.safe_load(value), options[name]
        if isinstance(actual, float) and isinstance(stated, str):  # YAML 1.1 reads 1e-5 as a string
            stated = float(stated)
        if isinstance(actual, float) and isinstance(stated, (int, float)) and not isinstance(stated, bool):
            same = abs(actual - stated) <= 1e-12 * max(1.0, abs(actual))
        else:
            same = stated == actual
        if not same:
            wrong.append(f"{method}: {name} defaults to {actual!r}, the ledger says {value}")
    assert not wrong, "\n".join(wrong)
