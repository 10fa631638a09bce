"""The Docker image builds and starts, checked without a Docker engine: the wheel is built from
exactly the files the Dockerfile's build stage copies (parsed from it), installed into a fresh
venv, and the image's command runs from that install until /readyz answers.

Dependencies are not downloaded again (minutes, and the network): the fresh venv sees the test
venv's third-party packages through a .pth file, after its own site-packages, so `service` and
its data can only come from the wheel.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest
from support.dockerfile import Stage, copy_context, parse, stage_named
from support.live_service import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
READY_TIMEOUT_SECONDS = 60.0
PIP = (sys.executable, "-m", "pip")


class ImageBroken(Exception):
    """The build stage's files do not build, install or start."""


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise ImageBroken(f"{what} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def _build_and_install(build: Stage, work: Path, *, leave_out: str = "") -> Path:
    """The fresh venv's bin directory, with the wheel the build stage would build installed."""
    context = work / "context"
    copy_context(build, ROOT, context, leave_out=leave_out)
    wheels = work / "wheels"
    # No build isolation: the build backend comes from the test venv, not a download.
    _run(
        [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(context)],
        "building the wheel",
    )
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], "creating the venv")
    python = venv / "bin" / "python"
    (wheel,) = wheels.glob("rpl_cds-*.whl")
    _run(
        [*PIP, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        "installing the wheel",
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "zz_test_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8"
    )
    return venv / "bin"


def _loopback(command: list[str], port: int) -> list[str]:
    """The image's command with its listening address moved to 127.0.0.1 and a free port: a
    test server never listens on every interface."""
    replaced = list(command)
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in replaced:
            replaced[replaced.index(flag) + 1] = value
        else:
            replaced += [flag, value]
    return replaced


def _start_image_command(final: Stage, bin_dir: Path, work: Path) -> None:
    """Run the final stage's CMD with its ENV from the fresh install until /readyz is 200,
    then check what the image serves, then stop it with SIGTERM as the orchestrator would."""
    data = work / "data"
    data.mkdir()
    port = free_port()
    env = {**final.env, "HOME": str(data), "RPL_CDS_DATA_DIR": str(data)}
    # The image's PATH puts its venv first; here that is the fresh venv.
    env["PATH"] = f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"
    command = _loopback(final.cmd, port)
    command[0] = str(bin_dir / command[0])
    log = work / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=data, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise ImageBroken(f"the image's command exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ImageBroken(f"not ready in {READY_TIMEOUT_SECONDS} s:\n{log.read_text()}")
            time.sleep(0.2)
        discovery = httpx.get(f"{base}/cds-services", timeout=10).json()
        assert {s["id"] for s in discovery["services"]} >= {"rpl-workup"}
        assert httpx.get(f"{base}/openapi.json", timeout=10).status_code == 200
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE)


def test_base_images_are_pinned(stages: list[Stage]) -> None:
    for stage in stages:
        # A digest, or a tag with the full Python version and the Debian release.
        assert re.fullmatch(
            r"[\w./-]+(@sha256:[0-9a-f]{64}|:\d+\.\d+\.\d+-slim-\w+)", stage.base
        ), stage.base


def test_the_image_builds_from_its_copied_files_and_becomes_ready(
    stages: list[Stage], tmp_path: Path
) -> None:
    bin_dir = _build_and_install(stage_named(stages, "build"), tmp_path)
    _start_image_command(stages[-1], bin_dir, tmp_path)


def test_a_file_left_out_of_the_copy_lines_is_caught(stages: list[Stage], tmp_path: Path) -> None:
    # scenarios/ is what the Dockerfile once forgot; pyproject.toml packages it.
    with pytest.raises(ImageBroken, match="building the wheel"):
        _build_and_install(stage_named(stages, "build"), tmp_path, leave_out="scenarios")
