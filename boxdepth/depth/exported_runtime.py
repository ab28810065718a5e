"""Opening an exported model file in its runtime: onnxruntime (.onnx), LiteRT or
tflite_runtime (.tflite). Both are optional and imported here only when a file is opened.

    open_onnx(path) / open_tflite(path) -> (signature, run, resize)
        signature: `Signature` (input_name, input_shape with None for dynamic dims,
            input_dtype numpy type, outputs [(name, shape)], metadata {key: text}).
        run(x (1, ...) input dtype, out_index) -> numpy array of that output.
        resize(shape) (TFLite only, else None): fix the input shape and allocate once.

Thread count: ``OMP_NUM_THREADS`` when set, else the runtime's default. Every error
names the file; a missing runtime says which pip extra installs it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ONNX_INPUTS = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                "tensor(double)": np.float64, "tensor(uint8)": np.uint8}


class ExportedRuntimeMissingError(ImportError, ValueError):
    """The runtime for a model file is not installed (a ValueError so the CLI reports it)."""


@dataclass
class Signature:
    """A runtime-neutral view of the model: one input, its outputs, its metadata."""
    input_name: str
    input_shape: tuple  # ints, None for dynamic dims
    input_dtype: type
    outputs: list  # [(name, shape)]
    metadata: dict


def _threads() -> int | None:
    text = os.environ.get("OMP_NUM_THREADS", "")
    return int(text) if text.isdigit() and int(text) > 0 else None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _dims(shape) -> tuple:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def open_onnx(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportedRuntimeMissingError(f"{path}: running an .onnx model needs onnxruntime: "
                                          f"pip install 'boxdepth[export]'") from None
    opts = ort.SessionOptions()
    if _threads():
        opts.intra_op_num_threads, opts.inter_op_num_threads = _threads(), 1
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValueError(f"{path} is not a loadable ONNX model ({_first_line(e)})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"{path}: the model has {len(inputs)} inputs "
                         f"({', '.join(i.name for i in inputs)}); expected one image input")
    inp = inputs[0]
    if inp.type not in _ONNX_INPUTS:
        raise ValueError(f"{path}: input {inp.name!r} is {inp.type}; expected float or uint8")
    if inp.shape is None:
        raise ValueError(f"{path}: input {inp.name!r} has no stated rank; expected 4 dims")
    sig = Signature(inp.name, _dims(inp.shape), _ONNX_INPUTS[inp.type],
                    [(o.name, o.shape) for o in session.get_outputs()],
                    dict(session.get_modelmeta().custom_metadata_map))

    def run(x: np.ndarray, out_index: int) -> np.ndarray:
        name = sig.outputs[out_index][0]
        return np.asarray(session.run([name], {sig.input_name: x})[0])
    return sig, run, None


def _tflite_interpreter_class(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        raise ExportedRuntimeMissingError(f"{path}: running a .tflite model needs the LiteRT "
                                          f"interpreter: pip install 'boxdepth[tflite]'") from None


def open_tflite(path: Path):
    Interpreter = _tflite_interpreter_class(path)
    kwargs = {"num_threads": _threads()} if _threads() else {}
    try:
        interp = Interpreter(model_path=str(path), **kwargs)
    except Exception as e:  # the interpreter raises ValueError/RuntimeError for bad files
        raise ValueError(f"{path} is not a loadable TFLite model ({_first_line(e)})") from None
    inputs = interp.get_input_details()
    if len(inputs) != 1:
        raise ValueError(f"{path}: the model has {len(inputs)} inputs; expected one image input")
    inp = inputs[0]
    dtype = np.dtype(inp["dtype"]).type
    if dtype not in (np.float32, np.float16, np.float64, np.uint8):
        raise ValueError(f"{path}: input {inp['name']!r} is {np.dtype(dtype).name}; "
                         f"expected float or uint8")
    shape = inp.get("shape_signature", inp["shape"])
    outputs = interp.get_output_details()
    sig = Signature(inp["name"], _dims(int(d) for d in shape), dtype,
                    [(o["name"], list(o["shape"])) for o in outputs], {})

    def resize(shape: tuple) -> None:
        if tuple(int(d) for d in inp["shape"]) != shape:  # dynamic dims: fix them once
            interp.resize_tensor_input(inp["index"], list(shape))
        interp.allocate_tensors()

    def run(x: np.ndarray, out_index: int) -> np.ndarray:
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return np.array(interp.get_tensor(outputs[out_index]["index"]))
    return sig, run, resize
