"""Device names: cpu, cuda, cuda:N, mps, auto; checked early, resolved against what torch sees, timed honestly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_automl.cli import build_parser
from vae_automl.config import load_space_text
from vae_automl.devices import check_device, resolve_device, synchronizer
from vae_automl.errors import ConfigError, VaeAutomlError

SPACE = "architecture:\n  mlp:\n    latent_dim: 4\n"


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:12", "mps", "auto"])
def test_valid_names(name: str) -> None:
    assert check_device(name) == name
    assert build_parser().parse_args(["search", "x.yaml", "--device", name]).device == name
    assert load_space_text(SPACE + f"device: '{name}'\n", "d.yaml").device == name


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "cuda:-1", "mps:0", "CPU", None, 1])
def test_invalid_names_are_refused_with_the_key(name: object) -> None:
    with pytest.raises(ValueError, match="device must be cpu, cuda, cuda:N, mps or auto"):
        check_device(name)
    with pytest.raises(ConfigError, match=r"d.yaml: latency.target: device must be"):
        load_space_text(SPACE + f"latency:\n  target: {name!r}\n", "d.yaml")


def test_cpu_and_auto_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")  # never mps by itself


def test_absent_devices_are_clear_errors() -> None:
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        with pytest.raises(VaeAutomlError, match=f"torch sees {count} CUDA device"):
            resolve_device(f"cuda:{count}")
    else:
        with pytest.raises(VaeAutomlError, match="'cuda:1' was asked for but torch sees no CUDA device"):
            resolve_device("cuda:1")
    if not torch.backends.mps.is_available():
        with pytest.raises(VaeAutomlError, match="'mps' was asked for but torch has no MPS backend"):
            resolve_device("mps")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_index_resolves_and_synchronizes() -> None:
    device = resolve_device("cuda:0")
    assert device == torch.device("cuda:0")
    x = torch.ones(1000, device=device) * 2
    synchronizer(device)()
    assert float(x.sum()) == 2000.0


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs Apple's MPS backend")
def test_mps_resolves_and_synchronizes() -> None:
    device = resolve_device("mps")
    x = torch.ones(1000, device=device) * 2
    synchronizer(device)()
    assert float(x.sum()) == 2000.0


def test_latency_timer_waits_for_asynchronous_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    # without the wait, a CUDA or MPS timer measures only the launch of the kernels
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("cuda", device)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    synchronizer(torch.device("cuda:1"))()
    synchronizer(torch.device("mps"))()
    synchronizer(torch.device("cpu"))()
    assert calls == [("cuda", torch.device("cuda:1")), "mps"]


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_ray_refuses_a_cuda_device_without_gpus_per_trial(device: str, tmp_path: object) -> None:
    from vae_automl.backends.ray import RayBackend

    space = load_space_text(SPACE + f"device: '{device}'\n", "d.yaml")
    with pytest.raises(ConfigError, match=f"device is {device}, but Ray hides GPUs"):
        RayBackend(space, tmp_path)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: this checks the refusal without one")
def test_gpu_check_script_refuses_clearly_without_a_gpu(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(["bash", str(root / "tools" / "gpu_check.sh"), str(tmp_path / "out")], cwd=root,
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "torch sees no CUDA device" in result.stderr
    assert not (tmp_path / "out" / "cuda_tests.log").exists()  # nothing ran
