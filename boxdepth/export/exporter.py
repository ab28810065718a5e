"""`export_model`: a trained checkpoint -> one ONNX or TorchScript file (graph.py's outputs).

The file carries what the runner needs, so it is self-contained:
  ONNX         model metadata_props["boxdepth"]        (onnxruntime: custom_metadata_map)
  TorchScript  extra file "boxdepth.json" in the archive (torch.jit.load(_extra_files=...))
holding the JSON of `metadata`: {"format_version": 1, "format": "onnx" | "torchscript",
"exporter", "dynamic": bool, "input_size": [Hp, Wp] (the traced canvas; with dynamic=False
the only canvas the file accepts), "num_levels", "input_names", "output_names", "config"
(the resolved config dict), "meta" ({"cat_ids", "class_names", "weights_loaded"}),
"weights" (the checkpoint path)}.

Exporters (measured with torch 2.13): ONNX goes through the TorchScript-based exporter
(`torch.onnx.export(..., dynamo=False)`, opset 17) with `dynamic_axes` for batch, height
and width: the demo network exports in 3.5 s and onnxruntime matches PyTorch to ~1e-5.
The dynamo exporter (`dynamo=True` with `torch.export.Dim` multiples of 32; needs
onnxscript) gave the same graph outputs (max abs diff 7e-6) but took 52 s, so it is not
used; torch deprecates the TorchScript-based exporter, and switching is this one call. TorchScript is `torch.jit.trace`; a trace contains no size arithmetic (the only
size-dependent code, lite0's 'SAME' padding, depends on size % stride alone), so one trace
serves every canvas whose sides are multiples of 32. `dynamic=False` only records the
canvas and makes the runner refuse other sizes (ONNX: the input shape is fixed too).
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch

from boxdepth.export.graph import INPUT_NAMES, DenseCondInst, output_names
from boxdepth.fileio import atomic_path, atomic_write_bytes
from boxdepth.models.condinst import SIZE_DIVISIBILITY, check_size_divisibility

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "boxdepth"
TORCHSCRIPT_EXTRA = "boxdepth.json"
ONNX_OPSET = 17


def check_canvas(size_hw, where: str) -> tuple[int, int]:
    h, w = (int(v) for v in size_hw)
    if h < SIZE_DIVISIBILITY or w < SIZE_DIVISIBILITY or h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
        raise ValueError(f"{where}: size {h}x{w} (HxW) must have both sides multiples of "
                         f"{SIZE_DIVISIBILITY} (the padded canvas the network sees)")
    return h, w


def default_canvas(cfg) -> tuple[int, int]:
    """A square canvas holding the test short side: the trace example of a dynamic export."""
    div = check_size_divisibility(cfg.input.size_divisibility)  # as the batches inference pads
    side = -(-int(cfg.input.min_size_test) // div) * div
    return side, side


def example_inputs(size_hw, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images and an image mask with a padded margin: the trace sees the
    masking path as real inputs use it."""
    h, w = size_hw
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=gen)
    mask = torch.ones(batch, h, w, dtype=torch.bool)
    mask[:, :, w - w // 8:] = False
    return images, mask


@contextlib.contextmanager
def _quiet_tracer():
    """Silence the tracer's warnings about Python values taken as constants (the shape
    checks and lite0's padding rule: constant for every multiple-of-32 canvas, which the
    parity tests run) and torch's deprecation notes on torch.jit / the legacy exporter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        yield


def _export_onnx(graph: DenseCondInst, example, names: list[str], dynamic: bool) -> bytes:
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"},
                        "image_mask": {0: "batch", 1: "height", 2: "width"}}
        dynamic_axes.update({n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in names})
    buf = io.BytesIO()
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(graph, example, buf, input_names=list(INPUT_NAMES), output_names=names,
                          dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET, dynamo=False,
                          do_constant_folding=True)
    return buf.getvalue()


def _write_onnx(path: Path, model_bytes: bytes, metadata: dict) -> None:
    import onnx

    proto = onnx.load_from_string(model_bytes)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    atomic_write_bytes(path, proto.SerializeToString())


def _write_torchscript(path: Path, graph: DenseCondInst, example, metadata: dict) -> None:
    with torch.no_grad(), _quiet_tracer():
        traced = torch.jit.trace(graph, example, check_trace=False)
    with atomic_path(path) as tmp, _quiet_tracer():
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})


def export_model(weights: str | Path, out: str | Path, *, fmt: str, cfg=None,
                 size_hw: tuple[int, int] | None = None, dynamic: bool = False) -> dict:
    """Export the checkpoint's network (the EMA teacher when `eval.model` picks it, as
    `boxdepth eval`) to `out` (written atomically); returns the metadata written."""
    from boxdepth.engine.inference import load_trained_model

    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (fail before the slow part)
        except ImportError:
            raise ValueError("ONNX export needs the onnx package: pip install 'boxdepth[export]'") from None
    if size_hw is None and not dynamic:
        raise ValueError("a fixed-size export needs --size HxW (the padded canvas); or pass --dynamic")
    model, cfg, meta = load_trained_model(weights, "cpu", cfg)
    canvas = check_canvas(size_hw or default_canvas(cfg), "export")
    graph = DenseCondInst(model)
    names = output_names(len(model.strides))
    example = example_inputs(canvas)
    metadata = {"format_version": 1, "format": fmt, "dynamic": bool(dynamic), "input_size": list(canvas),
                "exporter": (f"torch.onnx.export(dynamo=False, opset {ONNX_OPSET})" if fmt == "onnx"
                             else "torch.jit.trace"),
                "torch_version": torch.__version__, "num_levels": len(model.strides),
                "input_names": list(INPUT_NAMES), "output_names": names, "config": cfg.to_dict(),
                "meta": {"cat_ids": meta.get("cat_ids"), "class_names": meta.get("class_names"),
                         "weights_loaded": meta.get("weights_loaded")},
                "weights": str(weights)}
    out = Path(out)
    if fmt == "onnx":
        _write_onnx(out, _export_onnx(graph, example, names, dynamic), metadata)
    else:
        _write_torchscript(out, graph, example, metadata)
    return metadata
