"""Reading CSV files with one clear error: a file pandas cannot parse is named, never a bare parser message.

pandas reports a malformed CSV as ``Error tokenizing data. C error: Expected 3 fields in line 5, saw 4``
without saying which file; :func:`read_csv` turns that (and an empty or non-UTF-8 file) into
a ``ValueError`` that starts with the path, which the scripts print as one ``error:`` line.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


@contextlib.contextmanager
def _csv_errors_named(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a pandas parse error, an empty file or bad bytes read inside the block as
    ``ValueError("<path>: unreadable CSV (<reason>)")``."""
    try:
        yield
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())  # pandas messages can span lines
        raise ValueError(f"{path}: unreadable CSV ({reason})") from None


def read_csv(path: str | os.PathLike, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv(path, **kwargs)``; FileNotFoundError or ValueError naming ``path`` when it fails."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with _csv_errors_named(path):
        return pd.read_csv(path, **kwargs)
