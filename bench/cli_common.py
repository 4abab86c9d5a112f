"""What the `gasbench` command-line modules share: the consoles and the parsing of list options."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer
from rich.console import Console

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import import_plugin


def _width(stream) -> Optional[int]:
    """Piped or redirected output is not cut to rich's default 80 columns (tables keep their full
    width in files and CI logs); a terminal, or $COLUMNS, decides otherwise."""
    return None if stream.isatty() or "COLUMNS" in os.environ else 200


console = Console(soft_wrap=True, width=_width(sys.stdout))
err_console = Console(stderr=True, soft_wrap=True, width=_width(sys.stderr))

PluginOption = typer.Option(None, "--plugin", help="Module name or .py file that registers solvers (repeatable).")


def split_list(values: Optional[list[str]]) -> list[str]:
    """Accept both `--methods a,b` and repeated `--methods a --methods b`."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def parse_ints(values: list[str], what: str) -> list[int]:
    """Integers from comma-separated text, each once, in the order given ("4, 4,8" -> [4, 8])."""
    try:
        return list(dict.fromkeys(int(v) for v in split_list(values)))
    except ValueError:
        raise GasbenchError(f"{what} must be integers separated by commas, got {','.join(values)!r}.") from None


def load_plugins(plugins: Optional[list[str]]) -> None:
    for spec in plugins or []:
        import_plugin(spec)


def key_values(pairs: Optional[list[str]]) -> dict[str, str]:
    out = {}
    for pair in split_list(pairs):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise GasbenchError(f"--solver-arg expects key=value, got {pair!r}.")
        out[key.strip()] = value.strip()
    return out
