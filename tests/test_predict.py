"""`run_predict` end to end with a tiny untrained model: inputs, outputs, names, errors."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from boxdepth.config import ConfigError, load_config
from boxdepth.data.depth_io import load_depth_png
from boxdepth.data.image_io import BadImageError, load_image_rgb
from boxdepth.data.transforms import TestTransform
from boxdepth.engine.inference import load_trained_model
from boxdepth.engine.predict import collect_images, output_names, run_predict
from boxdepth.models.condinst import postprocess_detections
from tests.conftest import save_untrained_checkpoint

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = ["model.backbone.name=small", "model.backbone.norm=BN", "model.backbone.freeze_at=0",
        "model.fpn.out_channels=32", "model.fcos.num_classes=3", "model.fcos.num_convs=1",
        # GN(32 groups) over 32 channels sees one value per group on the 1x1 P7 map of a
        # 64 px input and refuses it; BN in eval mode has no such limit
        "model.fcos.norm=BN",
        "model.mask_branch.channels=32", "model.mask_branch.num_convs=1",
        "input.min_size_test=64", "input.max_size_test=128", "model.fcos.inference_th=0.0",
        "model.fcos.post_nms_topk=12"]
CAT_IDS, NAMES = [1, 5, 9], ["a", "b", "c"]


def _make_ckpt(path: Path, depth_head: bool) -> Path:
    cfg = load_config(None, TINY + [f"model.depth_head={str(depth_head).lower()}"])
    return save_untrained_checkpoint(path, cfg, CAT_IDS, NAMES)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _make_ckpt(tmp_path_factory.mktemp("ckpt") / "tiny.pth", depth_head=False)


@pytest.fixture(scope="module")
def ckpt_dg(tmp_path_factory):
    return _make_ckpt(tmp_path_factory.mktemp("ckpt_dg") / "tiny_dg.pth", depth_head=True)


def _write_image(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    img = np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return img


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "in"
    _write_image(root / "b.png", 40, 56, 1)
    _write_image(root / "sub" / "a.JPG", 48, 36, 2)
    _write_image(root / "c.bmp", 33, 47, 3)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"junk")  # hidden files are skipped
    return root


def _reference(ckpt_path, image_path):
    """Detections computed here without run_predict (own padding, no collate_batch)."""
    model, cfg, _ = load_trained_model(ckpt_path)
    img = load_image_rgb(image_path)
    sample = TestTransform(64, 128)({"image": torch.from_numpy(img).permute(2, 0, 1),
                                     "boxes": torch.zeros(0, 4)})
    h, w = sample["image"].shape[-2:]
    hp, wp = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
    canvas = torch.zeros(1, 3, hp, wp, dtype=torch.uint8)
    canvas[0, :, :h, :w] = sample["image"]
    valid = torch.zeros(1, hp, wp, dtype=torch.bool)
    valid[0, :h, :w] = True
    with torch.no_grad():
        det = model(canvas, valid)[0]
    return postprocess_detections(det, (h, w), img.shape[:2], model.mask_threshold,
                                  mask_stride=model.mask_out_stride)


def _decode(seg):
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


def test_collect_images_folder_glob_file_and_errors(folder, tmp_path):
    got = collect_images([str(folder)])
    assert [p.relative_to(folder).as_posix() for p in got] == ["b.png", "c.bmp", "sub/a.JPG"]
    assert collect_images([str(folder / "**" / "*.JPG")]) == [folder / "sub" / "a.JPG"]
    # repeats are dropped, order of the inputs kept
    assert collect_images([str(folder / "c.bmp"), str(folder)])[0] == folder / "c.bmp"
    assert len(collect_images([str(folder / "c.bmp"), str(folder)])) == 3
    with pytest.raises(FileNotFoundError, match="nope.png"):
        collect_images([str(folder / "nope.png")])
    with pytest.raises(FileNotFoundError, match=r"\*\.gif"):
        collect_images([str(folder / "*.gif")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        collect_images([str(empty)])
    assert collect_images([str(folder)], exclude=folder / "sub") == [folder / "b.png", folder / "c.bmp"]


def test_output_names_unique():
    paths = [Path("x/img.png"), Path("y/img.jpg"), Path("z/other.png"), Path("w/IMG.png"),
             Path("v/img_0.png")]
    names = output_names(paths)
    assert names[:4] == ["img_0", "img_1", "other", "IMG_3"]
    assert len({n.lower() for n in names}) == len(names)


def test_predict_folder_outputs(ckpt, folder, tmp_path):
    out = tmp_path / "out"
    summary = run_predict(ckpt, [str(folder)], out, device="cpu", score_thresh=0.0, progress=False)
    results = json.loads((out / "results.json").read_text())
    meta = json.loads((out / "images.json").read_text())
    paths = collect_images([str(folder)])
    assert [im["file_name"] for im in meta["images"]] == [str(p) for p in paths]
    assert [im["id"] for im in meta["images"]] == [0, 1, 2]
    assert meta["categories"] == [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]
    assert isinstance(results, list) and len(results) == summary["detections"] > 0
    sizes = {im["id"]: (im["height"], im["width"]) for im in meta["images"]}
    assert set(sizes) == {r["image_id"] for r in results}
    for r in results:
        assert r["category_id"] in {1, 5, 9} and isinstance(r["segmentation"]["counts"], str)
        assert tuple(r["segmentation"]["size"]) == sizes[r["image_id"]]
    for im, p in zip(meta["images"], paths):
        with Image.open(out / "overlays" / f"{p.stem}.png") as ov:
            assert ov.size == Image.open(p).size == (im["width"], im["height"])
        mine = [r for r in results if r["image_id"] == im["id"]]
        assert len(list((out / "masks" / p.stem).glob("*.png"))) == len(mine)
    # the results of one image equal an independent forward pass
    ref = _reference(ckpt, paths[0])
    mine = [r for r in results if r["image_id"] == 0]
    order = torch.argsort(ref["scores"], descending=True, stable=True)
    assert np.allclose([r["score"] for r in mine], ref["scores"][order].numpy(), atol=1e-6)
    xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)])
    assert np.allclose(xyxy, ref["boxes"][order].numpy(), atol=0.02)
    for r, k in zip(mine, order.tolist()):
        assert r["category_id"] == CAT_IDS[int(ref["labels"][k])]
        assert np.array_equal(_decode(r["segmentation"]), ref["masks"][k].numpy())


def test_score_thresh_masks_and_glob(ckpt, folder, tmp_path):
    results = json.loads(Path(run_predict(ckpt, [str(folder / "b.png")], tmp_path / "all", device="cpu",
                                          score_thresh=0.0, progress=False)["results"]).read_text())
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and len(set(scores[:6])) == 6
    thresh = (scores[4] + scores[5]) / 2  # exactly five shown
    out = tmp_path / "five"
    summary = run_predict(ckpt, [str(folder / "b*.png")], out, device="cpu",
                          score_thresh=thresh, progress=False)
    assert summary["images"] == 1 and summary["shown"] == 5
    assert json.loads((out / "results.json").read_text()) == results  # not filtered
    files = sorted((out / "masks" / "b").glob("*.png"), key=lambda p: int(p.name.split("_")[0]))
    assert len(files) == 5
    labels = {1: "a", 5: "b", 9: "c"}
    for k, (f, r) in enumerate(zip(files, results)):
        assert f.name == f"{k:03d}_{labels[r['category_id']]}_{r['score']:.3f}.png"
        arr = np.asarray(Image.open(f))
        assert set(np.unique(arr)) <= {0, 255}
        assert np.array_equal(arr == 255, _decode(r["segmentation"]))


def test_same_stem_in_two_folders(ckpt, tmp_path):
    a = _write_image(tmp_path / "x" / "img.png", 40, 50, 5)
    b = _write_image(tmp_path / "y" / "img.png", 52, 30, 6)
    out = tmp_path / "out"
    run_predict(ckpt, [str(tmp_path / "x"), str(tmp_path / "y" / "img.png")], out,
                device="cpu", score_thresh=0.0, progress=False)
    for name, img in (("img_0", a), ("img_1", b)):
        with Image.open(out / "overlays" / f"{name}.png") as ov:
            assert ov.size == (img.shape[1], img.shape[0])
        assert len(list((out / "masks" / name).glob("*.png"))) > 0
    assert not (out / "overlays" / "img.png").exists()


def test_save_depth_with_dg_head(ckpt_dg, folder, tmp_path):
    out = tmp_path / "out"
    summary = run_predict(ckpt_dg, [str(folder / "c.bmp")], out, device="cpu", score_thresh=0.0,
                          save_depth=True, progress=False)
    ref = _reference(ckpt_dg, folder / "c.bmp")
    order = torch.argsort(ref["scores"], descending=True, stable=True).tolist()
    assert summary["depth"] == str(out / "depth")
    files = list((out / "depth" / "c").glob("*.png"))
    assert len(files) == len(order) > 0
    for k, j in enumerate(order):
        d = load_depth_png(out / "depth" / "c" / f"{k:03d}.png")
        expect = np.where(ref["masks"][j].numpy(), ref["depth"][j].numpy(), 0.0)
        assert d.shape == expect.shape and np.abs(d - expect).max() <= 1.0 / 65535 + 1e-6


def test_save_depth_without_dg_head_writes_none(ckpt, folder, tmp_path):
    summary = run_predict(ckpt, [str(folder / "c.bmp")], tmp_path / "o", device="cpu",
                          save_depth=True, progress=False)
    assert summary["depth"] is None and not (tmp_path / "o" / "depth").exists()


def test_overrides_max_images_and_out_dir_inside_input(ckpt, folder):
    out = folder / "pred"
    s = run_predict(ckpt, [str(folder)], out, device="cpu", score_thresh=0.0, progress=False,
                    cfg_overrides=["model.fcos.post_nms_topk=2"], max_images=2)
    results = json.loads((out / "results.json").read_text())
    assert s["images"] == 2 and 0 < len(results) <= 4
    assert max(sum(r["image_id"] == i for r in results) for i in (0, 1)) <= 2
    again = run_predict(ckpt, [str(folder)], out, device="cpu", progress=False)
    assert again["images"] == 3  # the overlays written under the input folder are not inputs
    with pytest.raises(ConfigError, match="post_nms_topq"):
        run_predict(ckpt, [str(folder)], out, device="cpu", progress=False,
                    cfg_overrides=["model.fcos.post_nms_topq=2"])


def test_bad_inputs_are_named(ckpt, folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        run_predict(ckpt, [str(folder), str(tmp_path / "missing.jpg")], tmp_path / "o",
                    device="cpu", progress=False)
    bad = tmp_path / "broken.png"
    bad.write_text("this is not a png")
    with pytest.raises(BadImageError, match="broken.png"):
        run_predict(ckpt, [str(bad)], tmp_path / "o", device="cpu", progress=False)
    with pytest.raises(ValueError, match="score_thresh"):
        run_predict(ckpt, [str(folder)], tmp_path / "o", score_thresh=1.5, progress=False)


@pytest.mark.skipif(not (DATA / "tabletop-rgbd").is_dir(), reason="shared sample data absent")
def test_predict_real_tabletop_frames(ckpt, tmp_path):
    out = tmp_path / "out"
    s = run_predict(ckpt, [str(DATA / "tabletop-rgbd" / "*-color.png")], out, device="cpu",
                    score_thresh=0.0, max_images=2, progress=False)
    assert s["images"] == 2
    meta = json.loads((out / "images.json").read_text())
    assert [Path(im["file_name"]).name for im in meta["images"]] == ["image_0000-color.png",
                                                                      "image_0001-color.png"]
    for im in meta["images"]:
        with Image.open(out / "overlays" / f"{Path(im['file_name']).stem}.png") as ov:
            assert ov.size == (640, 480)
