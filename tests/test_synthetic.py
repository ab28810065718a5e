"""Tests of the embedded synthetic RGB-D dataset (boxdepth.data.synthetic)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from boxdepth.data.depth_io import load_depth_png, normalize_inverse_depth, read_depth_meta
from boxdepth.data.rle import segmentation_to_mask
from boxdepth.data.synthetic import (MIN_VISIBLE_AREA, format_summary,
                                     generate_synthetic_dataset, pseudo_depth,
                                     synthesize_image)

SIZE = (96, 64)
ARGS = dict(n_train=6, n_val=4, size=SIZE, seed=3, progress=False)


def _tight_box(mask: np.ndarray) -> list[float]:
    """Independent of rle.mask_to_xywh: first/last occupied row and column."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
            float(rows[-1] - rows[0] + 1)]


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    summary = generate_synthetic_dataset(out, **ARGS)
    return out, summary


def test_files_written(dataset):
    out, summary = dataset
    for split, n in (("train", 6), ("val", 4)):
        coco = json.loads((out / f"{split}.json").read_text())
        assert [im["id"] for im in coco["images"]] == list(range(1, n + 1))
        for im in coco["images"]:
            assert im["file_name"] == f"{split}/{im['id'] - 1:06d}.png"
            with Image.open(out / "images" / im["file_name"]) as rgb:
                assert rgb.mode == "RGB" and rgb.size == SIZE
            for root in ("depth", "depth_gt"):
                assert (out / root / im["file_name"]).is_file()
        assert summary["splits"][split]["images"] == n
        assert summary["splits"][split]["instances"] == len(coco["annotations"])
    for name in ("preview.png", "summary.json", "README.txt", "depth/meta.json",
                 "depth_gt/meta.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["knobs"]["seed"] == 3
    assert "camouflage 0.3" in format_summary(summary)


def test_val_json_loads_in_pycocotools_and_boxes_are_tight(dataset):
    from pycocotools.coco import COCO
    out, _ = dataset
    coco = COCO(str(out / "val.json"))
    assert len(coco.getCatIds()) >= 3
    n = 0
    for ann in coco.dataset["annotations"]:
        mask = coco.annToMask(ann)
        assert mask.shape == (SIZE[1], SIZE[0])
        assert ann["area"] == mask.sum() >= MIN_VISIBLE_AREA
        assert ann["bbox"] == _tight_box(mask)
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        n += 1
    assert n > 0
    # instances of one image never overlap: the masks come from a z-buffer
    for img_id in coco.getImgIds():
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))]
        if masks:
            assert np.sum(masks, axis=0).max() == 1


def test_train_json_is_box_only_and_matches_regenerated_masks(dataset):
    from pycocotools.coco import COCO
    out, _ = dataset
    coco = COCO(str(out / "train.json"))
    anns = coco.dataset["annotations"]
    assert anns and all("segmentation" not in a for a in anns)
    for im in coco.dataset["images"]:
        scene = synthesize_image(3, 0, im["id"] - 1, size=SIZE)
        written = np.asarray(Image.open(out / "images" / im["file_name"]))
        np.testing.assert_array_equal(written, scene["image"])  # same scene as on disk
        img_anns = coco.loadAnns(coco.getAnnIds(imgIds=im["id"]))
        assert len(img_anns) == len(scene["objects"])
        for k, ann in enumerate(img_anns):
            mask = scene["labels"] == k
            assert mask.sum() >= MIN_VISIBLE_AREA
            assert ann["bbox"] == _tight_box(mask)
            assert ann["category_id"] == scene["objects"][k]["category_id"]
            assert ann["area"] == ann["bbox"][2] * ann["bbox"][3]
        # no unannotated object pixels: every labelled pixel belongs to an annotation
        assert scene["labels"].max() == len(img_anns) - 1


def test_same_seed_is_byte_identical_other_seed_differs(dataset, tmp_path):
    out, _ = dataset
    generate_synthetic_dataset(tmp_path / "b", **ARGS)
    first, second = _all_files(out), _all_files(tmp_path / "b")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    generate_synthetic_dataset(tmp_path / "c", **{**ARGS, "seed": 4, "n_val": 0})
    other = _all_files(tmp_path / "c")
    assert other["images/train/000000.png"] != first["images/train/000000.png"]


def test_depth_maps(dataset):
    out, _ = dataset
    meta = read_depth_meta(out / "depth")
    assert meta["inverse_depth"] is True and meta["source"] == "synthetic-pseudo"
    assert meta["depth_error"] == 1.0
    gt_meta = json.loads((out / "depth_gt" / "meta.json").read_text())
    assert gt_meta["inverse_depth"] is False and gt_meta["units"] == "mm"
    for name in ("train/000000.png", "val/000001.png"):
        raw = np.asarray(Image.open(out / "depth" / name))
        gt = np.asarray(Image.open(out / "depth_gt" / name))
        assert raw.dtype == np.uint16 and gt.dtype == np.uint16 and raw.shape == gt.shape
        assert 100 < gt.min() and gt.max() < 60000   # millimetres of a room
        d01 = load_depth_png(out / "depth" / name)
        # pseudo depth is inverse depth: it ranks pixels roughly like 1 / GT depth
        rank = lambda a: np.argsort(np.argsort(a.ravel())).astype(np.float64)
        assert np.corrcoef(rank(d01), rank(-gt.astype(np.float64)))[0, 1] > 0.5


def test_pseudo_depth_error_scaling():
    scene = synthesize_image(0, 1, 0, size=SIZE)
    exact = normalize_inverse_depth(1.0 / scene["depth_m"].astype(np.float64))
    rng = lambda: np.random.default_rng(7)
    zero = pseudo_depth(scene["depth_m"], scene["image"], rng(), 0.0)
    np.testing.assert_array_equal(zero, exact)
    errs = [np.abs(pseudo_depth(scene["depth_m"], scene["image"], rng(), e) - exact).mean()
            for e in (0.5, 1.0, 2.0)]
    assert 0 < errs[0] < errs[1] < errs[2]


def _boundary_jumps(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """|log depth ratio| across each 4-neighbour edge leaving the mask."""
    jumps = []
    for axis in (0, 1):
        for step in (1, -1):
            inside = mask & ~np.roll(mask, step, axis=axis)     # neighbour is outside
            edge = [slice(None)] * 2
            edge[axis] = slice(0, 1) if step == 1 else slice(-1, None)
            inside[tuple(edge)] = False                         # no wrap-around
            outside = np.roll(depth, step, axis=axis)
            jumps.append(np.abs(np.log(depth[inside] / outside[inside])))
    return np.concatenate(jumps)


def test_objects_stand_out_in_gt_depth(dataset):
    out, _ = dataset
    coco = json.loads((out / "val.json").read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    fractions = []
    for ann in coco["annotations"]:
        gt = np.asarray(Image.open(out / "depth_gt" / names[ann["image_id"]]), np.float64)
        mask = segmentation_to_mask(ann["segmentation"], *gt.shape).astype(bool)
        jumps = _boundary_jumps(gt, mask)
        if jumps.size:
            assert jumps.max() > 0.03            # some edge of every object is a depth edge
            fractions.append(np.mean(jumps > 0.01))
        interior = ndimage.binary_erosion(mask)
        if interior.sum() >= 10:     # relief inside: not a flat cut-out
            assert np.ptp(gt[interior]) > 0
    assert np.mean(fractions) > 0.8


def test_camouflage_lowers_colour_contrast():
    contrast = {0.0: [], 1.0: []}
    for i in range(6):
        scenes = {c: synthesize_image(1, 0, i, size=SIZE, camouflage=c) for c in contrast}
        labels = scenes[0.0]["labels"]
        np.testing.assert_array_equal(labels, scenes[1.0]["labels"])  # geometry unchanged
        for k in range(labels.max() + 1):
            mask = labels == k
            ring = ndimage.binary_dilation(mask, iterations=3) & (labels < 0)
            if ring.sum() < 5:
                continue
            for c, scene in scenes.items():
                img = scene["image"].astype(np.float64)
                contrast[c].append(np.abs(img[mask].mean(0) - img[ring].mean(0)).sum())
    assert len(contrast[0.0]) >= 5
    assert np.mean(contrast[1.0]) < 0.6 * np.mean(contrast[0.0])
    flags = [o["camouflaged"] for o in synthesize_image(1, 0, 0, size=SIZE,
                                                        camouflage=1.0)["objects"]]
    assert all(flags)


def test_classes_and_object_counts():
    seen, counts = set(), []
    for i in range(12):
        scene = synthesize_image(5, 0, i, size=SIZE, min_objects=2, max_objects=8)
        seen |= {o["category_id"] for o in scene["objects"]}
        counts.append(len(scene["objects"]))
        assert np.bincount(scene["labels"].ravel() + 1)[1:].min() >= MIN_VISIBLE_AREA
    assert len(seen) >= 3
    assert max(counts) <= 8 and np.mean(counts) >= 2


@pytest.mark.parametrize("bad", [dict(camouflage=1.5), dict(depth_error=-1),
                                 dict(min_objects=5, max_objects=2), dict(size=(8, 8)),
                                 dict(n_train=-1)])
def test_bad_arguments_are_rejected(tmp_path, bad):
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, **{**ARGS, **bad})


def test_train_masks_json_matches_train_json_boxes(dataset):
    """train_masks.json (for the fully supervised upper bound only) holds the same
    annotations as train.json plus masks whose tight box is the annotated box."""
    out, _ = dataset
    boxes = json.loads((out / "train.json").read_text())
    full = json.loads((out / "train_masks.json").read_text())
    assert full["images"] == boxes["images"]
    assert len(full["annotations"]) == len(boxes["annotations"])
    for a, b in zip(full["annotations"], boxes["annotations"]):
        assert {k: v for k, v in a.items() if k not in ("segmentation", "area")} == \
            {k: v for k, v in b.items() if k != "area"}
        h = next(im["height"] for im in full["images"] if im["id"] == a["image_id"])
        w = next(im["width"] for im in full["images"] if im["id"] == a["image_id"])
        mask = segmentation_to_mask(a["segmentation"], h, w).astype(bool)
        assert _tight_box(mask) == a["bbox"] and a["area"] == mask.sum()
