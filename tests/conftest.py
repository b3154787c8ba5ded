"""Shared fixtures. Installed third-party plugins are not autoloaded here, so tests see only what they register."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("VAE_AUTOML_DISABLE_PLUGIN_AUTOLOAD", "1")
# The tests train tiny models: one intra-op thread is several times faster than two fighting
# over 2 cores with the other test processes (workers, Ray) that tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``make mutation``, run a mutant's tests cheapest module first, cheapest test first.

    mutmut runs the tests that reach a mutant with ``-x`` and in no set order: a mutant a cheap test kills waited
    for whatever came first (a module fixture that runs a search, the early-stopping studies). The order comes
    from mutmut's own timings (``mutmut-stats.json`` in the mutated copy); which tests run, and their verdicts,
    do not change. Ordinary runs keep their (random) order.
    """
    stats = Path("mutmut-stats.json")
    if not os.environ.get("MUTANT_UNDER_TEST") or not stats.is_file():
        return
    import json  # deferred: only mutation runs read the timings

    seconds = json.loads(stats.read_text()).get("duration_by_test", {})
    per_module: dict[str, float] = {}
    for nodeid, duration in seconds.items():
        per_module[nodeid.split("::")[0]] = per_module.get(nodeid.split("::")[0], 0.0) + duration
    items.sort(key=lambda item: (per_module.get(item.nodeid.split("::")[0], 0.0), seconds.get(item.nodeid, 0.0)))


_SHARED_FIXTURE_HITS: dict[int, set[str]] = {}
"""Under mutmut's stats run: id of a module- or session-scoped fixture -> the mutated functions its setup ran."""


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Iterator[None]:
    """Under mutmut's stats run, note which mutated functions a shared fixture's setup runs.

    mutmut picks a mutant's tests by the functions each test ran, and credits a module fixture's setup (test_export's
    study and its exported folders) to the one test that happened to set it up: the tests that check those folders
    (loading them, tampering with them) were never run on a mutant of the export code. With the hook below, every
    test that uses the fixture is credited with what the fixture ran.
    """
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or fixturedef.scope == "function":
        yield
        return
    from mutmut.state import state  # deferred: mutmut is there only in a mutation run

    outer, state()._stats = state()._stats, set()
    try:
        yield
    finally:
        hits = state()._stats
        state()._stats = outer | hits
        _SHARED_FIXTURE_HITS[id(fixturedef)] = hits


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield
    if _SHARED_FIXTURE_HITS and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        from mutmut.state import state  # deferred: as above

        for name in getattr(item, "fixturenames", ()):
            for fixturedef in item._fixtureinfo.name2fixturedefs.get(name, ()):  # type: ignore[attr-defined]
                state()._stats |= _SHARED_FIXTURE_HITS.get(id(fixturedef), set())


# the skip policy's hooks (tests/skip_policy.py lists the reasons a test may skip under VAE_AUTOML_STRICT_SKIPS=1)
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402, F401


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST test set beside the checkout; tests using it skip where it is absent."""
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {SHARED_MNIST}")
    return SHARED_MNIST


@contextmanager
def registered_plugins() -> Iterator[Any]:
    """Register plugin objects/modules on the process-wide plugin manager; all unregistered on exit (in finally)."""
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import reset_registry

    pm = get_plugin_manager()
    registered: list[Any] = []

    def register(plugin: Any, name: str | None = None) -> Any:
        pm.register(plugin, name=name)
        registered.append(plugin)
        reset_registry()
        return plugin

    try:
        yield register
    finally:
        for plugin in registered:
            pm.unregister(plugin)
        reset_registry()


@pytest.fixture
def register_plugin() -> Iterator[Any]:
    """Register plugin objects/modules on the process-wide plugin manager for one test, unregistered in finally."""
    with registered_plugins() as register:
        yield register


# --- small real studies on the embedded digits, for the tests that read a study back (export, report) ---

DIGITS_SPACE = """\
name: {name}
dataset: {{spec: digits, split: {{validation: 0.1, test: 0.2, seed: 0}}}}
device: cpu
seed: 0
architecture:
  mlp:
    hidden_layers: 1
    hidden_width: {hidden_width}
    latent_dim: {latent_dim}
training: {{epochs: {epochs}, batch_size: 64, lr: 3.0e-3}}
compressors: {compressors}
objectives: [test_elbo_nats, size_bytes, latency_ms]
sampler: {{name: random, seed: {sampler_seed}}}
latency: {{batch_size: {latency_batch_size}, repeats: 2, warmup: 1}}
trials: {trials}
"""


def digits_space(name: str, *, hidden_width: str, latent_dim: str, epochs: int, sampler_seed: int,
                 latency_batch_size: int, trials: int, compressors: str = "[]") -> str:
    """A search space of 1-hidden-layer MLPs on digits measured on ELBO, bytes and latency."""
    return DIGITS_SPACE.format(name=name, hidden_width=hidden_width, latent_dim=latent_dim, epochs=epochs,
                               compressors=compressors, sampler_seed=sampler_seed,
                               latency_batch_size=latency_batch_size, trials=trials)


def recording_fine_tune(ctx: Any) -> list[Any]:
    """Make ``ctx.fine_tune`` train nothing and record each call's ``extra_loss``: the list it appends to."""
    seen: list[Any] = []

    def record(model: Any, epochs: int, extra_loss: Any = None, after_step: Any = None, lr: Any = None) -> Any:
        seen.append(extra_loss)
        return model

    ctx.fine_tune = record
    return seen


def run_small_study(space_text: str, root: Path, trials: int, enqueued: tuple[dict[str, Any], ...] = ()) -> str:
    """Run ``trials`` trials of ``space_text`` (the ``enqueued`` params first) in ``root``; return the storage URL."""
    import optuna

    from vae_automl.api import search
    from vae_automl.config import load_space_text

    space = load_space_text(space_text, "space.yaml")
    storage = f"sqlite:///{root / 'study.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster and kinder to a shared machine
    try:
        if enqueued:
            search(space, trials=0, storage=storage, out_dir=root / "run", show_progress=False)
            handle = optuna.load_study(study_name=space.name, storage=storage)
            for params in enqueued:
                handle.enqueue_trial(params)
        result = search(space, trials=trials, storage=storage, out_dir=root / "run", show_progress=False)
        assert result.completed == trials
    finally:
        torch.set_num_threads(threads)
    return storage


# --- real servers on loopback for the distributed tests (Ray head, PostgreSQL) ---

TINY_SPACE = """\
# 1-2 epoch MLPs on the embedded digits: a trial takes seconds, for tests of the distributed machinery
name: {name}
dataset:
  spec: digits
  split: {{validation: 0.1, test: 0.2, seed: 0}}
device: cpu
seed: 0
architecture:
  mlp:
    hidden_layers: 1
    hidden_width: {{low: 8, high: 24, log: true}}
    latent_dim: {{low: 2, high: 6}}
training:
  epochs: {{low: 1, high: {max_epochs}}}
  batch_size: 128
  lr: {lr}
{extra_training}compressors: {compressors}
objectives: [test_elbo_nats, size_bytes]
sampler: {{name: random, seed: {seed}}}
pruner: {{name: {pruner}, warmup_epochs: 1, min_trials: 2}}
latency: {{batch_size: 32, repeats: 1, warmup: 0}}
trials: {trials}
"""


@pytest.fixture
def tiny_space(tmp_path: Path) -> Any:
    """Write a tiny search space; returns ``make(**overrides) -> Path`` (name, trials, lr, max_epochs, ...)."""

    def make(name: str = "tiny", trials: int = 4, lr: str = "{low: 3.0e-3, high: 1.0e-2, log: true}",
             max_epochs: int = 2, seed: int = 0, pruner: str = "none", extra_training: str = "",
             compressors: str = "[]") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(TINY_SPACE.format(name=name, trials=trials, lr=lr, max_epochs=max_epochs, seed=seed,
                                          pruner=pruner, extra_training=extra_training, compressors=compressors))
        return path

    return make


HOLD_PLUGIN = '''
"""Test plugin: a `hold` compressor that waits while {flag} exists, so a test can catch a trial mid-run.

A number N written in the flag lets N trials through before it holds. While it waits,
{flag}.held exists: the test knows a trial is held, not merely started."""
import time
from pathlib import Path

from vae_automl.components import Compressor
from vae_automl.plugin_manager import hookimpl

FLAG = Path({flag!r})
HELD = Path({flag!r} + ".held")


class Hold(Compressor):
    name = "hold"
    stage = "quantize"

    def apply(self, model, params, ctx):
        while FLAG.exists():
            passes = FLAG.read_text().strip()
            if passes and int(passes) > 0:  # the flag may let a number of trials through first
                FLAG.write_text(str(int(passes) - 1))
                break
            HELD.touch()
            time.sleep(0.05)
        return model


@hookimpl
def register_compressors(register):
    register(Hold())
'''


def write_hold_plugin(directory: Path, module: str = "hold_plugin", extra: str = "") -> Path:
    """Write a plugin module whose `hold` compressor blocks trials while the returned flag file exists.

    Fault tests hold a trial RUNNING for as long as they need, however fast the machine trains;
    ``flag.with_name(flag.name + ".held")`` appears once a trial is held.
    """
    directory.mkdir(parents=True, exist_ok=True)
    flag = directory / f"{module}.hold"
    (directory / f"{module}.py").write_text(HOLD_PLUGIN.format(flag=str(flag)) + extra)
    return flag


def held_marker(flag: Path) -> Path:
    """The file a held trial of :func:`write_hold_plugin` creates."""
    return flag.with_name(flag.name + ".held")


def interrupt_when_held(command: list[str], env: dict[str, str], flag: Path, timeout_s: float = 300) -> tuple[int, str]:
    """Start ``command``, wait until it holds a trial, send it SIGINT; return its exit code and stderr.

    The hold flag is removed afterwards (so nothing else stays held) and a driver that outlives the
    interrupt is killed.
    """
    import signal
    import subprocess
    import time

    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + timeout_s
        while not held_marker(flag).exists():
            if driver.poll() is not None:
                raise AssertionError(f"{command[1]} exited with {driver.returncode} before holding a trial: "
                                     f"{driver.communicate()[1].decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no trial held after {timeout_s}s")
            time.sleep(0.5)
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=120)
    finally:
        flag.unlink(missing_ok=True)
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    return driver.returncode, err.decode()


def default_sigint() -> None:
    """``preexec_fn`` for a driver a test interrupts: a CI that runs the suite as a background job
    starts it with SIGINT ignored, which children inherit; Ctrl+C handling needs the default back."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (see :func:`vae_automl.testing.loopback.postgres_server`)."""
    from vae_automl.testing.loopback import Unavailable, postgres_server

    try:
        server = postgres_server()
        url = server.__enter__()
    except Unavailable as exc:
        pytest.skip(str(exc))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """A Ray head bound to 127.0.0.1 with 2 CPUs and token auth; yields its ``HOST:PORT``.

    See :func:`vae_automl.testing.loopback.ray_head`: the token is in the environment for the session,
    so drivers the tests start inherit it.
    """
    from vae_automl.testing.loopback import Unavailable
    from vae_automl.testing.loopback import ray_head as start_ray_head

    try:
        head = start_ray_head(num_cpus=2)
        address = head.__enter__()
    except Unavailable as exc:
        pytest.skip(str(exc))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield address
    finally:
        head.__exit__(None, None, None)
