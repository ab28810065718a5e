"""COCO json -> box-supervised training samples (SPEC §5).

Training reads only ``bbox``, ``category_id`` and ``iscrowd`` of each annotation; in box
mode ``segmentation`` is never looked at (it may be absent or anything at all). Mask
mode (fully supervised CondInst, the upper bound) decodes ``segmentation`` with
``boxdepth.data.rle.segmentation_to_mask``.

Construction validates the whole json and fails with a message naming the json file,
the image or annotation id and the problem: unknown ``category_id``, malformed ``bbox``,
a ``file_name`` that is absolute or leaves the image root, duplicate ids. Boxes are
converted XYWH -> XYXY, clipped to the image; boxes entirely outside the image or with
a clipped side shorter than `min_box_size` are dropped and crowd boxes are kept out of
the targets (as `ignore_boxes`). All of that is counted in one summary line per dataset
(``dataset.summary_line``, logged on the "boxdepth" logger; ``dataset.summary`` is the
dict, ``dataset.dropped`` lists each dropped box).

Category ids map to contiguous labels 0..K-1 in increasing id order: ``cat_ids[k]`` is
the COCO id of label k, ``cat_id_to_contiguous[id]`` the label of a COCO id.

Images (and depth maps) are read lazily in ``__getitem__``. With ``skip_bad_images``,
a missing or undecodable image (or one whose size differs from the json) is recorded in
this process's ``num_skipped`` and ``__getitem__`` returns the next good image instead
(index + 1, wrapping), so a DataLoader never sees a hole; the sample's ``skipped`` lists
the files passed over, so a training loop can count skips made inside worker processes.
``read_image(i)`` followed by ``build_sample(i, image)`` loads exactly image i and never
skips (`inspect_dataset` calls the two).

``keep_original=True`` (set by the trainer only when self-distillation is on) adds the
decoded image before `transforms` as ``original``: the EMA teacher reads it at its own
scale (SPEC §3) instead of up-sampling the student's resized copy. Off by default so
that other runs do not hold a second image per sample.

``__getitem__(i)`` returns a dict:
    image         uint8   (3, H, W)  RGB after `transforms`
    boxes         float32 (N, 4)     XYXY, absolute pixels of the transformed image
    labels        int64   (N,)       contiguous labels
    ignore_boxes  float32 (M, 4)     crowd boxes, same frame
    masks         uint8   (N, H, W)  mask mode only (key absent in box mode)
    depth         float32 (1, H, W)  pseudo depth in [0, 1]; zeros if missing and allowed;
                                     None when the dataset has no depth_root
    has_depth     bool
    image_id      int                COCO id (0 is a valid id)
    file_name     str                as in the json (normalised to '/' separators)
    orig_size     (H0, W0)           decoded image size, equal to the json's height/width
    size          (H, W)             after transforms
    flipped       bool
    skipped       list[str]          image files skipped to produce this sample
    original      uint8   (3, H0, W0) keep_original only: the decoded image before
                                     `transforms` (never resized nor flipped; `flipped`
                                     says how the student's copy was mirrored)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from boxdepth.data.coco_records import (CocoFormatError, PackedList, parse_coco,
                                        read_coco_json)
from boxdepth.data.depth_io import depth_path_for, load_depth_png
from boxdepth.data.image_io import BadImageError, load_image_rgb
from boxdepth.data.rle import segmentation_to_mask

logger = logging.getLogger("boxdepth")

__all__ = ["CocoBoxDataset", "CocoFormatError", "ImageSizeMismatchError",
           "DepthSizeMismatchError"]


class ImageSizeMismatchError(BadImageError):
    """The decoded image is not the size the json declares (boxes would be misplaced)."""


class DepthSizeMismatchError(ValueError):
    """A depth map is not the size of its image."""


class CocoBoxDataset(torch.utils.data.Dataset):
    """Box (or mask) supervision from a COCO json; see the module docstring."""

    def __init__(self, json_path: str | Path, image_root: str | Path, *,
                 depth_root: str | Path | None = None,
                 transforms: Callable[[dict], dict] | None = None, mode: str = "box",
                 skip_bad_images: bool = False, allow_missing_depth: bool = False,
                 min_box_size: float = 1.0, keep_original: bool = False):
        if mode not in ("box", "mask"):
            raise ValueError(f"mode must be 'box' or 'mask', got {mode!r}")
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        self.depth_root = Path(depth_root) if depth_root is not None else None
        self.transforms, self.mode = transforms, mode
        self.skip_bad_images = bool(skip_bad_images)
        self.allow_missing_depth = bool(allow_missing_depth)
        self.min_box_size = float(min_box_size)
        self.keep_original = bool(keep_original)
        parsed = parse_coco(read_coco_json(self.json_path), where=str(self.json_path),
                            mode=mode, min_box_size=self.min_box_size)
        self.cat_ids: list[int] = parsed.cat_ids
        self.class_names: list[str] = parsed.class_names
        self.cat_id_to_contiguous = {c: i for i, c in enumerate(self.cat_ids)}
        self.summary: dict = parsed.summary
        self.dropped: list[dict] = parsed.dropped
        self._records = PackedList(parsed.records)
        self._bad: dict[int, str] = {}
        logger.info(self.summary_line)

    # ---- metadata -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def num_skipped(self) -> int:
        """Images skipped so far by `skip_bad_images` in this process."""
        return len(self._bad)

    @property
    def skipped_images(self) -> dict[int, str]:
        """index -> reason, for the images skipped so far in this process."""
        return dict(self._bad)

    @property
    def summary_line(self) -> str:
        s = self.summary
        line = (f"{self.json_path.name}: {s['images']} images, {s['boxes_kept']} boxes kept; "
                f"dropped {s['dropped_degenerate']} degenerate, {s['dropped_outside']} "
                f"outside image; ignored {s['ignored_crowd']} crowd")
        if s["images_without_boxes"]:
            line += f"; {s['images_without_boxes']} images without boxes"
        return line

    def __len__(self) -> int:
        return len(self._records)

    def get_record(self, index: int) -> dict:
        """Parsed json entry of image `index`: image_id, file_name, height, width,
        boxes (N,4 XYXY clipped), labels, ann_ids, ignore_boxes (+ segmentations)."""
        return self._records[index]

    def image_path(self, index: int) -> Path:
        return self.image_root / self.get_record(index)["file_name"]

    def depth_path(self, index: int) -> Path | None:
        if self.depth_root is None:
            return None
        return depth_path_for(self.depth_root, self.get_record(index)["file_name"])

    # ---- loading --------------------------------------------------------------------
    def _read_image(self, rec: dict) -> np.ndarray:
        path = self.image_root / rec["file_name"]
        arr = load_image_rgb(path)
        if arr.shape[:2] != (rec["height"], rec["width"]):
            raise ImageSizeMismatchError(
                f"image {path} is {arr.shape[1]}x{arr.shape[0]} (WxH, after EXIF "
                f"orientation) but {self.json_path} says {rec['width']}x{rec['height']} "
                f"for image id {rec['image_id']}")
        return arr

    def _read_depth(self, rec: dict) -> tuple[torch.Tensor | None, bool]:
        if self.depth_root is None:
            return None, False
        image_path = self.image_root / rec["file_name"]
        path = depth_path_for(self.depth_root, rec["file_name"])
        if not path.is_file():
            if self.allow_missing_depth:
                return torch.zeros((1, rec["height"], rec["width"])), False
            raise FileNotFoundError(
                f"no depth map for image {image_path} (image id {rec['image_id']}): {path} "
                f"not found (set data.allow_missing_depth to train without it)")
        d = load_depth_png(path)
        if d.shape != (rec["height"], rec["width"]):
            raise DepthSizeMismatchError(
                f"depth map {path} is {d.shape[1]}x{d.shape[0]} (WxH) but its image "
                f"{image_path} is {rec['width']}x{rec['height']}")
        return torch.from_numpy(d)[None], True

    def _read_masks(self, rec: dict) -> torch.Tensor:
        h, w = rec["height"], rec["width"]
        masks = np.zeros((len(rec["ann_ids"]), h, w), np.uint8)
        for k, (ann_id, seg) in enumerate(zip(rec["ann_ids"], rec["segmentations"])):
            try:
                masks[k] = segmentation_to_mask(seg, h, w)
            except Exception as e:
                raise CocoFormatError(f"{self.json_path}: annotation {ann_id}: cannot decode "
                                      f"segmentation: {e}") from None
        return torch.from_numpy(masks)

    def read_image(self, index: int) -> np.ndarray:
        """Decoded image `index`, uint8 (H0, W0, 3); errors name the file."""
        return self._read_image(self.get_record(index))

    def build_sample(self, index: int, image: np.ndarray) -> dict:
        """Sample of image `index` from its decoded `image` (depth, masks, transforms)."""
        rec = self.get_record(index)
        depth, has_depth = self._read_depth(rec)
        decoded = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        sample = {"image": decoded,
                  "boxes": torch.from_numpy(rec["boxes"]),
                  "labels": torch.from_numpy(rec["labels"]),
                  "ignore_boxes": torch.from_numpy(rec["ignore_boxes"]),
                  "depth": depth, "flipped": False}
        if self.mode == "mask":
            sample["masks"] = self._read_masks(rec)
        if self.transforms is not None:
            sample = self.transforms(sample)
        if self.keep_original:
            # transforms never write into their input, so `decoded` is still the decoded image
            sample["original"] = decoded
        sample.update(has_depth=has_depth, image_id=rec["image_id"],
                      file_name=rec["file_name"], orig_size=(rec["height"], rec["width"]),
                      size=tuple(int(s) for s in sample["image"].shape[-2:]), skipped=[])
        return sample

    def _normalise_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        return index % n

    def __getitem__(self, index: int) -> dict:
        index = self._normalise_index(int(index))
        skipped: list[str] = []
        for k in range(len(self)):
            j = (index + k) % len(self)
            if j in self._bad:
                continue
            try:
                image = self._read_image(self.get_record(j))
            except (FileNotFoundError, BadImageError) as e:
                if not self.skip_bad_images:
                    raise
                self._bad[j] = str(e)
                skipped.append(str(self.image_path(j)))
                logger.warning("skipping image (%d skipped so far): %s", len(self._bad), e)
                continue
            sample = self.build_sample(j, image)
            sample["skipped"] = skipped
            return sample
        raise RuntimeError(f"{self.json_path}: all {len(self)} images are missing or "
                           f"unreadable under {self.image_root}")
