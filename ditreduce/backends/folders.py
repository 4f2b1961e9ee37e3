"""The output folders of export, the Triton repository and build-engines: made (with their parents) and
checked writable before the work that fills them; a folder that cannot be made or written is a BackendError
naming the path and why, never a raw OSError."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import BackendError


def output_dir(path, what: str) -> Path:
    """The folder `path`, created with its parents and writable; otherwise a BackendError that names it and says
    why (`what` is the artefact, e.g. "export"). Check it before the work that fills it."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackendError(f"{what}: cannot create the output folder {str(out)!r}: {_why_not_a_folder(out, e)}; "
                           f"pass a folder that can be created and written to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise BackendError(f"{what}: the output folder {str(out)!r} is not writable; pass a folder you can write to")
    return out


def _why_not_a_folder(out: Path, error: OSError) -> str:
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{str(existing)!r} is a file, not a folder"
    return f"{error.strerror or type(error).__name__} ({error.filename or out})"


@contextlib.contextmanager
def writing_into(out: Path, what: str):
    """An OSError while writing the artefacts into `out` (a full disk, a folder made read-only meanwhile) as
    a BackendError naming the file."""
    try:
        yield
    except OSError as e:
        raise BackendError(f"{what}: cannot write {str(e.filename or out)!r}: {e.strerror or e}; "
                           f"free space or pass another output folder") from e
