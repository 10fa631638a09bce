"""What `pip install .` (the Docker image's install) delivers works outside the source checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_installed_package_finds_its_knowledge_and_contract(tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    # Run from elsewhere so nothing can be found through the checkout; the installed copy wins.
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import service.settings as s, service.cli as c, sys;"
        "print(s.data_root());"
        "sys.exit(c.main(['validate']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(target / "rpl_cds_data")
    assert "service rpl-workup (patient-view)" in result.stdout
    assert (target / "rpl_cds_data" / "openapi.yaml").is_file()
    assert (target / "service" / "feedback" / "migrations" / "versions").is_dir()
