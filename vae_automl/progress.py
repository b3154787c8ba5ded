"""Live progress of a search: trials done of total, best so far per objective, front size, time left."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_number(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.3g}"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.4g}"


class Progress:
    """Prints one line per finished trial to ``stream`` (stderr by default, so stdout stays parseable)."""

    def __init__(
        self,
        total: int | None,
        objectives: tuple[str, ...],
        directions: tuple[str, ...],
        timeout_s: float | None = None,
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.total, self.objectives, self.directions = total, objectives, directions
        self.timeout_s = timeout_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.started = time.monotonic()
        self.done = 0
        self.failed = 0
        self.pruned = 0
        self.last_failure: str | None = None
        self.best: dict[str, tuple[float, int]] = {}

    def time_left_s(self) -> float | None:
        elapsed = time.monotonic() - self.started
        finished = self.done + self.failed + self.pruned
        estimates = []
        if self.total is not None and finished:
            estimates.append(elapsed / finished * max(self.total - finished, 0))
        if self.timeout_s is not None:
            estimates.append(max(self.timeout_s - elapsed, 0.0))
        return min(estimates) if estimates else None

    def trial_finished(
        self,
        number: int,
        state: str,
        values: list[float] | None,
        seconds: float | None,
        reason: str | None = None,
        front_size: int | None = None,
    ) -> None:
        if state == "COMPLETE" and values is not None:
            self.done += 1
            for name, direction, value in zip(self.objectives, self.directions, values):
                best = self.best.get(name)
                if best is None or (value < best[0] if direction == "minimize" else value > best[0]):
                    self.best[name] = (value, number)
        elif state == "PRUNED":
            self.pruned += 1
        else:
            self.failed += 1
            self.last_failure = reason
        if not self.enabled:
            return
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        extra = ", ".join(f"{n} {label}" for n, label in ((self.pruned, "stopped early"), (self.failed, "failed")) if n)
        parts = [
            f"[{count} completed{'; ' + extra if extra else ''}] trial {number} {state.lower()}"
            + (f" in {seconds:.1f}s" if seconds is not None else "")
        ]
        if reason:
            parts.append(reason[:160])
        if self.best:
            parts.append("best " + ", ".join(f"{n} {format_number(v)} (#{t})" for n, (v, t) in self.best.items()))
        if front_size is not None:
            parts.append(f"front {front_size}")
        left = self.time_left_s()
        if left is not None:
            parts.append(f"~{left:.0f}s left")
        print(" | ".join(parts), file=self.stream, flush=True)

    def all_failed(self) -> str | None:
        """Why the run as a whole failed: every trial it finished failed (None: one completed, or none failed)."""
        if not self.failed or self.done:
            return None
        return (
            f"all {self.failed} trials this run finished failed (none completed); the last: {self.last_failure or 'no reason'}; "
            "each failed trial stores its reason (user attribute failure_reason)"
        )

    def message(self, text: str, **_: Any) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)
