"""The Dask engine for real: worker processes reached through a scheduler address, as `--scheduler` does.

One module-wide ``LocalCluster`` (2 worker processes, 1 thread each) stands in for a user's cluster;
the radiomics script runs through its address and must give the in-process table; results come back
in input order; a task's error and Ctrl-C end a script with one line, the local cluster closed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import REPO, load_script, run_script
from ctdose.atomic import write_csv
from ctdose.catalog import read_catalog
from ctdose.cli import run_main
from ctdose.features import read_feature_table
from ctdose.layout import ResultsLayout
from ctdose.parallel import TaskError, parallel_map
from ctdose.provenance import write_sidecar
from test_extractors_pipeline import SMALL, _fresh, results  # noqa: F401 (results: the shared inputs fixture)

RADIOMICS = "radiomics/extract_radiomics.py"


@pytest.fixture(scope="module")
def scheduler() -> str:
    """The address of a running 2-process Dask cluster (its workers' own log lines silenced)."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster:
        yield cluster.scheduler_address


def _frames(error: BaseException) -> list[str]:
    """Names of the functions in ``error``'s traceback and in those of its cause/context chain."""
    names = []
    while error is not None:
        tb = error.__traceback__
        while tb is not None:
            names.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return names


# The tasks are nested functions: they travel to the workers by value (cloudpickle), so the worker
# processes need not import this module (and torch with it): seconds saved on their first task.


def test_results_come_back_in_input_order_when_tasks_finish_in_reverse(scheduler):
    def _finish_in_reverse(item: tuple[int, int]) -> tuple[int, float, int]:
        """Item ``i`` of ``n`` takes (n - i) x 0.1 s: later items finish first. -> (i, end time, pid)"""
        i, n = item
        time.sleep((n - i) * 0.1)
        return i, time.time(), os.getpid()

    n = 6
    out = parallel_map(_finish_in_reverse, [(i, n) for i in range(n)], scheduler=scheduler)
    assert [i for i, _, _ in out] == list(range(n))
    ends = [end for _, end, _ in out]
    assert ends != sorted(ends), "the tasks finished in input order: the test did not exercise reordering"
    assert len({pid for _, _, pid in out}) == 2 and os.getpid() not in {pid for _, _, pid in out}


def test_a_task_error_is_the_tasks_own_exception_without_the_remote_traceback(scheduler):
    def _fail(kind: str) -> None:
        """A task that fails the way ``kind`` says."""
        if kind == "value":
            raise ValueError("series 1.2.3: patch center 0 at (500, 0, 0) mm is outside the volume")
        if kind == "file":
            raise FileNotFoundError(2, "No such file or directory", "/data/series/CT0001.dcm")
        if kind == "key":
            raise KeyError("ConvolutionKernel")

    with pytest.raises(ValueError) as info:
        parallel_map(_fail, ["none", "value", "none"], scheduler=scheduler)
    assert type(info.value) is ValueError
    assert str(info.value) == "series 1.2.3: patch center 0 at (500, 0, 0) mm is outside the volume"
    assert "_fail" not in _frames(info.value)  # the worker's frames are not carried back
    with pytest.raises(FileNotFoundError) as info:
        parallel_map(_fail, ["file", "none"], scheduler=scheduler)
    assert info.value.filename == "/data/series/CT0001.dcm" and "_fail" not in _frames(info.value)
    # any other exception: one line naming its type (a ValueError, so the scripts print "error: ...")
    with pytest.raises(TaskError, match=r"^KeyError: 'ConvolutionKernel'$") as info:
        parallel_map(_fail, ["key", "none"], scheduler=scheduler)
    assert "_fail" not in _frames(info.value)


def test_radiomics_through_a_scheduler_address_equals_the_in_process_run(results, scheduler, tmp_path):  # noqa: F811
    from dask.distributed import Client, get_task_stream

    local, remote = _fresh(results, tmp_path / "local"), _fresh(results, tmp_path / "remote")
    run_script(RADIOMICS, ["--results", str(local), "--workers", "1", *SMALL])
    with Client(scheduler) as client, get_task_stream(client) as stream:
        run_script(RADIOMICS, ["--results", str(remote), "--scheduler", scheduler, *SMALL])
    n_series = len(read_catalog(ResultsLayout(remote).catalog))
    assert len(stream.data) == n_series  # every series ran as a task on the cluster ...
    assert len({task["worker"] for task in stream.data}) == 2  # ... spread over both worker processes
    a = read_feature_table(ResultsLayout(local).feature_table("radiomics"))
    b = read_feature_table(ResultsLayout(remote).feature_table("radiomics"))
    assert a.ident.equals(b.ident) and a.feature_names == b.feature_names
    # the same code, CPU and inputs; only thread counts differ (SimpleITK and BLAS: 1 per worker, the
    # default in-process). Resampling computes each voxel alone; a float64 sum over a patch's 16 384
    # voxels reordered moves by <= n x eps64 = 4e-12 of its scale: 1e-9 of each feature's largest |value|
    assert (np.abs(a.X - b.X) <= 1e-9 * np.abs(a.X).max(axis=0)).all()


def _lose_first_series(res: Path) -> str:
    """Point the first catalog series at a folder that does not exist (a current catalog otherwise)."""
    layout = ResultsLayout(res)
    catalog = read_catalog(layout.catalog)
    catalog.loc[0, "path"] = str(res / "gone")
    write_csv(catalog, layout.catalog)
    write_sidecar(layout.catalog, {"data": "moved"})
    return catalog["series_uid"][0]


def _error_lines(stderr: str) -> list[str]:
    """Lines of stderr that are not progress-bar refreshes."""
    lines = (line.strip() for chunk in stderr.split("\n") for line in chunk.split("\r"))
    return [line for line in lines if line and "%|" not in line]


def test_a_worker_error_through_a_scheduler_is_one_line(results, scheduler, tmp_path, capsys):  # noqa: F811
    res = _fresh(results, tmp_path)
    uid = _lose_first_series(res)
    capsys.readouterr()
    assert run_main(load_script(RADIOMICS).main, ["--results", str(res), "--scheduler", scheduler, *SMALL]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: series {uid}: CT folder "), lines
    assert lines[0].endswith("is missing")


PROGRAM = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from ctdose.cli import run_main
    from ctdose.parallel import parallel_map

    def task(n):
        Path(sys.argv[1], f"started_{n}").touch()
        if sys.argv[2] == "fail" and n == 1:
            raise FileNotFoundError(f"series 1.2.{n}: CT folder /data/gone (from the catalog) is missing")
        time.sleep(1.0)
        return n

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started in the background
    sys.exit(run_main(lambda argv: parallel_map(task, range(8), workers=2) and 0))
""")


def _start(folder: Path, mode: str) -> subprocess.Popen:
    """PROGRAM in its own session (process group), as a terminal starts a script; no progress bars."""
    return subprocess.Popen([sys.executable, "-c", PROGRAM, str(folder), mode], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})


def test_a_worker_error_on_local_worker_processes_is_one_line(tmp_path):
    """`--workers 2`: the local cluster's "Compute Failed" log block must not reach the terminal."""
    proc = _start(tmp_path, "fail")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.splitlines() == ["error: series 1.2.1: CT folder /data/gone (from the catalog) is missing"], err


def test_ctrl_c_closes_the_local_cluster_and_prints_one_line(tmp_path):
    """A terminal's Ctrl-C: SIGINT to the whole process group (the script and its worker processes)."""
    proc = _start(tmp_path, "sleep")
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("started_*")):  # the workers are running tasks
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert err.splitlines() == ["interrupted (finished outputs are kept; re-run to resume)"], err
    assert len(list(tmp_path.glob("started_*"))) < 8  # interrupted before the end
    time.sleep(0.5)  # the worker processes (same session) are gone, not orphaned
    left = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(p.pid) == proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except (ProcessLookupError, PermissionError):
            continue
    assert left == []


def test_prefetched_loads_the_next_item_while_the_current_one_is_used():
    """Items come in order with their own loads; item n + 1's load starts before the loop body of item n
    ends (it runs in another thread), never more than one ahead; a failed load raises at its result."""
    started: list[tuple[int, int]] = []  # (item, how many loop bodies had finished when its load began)
    finished_bodies = 0

    def load(i: int) -> int:
        started.append((i, finished_bodies))
        if i == 3:
            raise ValueError("series 3: CT folder is missing")
        time.sleep(0.05)
        return i * 10

    from ctdose.parallel import prefetched

    seen = []
    for item, future in prefetched([0, 1, 2], load):
        seen.append((item, future.result()))
        time.sleep(0.1)  # the body outlasts the next load
        assert started[-1][0] == min(item + 1, 2)  # the next load has started, none beyond it
        finished_bodies += 1
    assert seen == [(0, 0), (1, 10), (2, 20)]
    assert [i for i, _ in started] == [0, 1, 2]
    assert started[2][1] == 1  # item 2's load began while item 1's body ran
    with pytest.raises(ValueError, match="series 3"):
        for _, future in prefetched([3], load):
            future.result()
    assert list(prefetched([], load)) == []
