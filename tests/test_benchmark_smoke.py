"""benchmarks/train_step.py in its tiniest mode: it runs, writes the JSON it documents, and
its phase split accounts for the whole iteration. No timing values are asserted."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "train_step.py"
TINY = ["--preset", "small", "--sizes", "64", "--iters", "2", "--warmup", "0", "--threads", "1",
        "--boxes", "2", "--set", "model.backbone.width=8", "--set", "model.mask_branch.channels=16"]


def _run(tmp_path, *extra):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, *extra, "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_train_step_benchmark_tiny(tmp_path):
    data, stdout = _run(tmp_path)
    assert set(data) == {"benchmark", "command", "args", "env", "results"}
    for key in ("torch", "device_name", "torch_threads", "allocator_env", "cpu_model", "date", "git"):
        assert key in data["env"]
    assert {"MALLOC_ARENA_MAX", "LD_PRELOAD", "PYTORCH_CUDA_ALLOC_CONF"} <= set(data["env"]["allocator_env"])
    assert data["env"]["torch_threads"] == 1
    (r,) = data["results"]
    assert set(r) == {"setting", "model", "inference", "train", "train_step_e2e", "distill", "memory",
                      "wall_s"}
    assert r["distill"] is None  # only with --distill
    s = r["setting"]
    assert s["hw"] == [64, 85] and s["padded_hw"] == [64, 96] and s["backbone"] == "small"
    tr = r["train"]
    assert tr["total"]["n"] == 2 and tr["images_per_s"] > 0
    expected_groups = {"batch_to_device", "backbone_fpn", "heads", "losses", "loss_sync", "backward",
                       "optimizer"}
    assert set(tr["groups"]) == expected_groups  # no unlabelled "other" time
    for phase in ("backbone", "fpn", "fcos_head", "mask_branch", "target_assignment",
                  "dynamic_mask_head", "loss_fcos", "loss_prj", "loss_pairwise", "backward",
                  "optimizer_step"):
        assert tr["phases"][phase]["median"] > 0, phase
    assert "loss_depth" not in tr["phases"] and "loss_cons" not in tr["phases"]
    assert tr["uninstrumented_loss_functions"] == []
    inf = r["inference"]
    assert inf["total"]["n"] == 2 and inf["detections"] > 0
    assert set(inf["groups"]) == {"to_device", "backbone_fpn", "heads", "postprocess"}
    assert r["memory"]["kind"] == "cpu_ru_maxrss"
    assert r["memory"]["rss_peak_mib_after_train"] >= r["memory"]["rss_peak_mib_baseline"] > 0
    assert r["train_step_e2e"] is None  # CPU default: no extra end-to-end iterations
    assert "backbone_fpn" in stdout and "images/s" in stdout


def test_train_step_benchmark_depth_variant_and_e2e(tmp_path):
    data, _ = _run(tmp_path, "--depth-head", "--depth-loss", "--e2e-iters", "1", "--iters", "1")
    r = data["results"][0]
    assert r["setting"]["depth_head"] and r["setting"]["depth_loss"]
    tr = r["train"]
    for term in ("loss_depth", "loss_cons"):
        assert term in tr["losses"] and tr["phases"][term]["median"] > 0
    # one iteration, so medians are the values: every phase sits in exactly one group
    # (none lost, none counted twice) and the phases make up the whole step
    total = tr["total"]["median"]
    assert sum(g["median"] for g in tr["groups"].values()) == pytest.approx(total, rel=1e-9)
    assert sum(p["median"] for p in tr["phases"].values()) == pytest.approx(total, rel=1e-9)
    fn_sum = sum(f["median"] for f in tr["loss_functions"].values())
    loss_terms = ("loss_fcos", "loss_prj", "loss_pairwise", "loss_depth", "loss_cons")
    assert fn_sum == pytest.approx(sum(tr["phases"][t]["median"] for t in loss_terms), rel=1e-9)
    assert r["train_step_e2e"]["total"]["n"] == 1


def test_train_step_benchmark_distill(tmp_path):
    data, stdout = _run(tmp_path, "--distill", "--iters", "1", "--set", "distill.teacher_size=96",
                        "--set", "distill.teacher_max_size=128")
    r = data["results"][0]
    d = r["distill"]
    assert d["teacher_size"] == 96 and d["teacher_max_size"] == 128 and d["total"]["n"] == 1
    assert set(d["groups"]) == {"student_forward_losses", "teacher_forward", "match", "reliable_dice",
                                "loss_sync", "backward", "optimizer", "ema_update"}
    for phase in ("backbone", "loss_fcos", "teacher_forward", "match", "reliable_dice", "backward",
                  "optimizer_step", "ema_update"):
        assert d["phases"][phase]["median"] > 0, phase
    assert "loss_distill" in d["losses"] and d["uninstrumented_loss_functions"] == []
    # one iteration: the groups make up the whole distillation step, and the ratio is
    # exactly the two medians of this run
    total = d["total"]["median"]
    assert sum(g["median"] for g in d["groups"].values()) == pytest.approx(total, rel=1e-9)
    ratio = d["distill_over_plain"]
    assert isinstance(ratio, float) and ratio > 0
    assert ratio == pytest.approx(total / r["train"]["total"]["median"], rel=1e-12)
    assert "distill_over_plain" in stdout and "teacher_forward" in stdout


def test_train_step_benchmark_honours_solver_amp_on_the_cpu(tmp_path):
    """solver.amp=true is bf16 autocast on the CPU in both the split and the end-to-end step:
    the same batch and weights then give other (bf16-rounded) losses than float32."""
    fp32, _ = _run(tmp_path, "--iters", "1", "--e2e-iters", "1")
    bf16, stdout = _run(tmp_path, "--iters", "1", "--e2e-iters", "1", "--set", "solver.amp=true")
    a, b = fp32["results"][0], bf16["results"][0]
    assert a["setting"]["amp"] is False and b["setting"]["amp"] is True and "amp=True" in stdout
    la, lb = a["train"]["losses"], b["train"]["losses"]
    assert la.keys() == lb.keys()
    assert any(abs(la[k] - lb[k]) > 1e-6 for k in la)
    assert all(abs(la[k] - lb[k]) < 0.05 * max(abs(la[k]), 1.0) for k in la)  # rounding, not a bug


def test_winograd_bench_writes_its_table(tmp_path, monkeypatch):
    """The per-conv part on a tiny shape (the R-50 step part is left out: --step-sizes
    with no size); the JSON holds both timings and their ratio for each shape."""
    import json
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import winograd_bench
    monkeypatch.setattr(winograd_bench, "CONV_SHAPES", [(8, 8, 6, 10)])
    out = tmp_path / "w.json"
    winograd_bench.main(["--rounds", "1", "--threads", "1", "--step-sizes", "--json", str(out)])
    data = json.loads(out.read_text())
    (row,) = data["convs"]
    assert row["c_in"] == 8 and row["hw"] == [6, 10] and row["direct_ms"] > 0 and row["winograd_ms"] > 0
    assert abs(row["speedup"] - row["direct_ms"] / row["winograd_ms"]) < 1e-9
    assert data["step"] == {} and data["environment"]["torch_threads"] == 1
