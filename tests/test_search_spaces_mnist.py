"""search_spaces/mnist_mlp.yaml and mnist_conv.yaml load, and search every kind of compressor."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from vae_automl.config import load_space
from vae_automl.registry import get_registry
from vae_automl.space import resolve, suggest

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


@pytest.mark.parametrize("name", ["mnist_mlp.yaml", "mnist_conv.yaml"])
def test_mnist_space_loads_and_searches_all_stages(name: str) -> None:
    space = load_space(SPACES / name)
    registry = get_registry()
    assert space.dataset.spec == "mnist" and space.dataset.split.test == 2000 and not space.dataset.split.shuffle
    assert space.objectives == ("test_elbo_nats", "size_bytes", "latency_ms")
    stages = {registry.compressors.get(o.name).stage for slot in space.compressors for o in slot.options}
    assert stages == {"distill", "prune", "quantize"}
    assert all(slot.optional for slot in space.compressors)
    # Sampled points resolve to pipelines in stage order.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    order = {"distill": 0, "prune": 1, "quantize": 2}
    for _ in range(20):
        spec = resolve(space, suggest(study.ask(), space), registry)
        ranks = [order[registry.compressors.get(n).stage] for n, _ in spec.pipeline]
        assert ranks == sorted(ranks)
