from __future__ import annotations

from vae_automl.config import PrunerConfig
from vae_automl.early_stopping import CurveStopper, PeerCurve

PEERS = [PeerCurve((30.0, 28.0, 26.0, 25.0), 1000), PeerCurve((31.0, 29.0, 27.0, 26.0), 2000),
         PeerCurve((32.0, 30.0, 28.0, 27.0), 3000), PeerCurve((29.0, 27.0, 25.0, 24.0), 50_000)]


def test_compares_only_with_no_larger_models() -> None:
    config = PrunerConfig(name="median", warmup_epochs=1, min_trials=3)
    stopper = CurveStopper(config, PEERS, base_params=5000)
    assert len(stopper.peers) == 3  # the 50k-parameter model is not a peer
    assert stopper.threshold(2) == 27.0
    assert stopper.should_stop(2, 27.5) and not stopper.should_stop(2, 26.5)


def test_no_verdict_in_warmup_or_without_enough_peers() -> None:
    config = PrunerConfig(name="median", warmup_epochs=2, min_trials=3)
    assert CurveStopper(config, PEERS, 5000).threshold(1) is None
    assert CurveStopper(config, PEERS, 1500).threshold(3) is None  # only one peer that small
    assert CurveStopper(PrunerConfig(name="none"), PEERS, 10**9).threshold(3) is None
    # a peer whose curve is shorter (early-stopped) is not counted at later epochs
    short = [PeerCurve((30.0,), 10)] * 5
    assert CurveStopper(PrunerConfig(name="median", warmup_epochs=0, min_trials=3), short, 100).threshold(1) is None
