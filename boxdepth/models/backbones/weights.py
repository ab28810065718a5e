"""Load pretrained backbone weights from a local file into a backbone of this package.

`load_backbone_weights(model, path) -> (missing, unexpected)` reads
- a torch file (.pth/.pt/...): a state dict, or a checkpoint holding one under "model" or
  "state_dict"; always `torch.load(weights_only=True)`, which cannot run code;
- a detectron2 / Caffe2 pickle (.pkl): {"model": {name: ndarray}}, {"blobs": {...}} or a
  plain {name: ndarray} dict, read with a restricted unpickler (see `_SafeUnpickler`).

Key names are mapped onto the torchvision/backbone names:
- detectron2: stem.conv1 -> conv1, stem.conv1.norm -> bn1, resN.i.convK -> layer{N-1}.i.convK,
  resN.i.convK.norm -> layer{N-1}.i.bnK, resN.i.shortcut -> layer{N-1}.i.downsample.0,
  resN.i.shortcut.norm -> layer{N-1}.i.downsample.1;
- Caffe2 (MSRA R-50.pkl): conv1_w, res_conv1_bn_{s,b}, resN_i_branch2{a,b,c}_w /
  _bn_{s,b}, resN_i_branch1_w / _bn_{s,b}; affine-only BN: running stats stay at the
  FrozenBatchNorm2d defaults (mean 0, var 1 - eps) and are reported missing;
- EfficientNet-PyTorch (lite0): leading underscores dropped (`_blocks.0._bn1` ->
  `blocks.0.bn1`);
- torchvision and this package's own names are used as they are.
Classifier tensors (fc, fc1000, conv_head, ...) and BN `num_batches_tracked` counters are
dropped when the model has no such key. One log line reports what was loaded.
MSRA/Caffe2 weights expect BGR 0..255 input minus [103.53, 116.28, 123.675], std 1.

Errors: FileNotFoundError for a missing file; ValueError naming the file for a file
that is not a state dict; ValueError naming the key for a shape mismatch.
"""
from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from boxdepth.engine.checkpoint import torch_load_plain

log = logging.getLogger(__name__)

_CLASSIFIER = re.compile(r"^(fc|fc1000|classifier|head|conv_head|linear)(\.|_|$)")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that can build only numpy arrays/dtypes and plain containers.

    pickle.load runs any callable a file names, so a downloaded .pkl could execute
    arbitrary code. detectron2/Caffe2 weight files only need numpy's array
    reconstruction plus builtin containers/scalars (which pickle builds without
    `find_class`), so every other global is refused.
    """

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 store bytes this way
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> object:
    with open(path, "rb") as f:
        # latin1: the MSRA files are Python 2 pickles of numpy arrays
        return _SafeUnpickler(f, encoding="latin1").load()


def _unwrap(obj: object) -> object:
    """The state dict inside a checkpoint/pickle wrapper, or `obj` itself."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "blobs"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return obj


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """{name: tensor} from a .pth (torch) or .pkl (detectron2/Caffe2) file, names as stored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if path.suffix != ".pkl":
        raw = torch_load_plain(path, what="backbone weights file")
    else:
        try:
            raw = _read_pickle(path)
        except Exception as e:  # pickle raises many types for a corrupt or foreign file
            raise ValueError(f"{path}: cannot read backbone weights ({type(e).__name__}: {e})") from None
    sd = _unwrap(raw)
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError(f"{path}: not a state dict (got {type(raw).__name__}); expected a mapping "
                         f"of parameter names to tensors/arrays")
    out = {}
    for k, v in sd.items():
        if isinstance(k, str) and k.endswith("_momentum"):  # Caffe2 solver state, not weights
            continue
        if isinstance(v, np.ndarray) and v.dtype.kind in "fiub":
            v = torch.from_numpy(np.array(v))  # copy: pickled buffers may be read-only
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: not a state dict: entry {k!r} is a {type(v).__name__}, "
                             f"not a tensor/numeric array")
        out[k] = v
    return out


def _map_d2(key: str) -> str:
    key = re.sub(r"^stem\.conv1\.norm\.", "bn1.", key)
    key = re.sub(r"^stem\.conv1\.", "conv1.", key)
    m = re.match(r"^res(\d)\.(\d+)\.(.*)$", key)
    if not m:
        return key
    stage, idx, rest = int(m.group(1)), m.group(2), m.group(3)
    rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
    rest = re.sub(r"^shortcut\.norm\.", "downsample.1.", rest)
    rest = re.sub(r"^shortcut\.", "downsample.0.", rest)
    return f"layer{stage - 1}.{idx}.{rest}"


_C2_SUFFIX = {"w": "weight", "b": "bias", "s": "weight", "rm": "running_mean", "riv": "running_var"}


def _map_c2(key: str) -> str:
    m = re.match(r"^(conv1|res_conv1_bn)_(\w+)$", key)
    if m:
        module = "conv1" if m.group(1) == "conv1" else "bn1"
        return f"{module}.{_C2_SUFFIX.get(m.group(2), m.group(2))}"
    m = re.match(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)(_bn)?_(\w+)$", key)
    if not m:
        return key
    stage, idx, branch, is_bn, suffix = m.groups()
    if branch == "1":
        module = "downsample.1" if is_bn else "downsample.0"
    else:
        k = "abc".index(branch[-1]) + 1
        module = f"bn{k}" if is_bn else f"conv{k}"
    return f"layer{int(stage) - 1}.{idx}.{module}.{_C2_SUFFIX.get(suffix, suffix)}"


def _map_lite(key: str) -> str:
    return ".".join(part.lstrip("_") for part in key.split("."))


def to_backbone_names(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict renamed to torchvision/backbone names, detected source format)."""
    keys = list(sd)
    if any(k.startswith("stem.") or re.match(r"^res\d\.", k) for k in keys):
        fmt, fn = "detectron2", _map_d2
    elif any(re.match(r"^(res\d_\d+_branch|res_conv1_bn_|conv1_w$)", k) for k in keys):
        fmt, fn = "caffe2", _map_c2
    elif any(k.startswith(("_conv_stem.", "_blocks.")) for k in keys):
        fmt, fn = "efficientnet-pytorch", _map_lite
    else:
        fmt, fn = "torchvision", lambda k: k[len("module."):] if k.startswith("module.") else k
    return {fn(k): v for k, v in sd.items()}, fmt


def _short(names: list[str], limit: int = 5) -> str:
    more = f", ... (+{len(names) - limit})" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + more + "]"


def load_backbone_weights(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy the tensors of `path` into `model` by name; return (missing, unexpected) keys.

    Missing: model keys the file lacks (left as they were). Unexpected: file keys the model
    lacks, after dropping classifier tensors and `num_batches_tracked` counters.
    """
    src, fmt = to_backbone_names(read_state_dict(path))
    own = model.state_dict()
    unexpected, ignored, matched = [], 0, {}
    for k, v in src.items():
        if k not in own:
            if _CLASSIFIER.match(k) or k.endswith("num_batches_tracked") or (
                    fmt == "efficientnet-pytorch" and k.startswith("bn1.")):  # head BN
                ignored += 1
            else:
                unexpected.append(k)
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{path}: shape mismatch for {k!r}: file has {tuple(v.shape)}, "
                             f"model expects {tuple(own[k].shape)}")
        matched[k] = v.to(own[k].dtype)
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    model.load_state_dict(matched, strict=False)
    log.info("backbone weights %s (%s): loaded %d tensors, ignored %d classifier/counter tensors, "
             "missing %d %s, unexpected %d %s", path, fmt, len(matched), ignored, len(missing),
             _short(missing), len(unexpected), _short(unexpected))
    return missing, unexpected
