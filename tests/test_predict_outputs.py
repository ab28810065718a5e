"""`boxdepth predict` into a folder with earlier outputs (issue 24 item 2): its own old
masks and overlays go, anything it did not write makes it refuse; no stale PNG survives
beside a new results.json."""
import json
from pathlib import Path

import pytest

import boxdepth.engine.predict as predict_mod
from boxdepth.cli import main
from boxdepth.engine.predict import run_predict
from boxdepth.engine.predict_outputs import MANIFEST
from tests.test_predict import _make_ckpt, _write_image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _make_ckpt(tmp_path_factory.mktemp("po") / "tiny.pth", depth_head=True)


@pytest.fixture()
def inputs(tmp_path):
    _write_image(tmp_path / "in" / "a.png", 40, 50, 1)
    _write_image(tmp_path / "in" / "b.png", 44, 36, 2)
    return tmp_path / "in"


def _pictures(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for sub in ("overlays", "masks", "depth")
            for p in (out / sub).rglob("*") if p.is_file()}


def _expected(out: Path) -> set[str]:
    """What the results.json and images.json in `out` say the pictures are."""
    images = json.loads((out / "images.json").read_text())["images"]
    results = json.loads((out / "results.json").read_text())
    return {f"overlays/{Path(im['file_name']).stem}.png" for im in images} | \
        {p for p in _pictures(out) if not p.startswith("overlays/")
         and any(r["image_id"] == im["id"] for im in images for r in results
                 if p.split("/")[1] == Path(im["file_name"]).stem)}


def test_a_second_run_leaves_no_stale_pictures(ckpt, inputs, tmp_path):
    out = tmp_path / "out"
    first = run_predict(ckpt, [str(inputs)], out, device="cpu", score_thresh=0.0, save_depth=True,
                        progress=False)
    assert first["shown"] > 2 and (out / "depth").is_dir()
    (out / "notes.txt").write_text("mine")  # not in predict's places: left alone
    scores = sorted(r["score"] for r in json.loads((out / "results.json").read_text()) if r["image_id"] == 1)
    thresh = (scores[-1] + scores[-2]) / 2  # one detection of b.png shown
    second = run_predict(ckpt, [str(inputs / "b.png")], out, device="cpu", score_thresh=thresh,
                         progress=False)
    assert second["images"] == 1 and second["shown"] == 1
    assert _pictures(out) == {"overlays/b.png", f"masks/b/{sorted((out / 'masks' / 'b').iterdir())[0].name}"}
    assert sorted((out / "masks" / "b").iterdir())[0].name.startswith("000_")
    assert not (out / "depth").exists() and not (out / "masks" / "a").exists()
    assert (out / "notes.txt").read_text() == "mine"
    manifest = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert {f for line in manifest for f in line.get("files", [])} == \
        _pictures(out) | {"results.json", "images.json"}


def test_files_predict_did_not_write_make_it_refuse(ckpt, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    run_predict(ckpt, [str(inputs)], out, device="cpu", score_thresh=0.0, progress=False)
    foreign = out / "masks" / "a" / "my_edit.png"
    foreign.write_bytes(b"a mask drawn by hand")
    before = _pictures(out)
    with pytest.raises(ValueError, match=r"masks/a/my_edit\.png.*empty or new --out"):
        run_predict(ckpt, [str(inputs)], out, device="cpu", progress=False)
    assert _pictures(out) == before  # nothing deleted
    assert main(["predict", str(inputs), "--weights", str(ckpt), "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 2
    assert "my_edit.png" in capsys.readouterr().err
    # a folder of an older predict (no manifest) is refused too
    old = tmp_path / "old"
    (old / "overlays").mkdir(parents=True)
    (old / "overlays" / "a.png").write_bytes(b"x")
    (old / "results.json").write_text("[]")
    with pytest.raises(ValueError, match="did not record"):
        run_predict(ckpt, [str(inputs)], old, device="cpu", progress=False)


def test_an_interrupted_run_is_cleared_by_the_next(ckpt, inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = predict_mod.write_image_outputs
    calls = []

    def dies_on_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(predict_mod, "write_image_outputs", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_predict(ckpt, [str(inputs)], out, device="cpu", score_thresh=0.0, progress=False)
    assert (out / "overlays" / "a.png").exists() and not (out / "results.json").exists()
    (out / "overlays" / ".b.png.tmp-abc123.png").write_bytes(b"half")  # a write cut short
    monkeypatch.setattr(predict_mod, "write_image_outputs", real)
    run_predict(ckpt, [str(inputs / "b.png")], out, device="cpu", score_thresh=0.0, progress=False)
    assert {p for p in _pictures(out) if p.startswith("overlays/")} == {"overlays/b.png"}
    assert not (out / "masks" / "a").exists()
