"""The trainer: determinism, fallbacks of the CUDA-graph path, callbacks, limits; CUDA equivalence where a GPU exists."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from vae_automl.builtin.architectures import MLPArchitecture
from vae_automl.builtin.pruning_impl import fine_tune_masked
from vae_automl.data import DataSplits, SplitConfig, load_images, make_splits
from vae_automl.errors import ConfigError, TrialFailed
from vae_automl.testing.compressors import make_context
from vae_automl.train import TrainConfig, capture_blocker, evaluate_elbo, train
from vae_automl.vae import VAE

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a CUDA device")


def digits(device: str = "cpu") -> DataSplits:
    return make_splits(load_images("digits"), SplitConfig(validation=0.1, test=0.2, seed=0), device, spec="digits")


def small_model(seed: int = 0, hidden: int = 32, latent: int = 4, input_shape: tuple[int, ...] = (1, 8, 8)) -> VAE:
    arch = MLPArchitecture()
    torch.manual_seed(seed)
    return arch.build(arch.config_from_params({"hidden_layers": 1, "hidden_width": hidden, "width_decay": 1.0,
                                               "latent_dim": latent, "activation": "relu",
                                               "likelihood": "bernoulli"}, input_shape))


def test_eager_training_is_deterministic_for_a_seed() -> None:
    data = digits()
    config = TrainConfig(epochs=3, batch_size=64, lr=3e-3)
    results, states = [], []
    for _ in range(2):
        model = small_model()
        results.append(train(model, data, config, seed=7))
        states.append(model.state_dict())
    assert results[0].validation_curve == results[1].validation_curve
    assert results[0].train_curve == results[1].train_curve
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    other = small_model()
    train(other, data, config, seed=8)
    assert not torch.equal(other.state_dict()["mu.weight"], states[0]["mu.weight"])


def test_training_lowers_the_test_elbo_and_counts_full_batches() -> None:
    data = digits()
    model = small_model()
    before = evaluate_elbo(model, data.test)
    result = train(model, data, TrainConfig(epochs=5, batch_size=64, lr=3e-3))
    after = evaluate_elbo(model, data.test)
    assert after < before - 5.0
    # The last partial batch is dropped so every step has one shape.
    assert result.samples == 5 * (len(data.train) // 64) * 64
    assert result.epochs_run == 5 and len(result.validation_curve) == 5


def test_cpu_auto_runs_eager_and_says_why() -> None:
    result = train(small_model(), digits(), TrainConfig(epochs=1, batch_size=64))
    assert result.captured is False
    assert "CUDA graphs need a CUDA device" in result.eager_reason
    off = train(small_model(), digits(), TrainConfig(epochs=1, batch_size=64, capture="off"))
    assert off.captured is False and off.eager_reason == "capture is off"


def test_capture_on_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="capture is 'on' but .* need a CUDA device, and the data is on cpu"):
        train(small_model(), digits(), TrainConfig(epochs=1, capture="on"))


def test_capture_blocker_reasons() -> None:
    cuda = torch.device("cuda")
    assert capture_blocker(cuda, TrainConfig()) is None
    assert capture_blocker(cuda, TrainConfig(capture="off")) == "capture is off"

    def penalty(model: VAE, x: torch.Tensor) -> torch.Tensor:
        return model.mu.weight.abs().sum()

    def clamp(model: VAE) -> None:
        model.mu.weight.data.clamp_(-1, 1)

    assert capture_blocker(cuda, TrainConfig(), extra_loss=penalty) == "extra_loss is not marked capture_safe"
    assert capture_blocker(cuda, TrainConfig(), penalty, clamp) == "extra_loss and after_step are not marked capture_safe"
    clamp.capture_safe = True  # type: ignore[attr-defined]
    penalty.capture_safe = True  # type: ignore[attr-defined]
    assert capture_blocker(cuda, TrainConfig(), penalty, clamp) is None


def test_extra_loss_and_after_step_run_every_step() -> None:
    data = digits()
    calls = {"extra": 0, "after": 0}
    mask = (torch.rand(32, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float()

    def extra(model: VAE, x: torch.Tensor) -> torch.Tensor:
        calls["extra"] += 1
        return 1e-3 * model.encoder[0].weight.abs().sum()

    def reapply_mask(model: VAE) -> None:
        calls["after"] += 1
        with torch.no_grad():
            model.encoder[0].weight.mul_(mask)

    model = small_model()
    train(model, data, TrainConfig(epochs=2, batch_size=64), extra_loss=extra, after_step=reapply_mask)
    steps = 2 * (len(data.train) // 64)
    assert calls == {"extra": steps, "after": steps}
    assert torch.all(model.encoder[0].weight[mask == 0] == 0)


def test_time_limit_fails_the_trial() -> None:
    with pytest.raises(TrialFailed, match="time limit of 0.001 s"):  # the least limit training.max_seconds takes
        train(small_model(), digits(), TrainConfig(epochs=3, batch_size=64, max_seconds=0.001))


def test_patience_restores_the_best_weights() -> None:
    data = digits()
    seen: list[float] = []
    model = small_model()
    # A learning rate this high makes the validation loss bounce, so patience triggers.
    result = train(model, data, TrainConfig(epochs=30, batch_size=64, lr=0.05, patience=2),
                   on_epoch=lambda epoch, loss: seen.append(loss))
    assert result.stopped_early and result.epochs_run < 30
    assert evaluate_elbo(model, data.validation) == pytest.approx(min(seen), rel=1e-5)


def mnist_or_digits(mnist_root: Path, device: str) -> DataSplits:
    if (mnist_root / "t10k-images-idx3-ubyte.gz").is_file():
        images = load_images("mnist", str(mnist_root))[:10_000]
        return make_splits(images, SplitConfig(validation=0, test=2000, shuffle=False), device, spec="mnist")
    return digits(device)


@needs_cuda
def test_captured_step_matches_eager_test_elbo_within_one_percent() -> None:
    data = mnist_or_digits(SHARED_MNIST, "cuda")
    shape = data.input_shape
    elbos, results = {}, {}
    for mode in ("off", "on"):
        model = small_model(seed=0, hidden=400, latent=20, input_shape=shape)
        results[mode] = train(model, data, TrainConfig(epochs=10, batch_size=128, capture=mode), seed=0)
        elbos[mode] = evaluate_elbo(model, data.test)
    assert results["on"].captured and results["on"].eager_reason is None
    assert not results["off"].captured
    assert abs(elbos["on"] - elbos["off"]) <= 0.01 * abs(elbos["off"])
    # Same seed, same captured trajectory: graph replays draw their noise from the seeded generator.
    again = small_model(seed=0, hidden=400, latent=20, input_shape=shape)
    train(again, data, TrainConfig(epochs=10, batch_size=128, capture="on"), seed=0)
    assert evaluate_elbo(again, data.test) == pytest.approx(elbos["on"], rel=1e-4)


@needs_cuda
def test_capture_safe_after_step_is_captured_and_still_applied() -> None:
    data = digits("cuda")
    mask = (torch.rand(32, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float().cuda()

    def reapply_mask(model: VAE) -> None:
        with torch.no_grad():
            model.encoder[0].weight.mul_(mask)

    reapply_mask.capture_safe = True  # type: ignore[attr-defined]
    model = small_model().cuda()
    result = train(model, data, TrainConfig(epochs=3, batch_size=64), after_step=reapply_mask)
    assert result.captured
    assert torch.all(model.encoder[0].weight[mask == 0] == 0)


@needs_cuda
def test_unsafe_callable_or_capture_error_falls_back_to_eager(caplog: pytest.LogCaptureFixture) -> None:
    data = digits("cuda")
    result = train(small_model(), data, TrainConfig(epochs=1, batch_size=64),
                   after_step=lambda model: None)
    assert not result.captured and "after_step is not marked capture_safe" in result.eager_reason

    def syncs(model: VAE, x: torch.Tensor) -> torch.Tensor:
        # .item() synchronizes with the host, which a CUDA graph cannot capture.
        return torch.zeros((), device=x.device) * float(x.sum().item())

    syncs.capture_safe = True  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="vae_automl.train"):
        result = train(small_model(), data, TrainConfig(epochs=2, batch_size=64), extra_loss=syncs)
    assert not result.captured and result.eager_reason.startswith("capture failed")
    assert result.epochs_run == 2 and all(torch.isfinite(torch.tensor(result.train_curve)))
    with pytest.raises(TrialFailed, match="capture is 'on' but the CUDA-graph capture failed"):
        train(small_model(), data, TrainConfig(epochs=1, batch_size=64, capture="on"), extra_loss=syncs)
    # A search trains its trials in one process: after a failed capture the CUDA generator still draws eagerly,
    # and the next trial's step is captured again.
    assert torch.randn(4, device="cuda").isfinite().all()
    assert train(small_model(), data, TrainConfig(epochs=1, batch_size=64)).captured


def masked_fine_tune(device: str) -> tuple[VAE, dict[str, torch.Tensor], list[tuple[object, object, bool]]]:
    """A pruning fine-tune through ``fine_tune_masked``: the model, its masks and each (after_step, TrainResult,
    whether the zeros held when training ended, before ``fine_tune_masked`` zeroes them once more)."""
    data = digits(device)
    model = small_model().to(device)
    generator = torch.Generator().manual_seed(0)
    masks = {name: (torch.rand(p.shape, generator=generator) > 0.5).to(device)
             for name, p in model.named_parameters() if name.endswith("weight")}
    results: list[tuple[object, object, bool]] = []

    def fine_tune(m: VAE, epochs: int, extra_loss: object = None, after_step: object = None, lr: float | None = None) -> VAE:
        result = train(m, data, TrainConfig(epochs=epochs, batch_size=64), extra_loss=extra_loss, after_step=after_step)
        params = dict(m.named_parameters())
        results.append((after_step, result, all(bool(torch.all(params[n][~mask] == 0)) for n, mask in masks.items())))
        return m

    ctx = make_context(data)
    ctx.fine_tune = fine_tune
    fine_tune_masked(model, masks, 2, ctx)
    return model, masks, results


def test_pruning_fine_tune_keeps_its_zeros_with_a_capture_safe_mask_step() -> None:
    model, masks, results = masked_fine_tune("cpu")
    params = dict(model.named_parameters())
    assert len(results) == 1 and all(torch.all(params[name][~mask] == 0) for name, mask in masks.items())
    assert results[0][2]  # the step itself kept them zero, not only the final re-application
    # On a CUDA device nothing would keep this step out of a CUDA graph.
    assert capture_blocker(torch.device("cuda"), TrainConfig(), None, results[0][0]) is None  # type: ignore[arg-type]


@needs_cuda
def test_pruning_fine_tune_is_captured_on_cuda_and_keeps_its_zeros() -> None:
    model, masks, results = masked_fine_tune("cuda")
    params = dict(model.named_parameters())
    result = results[0][1]
    assert result.captured, result.eager_reason  # type: ignore[attr-defined]
    assert all(torch.all(params[name][~mask] == 0) for name, mask in masks.items())
    assert results[0][2]  # the captured step itself kept them zero, not only the final re-application
