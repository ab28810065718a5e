"""The Python API (issue 24 item 8): `boxdepth.Predictor(weights)(image)` and
`boxdepth.train(config, out_dir, **overrides)`, and the verbs running the same code."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import boxdepth
from boxdepth.cli import main
from boxdepth.data.rle import mask_to_rle
from boxdepth.engine.predict import run_predict
from tests.conftest import tiny_config
from tests.test_predict import _make_ckpt, _write_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _make_ckpt(tmp_path_factory.mktemp("api") / "tiny.pth", depth_head=False)


def test_import_boxdepth_is_light_and_the_api_loads_on_use():
    code = ("import sys, boxdepth; assert 'torch' not in sys.modules, 'torch at import'; "
            "from boxdepth import Predictor, train; assert 'torch' in sys.modules; "
            "print(Predictor.__name__, train.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["Predictor", "train"]
    with pytest.raises(AttributeError, match="no_such_thing"):
        boxdepth.no_such_thing  # noqa: B018


def test_predictor_gives_what_predict_writes(ckpt, tmp_path):
    img = _write_image(tmp_path / "in" / "x.png", 70, 90, 11)
    ref = run_predict(ckpt, [str(tmp_path / "in" / "x.png")], tmp_path / "out", device="cpu",
                      score_thresh=0.0, progress=False)
    results = json.loads(Path(ref["results"]).read_text())
    p = boxdepth.Predictor(ckpt, device="cpu")
    for image in (str(tmp_path / "in" / "x.png"), img, Image.fromarray(img)):  # path, array, PIL
        out = p(image)
        d = len(out["scores"])
        assert d == len(results) > 0
        assert out["boxes"].shape == (d, 4) and out["boxes"].dtype == np.float32
        assert out["masks"].shape == (d, 70, 90) and out["masks"].dtype == bool
        assert out["depth"] is None  # no DG head
        assert [p.class_names[c] for c in out["classes"]] == \
            [{1: "a", 5: "b", 9: "c"}[r["category_id"]] for r in results]
        assert out["category_ids"].tolist() == [r["category_id"] for r in results]
        assert np.allclose(out["scores"], [r["score"] for r in results], atol=1e-6)
        xywh = np.array([r["bbox"] for r in results])
        assert np.allclose(out["boxes"][:, :2], xywh[:, :2], atol=0.01)
        assert [mask_to_rle(m) for m in out["masks"]] == [r["segmentation"] for r in results]
    few = boxdepth.Predictor(ckpt, device="cpu", score_thresh=float(out["scores"][3]))(img)
    assert len(few["scores"]) == 4 and np.array_equal(few["masks"], out["masks"][:4])
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        p(img.astype(np.float32))


def test_predictor_gives_instance_depth_of_a_dg_model(tmp_path):
    p = boxdepth.Predictor(_make_ckpt(tmp_path / "dg.pth", depth_head=True), device="cpu")
    out = p(_write_image(tmp_path / "y.png", 50, 60, 3))
    assert p.has_depth and out["depth"].shape == out["masks"].shape == (len(out["scores"]), 50, 60)
    assert out["depth"].dtype == np.float32 and 0 <= out["depth"].min() <= out["depth"].max() <= 1


def test_train_then_predict(tiny_synth, tmp_path):
    cfg = tiny_config(tiny_synth, "device=cpu")
    result = boxdepth.train(cfg, tmp_path / "run", progress=False, solver__max_iter=2,
                            **{"solver.checkpoint_period": 1})
    assert result["weights"] == tmp_path / "run" / "model_final.pth" and result["weights"].exists()
    assert result["config"].solver.max_iter == 2 and result["config"].solver.checkpoint_period == 1
    assert set(result["metrics"]) == {"bbox", "segm"}
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["segm"]["AP"] == result["metrics"]["segm"]["AP"]
    out = boxdepth.Predictor(result["weights"], device="cpu")(
        sorted((tiny_synth / "images" / "val").glob("*.png"))[0])
    assert out["masks"].shape[1:] == (64, 96)
    with pytest.raises(ValueError, match="solver.max_iter"):  # overrides are checked like key=value
        boxdepth.train(cfg, tmp_path / "bad", progress=False, solver__max_iter="ten")


def test_the_verbs_call_the_api(ckpt, tmp_path, monkeypatch):
    import boxdepth.api
    import boxdepth.engine.predict as predict_mod

    calls = []
    monkeypatch.setattr(boxdepth.api, "train", lambda cfg, out, **kw: calls.append(("train", kw)) or
                        {"weights": Path(out) / "model_final.pth", "metrics": None})
    assert main(["train", "synth_boxinst", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert calls == [("train", {"resume": False, "overwrite": False, "evaluate": True,
                                "progress": False})]

    class Spy(predict_mod.Predictor):
        made = 0

        def __init__(self, *a, **kw):
            Spy.made += 1
            super().__init__(*a, **kw)

    monkeypatch.setattr(predict_mod, "Predictor", Spy)
    _write_image(tmp_path / "in" / "z.png", 40, 40, 1)
    assert main(["predict", str(tmp_path / "in"), "--weights", str(ckpt), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--quiet"]) == 0
    assert Spy.made == 1
