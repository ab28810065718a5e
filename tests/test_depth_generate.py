"""`boxdepth depth` (SPEC §4): HF model path with tiny random models, sensor path on real
RGB-D frames, resume, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from boxdepth.data.depth_io import (depth_path_for, load_depth_png, normalize_inverse_depth,
                                    read_depth_meta)
from boxdepth.depth.generate import generate_depth, list_images
from boxdepth.depth.sensor import find_sensor_depth, fill_missing_nearest

TABLETOP = Path(__file__).resolve().parents[2] / "shared" / "data" / "tabletop-rgbd"
CODE = 1.0 / 65535.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _transformers():
    return pytest.importorskip("transformers")


def _pil_processor(tf, **kwargs):
    cls = getattr(tf, "DPTImageProcessorPil", None) or tf.DPTImageProcessor
    return cls(**kwargs)


def _save(model, processor, path: Path) -> Path:
    # HF's init (std 0.02) gives depths ~1e-9, i.e. float noise; PyTorch's default init gives
    # a real signal. The heads end in ReLU: a small positive last bias keeps it alive.
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.reset_parameters()
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    torch.nn.init.constant_(last.bias, 0.05)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dpt_dir(tmp_path_factory):
    tf = _transformers()
    torch.manual_seed(0)
    cfg = tf.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=64, image_size=32, patch_size=8,
                       backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
                       fusion_hidden_size=16)
    proc = _pil_processor(tf, size={"height": 32, "width": 32}, keep_aspect_ratio=False)
    return _save(tf.DPTForDepthEstimation(cfg), proc, tmp_path_factory.mktemp("dpt"))


@pytest.fixture(scope="module")
def da_dir(tmp_path_factory):
    tf = _transformers()
    torch.manual_seed(1)
    backbone = tf.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                               intermediate_size=64, image_size=28, patch_size=14,
                               out_features=["stage1", "stage2", "stage3", "stage4"],
                               reshape_hidden_states=False)
    cfg = tf.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 patch_size=14, neck_hidden_sizes=[8, 8, 16, 16],
                                 fusion_hidden_size=16, head_hidden_size=8)
    # Depth Anything's processor keeps the aspect ratio: processed sizes differ per image.
    proc = _pil_processor(tf, size={"height": 28, "width": 28}, keep_aspect_ratio=True,
                          ensure_multiple_of=14)
    return _save(tf.DepthAnythingForDepthEstimation(cfg), proc, tmp_path_factory.mktemp("da"))


def _write_images(root: Path, specs) -> list[str]:
    rng = np.random.default_rng(0)
    for rel, (h, w) in specs.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
    return sorted(specs)


# Two aspect ratios -> two processed sizes for Depth Anything (28x42 and 42x28).
SPECS = {"a.jpg": (40, 60), "b.png": (20, 30), "sub/c.png": (50, 33), "sub/deep/d.bmp": (44, 66),
         "e.webp": (60, 40)}


def _stored(out_root: Path, names) -> dict[str, np.ndarray]:
    return {n: load_depth_png(depth_path_for(out_root, n)) for n in names}


@pytest.mark.parametrize("which", ["dpt", "da"])
def test_outputs_sizes_meta_and_batch_independence(which, request, tmp_path):
    model_dir = request.getfixturevalue(f"{which}_dir")
    names = _write_images(tmp_path / "img", SPECS)
    single = generate_depth(tmp_path / "img", tmp_path / "d1", model_dir=model_dir,
                            batch_size=1, device="cpu", progress=False)
    batched = generate_depth(tmp_path / "img", tmp_path / "d4", model_dir=model_dir,
                             batch_size=4, device="cpu", progress=False)
    assert single["written"] == batched["written"] == len(names)
    assert single["forward_passes"] == len(names)
    # One pass per (processed shape, full-or-last batch): shapes from the HF processor.
    tf = _transformers()
    proc = tf.AutoImageProcessor.from_pretrained(model_dir)
    shapes = [tuple(proc(images=Image.open(tmp_path / "img" / n).convert("RGB"),
                         return_tensors="pt")["pixel_values"].shape) for n in names]
    counts = [shapes.count(s) for s in set(shapes)]
    assert batched["forward_passes"] == sum(-(-c // 4) for c in counts) < len(names)
    for n in names:
        with Image.open(depth_path_for(tmp_path / "d4", n)) as im:
            assert im.mode.startswith("I;16") and im.size == SPECS[n][::-1]
    a, b = _stored(tmp_path / "d1", names), _stored(tmp_path / "d4", names)
    for n in names:
        assert a[n].std() > 0.05, "a degenerate map would make this test vacuous"
        assert np.abs(a[n] - b[n]).max() <= 2 * CODE + 1e-9
    meta = read_depth_meta(tmp_path / "d4")
    assert meta["inverse_depth"] is True and meta["model_output"] == "inverse"
    assert meta["model_type"] == ("dpt" if which == "dpt" else "depth_anything")
    assert meta["source"] == str(Path(model_dir).resolve())


def _direct_depth01(model_dir, rgb, resized_hw, pad_left=0, crop=True):
    """Independent pipeline: resize by hand (bicubic like DPT's processor), normalise with
    the processor's default mean/std 0.5, zero-pad columns centrally, crop them back off."""
    tf = _transformers()
    model = tf.AutoModelForDepthEstimation.from_pretrained(model_dir).eval()
    h, w = resized_hw
    x = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC), np.float32) / 255
    x = torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None]
    x = F.pad(x, (pad_left, pad_left))
    with torch.no_grad():
        pred = model(pixel_values=x).predicted_depth
    if crop:
        pred = pred[:, :, pad_left:pad_left + w]
    up = F.interpolate(pred[:, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)
    return normalize_inverse_depth(up[0, 0].numpy())


def test_output_matches_direct_model_call(da_dir, tmp_path):
    names = _write_images(tmp_path / "img", {"x.png": (30, 50)})
    generate_depth(tmp_path / "img", tmp_path / "d", model_dir=da_dir, device="cpu",
                   progress=False)
    rgb = np.asarray(Image.open(tmp_path / "img" / names[0]).convert("RGB"))
    # keep_aspect_ratio: 30x50 -> scale 28/30 -> 28 x 46.7 -> multiple of 14 -> 28 x 42.
    expected = _direct_depth01(da_dir, rgb, (28, 42))
    got = load_depth_png(depth_path_for(tmp_path / "d", names[0]))
    assert np.abs(got - expected).max() <= 3 * CODE


def test_processor_padding_is_cropped_from_the_prediction(da_dir, tmp_path):
    tf = _transformers()
    padded = tmp_path / "padded_model"
    tf.AutoModelForDepthEstimation.from_pretrained(da_dir).save_pretrained(padded)
    _pil_processor(tf, size={"height": 28, "width": 28}, keep_aspect_ratio=True,
                   ensure_multiple_of=14, do_pad=True, size_divisor=28).save_pretrained(padded)
    names = _write_images(tmp_path / "img", {"x.png": (30, 50)})
    generate_depth(tmp_path / "img", tmp_path / "d", model_dir=padded, progress=False)
    rgb = np.asarray(Image.open(tmp_path / "img" / names[0]).convert("RGB"))
    # 28 x 42 padded to a multiple of 28 -> 28 x 56: 7 zero columns on each side.
    expected = _direct_depth01(da_dir, rgb, (28, 42), pad_left=7)
    got = load_depth_png(depth_path_for(tmp_path / "d", names[0]))
    assert np.abs(got - expected).max() <= 3 * CODE
    uncropped = _direct_depth01(da_dir, rgb, (28, 42), pad_left=7, crop=False)  # sanity
    assert np.abs(got - uncropped).max() > 0.05


def test_missing_transformers_says_how_to_install(monkeypatch):
    import sys
    from boxdepth.depth.hf import import_transformers
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r"pip install boxdepth\[depth\]"):
        import_transformers()


def test_resume_recomputes_only_missing(dpt_dir, tmp_path):
    names = _write_images(tmp_path / "img", SPECS)
    out = tmp_path / "d"
    generate_depth(tmp_path / "img", out, model_dir=dpt_dir, device="cpu", progress=False)
    paths = {n: depth_path_for(out, n) for n in names}
    before = {n: p.stat().st_mtime_ns for n, p in paths.items()}
    content = load_depth_png(paths["sub/c.png"])
    paths["sub/c.png"].unlink()
    s = generate_depth(tmp_path / "img", out, model_dir=dpt_dir, device="cpu", progress=False)
    assert (s["written"], s["skipped_existing"]) == (1, len(names) - 1)
    assert np.abs(load_depth_png(paths["sub/c.png"]) - content).max() <= 2 * CODE
    for n in names:
        if n != "sub/c.png":
            assert paths[n].stat().st_mtime_ns == before[n]
    s = generate_depth(tmp_path / "img", out, model_dir=dpt_dir, device="cpu", progress=False,
                       overwrite=True)
    assert s["written"] == len(names)


def test_coco_json_restricts_images(dpt_dir, tmp_path):
    _write_images(tmp_path / "img", SPECS)
    coco = {"images": [{"id": 0, "file_name": "sub/c.png", "height": 50, "width": 33},
                       {"id": 7, "file_name": "a.jpg", "height": 40, "width": 60}],
            "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    s = generate_depth(tmp_path / "img", tmp_path / "d", model_dir=dpt_dir,
                       coco_json=tmp_path / "c.json", device="cpu", progress=False)
    written = sorted(p.relative_to(tmp_path / "d").as_posix()
                     for p in (tmp_path / "d").rglob("*.png"))
    assert written == ["a.png", "sub/c.png"] and s["images"] == 2


def test_listing_skips_output_tree_and_non_images(tmp_path):
    _write_images(tmp_path, {"x.JPG": (8, 8), "depth/x.png": (8, 8), "y/z.TIFF": (8, 8)})
    (tmp_path / "notes.txt").write_text("no")
    (tmp_path / ".x.png.tmp-1.png").write_bytes(b"")
    assert list_images(tmp_path, exclude=(tmp_path / "depth",)) == ["x.JPG", "y/z.TIFF"]


def test_missing_model_dir_names_it_and_never_downloads(tmp_path):
    missing = tmp_path / "no_such_model"
    _write_images(tmp_path / "img", {"a.png": (8, 8)})
    with pytest.raises(FileNotFoundError) as e:
        generate_depth(tmp_path / "img", tmp_path / "d", model_dir=missing, progress=False)
    assert str(missing) in str(e.value) and "never downloads" in str(e.value)
    _transformers()
    with pytest.raises(FileNotFoundError, match="never downloads"):  # uncached repo id
        generate_depth(tmp_path / "img", tmp_path / "d", model_dir="no-such-org/no-such-model",
                       progress=False)
    assert not (tmp_path / "d").exists()


def test_directory_that_is_not_a_depth_model(tmp_path):
    tf = _transformers()
    _write_images(tmp_path / "img", {"a.png": (8, 8)})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json") as e:
        generate_depth(tmp_path / "img", tmp_path / "d", model_dir=empty, progress=False)
    assert str(empty) in str(e.value)
    other = tmp_path / "bert"
    tf.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(other)
    with pytest.raises(ValueError, match="not a depth model") as e:
        generate_depth(tmp_path / "img", tmp_path / "d", model_dir=other, progress=False)
    assert "bert" in str(e.value) and str(other) in str(e.value)


def test_unreadable_image_names_it_and_keeps_earlier_work(dpt_dir, tmp_path):
    _write_images(tmp_path / "img", {"a.png": (20, 20), "b.png": (20, 30)})
    (tmp_path / "img" / "c_bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="c_bad.jpg"):
        generate_depth(tmp_path / "img", tmp_path / "d", model_dir=dpt_dir, batch_size=8,
                       device="cpu", progress=False)
    # a.png and b.png were decoded before the bad file and are saved, batch not yet full.
    assert sorted(p.name for p in (tmp_path / "d").glob("*.png")) == ["a.png", "b.png"]


def test_refuses_to_mix_sources(dpt_dir, da_dir, tmp_path):
    _write_images(tmp_path / "img", {"a.png": (20, 20)})
    generate_depth(tmp_path / "img", tmp_path / "d", model_dir=dpt_dir, progress=False)
    with pytest.raises(ValueError, match="holds depth from"):
        generate_depth(tmp_path / "img", tmp_path / "d", model_dir=da_dir, progress=False)


# ----------------------------------------------------------------------------- sensor path

def test_fill_missing_nearest_small_case():
    d = np.array([[0, 0, 5.0], [0, 0, 0], [7.0, 0, 0]])
    filled, valid = fill_missing_nearest(d)
    assert valid.sum() == 2
    expected = np.array([[5, 5, 5], [7, 5, 5], [7, 7, 5]], float)
    # (0,0),(1,1) and (2,2) are equidistant from both readings: either value is right.
    tie = np.zeros_like(valid)
    tie[0, 0] = tie[1, 1] = tie[2, 2] = True
    assert np.array_equal(filled[~tie], expected[~tie])
    assert set(filled[tie]) <= {5.0, 7.0}
    with pytest.raises(ValueError, match="no valid reading"):
        fill_missing_nearest(np.zeros((3, 3)))


def test_pairing_rules(tmp_path):
    (tmp_path / "rgb" / "s").mkdir(parents=True)
    (tmp_path / "dep" / "s").mkdir(parents=True)
    (tmp_path / "dep" / "s" / "f.png").write_bytes(b"")
    (tmp_path / "dep" / "g-depth.png").write_bytes(b"")
    assert find_sensor_depth(tmp_path / "rgb", tmp_path / "dep", "s/f.jpg") == \
        tmp_path / "dep" / "s" / "f.png"
    assert find_sensor_depth(tmp_path / "rgb", tmp_path / "dep", "g-color.jpg") == \
        tmp_path / "dep" / "g-depth.png"
    with pytest.raises(FileNotFoundError, match="same folder|share the folder"):
        find_sensor_depth(tmp_path / "dep", tmp_path / "dep", "s/f.png")


def _nearest_valid_values(depth_mm, holes_rc, valid_rc):
    from scipy.spatial import cKDTree
    tree = cKDTree(valid_rc)
    dist, idx = tree.query(holes_rc, k=8)
    near = dist <= dist[:, :1] + 1e-9  # every valid pixel at the minimal distance (ties)
    vals = depth_mm[valid_rc[idx, 0], valid_rc[idx, 1]]
    return vals, near


@pytest.mark.skipif(not TABLETOP.is_dir(), reason="shared tabletop-rgbd data absent")
def test_sensor_tabletop(tmp_path):
    out = tmp_path / "depth"
    s = generate_depth(TABLETOP, out, from_sensor=TABLETOP, progress=False)
    assert (s["images"], s["written"]) == (9, 9)
    assert read_depth_meta(out)["source"] == "sensor"
    rng = np.random.default_rng(0)
    for k in range(9):
        mm = np.asarray(Image.open(TABLETOP / f"image_{k:04d}-depth.png")).astype(np.float64)
        got = load_depth_png(out / f"image_{k:04d}-color.png")
        assert got.shape == mm.shape == (480, 640)
        valid = mm > 0
        inv = 1.0 / mm[valid]
        lo, hi = np.percentile(inv, [1, 99])
        # Valid readings: the stored value is the normalised 1/mm (larger = nearer).
        assert np.abs(got[valid] - np.clip((inv - lo) / (hi - lo), 0, 1)).max() <= CODE
        order = np.argsort(mm[valid], kind="stable")
        assert np.all(np.diff(got[valid][order]) <= 0)  # farther never brighter
        assert got[valid].std() > 0.1
        # Holes: the value of (one of) the nearest valid readings, by brute-force k-NN.
        holes = np.argwhere(~valid)
        holes = holes[rng.choice(len(holes), size=min(300, len(holes)), replace=False)]
        vals, near = _nearest_valid_values(mm, holes, np.argwhere(valid))
        expected = np.clip((1.0 / vals - lo) / (hi - lo), 0, 1)
        stored = got[holes[:, 0], holes[:, 1]][:, None]
        assert np.all(np.any((np.abs(expected - stored) <= CODE + 1e-9) & near, axis=1))


@pytest.mark.skipif(not TABLETOP.is_dir(), reason="shared tabletop-rgbd data absent")
def test_sensor_errors(tmp_path):
    rgb, dep = tmp_path / "rgb", tmp_path / "dep"
    rgb.mkdir()
    dep.mkdir()
    Image.open(TABLETOP / "image_0000-color.png").save(rgb / "x.png")
    Image.fromarray(np.zeros((480, 640), np.uint16)).save(dep / "x.png")
    with pytest.raises(ValueError, match="no valid reading") as e:
        generate_depth(rgb, tmp_path / "o", from_sensor=dep, progress=False)
    assert str(dep / "x.png") in str(e.value)
    Image.fromarray(np.full((48, 64), 900, np.uint16)).save(dep / "x.png")
    with pytest.raises(ValueError, match="same size") as e:
        generate_depth(rgb, tmp_path / "o", from_sensor=dep, progress=False)
    assert str(dep / "x.png") in str(e.value) and str(rgb / "x.png") in str(e.value)
    assert not list((tmp_path / "o").glob("*.png"))


def test_output_folder_must_differ_from_inputs(tmp_path):
    _write_images(tmp_path / "img", {"a-color.png": (8, 8)})
    Image.fromarray(np.full((8, 8), 500, np.uint16)).save(tmp_path / "img" / "a-depth.png")
    with pytest.raises(ValueError, match="would overwrite"):
        generate_depth(tmp_path / "img", tmp_path / "img", from_sensor=tmp_path / "img",
                       progress=False)
    with pytest.raises(ValueError, match="exactly one depth source"):
        generate_depth(tmp_path / "img", tmp_path / "d", progress=False)


def test_output_kind_by_model_type():
    from types import SimpleNamespace as NS
    from boxdepth.depth.hf import depth_output_kind
    assert depth_output_kind(NS(model_type="dpt"), "m") == "inverse"
    assert depth_output_kind(NS(model_type="depth_anything"), "m") == "inverse"
    assert depth_output_kind(NS(model_type="depth_anything", depth_estimation_type="metric"),
                             "m") == "metric"
    assert depth_output_kind(NS(model_type="zoedepth"), "m") == "metric"
    with pytest.raises(ValueError, match="chmv2"):
        depth_output_kind(NS(model_type="chmv2"), "m")
