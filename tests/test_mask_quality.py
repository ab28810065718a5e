"""matched_mask_quality: box-matched mask IoU and box recall, on hand-made masks.

Expected values are counted by hand: a mask that covers the left half of a 20x20 GT
square (and nothing else) has mask IoU 200 / 400 = 0.5.
"""
from __future__ import annotations

import numpy as np
import pytest

from boxdepth.data.rle import mask_to_rle
from boxdepth.engine.mask_quality import matched_mask_quality

H, W = 60, 80


def _rect(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _gt(masks, crowd=()):
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": mask_to_rle(m),
             "bbox": [float(v) for v in box], "area": float(m.sum()), "iscrowd": int(i in crowd)}
            for i, (m, box) in enumerate(masks)]
    return {"images": [{"id": 1, "height": H, "width": W, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "object"}], "annotations": anns}


def _det(mask, box, score):
    return {"image_id": 1, "category_id": 1, "score": score, "bbox": [float(v) for v in box],
            "segmentation": mask_to_rle(mask)}


SQUARE = (_rect(10, 10, 30, 30), (10, 10, 20, 20))
FAR = (_rect(50, 30, 70, 50), (50, 30, 20, 20))


def test_mask_iou_and_recall_counted_by_hand():
    gt = _gt([SQUARE, FAR])
    # right box, half the mask: scored, IoU 0.5. The second GT object is never found.
    res = [_det(_rect(10, 10, 20, 30), (10, 10, 20, 20), 0.9)]
    q = matched_mask_quality(gt, res)
    assert q == {"mask_iou": pytest.approx(0.5), "matched": 0.5, "n_gt": 2, "n_matched": 1}


def test_matching_is_by_box_not_by_mask():
    # a detection whose box is off (box IoU 0) but whose mask is perfect is not scored,
    # and one whose box is right but whose mask misses entirely scores mask IoU 0
    gt = _gt([SQUARE])
    off = _det(SQUARE[0], (40, 0, 20, 20), 0.9)
    empty_mask = _det(_rect(40, 40, 45, 45), (10, 10, 20, 20), 0.5)
    q = matched_mask_quality(gt, [off, empty_mask])
    assert q["n_matched"] == 1 and q["mask_iou"] == pytest.approx(0.0)


def test_highest_score_takes_the_object_first():
    gt = _gt([SQUARE])
    # box IoU 300/500 = 0.6 at score 0.9 (mask IoU 0.5) beats box IoU 1 at score 0.4 (mask 1)
    high = _det(_rect(10, 10, 20, 30), (15, 10, 20, 20), 0.9)
    low = _det(SQUARE[0], (10, 10, 20, 20), 0.4)
    assert matched_mask_quality(gt, [low, high])["mask_iou"] == pytest.approx(0.5)
    # below the threshold the high-scoring box is passed over
    assert matched_mask_quality(gt, [low, high], iou_threshold=0.7)["mask_iou"] == pytest.approx(1.0)


def test_crowd_objects_left_out_and_no_detection():
    gt = _gt([SQUARE, FAR], crowd=(1,))
    q = matched_mask_quality(gt, [])
    assert q == {"mask_iou": None, "matched": 0.0, "n_gt": 1, "n_matched": 0}


def test_box_only_results_are_refused_with_a_clear_error():
    det = _det(*SQUARE, 0.9)
    del det["segmentation"]
    with pytest.raises(ValueError, match="segmentation"):
        matched_mask_quality(_gt([SQUARE]), [det])


def test_box_only_results_file_is_named_in_the_error(tmp_path):
    import json
    det = _det(*SQUARE, 0.9)
    del det["segmentation"]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([det]))
    with pytest.raises(ValueError, match=r"dets\.json: .*segmentation"):
        matched_mask_quality(_gt([SQUARE]), path)
