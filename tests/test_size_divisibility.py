"""input.size_divisibility is honoured by every batch a model sees, and a value the network
cannot take (not a multiple of P5's stride 32) is refused naming the key (issue 24 item 9)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from boxdepth.data.build import build_dataset
from boxdepth.data.transforms import TestTransform, collate_batch
from boxdepth.distill.ema import ModelEMA
from boxdepth.distill.teacher import teacher_predictions
from boxdepth.engine.inference import inference_on_dataset
from boxdepth.engine.predictor import detect_image
from boxdepth.label.model_masks import label_batch
from boxdepth.models.build import build_model
from tests.conftest import tiny_config


def _record_canvases(model) -> list:
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    return seen


@pytest.mark.parametrize("value", [16, 48, 0])
def test_a_divisibility_the_network_cannot_take_is_refused(tiny_synth, value):
    cfg = tiny_config(tiny_synth, f"input.size_divisibility={value}", "model.fcos.num_classes=2")
    with pytest.raises(ValueError, match=f"input.size_divisibility={value}: must be a multiple of 32"):
        build_model(cfg)


def test_inference_teacher_label_and_predict_pad_to_it(tiny_synth):
    # the 96x64 images at test size 64 are 64x96: 32 pads nothing, 64 pads to 64x128
    cfg = tiny_config(tiny_synth, "input.size_divisibility=64", "model.fcos.num_classes=2")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    seen = _record_canvases(model)
    dataset = build_dataset(cfg, "val", is_train=False)
    inference_on_dataset(model, dataset, torch.device("cpu"), progress=False)
    assert seen and all(c == (64, 128) for c in seen)

    image = np.zeros((64, 96, 3), np.uint8)
    seen.clear()
    detect_image(model, image, TestTransform(64, 128), torch.device("cpu"))
    label_batch(model, [{"image": image, "d01": None, "boxes": np.array([[4, 4, 40, 40]], np.float32)}],
                size=64, max_size=128)
    assert seen == [(64, 128), (64, 128)]

    teacher = ModelEMA(model, 0.9)
    t_seen = _record_canvases(teacher.module)
    sample = dataset[0]
    batch = collate_batch([sample], size_divisibility=64)
    batch["targets"] = [{"size": sample["size"], "flipped": False, "boxes": sample["boxes"]}]
    teacher_predictions(teacher, batch, teacher_size=64, max_size=128, topk=5)
    assert t_seen == [(64, 128)]
