"""solver.amp on CPU: bf16 autocast, fp32 where it matters, losses close to fp32, training runs."""
import json
import math

import pytest
import torch

from boxdepth.engine.amp import amp_dtype, autocast
from boxdepth.engine.trainer import (batch_to_device, build_train_loader, build_training,
                                     resolve_num_classes, train)
from boxdepth.models.dynamic_head import DynamicMaskHead
from boxdepth.ops.pairwise import rgb_to_lab
from tests.conftest import tiny_config

# Largest |bf16 - fp32| first-step loss difference measured over 9 batches of the tiny
# synthetic set (three model/size variants): 4.1e-3 (loss_pairwise), most terms < 5e-4.
LOSS_ATOL = 1e-2


def test_amp_dtype_per_device():
    assert amp_dtype("cpu", True) is torch.bfloat16
    assert amp_dtype("cuda:0", True) is torch.float16
    assert amp_dtype("cpu", False) is None and amp_dtype("cuda", False) is None
    with pytest.raises(ValueError, match="mps"):
        amp_dtype("mps", True)


@pytest.mark.parametrize("name", [None, "synth_boxinst", "coco_r50_1x", "cityscapes_r50"])
def test_default_is_fp32(name):
    """A user who did not ask for AMP trains in float32, on the CPU and on CUDA."""
    from boxdepth.config import load_config
    assert load_config(name).solver.amp is False
    with autocast("cpu", False):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_lab_and_dynamic_head_stay_float32_under_autocast():
    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    ref = rgb_to_lab(rgb)
    with autocast("cpu", True):
        got = rgb_to_lab(rgb)
        # the check that autocast is really on: a plain matmul does drop to bf16
        assert (rgb.flatten(1) @ rgb.flatten(1).t()).dtype == torch.bfloat16
    assert got.dtype == torch.float32 and torch.equal(got, ref)

    head = DynamicMaskHead(in_channels=16, depth_head=True)
    gen = torch.Generator().manual_seed(1)
    feats, params = torch.randn(1, 16, 6, 8, generator=gen), torch.randn(3, head.num_params, generator=gen)
    args = (8, torch.zeros(3, dtype=torch.long), torch.tensor([[4.0, 4.0], [20.0, 12.0], [60.0, 40.0]]),
            torch.tensor([0, 1, 2]))
    feats, params = feats.bfloat16(), params.bfloat16()  # as the bf16 mask branch / controller give them
    ref = head(feats.float(), *args, params.float())
    with autocast("cpu", True):
        got = head(feats, *args, params)
    # the head computed in float32 from the same values: bit-identical to the fp32 run
    assert got["mask_logits"].dtype == torch.float32
    assert torch.equal(got["mask_logits"], ref["mask_logits"])
    assert torch.equal(got["depth_logits"], ref["depth_logits"])


def test_bf16_first_step_losses_close_to_fp32(tiny_synth):
    cfg = tiny_config(tiny_synth, "model.depth_head=true", "loss.boxinst.warmup_iters=0", depth=True)
    loader = build_train_loader(cfg)
    resolve_num_classes(cfg, loader.dataset.dataset)
    model, criterion, *_ = build_training(cfg, torch.device("cpu"))
    batch = batch_to_device(next(iter(loader)), torch.device("cpu"))
    with torch.no_grad():
        ref = criterion(model(batch["images"], batch["image_mask"], batch["targets"]), batch, iteration=5)
        with autocast("cpu", True):
            out = model(batch["images"], batch["image_mask"], batch["targets"])
            got = criterion(out, batch, iteration=5)
    assert out["mask_feats"].dtype == torch.bfloat16  # AMP really ran the convolutions in bf16
    assert out["proposals"]["mask_logits"].dtype == torch.float32
    assert set(got) == set(ref) >= {"loss_prj", "loss_pairwise", "loss_depth", "loss_cons"}
    for k in ref:
        assert math.isfinite(float(got[k])) and got[k].dtype == torch.float32, k
        assert abs(float(got[k]) - float(ref[k])) < LOSS_ATOL, (k, float(got[k]), float(ref[k]))


def test_training_with_amp_runs_on_cpu(tiny_synth, tmp_path):
    cfg = tiny_config(tiny_synth, "solver.amp=true", "model.depth_head=true", depth=True)
    final = train(cfg, tmp_path / "run", progress=False)
    assert final.is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iter"] == 4
    # a non-finite value would be logged as null (and stop training)
    assert all(v is not None and math.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss"))
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["scaler"] is None  # bf16 needs no loss scaling
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["model"].values()
               if v.is_floating_point() or v.dtype == torch.int64)
