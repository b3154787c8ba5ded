"""The deployed runtime of a VAE: ONNX export, real int8 kernels in onnxruntime, a session wrapper.

ONNX layout (one graph, the choice ``model.onnx`` is written with):
inputs ``x`` (N x C x H x W) and ``z`` (M x latent_dim), outputs ``mu`` and
``logvar`` (the encoder applied to ``x``) and ``decoded`` (the decoder
applied to ``z``: Bernoulli logits or the Gaussian mean), plus ``log_sigma``
for Gaussian decoders. Both batch sizes are dynamic and independent, so
one half runs alone by feeding a zero-row tensor to the other (onnxruntime
requires every input to be fed). :class:`OnnxVAE` hides that.

Int8: when every ``nn.Linear`` and ``nn.Conv2d`` weight of a model is
stored 8-bit uniform, symmetric, per output channel (``scale = max|w| / 127``
per row), the ONNX graph is rewritten with
``onnxruntime.quantization.quantize_dynamic(per_channel=True,
weight_type=QInt8)``: weights become int8 initializers on the very grid the
search used (re-quantizing an already-snapped weight reproduces its codes),
activations are quantized per batch by ``DynamicQuantizeLinear``, and the
products run in ``MatMulInteger`` / ``ConvInteger``. Transposed convolutions
have no integer kernel in onnxruntime and stay float.

Why onnxruntime rather than torchao for the int8 latency: torchao 0.18's
int8 configs (``Int8DynamicActivationInt8WeightConfig``,
``Int8WeightOnlyConfig``) target CUDA first; on CPU they run through
tensor-subclass dispatch into generic aten ops (weight-only int8 dequantizes
into a float matmul), so on this CPU they are not faster than float torch,
while onnxruntime's MLAS integer GEMM is a real int8 kernel on x86 and ARM
and is what the exported ``model.onnx`` ships with: the latency measured is
that of the artifact a user deploys. ``benchmarks/int8_runtime.py`` measures
all of them side by side.
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vae_automl.errors import ExportError
from vae_automl.vae import VAE

if TYPE_CHECKING:
    import onnx
    import onnxruntime

    from vae_automl.vae import VAE

RUNTIME_TORCH = "torch"
RUNTIME_ORT_INT8 = "onnxruntime-int8"
OPSET = 17
GRAPH_VAE = "vae"
"""(x, z) -> (mu, logvar, decoded[, log_sigma]): the exported ``model.onnx``."""
GRAPH_RECONSTRUCT = "reconstruct"
"""x -> decoded through the posterior mean: what the latency objective times."""
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeLinear")
_INT8_LAYERS = (nn.Linear, nn.Conv2d)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx and onnxruntime: pip install 'vae-automl[export]' ({exc})") from None


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def is_int8_spec(spec: dict[str, Any]) -> bool:
    """Whether an encoding is the 8-bit symmetric per-output-channel grid onnxruntime reproduces."""
    return (
        spec.get("codec") == "uniform"
        and int(spec.get("bits", 0)) == 8
        and bool(spec.get("symmetric", True))
        and spec.get("axis") == 0
    )


def int8_weight_names(model: nn.Module) -> list[str]:
    """Names of the weights onnxruntime can run as int8 (``nn.Linear`` and ``nn.Conv2d``)."""
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, _INT8_LAYERS)]


def is_int8(model: VAE) -> bool:
    """True when every Linear/Conv2d weight is stored 8-bit uniform symmetric per channel."""
    names = int8_weight_names(model)
    encodings = getattr(model, "encodings", {})
    return bool(names) and all(is_int8_spec(encodings.get(n, {})) for n in names)


class _VaeGraph(nn.Module):
    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mu, logvar = self.model.encode(x)
        decoded = self.model.decode(z)
        if self.model.likelihood == "gaussian":
            return mu, logvar, decoded, self.model.log_sigma
        return mu, logvar, decoded


class ReconstructModule(nn.Module):
    """``forward(x)``: decoder output at the posterior mean; ``encode``/``decode`` kept for TorchScript."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.model.encode(x)
        return self.model.decode(mu)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z)


def _gemm_to_matmul(proto: onnx.ModelProto) -> None:
    """Rewrite ``Gemm`` (how torch exports a 2-D Linear) as ``MatMul`` + ``Add``.

    onnxruntime's dynamic quantizer has integer kernels for MatMul and Conv
    only, so a Gemm would stay float.
    """
    # deferred: onnx and onnxruntime load only when a model is exported or deployed
    from onnx import helper, numpy_helper

    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            attrs.get("transA", 0) == 0
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and len(node.input) == 3
            and node.input[1] in initializers
        )
        if node.op_type != "Gemm" or not plain:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        weight_name = f"{node.input[1]}_kn"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
        product = f"{node.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product], name=f"{node.name}_MatMul"))
        nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def export_onnx(model: VAE, graph: str = GRAPH_VAE, int8: bool | None = None) -> bytes:
    """The ONNX bytes of ``model``: ``graph`` is :data:`GRAPH_VAE` or :data:`GRAPH_RECONSTRUCT`.

    Args:
        model: the VAE (its float weights are used as they are).
        graph: which graph to export (see the module docstring).
        int8: run Linear/Conv2d in integer kernels; default: :func:`is_int8`.

    Returns:
        A self-contained ONNX model (opset 17).
    """
    _require_onnx()
    # deferred: onnx and onnxruntime load only when a model is exported or deployed
    import onnx

    int8 = is_int8(model) if int8 is None else int8
    model = model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(2, *model.input_shape, device=device)
    z = torch.zeros(3, model.latent_dim, device=device)
    if graph == GRAPH_VAE:
        module: nn.Module = _VaeGraph(model)
        args: tuple[torch.Tensor, ...] = (x, z)
        outputs = ["mu", "logvar", "decoded"] + (["log_sigma"] if model.likelihood == "gaussian" else [])
        axes = {"x": {0: "n"}, "mu": {0: "n"}, "logvar": {0: "n"}, "z": {0: "m"}, "decoded": {0: "m"}}
        inputs = ["x", "z"]
    elif graph == GRAPH_RECONSTRUCT:
        module, args, inputs, outputs = ReconstructModule(model), (x,), ["x"], ["decoded"]
        axes = {"x": {0: "n"}, "decoded": {0: "n"}}
    else:
        raise ValueError(f"graph must be {GRAPH_VAE!r} or {GRAPH_RECONSTRUCT!r}, but got {graph!r}")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated; the dynamo one needs onnxscript, which we do not require.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buffer,  # type: ignore[arg-type]  # torch's stub omits the file-like objects export accepts
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _name_outputs(proto, outputs)
    if not int8:
        return proto.SerializeToString()
    _gemm_to_matmul(proto)
    return _quantize_dynamic(proto)


def export_program(model: nn.Module) -> torch.export.ExportedProgram:
    """A ``torch.export`` program of ``model`` with a dynamic batch size, on the model's device.

    VAEs give the ONNX file's graph, ``(x, z) -> (mu, logvar, decoded[, log_sigma])``; other models (classifiers)
    ``x -> logits``. ``torch.export.save`` writes it as a ``.pt2`` file; ``torch.export.load(f).module()`` runs it.
    """
    model = model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(2, *model.input_shape, device=device)  # type: ignore[misc]  # a tuple attribute
    n = torch.export.Dim("n", min=1)
    if isinstance(model, VAE):
        z = torch.zeros(3, model.latent_dim, device=device)
        return torch.export.export(_VaeGraph(model), (x, z), dynamic_shapes=({0: n}, {0: torch.export.Dim("m", min=1)}))
    return torch.export.export(model, (x,), dynamic_shapes=({0: n},))


def export_classifier_onnx(model: nn.Module) -> bytes:
    """The ONNX bytes of a classifier: input ``x`` (N x C x H x W), output ``logits`` (N x classes), float weights.

    Its weights are the model's float values (already on their quantization
    grid): ONNX's integer kernels are used for VAEs only.
    """
    _require_onnx()
    # deferred: onnx and onnxruntime load only when a model is exported or deployed
    import onnx

    model = model.eval()
    x = torch.zeros(2, *model.input_shape, device=next(model.parameters()).device)  # type: ignore[misc]  # a tuple attribute
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in export_onnx: the TorchScript-based exporter is deprecated
        torch.onnx.export(
            model,
            (x,),
            buffer,  # type: ignore[arg-type]  # torch's stub omits the file-like objects export accepts
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _name_outputs(proto, ["logits"])
    return proto.SerializeToString()


class OnnxClassifier:
    """An :func:`export_classifier_onnx` model in onnxruntime: ``model(x)`` gives the logits as a tensor."""

    def __init__(self, onnx_bytes: bytes) -> None:
        self.session = make_session(onnx_bytes)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"x": _numpy(x)})[0])


def _name_outputs(proto: onnx.ModelProto, names: list[str]) -> None:
    """Give every graph output its intended name.

    A constant output (the Gaussian ``log_sigma``) is folded into an
    initializer and keeps the exporter's numeric name; an Identity renames it.
    """
    # deferred: onnx and onnxruntime load only when a model is exported or deployed
    from onnx import helper

    for output, name in zip(proto.graph.output, names):
        if output.name != name:
            proto.graph.node.append(helper.make_node("Identity", [output.name], [name], name=f"{name}_Identity"))
            output.name = name


def _quantize_dynamic(proto: onnx.ModelProto) -> bytes:

    # deferred: onnx and onnxruntime load only when a model is exported or deployed
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(proto.SerializeToString())
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on every call
        try:
            quantize_dynamic(
                src,
                dst,
                per_channel=True,
                reduce_range=False,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Conv"],
            )
        finally:
            root.setLevel(level)
        return dst.read_bytes()


def integer_ops(onnx_bytes: bytes) -> list[str]:
    """The integer operators in an ONNX model's graph, in order."""
    # deferred: onnx and onnxruntime load only when a model is exported or deployed
    import onnx

    return [n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node if n.op_type in INTEGER_OPS]


def make_session(onnx_bytes: bytes, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU InferenceSession using as many threads as torch does (so timings compare)."""
    _require_onnx()
    # deferred: onnx and onnxruntime load only when a model is exported or deployed
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def _numpy(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float32).numpy()
    return np.asarray(t, dtype=np.float32)


class OnnxVAE:
    """A :data:`GRAPH_VAE` ONNX model in onnxruntime, with the VAE's ``encode`` / ``decode``.

    Takes and returns CPU float32 torch tensors.
    """

    def __init__(self, onnx_bytes: bytes, threads: int | None = None) -> None:
        self.session = make_session(onnx_bytes, threads)
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        if set(inputs) != {"x", "z"}:
            raise ExportError(f"ONNX model has inputs {sorted(inputs)}, expected x and z (a vae-automl model.onnx)")
        self.input_shape = tuple(int(d) for d in inputs["x"][1:])
        self.latent_dim = int(inputs["z"][1])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _run(self, x: np.ndarray, z: np.ndarray) -> dict[str, torch.Tensor]:
        values = self.session.run(None, {"x": x, "z": z})
        return {name: torch.from_numpy(v) for name, v in zip(self.outputs, values)}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._run(_numpy(x), np.zeros((0, self.latent_dim), np.float32))
        return out["mu"], out["logvar"]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._run(np.zeros((0, *self.input_shape), np.float32), _numpy(z))["decoded"]

    def log_sigma(self) -> torch.Tensor | None:
        """The Gaussian decoder's per-pixel log-scale (None for Bernoulli)."""
        if "log_sigma" not in self.outputs:
            return None
        return self._run(np.zeros((0, *self.input_shape), np.float32), np.zeros((0, self.latent_dim), np.float32))["log_sigma"]


def runtime_name(model: VAE, target: str) -> str:
    """The runtime the latency objective times ``model`` with on ``target``.

    Only VAEs have an int8 ONNX graph here; other models (classifiers) run in torch.
    """

    if isinstance(model, VAE) and str(target).startswith("cpu") and is_int8(model) and onnx_available():
        return RUNTIME_ORT_INT8
    return RUNTIME_TORCH


def deployed_runtime(model: VAE, target: str, cache: dict[str, Any] | None = None) -> Callable[[torch.Tensor], object] | None:
    """The int8 onnxruntime forward (x -> decoded via mu) of an 8-bit model on CPU; None otherwise.

    ``cache`` (a measure context's) keeps the session per model object so
    repeated measurements do not re-export.
    """
    if runtime_name(model, target) != RUNTIME_ORT_INT8:
        return None
    key = f"onnxruntime-int8-session:{id(model)}"
    if cache is not None and key in cache:
        return cache[key]
    session = make_session(export_onnx(model, GRAPH_RECONSTRUCT, int8=True))
    run = session.run

    def forward(x: torch.Tensor) -> np.ndarray:
        return run(None, {"x": _numpy(x)})[0]

    if cache is not None:
        cache[key] = forward
    return forward
