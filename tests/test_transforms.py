"""Resize / flip / collate: image, boxes, depth and masks must stay aligned."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from boxdepth.data.transforms import (Compose, RandomHorizontalFlip, ResizeShortestEdge,
                                      TrainTransform, collate_batch, hflip_sample,
                                      resize_sample, shortest_edge_shape)


def square_sample(h=30, w=50, box=(10, 6, 24, 18)):
    """Image with a bright square equal to `box` (XYXY); depth and mask hold the same
    square."""
    x1, y1, x2, y2 = box
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    image[:, y1:y2, x1:x2] = 255
    depth = torch.zeros((1, h, w))
    depth[:, y1:y2, x1:x2] = 1.0
    masks = torch.zeros((1, h, w), dtype=torch.uint8)
    masks[:, y1:y2, x1:x2] = 1
    return {"image": image, "depth": depth, "masks": masks,
            "boxes": torch.tensor([box], dtype=torch.float32),
            "ignore_boxes": torch.zeros((0, 4)), "labels": torch.tensor([3]),
            "flipped": False}


def extent(mask2d: torch.Tensor) -> list[int]:
    """[x1, y1, x2, y2] (pixel edges) of the True region."""
    ys, xs = np.nonzero(mask2d.numpy())
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("h, w, short, max_size, expected", [
    (480, 640, 800, 1333, (800, 1067)),
    (640, 480, 800, 1333, (1067, 800)),
    (100, 1000, 800, 1333, (133, 1333)),   # long side capped
    (800, 800, 640, 1333, (640, 640)),
])
def test_shortest_edge_shape(h, w, short, max_size, expected):
    assert shortest_edge_shape(h, w, short, max_size) == expected


def test_resize_and_flip_keep_image_boxes_depth_masks_aligned():
    gen = torch.Generator().manual_seed(0)
    t = TrainTransform([60], 1000, flip_prob=1.0, generator=gen)
    out = t(square_sample())
    # scale 2: box (10,6,24,18) -> (20,12,48,36); flip in width 100 -> (52,12,80,36)
    assert out["image"].shape == (3, 60, 100) and out["flipped"] is True
    assert out["boxes"].tolist() == [[52.0, 12.0, 80.0, 36.0]]
    assert extent(out["image"][0] > 127) == [52, 12, 80, 36]
    assert extent(out["depth"][0] > 0.5) == [52, 12, 80, 36]
    assert extent(out["masks"][0] > 0) == [52, 12, 80, 36]
    assert out["labels"].tolist() == [3]
    assert out["depth"].dtype == torch.float32 and out["masks"].dtype == torch.uint8


def test_downscale_keeps_alignment():
    out = resize_sample(square_sample(h=40, w=80, box=(8, 4, 40, 24)), (20, 40))
    assert out["boxes"].tolist() == [[4.0, 2.0, 20.0, 12.0]]
    for plane in (out["image"][0] > 127, out["depth"][0] > 0.5, out["masks"][0] > 0):
        assert extent(plane) == [4, 2, 20, 12]


def test_depth_resize_is_bilinear_not_nearest():
    sample = {"image": torch.zeros((3, 2, 2), dtype=torch.uint8),
              "depth": torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), "boxes": torch.zeros((0, 4))}
    out = resize_sample(sample, (2, 8))
    # align_corners=False: source x = (x' + 0.5) / 4 - 0.5, clamped to [0, 1]
    expected = [0.0, 0.0, 0.125, 0.375, 0.625, 0.875, 1.0, 1.0]
    np.testing.assert_allclose(out["depth"][0, 0].numpy(), expected, atol=1e-6)


def test_hflip_boxes_and_involution():
    s = {"image": torch.arange(30, dtype=torch.uint8).reshape(1, 3, 10).expand(3, 3, 10),
         "boxes": torch.tensor([[1.0, 2.0, 4.0, 6.0]]),
         "ignore_boxes": torch.tensor([[0.0, 0.0, 10.0, 1.0]]),
         "depth": None, "flipped": False}
    f = hflip_sample(s)
    assert f["boxes"].tolist() == [[6.0, 2.0, 9.0, 6.0]]
    assert f["ignore_boxes"].tolist() == [[0.0, 0.0, 10.0, 1.0]]
    assert f["image"][0, 0, 0].item() == 9 and f["flipped"] is True and f["depth"] is None
    ff = hflip_sample(f)
    assert torch.equal(ff["image"], s["image"]) and torch.equal(ff["boxes"], s["boxes"])
    assert ff["flipped"] is False


def test_random_draws_follow_the_generator():
    sizes = (20, 24, 28)

    def draws(seed):
        t = ResizeShortestEdge(sizes, 1000, generator=torch.Generator().manual_seed(seed))
        return [t(square_sample())["image"].shape[1] for _ in range(30)]

    a = draws(1)
    assert a == draws(1) and set(a) == set(sizes)
    r = ResizeShortestEdge((20, 28), 1000, sample="range",
                           generator=torch.Generator().manual_seed(0))
    shorts = {r(square_sample())["image"].shape[1] for _ in range(60)}
    assert shorts <= set(range(20, 29)) and len(shorts) > 3
    flips = [RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(s))(
        square_sample())["flipped"] for s in range(40)]
    assert 5 < sum(flips) < 35
    assert RandomHorizontalFlip(0.0)(square_sample())["flipped"] is False


def test_compose_applies_in_order():
    t = Compose([lambda s: dict(s, trace=s.get("trace", "") + "a"),
                 lambda s: dict(s, trace=s["trace"] + "b")])
    assert t({})["trace"] == "ab"


def _sample(h, w, depth, fill):
    s = square_sample(h, w, box=(1, 1, 5, 5))
    s["image"][:] = fill
    s["depth"] = torch.full((1, h, w), 0.25) if depth else None
    s.update(has_depth=depth, image_id=fill, size=(h, w), orig_size=(h, w),
             file_name=f"{fill}.png", skipped=[f"bad{fill}.png"] if fill == 2 else [])
    return s


def test_collate_pads_to_multiple_of_32_with_mask():
    batch = collate_batch([_sample(50, 70, True, 1), _sample(65, 33, False, 2)])
    assert batch["images"].shape == (2, 3, 96, 96) and batch["images"].dtype == torch.uint8
    m = batch["image_mask"]
    assert m.dtype == torch.bool and m.shape == (2, 96, 96)
    assert int(m[0].sum()) == 50 * 70 and int(m[1].sum()) == 65 * 33
    assert m[0, :50, :70].all() and m[1, :65, :33].all()
    assert (batch["images"][0][:, ~m[0]] == 0).all() and (batch["images"][0][:, m[0]] == 1).all()
    assert (batch["images"][1][:, m[1]] == 2).all()
    d = batch["depth"]
    assert d.shape == (2, 1, 96, 96) and d.dtype == torch.float32
    assert torch.allclose(d[0, 0][m[0]], torch.tensor(0.25)) and d[0, 0][~m[0]].abs().sum() == 0
    assert d[1].abs().sum() == 0
    assert batch["has_depth"].tolist() == [True, False]
    t1 = batch["targets"][1]
    assert t1["masks"].shape == (1, 96, 96) and int(t1["masks"].sum()) == 16
    assert t1["image_id"] == 2 and t1["size"] == (65, 33) and t1["labels"].tolist() == [3]
    assert batch["skipped"] == ["bad2.png"]


def test_collate_without_depth_and_without_divisibility():
    batch = collate_batch([_sample(50, 70, False, 1), _sample(65, 33, False, 3)],
                          size_divisibility=0)
    assert batch["images"].shape == (2, 3, 65, 70) and batch["depth"] is None
    assert batch["has_depth"].tolist() == [False, False]
    with pytest.raises(ValueError):
        collate_batch([])


def test_collate_keeps_originals_unpadded_all_or_none():
    a, b = _sample(50, 70, False, 1), _sample(65, 33, False, 2)
    assert collate_batch([a, b])["originals"] is None
    a["original"] = torch.ones(3, 100, 140, dtype=torch.uint8)
    b["original"] = torch.zeros(3, 9, 5, dtype=torch.uint8)
    # the transforms move an `original` along untouched (resized and flipped samples keep it)
    moved = TrainTransform([20], 64, flip_prob=1.0)(a)
    assert moved["original"] is a["original"] and moved["flipped"] is True
    originals = collate_batch([moved, b])["originals"]
    assert originals[0] is a["original"] and originals[1] is b["original"]
    with pytest.raises(ValueError, match="either all or none"):
        collate_batch([a, _sample(65, 33, False, 3)])
