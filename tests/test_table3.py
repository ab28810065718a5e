"""benchmarks/table3.py: the seed-spread verdict on hand-made rows, the README block, and a
tiny end-to-end run through worker subprocesses."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("table3", REPO / "benchmarks" / "table3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(variant, mask_aps):
    return [{"variant": variant, "seed": s, "segm": {"AP": m / 100, "AP50": 0.5, "AP75": 0.2},
             "bbox": {"AP": 0.3, "AP50": 0.6, "AP75": 0.3}} for s, m in enumerate(mask_aps)]


def test_difference_beyond_the_seed_spread_needs_a_small_welch_p():
    t3 = _load()
    rows = _rows("boxinst", [26.0, 26.5, 27.0]) + _rows("far", [29.0, 29.5, 30.0]) + \
        _rows("near", [25.0, 27.5, 28.0]) + _rows("one", [40.0])
    far = t3.compare(rows, "far", "boxinst")
    assert far["delta"] == pytest.approx(3.0) and far["beyond_spread"] and far["welch_p"] < 0.01
    # sqrt(0.25/3 + 0.25/3): each row's sample variance is 0.25
    assert far["se"] == pytest.approx(0.41, abs=0.01)
    assert far["paired_delta_mean"] == pytest.approx(3.0) and far["paired_delta_std"] == pytest.approx(0.0)
    near = t3.compare(rows, "near", "boxinst")  # +0.33 with a spread of 1.6: not beyond it
    assert near["delta"] == pytest.approx(0.33, abs=0.01) and not near["beyond_spread"]
    assert t3.compare(rows, "one", "boxinst") is None  # one seed has no spread
    assert t3.compare(rows, "boxinst", "boxinst") is None


def test_readme_block_is_rewritten_between_the_markers_only(tmp_path):
    t3 = _load()
    rows = (_rows("boxinst", [26.0, 26.5, 27.0]) + _rows("worse", [10.0, 11.0, 12.0])
            + _rows("single", [29.0]))
    import boxdepth.demo as demo
    result = {"reference": "boxinst", "summary": demo.summarize(rows),
              "comparisons": {n: t3.compare(rows, n, "boxinst") for n in ("boxinst", "worse", "single")}}
    table = t3.markdown_table(result)
    assert "| `boxinst` | 30.0 ± 0.0 | 26.5 ± 0.5 |" in table and "| reference | 3 |" in table
    assert "-15.5 ± 0.6, p < 0.001: **worse**" in table  # not "p = 0.000"
    # one seed: the mean alone (no "± 0.0"), its difference, and no verdict
    assert "| `single` | 30.0 | 29.0 |" in table and "+2.5 (one seed: no spread to compare with) | 1 |" in table
    one_ref = _rows("boxinst", [26.0]) + _rows("three", [27.0, 28.0, 29.0])
    table = t3.markdown_table({"reference": "boxinst", "summary": demo.summarize(one_ref),
                               "comparisons": {"boxinst": None, "three": None}})
    assert "+2.0 (one boxinst seed: no spread to compare with) | 3 |" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{t3.MARKERS[0]}\nold table\n{t3.MARKERS[1]}\noutro\n")
    t3.rewrite_readme(readme, table, "results/x.json")
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{t3.MARKERS[1]}\noutro\n")
    assert "old table" not in text and "generated from results/x.json" in text and table in text
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="bare.md"):
        t3.rewrite_readme(tmp_path / "bare.md", table, "x")
    assert (tmp_path / "bare.md").read_text() == "no markers\n"


@pytest.mark.slow
def test_tiny_table_runs_workers_reuses_finished_runs_and_writes_json(tmp_path, capsys):
    t3 = _load()
    sets = TINY_MODEL + ["data.num_workers=0", "input.min_size_train=[64]", "input.max_size_train=128",
                         "input.min_size_test=64", "input.max_size_test=128", "solver.ims_per_batch=2",
                         "log.period=1", "log.tensorboard=false", "log.health_periods=0"]
    args = ["--out", str(tmp_path / "runs"), "--budget", "2", "--seeds", "2", "--jobs", "2",
            "--variants", "boxinst+dg", "--train", "4", "--val", "2", "--size", "96x64",
            "--json", str(tmp_path / "t3.json"), "--set", *sets]
    assert t3.main(args) == 0
    result = json.loads((tmp_path / "t3.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in result["rows"]) == [
        ("box_as_mask", 0), ("box_as_mask", 1), ("boxinst", 0), ("boxinst", 1),
        ("boxinst+dg", 0), ("boxinst+dg", 1)]
    assert set(result["comparisons"]["boxinst+dg"]) >= {"delta", "se", "welch_p", "beyond_spread"}
    assert "4 to run, 2 at a time" in capsys.readouterr().out
    assert t3.main(args) == 0  # every run finished: nothing is trained again
    assert "4 of 4 runs finished already; 0 to run" in capsys.readouterr().out
    (tmp_path / "runs" / "b2" / "boxinst+dg_seed1" / "rows.json").unlink()
    assert t3.main([*args, "--collect"]) == 0  # tables what is finished, trains nothing
    assert "to run" not in capsys.readouterr().out
    result = json.loads((tmp_path / "t3.json").read_text())
    assert result["missing"] == ["boxinst+dg seed 1"] and result["summary"]["boxinst+dg"]["n"] == 1
    assert result["comparisons"]["boxinst+dg"] is None  # one seed: no spread to compare with
    assert "Not run yet (1 run): boxinst+dg seed 1." in t3.markdown_table(result)
    imported = tmp_path / "imported.json"  # an earlier measurement of the missing run
    imported.write_text(json.dumps({"rows": _rows("boxinst+dg", [30.0, 31.0])}))
    assert t3.main([*args, "--collect", "--import-rows", str(imported)]) == 0
    result = json.loads((tmp_path / "t3.json").read_text())
    assert result["missing"] == [] and result["imported"]["runs"] == ["boxinst+dg seed 1"]
    assert [r["segm"]["AP"] for r in result["rows"] if r["variant"] == "boxinst+dg"][1] == pytest.approx(0.31)
    assert "not rerun here): boxinst+dg seed 1." in t3.markdown_table(result)


def test_imported_rows_are_keyed_by_variant_and_seed_and_skip_foreign_readings(tmp_path):
    t3 = _load()
    seg = {"AP": 0.25, "AP50": 0.5, "AP75": 0.2}
    seed0 = {"rows": [  # the seed-0 JSON's layout: "row" + "run_dir"
        {"row": "boxinst", "run_dir": "/r/b1000/boxinst_seed0", "note": "", "segm": seg, "bbox": seg},
        {"row": "boxinst+cons+dg pairs=gated", "run_dir": "/r_g/b1000/boxinst+cons+dg_seed0",
         "segm": seg, "bbox": seg},  # a --set reading, not the variant itself
        {"row": "boxinst+dg", "run_dir": "/r/b500/boxinst+dg_seed0", "segm": seg, "bbox": seg}]}
    table = {"rows": _rows("boxinst+dg", [20.0, 21.0])  # table3's own layout
             + _rows("box_as_mask", [14.0, 15.0])}  # scored from boxinst's runs
    (tmp_path / "a.json").write_text(json.dumps(seed0))
    (tmp_path / "b.json").write_text(json.dumps(table))
    got = t3.load_imports([tmp_path / "a.json", tmp_path / "b.json"], budget=1000)
    assert sorted(got) == [("boxinst", 0), ("boxinst", 1), ("boxinst+dg", 0), ("boxinst+dg", 1)]
    assert [r["variant"] for r in got["boxinst", 0]] == ["boxinst", "box_as_mask"]
    assert got["boxinst", 1][0]["variant"] == "box_as_mask" and got["boxinst", 1][0]["seed"] == 1
    assert got["boxinst+dg", 0][0]["segm"]["AP"] == pytest.approx(0.20)  # not the b500 row
    row = got["boxinst", 0][0]
    assert row["variant"] == "boxinst" and row["seed"] == 0 and "row" not in row
    assert row["source"] == str(tmp_path / "a.json")
    # a table that imported a run itself: the run keeps the JSON it was first measured in
    (tmp_path / "c.json").write_text(json.dumps({"rows": [{**_rows("boxinst+dg", [20.0])[0], "source": "first.json"}]}))
    assert t3.load_imports([tmp_path / "c.json"], budget=1000)["boxinst+dg", 0][0]["source"] == "first.json"


def test_each_run_has_its_own_log_even_with_a_dot_in_the_variant(tmp_path):
    t3 = _load()  # "@tau0.3" and "@tau0.7" once both wrote b1000/boxinst+cons+dg@tau0.log
    logs = {t3._log_path(tmp_path, 1000, f"boxinst+cons+dg@tau{t}", s) for t in ("0.3", "0.7") for s in (0, 1)}
    assert len(logs) == 4
    assert tmp_path / "b1000" / "boxinst+cons+dg@tau0.3_seed1.log" in logs


def test_run_lists_are_grouped_by_variant():
    t3 = _load()
    assert t3._by_variant(["a seed 0", "b+c@tau0.3 seed 2", "a seed 1"]) == "a seeds 0, 1; b+c@tau0.3 seed 2"
    assert t3._by_variant([]) == ""


def test_a_failed_worker_is_named_with_its_own_log(tmp_path):
    t3 = _load()  # a bad override makes each worker exit non-zero before it trains
    args = ["--out", str(tmp_path / "runs"), "--budget", "2", "--seeds", "1", "--jobs", "2",
            "--variants", "boxinst+cons+dg@tau0.3", "--train", "2", "--val", "1", "--size", "64x48",
            "--json", str(tmp_path / "t3.json"), "--set", "no_such.key=1"]
    with pytest.raises(SystemExit) as failed:
        t3.main(args)
    log = tmp_path / "runs" / "b2" / "boxinst+cons+dg@tau0.3_seed0.log"
    assert f"log {log})" in str(failed.value) and "boxinst seed 0 (exit" in str(failed.value)
    assert "no_such" in log.read_text()  # the worker's own error, in its own log
    assert not (tmp_path / "t3.json").exists()  # nothing tabled from failed runs


def test_a_worker_that_cannot_start_leaves_no_open_log(tmp_path, monkeypatch):
    t3 = _load()
    opened = []
    real_open = Path.open

    def recording_open(self, *args, **kwargs):
        fh = real_open(self, *args, **kwargs)
        opened.append(fh)
        return fh

    def no_process(*args, **kwargs):
        raise OSError("cannot fork")

    monkeypatch.setattr(Path, "open", recording_open)
    monkeypatch.setattr(t3.subprocess, "Popen", no_process)
    a = argparse.Namespace(out=tmp_path, budget=2, imported=set(), jobs=2, threads=1, set=[])
    with pytest.raises(OSError, match="cannot fork"):
        t3.run_jobs(a, [("boxinst", 0), ("boxinst", 1)])
    logs = [fh for fh in opened if fh.name.endswith(".log")]
    assert len(logs) == 1 and logs[0].closed  # the first start failed: one log, closed
