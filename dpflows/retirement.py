"""Retiring old windows: their counts leave the data root, their budgets stay in the ledger.

`retire_windows` writes a version whose metadata marks windows 0..k-1 ``retired`` (no files)
and deletes every version of those windows' directories once it is served. The dataset keeps
its grid, declared days and later windows as they were (their versions, so their stored
answers, do not change); a query touching a retired window is refused before anything is
charged (`queries.touched_windows`). The service's use case (`service.admin.retire_windows`)
also deletes the stored answers that count a retired window; charges and audit rows stay: the
spending of a person-window is a fact for as long as the ledger lives.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from dpflows.aggregate_versions import (
    VERSIONS_DIR,
    WINDOWS_DIR,
    _fsync,
    _remove_old_versions,
    switch_current,
    version_dir,
    writer_lock,
)
from dpflows.errors import InvalidData, InvalidInput


def retire_windows(dataset_dir: str | Path, before_window: int) -> Path:
    """Mark windows 0..before_window-1 retired in a new version, switch to it, delete their files."""
    out = Path(dataset_dir)
    with writer_lock(out):
        vdir = version_dir(out)
        doc = json.loads((vdir / "metadata.json").read_bytes())
        if "windows" not in doc:
            raise InvalidData(f"dataset {out.name!r} is stored as whole-dataset Parquet (written before window files); "
                              f"convert it first: dpflows admin upgrade-dataset --dataset {out.name}", field="dataset")
        windows = doc["windows"]
        if not 0 < before_window < len(windows):
            raise InvalidInput(f"retiring windows before {before_window} of dataset {out.name!r} must leave at least "
                               f"one window of its {len(windows)} and retire at least one", field="before")
        doc["windows"] = {k: ({"retired": True} if int(k) < before_window else v) for k, v in windows.items()}
        name = f"v-{uuid.uuid4().hex}"
        tmp = out / VERSIONS_DIR / f".tmp-{name}"
        tmp.mkdir(mode=0o700)
        try:
            shutil.copy(vdir / "cells.parquet", tmp / "cells.parquet")
            (tmp / "metadata.json").write_text(json.dumps(doc, indent=2))
            for path in tmp.iterdir():
                path.chmod(0o600)
                _fsync(path)
            tmp.rename(out / VERSIONS_DIR / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        switch_current(out, out / VERSIONS_DIR / name, [])
        _remove_old_versions(out, keep={name, vdir.name})
        for window in range(before_window):  # every version of a retired window, the previous version's too
            shutil.rmtree(out / WINDOWS_DIR / str(window), ignore_errors=True)
    return out
