"""argparse types of the `ditreduce` commands: a bad value is an argparse error (exit 2) that names what
is allowed, before any model is loaded. The parser that prints such an error as one line, and the one-line
error every command prints for a DitreduceError or a path it cannot read or write."""
from __future__ import annotations

import argparse
import math
import os
import sys


MODEL_SPEC_HELP = ("model spec: small-dit[:RES], pixart-alpha:TOKENS:BLOCKS, DiffusersClass:{json config} or "
                   "package.module:callable returning (model, example_kwargs[, generate]) (ditreduce.model_specs)")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, exit 2, pointing at --help (argparse's
    own prints the whole usage first). Subcommand parsers inherit the class."""

    def error(self, message: str):
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see `{self.prog} --help`)\n")


def output_file(text: str) -> str:
    """A file the command will write: its folder exists and is writable (checked before any work is done)."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file path in it, e.g. "
                                         f"{os.path.join(text, 'out.yaml')!r}")
    folder = os.path.dirname(os.path.abspath(text))
    _check_writable_folder(folder, text)
    return text


def output_folder(text: str) -> str:
    """A folder the command will create or write into: not a file, and the nearest existing folder above
    it is writable (checked before any work is done)."""
    path = os.path.abspath(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a file; give a folder (it is created if missing)")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    _check_writable_folder(existing, text)
    return text


def _check_writable_folder(folder: str, asked: str) -> None:
    if not os.path.exists(folder):
        raise argparse.ArgumentTypeError(f"cannot write {asked!r}: there is no folder {folder!r}; create it or "
                                         "pick another path")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"cannot write {asked!r}: {folder!r} is a file, not a folder; pick "
                                         "another path")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {asked!r}: no permission to write in {folder!r}; pick "
                                         "another path")


def int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"an integer >= {lo} expected, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"an integer >= {lo} expected, got {v}")
        return v
    parse.__name__ = f"integer >= {lo}"
    return parse


positive_int = int_at_least(1)
count = int_at_least(0)


def float_in(lo: float, hi: float, hi_open: bool = False):
    """A finite float in [lo, hi] (or [lo, hi) with hi_open)."""
    where = f"[{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a number in {where} expected, got {text!r}") from None
        if not math.isfinite(v) or v < lo or v > hi or (hi_open and v == hi):
            raise argparse.ArgumentTypeError(f"a number in {where} expected, got {text!r}")
        return v
    parse.__name__ = f"number in {where}"
    return parse


finite_float = float_in(-1e6, 1e6)


def float_list(lo: float, hi: float):
    """A non-empty comma-separated list of numbers in [lo, hi]."""
    one = float_in(lo, hi)

    def parse(text: str) -> list[float]:
        items = [x.strip() for x in text.split(",")]
        if not text.strip() or any(not x for x in items):
            raise argparse.ArgumentTypeError(f"comma-separated numbers in [{lo:g}, {hi:g}] expected, got {text!r}")
        return [one(x) for x in items]
    parse.__name__ = "number list"
    return parse


def name_list(allowed):
    """A non-empty comma-separated list of names out of `allowed` (a sequence or a callable giving one)."""
    def parse(text: str) -> list[str]:
        names = sorted(allowed()) if callable(allowed) else list(allowed)
        items = [x.strip() for x in text.split(",")]
        bad = [x for x in items if x not in names]
        if not text.strip() or bad:
            raise argparse.ArgumentTypeError(f"invalid choice {','.join(bad) or text!r}; allowed (comma-separated): "
                                             f"{', '.join(names)}")
        return items
    parse.__name__ = "name list"
    return parse


def traceback_wanted(args) -> bool:
    return bool(getattr(args, "traceback", False)) or os.environ.get("DITREDUCE_TRACEBACK", "") not in ("", "0")


# the errors a command reports as one line (exit 2) besides a DitreduceError: a path the user named that
# cannot be read or written
USER_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def print_error(err: BaseException) -> int:
    """`ditreduce: error: <ErrorName>: <message on one line>` on stderr; the exit status of a refused command (2)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    print(f"ditreduce: error: {type(err).__name__}: {' '.join(lines)}", file=sys.stderr)
    return 2
