"""What every script does at its edges: one line for any bad input, nothing half-written.

:func:`run_main` wraps a script's ``main(argv)``: a ValueError / FileNotFoundError (bad input, with
the file or value named by the code that raised it), an OSError (read-only folder, disk full, a
results path that is a file) or Ctrl-C ends the script with exactly one line on stderr and a
non-zero status, never a traceback. Outputs are written atomically (:mod:`ctdose.atomic`), so an
interrupted step leaves no partial file under a final name and its re-run resumes.
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from ctdose.memory import keep_freed_memory


def os_error_line(error: OSError) -> str:
    """``results/x.csv: Read-only file system``: the file and the reason of an OSError."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


def one_line_warnings() -> None:
    """Show warnings as ``warning: <message>`` lines (no source line, no category)."""
    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; turn bad input, OS errors and Ctrl-C into one line and an exit status.

    Returns ``main``'s status (0 for None). Exit status 1 for errors, 130 for Ctrl-C.
    """
    one_line_warnings()
    keep_freed_memory()  # large temporaries reuse freed memory (:mod:`ctdose.memory`)
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print("interrupted (finished outputs are kept; re-run to resume)", file=sys.stderr)
        return 130
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # FileNotFoundError raised by our code carries its own message
        print(f"error: {os_error_line(error) if error.filename else error}", file=sys.stderr)
        return 1
