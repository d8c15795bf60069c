"""README examples are run, so they stay true; every docs/ALGORITHM.md section the repository cites exists."""

import math
import re
import subprocess
import warnings
from pathlib import Path

import pytest

import mulo
from mulo.optim.mulo import MuPWarning

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ALGORITHM = ROOT / "docs" / "ALGORITHM.md"


@pytest.fixture(scope="module")
def readme_namespaces() -> list[dict]:
    """Each python block of the README run once, in order; MuPWarning is an error (the README's own path
    must be the μP-correct one)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespaces = []
    for code in blocks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mulo.PlaceholderMetaWeightsWarning)
            warnings.simplefilter("error", MuPWarning)
            namespace: dict = {}
            exec(compile(code, str(README), "exec"), namespace)
        namespaces.append(namespace)
    return namespaces


def test_readme_python_blocks_run(readme_namespaces):
    assert all(readme_namespaces)


def test_use_it_on_your_model_learns(readme_namespaces):
    lm = next(ns for ns in readme_namespaces if "held_out_loss" in ns)
    assert isinstance(lm["model"].head, mulo.mup.MuReadout)
    assert lm["held_out_loss"] < 0.6 * math.log(len(lm["chars"])), lm["held_out_loss"]


def test_readme_shows_the_three_commands_first():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert [line.split()[1] for line in first_block.strip().splitlines()] == ["install", "demo", "test"]


def repository_text_files() -> list[Path]:
    """Files git tracks or would track (ignored build outputs, .venv and egg-info left out)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        paths = [ROOT / line for line in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked sdist)
        paths = [p for p in ROOT.rglob("*") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    suffixes = {".py", ".md", ".h", ".cpp", ".cu", ".cuh", ".sh", ".toml", ".txt", ".cfg"}
    return [p for p in paths if p.suffix in suffixes and p.is_file()]


def cited_sections(text: str) -> set[int]:
    """Section numbers in ``ALGORITHM.md §N``, ``§N–M`` and ``§N, §M`` citations."""
    found = set()
    for cite in re.findall(r"ALGORITHM\.md((?:[ ,]*§\s*\d+(?:\s*[–-]\s*\d+)?)+)", text):
        for first, last in re.findall(r"§\s*(\d+)(?:\s*[–-]\s*(\d+))?", cite):
            found.update(range(int(first), int(last or first) + 1))
    return found


def test_cited_algorithm_sections_exist_in_the_repository():
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", ALGORITHM.read_text(), flags=re.M)}
    assert sections == set(range(1, max(sections) + 1)), sections
    missing = {}
    outside = []
    for path in repository_text_files():
        text = path.read_text(errors="replace")
        for n in cited_sections(text) - sections:
            missing.setdefault(n, []).append(str(path.relative_to(ROOT)))
        if re.search(r"shared/spec/ALGORITHM\.md", text):
            outside.append(str(path.relative_to(ROOT)))
    assert not missing, f"cited sections that docs/ALGORITHM.md lacks: {missing}"
    assert not outside, f"these files cite an algorithm document outside the repository: {outside}"
    assert cited_sections("ALGORITHM.md §1–3, §6 and docs/ALGORITHM.md §8") == {1, 2, 3, 6, 8}
