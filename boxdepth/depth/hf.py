"""Monocular depth from a local Hugging Face model (SPEC §4: DPT, Depth Anything, ...).

Any ``AutoModelForDepthEstimation`` with its ``AutoImageProcessor`` is loaded **only**
from a local directory (or the local HF cache when given a repo id already cached):
``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` are set before ``transformers`` is
imported and every ``from_pretrained`` call passes ``local_files_only=True``.
``transformers`` is the optional extra ``boxdepth[depth]``, imported lazily.

The image processor always runs on its PIL/numpy backend (``backend="pil"``, or
``use_fast=False`` before transformers 5): it needs no torchvision and gives the same
result on every machine.

Shapes:
    preprocess(rgb uint8 (H, W, 3))  -> pixel_values float32 (3, h, w), window
        window: None, or (top, left, height, width) of the image inside a canvas the
        processor padded (centred padding, as DPT's ``size_divisor`` and ZoeDepth do).
    predict_inverse_depth(pixel_values (B, 3, h, w), windows [B], sizes [B of (H, W)])
        -> list of B float32 (H_i, W_i) inverse depth (larger = nearer), not normalised:
        ``predicted_depth`` (B, h', w') cropped to the window, resized bilinearly
        (align_corners=False) to the original image size, and inverted (1/d) for models
        whose output is metric depth.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from boxdepth.engine.dist import resolve_device

INSTALL_HINT = "pip install boxdepth[depth]"
NO_DOWNLOAD_HINT = "boxdepth never downloads; put a saved model there with save_pretrained"

# What `predicted_depth` means, by config.model_type. DPT (MiDaS) and relative Depth
# Anything predict relative inverse depth; Depth Pro predicts canonical inverse depth
# (its post-processing takes 1/x). The others predict metric depth (larger = farther),
# which is inverted so that every stored map follows SPEC §0 (larger = nearer).
_INVERSE_OUTPUT_TYPES = ("dpt", "depth_pro")
_METRIC_OUTPUT_TYPES = ("zoedepth", "glpn", "tipsv2_dpt")
_BY_CONFIG_TYPES = ("depth_anything", "prompt_depth_anything")  # depth_estimation_type
_METRIC_EPS = 1e-6


class DepthExtraMissingError(ImportError, ValueError):
    """`transformers` is not installed (also a ValueError so CLIs report it cleanly)."""


def import_transformers():
    """Import `transformers` offline; a missing extra says how to install it."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError as e:
        raise DepthExtraMissingError(
            f"depth generation with a model needs Hugging Face transformers ({e}); "
            f"install it with: {INSTALL_HINT}") from None
    return transformers


def depth_output_kind(config, where: str) -> str:
    """'inverse' or 'metric': what the model's `predicted_depth` holds."""
    model_type = getattr(config, "model_type", None)
    if model_type in _INVERSE_OUTPUT_TYPES:
        return "inverse"
    if model_type in _METRIC_OUTPUT_TYPES:
        return "metric"
    if model_type in _BY_CONFIG_TYPES:
        kind = getattr(config, "depth_estimation_type", "relative")
        return "metric" if kind == "metric" else "inverse"
    known = ", ".join(_INVERSE_OUTPUT_TYPES + _METRIC_OUTPUT_TYPES + _BY_CONFIG_TYPES)
    raise ValueError(f"{where}: depth model type {model_type!r} is not supported by boxdepth "
                     f"(unknown output convention); supported model types: {known}")


def _looks_like_repo_id(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text) is not None


def _check_model_location(model_dir: str) -> str:
    """Fail early and clearly for a path that cannot hold a model; returns the source."""
    path = Path(model_dir).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a depth model: it has no config.json (expected a "
                             f"folder written by save_pretrained)")
        return str(path.resolve())
    if path.exists():
        raise ValueError(f"depth model {path} is a file; expected a model directory")
    if not _looks_like_repo_id(model_dir):
        raise FileNotFoundError(f"no depth model at {path}: the directory does not exist "
                                f"({NO_DOWNLOAD_HINT})")
    return model_dir  # a repo id: only the local HF cache is consulted


def _load_config(transformers, source: str):
    from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError as e:  # not on disk / not in the cache
        raise FileNotFoundError(
            f"no depth model at {source}: not a local directory and not in the local Hugging "
            f"Face cache ({NO_DOWNLOAD_HINT}) [{type(e).__name__}: {e}]") from None
    except (ValueError, KeyError) as e:  # config.json without a known model_type
        raise ValueError(f"{source} is not a depth model: cannot read its config.json "
                         f"({type(e).__name__}: {e})") from None
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES:
        raise ValueError(f"{source} is not a depth model: its config is a {model_type!r} model "
                         f"({type(config).__name__}); expected one of "
                         f"{', '.join(MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES)}")
    return config


def _load_processor(transformers, source: str):
    major = int(transformers.__version__.split(".")[0])
    backend = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    try:
        return transformers.AutoImageProcessor.from_pretrained(
            source, local_files_only=True, **backend)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{source}: cannot load its image processor (save it next to the model "
                         f"with save_pretrained; {type(e).__name__}: {e})") from None


def _load_model(transformers, source: str, config):
    try:
        return transformers.AutoModelForDepthEstimation.from_pretrained(
            source, config=config, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{source}: cannot load the depth model weights "
                         f"({type(e).__name__}: {e})") from None


class HFDepthModel:
    """A loaded depth model + processor on one device; see the module docstring."""

    def __init__(self, *, model, processor, device: torch.device, source: str,
                 model_type: str, output_kind: str):
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = device
        self.source = source
        self.model_type = model_type
        self.output_kind = output_kind

    def _process(self, rgb: np.ndarray, **overrides) -> torch.Tensor:
        out = self.processor(images=rgb, return_tensors="pt", input_data_format="channels_last",
                             **overrides)
        return out["pixel_values"][0].float()

    def preprocess(self, rgb: np.ndarray) -> tuple[torch.Tensor, tuple | None]:
        pixel_values = self._process(rgb)
        if not getattr(self.processor, "do_pad", False):
            return pixel_values, None
        # The processor pads its resized image (centred); learn the unpadded size so the
        # border the model sees is cropped out of its prediction again.
        h, w = self._process(rgb, do_pad=False).shape[-2:]
        hp, wp = pixel_values.shape[-2:]
        return pixel_values, ((hp - h) // 2, (wp - w) // 2, h, w)

    @torch.inference_mode()
    def predict_inverse_depth(self, pixel_values: torch.Tensor, windows: list,
                              sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        pred = self.model(pixel_values=pixel_values.to(self.device)).predicted_depth
        if pred.dim() == 4:  # (B, 1, h', w') from some heads
            pred = pred[:, 0]
        in_h, in_w = pixel_values.shape[-2:]
        maps = []
        for k, (height, width) in enumerate(sizes):
            p = _crop_window(pred[k].float(), windows[k], in_h, in_w)
            p = F.interpolate(p[None, None], size=(height, width), mode="bilinear",
                              align_corners=False)[0, 0]
            if self.output_kind == "metric":
                p = 1.0 / p.clamp(min=_METRIC_EPS)
            maps.append(p.cpu().numpy().astype(np.float32))
        return maps


def _crop_window(pred: torch.Tensor, window, in_h: int, in_w: int) -> torch.Tensor:
    """Crop an (h', w') prediction to the input-canvas window (top, left, h, w)."""
    if window is None:
        return pred
    top, left, h, w = window
    sy, sx = pred.shape[0] / in_h, pred.shape[1] / in_w
    y0, x0 = int(round(top * sy)), int(round(left * sx))
    y1, x1 = max(int(round((top + h) * sy)), y0 + 1), max(int(round((left + w) * sx)), x0 + 1)
    return pred[y0:y1, x0:x1]


def load_depth_model(model_dir: str | Path, device: str = "auto") -> HFDepthModel:
    """Load a depth model + image processor from `model_dir` without any download."""
    source = _check_model_location(str(model_dir))
    dev = resolve_device(device)
    transformers = import_transformers()
    from transformers.utils import logging as hf_logging

    config = _load_config(transformers, source)
    output_kind = depth_output_kind(config, source)
    processor = _load_processor(transformers, source)
    bars_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bar is noise here
    try:
        model = _load_model(transformers, source, config)
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
    return HFDepthModel(model=model, processor=processor, device=dev,
                        source=source, model_type=config.model_type, output_kind=output_kind)
