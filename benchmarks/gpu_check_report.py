"""What `gpu_check.py` keeps of each section's output: `read_result(section, work)` reads
the JSON (or JUnit XML) a section wrote into the scratch folder and returns its headline
numbers (plus "raw", the whole file, for train_step runs); `summary` collects the
headlines of all sections; `section_line` / `format_summary` print them.
Standard library only.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _ms(seconds):
    return None if seconds is None else round(1000.0 * seconds, 1)


def _mib(v):
    return None if v is None else round(v, 1)


def pytest_result(xml: Path) -> dict:
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        msg = next((c.get("message") for c in case if c.tag in ("failure", "error", "skipped")), None)
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": (msg or "")[:300] or None})
    count = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    count["passed"] = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    return {**count, "cases": cases}


def train_result(path: Path) -> dict:
    """Headlines of one train_step.py setting: img/s of the unmarked step (train_step_e2e,
    else the marked one), peak CUDA memory (torch.cuda.max_memory_allocated), inference."""
    d = json.loads(path.read_text())
    r = d["results"][0]
    s, tr, e2e, mem, inf = r["setting"], r["train"], r["train_step_e2e"], r["memory"], r["inference"]
    best = e2e or tr
    return {"device": s["device"], "hw": s["hw"], "padded_hw": s["padded_hw"], "batch": s["batch"],
            "amp": s["amp"], "img_s": best["images_per_s"], "step_ms": _ms(best["total"]["median"]),
            "img_s_marked": tr["images_per_s"], "step_ms_marked": _ms(tr["total"]["median"]),
            "peak_allocated_mib": _mib(mem.get("cuda_peak_allocated_mib_train")),
            "peak_reserved_mib": _mib(mem.get("cuda_peak_reserved_mib_train")),
            "groups_ms": {g: _ms(v["median"]) for g, v in tr["groups"].items()},
            "losses": tr["losses"],
            "inference": {"img_s": inf["images_per_s"], "ms": _ms(inf["total"]["median"]),
                          "detections": inf["detections"],
                          "peak_allocated_mib": _mib(mem.get("cuda_peak_allocated_mib_inference"))},
            "raw": d}


def distill_result(path: Path) -> dict:
    out = train_result(path)
    dd, batch = out["raw"]["results"][0]["distill"], out["batch"]
    mem = out["raw"]["results"][0]["memory"]
    med = dd["total"]["median"]
    out["distill"] = {"img_s": batch / med if med else None, "step_ms": _ms(med),
                      "distill_over_plain": dd["distill_over_plain"], "teacher_size": dd["teacher_size"],
                      "peak_allocated_mib": _mib(mem.get("cuda_peak_allocated_mib_distill")),
                      "groups_ms": {g: _ms(v["median"]) for g, v in dd["groups"].items()}}
    return out


def demo_result(folder: Path) -> dict:
    d = json.loads((folder / "results.json").read_text())
    row = next(r for r in d["rows"] if r["variant"] == "boxinst")
    extra = dict(o.split("=", 1) for o in d["config"]["extra"] if "=" in o)
    data_s, prev = 0.0, 0
    metrics = folder / "boxinst_seed0" / "metrics.jsonl"
    for line in (metrics.read_text().splitlines() if metrics.exists() else []):
        r = json.loads(line)
        data_s, prev = data_s + r["time_data"] * (r["iter"] - prev), r["iter"]
    return {"iterations": int(extra.get("solver.max_iter", 0)),
            "batch": d["config"]["base"]["solver"]["ims_per_batch"], "device": d["config"]["base"]["device"],
            "train_seconds": row["train_seconds"], "data_seconds": round(data_s, 1),
            "s_per_iter": row["s_per_iter"], "seconds_whole_demo": d["seconds"],
            "box_AP": row["bbox"]["AP"], "mask_AP": row["segm"]["AP"], "command": d["command"]}


def read_result(sec: dict, work: Path) -> dict:
    kind, name = sec["kind"], sec["name"]
    if kind == "env":
        return {k: v for k, v in json.loads((work / "env.json").read_text()).items() if k != "command"}
    if kind == "pytest":
        return pytest_result(work / "cuda_tests.xml")
    if kind == "train":
        return train_result(work / f"{name}.json")
    if kind == "distill":
        return distill_result(work / f"{name}.json")
    if kind == "ddp":
        return json.loads((work / "ddp.json").read_text())
    if kind == "demo":
        return demo_result(work / "demo")
    raise ValueError(f"no reader for section kind {kind!r}")


def headline(sec: dict) -> dict | None:
    r, name = sec.get("result"), sec["name"]
    if not r:
        return None
    if name == "env":
        g = r.get("gpu") or {}
        return {"gpu": g.get("name"), "driver": g.get("driver"), "torch": r["env"]["torch"],
                "cuda": r["env"].get("cuda"), "nccl": g.get("nccl"), "python": r["env"]["python"]}
    if name == "cuda_tests":
        return {"passed": r["passed"], "failed": r["failures"], "errors": r["errors"], "skipped": r["skipped"]}
    if "img_s" in r:
        keys = ("img_s", "step_ms", "peak_allocated_mib", "batch", "amp", "padded_hw")
        out = {k: r[k] for k in keys}
        return out | ({"distill": {k: r["distill"][k] for k in ("img_s", "step_ms", "distill_over_plain",
                                                             "peak_allocated_mib")}} if "distill" in r else {})
    if name == "ddp":
        return {k: r.get(k) for k in ("backend", "world_size", "sync_bn", "s_per_iter", "train_seconds", "ok")}
    if name == "demo":
        return {k: r[k] for k in ("iterations", "batch", "train_seconds", "data_seconds", "mask_AP", "box_AP")}
    return {k: v for k, v in r.items() if k in ("found", "chosen", "importable")}


def summary(sections: list[dict]) -> dict:
    out = {"status": {s["name"]: s["status"] for s in sections}}
    for s in sections:
        h = headline(s)
        if h is not None:
            out[s["name"]] = h
    inf = next((s["result"]["inference"] for s in sections
                if s.get("result") and "inference" in s["result"]), None)
    if inf:  # one image at the train_step size (800x1067 on the device), fp32, postprocess included
        hw = next(s["result"]["hw"] for s in sections if s.get("result") and "inference" in s["result"])
        out["inference"] = {"hw": hw, **{k: inf[k] for k in ("img_s", "ms", "detections", "peak_allocated_mib")}}
    return out


def section_line(sec: dict) -> str:
    line = f"[gpu_check] {sec['name']}: {sec['status']}"
    if sec.get("seconds") is not None:
        line += f" in {sec['seconds']} s (cap {sec['cap_s']} s)"
    h = headline(sec)
    if h:
        line += " " + json.dumps(h)
    if sec.get("error"):
        line += "\n  " + sec["error"].strip().splitlines()[-1][:300]
    return line


def format_summary(out: dict) -> str:
    lines = [f"== gpu_check{' --dry-run' if out['dry_run'] else ''}: {out['seconds']:.0f} s of the "
             f"{out['budget_s']:.0f} s budget =="]
    for name, status in out["summary"].get("status", {}).items():
        h = out["summary"].get(name)
        lines.append(f"{name:<14}{status:<9}{json.dumps(h) if h else ''}")
    if "inference" in out["summary"]:
        lines.append(f"{'inference':<23}{json.dumps(out['summary']['inference'])}")
    return "\n".join(lines)
