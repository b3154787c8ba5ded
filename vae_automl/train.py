"""The ELBO trainer: data resident on the device, shuffling by index, no per-step host sync.

On CUDA the whole training step (forward, backward, the Adam step with
``capturable=True``, the running loss sum) is captured in a CUDA graph after
a few eager warm-up steps on a side stream, then replayed once per batch
after the batch is gathered into a static input buffer. A small VAE's step
is a few dozen tiny kernels, so launching them one by one from Python, not
the arithmetic, bounds an eager trainer's speed; a replay launches them all
at once. The reparameterization noise is drawn inside the graph from the
default CUDA generator, which PyTorch makes graph-safe (each replay advances
its offset), so every replay draws fresh noise and a seed still fixes it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from vae_automl.data import DataSplits
from vae_automl.errors import ConfigError, TrialFailed
from vae_automl.train_config import TrainConfig, TrainResult, scheduled_lr, train_config_from  # noqa: F401  (re-exported: the trainer's callers import them from here)
from vae_automl.vae import VAE, evaluate_elbo, evaluate_recon_error  # noqa: F401  (re-exported: they lived here until 0.2)

if TYPE_CHECKING:
    from vae_automl.components import Task

ExtraLoss = Callable[[VAE, torch.Tensor], torch.Tensor]
"""``extra_loss(model, x) -> scalar`` added to the negative ELBO of each batch (distillation, L1, ...).

A callable with an attribute ``capture_safe = True`` (also for ``after_step``)
promises to run only device ops on tensors that keep their storage (no
``.item()``, no new parameters, no Python branching on tensor values), so the
trainer may capture it in the step's CUDA graph; any other callable makes
the step run eagerly.
"""

CAPTURE_WARMUP_STEPS = 3
"""Eager steps on a side stream before capture: they allocate Adam's state and autograd's buffers outside the graph."""

logger = logging.getLogger(__name__)
_logged_capture_reasons: set[str] = set()


def capture_blocker(
    device: torch.device,
    config: TrainConfig,
    extra_loss: ExtraLoss | None = None,
    after_step: Callable[[VAE], None] | None = None,
) -> str | None:
    """Why the training step cannot be captured in a CUDA graph, or None if it can be tried."""
    if config.capture == "off":
        return "capture is off"
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, and the data is on {device.type}"
    unsafe = [
        name
        for name, fn in (("extra_loss", extra_loss), ("after_step", after_step))
        if fn is not None and not getattr(fn, "capture_safe", False)
    ]
    if unsafe:
        return f"{' and '.join(unsafe)} {'is' if len(unsafe) == 1 else 'are'} not marked capture_safe"
    return None


def _log_once(reason: str) -> None:
    # A search runs hundreds of trials in one process; one line per distinct reason is enough.
    if reason not in _logged_capture_reasons:
        _logged_capture_reasons.add(reason)
        logger.warning("training step not captured in a CUDA graph, running eagerly: %s", reason)


def _set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set every group's learning rate: in place where it is a tensor (a captured step reads its storage)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


class _Stepper:
    """Runs one optimizer step per batch of indices: eagerly, or by replaying a captured CUDA graph.

    With ``capture`` set, the first :data:`CAPTURE_WARMUP_STEPS` batches train
    eagerly on a side stream, the next one is captured and replayed, and
    every later one only fills the static input buffer and replays.
    """

    def __init__(
        self,
        model: VAE,
        optimizer: torch.optim.Optimizer,
        loss_of: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
        after_step: Callable[[VAE], None] | None,
        x_train: torch.Tensor,
        y_train: torch.Tensor | None,
        batch_size: int,
        capture: bool,
        strict: bool,
    ) -> None:
        self.model, self.optimizer, self.loss_of, self.after_step = model, optimizer, loss_of, after_step
        self.x_train, self.y_train = x_train, y_train
        self.loss_sum = torch.zeros((), device=x_train.device)
        self.to_capture = capture
        self.strict = strict
        self.warmup_left = CAPTURE_WARMUP_STEPS if capture else 0
        self.static_x = (
            torch.empty((batch_size, *x_train.shape[1:]), dtype=x_train.dtype, device=x_train.device) if capture else None
        )
        self.static_y = (
            torch.empty(batch_size, dtype=y_train.dtype, device=y_train.device) if capture and y_train is not None else None
        )
        self.graph: Any = None
        self.failure: str | None = None

    def _eager(self, xb: torch.Tensor, yb: torch.Tensor | None) -> None:
        loss = self.loss_of(xb, yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step(self.model)
        self.loss_sum.add_(loss.detach())

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.x_train.index_select(0, idx), None if self.y_train is None else self.y_train.index_select(0, idx)

    def _capture(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        device = self.x_train.device
        rng = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
        # A capture that fails midway leaves the generator state it drew from marked as inside a capture, and
        # every later eager draw in the process then raises "Offset increment outside graph capture" (seen on an
        # H100, torch 2.11). So the graph draws from a copy, and a failure puts the untouched state back.
        eager_rng_state = rng.graphsafe_get_state()
        rng.graphsafe_set_state(rng.clone_state())
        try:
            # Gradients are allocated inside the graph's memory pool, so each replay overwrites them.
            with torch.cuda.graph(graph):
                loss = self.loss_of(self.static_x, self.static_y)  # type: ignore[arg-type]  # loss_of takes y or None
                loss.backward()
                self.optimizer.step()
                if self.after_step is not None:
                    self.after_step(self.model)
                self.loss_sum.add_(loss.detach())
        except BaseException:
            rng.graphsafe_set_state(eager_rng_state)
            raise
        self.graph = graph

    def step(self, idx: torch.Tensor) -> None:
        if self.graph is not None:
            torch.index_select(self.x_train, 0, idx, out=self.static_x)
            if self.y_train is not None:
                torch.index_select(self.y_train, 0, idx, out=self.static_y)
            self.graph.replay()
            return
        if not self.to_capture:
            self._eager(*self._batch(idx))
            return
        if self.warmup_left > 0:
            # Warm-up on a side stream, as the CUDA-graphs notes require before capturing.
            side = torch.cuda.Stream(device=self.x_train.device)
            side.wait_stream(torch.cuda.current_stream(self.x_train.device))
            with torch.cuda.stream(side):
                self._eager(*self._batch(idx))
            torch.cuda.current_stream(self.x_train.device).wait_stream(side)
            self.warmup_left -= 1
            return
        self.to_capture = False
        try:
            self._capture()
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
            self.graph = None
            self.optimizer.zero_grad(set_to_none=True)
            self.failure = f"capture failed: {type(exc).__name__}: {exc}"
            if self.strict:
                raise TrialFailed(f"training.capture is 'on' but the CUDA-graph {self.failure}") from exc
            _log_once(self.failure)
        self.step(idx)


def train(
    model: VAE,
    data: DataSplits,
    config: TrainConfig,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
    extra_loss: ExtraLoss | None = None,
    after_step: Callable[[VAE], None] | None = None,
    lr: float | None = None,
    task: Task | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train`` and return its curves.

    ``task`` gives the loss of each batch and the validation loss of each
    epoch (default: the ``vae`` task, the negative beta-ELBO); a task that
    needs labels trains on ``data.train_labels``.

    ``on_epoch(epoch, validation_loss)`` runs after each epoch and may raise
    (``optuna.TrialPruned`` stops a bad trial early). ``after_step(model)``
    runs after each optimizer step (re-applying a pruning mask, say). A NaN
    or infinite loss raises :class:`TrialFailed` naming the epoch.

    Each epoch visits ``len(data.train) // batch_size`` full batches in a
    seeded random order (the last partial batch is dropped, so every step has
    the same shape). ``config.capture`` chooses between a CUDA-graph step and
    an eager one (see :class:`TrainConfig`); ``TrainResult.captured`` and
    ``TrainResult.eager_reason`` tell which ran and why. ``config.lr_schedule``
    sets the learning rate of each step from ``lr`` (else ``config.lr``) by
    :func:`scheduled_lr` over this run's ``epochs x steps per epoch`` steps
    (early stopping does not shorten the schedule).
    """
    if task is None:
        from vae_automl.builtin.tasks import VaeTask  # the default task; deferred: it imports this module

        task = VaeTask()
    y_train = data.train_labels if task.needs_labels else None
    if task.needs_labels and y_train is None:
        raise ConfigError(
            f"task {task.name!r} trains on labels, but dataset {data.info.get('dataset')!r} was loaded without them"
        )
    device = data.train.device
    blocker = capture_blocker(device, config, extra_loss, after_step)
    if blocker is not None and config.capture == "on":
        raise ConfigError(
            f"training.capture is 'on' but the training step cannot be captured: {blocker}; "
            "use capture: auto to fall back to eager training"
        )
    model.to(device).train()
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    capture = blocker is None
    # On the CPU the fused Adam kernel trains the seed MLP VAE about 17% faster than the default
    # (benchmarks: 3,492 vs 2,986 samples/s, one thread); torch.compile gained nothing after 98 s of compiling.
    base_lr = lr or config.lr
    scheduled = config.lr_schedule != "constant"
    optimizer = torch.optim.Adam(
        model.parameters(),
        # A captured step bakes a float lr into the graph; a tensor's storage is read at every replay, so a
        # schedule changes it in place between replays.
        lr=torch.tensor(base_lr, device=device) if scheduled and capture else base_lr,
        weight_decay=config.weight_decay,
        capturable=capture,
        fused=True if device.type == "cpu" else None,
    )
    x_train = data.train
    n = len(x_train)
    batch_size = min(config.batch_size, n)
    steps_per_epoch = config.steps_per_epoch(n)
    total_steps = config.epochs * steps_per_epoch
    result = TrainResult()
    best_loss, best_state, since_best = math.inf, None, 0
    started = time.perf_counter()

    def loss_of(xb: torch.Tensor, yb: torch.Tensor | None) -> torch.Tensor:
        loss = task.loss(model, xb, yb, config)
        if extra_loss is not None:
            loss = loss + extra_loss(model, xb)
        return loss

    stepper = _Stepper(
        model, optimizer, loss_of, after_step, x_train, y_train, batch_size, capture, strict=config.capture == "on"
    )
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator, device=device)
        stepper.loss_sum.zero_()
        for step in range(steps_per_epoch):
            if scheduled:
                _set_lr(optimizer, scheduled_lr(config.lr_schedule, base_lr, epoch * steps_per_epoch + step, total_steps))
            stepper.step(order[step * batch_size : (step + 1) * batch_size])
            if config.max_seconds is not None and step % 32 == 0 and time.perf_counter() - started > config.max_seconds:
                raise TrialFailed(f"training exceeded the time limit of {config.max_seconds:g} s (epoch {epoch + 1})")
        result.samples += steps_per_epoch * batch_size
        train_loss = float(stepper.loss_sum) / max(steps_per_epoch, 1)
        validation_loss = task.validation_loss(model, data, config, seed)
        if not (math.isfinite(train_loss) and math.isfinite(validation_loss)):
            raise TrialFailed(
                f"loss diverged to {train_loss if not math.isfinite(train_loss) else validation_loss} "
                f"at epoch {epoch + 1} (lr={base_lr:g})"
            )
        result.train_curve.append(train_loss)
        result.validation_curve.append(validation_loss)
        result.epochs_run = epoch + 1
        if on_epoch is not None:
            on_epoch(epoch, validation_loss)
        if config.patience is not None:
            if validation_loss < best_loss:
                best_loss, best_state, since_best = validation_loss, copy.deepcopy(model.state_dict()), 0
            else:
                since_best += 1
                if since_best >= config.patience:
                    result.stopped_early = True
                    break
        if config.max_seconds is not None and time.perf_counter() - started > config.max_seconds:
            raise TrialFailed(f"training exceeded the time limit of {config.max_seconds:g} s (epoch {epoch + 1})")
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - started
    result.captured = stepper.graph is not None
    if not result.captured and result.samples:
        result.eager_reason = blocker or stepper.failure or "training ended before the warm-up steps were done"
        if blocker is not None and config.capture == "auto" and device.type == "cuda":
            _log_once(blocker)
    model.eval()
    return result
