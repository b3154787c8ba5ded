"""Which skips are allowed: under ``VAE_AUTOML_STRICT_SKIPS=1`` (.ci/run sets it) any other skip fails.

The one place that lists the reasons a test may skip (:data:`ALLOWED_SKIP_REASONS`). tests/conftest.py
imports the two hooks; a plain ``pytest -p skip_policy`` run gets the same policy.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

STRICT_SKIPS_ENV = "VAE_AUTOML_STRICT_SKIPS"
"""With this set to 1, a skip whose reason is not in ALLOWED_SKIP_REASONS fails instead: a CI that lost a
dependency (nni, PostgreSQL, Ray, onnxruntime, matplotlib, a plugin package) goes red rather than quietly green."""

ALLOWED_SKIP_REASONS = (
    "CUDA",  # no CUDA device: CI runs on CPU
    "MPS",  # no Apple GPU: CI runs on Linux
    "real MNIST not found",  # ../shared/data/mnist sits beside a checkout here, not in a fresh clone
    # contract suites (vae_automl.testing): a check that does not apply to the component under test
    "the compressor declares compresses = False",
    "only quantize-stage compressors that take masked input",
    "the architecture declares no channel groups",
    "block in the docs",  # test_docs: every block of that language is marked illustrative
)
"""Substrings of the skip reasons that stay skips under STRICT_SKIPS_ENV: absent hardware or data, and checks
that do not apply. A missing Python package or server is never one of them."""


def strict_skips() -> bool:
    return os.environ.get(STRICT_SKIPS_ENV, "") not in ("", "0")


def skip_reason(longrepr: Any) -> str:
    """The reason of a skip report (pytest stores ``(path, lineno, "Skipped: reason")``)."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def disallowed_skip(report: Any) -> str | None:
    """The reason of ``report``'s skip when strict skips are on and the reason is not allowed, else None."""
    if not report.skipped or hasattr(report, "wasxfail") or not strict_skips():
        return None
    reason = skip_reason(report.longrepr)
    return None if any(allowed in reason for allowed in ALLOWED_SKIP_REASONS) else reason


def _fail_skip(report: Any, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"skipped for a reason not in tests/skip_policy.py ALLOWED_SKIP_REASONS while {STRICT_SKIPS_ENV}=1 "
        f"(a dependency CI installs is missing?): {reason}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    reason = disallowed_skip(report)
    if reason is not None:
        _fail_skip(report, reason)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield  # a module-level importorskip skips the whole module here
    reason = disallowed_skip(report)
    if reason is not None:
        _fail_skip(report, reason)
    return report
