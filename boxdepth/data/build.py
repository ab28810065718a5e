"""Datasets from a config (cfg.data.*, cfg.input.*, cfg.loss.mode; see
``boxdepth/configs/defaults.yaml``). This is the only place in the data package that
reads a config object; the modules it calls take explicit keyword arguments.

split "train": data.train_json, data.image_root, data.depth_root.
split "val":   data.val_json, data.val_image_root (else image_root),
               data.val_depth_root (else depth_root).
is_train=True:  multi-scale resize + flip (input.min_size_train, max_size_train,
                flip_prob); loss.mode decides box or mask supervision.
is_train=False: fixed resize (input.min_size_test, max_size_test), box mode (evaluation
                reads the ground-truth masks from the json itself).
keep_original:  each sample also carries its decoded image (CocoBoxDataset's
                keep_original), for the self-distillation teacher.
A training set (is_train=True) without a single box is an error.
Relative paths are used as given (relative to the working directory).
"""
from __future__ import annotations

import torch

from boxdepth.data.coco import CocoBoxDataset
from boxdepth.data.transforms import TestTransform, TrainTransform


def _split_paths(data, split: str) -> tuple[str, str, str | None]:
    if split == "train":
        json_path, image_root, depth_root = data.train_json, data.image_root, data.depth_root
        keys = ("data.train_json", "data.image_root")
    elif split == "val":
        json_path = data.val_json
        image_root = data.val_image_root or data.image_root
        depth_root = data.val_depth_root or data.depth_root
        keys = ("data.val_json", "data.val_image_root or data.image_root")
    else:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    for key, value in zip(keys, (json_path, image_root)):
        if not value:
            raise ValueError(f"config key {key} is not set; needed for the {split} split")
    return json_path, image_root, depth_root


def build_transforms(cfg, is_train: bool, generator: torch.Generator | None = None):
    inp = cfg.input
    if is_train:
        return TrainTransform(inp.min_size_train, inp.max_size_train, inp.flip_prob,
                              generator=generator)
    return TestTransform(inp.min_size_test, inp.max_size_test)


def build_dataset(cfg, split: str = "train", is_train: bool = True, *,
                  generator: torch.Generator | None = None,
                  keep_original: bool = False) -> CocoBoxDataset:
    """`generator` drives the random transforms (None: torch's global RNG)."""
    json_path, image_root, depth_root = _split_paths(cfg.data, split)
    mode = cfg.loss.mode if is_train else "box"
    dataset = CocoBoxDataset(json_path, image_root, depth_root=depth_root,
                             transforms=build_transforms(cfg, is_train, generator), mode=mode,
                             skip_bad_images=cfg.data.skip_bad_images,
                             allow_missing_depth=cfg.data.allow_missing_depth,
                             min_box_size=cfg.data.min_box_size, keep_original=keep_original)
    if is_train and dataset.summary["boxes_kept"] == 0:
        # caught here, not by the health check some iterations into a run that learns nothing
        raise ValueError(f"{json_path}: no box to train on ({dataset.summary_line}); "
                         f"check it with `boxdepth inspect`")
    return dataset
