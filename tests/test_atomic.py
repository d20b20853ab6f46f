"""Atomic outputs: nothing appears under the final name unless the write finished."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from ctdose.atomic import atomic_path, write_csv


def test_failed_write_leaves_neither_file_nor_temp(tmp_path):
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a table")
            raise RuntimeError("killed")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_finished_write_replaces_the_target_with_usual_permissions(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    write_csv(pd.DataFrame({"a": [1, 2]}), target)
    assert pd.read_csv(target)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
