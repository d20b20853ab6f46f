"""glibc malloc settings of every ctdose process: freed memory stays in the process for reuse.

By default glibc serves each allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and gives it back to the kernel on ``free``, and trims the heap's top above 128 KiB: every
large NumPy or torch temporary is then paid again in page faults, the kernel zeroing fresh pages. On a
2-core VM (transparent huge pages, ~0.3 ms a fault) one demo twin scan took 34 s, half of it in the
kernel, by default and 18 s with these settings; CT-FM's demo extraction 1:54 and 1:17. The cost is
memory: a process keeps its peak heap until it exits.

:func:`keep_freed_memory` acts on the main thread's arena only (other threads' arenas are mmapped
heaps that glibc shrinks whatever the settings), so :func:`ctdose.cli.run_main` calls it for a
script's own process and :func:`ctdose.parallel.parallel_map` runs local tasks in the main thread of
worker processes that call it first. The settings are made in-process (``mallopt``) because the
environment does not carry them reliably: glibc 2.36 cuts ``GLIBC_TUNABLES`` at its first ':' for
child processes, and Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` for its workers. ``mallopt`` takes an
``int``, so a heap whose free top passes 2 GiB is still trimmed: keep single allocations' peaks below
that (SwinUNETR on the CPU in batches of 8 patches peaked at 5.5 GB and ran 3x slower per patch than in
batches of 2).
"""

from __future__ import annotations

import ctypes
import functools

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Largest heap top (bytes) left untrimmed: the largest value mallopt's int takes.
TRIM_THRESHOLD_BYTES = 2**31 - 1


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in this process (no mmap per allocation, no trimming).

    Returns True when both settings took; False where the C library has no ``mallopt`` (not glibc).
    Once per process (cached); later calls return the first result.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
