"""Depth-guided mask losses: instance depth (Eq. 2) and depth consistency (Eqs. 3-4).

Units (SPEC §0): ``d01`` pseudo inverse depth in [0,1] for Eq. 2 and
``d255 = 255 * d01`` for the similarity of Eq. 3; both average-pooled to the
stride-4 mask resolution by the caller.

Shapes (N instances, K = kernel_size**2 - 1 neighbours):
    depth_similarity(depth255 (N,1,H,W), image_mask (N,H,W)|(N,1,H,W), k, d, kappa)
                                                          -> (N,K,H,W)
    instance_depth_loss(depth_probs (N,1,H,W), depth01 (N,1,H,W), box_masks (N,1,H,W))
                                                          -> scalar
    depth_consistency_loss(neg_log_same (N,K,H,W), depth_sim (N,K,H,W),
                           box_masks (N,1,H,W), tau, inside_box=True, image_mask=None)
                                                          -> scalar
    depth_pair_weights(depth_sim (N,K,H,W), box_masks (N,1,H,W), tau, inside_box=True,
                       image_mask=None)                   -> (N,K,H,W) w_d
    joint_pair_losses(mode, neg_log_same (N,K,H,W), colour_w (N,K|1,H,W) | None,
                      depth_w (N,K,H,W))                  -> (colour scalar, cons scalar)

How L_cons combines with BoxInst's colour pairs is `loss.depth_consistency.pairs`
(PAIR_MODES; benchmarks/README.md, "Fidelity audit", item 1): `separate` is SPEC §2
(`pairwise_loss` + `depth_consistency_loss`, each with its own normaliser), the others
are `joint_pair_losses` (the criterion reaches them through losses/pair_modes.py).
"""
from __future__ import annotations

import torch

from boxdepth.ops.pairwise import neighbour_mask, unfold_wo_center

# values of loss.depth_consistency.pairs; the first is the default (SPEC §2, Eq. 6)
PAIR_MODES = ("separate", "shared", "complement", "gated")


def depth_similarity(depth255: torch.Tensor, image_mask: torch.Tensor, kernel_size: int,
                     dilation: int, kappa: float) -> torch.Tensor:
    """``S_d = exp(-kappa * |d255_i - d255_j|)`` times the neighbour's image mask (Eq. 3).

    kappa = 1 is the paper's Eq. 3; the default config kappa = 0.5 follows
    the reference code (SPEC §2).
    """
    if depth255.dim() != 4 or depth255.size(1) != 1:
        raise ValueError(
            "boxdepth/losses/depth.py: depth_similarity needs depth255 (N,1,H,W), "
            f"got {tuple(depth255.shape)}"
        )
    neighbours = unfold_wo_center(depth255, kernel_size, dilation)[:, 0]  # (N,K,H,W)
    sim = torch.exp(-kappa * (depth255 - neighbours).abs())
    return sim * neighbour_mask(image_mask, depth255, kernel_size, dilation)


def instance_depth_loss(depth_probs: torch.Tensor, depth01: torch.Tensor,
                        box_masks: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean over instances of the in-box mean of ``(P_depth - d01)^2``.

    Instances whose box mask is empty at this resolution are left out; with
    none left the result is a zero that keeps ``depth_probs`` in the graph.
    """
    if not (depth_probs.shape == depth01.shape == box_masks.shape) or depth_probs.dim() != 4:
        raise ValueError(
            "boxdepth/losses/depth.py: instance_depth_loss needs depth_probs, depth01 and "
            f"box_masks of equal shape (N,1,H,W), got {tuple(depth_probs.shape)}, "
            f"{tuple(depth01.shape)} and {tuple(box_masks.shape)}"
        )
    box = box_masks.to(dtype=depth_probs.dtype)
    sq_err = (depth_probs - depth01.to(dtype=depth_probs.dtype)) ** 2
    area = box.flatten(1).sum(dim=1)
    per_inst = (sq_err * box).flatten(1).sum(dim=1) / area.clamp(min=1.0)
    # masked mean instead of indexing: no host sync, and 0 (in the graph) when none valid
    valid = (area > 0).to(dtype=per_inst.dtype)
    return (per_inst * valid).sum() / valid.sum().clamp(min=1.0)


def depth_pair_weights(depth_sim: torch.Tensor, box_masks: torch.Tensor, tau: float,
                       inside_box: bool = True, image_mask: torch.Tensor | None = None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """Active depth pairs ``w_d = [S_d > tau] * box * centre`` (N,K,H,W) in ``dtype``
    (default ``depth_sim``'s); the box and centre factors as in `depth_consistency_loss`."""
    w = (depth_sim > tau).to(dtype=dtype or depth_sim.dtype)
    if inside_box:
        w = w * box_masks.to(dtype=w.dtype)
    if image_mask is not None:
        centre = image_mask[:, None] if image_mask.dim() == 3 else image_mask
        w = w * centre.to(dtype=w.dtype)
    return w


def depth_consistency_loss(neg_log_same: torch.Tensor, depth_sim: torch.Tensor,
                           box_masks: torch.Tensor, tau: float, inside_box: bool = True,
                           image_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4: ``sum(-log P(same) * w_d) / max(sum(w_d), 1)``, ``w_d = [S_d > tau] * box``.

    With ``inside_box=False`` the box mask is not applied; pass ``image_mask``
    ((N,H,W) or (N,1,H,W), the centre pixel's validity) so that pixels in
    the padding are not counted as centres. ``depth_sim`` already carries the
    neighbour's image mask.
    """
    if neg_log_same.shape != depth_sim.shape:
        raise ValueError(
            "boxdepth/losses/depth.py: neg_log_same and depth_sim must have equal shape "
            f"(N,K,H,W), got {tuple(neg_log_same.shape)} and {tuple(depth_sim.shape)}"
        )
    w = depth_pair_weights(depth_sim, box_masks, tau, inside_box, image_mask,
                           dtype=neg_log_same.dtype)
    return (neg_log_same * w).sum() / w.sum().clamp(min=1.0)


def _weighted_mean(neg_log_same: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    w = w.to(dtype=neg_log_same.dtype).expand_as(neg_log_same)
    return (neg_log_same * w).sum() / w.sum().clamp(min=1.0)


def joint_pair_losses(mode: str, neg_log_same: torch.Tensor, colour_w: torch.Tensor | None,
                      depth_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour term and L_cons of a `loss.depth_consistency.pairs` mode other than
    `separate`, unweighted and on one set of pairs -> (colour scalar, cons scalar).

    neg_log_same (N,K,H,W); colour_w (N,K|1,H,W) 0/1 colour pairs ``w_c = [S_c >= thr] *
    box``, or None when the colour term is switched off (it then has no pairs);
    depth_w (N,K,H,W) 0/1: ``w_d`` (`depth_pair_weights`), except for `gated`, where it
    is the depth gate ``g`` (1 where depth agrees, and wherever there is no depth):
        shared      n = max(sum w_c + sum w_d, 1): (sum nls*w_c / n, sum nls*w_d / n), so
                    the two add up to one pairwise term over both pair sets
        complement  w_d' = w_d * (1 - w_c): (L_pair, sum nls*w_d' / max(sum w_d', 1)),
                    depth adds only the pairs colour does not see
        gated       (sum nls*w_c*g / max(sum w_c*g, 1), 0): no term of its own; the 0
                    keeps the graph (and the logged key)
    """
    if mode not in PAIR_MODES[1:]:
        raise ValueError(f"boxdepth/losses/depth.py: joint_pair_losses mode must be one of "
                         f"{', '.join(PAIR_MODES[1:])}, got {mode!r}")
    w_d = depth_w.to(dtype=neg_log_same.dtype)
    if colour_w is None:  # no colour pairs: every mode keeps only its depth side
        w_c = torch.zeros((), dtype=neg_log_same.dtype, device=neg_log_same.device)
    else:
        w_c = colour_w.to(dtype=neg_log_same.dtype).expand_as(neg_log_same)
    if mode == "shared":
        n = (w_c.sum() + w_d.sum()).clamp(min=1.0)
        return (neg_log_same * w_c).sum() / n, (neg_log_same * w_d).sum() / n
    if mode == "complement":
        return _weighted_mean(neg_log_same, w_c), _weighted_mean(neg_log_same, w_d * (1 - w_c))
    return _weighted_mean(neg_log_same, w_c * w_d), neg_log_same.sum() * 0
