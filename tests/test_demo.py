"""`boxdepth demo` end to end on a tiny dataset and a 2-iteration budget."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from PIL import Image

from boxdepth.cli import main
from tests.conftest import TINY_MODEL

TINY_DEMO = [*TINY_MODEL, "data.num_workers=0", "input.min_size_train=[64]",
             "input.max_size_train=128", "input.min_size_test=64", "input.max_size_test=128",
             "solver.ims_per_batch=2", "solver.max_iter=2", "solver.warmup_iters=1",
             "solver.steps=[1]", "solver.checkpoint_period=0", "log.tensorboard=false"]


def _tiny_demo(monkeypatch, tmp_path, seed: int, variants: list[str], extra=()) -> list[str]:
    """`boxdepth demo` arguments for a 4-image synthetic set and the 2-iteration budget."""
    import boxdepth.demo as demo
    monkeypatch.setattr(demo, "DEMO_DATA", dict(n_train=4, n_val=2, size=(96, 64), seed=seed,
                                                camouflage=0.3, depth_error=1.0))
    args = ["demo", "--out", str(tmp_path), "--quiet", "--variants", *variants]
    for o in [*TINY_DEMO, *extra]:
        args += ["--set", o]
    return args


def test_demo_writes_results_table_and_panel(tmp_path, monkeypatch, capsys):
    import boxdepth.demo as demo
    monkeypatch.setattr(demo, "DEMO_DATA", dict(n_train=6, n_val=3, size=(96, 64), seed=1,
                                                camouflage=0.3, depth_error=1.0))
    args = ["demo", "--out", str(tmp_path), "--quiet", "--variants", "boxinst", "mask_supervised",
            "--seeds", "1", "--jobs", "1"]
    for o in TINY_DEMO:
        args += ["--set", o]
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in ("boxinst", "mask_supervised", "box_as_mask"):
        assert name in out
    # --jobs 1: one run after the other, a line with the demo's ETA before each
    assert "[demo 1/2] boxinst (seed 0); elapsed " in out and "[demo 2/2] mask_supervised (seed 0)" in out
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["command"].startswith("boxdepth") and res["seconds"] > 0
    assert res["machine"]["cpu_count"] >= 1 and res["machine"]["torch"] == torch.__version__
    assert res["train_seconds_total"] == round(sum(r.get("train_seconds", 0) for r in res["rows"]), 1) > 0
    assert [r["variant"] for r in res["rows"]] == ["boxinst", "box_as_mask", "mask_supervised"]
    for row in res["rows"]:
        assert row["seed"] == 0
        for kind in ("bbox", "segm"):
            assert set(row[kind]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert res["config"]["variants"]["mask_supervised"] == [
        "loss.mode=mask", "data.train_json={data}/train_masks.json"]
    assert res["config"]["base"]["solver"]["max_iter"] == 2
    # the quick budget's schedule comes first, the --set overrides after it
    assert res["config"]["extra"][:6] == demo.scaled_schedule(demo.QUICK_BUDGET)
    assert res["config"]["extra"][6:] == TINY_DEMO
    assert (tmp_path / "panel.png").exists()
    # the box-as-mask row scores the same detections with filled boxes: same bbox AP
    boxinst, box_as_mask = res["rows"][0], res["rows"][1]
    assert boxinst["bbox"]["AP"] == box_as_mask["bbox"]["AP"]
    run = tmp_path / "boxinst_seed0"
    for name in ("metrics.json", "results.json", "box_as_mask_metrics.json", "box_as_mask_results.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "box_as_mask_metrics.json").read_text())["segm"]["AP"] == box_as_mask["segm"]["AP"]

    # a second run reuses data and finished runs: no retraining
    ckpt = tmp_path / "boxinst_seed0" / "model_final.pth"
    stamp = ckpt.stat().st_mtime_ns
    assert main(args) == 0
    assert ckpt.stat().st_mtime_ns == stamp


def test_demo_refuses_to_mix_budgets(tmp_path, monkeypatch, capsys):
    args = _tiny_demo(monkeypatch, tmp_path, 1, ["boxinst"])
    assert main(args) == 0
    assert main(args + ["--set", "solver.max_iter=3"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "solver.max_iter: 2 there, 3 now" in err
    # settings a run never read (distillation, switched off) do not force a new run
    assert main(args + ["--set", "distill.ema_decay=0.5"]) == 0
    # a run made before a config key existed: the missing key counts at its default
    saved = tmp_path / "boxinst_seed0" / "config.yaml"
    saved.write_text(saved.read_text().replace("    channels_last: true\n", ""))
    assert "channels_last:" not in saved.read_text()
    assert main(args) == 0
    assert main(args + ["--set", "model.backbone.channels_last=false"]) == 2


def test_demo_depth_variant_trains_with_depth_and_writes_depth_panels(tmp_path, monkeypatch, capsys):
    args = _tiny_demo(monkeypatch, tmp_path, 2, ["boxinst+cons+dg"], ["log.period=1"]) + ["--seeds", "2"]
    assert main(args) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in res["rows"]] == [("boxinst+cons+dg", 0), ("boxinst+cons+dg", 1)]
    summary = res["summary"]["boxinst+cons+dg"]
    assert summary["n"] == 2 and "segm_AP_std" in summary
    from boxdepth.engine.logging import read_metrics
    row = read_metrics(tmp_path / "boxinst+cons+dg_seed0" / "metrics.jsonl")[-1]
    assert "loss_cons" in row and "loss_depth" in row  # depth really used
    assert len(list((tmp_path / "depth_panels").glob("*_panel.png"))) == 2
    assert "±" in capsys.readouterr().out


def test_demo_default_is_the_quick_comparison_and_full_is_table_3():
    import boxdepth.demo as demo
    from boxdepth.cli import parse_cli

    args = parse_cli(["demo"])
    assert args.seeds is None and args.variants is None and not args.full
    assert demo.DEFAULT_VARIANTS == ["boxinst", "distill_match"]
    assert args.jobs is None and parse_cli(["demo", "--jobs", "1"]).jobs == 1
    with pytest.raises(SystemExit):
        parse_cli(["demo", "--jobs", "0"])
    assert demo.DEFAULT_SEEDS == 1 and demo.FULL_SEEDS >= 3
    # every variant but the designed terms' combinations, which run by name
    assert set(demo.VARIANTS) - set(demo.FULL_VARIANTS) == {"boxinst+dg+edge", "boxinst+dg+edge+distill_clean"}
    assert parse_cli(["demo", "--full"]).full
    # the Table 3b rows change only tau_d; the exact-depth rows only the depth folder
    assert demo.VARIANTS["boxinst+cons+dg@tau0.3"] == [*demo.VARIANTS["boxinst+cons+dg"],
                                                        "loss.depth_consistency.tau=0.3"]
    # the audit's readings of L_cons: one override each on the both row, resolved by the config
    for name, key, value in (("kappa1", "kappa", 1.0), ("d01", "kappa", 0.0039216),
                             ("shared", "pairs", "shared"), ("nobox", "inside_box", False)):
        extra = [o for o in demo.VARIANTS[f"boxinst+cons+dg@{name}"] if o not in demo.VARIANTS["boxinst+cons+dg"]]
        assert len(extra) == 1
        cfg = demo.variant_config(f"boxinst+cons+dg@{name}", Path("/d"), 0)
        assert getattr(cfg.loss.depth_consistency, key) == value and cfg.model.depth_head
    assert demo.VARIANTS["distill_match@exact"] == [
        o.replace("{data}/depth", "{exact}/depth") for o in demo.VARIANTS["distill_match"]]
    cfg = demo.variant_config("boxinst+cons@exact", Path("/d/data"), 0)
    assert cfg.data.depth_root == "/d/data_exact/depth" and cfg.data.image_root == "/d/data/images"
    # the designed variants (not the paper's): the gate replaces L_cons's pairs; the last
    # full-method variant keeps the DG head and depth-aware distillation without L_cons
    gated = demo.variant_config("distill_match+gated", Path("/d"), 0)
    assert gated.loss.depth_consistency.pairs == "gated" and gated.distill.match == "depth"
    assert demo.variant_config("boxinst+cons", Path("/d"), 0).loss.depth_consistency.pairs == "separate"
    nocons = demo.variant_config("boxinst+dg+distill_match", Path("/d"), 0)
    assert nocons.loss.depth_consistency.weight == 0 and nocons.model.depth_head and nocons.distill.enabled


def test_demo_clock_eta_from_measured_runs_weights_distillation():
    import boxdepth.demo as demo

    plan = [("boxinst", 0), ("distill_match", 0), ("mask_supervised", 0)]
    cfgs = {n: demo.variant_config(n, Path("/d/data"), 0, ["solver.max_iter=100",
                                                           "distill.start_iter=60"]) for n, _ in plan}
    clock = demo.DemoClock(plan, cfgs)
    assert "ETA after the first trained run" in clock.line(0)
    assert clock.units("boxinst") == 100
    assert clock.units("distill_match") == pytest.approx(100 + 40 * (demo.DISTILL_COST_PRIOR - 1))
    clock.finished("boxinst", 50.0, True, [{"variant": "boxinst"}])  # 0.5 s per plain iteration
    clock.finished("distill_match", 1.0, False, [{"distill_cost_ratio": 2.0}])  # reused: time ignored
    assert clock.units("distill_match") == 140
    clock.t0 -= 60
    line = clock.line(2)
    assert line.startswith("[demo 3/3] mask_supervised (seed 0); elapsed 1m00s")
    assert "ETA 0m50s" in line and "done at ~1m50s" in line


def test_demo_exact_depth_variant_generates_exact_depth_beside_the_data(tmp_path, monkeypatch, capsys):
    args = _tiny_demo(monkeypatch, tmp_path, 3, ["boxinst+dg@exact"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[demo 1/1] boxinst+dg@exact (seed 0)" in out
    exact = json.loads((tmp_path / "data_exact" / "demo_settings.json").read_text())
    assert exact["depth_error"] == 0.0 and exact["seed"] == 3
    saved = (tmp_path / "boxinst+dg@exact_seed0" / "config.yaml").read_text()
    assert str(tmp_path / "data_exact" / "depth") in saved
    # same images, other depth
    img = "images/train/000000.png"
    assert (tmp_path / "data" / img).read_bytes() == (tmp_path / "data_exact" / img).read_bytes()
    d = next((tmp_path / "data" / "depth" / "train").iterdir()).name
    assert (tmp_path / "data" / "depth" / "train" / d).read_bytes() != \
        (tmp_path / "data_exact" / "depth" / "train" / d).read_bytes()


def test_run_timing_splits_plain_and_distillation_windows(tmp_path):
    from boxdepth.demo import run_timing

    logs = [(10, 0.1, 1.0), (20, 0.1, 1.2), (30, 0.1, 1.1), (40, 0.2, 2.0), (50, 0.2, 2.4),
            (40, 0.2, 2.2)]  # a resumed run logs window 40 again: the later line wins
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"iter": i, "time_data": d, "time_step": t}) + "\n" for i, d, t in logs))
    t = run_timing(tmp_path, distill_start=30)
    assert t["train_seconds"] == 10 * (1.1 + 1.3 + 1.2 + 2.4 + 2.6)
    assert t["s_per_iter_plain"] == 1.1 and t["s_per_iter_distill"] == 2.3
    assert abs(t["distill_cost_ratio"] - 2.3 / 1.1) < 1e-12
    assert "distill_cost_ratio" not in run_timing(tmp_path)


def test_demo_distillation_rows_report_their_extra_cost(tmp_path, monkeypatch, capsys):
    args = _tiny_demo(monkeypatch, tmp_path, 3, ["distill_match"], [
        "log.period=1", "solver.max_iter=3", "distill.start_iter=1", "distill.teacher_size=64",
        "distill.teacher_max_size=128"]) + ["--seeds", "1"]
    assert main(args) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    row = res["rows"][0]
    from boxdepth.engine.logging import read_metrics
    logged = read_metrics(tmp_path / "distill_match_seed0" / "metrics.jsonl")
    assert [r["iter"] for r in logged] == [1, 2, 3] and "distill_gt" in logged[-1]
    assert row["s_per_iter_plain"] == logged[0]["time_step"]
    assert row["s_per_iter_distill"] == (logged[1]["time_step"] + logged[2]["time_step"]) / 2
    assert res["summary"]["distill_match"]["distill_cost_ratio_mean"] == row["distill_cost_ratio"]
    assert "a distillation iteration costs" in capsys.readouterr().out
    panel = Image.open(next((tmp_path / "depth_panels").glob("*_panel.png")))
    assert panel.width >= 7 * 96  # image, depth, 2 affinities, masks, instance depth, pseudo masks


def test_demo_quick_default_trains_boxinst_and_the_full_method_side_by_side(tmp_path, monkeypatch, capsys):
    args = _tiny_demo(monkeypatch, tmp_path, 4, [], [
        "log.period=1", "solver.max_iter=3", "distill.start_iter=1", "distill.teacher_size=64",
        "distill.teacher_max_size=128"])
    args.remove("--variants")
    import boxdepth.engine.parallel_runs as parallel_runs
    monkeypatch.setattr(parallel_runs, "thread_budget", lambda: 2)  # the default on a 2-core CPU
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[demo] 2 runs, 2 at a time with 1 thread(s) each" in out
    res = json.loads((tmp_path / "results.json").read_text())
    # rows in table order although the longer run (distillation) started first
    assert [r["variant"] for r in res["rows"]] == ["boxinst", "box_as_mask", "distill_match"]
    assert "distill_cost_ratio" in res["rows"][2]
    for name in ("boxinst", "distill_match"):  # each worker's output went to the run's log
        assert f"[demo] {name} (seed 0): training 3 iterations" in (tmp_path / f"{name}_seed0.log").read_text()
        assert (tmp_path / f"{name}_seed0" / "model_final.pth").exists()
    assert (tmp_path / "panel.png").exists() and (tmp_path / "depth_panels").is_dir()
    # the same demo again, one run after the other: finished runs are reused, same table
    stamp = (tmp_path / "boxinst_seed0" / "model_final.pth").stat().st_mtime_ns
    assert main(args + ["--jobs", "1"]) == 0
    assert (tmp_path / "boxinst_seed0" / "model_final.pth").stat().st_mtime_ns == stamp
    again = json.loads((tmp_path / "results.json").read_text())
    assert [r["segm"] for r in again["rows"]] == [r["segm"] for r in res["rows"]]


def test_designed_depth_term_variants():
    """Issue 23's variants: the depth-edge term and depth-cleaned pseudo masks, never L_cons."""
    import boxdepth.demo as demo

    assert demo.VARIANTS["boxinst+edge"] == ["data.depth_root={data}/depth", "loss.depth_consistency.weight=0.0",
                                             "loss.depth_edge.weight=1.0"]
    want = {"boxinst+edge": (True, False, False), "boxinst+dg+edge": (True, True, False),
            "boxinst+dg+distill_clean": (False, True, True),
            "boxinst+dg+edge+distill_clean": (True, True, True)}
    for name, (edge, dg, clean) in want.items():
        cfg = demo.variant_config(name, Path("/d"), 0)
        assert cfg.data.depth_root == "/d/depth" and cfg.loss.depth_consistency.weight == 0, name
        assert (cfg.loss.depth_edge.weight > 0, cfg.model.depth_head, cfg.distill.depth_clean.enabled) \
            == (edge, dg, clean), name
        assert cfg.distill.enabled == clean and (not clean or cfg.distill.match == "depth"), name
