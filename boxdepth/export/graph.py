"""The part of CondInst that is exported: backbone, FPN, FCOS head, mask branch.

`DenseCondInst(model)` wraps a trained `CondInst` (eval mode) for tracing:
    forward(images uint8 (B, 3, Hp, Wp) RGB, image_mask bool (B, Hp, Wp))
      -> tuple, in the order of `output_names(num_levels)`:
         cls_logits_<l>  (B, K, H_l, W_l)     for l = 0..L-1 (P3..P7)
         bbox_reg_<l>    (B, 4, H_l, W_l)     relu(scale * x), in units of the level stride
         ctrness_<l>     (B, 1, H_l, W_l)
         controller_<l>  (B, P, H_l, W_l)     dynamic mask head parameters per location
         mask_feats      (B, C_mask, Hp/8, Wp/8)
Hp, Wp are multiples of 32 and H_l = Hp / stride_l. Normalisation (mean/std, BGR flip,
zeroed padding) is inside the graph, so the exported file takes raw pixels.

Everything after these maps depends on the data (thresholding, top-k, NMS, a grouped
convolution with one group per detection) and stays in Python: see runner.py.
"""
from __future__ import annotations

import torch
from torch import nn

HEAD_KEYS = ("cls_logits", "bbox_reg", "ctrness", "controller")
INPUT_NAMES = ("images", "image_mask")


def output_names(num_levels: int) -> list[str]:
    return [f"{k}_{l}" for k in HEAD_KEYS for l in range(num_levels)] + ["mask_feats"]


def split_outputs(outputs, num_levels: int) -> tuple[dict, torch.Tensor]:
    """The flat output sequence -> (FCOSHead-style dict of per-level lists, mask_feats)."""
    outputs = list(outputs)
    if len(outputs) != len(HEAD_KEYS) * num_levels + 1:
        raise ValueError(f"exported model gave {len(outputs)} outputs, expected "
                         f"{len(HEAD_KEYS) * num_levels + 1} for {num_levels} levels")
    head_out = {k: outputs[i * num_levels:(i + 1) * num_levels] for i, k in enumerate(HEAD_KEYS)}
    return head_out, outputs[-1]


class DenseCondInst(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        if model.fcos_head.controller is None:
            raise ValueError("DenseCondInst: the model has no controller (no dynamic mask head)")
        self.model = model
        # eval for good: a tracer that runs the wrapper in training mode would update BN
        # running statistics (seen with the legacy ONNX exporter)
        self.eval()

    def train(self, mode: bool = True) -> "DenseCondInst":
        return super().train(False)

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head_out, mask_feats = self.model.dense(images, image_mask)
        return tuple(t for k in HEAD_KEYS for t in head_out[k]) + (mask_feats,)
