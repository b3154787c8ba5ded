"""The deployed runtime: ONNX export, int8 kernels on the quantizer's exact grid, the latency objective's wiring."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from vae_automl import runtime  # noqa: E402
from vae_automl.builtin.objectives import LatencyMs
from vae_automl.builtin.objectives_impl import deployed_forward  # noqa: E402
from vae_automl.components import CompressionContext, MeasureContext  # noqa: E402
from vae_automl.data import make_splits  # noqa: E402
from vae_automl.config import SplitConfig  # noqa: E402
from vae_automl.registry import get_registry  # noqa: E402

MLP = {"architecture": "mlp", "input_shape": [1, 8, 8], "encoder_widths": [48], "decoder_widths": [48],
       "latent_dim": 6, "activation": "relu", "likelihood": "bernoulli"}
CONV = {"architecture": "conv", "input_shape": [1, 8, 8], "encoder_channels": [4, 8], "decoder_channels": [8, 4],
        "kernel_size": 3, "latent_dim": 4, "activation": "relu", "likelihood": "bernoulli"}


@pytest.fixture(scope="module")
def data() -> Any:
    rng = np.random.default_rng(0)
    images = (rng.random((200, 1, 8, 8)) < 0.3).astype(np.float32)
    return make_splits(images, SplitConfig(validation=0.1, test=0.2, seed=0), "cpu", spec="synthetic")


def build(config: dict[str, Any], seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return get_registry().build_model(config).eval()


def quantized(model: Any, data: Any, bits: int = 8) -> Any:
    """The model through the real built-in uniform quantizer (per channel, symmetric)."""
    quantizer = get_registry().compressors.get("uniform")
    ctx = CompressionContext(data=data, device=torch.device("cpu"), seed=0, fine_tune=lambda m, *a, **k: m)
    return quantizer.apply(model, {"bits": bits, "calibration": "minmax"}, ctx).eval()


def test_float_onnx_matches_torch(data: Any) -> None:
    model = build(MLP)
    onnx_model = runtime.OnnxVAE(runtime.export_onnx(model))
    x = data.test[:16]
    mu, logvar = onnx_model.encode(x)
    ref_mu, ref_logvar = model.encode(x)
    torch.testing.assert_close(mu, ref_mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logvar, ref_logvar, rtol=1e-4, atol=1e-5)
    z = torch.randn(5, MLP["latent_dim"])
    torch.testing.assert_close(onnx_model.decode(z), model.decode(z), rtol=1e-4, atol=1e-5)
    assert runtime.integer_ops(runtime.export_onnx(model)) == []


def test_quantizer_output_counts_as_int8_and_others_do_not(data: Any) -> None:
    model = build(MLP)
    assert not runtime.is_int8(model)
    assert runtime.is_int8(quantized(model, data, bits=8))
    assert not runtime.is_int8(quantized(model, data, bits=4))
    assert runtime.runtime_name(model, "cpu") == "torch"
    assert runtime.deployed_runtime(model, "cpu") is None


def test_onnxruntime_reproduces_the_quantizers_int8_codes_exactly(data: Any) -> None:
    model = quantized(build(MLP), data)
    proto = onnx.load_from_string(runtime.export_onnx(model))
    ops = [n.op_type for n in proto.graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert "Gemm" not in ops and "MatMul" not in ops  # every Linear runs in the integer kernel
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    state = model.state_dict()
    names = runtime.int8_weight_names(model)
    assert names, "no int8 weight: the loop below would check nothing"
    for name in names:
        w = state[name].numpy()  # out x in, already the dequantized values
        scale = np.asarray(model.encodings[name]["scale"], dtype=np.float32).reshape(-1, 1)
        expected = np.round(w / scale).astype(np.int8).T  # the ONNX MatMul weight is in x out
        got = init[f"model.{name}_kn_quantized"]  # torch's initializer name, our transpose, ORT's suffix
        assert got.dtype == np.int8
        np.testing.assert_array_equal(got, expected, err_msg=f"{name}: onnxruntime's int8 codes differ")
        ort_scale = init[f"model.{name}_kn_scale"]
        np.testing.assert_allclose(ort_scale, scale.ravel(), rtol=1e-6)


@torch.no_grad()
def test_int8_onnx_matches_torch_closely(data: Any) -> None:
    model = quantized(build(MLP), data)
    onnx_model = runtime.OnnxVAE(runtime.export_onnx(model))
    mu, _ = onnx_model.encode(data.test)
    ref_mu, _ = model.encode(data.test)
    # Weights are the same int8 codes; only activations are rounded (8-bit, per batch). A wrong scale or
    # layout gives errors of order 1; rounding of an untrained net's small outputs stays well under 0.25.
    assert float((mu - ref_mu).norm() / ref_mu.norm()) < 0.25
    decoded, ref_decoded = onnx_model.decode(ref_mu), model.decode(ref_mu)
    assert float((decoded - ref_decoded).norm() / ref_decoded.norm()) < 0.25
    assert float((torch.sigmoid(decoded) - torch.sigmoid(ref_decoded)).abs().max()) < 0.05


def test_conv_int8_uses_conv_integer(data: Any) -> None:
    model = quantized(build(CONV), data)
    assert runtime.is_int8(model)
    ops = runtime.integer_ops(runtime.export_onnx(model))
    assert "ConvInteger" in ops and "MatMulInteger" in ops
    onnx_model = runtime.OnnxVAE(runtime.export_onnx(model))
    assert onnx_model.decode(torch.zeros(3, CONV["latent_dim"])).shape == (3, 1, 8, 8)


def test_latency_objective_times_int8_models_in_onnxruntime(data: Any) -> None:
    model = quantized(build(MLP), data)
    ctx = MeasureContext(model=model, data=data, device=torch.device("cpu"), seed=0, latency_batch_size=16,
                         latency_repeats=2, latency_warmup=1, latency_target="cpu")
    forward = deployed_forward(ctx)
    assert forward is deployed_forward(ctx)  # the session is cached per model in ctx.cache
    out = forward(data.test[:16])
    assert isinstance(out, np.ndarray) and out.shape == (16, 1, 8, 8)
    assert runtime.runtime_name(model, "cpu") == runtime.RUNTIME_ORT_INT8
    assert runtime.runtime_name(model, "cuda") == runtime.RUNTIME_TORCH
    assert runtime.deployed_runtime(model, "cuda") is None
    assert LatencyMs().measure(ctx) > 0


def test_gaussian_decoder_exports_its_log_sigma(data: Any) -> None:
    from vae_automl.export import elbo_of
    from vae_automl.train import evaluate_elbo

    model = build({**MLP, "likelihood": "gaussian"})
    with torch.no_grad():
        model.log_sigma.uniform_(-3.0, -1.0)  # not a constant, so a wrong mapping would show
    onnx_model = runtime.OnnxVAE(runtime.export_onnx(model))
    assert onnx_model.outputs == ["mu", "logvar", "decoded", "log_sigma"]
    torch.testing.assert_close(onnx_model.log_sigma(), model.log_sigma.detach())
    got = elbo_of(onnx_model.encode, onnx_model.decode, "gaussian", onnx_model.log_sigma(), data.test, seed=3)
    assert got == pytest.approx(evaluate_elbo(model, data.test, seed=3), rel=1e-5)
