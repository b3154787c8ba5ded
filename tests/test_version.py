"""One version, from one place, consistent with what the docs say each release added."""

from __future__ import annotations

import re
from pathlib import Path

import vae_automl

REPO = Path(__file__).resolve().parents[1]
RELEASE_MENTION = re.compile(r"\b(?:[Aa]dded in|since|[Dd]eprecated since|written by) (\d+)\.(\d+)\b")
"""How docstrings and docs date a change: ``Added in 0.2``, ``since 0.3``, ``a study written by 0.2``."""


def documented_releases() -> set[tuple[int, int]]:
    files = [*REPO.glob("vae_automl/**/*.py"), REPO / "README.md", *REPO.glob("docs/*.md")]
    return {(int(a), int(b)) for path in files for a, b in RELEASE_MENTION.findall(path.read_text())}


def test_pyproject_reads_the_version_from_the_package() -> None:
    from setuptools.config.pyprojecttoml import read_configuration

    project = read_configuration(REPO / "pyproject.toml", expand=True)["project"]
    assert project["version"] == vae_automl.__version__
    text = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and not re.search(r'(?m)^version = "', text)  # no second literal


def test_the_version_is_the_newest_release_the_docs_speak_of() -> None:
    major, minor = (int(p) for p in vae_automl.__version__.split(".")[:2])
    releases = documented_releases()
    assert (0, 2) in releases  # the docs do date changes (a regex that matched nothing would pass below)
    assert max(releases) == (major, minor), f"docs speak of {sorted(releases)}, the package is {vae_automl.__version__}"
