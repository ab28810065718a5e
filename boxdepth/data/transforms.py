"""Geometric augmentation and batching (SPEC §5).

A *sample* is a dict; every transform maps a sample to a sample and moves all of its
spatial entries together:
    image         uint8   (3, H, W)   RGB, 0..255 (no mean/std: the model normalises)
    boxes         float32 (N, 4)      absolute XYXY in `image` pixels
    ignore_boxes  float32 (M, 4)      crowd boxes, same frame (never targets)
    depth         float32 (1, H, W)   pseudo depth d01 in [0, 1], or None
    masks         uint8   (N, H, W)   {0, 1}, only in mask mode (key absent otherwise)
    flipped       bool                toggled by every horizontal flip
Other keys pass through untouched, among them `original` (uint8 (3, H0, W0), the decoded
image the distillation teacher reads; see data/coco.py's keep_original), which stays
un-resized and un-flipped: `flipped` tells how to mirror it.

Resizing: image and depth by bilinear interpolation (antialiased when shrinking, never
nearest: depth must stay smooth for the pairwise depth terms), masks by nearest-exact
(pixel centres), boxes by the same x/y scale factors. Flip: x -> W - x, so a box becomes
x1' = W - x2, x2' = W - x1.

Randomness comes from the `generator` given to a transform (a ``torch.Generator``), or,
when None, from torch's global RNG, which ``torch.utils.data.DataLoader`` seeds
differently in each worker.

`collate_batch` pads a list of samples to a common canvas whose sides are multiples of
`size_divisibility`:
    images      uint8   (B, 3, Hp, Wp)  zero padded bottom/right
    image_mask  bool    (B, Hp, Wp)     True on real pixels
    depth       float32 (B, 1, Hp, Wp)  zero padded (zeros for samples without depth),
                                        or None when no sample has depth
    has_depth   bool    (B,)
    targets     list of B dicts: boxes, labels, ignore_boxes, masks (padded to Hp, Wp,
                only when present), image_id, file_name, orig_size, size, flipped,
                has_depth
    skipped     list[str]  files skipped by `skip_bad_images` while drawing this batch
    originals   list of B uint8 (3, H0, W0), each sample's `original` (not padded: the
                teacher resizes each one itself), or None when the samples have none
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

Sample = dict


def shortest_edge_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side `short` and the long side at most `max_size`
    (detectron2's ``ResizeShortestEdge.get_output_shape``)."""
    scale = short / min(h, w)
    new_h, new_w = h * scale, w * scale
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def _bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize every spatial entry of `sample` to `size` = (new_h, new_w)."""
    image = sample["image"]
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return sample
    out = dict(sample)
    resized = _bilinear(image.float(), size)
    out["image"] = resized.round_().clamp_(0, 255).to(torch.uint8)
    if sample.get("depth") is not None:
        out["depth"] = _bilinear(sample["depth"].float(), size).clamp_(0.0, 1.0)
    if sample.get("masks") is not None:
        masks = sample["masks"]
        if masks.shape[0] == 0:
            out["masks"] = masks.new_zeros((0, *size))
        else:
            out["masks"] = F.interpolate(masks[None], size=size, mode="nearest-exact")[0]
    scale = torch.tensor([size[1] / w, size[0] / h, size[1] / w, size[0] / h])
    for key in ("boxes", "ignore_boxes"):
        if key in sample:
            out[key] = sample[key] * scale
    return out


def hflip_sample(sample: Sample) -> Sample:
    """Mirror every spatial entry of `sample` left-right."""
    out = dict(sample)
    width = sample["image"].shape[-1]
    out["image"] = sample["image"].flip(-1)
    for key in ("depth", "masks"):
        if sample.get(key) is not None:
            out[key] = sample[key].flip(-1)
    for key in ("boxes", "ignore_boxes"):
        if key in sample:
            b = sample[key]
            out[key] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
    out["flipped"] = not bool(sample.get("flipped", False))
    return out


class ResizeShortestEdge:
    """Resize so the short side is drawn from `short_sizes` and the long side is at most
    `max_size`. ``sample="choice"``: one of `short_sizes`; ``"range"``: an integer in
    [min(short_sizes), max(short_sizes)]."""

    def __init__(self, short_sizes: int | Sequence[int], max_size: int, *,
                 sample: str = "choice", generator: torch.Generator | None = None):
        sizes = [int(short_sizes)] if isinstance(short_sizes, (int, float)) else \
            [int(s) for s in short_sizes]
        if not sizes or min(sizes) <= 0:
            raise ValueError(f"short_sizes must be positive, got {short_sizes!r}")
        if sample not in ("choice", "range"):
            raise ValueError(f"sample must be 'choice' or 'range', got {sample!r}")
        self.short_sizes, self.max_size = sizes, int(max_size)
        self.sample, self.generator = sample, generator

    def draw_short_size(self) -> int:
        if self.sample == "range":
            lo, hi = min(self.short_sizes), max(self.short_sizes)
            return int(torch.randint(lo, hi + 1, (1,), generator=self.generator))
        idx = int(torch.randint(len(self.short_sizes), (1,), generator=self.generator))
        return self.short_sizes[idx]

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        short = self.draw_short_size() if len(self.short_sizes) > 1 else self.short_sizes[0]
        return resize_sample(sample, shortest_edge_shape(h, w, short, self.max_size))

    def __repr__(self) -> str:
        return (f"ResizeShortestEdge(short_sizes={self.short_sizes}, "
                f"max_size={self.max_size}, sample={self.sample!r})")


class RandomHorizontalFlip:
    """Flip with probability `p`."""

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p, self.generator = float(p), generator

    def __call__(self, sample: Sample) -> Sample:
        if self.p > 0 and float(torch.rand(1, generator=self.generator)) < self.p:
            return hflip_sample(sample)
        return sample

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    def __init__(self, transforms: Iterable[Callable[[Sample], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.transforms))})"


class TrainTransform(Compose):
    """Multi-scale shortest-edge resize then random horizontal flip (SPEC §5)."""

    def __init__(self, min_sizes: Sequence[int] = (640, 672, 704, 736, 768, 800),
                 max_size: int = 1333, flip_prob: float = 0.5, *, sample: str = "choice",
                 generator: torch.Generator | None = None):
        super().__init__([ResizeShortestEdge(min_sizes, max_size, sample=sample,
                                             generator=generator),
                          RandomHorizontalFlip(flip_prob, generator=generator)])


class TestTransform(Compose):
    """Deterministic shortest-edge resize (SPEC §5: 800 / 1333)."""

    __test__ = False  # not a pytest class

    def __init__(self, min_size: int = 800, max_size: int = 1333):
        super().__init__([ResizeShortestEdge([int(min_size)], max_size)])


def _padded_size(sizes: list[tuple[int, int]], divisibility: int) -> tuple[int, int]:
    hp, wp = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if divisibility > 1:
        hp = int(math.ceil(hp / divisibility) * divisibility)
        wp = int(math.ceil(wp / divisibility) * divisibility)
    return hp, wp


_TARGET_KEYS = ("boxes", "labels", "ignore_boxes", "image_id", "file_name", "orig_size",
                "size", "flipped", "has_depth")


def collate_batch(samples: Sequence[Sample], size_divisibility: int = 32) -> dict:
    """Pad samples (dataset outputs) into one batch; see the module docstring."""
    if len(samples) == 0:
        raise ValueError("collate_batch got an empty list of samples")
    sizes = [tuple(s["image"].shape[-2:]) for s in samples]
    hp, wp = _padded_size(sizes, int(size_divisibility))
    b = len(samples)
    images = torch.zeros((b, 3, hp, wp), dtype=torch.uint8)
    image_mask = torch.zeros((b, hp, wp), dtype=torch.bool)
    any_depth = any(s.get("depth") is not None for s in samples)
    depth = torch.zeros((b, 1, hp, wp), dtype=torch.float32) if any_depth else None
    targets, skipped = [], []
    for i, (s, (h, w)) in enumerate(zip(samples, sizes)):
        images[i, :, :h, :w] = s["image"]
        image_mask[i, :h, :w] = True
        if depth is not None and s.get("depth") is not None:
            depth[i, :, :h, :w] = s["depth"]
        t = {k: s[k] for k in _TARGET_KEYS if k in s}
        if s.get("masks") is not None:
            m = s["masks"]
            t["masks"] = m.new_zeros((m.shape[0], hp, wp))
            t["masks"][:, :h, :w] = m
        targets.append(t)
        skipped += list(s.get("skipped", ()))
    has_depth = torch.tensor([bool(s.get("has_depth", False)) for s in samples])
    return {"images": images, "image_mask": image_mask, "depth": depth,
            "has_depth": has_depth, "targets": targets, "skipped": skipped,
            "originals": _originals(samples)}


def _originals(samples: Sequence[Sample]) -> list[torch.Tensor] | None:
    have = [s.get("original") is not None for s in samples]
    if not any(have):
        return None
    if not all(have):
        # a partial list would pair the teacher's images with the wrong students
        raise ValueError(f"collate_batch: {sum(have)} of {len(samples)} samples carry an "
                         "'original' image; either all or none must")
    return [s["original"] for s in samples]
