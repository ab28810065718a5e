"""Phase instrumentation for benchmarks/train_step.py: forward hooks on CondInst's
submodules and wrappers around the loss / distiller functions, each marking a
`common.PhaseTimer` label when it returns (the glue before a call is charged to it).

    instrument_model(model, timer, hooks)        context manager; hooks: TRAIN_HOOKS / INFER_HOOKS
    instrument_functions(module, {name: phase}, timer, prefix="")
                                                 context manager, yields the names not found
    instrument_criterion(timer)                  LOSS_FUNCTIONS of losses/criterion.py
    instrument_distiller(distiller, timer)       DISTILL_FUNCTIONS + the distiller's match
    split_loss_marks(marks) -> (phases, per-function times)
"""
from __future__ import annotations

import contextlib

import common  # noqa: E402  (benchmarks/ is a folder of scripts; train_step.py puts it on sys.path)

# submodule -> (label marked before, label marked after) its forward
TRAIN_HOOKS = {"backbone": ("normalize", "backbone"), "fpn": (None, "fpn"), "fcos_head": (None, "fcos_head"),
               "mask_branch": (None, "mask_branch"), "mask_head": ("proposal_selection", "dynamic_mask_head")}
INFER_HOOKS = {**TRAIN_HOOKS, "mask_head": ("decode_nms", "dynamic_mask_head")}
LOSS_FUNCTIONS = {
    "fcos_losses_from_outputs": "loss_fcos", "boxes_to_stride_masks": "loss_prj",
    "projection_loss": "loss_prj", "bottom_pixels_mask": "loss_pairwise",
    "pairwise_neg_log_same": "loss_pairwise", "rgb_to_lab": "loss_pairwise",
    "color_similarity": "loss_pairwise", "pairwise_loss": "loss_pairwise",
    "instance_depth_loss": "loss_depth", "depth_similarity": "loss_cons",
    "depth_consistency_loss": "loss_cons", "dice_loss": "loss_mask"}

# distiller-module function -> phase (the glue before a call is charged to it, as for losses)
# (the box masks come from the criterion's step maps, losses/step_maps.py: charged there once)
DISTILL_FUNCTIONS = {"teacher_predictions": "teacher_forward", "pseudo_targets_for_proposals": "reliable_dice",
                     "reliable_dice_loss": "reliable_dice"}
# where CondInstCriterion's path calls the LOSS_FUNCTIONS from (each module's own global name)
CRITERION_MODULES = ("boxdepth.losses.criterion", "boxdepth.losses.mask_inputs", "boxdepth.losses.step_maps")


@contextlib.contextmanager
def instrument_model(model, timer: common.PhaseTimer, hooks: dict):
    handles = []
    for name, (before, after) in hooks.items():
        mod = getattr(model, name)
        if before:
            handles.append(mod.register_forward_pre_hook(lambda *_, lab=before: timer.mark(lab)))
        handles.append(mod.register_forward_hook(lambda *_, lab=after: timer.mark(lab)))
    assigner = model.target_assigner
    model.target_assigner = common.marked(assigner, timer, "target_assignment")
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        model.target_assigner = assigner


@contextlib.contextmanager
def instrument_functions(module, functions: dict[str, str], timer: common.PhaseTimer, prefix: str = ""):
    """Wrap `module`'s functions {name: phase} to mark '<phase>/<prefix><name>' after each call;
    yields the names it could not find."""
    saved = {n: getattr(module, n) for n in functions if hasattr(module, n)}
    for name, fn in saved.items():
        setattr(module, name, common.marked(fn, timer, f"{functions[name]}/{prefix}{name}"))
    try:
        yield sorted(set(functions) - set(saved))
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)


@contextlib.contextmanager
def instrument_criterion(timer: common.PhaseTimer):
    """Wrap the loss functions CondInstCriterion calls, in every module of CRITERION_MODULES
    that names them; yields the names found in none of them."""
    import importlib

    with contextlib.ExitStack() as stack:
        missing = set(LOSS_FUNCTIONS)
        for name in CRITERION_MODULES:
            module = importlib.import_module(name)
            missing &= set(stack.enter_context(instrument_functions(module, LOSS_FUNCTIONS, timer)))
        yield sorted(missing)


@contextlib.contextmanager
def instrument_distiller(distiller, timer: common.PhaseTimer):
    """Wrap what `SelfDistiller.forward` calls (module functions and its own `match`)."""
    import boxdepth.distill.distiller as dmod
    distiller.match = common.marked(distiller.match, timer, "match")  # instance attribute shadows the method
    try:
        with instrument_functions(dmod, DISTILL_FUNCTIONS, timer, prefix="distill.") as missing:
            yield missing
    finally:
        del distiller.match


def split_loss_marks(marks: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """'loss_x/fn' marks -> (phases with loss terms summed, per-function times)."""
    phases, funcs = {}, {}
    for label, t in marks.items():
        if "/" in label:
            term, fn = label.split("/", 1)
            phases[term] = phases.get(term, 0.0) + t
            funcs[fn] = funcs.get(fn, 0.0) + t
        else:
            phases[label] = phases.get(label, 0.0) + t
    return phases, funcs
