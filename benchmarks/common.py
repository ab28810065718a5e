"""Shared helpers of the benchmark scripts: phase timer, statistics, environment record,
machine contention, memory probes and the text table.

`PhaseTimer` keeps a list of (label, perf_counter) marks; the duration of a label is the
time since the previous mark (so nothing between two marks is lost or counted twice,
and a label that is marked several times in one iteration is summed). On CUDA every
mark first calls `torch.cuda.synchronize()`, so a phase's time is its GPU work, not its
kernel launches; that removes CPU/GPU overlap between phases, which is why the train
benchmark can also time the unmarked step (`train_step_e2e`). `marked(fn, timer, label)`
wraps a callable to mark after each call.

`summarize(samples)` -> {"median", "p10", "p90", "mean", "min", "max", "n"} (seconds;
percentiles by linear interpolation, so with 3 samples p10/p90 lie between the two
lowest/highest); `summarize_runs([{label: s}])` -> {label: summarize}.

`CpuContention` / `other_cores_now`: how many cores other processes kept busy (from
/proc/stat minus our own getrusage), to tell a clean run from a contended one.
`environment(device, repo)`: versions, CPU/GPU, threads, allocator/OpenMP env, git.
`MemoryProbe`: CPU ru_maxrss high-water marks or CUDA peak allocated/reserved, plus
minor page faults per call.
"""
from __future__ import annotations

import datetime
import functools
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from boxdepth.engine.machine import TIMING_ENV as ENV_KEYS
from boxdepth.engine.machine import cpu_model  # noqa: F401  (re-exported for the scripts)


class PhaseTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, float]] = []

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        self.marks = [("start", self._now())]

    def mark(self, label: str) -> None:
        if self.marks:  # hooks fire outside a timed region too (e.g. a warm-up call): ignore
            self.marks.append((label, self._now()))

    def stop(self) -> dict[str, float]:
        """Durations by label (insertion order) of the marks since `start`; resets."""
        out: dict[str, float] = {}
        for (_, t0), (label, t1) in zip(self.marks, self.marks[1:]):
            out[label] = out.get(label, 0.0) + (t1 - t0)
        self.marks = []
        return out


def marked(fn, timer: PhaseTimer, label: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        timer.mark(label)
        return out
    return wrapper


def summarize(samples) -> dict:
    a = np.asarray(list(samples), dtype=np.float64)
    if a.size == 0:
        return {"median": None, "p10": None, "p90": None, "mean": None, "min": None, "max": None, "n": 0}
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return {"median": float(med), "p10": float(p10), "p90": float(p90), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def summarize_runs(runs: list[dict[str, float]], order: list[str] | None = None) -> dict[str, dict]:
    """[{label: seconds}] per iteration -> {label: summarize(...)}; a label missing from
    an iteration counts 0 there."""
    labels = list(order or [])
    for r in runs:
        labels += [k for k in r if k not in labels]
    return {k: summarize(r.get(k, 0.0) for r in runs) for k in labels}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class CpuContention:
    """Average number of cores busy with *other* processes while a block ran: machine CPU
    time from /proc/stat minus this process's own (getrusage), over the wall time. On a
    shared machine it tells whether a run competed for cores; None where /proc is absent."""

    def __init__(self):
        self.t0, self.m0, self.p0 = time.perf_counter(), self._machine(), self._own()

    @staticmethod
    def _machine() -> float | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        vals = [int(v) for v in fields]
        busy = sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)  # minus idle and iowait
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def result(self) -> dict:
        wall = time.perf_counter() - self.t0
        m1 = self._machine()
        own = (self._own() - self.p0) / wall
        if m1 is None or self.m0 is None:
            return {"own_cores": round(own, 2), "other_cores": None}
        other = max((m1 - self.m0) / wall - own, 0.0)
        return {"own_cores": round(own, 2), "other_cores": round(other, 2)}


def other_cores_now(seconds: float = 1.0) -> float | None:
    """Cores busy with other processes over the next `seconds` (this one sleeps)."""
    probe = CpuContention()
    time.sleep(seconds)
    return probe.result()["other_cores"]


def oversubscription_warning(threads: int, other: float | None) -> str | None:
    cores = available_cores()
    if other is None or threads <= 1 or threads + other <= cores + 0.25:
        return None
    return (f"warning: other processes keep {other:.1f} of {cores} cores busy and torch uses {threads} "
            f"threads: OpenMP threads will wait for each other and timings can be many times slower "
            f"and erratic; compare with --threads {max(int(cores - other), 1)} or OMP_WAIT_POLICY=PASSIVE "
            f"(see benchmarks/README.md)")


def git_commit(repo: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def environment(device: torch.device, repo: Path) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "platform": platform.platform(),
           "torch": torch.__version__, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
           "cores_available": available_cores(), "torch_threads": torch.get_num_threads(),
           "torch_interop_threads": torch.get_num_interop_threads(),
           "mkldnn": torch.backends.mkldnn.is_available(), "load_average": load_average(),
           "allocator_env": {k: os.environ.get(k) for k in ENV_KEYS}, "device": str(device),
           "device_name": cpu_model(), "git": git_commit(repo)}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        env.update({"device_name": torch.cuda.get_device_name(idx), "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version(),
                    "cudnn_benchmark": torch.backends.cudnn.benchmark,
                    "capability": list(torch.cuda.get_device_capability(idx))})
    return env


def peak_rss_mib() -> float:
    """Process high-water mark of resident memory (ru_maxrss, KiB on Linux) in MiB.

    It never goes down, includes the Python/torch runtime and the weights, and counts
    memory the allocator kept but no tensor uses; only its growth between two points
    says something about the work in between (and only when that work set a new peak).
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def minor_page_faults() -> int:
    """Minor page faults of this process so far: memory the allocator got fresh from the
    OS (and the kernel had to zero); many per iteration mean the allocator keeps
    returning and re-requesting large buffers (glibc's mmap threshold / trimming)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def ms(v) -> str:
    return "-" if v is None else f"{1000.0 * v:.1f}"


def format_table(rows: list[tuple[str, dict]], total: float | None) -> str:
    """rows: (label, summarize() dict); a label indented with spaces is a sub-phase."""
    lines = [f"{'phase':<34}{'median ms':>11}{'p10':>10}{'p90':>10}{'share':>8}"]
    for label, st in rows:
        share = f"{100.0 * st['median'] / total:.1f}%" if total and st["median"] is not None else ""
        lines.append(f"{label:<34}{ms(st['median']):>11}{ms(st['p10']):>10}{ms(st['p90']):>10}{share:>8}")
    return "\n".join(lines)


def group_sums(phases: dict[str, float], groups: dict[str, list[str]]) -> dict[str, float]:
    out = {g: sum(phases.get(p, 0.0) for p in members) for g, members in groups.items()}
    known = {p for members in groups.values() for p in members}
    other = sum(t for p, t in phases.items() if p not in known)
    if other:
        out["other"] = other
    return out


class MemoryProbe:
    """CPU: ru_maxrss high-water marks; CUDA: torch.cuda peak allocated/reserved per part;
    both: minor page faults per call (warm-up included) of each part."""

    def __init__(self, device: torch.device):
        self.device = device
        self.out = {"kind": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_ru_maxrss",
                    "rss_peak_mib_baseline": peak_rss_mib()}

    def begin(self) -> None:
        self.faults = minor_page_faults()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def end(self, part: str, calls: int) -> None:
        self.out[f"rss_peak_mib_after_{part}"] = peak_rss_mib()
        self.out[f"minor_page_faults_per_call_{part}"] = (minor_page_faults() - self.faults) / calls
        if self.device.type == "cuda":
            self.out[f"cuda_peak_allocated_mib_{part}"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.out[f"cuda_peak_reserved_mib_{part}"] = torch.cuda.max_memory_reserved(self.device) / 2**20

    @staticmethod
    def describe(mem: dict) -> list[str]:
        if mem["kind"] == "cpu_ru_maxrss":
            return [f"memory (ru_maxrss, process high-water mark): {mem['rss_peak_mib_baseline']:.0f} MiB "
                    f"after build, {mem['rss_peak_mib_after_inference']:.0f} after inference, "
                    f"{mem['rss_peak_mib_after_train']:.0f} after training",
                    f"minor page faults per call: inference {mem['minor_page_faults_per_call_inference']:.0f}, "
                    f"train {mem['minor_page_faults_per_call_train']:.0f}"]
        return [f"memory (torch.cuda.max_memory_allocated): inference "
                f"{mem['cuda_peak_allocated_mib_inference']:.0f} MiB, train "
                f"{mem['cuda_peak_allocated_mib_train']:.0f} MiB (reserved "
                f"{mem['cuda_peak_reserved_mib_train']:.0f} MiB)"]
