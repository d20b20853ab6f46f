"""ctdose.memory: with glibc, a large array is served from the heap and stays there once freed, where
by default it is mapped on its own and given back to the kernel (the control, in another process);
parallel_map's local workers run each task in their main thread with that setting."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ctdose.parallel import parallel_map

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")

#: Prints glibc's mmapped bytes while a 100 MiB array lives, then the heap bytes kept free after it is freed.
class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``: hblkhd = bytes in mmapped blocks, fordblks = free bytes kept in the heap."""
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                       "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


SCRIPT = """
import ctypes, sys
import numpy as np
from test_memory import MallInfo2
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    from ctdose.memory import keep_freed_memory
    assert keep_freed_memory()
a = np.ones(100 * 2**20 // 8)
mapped = mallinfo2().hblkhd
del a
print(mapped, mallinfo2().fordblks)
"""


def _mapped_and_kept(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120,
                         check=True, cwd=Path(__file__).parent).stdout
    mapped, kept = out.split()[-2:]
    return int(mapped), int(kept)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_large_arrays_come_from_the_heap_and_stay_after_free():
    size = 100 * 2**20
    mapped, kept = _mapped_and_kept("default")
    assert mapped >= size and kept < size  # control: mapped on its own, given back on free
    mapped, kept = _mapped_and_kept("keep")
    assert mapped < size <= kept


def _in_worker(size: int) -> tuple[bool, int]:
    """(runs in the main thread, bytes mmapped while a ``size``-byte array lives) in the calling process."""
    import numpy as np

    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
    a = np.ones(size // 8)
    mapped = mallinfo2().hblkhd
    del a
    return threading.current_thread() is threading.main_thread(), mapped


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_local_workers_run_tasks_in_their_main_thread_keeping_freed_memory():
    size = 100 * 2**20
    for main_thread, mapped in parallel_map(_in_worker, [size] * 4, workers=2):
        assert main_thread and mapped < size
