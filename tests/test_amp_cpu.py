"""benchmarks/amp_cpu.py without training: CPU flags from /proc/cpuinfo text, rounds that
alternate fp32 and bf16, the ratio and the JSON it documents."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("amp_cpu", REPO / "benchmarks" / "amp_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu avx2 avx512f avx512_bf16
processor\t: 1
model name\t: Some CPU
flags\t\t: fpu avx2 avx512f avx512_bf16
"""


def test_cpu_flags_read_from_cpuinfo():
    got = _load().cpu_flags(CPUINFO)
    assert got["model"] == "Some CPU"
    assert got["flags"] == {"avx512_bf16": True, "amx_bf16": False, "amx_tile": False, "avx512f": True,
                            "avx2": True}
    assert isinstance(got["torch_cpu_capability"], str)


def test_rounds_alternate_and_ratio_is_bf16_over_fp32(tmp_path, monkeypatch):
    mod = _load()
    calls = []

    def fake_run(preset, amp, a):
        calls.append((preset, amp))
        return 300.0 if amp else 100.0

    monkeypatch.setattr(mod, "one_run", fake_run)
    out = tmp_path / "amp.json"
    assert mod.main(["--presets", "demo", "--rounds", "3", "--iters", "1", "--threads", "1",
                     "--out", str(out)]) == 0
    assert calls == [("demo", False), ("demo", True), ("demo", True), ("demo", False),
                     ("demo", False), ("demo", True)]
    r = json.loads(out.read_text())
    assert r["presets"]["demo"]["bf16_over_fp32"] == 3.0
    assert r["presets"]["demo"]["runs_ms"] == {"fp32": [100.0] * 3, "bf16": [300.0] * 3}
    assert r["command"].startswith("python benchmarks/amp_cpu.py --presets demo")
    assert set(r["cpu"]["flags"]) == {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"}


def test_training_warns_where_the_cpu_has_no_native_bf16():
    from boxdepth.engine.amp import cpu_bf16_warning
    from boxdepth.engine.machine import cpu_flags

    avx2_only, native = cpu_flags("flags\t: fpu avx2 fma"), cpu_flags(CPUINFO)
    assert "without native bfloat16" in cpu_bf16_warning("cpu", True, avx2_only)
    assert cpu_bf16_warning("cpu", True, native) is None  # avx512_bf16
    assert cpu_bf16_warning("cpu", True, {"amx_bf16"}) is None
    assert cpu_bf16_warning("cpu", False, avx2_only) is None  # float32
    assert cpu_bf16_warning("cuda", True, avx2_only) is None  # fp16 on the GPU
