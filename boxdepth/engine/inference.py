"""Inference over a dataset and model evaluation.

`inference_on_dataset` runs the network on every image of a `CocoBoxDataset` (test
transform) and returns COCO results entries at the original image sizes; under DDP the
images are sharded over ranks and the results gathered on every rank.
`evaluate_model` adds the scoring: results json + metrics.json (same keys as
`boxdepth eval --gt --results`).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.distributed as tdist
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from boxdepth.data.results import instances_to_coco_results, write_coco_results
from boxdepth.data.transforms import collate_batch
from boxdepth.engine import dist
from boxdepth.engine.ckpt_config import merge_known_keys
from boxdepth.engine.evaluate import evaluate_coco, write_metrics
from boxdepth.models.condinst import canvas_divisibility, postprocess_detections


def boxes_to_full_masks(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Each XYXY box filled as a binary mask (D, H, W): the `box_as_mask` reference."""
    h, w = hw
    ys = torch.arange(h, device=boxes.device)[None, :, None] + 0.5
    xs = torch.arange(w, device=boxes.device)[None, None, :] + 0.5
    b = boxes[:, :, None, None]
    return (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])


@torch.no_grad()
def inference_on_dataset(model: torch.nn.Module, dataset, device: torch.device, *,
                         batch_size: int = 1, box_as_mask: bool = False, progress: bool = True,
                         desc: str = "eval") -> list[dict]:
    was_training = model.training
    model.eval()
    shard = Subset(dataset, range(dist.get_rank(), len(dataset), dist.get_world_size()))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=0,
                        collate_fn=partial(collate_batch, size_divisibility=canvas_divisibility(model)))
    results: list[dict] = []
    for batch in tqdm(loader, desc=desc, disable=not (progress and dist.is_main_process()),
                      dynamic_ncols=True, leave=False):
        dets = model(batch["images"].to(device), batch["image_mask"].to(device))
        for det, t in zip(dets, batch["targets"]):
            out = postprocess_detections(det, t["size"], t["orig_size"], model.mask_threshold,
                                         mask_stride=model.mask_out_stride)
            masks = boxes_to_full_masks(out["boxes"], t["orig_size"]) if box_as_mask else out["masks"]
            results += instances_to_coco_results(t["image_id"], out["boxes"], out["scores"],
                                                 out["labels"], masks, cat_ids=dataset.cat_ids)
    model.train(was_training)
    if dist.is_dist():
        gathered: list = [None] * dist.get_world_size()
        tdist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    return results


def results_path_for(metrics_path: str | Path) -> Path:
    """Where the detections go beside a metrics file: `<x>metrics.json` -> `<x>results.json`,
    any other name -> `<stem>_results.json`."""
    m = Path(metrics_path)
    if m.name.endswith("metrics.json"):
        return m.with_name(m.name[:-len("metrics.json")] + "results.json")
    return m.with_name(f"{m.stem}_results.json")


def evaluate_model(model: torch.nn.Module, dataset, gt_json: str | Path, device: torch.device, *,
                   metrics_path: str | Path | None = None, box_as_mask: bool = False,
                   progress: bool = True) -> dict:
    """Run, score and (rank 0, when `metrics_path` is given) write the metrics there and the
    COCO detections beside them (`results_path_for`). Returns {"bbox": {...}, "segm": {...}}."""
    results = inference_on_dataset(model, dataset, device, box_as_mask=box_as_mask,
                                   progress=progress)
    metrics = evaluate_coco(gt_json, results)
    if metrics_path is not None and dist.is_main_process():
        write_coco_results(results_path_for(metrics_path), results)
        write_metrics(metrics_path, metrics)
    return metrics


def load_trained_model(weights: str | Path, device: torch.device | str = "cpu",
                       cfg=None, *, ckpt: dict | None = None) -> tuple[torch.nn.Module, "Config", dict]:
    """Build the network from a checkpoint (its saved config unless `cfg` is given: see
    engine/ckpt_config.inference_config) and load its weights (the EMA teacher's when the
    checkpoint has one and eval.model=teacher); returns (model in eval mode, config, meta
    with cat_ids/class_names and weights_loaded: "teacher" | "student" | "student, no
    teacher"). `ckpt`: the checkpoint already loaded from `weights`."""
    from boxdepth.config import Config, load_config
    from boxdepth.engine.checkpoint import load_checkpoint
    from boxdepth.models.build import build_model

    if ckpt is None:
        ckpt = load_checkpoint(weights, map_location="cpu")
    saved = ckpt.get("config")
    if cfg is None:
        if not saved:
            raise ValueError(f"{weights} holds no config; pass a config file")
        cfg = load_config(None)
        merge_known_keys(cfg, saved)
    if cfg.model.fcos.num_classes is None and saved:
        cfg.model.fcos.num_classes = saved["model"]["fcos"]["num_classes"]
    # the checkpoint holds the backbone: build the same modules, read no weights file
    model = build_model(cfg, load_backbone_weights=False)
    # once distillation has started the EMA teacher is the model to use (SPEC §3)
    use_teacher = cfg.eval.model == "teacher" and ckpt.get("teacher") is not None
    try:
        model.load_state_dict(ckpt["teacher"] if use_teacher else ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{weights} does not fit the model of this config: {e}") from None
    meta = dict(ckpt.get("meta") or {})
    meta["weights_loaded"] = ("teacher" if use_teacher else
                              "student" if ckpt.get("teacher") is not None else "student, no teacher")
    return model.to(device).eval(), cfg, meta
