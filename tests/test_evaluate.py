"""COCO results format and COCO evaluation (pycocotools with its pitfalls handled).

Expected AP values are derived by hand from the COCO definition: with one GT and one
detection, AP at IoU threshold t is 1 if IoU >= t else 0, and the reported AP is the
mean over t in {0.50, 0.55, ..., 0.95}; IoUs are computed here by brute force.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from boxdepth.data.results import (instances_to_coco_results, load_coco_results,
                                   write_coco_results)
from boxdepth.data.rle import mask_to_rle, mask_to_xywh, segmentation_to_mask
from boxdepth.engine.evaluate import (evaluate_coco, format_metrics_table, prepare_gt,
                                      run_eval_files, write_metrics)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
H, W = 100, 120
THRESHOLDS = np.linspace(0.5, 0.95, 10)


def _rect(x0, y0, x1, y1, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _disk(cx, cy, r):
    yy, xx = np.mgrid[:H, :W]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)


def _make_gt(objects, image_ids, cat_ids, ann_id_start=1):
    """objects: (image_index, category_index, segmentation-or-mask). Masks become RLE."""
    anns = []
    for k, (img_i, cat_i, seg) in enumerate(objects):
        if isinstance(seg, np.ndarray):
            seg = mask_to_rle(seg)
        mask = segmentation_to_mask(seg, H, W)
        anns.append({"id": ann_id_start + k, "image_id": image_ids[img_i],
                     "category_id": cat_ids[cat_i], "segmentation": seg,
                     "bbox": mask_to_xywh(mask), "area": float(mask.sum()), "iscrowd": 0})
    return {"images": [{"id": i, "height": H, "width": W, "file_name": f"{i}.png"}
                       for i in image_ids],
            "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids],
            "annotations": anns}


def _perfect_results(gt):
    """GT fed back as detections with score 1, through instances_to_coco_results."""
    cat_ids = [c["id"] for c in gt["categories"]]
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    results = []
    for img_id, (h, w) in sizes.items():
        anns = [a for a in gt["annotations"] if a["image_id"] == img_id]
        if not anns:
            continue
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns])
        masks = torch.from_numpy(np.stack(
            [segmentation_to_mask(a["segmentation"], h, w) for a in anns]).astype(bool))
        labels = torch.tensor([cat_ids.index(a["category_id"]) for a in anns])
        results += instances_to_coco_results(img_id, boxes, torch.ones(len(anns)), labels,
                                             masks, cat_ids=cat_ids)
    return results


# a polygon (pycocotools rasterizes it), an RLE disk, an RLE L-shape, a medium square
POLYGON = [[10.0, 10.0, 30.0, 12.0, 28.0, 30.0, 12.0, 26.0]]
L_SHAPE = _rect(60, 5, 70, 30) | _rect(60, 20, 90, 30)


def _mixed_gt(image_ids, cat_ids, ann_id_start=1):
    objects = [(0, 0, POLYGON), (0, 1, _disk(80, 70, 9)), (1, 1, L_SHAPE),
               (1, 2, _rect(20, 40, 60, 80))]
    return _make_gt(objects, image_ids, cat_ids, ann_id_start)


def _expected_range(gt, lo, hi, value=1.0):
    areas = [a["area"] for a in gt["annotations"]]
    return value if any(lo <= a <= hi for a in areas) else float("nan")


def _assert_metrics(got, expected):
    for k, v in expected.items():
        assert (math.isnan(got[k]) if math.isnan(v) else got[k] == pytest.approx(v, abs=1e-9)), \
            (k, got[k], v)


@pytest.mark.parametrize("image_ids,cat_ids", [
    ([0, 1], [1, 2, 3]),       # usual COCO
    ([0, 5], [0, 1, 2]),       # image id 0, category id 0 (like the VOC sample)
    ([3, 4], [7, 9, 12]),      # categories from 7, non-contiguous
])
def test_perfect_detections_give_ap_one(image_ids, cat_ids):
    gt = _mixed_gt(image_ids, cat_ids)
    metrics = evaluate_coco(gt, _perfect_results(gt))
    expected = {"AP": 1.0, "AP50": 1.0, "AP75": 1.0,
                "APs": _expected_range(gt, 0, 32 ** 2),
                "APm": _expected_range(gt, 32 ** 2, 96 ** 2),
                "APl": _expected_range(gt, 96 ** 2, 1e10)}
    assert math.isnan(expected["APl"]) and expected["APm"] == 1.0  # the GT covers both cases
    for iou_type in ("bbox", "segm"):
        _assert_metrics(metrics[iou_type], expected)


def _raw_pycocotools_ap(gt, results, iou_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(results))), iou_type)
        ev.evaluate(); ev.accumulate(); ev.summarize()
    return ev.stats[0]


def test_gt_annotation_id_zero():
    gt = _mixed_gt([0, 1], [1, 2, 3], ann_id_start=0)
    results = _perfect_results(gt)
    # the pitfall is real: plain pycocotools never matches the GT with id 0
    assert _raw_pycocotools_ap(gt, results, "bbox") < 1.0
    metrics = evaluate_coco(gt, results)
    assert metrics["bbox"]["AP"] == 1.0 and metrics["segm"]["AP"] == 1.0
    assert gt["annotations"][0]["id"] == 0  # renumbering happened on a copy


def _brute_iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("shift", [2, 4, 7])
def test_shifted_detection_ap_follows_iou(shift):
    gt_mask = _rect(10, 10, 30, 30)
    gt = _make_gt([(0, 0, gt_mask)], [0], [1])
    det_mask = _rect(10 + shift, 10, 30 + shift, 30)
    iou = _brute_iou(gt_mask, det_mask)
    results = instances_to_coco_results(
        0, np.array([[10 + shift, 10, 30 + shift, 30]]), np.array([0.9]), np.array([0]),
        det_mask[None].astype(bool), cat_ids=[1])
    metrics = evaluate_coco(gt, results)
    expected_ap = float(np.mean(THRESHOLDS <= iou))
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(expected_ap)
        assert metrics[iou_type]["AP50"] == float(iou >= 0.5)
        assert metrics[iou_type]["AP75"] == float(iou >= 0.75)
        assert metrics[iou_type]["AP"] < 1.0


def test_wrong_category_scores_lower():
    gt = _make_gt([(0, 0, _rect(5, 5, 25, 25)), (0, 1, _rect(50, 50, 80, 80))], [0], [1, 2])
    boxes = np.array([[5, 5, 25, 25], [50, 50, 80, 80]], float)
    masks = np.stack([_rect(5, 5, 25, 25), _rect(50, 50, 80, 80)]).astype(bool)
    right = instances_to_coco_results(0, boxes, np.array([0.9, 0.8]), np.array([0, 1]),
                                      masks, cat_ids=[1, 2])
    wrong = instances_to_coco_results(0, boxes, np.array([0.9, 0.8]), np.array([0, 0]),
                                      masks, cat_ids=[1, 2])
    # category 1: TP then FP -> AP 1; category 2: never detected -> AP 0; mean 0.5
    for iou_type in ("bbox", "segm"):
        assert evaluate_coco(gt, right)[iou_type]["AP"] == 1.0
        assert evaluate_coco(gt, wrong)[iou_type]["AP"] == pytest.approx(0.5)


def test_segm_size_split_uses_mask_area():
    gt = _make_gt([(0, 0, _rect(5, 5, 10, 10))], [0], [1])
    blobs = _rect(50, 50, 53, 53) | _rect(90, 90, 93, 93)  # area 18, box 43x43 = 1849
    masks = np.stack([blobs, _rect(5, 5, 10, 10)]).astype(bool)
    boxes = np.array([[50, 50, 93, 93], [5, 5, 10, 10]], float)
    results = instances_to_coco_results(0, boxes, np.array([0.9, 0.5]), np.array([0, 0]),
                                        masks, cat_ids=[1])
    # the higher-scored false positive is "small" by mask area, so it counts in APs:
    # precision [0, 1/2] at recall [0, 1] -> AP 0.5 (it would be ignored, AP 1, by box area)
    metrics = evaluate_coco(gt, results)
    assert metrics["segm"]["APs"] == pytest.approx(0.5)
    assert metrics["bbox"]["APs"] == 1.0


def test_empty_results_give_zero():
    gt = _mixed_gt([0, 1], [1, 2, 3])
    metrics = evaluate_coco(gt, [])
    expected = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0,
                "APs": _expected_range(gt, 0, 32 ** 2, 0.0),
                "APm": _expected_range(gt, 32 ** 2, 96 ** 2, 0.0),
                "APl": _expected_range(gt, 96 ** 2, 1e10, 0.0)}
    for iou_type in ("bbox", "segm"):
        _assert_metrics(metrics[iou_type], expected)


def test_results_for_a_subset_of_images():
    gt = _make_gt([(0, 0, _rect(5, 5, 25, 25)), (1, 0, _rect(40, 40, 70, 70))], [0, 1], [1])
    results = [r for r in _perfect_results(gt) if r["image_id"] == 0]
    # recall stops at 1/2 with precision 1: 51 of the 101 recall points reach it
    assert evaluate_coco(gt, results)["bbox"]["AP"] == pytest.approx(51 / 101)
    assert evaluate_coco(gt, results, img_ids=[0])["segm"]["AP"] == 1.0


def test_gt_without_area_iscrowd_or_bbox():
    gt = _make_gt([(0, 0, _rect(20, 20, 60, 60)), (1, 0, _rect(0, 0, 10, 10))], [0, 1], [1])
    results = _perfect_results(gt)
    for a in gt["annotations"]:
        del a["area"], a["iscrowd"]
    del gt["annotations"][1]["bbox"]
    fixed = prepare_gt(gt)["annotations"]
    assert [a["area"] for a in fixed] == [1600.0, 100.0]
    assert fixed[1]["bbox"] == [0.0, 0.0, 10.0, 10.0] and fixed[1]["iscrowd"] == 0
    metrics = evaluate_coco(gt, results)
    for iou_type in ("bbox", "segm"):
        _assert_metrics(metrics[iou_type], {"AP": 1.0, "APs": 1.0, "APm": 1.0,
                                            "APl": float("nan")})
    # box-only GT without area: area is the box area, a 40x40 box is "medium"
    box_gt = {**gt, "annotations": [{"id": 1, "image_id": 0, "category_id": 1,
                                     "bbox": [20.0, 20.0, 40.0, 40.0]}]}
    assert prepare_gt(box_gt)["annotations"][0]["area"] == 1600.0


def test_segm_skipped_without_gt_masks():
    gt = _make_gt([(0, 0, _rect(20, 20, 60, 60))], [0], [1])
    results = _perfect_results(gt)
    del gt["annotations"][0]["segmentation"]
    with pytest.warns(UserWarning, match="skipping segm.*no segmentation"):
        metrics = evaluate_coco(gt, results)
    assert "segm" not in metrics and metrics["bbox"]["AP"] == 1.0


def test_instances_to_coco_results_format(tmp_path):
    mask = np.zeros((2, 6, 8), bool)
    mask[0, 1:4, 2:5] = True
    results = instances_to_coco_results(
        0, torch.tensor([[1.234, 2.0, 11.5, 22.25], [0.0, 0.0, 3.0, 4.0]]),
        torch.tensor([0.5, 0.25]), torch.tensor([1, 0]), torch.from_numpy(mask),
        cat_ids=[7, 9])
    assert [r["category_id"] for r in results] == [9, 7]
    assert results[0]["bbox"] == [1.23, 2.0, 10.27, 20.25]
    assert results[0]["image_id"] == 0 and results[1]["score"] == 0.25
    seg = results[0]["segmentation"]
    assert isinstance(seg["counts"], str) and seg["size"] == [6, 8]
    assert (segmentation_to_mask(seg, 6, 8) == mask[0]).all()
    assert json.loads(json.dumps(results)) == results
    path = tmp_path / "dets.json"
    write_coco_results(path, results)
    assert load_coco_results(path) == results
    assert instances_to_coco_results(3, np.zeros((0, 4)), [], [], cat_ids=[1]) == []
    with pytest.raises(ValueError, match="labels must lie in"):
        instances_to_coco_results(0, np.zeros((1, 4)), [1.0], [2], cat_ids=[7, 9])


_GOOD = {"image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}


@pytest.mark.parametrize("content,problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"annotations": []}), "must be a JSON list"),
    (json.dumps([{k: v for k, v in _GOOD.items() if k != "score"}]), r"missing \['score'\]"),
    (json.dumps([_GOOD, {**_GOOD, "image_id": 99}]), "entry 1 has image_id 99"),
    (json.dumps([{**_GOOD, "category_id": 3}]), "category_id 3"),
    (json.dumps([{**_GOOD, "bbox": [1, 2]}]), "bbox"),
    (json.dumps([{**_GOOD, "segmentation": mask_to_rle(np.ones((W, H), np.uint8))}]),
     r"segmentation of size \[120, 100\]"),
])
def test_results_validation_errors_name_the_file(tmp_path, content, problem):
    gt = _make_gt([(0, 0, _rect(0, 0, 5, 5))], [0], [1])
    path = tmp_path / "my_dets.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as info:
        load_coco_results(path, gt=gt)
    assert "my_dets.json" in str(info.value)
    with pytest.raises(ValueError, match="my_dets.json"):
        evaluate_coco(gt, path)


def test_metrics_table_and_json(tmp_path):
    nan = float("nan")
    metrics = {"bbox": {"AP": 0.5, "AP50": 1.0, "AP75": 0.1234, "APs": nan, "APm": 0.0,
                        "APl": 0.25},
               "segm": {"AP": 0.25, "AP50": 0.5, "AP75": 0.0, "APs": nan, "APm": nan,
                        "APl": 1.0}}
    lines = format_metrics_table(metrics).splitlines()
    assert lines[0].split() == ["type", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert lines[1].split() == ["bbox", "50.0", "100.0", "12.3", "-", "0.0", "25.0"]
    assert lines[2].split() == ["segm", "25.0", "50.0", "0.0", "-", "-", "100.0"]
    path = tmp_path / "metrics.json"
    write_metrics(path, metrics, extra={"iteration": 7})

    def _reject(token):
        raise AssertionError(f"non-standard json constant {token}")
    saved = json.loads(path.read_text(), parse_constant=_reject)
    assert saved["iteration"] == 7 and saved["bbox"]["APs"] is None
    assert saved["segm"]["APl"] == 1.0 and set(saved["segm"]) == set(metrics["segm"])


@pytest.mark.skipif(not (DATA / "voc3-coco" / "annotations.json").is_file(),
                    reason="shared sample data not present")
def test_real_voc_polygons_give_ap_one(tmp_path):
    gt_path = DATA / "voc3-coco" / "annotations.json"
    gt = json.loads(gt_path.read_text())
    results = _perfect_results(gt)
    res_path = tmp_path / "dets.json"
    write_coco_results(res_path, results)
    metrics = run_eval_files(gt_path, res_path, tmp_path / "out" / "metrics.json")
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == 1.0
        assert metrics[iou_type]["AP50"] == 1.0 and metrics[iou_type]["AP75"] == 1.0
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["segm"]["AP"] == 1.0 and saved["gt"] == str(gt_path)


def test_results_path_beside_metrics(tmp_path):
    from boxdepth.engine.inference import results_path_for

    assert results_path_for(tmp_path / "metrics.json") == tmp_path / "results.json"
    assert results_path_for(tmp_path / "box_as_mask_metrics.json") == tmp_path / "box_as_mask_results.json"
    assert results_path_for(tmp_path / "student.json") == tmp_path / "student_results.json"
