"""Shared fixtures: a tiny synthetic RGB-D dataset and a tiny model config on it."""
from __future__ import annotations

from pathlib import Path

import pytest

from boxdepth.config import load_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# A model small enough to train a few iterations per test on 2 CPU cores. GN everywhere
# (32 groups) so that results do not depend on how a batch is split (DDP tests).
TINY_MODEL = [
    "model.backbone.name=small", "model.backbone.norm=GN", "model.backbone.freeze_at=0",
    "model.backbone.width=32", "model.fpn.out_channels=64", "model.fcos.num_convs=1",
    "model.mask_branch.channels=32", "model.mask_branch.num_convs=1",
    "model.mask_branch.norm=GN", "model.mask_head.topk_proposals_per_im=16",
]


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    from boxdepth.data.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny_synth")
    generate_synthetic_dataset(out, n_train=6, n_val=3, size=(96, 64), seed=3, preview=False,
                               progress=False)
    return out


def tiny_config(data_dir: Path, *overrides: str, depth: bool = False):
    base = [f"data.train_json={data_dir / 'train.json'}", f"data.val_json={data_dir / 'val.json'}",
            f"data.image_root={data_dir / 'images'}", "data.num_workers=0",
            "input.min_size_train=[64]", "input.max_size_train=128", "input.flip_prob=0.5",
            "input.min_size_test=64", "input.max_size_test=128",
            "solver.ims_per_batch=2", "solver.base_lr=0.01", "solver.warmup_iters=2",
            "solver.steps=[3]", "solver.max_iter=4", "solver.checkpoint_period=2",
            "loss.boxinst.warmup_iters=2", "log.period=1", "log.tensorboard=false"]
    if depth:
        base.append(f"data.depth_root={data_dir / 'depth'}")
    return load_config(None, base + TINY_MODEL + list(overrides))


def save_untrained_checkpoint(path: Path, cfg, cat_ids: list[int], names: list[str]) -> Path:
    """An untrained model of `cfg` saved as a checkpoint, with its class scores spread and
    its boxes given some size so that inference has detections to work with."""
    import torch

    from boxdepth.models.build import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.fcos_head.cls_logits.weight.mul_(200.0)
        model.fcos_head.cls_logits.bias.zero_()
        model.fcos_head.bbox_pred.bias.fill_(1.0)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(),
                "meta": {"cat_ids": cat_ids, "class_names": names}}, path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module of tiny models: thread start-up and contention on a
    shared CPU cost far more than they gain."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
