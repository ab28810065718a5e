"""The demo's picture: for a few val images, ground truth next to each variant's masks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from boxdepth.data.image_io import load_image_rgb
from boxdepth.data.rle import segmentation_to_mask


def _gt_instances(val: dict, image: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = {c["id"]: c["name"] for c in val["categories"]}
    anns = [a for a in val["annotations"] if a["image_id"] == image["id"]]
    masks = np.stack([segmentation_to_mask(a["segmentation"], image["height"], image["width"])
                      .astype(bool) for a in anns]) if anns else np.zeros((0, image["height"], image["width"]), bool)
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                      for a in anns]).reshape(-1, 4)
    return masks, boxes, [names[a["category_id"]] for a in anns]


def write_demo_panel(out_dir: Path, data_dir: Path, runs: dict[str, Path], *,
                     num_images: int = 4, score_thresh: float = 0.5) -> Path:
    """<out_dir>/panel.png: rows = the first `num_images` images of <data_dir>/val.json;
    columns = ground truth, then one per entry of `runs` (column title -> run folder holding
    model_final.pth), detections with score >= `score_thresh`."""
    from boxdepth.data.transforms import TestTransform
    from boxdepth.engine.inference import load_trained_model
    from boxdepth.engine.predict import predict_image
    from boxdepth.viz.draw import make_panel, overlay_instances, save_png

    val = json.loads((data_dir / "val.json").read_text())
    images = val["images"][:num_images]
    pictures = [load_image_rgb(data_dir / "images" / im["file_name"]) for im in images]
    rows = [[overlay_instances(pic, *_gt_instances(val, im)[:2], labels=_gt_instances(val, im)[2])]
            for pic, im in zip(pictures, images)]
    for run_dir in runs.values():
        model, cfg, meta = load_trained_model(Path(run_dir) / "model_final.pth", "cpu")
        transform = TestTransform(cfg.input.min_size_test, cfg.input.max_size_test)
        class_names = meta.get("class_names") or [str(i) for i in range(cfg.model.fcos.num_classes)]
        for row, pic in zip(rows, pictures):
            det = predict_image(model, pic, transform, "cpu", with_depth=False)
            keep = det["scores"] >= score_thresh
            row.append(overlay_instances(pic, det["masks"][keep], det["boxes"][keep],
                                         labels=[class_names[i] for i in det["labels"][keep]],
                                         scores=det["scores"][keep]))
    panel = make_panel(rows, titles=["ground truth", *runs])
    path = Path(out_dir) / "panel.png"
    save_png(path, panel)
    return path
