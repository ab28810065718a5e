"""COCO box and mask AP with pycocotools, made robust to GT files that trip it up.

`evaluate_coco(gt, results)` returns::

    {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"},
     "segm": {...same keys...}}

Values are fractions in [0, 1] (pycocotools `stats[0:6]`, maxDets 100, rounded to 12
decimals so that perfect detections give exactly 1.0). A size range
without any GT object (pycocotools' -1) is reported as float("nan"); `write_metrics`
writes it as json null. An iou type that cannot be evaluated (no GT masks, no result
masks) is left out of the dict and a warning says why.

What is fixed on a private copy of the GT before pycocotools sees it:
- annotation ids are renumbered 1..n: COCOeval stores the matched GT id in `dtMatches`
  and reads 0 as "unmatched", so a GT annotation with id 0 could never be a true positive;
- missing `iscrowd` -> 0; missing `area` -> mask area (or box area without a mask);
  missing `bbox` -> tight box of the mask.
Image id 0 and category ids that start anywhere or have gaps need no fix and are tested.
An empty results list (which `COCO.loadRes` crashes on) gives AP 0 where GT exists.
For `segm`, result boxes are dropped so that pycocotools takes the detection area (used
for the small/medium/large split) from the mask rather than the box, as detectron2 does.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from typing import Iterable, Sequence

from boxdepth.data.results import load_coco_gt, load_coco_results, validate_coco_results
from boxdepth.data.rle import mask_to_xywh, segmentation_to_mask
from boxdepth.fileio import atomic_write_text

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def has_mask(ann: dict) -> bool:
    """True if a COCO annotation carries a usable mask (RLE, or a polygon of >= 3 points)."""
    seg = ann.get("segmentation")
    return bool(seg) and (isinstance(seg, dict) or any(len(p) >= 6 for p in seg))


def _fix_gt_annotation(ann: dict, index: int, sizes: dict) -> dict:
    if ann.get("image_id") not in sizes:
        raise ValueError(f"GT annotation #{index} (id {ann.get('id')}) refers to image_id "
                         f"{ann.get('image_id')!r}, which is not in the GT images")
    fixed = dict(ann, id=index + 1)
    fixed.setdefault("iscrowd", 0)
    if "area" in fixed and "bbox" in fixed:
        return fixed
    mask = segmentation_to_mask(fixed["segmentation"], *sizes[fixed["image_id"]]) \
        if has_mask(fixed) else None
    if "bbox" not in fixed:
        if mask is None:
            raise ValueError(f"GT annotation #{index} (id {ann.get('id')}) has neither "
                             f"bbox nor segmentation")
        fixed["bbox"] = mask_to_xywh(mask)
    if "area" not in fixed:
        fixed["area"] = float(mask.sum()) if mask is not None \
            else float(fixed["bbox"][2] * fixed["bbox"][3])
    return fixed


def prepare_gt(gt: dict) -> dict:
    """A copy of a COCO GT dict that pycocotools evaluates correctly (see module doc)."""
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in gt["images"]}
    anns = [_fix_gt_annotation(a, i, sizes) for i, a in enumerate(gt["annotations"])]
    return dict(gt, annotations=anns)


def _quiet(verbose: bool):
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _coco_from_dict(dataset: dict):
    from pycocotools.coco import COCO  # C extension: imported only when evaluating
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _load_res(coco_gt, anns: list[dict]):
    if anns:
        return coco_gt.loadRes(anns)
    # COCO.loadRes indexes anns[0]: an empty result set is built by hand instead
    return _coco_from_dict({"images": coco_gt.dataset["images"],
                            "categories": coco_gt.dataset["categories"],
                            "annotations": []})


def _results_for(iou_type: str, results: list[dict]) -> list[dict]:
    # fresh dicts: loadRes writes id/area/bbox into them
    keys = ("image_id", "category_id", "score",
            "bbox" if iou_type == "bbox" else "segmentation")
    return [{k: r[k] for k in keys} for r in results]


def _skip_reason(iou_type: str, gt: dict, results: list[dict]) -> str | None:
    if iou_type != "segm":
        return None
    n_gt = sum(not has_mask(a) for a in gt["annotations"])
    if gt["annotations"] and n_gt:
        return (f"{n_gt} of {len(gt['annotations'])} GT annotations have no segmentation "
                f"(a box-only GT file?)")
    n_res = sum("segmentation" not in r for r in results)
    if n_res:
        return f"{n_res} of {len(results)} results have no segmentation"
    return None


def _stats_to_metrics(stats: Sequence[float]) -> dict[str, float]:
    # pycocotools writes -1 for a size range without GT objects. Its precision is
    # tp / (tp + fp + eps), so a perfect single-object category scores 1 - 2e-16:
    # rounding to 12 decimals removes that noise (and nothing a table could show).
    return {name: (float("nan") if v < 0 else round(float(v), 12))
            for name, v in zip(METRIC_NAMES, stats[:6])}


def _run_cocoeval(coco_gt, results: list[dict], iou_type: str,
                  img_ids: Iterable[int] | None, verbose: bool) -> dict[str, float]:
    from pycocotools.cocoeval import COCOeval
    with _quiet(verbose):
        coco_dt = _load_res(coco_gt, _results_for(iou_type, results))
        cocoeval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if img_ids is not None:
            cocoeval.params.imgIds = sorted(set(img_ids))
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return _stats_to_metrics(cocoeval.stats)


def load_gt_and_results(gt: str | os.PathLike | dict, results: str | os.PathLike | list[dict]
                        ) -> tuple[dict, list[dict]]:
    """The GT dict and the results checked against it (each a path or a loaded object)."""
    gt_data = load_coco_gt(gt)
    if isinstance(results, list):
        return gt_data, validate_coco_results(results, gt_data)
    return gt_data, load_coco_results(results, gt_data)


def indexed_coco(gt: dict, results: list[dict], *, verbose: bool = False):
    """(coco_gt, coco_dt): pycocotools COCO objects for a GT dict (made evaluable by
    `prepare_gt`) and checked results (`load_gt_and_results`), indexed, with the results'
    masks and boxes kept (an empty result list gives an empty coco_dt)."""
    keys = ("image_id", "category_id", "score", "bbox", "segmentation")
    with _quiet(verbose):  # pycocotools prints while it indexes
        coco_gt = _coco_from_dict(prepare_gt(gt))
        return coco_gt, _load_res(coco_gt, [{k: r[k] for k in keys if k in r} for r in results])


def evaluate_coco(gt: str | os.PathLike | dict, results: str | os.PathLike | list[dict],
                  iou_types: Sequence[str] = IOU_TYPES, *, img_ids: Iterable[int] | None = None,
                  verbose: bool = False) -> dict[str, dict[str, float]]:
    """COCO AP of `results` against `gt` (paths or loaded objects); see module doc.

    `img_ids` restricts evaluation to those images (default: every GT image, so images
    without any result count as misses). `verbose` shows pycocotools' own output.
    """
    gt_data, results = load_gt_and_results(gt, results)
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown:
        raise ValueError(f"unknown iou type(s) {unknown}; expected some of {IOU_TYPES}")
    gt_data = prepare_gt(gt_data)
    with _quiet(verbose):
        coco_gt = _coco_from_dict(gt_data)
    metrics = {}
    for iou_type in iou_types:
        reason = _skip_reason(iou_type, gt_data, results)
        if reason is not None:
            warnings.warn(f"skipping {iou_type} evaluation: {reason}", stacklevel=2)
            continue
        metrics[iou_type] = _run_cocoeval(coco_gt, results, iou_type, img_ids, verbose)
    return metrics


def _percent(v: float) -> str:
    return "-" if math.isnan(v) else f"{100.0 * v:.1f}"


def format_metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """A plain-text table, one row per iou type, AP columns in percent (NaN -> '-')."""
    lines = ["type  " + "".join(f"{name:>7}" for name in METRIC_NAMES)]
    for iou_type in (t for t in IOU_TYPES if t in metrics):
        row = metrics[iou_type]
        lines.append(f"{iou_type:<6}" + "".join(f"{_percent(row[n]):>7}" for n in METRIC_NAMES))
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_metrics(path: str | os.PathLike, metrics: dict, extra: dict | None = None) -> None:
    """Atomically write `metrics` (plus `extra` keys) as strict json, NaN -> null."""
    obj = dict(extra or {})
    obj.update(metrics)
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")


def run_eval_files(gt_path: str | os.PathLike, results_path: str | os.PathLike,
                   out_path: str | os.PathLike | None = None, *,
                   iou_types: Sequence[str] = IOU_TYPES, verbose: bool = False) -> dict:
    """`boxdepth eval`: evaluate a results file, write metrics json if `out_path`."""
    metrics = evaluate_coco(gt_path, results_path, iou_types, verbose=verbose)
    if out_path is not None:
        write_metrics(out_path, metrics, extra={"gt": str(gt_path),
                                                "results": str(results_path)})
    return metrics
