"""Monocular depth from an exported model file: ONNX (onnxruntime) or TFLite.

`boxdepth depth IMAGES --out DEPTH --model FILE.onnx|FILE.tflite --polarity depth|disparity`.
The runtimes are optional and imported only when a file is opened: onnxruntime
(``pip install boxdepth[export]``) for .onnx; for .tflite the LiteRT interpreter
(``pip install boxdepth[tflite]``, ``ai_edge_litert.interpreter.Interpreter``), else
``tflite_runtime`` if that is the one installed. Everything runs on the CPU, one image
per call; ``OMP_NUM_THREADS``, when set, is the runtime's thread count. Opening the files
is `boxdepth.depth.exported_runtime`; this module resolves the preprocessing and runs it.

What the file states wins; options fill in what it leaves open, and an option that
contradicts the file is an error (a typo must not silently change the preprocessing):
- one input of rank 4; the dimension of size 3 at position 1 or 3 gives the layout
  (NCHW / NHWC), else ``layout``; static height/width give the input size, else
  ``input_size``; the batch dimension must be 1 or dynamic.
- input dtype float32/float16/float64: ``x = (pixel * scale - mean) / std`` per RGB
  channel, default scale 1/255, mean 0, std 1 (values in [0, 1], as PyDNet++ wants);
  ONNX ``metadata_props`` keys ``boxdepth.scale``, ``boxdepth.mean``, ``boxdepth.std``
  (text: "0.0039215", "0.485,0.456,0.406") state them in the file; TFLite files state
  only shapes and dtypes here (TFLite Support metadata is not read: pass the options).
  uint8 input: raw 0..255 pixels (the TFLite convention for quantised image models).
- ``polarity`` ("disparity": larger = nearer; "depth": larger = farther) has no default:
  an option or ONNX ``boxdepth.polarity``. Guessing wrong would invert the depth that
  every loss sees without any error, so it is required.
- ``output``: an output name or index, default 0 (PyDNet++'s first output is the
  full-resolution one). It must squeeze to (h', w') (batch and channel dims of 1).

Shapes:
    preprocess(rgb uint8 (H, W, 3)) -> (pixel_values torch (3, h, w) NCHW or (h, w, 3) NHWC,
        float32 or uint8 as the model's input, None); the image is stretched to (h, w)
        with PIL bilinear resampling (no letterbox), so the output covers the whole frame.
    predict_inverse_depth(pixel_values (1, ...), windows [1], sizes [(H, W)])
        -> [float32 (H, W)] inverse depth (larger = nearer), not normalised: the output
        resized bilinearly (align_corners=False) to the original size, then for
        "depth" 1 / max(d, 1e-3 * p99(d)).

Why 1/d for "depth": a relative depth known up to scale (d = s * z) gives 1/d = (1/s)/z,
and SPEC §0's per-image min/max normalisation removes 1/s, so the stored map is the one
the true inverse depth 1/z would give (as the sensor path stores it). The floor at 1e-3 of the 99th
percentile only guards zeros and noise (PyDNet++ outputs are 4..180 on real frames); an
output with no positive values is not a depth map and stops the run with an error. On the
107 osd-rgbd frames PyDNet++'s 1/d is nearer the sensor's stored maps than -d would be
(median mean absolute difference 0.146 against 0.248; the rank order is the same).

`identity()` keys (recorded in meta.json and required equal to resume into a folder):
    model_sha256, model_format, polarity, output, input (layout, height, width, dtype),
    scaling (scale, mean, std; None for uint8 input).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boxdepth.depth.exported_runtime import (ExportedRuntimeMissingError,  # noqa: F401 (public)
                                             Signature, open_onnx, open_tflite)

log = logging.getLogger("boxdepth")

FORMATS = {".onnx": "onnx", ".tflite": "tflite"}
POLARITIES = ("disparity", "depth")
LAYOUTS = ("nchw", "nhwc")
META_PREFIX = "boxdepth."
_DEFAULT_SCALING = (1.0 / 255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
_DEPTH_FLOOR = 1e-3  # of the 99th percentile: see the module docstring


@dataclass(frozen=True)
class ExportedOptions:
    """What the user says about an exported model; None = take it from the file/default."""
    polarity: str | None = None
    input_size: tuple[int, int] | None = None
    layout: str | None = None
    scale: float | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    output: str | None = None

    def given(self) -> list[str]:
        return [k for k, v in vars(self).items() if v is not None]


def exported_format(model: str | Path) -> str | None:
    """'onnx' | 'tflite' for a model file, None for a folder or repo id (Hugging Face)."""
    path = Path(model).expanduser()
    fmt = FORMATS.get(path.suffix.lower())
    if path.is_file() and fmt is None:
        raise ValueError(f"{path}: unknown model file suffix {path.suffix!r}; expected a Hugging "
                         f"Face model folder, a .onnx or a .tflite file")
    return fmt


def _layout(sig: Signature, opts: ExportedOptions, path: Path) -> str:
    dims = sig.input_shape
    if len(dims) != 4:
        raise ValueError(f"{path}: input {sig.input_name!r} has rank {len(dims)} "
                         f"(shape {_show(dims)}); expected 4 (NCHW or NHWC)")
    if opts.layout is not None:
        c = dims[1] if opts.layout == "nchw" else dims[3]
        if c not in (3, None):
            raise ValueError(f"{path}: input shape {_show(dims)} has {c} channels in the "
                             f"{opts.layout} channel position; boxdepth feeds 3 (RGB)")
        return opts.layout
    found = [name for name, c in zip(LAYOUTS, (dims[1], dims[3])) if c == 3]
    if len(found) == 1:
        return found[0]
    if found or None in (dims[1], dims[3]):
        raise ValueError(f"{path}: cannot tell the layout of input shape {_show(dims)}; "
                         f"pass --layout nchw or --layout nhwc")
    raise ValueError(f"{path}: input shape {_show(dims)} has no 3-channel dimension "
                     f"(position 1 or 3); boxdepth feeds RGB images (3 channels)")


def _show(dims) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


def _input_hw(sig: Signature, layout: str, opts: ExportedOptions, path: Path) -> tuple[int, int]:
    dims = sig.input_shape
    if dims[0] not in (1, None):
        raise ValueError(f"{path}: input batch dimension is {dims[0]}; expected 1 or dynamic")
    hw = (dims[2], dims[3]) if layout == "nchw" else (dims[1], dims[2])
    want = opts.input_size
    if want is not None and min(want) < 1:
        raise ValueError(f"--input-size must be positive, got {want[0]}x{want[1]}")
    if want is not None and any(d is not None and d != w for d, w in zip(hw, want)):
        raise ValueError(f"{path}: the model's input is {_show(hw)} (height x width), "
                         f"not --input-size {want[0]}x{want[1]}")
    if None in hw and want is None:
        raise ValueError(f"{path}: the model's input size is dynamic ({_show(dims)}); "
                         f"pass --input-size HxW")
    return tuple(int(w if d is None else d) for d, w in zip(hw, want or hw))


def _meta_value(sig: Signature, key: str, path: Path, parse):
    text = sig.metadata.get(META_PREFIX + key)
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"{path}: metadata {META_PREFIX + key}={text!r} cannot be read") from None


def _triplet(text: str) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in text.split(","))
    if len(vals) != 3:
        raise ValueError(f"expected 3 comma-separated numbers, got {text!r}")
    return vals


def _agree(name: str, in_file, option, path: Path):
    """The file's value if it states one (an option must then agree), else the option."""
    if in_file is not None and option is not None and not np.allclose(in_file, option):
        raise ValueError(f"{path}: the model file states {name} {in_file}, "
                         f"but --{name} {option} was given")
    return in_file if in_file is not None else option


def _scaling(sig: Signature, opts: ExportedOptions, path: Path):
    """(scale, mean, std) for float inputs; None for uint8 (raw pixels)."""
    if sig.input_dtype is np.uint8:
        if opts.scale is not None or opts.mean is not None or opts.std is not None:
            raise ValueError(f"{path}: the model takes uint8 pixels (0..255); "
                             f"--scale/--mean/--std do not apply")
        return None
    scale = _agree("scale", _meta_value(sig, "scale", path, float), opts.scale, path)
    mean = _agree("mean", _meta_value(sig, "mean", path, _triplet), opts.mean, path)
    std = _agree("std", _meta_value(sig, "std", path, _triplet), opts.std, path)
    d_scale, d_mean, d_std = _DEFAULT_SCALING
    if scale is None and mean is None and std is None:
        log.info(f"{path.name}: no input scaling in the file or options: feeding RGB in [0, 1] "
                 f"(scale 1/255, no mean/std); see --scale/--mean/--std")
    scaling = (d_scale if scale is None else float(scale), tuple(mean or d_mean),
               tuple(std or d_std))
    if min(scaling[2]) <= 0:
        raise ValueError(f"{path}: std must be positive, got {scaling[2]}")
    return scaling


def _polarity(sig: Signature, opts: ExportedOptions, path: Path) -> str:
    in_file = sig.metadata.get(META_PREFIX + "polarity")
    if in_file is not None and in_file not in POLARITIES:
        raise ValueError(f"{path}: metadata {META_PREFIX}polarity={in_file!r}; "
                         f"expected one of {', '.join(POLARITIES)}")
    if in_file is not None and opts.polarity not in (None, in_file):
        raise ValueError(f"{path}: the model file states polarity {in_file}, "
                         f"but --polarity {opts.polarity} was given")
    polarity = in_file or opts.polarity
    if polarity is None:
        raise ValueError(f"{path}: say which way the model's output runs: --polarity disparity "
                         f"(larger = nearer: MiDaS/DPT/Depth Anything) or --polarity depth "
                         f"(larger = farther: PyDNet++, metric depth)")
    return polarity


def _output_index(sig: Signature, opts: ExportedOptions, path: Path) -> int:
    names = [name for name, _ in sig.outputs]
    if opts.output is None:
        return 0
    if opts.output in names:
        return names.index(opts.output)
    if opts.output.isdigit() and int(opts.output) < len(names):
        return int(opts.output)
    raise ValueError(f"{path}: no output {opts.output!r}; outputs are "
                     + ", ".join(f"{k}: {n}" for k, n in enumerate(names)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ExportedDepthModel:
    """An opened model file with its resolved preprocessing; see the module docstring."""

    device = "cpu"
    max_batch = 1

    def __init__(self, *, path: Path, fmt: str, sig: Signature, run, layout: str,
                 size: tuple[int, int], scaling, polarity: str, out_index: int):
        self.path, self.fmt, self.sig, self._run = path, fmt, sig, run
        self.layout, self.size, self.scaling = layout, size, scaling
        self.polarity, self.out_index = polarity, out_index
        self.source = str(path.resolve())
        self.model_type = f"exported-{fmt}"
        self.output_kind = "inverse" if polarity == "disparity" else "depth"
        self.sha256 = _sha256(path)

    def identity(self) -> dict:
        """What must not change between runs into one folder (JSON-ready: lists, no tuples)."""
        scaling = None if self.scaling is None else {
            "scale": self.scaling[0], "mean": list(self.scaling[1]), "std": list(self.scaling[2])}
        return {"model_sha256": self.sha256, "model_format": self.fmt, "polarity": self.polarity,
                "output": self.sig.outputs[self.out_index][0],
                "input": {"layout": self.layout, "height": self.size[0], "width": self.size[1],
                          "dtype": np.dtype(self.sig.input_dtype).name},
                "scaling": scaling}

    def preprocess(self, rgb: np.ndarray):
        import torch
        from PIL import Image

        h, w = self.size
        if rgb.shape[:2] != (h, w):
            rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        if self.scaling is None:
            x = np.ascontiguousarray(rgb, dtype=np.uint8)
        else:
            scale, mean, std = self.scaling
            x = (rgb.astype(np.float32) * np.float32(scale) - np.float32(mean)) / np.float32(std)
            x = x.astype(self.sig.input_dtype)
        if self.layout == "nchw":
            x = np.ascontiguousarray(x.transpose(2, 0, 1))
        return torch.from_numpy(x), None

    def _squeeze(self, out: np.ndarray) -> np.ndarray:
        pred = out[0] if out.ndim >= 3 and out.shape[0] == 1 else out
        if pred.ndim == 3 and 1 in (pred.shape[0], pred.shape[-1]):
            pred = pred[0] if pred.shape[0] == 1 else pred[..., 0]
        if pred.ndim != 2:
            name = self.sig.outputs[self.out_index][0]
            raise ValueError(f"{self.path}: output {name!r} has shape {out.shape}; expected one "
                             f"depth map (1xHxW, 1x1xHxW or 1xHxWx1); pick another with --output")
        return pred.astype(np.float32)

    def predict_inverse_depth(self, pixel_values, windows: list,
                              sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        maps = []
        for k, (height, width) in enumerate(sizes):
            pred = self._squeeze(self._run(pixel_values[k:k + 1].numpy(), self.out_index))
            p = F.interpolate(torch.from_numpy(pred)[None, None], size=(height, width),
                              mode="bilinear", align_corners=False)[0, 0].numpy()
            maps.append(self._to_inverse(p))
        return maps

    def _to_inverse(self, p: np.ndarray) -> np.ndarray:
        if self.polarity == "disparity":
            return p.astype(np.float32)
        finite = p[np.isfinite(p)]
        high = float(np.percentile(finite, 99)) if finite.size else 0.0
        if not high > 0:
            raise ValueError(f"{self.path}: with --polarity depth the output must be a positive "
                             f"depth, but its 99th percentile is {high:g} on this image; if larger "
                             f"means nearer use --polarity disparity")
        return (1.0 / np.maximum(p, _DEPTH_FLOOR * high)).astype(np.float32)


def load_exported_model(model_file: str | Path, *,
                        options: ExportedOptions | None = None) -> ExportedDepthModel:
    """Open a .onnx/.tflite depth model and resolve its preprocessing (no download)."""
    opts = options or ExportedOptions()
    path = Path(model_file).expanduser()
    fmt = exported_format(path)
    if fmt is None:
        raise ValueError(f"{path}: not a .onnx or .tflite file")
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    if opts.layout not in (None, *LAYOUTS) or opts.polarity not in (None, *POLARITIES):
        raise ValueError(f"layout must be one of {LAYOUTS}, polarity one of {POLARITIES}")
    sig, run, resize = (open_onnx if fmt == "onnx" else open_tflite)(path)
    layout = _layout(sig, opts, path)
    size = _input_hw(sig, layout, opts, path)
    if resize is not None:
        resize((1, 3) + size if layout == "nchw" else (1,) + size + (3,))
    polarity = _polarity(sig, opts, path)  # first: the one option every user must give
    return ExportedDepthModel(path=path, fmt=fmt, sig=sig, run=run, layout=layout, size=size,
                              scaling=_scaling(sig, opts, path), polarity=polarity,
                              out_index=_output_index(sig, opts, path))
