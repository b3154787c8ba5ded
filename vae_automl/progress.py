"""Live progress of a search: each running trial's stage and epoch, then per finished trial the study-wide best and front size."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

PLAIN_INTERVAL_S = 10.0
"""Without a terminal, the least seconds between two lines about one running trial."""


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
    """Live progress of a search on ``stream`` (stderr by default, so stdout stays parseable).

    One line per finished trial: the count, the study-wide best of each
    objective (earlier runs' and other workers' trials included, see
    :meth:`observe`) and the front size. While a trial runs, a live line shows
    its stage, epoch and validation loss: a tqdm bar on a terminal; elsewhere
    (a log file, a pipe) plain lines, at most one per ``plain_interval_s`` per
    trial, so a short trial prints only its finished line.

    Args:
        total: completed trials this run aims for (None: unknown).
        objectives, directions: the study's objective names and ``minimize``/``maximize``.
        timeout_s: the run's time limit, for the time-left estimate.
        stream: where to write (default stderr).
        enabled: False prints nothing (counters still count).
        live: tqdm bars (True) or plain lines (False); None: bars where ``stream`` is a terminal.
        plain_interval_s: least seconds between two plain lines about one running trial.
    """

    def __init__(
        self,
        total: int | None,
        objectives: tuple[str, ...],
        directions: tuple[str, ...],
        timeout_s: float | None = None,
        stream: TextIO | None = None,
        enabled: bool = True,
        live: bool | None = None,
        plain_interval_s: float = PLAIN_INTERVAL_S,
    ) -> None:
        self.total, self.objectives, self.directions = total, objectives, directions
        self.timeout_s = timeout_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = live if live is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.plain_interval_s = plain_interval_s
        self.started = time.monotonic()
        self.done = 0
        self.failed = 0
        self.pruned = 0
        self.last_failure: str | None = None
        self.best: dict[str, tuple[float, int]] = {}
        self.running: dict[int, _Running] = {}

    def observe(self, number: int, values: Sequence[float]) -> None:
        """Count a completed trial of the study toward the best values (this run's or not)."""
        for name, direction, value in zip(self.objectives, self.directions, values):
            best = self.best.get(name)
            if best is None or (value < best[0] if direction == "minimize" else value > best[0]):
                self.best[name] = (value, number)

    def trial_started(self, number: int, epochs: int | None = None) -> None:
        """A trial began (``epochs``: its training epochs, if known)."""
        if not self.enabled:
            return
        running = _Running(epochs=epochs, last_line=time.monotonic())
        self.running[number] = running
        if self.live:
            # deferred: tqdm draws the live bars on a terminal only
            from tqdm import tqdm

            running.bar = tqdm(
                total=epochs, desc=f"trial {number}", unit="epoch", file=self.stream, leave=False, dynamic_ncols=True
            )

    def trial_stage(self, number: int, stage: str) -> None:
        """A running trial moved on: ``train``, ``compress``, ``measure`` (or a plugin's stage name)."""
        running = self.running.get(number)
        if running is None:
            return
        running.stage = stage
        if running.bar is not None:
            running.bar.set_description(f"trial {number} {stage}")
        else:
            self._plain(number, running)

    def trial_epoch(self, number: int, epoch: int, loss: float, epochs: int | None = None) -> None:
        """A running trial finished training epoch ``epoch`` (1-based) with validation loss ``loss``."""
        running = self.running.get(number)
        if running is None:
            return
        running.epoch, running.loss = epoch, loss
        running.epochs = epochs or running.epochs
        if running.bar is not None:
            if running.epochs and running.bar.total != running.epochs:
                running.bar.total = running.epochs
            running.bar.set_postfix_str(f"loss {format_number(loss)}", refresh=False)
            running.bar.update(epoch - running.bar.n)  # update, not n =, so tqdm's epochs/s and time left are right
        else:
            self._plain(number, running)

    def _plain(self, number: int, running: _Running) -> None:
        now = time.monotonic()
        if now - running.last_line < self.plain_interval_s:
            return
        running.last_line = now
        print(f"  trial {number}: {running.describe()}", file=self.stream, flush=True)

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
        """Print the finished line of trial ``number``: count, reason, study-wide best, front size, time left."""
        running = self.running.pop(number, None)
        if running is not None and running.bar is not None:
            running.bar.close()
        if state == "COMPLETE" and values is not None:
            self.done += 1
            self.observe(number, values)
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
        self._write(" | ".join(parts))

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
            self._write(text)

    def _write(self, line: str) -> None:
        if self.live and self.running:
            # deferred: tqdm draws the live bars on a terminal only
            from tqdm import tqdm

            tqdm.write(line, file=self.stream)  # above the bars, which are redrawn below it
        else:
            print(line, file=self.stream, flush=True)


@dataclass
class _Running:
    """A running trial as the progress shows it."""

    epochs: int | None = None
    stage: str = "train"
    epoch: int | None = None
    loss: float | None = None
    last_line: float = 0.0
    bar: Any = None

    def describe(self) -> str:
        text = self.stage
        if self.epoch is not None and self.stage == "train":
            text += f" epoch {self.epoch}" + (f"/{self.epochs}" if self.epochs else "")
            text += f", validation loss {format_number(self.loss)}" if self.loss is not None else ""
        return text
