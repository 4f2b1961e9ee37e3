"""Progress bars of the bench, tune and demo: drawn on a terminal only. In a captured log (stderr not a tty)
they are off, so the log holds no carriage returns or the cursor-up codes (`ESC[A`) of nested bars."""
from __future__ import annotations


def progress_bar(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs), disabled when stderr is not a terminal (tqdm's `disable=None`)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None, **kwargs)
