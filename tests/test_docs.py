"""Docs are code: every fenced python, bash and yaml block in README.md and docs/ runs, unless marked illustrative.

A block is illustrative when the line before its opening fence is
``<!-- illustrative -->`` (heavy commands, cluster setups, output listings).
Python blocks of one file run in order in one namespace, bash blocks with
``bash -euo pipefail``, both in a fresh folder holding a link to the repo's
``search_spaces/``; a yaml block that is a search space (it has
``compressors``, ``architecture`` or ``base_model``) is validated by the
search-space loader, any other must parse.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- illustrative -->"
RUN_LANGS = ("python", "bash", "yaml")
DOC_PLUGINS = ("vae_automl_template.plugin",)
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    illustrative: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    out: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match.group(1), match.group(2)
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^{indent}```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        out.append(Block(path, i - len(body), lang, "\n".join(body) + "\n", previous == MARKER))
        i += 1
    return out


ALL = [b for path in DOCS for b in blocks_of(path)]
RUN = [b for b in ALL if b.lang in RUN_LANGS and not b.illustrative]


def test_blocks_are_found() -> None:
    assert any(b.lang == "python" for b in RUN) and any(b.lang == "yaml" for b in RUN)
    # a planted unmarked heavy block would run; the marker is honoured
    assert all(b.illustrative for b in ALL if "make demo" in b.code)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "search_spaces").symlink_to(ROOT / "search_spaces")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize("path", [p for p in DOCS if any(b.path == p and b.lang == "python" for b in RUN)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path: Path, workdir: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    for block in (b for b in RUN if b.path == path and b.lang == "python"):
        try:
            exec(compile(block.code, block.id, "exec"), namespace)  # noqa: S102 - the docs' own examples
        except Exception as exc:
            raise AssertionError(f"{block.id}: the python block fails: {type(exc).__name__}: {exc}") from exc


def blocks_in(lang: str) -> list[Any]:
    """The runnable blocks of ``lang``, or one skipped case saying there are none (rather than pytest's silent
    "got empty parameter set" skip, which strict skips refuse: see tests/skip_policy.py)."""
    found = [b for b in RUN if b.lang == lang]
    return found or [pytest.param(None, marks=pytest.mark.skip(reason=f"no runnable {lang} block in the docs"))]


@pytest.mark.parametrize("block", blocks_in("bash"), ids=lambda b: b.id if b else "none")
def test_bash_blocks_run(block: Block, workdir: Path) -> None:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=workdir, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{block.id}: the bash block fails:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("block", [b for b in RUN if b.lang == "yaml"], ids=lambda b: b.id)
def test_yaml_blocks_load(block: Block, workdir: Path, register_plugin: Any) -> None:
    from vae_automl.config import load_space_text
    from vae_automl.registry import get_registry

    for module in DOC_PLUGINS:  # the docs' own plugin packages (conftest turns entry-point autoload off)
        register_plugin(importlib.import_module(module), name=module)
    data = yaml.safe_load(block.code)
    if isinstance(data, dict) and {"compressors", "architecture", "base_model"} & set(data):
        load_space_text(block.code, block.id, get_registry(), base_dir=workdir)


def test_every_environment_variable_is_documented() -> None:
    names = set()
    for path in (ROOT / "vae_automl").rglob("*.py"):
        names |= set(re.findall(r"\bVAE_AUTOML_[A-Z_]+\b", path.read_text()))
    readme = (ROOT / "README.md").read_text()
    assert names and not sorted(n for n in names if n not in readme), "undocumented environment variables"


def test_hook_docstrings_name_real_yaml_keys() -> None:
    from vae_automl import hookspecs
    from vae_automl.config import TOP_KEYS

    keys = set(re.findall(r"``([a-z_]+):``", Path(hookspecs.__file__).read_text()))
    assert keys and keys <= set(TOP_KEYS), sorted(keys - set(TOP_KEYS))
