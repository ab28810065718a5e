"""engine/allocator.py: with glibc, freed tensor memory is reused instead of page-faulted in
again. Counted in fresh processes with getrusage's minor faults over five training steps
of a small conv net (8 MiB activations) after five warm-up steps: glibc's defaults map and
touch each step's activations anew (about 18 000 faults a step measured), kept memory
(almost) never."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys, torch
from boxdepth.engine.allocator import keep_freed_memory
did = keep_freed_memory() if sys.argv[1] == "tune" else "untouched"
torch.manual_seed(0)
net = torch.nn.Sequential(*[m for _ in range(3) for m in (torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU())])
x = torch.randn(4, 32, 128, 128)  # 8 MiB activations
def step():
    net(x).square().mean().backward()
for _ in range(5):  # the heap grows to its working size in the first steps
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps({"did": did, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}))
"""


def _probe(mode: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD", "BOXDEPTH_MALLOC")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc: Linux only")
def test_freed_memory_is_reused_not_faulted_in_again():
    default, tuned = _probe("none"), _probe("tune")
    if not tuned["did"].startswith("kept freed memory"):
        pytest.skip(f"not glibc here: {tuned['did']}")
    assert default["faults"] > 5 * 2048  # at least one 8 MiB activation a step touched anew
    assert tuned["faults"] < 0.1 * default["faults"]


def test_the_users_choice_wins(monkeypatch):
    from boxdepth.engine import allocator

    for k in [k for k in os.environ if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD")]:
        monkeypatch.delenv(k)
    monkeypatch.setattr(allocator, "_state", {})  # this process stays untouched: only the reason is read
    monkeypatch.setattr(allocator, "ctypes", None)  # would fail if mallopt were reached
    monkeypatch.setenv("BOXDEPTH_MALLOC", "default")
    assert allocator.keep_freed_memory() == "default allocator: BOXDEPTH_MALLOC=default"
    monkeypatch.delenv("BOXDEPTH_MALLOC")
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert allocator.keep_freed_memory() == ("default allocator: the environment sets the allocator "
                                             "(LD_PRELOAD, MALLOC_ARENA_MAX)")
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("LD_PRELOAD", "")  # set but empty: no allocator chosen
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() == "default allocator: not glibc (darwin)"
