"""Distillation inside the training loop: the teacher starts at distill.start_iter, follows
the student by EMA, lands in checkpoints, survives --resume exactly and is what
evaluation uses."""
from __future__ import annotations

import torch

from boxdepth.engine.checkpoint import load_checkpoint
from boxdepth.engine.inference import load_trained_model
from boxdepth.engine.logging import read_metrics
from boxdepth.engine.trainer import train
from tests.conftest import tiny_config

DISTILL = ("distill.enabled=true", "distill.start_iter=2", "distill.teacher_size=80",
           "distill.teacher_max_size=160", "distill.ema_decay=0.9", "distill.tau_m=0.0",
           "model.depth_head=true")


def test_teacher_starts_logs_and_resumes_exactly(tiny_synth, tmp_path):
    straight = train(tiny_config(tiny_synth, *DISTILL, depth=True), tmp_path / "a", progress=False)
    ckpt = load_checkpoint(straight)
    assert ckpt["teacher"] is not None
    early = load_checkpoint(tmp_path / "a" / "model_0000002.pth")
    assert early["teacher"] is None  # checkpoint taken before distill.start_iter's step
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert "loss_distill" not in rows[1] and "loss_distill" in rows[2]
    for key in ("distill_gt", "distill_matched", "distill_reliable", "distill_s_match",
                "distill_s_dcons"):
        assert key in rows[-1]
    assert rows[-1]["distill_matched"] <= rows[-1]["distill_gt"]
    # teacher != student, and it is the EMA of the student: not equal to either raw weights
    t, s = ckpt["teacher"], ckpt["model"]
    assert any(not torch.equal(t[k], s[k]) for k in s if s[k].is_floating_point())

    train(tiny_config(tiny_synth, *DISTILL, "solver.max_iter=3", depth=True), tmp_path / "b",
          progress=False)
    resumed = train(tiny_config(tiny_synth, *DISTILL, depth=True), tmp_path / "b", resume=True,
                    progress=False)
    r = load_checkpoint(resumed)
    for k in t:
        torch.testing.assert_close(r["teacher"][k], t[k], rtol=1e-5, atol=1e-6, msg=k)

    teacher_model, _, _ = load_trained_model(straight)
    student_cfg = tiny_config(tiny_synth, *DISTILL, "eval.model=student", depth=True)
    student_cfg.model.fcos.num_classes = 4
    student_model, _, _ = load_trained_model(straight, cfg=student_cfg)
    name = next(k for k in s if s[k].is_floating_point() and not torch.equal(t[k], s[k]))
    assert torch.equal(teacher_model.state_dict()[name], t[name])
    assert torch.equal(student_model.state_dict()[name], s[name])


def _decoded(dataset, image_id: int) -> torch.Tensor:
    index = next(i for i in range(len(dataset)) if dataset.get_record(i)["image_id"] == image_id)
    return torch.from_numpy(dataset.read_image(index)).permute(2, 0, 1)


def test_training_batches_feed_the_teacher_the_decoded_images(tiny_synth):
    """build_train_loader -> train_step -> SelfDistiller: the teacher reads each decoded
    image (flipped like its student) at teacher_size, not the student's 2x-smaller copy
    up-sampled; without distillation the batches carry no originals."""
    from boxdepth.distill.teacher import teacher_inputs
    from boxdepth.distill.build import build_distiller
    from boxdepth.engine.trainer import build_train_loader, build_training, train_step
    from tests.test_distill_teacher import CaptureTeacher

    small = ("input.min_size_train=[32]", "input.flip_prob=0.5", "model.fcos.num_classes=4")
    plain = build_train_loader(tiny_config(tiny_synth, *small))
    assert next(iter(plain))["originals"] is None
    cfg = tiny_config(tiny_synth, *small, *DISTILL, "solver.ims_per_batch=4", depth=True)
    loader = build_train_loader(cfg)
    batch = next(iter(loader))
    targets, dataset = batch["targets"], loader.dataset.dataset
    assert {t["flipped"] for t in targets} == {False, True}  # this seed draws both
    originals = [_decoded(dataset, t["image_id"]) for t in targets]
    assert all(torch.equal(o, b) for o, b in zip(originals, batch["originals"]))

    class Teacher(CaptureTeacher):
        def update(self, model):
            pass

    teacher = Teacher()
    model, criterion, optimizer, scheduler, scaler = build_training(cfg, torch.device("cpu"))
    train_step(model, criterion, optimizer, scheduler, scaler, batch, iteration=2,
               distiller=build_distiller(cfg), teacher=teacher)
    want = teacher_inputs(originals, flipped=[t["flipped"] for t in targets], teacher_size=80,
                          max_size=160)["images"]
    assert torch.equal(teacher.seen[0], want)
    old = teacher_inputs(batch["images"], sizes=[t["size"] for t in targets], teacher_size=80,
                         max_size=160)["images"]
    assert not torch.equal(old, want)
