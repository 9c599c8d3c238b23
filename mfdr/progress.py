"""Progress bars that do not flood logs: a tqdm bar only when stderr is a terminal. Redirected to a
file (``make demo > log``), a run prints its one line per epoch and nothing else."""

from __future__ import annotations

import sys


def interactive() -> bool:
    """True when stderr (where tqdm draws) is a terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm(iterable, **kwargs)``, disabled unless ``enabled`` and stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, disable=not (enabled and interactive()), **kwargs)
