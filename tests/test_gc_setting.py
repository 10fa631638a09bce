"""RPL_CDS_GC_YOUNG_THRESHOLD: what a serving worker's young garbage collections wait for. The
default keeps large request bodies out of the collector's walks (service/ops/serving_process.py);
an operator can set CPython's own (700) back, e.g. to compare p99s with `bench.pauses`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_WORKER = """
import gc
from service.app import create_worker_app

create_worker_app()
print(gc.get_threshold()[0])
"""


def worker_threshold(data_dir: Path, value: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RPL_CDS_DATA_DIR": str(data_dir)}
    env.pop("RPL_CDS_GC_YOUNG_THRESHOLD", None)
    if value is not None:
        env["RPL_CDS_GC_YOUNG_THRESHOLD"] = value
    return subprocess.run(
        [sys.executable, "-c", _WORKER],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_a_worker_serves_with_the_configured_threshold(tmp_path: Path) -> None:
    default = worker_threshold(tmp_path, None)
    assert default.returncode == 0, default.stderr[-3000:]
    assert default.stdout.split()[-1] == "100000"
    cpython = worker_threshold(tmp_path, "700")
    assert cpython.returncode == 0, cpython.stderr[-3000:]
    assert cpython.stdout.split()[-1] == "700"


def test_a_threshold_of_zero_is_refused_by_name(tmp_path: Path) -> None:
    # 0 would switch the young collections off: cycles would never be collected.
    refused = worker_threshold(tmp_path, "0")
    assert refused.returncode != 0
    assert "gc_young_threshold" in refused.stderr
