"""`boxdepth viz` panels: affinity maps against a brute-force numpy version, panel
geometry and content, prediction tiles, missing / mismatched depth, real RGB-D data."""
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_erosion
from skimage.color import rgb2lab

from boxdepth.config import load_config
from boxdepth.data.depth_io import (depth_path_for, load_depth_png, normalize_inverse_depth,
                                    save_depth_png)
from boxdepth.data.synthetic import synthesize_image
from boxdepth.models.build import build_model
from boxdepth.data.transforms import TestTransform
from boxdepth.engine.inference import load_trained_model
from boxdepth.engine.predict import predict_image
from boxdepth.viz.draw import (NOTE_BG, colorize_affinity, colorize_depth, overlay_instances,
                               title_strip_height)
from boxdepth.viz.panels import (affinity_maps, panel_font_size, run_viz,
                                 upsample_nearest)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAD = 4


# ----------------------------------------------------------------------------- helpers
def _pool4(a: np.ndarray) -> np.ndarray:
    """Edge-pad to a multiple of 4, then the mean of each 4x4 cell (numpy only)."""
    a = a.astype(np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    h, w = a.shape[:2]
    a = np.pad(a, ((0, -h % 4), (0, -w % 4), (0, 0)), mode="edge")
    return a.reshape(a.shape[0] // 4, 4, a.shape[1] // 4, 4, -1).mean(axis=(1, 3))


def _offsets(k: int, d: int) -> list[tuple[int, int]]:
    r = range(-d * (k // 2), d * (k // 2) + 1, d)
    return [(dy, dx) for dy in r for dx in r if (dy, dx) != (0, 0)]


def _brute_force(image, depth01, k=3, d=2, kappa=0.5, tau=0.5, thresh=0.3):
    """Per-pixel mean S and active fraction over on-image neighbours, loop by loop."""
    lab = rgb2lab(_pool4(image) / 255.0)
    d255 = 255.0 * _pool4(depth01)[:, :, 0]
    h, w = d255.shape
    out = {k: np.zeros((h, w)) for k in ("color", "color_active", "depth", "depth_active")}
    for y in range(h):
        for x in range(w):
            sc, sd = [], []
            for dy, dx in _offsets(k, d):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    sc.append(np.exp(-0.5 * np.linalg.norm(lab[y, x] - lab[y + dy, x + dx])))
                    sd.append(np.exp(-kappa * abs(d255[y, x] - d255[y + dy, x + dx])))
            sc, sd = np.array(sc), np.array(sd)
            out["color"][y, x], out["color_active"][y, x] = sc.mean(), (sc >= thresh).mean()
            out["depth"][y, x], out["depth_active"][y, x] = sd.mean(), (sd > tau).mean()
    return out


def _tiles(panel: np.ndarray, n: int, hw, font_size: int) -> list[np.ndarray]:
    """Cut a one-row titled panel (make_panel's layout) into its n tiles."""
    h, w = hw
    top = PAD + title_strip_height(font_size)
    return [panel[top:top + h, PAD + i * (w + PAD):PAD + i * (w + PAD) + w] for i in range(n)]


def _panel_size(n: int, hw, font_size: int) -> tuple[int, int]:
    """(height, width) by make_panel's size rule for one titled row of n equal tiles."""
    h, w = hw
    return PAD + title_strip_height(font_size) + h + PAD, PAD + n * (w + PAD)


def _is_note(tile: np.ndarray) -> bool:
    return (tile == np.array(NOTE_BG, np.uint8)).all(axis=2).mean() > 0.8


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A synthetic RGB-D scene on disk: images/scene.png + depth/scene.png."""
    root = tmp_path_factory.mktemp("scene")
    sc = synthesize_image(0, 0, 0, size=(96, 64), depth_error=0.0)
    (root / "images").mkdir()
    Image.fromarray(sc["image"]).save(root / "images" / "scene.png")
    save_depth_png(depth_path_for(root / "depth", "scene.png"), sc["depth01"])
    return root, sc


# ----------------------------------------------------------------------------- affinities
@pytest.mark.parametrize("k,d,kappa,tau,thresh", [(3, 2, 0.5, 0.5, 0.3), (5, 1, 1.0, 0.2, 0.1)])
def test_affinity_maps_match_brute_force_odd_size(k, d, kappa, tau, thresh):
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (30, 45, 3)).astype(np.uint8)
    image[:, :20] = image[:, :20] // 32 + 100  # a nearly flat region: some pairs active
    depth = (np.linspace(0, 0.05, 45)[None] + rng.rand(30, 45) * 0.01).astype(np.float32)
    got = affinity_maps(image, depth, kernel_size=k, dilation=d, kappa=kappa, tau=tau,
                        color_thresh=thresh)
    ref = _brute_force(image, depth, k, d, kappa, tau, thresh)
    for k, v in ref.items():
        assert got[k].shape == (8, 12), k  # ceil(30/4), ceil(45/4)
        np.testing.assert_allclose(got[k], v, atol=2e-4, err_msg=k)
    assert 0 < got["color_active"].mean() < 1 and 0 < got["depth_active"].mean() < 1


def test_affinity_two_regions_edges_exactly_at_the_boundaries():
    """Colour edge at x = 24 (vertical), depth-only edge at y = 16 (horizontal)."""
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, :24], image[:, 24:] = (200, 60, 40), (40, 60, 200)
    depth = np.full((32, 48), 0.2, np.float32)
    depth[16:] = 0.8
    m = affinity_maps(image, depth)
    flat_depth = affinity_maps(image, np.full((32, 48), 0.2, np.float32))
    flat_image = affinity_maps(np.full_like(image, 90), depth)
    cols_near, rows_near = [4, 5, 6, 7], [2, 3, 4, 5]  # stride-4 cells within 2 of an edge
    for key in ("color", "color_active"):
        far = np.delete(m[key], cols_near, axis=1)
        assert np.all(far == 1.0), key
        # interior row, one cell from the edge: 3 of its 8 neighbours across (S_c ~ 0)
        assert m[key][3, 5] == pytest.approx(5 / 8, abs=1e-6)
        assert np.all(m[key][:, cols_near] < 0.7)
        # the depth-only edge leaves the colour affinity untouched
        assert np.array_equal(m[key], flat_depth[key])
    for key in ("depth", "depth_active"):
        far = np.delete(m[key], rows_near, axis=0)
        assert np.all(far == 1.0), key
        assert m[key][5, 3] == pytest.approx(5 / 8, abs=1e-6)
        assert np.all(m[key][rows_near] < 0.7)
        assert np.array_equal(m[key], flat_image[key])  # the colour edge is invisible to depth
    # an image border is not an edge: the corner cell of a uniform quadrant is 1
    assert m["color"][0, 0] == m["depth"][0, 0] == 1.0


def test_affinity_without_depth_and_bad_shapes():
    image = np.full((16, 16, 3), 128, np.uint8)
    m = affinity_maps(image, None)
    assert m["depth"] is None and m["depth_active"] is None and np.all(m["color"] == 1.0)
    with pytest.raises(ValueError, match="does not match"):
        affinity_maps(image, np.zeros((16, 12), np.float32))


def test_depth_affinity_darker_on_object_boundaries(scene):
    _, sc = scene
    m = affinity_maps(sc["image"], sc["depth01"])
    labels = sc["labels"][2::4, 2::4]  # object id at each stride-4 cell centre
    h, w = labels.shape
    padded = np.pad(labels, 2, mode="edge")
    boundary = np.zeros((h, w), bool)
    for dy, dx in _offsets(3, 2):
        boundary |= padded[2 + dy:2 + dy + h, 2 + dx:2 + dx + w] != labels
    assert boundary.any() and (~boundary).any()
    for key in ("depth", "depth_active"):
        assert m[key][boundary].mean() < m[key][~boundary].mean() - 0.1, key


# ----------------------------------------------------------------------------- panels
def test_panel_without_weights_four_tiles(scene, tmp_path):
    root, sc = scene
    summary = run_viz([str(root / "images")], tmp_path / "out", depth_root=root / "depth",
                      progress=False)
    path = tmp_path / "out" / "scene_panel.png"
    assert summary["panels"] == [str(path)] and summary["missing_depth"] == []
    assert len(summary["tiles"]) == 4 and "active" in summary["tiles"][3]
    panel = np.asarray(Image.open(path).convert("RGB"))
    fs = panel_font_size(96)
    assert panel.shape[:2] == _panel_size(4, (64, 96), fs)
    tiles = _tiles(panel, 4, (64, 96), fs)
    d01 = load_depth_png(root / "depth" / "scene.png")
    m = affinity_maps(sc["image"], d01)
    assert np.array_equal(tiles[0], sc["image"])
    assert np.array_equal(tiles[1], colorize_depth(d01))
    for tile, key in zip(tiles[2:], ("color_active", "depth_active")):
        assert np.array_equal(tile, colorize_affinity(upsample_nearest(m[key], 4, (64, 96))))


def test_panel_mean_view(scene, tmp_path):
    root, sc = scene
    opts = dict(kernel_size=5, dilation=1, kappa=0.1, tau=0.3, color_thresh=0.2)
    summary = run_viz([str(root / "images" / "scene.png")], tmp_path, depth_root=root / "depth",
                      affinity="mean", progress=False, **opts)
    assert "mean S_d" in summary["tiles"][3]
    panel = np.asarray(Image.open(summary["panels"][0]).convert("RGB"))
    m = affinity_maps(sc["image"], load_depth_png(root / "depth" / "scene.png"), **opts)
    tiles = _tiles(panel, 4, (64, 96), panel_font_size(96))
    for tile, key in zip(tiles[2:], ("color", "depth")):
        assert np.array_equal(tile, colorize_affinity(upsample_nearest(m[key], 4, (64, 96))))
    with pytest.raises(ValueError, match="affinity view"):
        run_viz([str(root / "images")], tmp_path, affinity="median", progress=False)


def test_short_side_computes_at_the_training_scale(scene, tmp_path):
    root, sc = scene
    summary = run_viz([str(root / "images")], tmp_path, depth_root=root / "depth",
                      short_side=128, progress=False)
    panel = np.asarray(Image.open(summary["panels"][0]).convert("RGB"))
    tiles = _tiles(panel, 4, (64, 96), panel_font_size(96))
    d01 = load_depth_png(root / "depth" / "scene.png")
    big_img = np.asarray(Image.fromarray(sc["image"]).resize((192, 128), Image.BILINEAR))
    big_d = np.asarray(Image.fromarray(d01).resize((192, 128), Image.BILINEAR))
    m = affinity_maps(big_img, big_d)  # (32, 48): each cell is 2x2 px of the tile
    assert np.array_equal(tiles[1], colorize_depth(d01))  # the depth tile stays full size
    for tile, key in zip(tiles[2:], ("color_active", "depth_active")):
        assert np.array_equal(tile, colorize_affinity(upsample_nearest(m[key], 2, (64, 96))))


def test_missing_depth_warns_and_draws_a_tile(scene, tmp_path, caplog):
    root, _ = scene
    empty = tmp_path / "depth"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="boxdepth"):
        summary = run_viz([str(root / "images")], tmp_path / "out", depth_root=empty,
                          progress=False)
    assert str(empty / "scene.png") in caplog.text and "no depth" in caplog.text
    assert summary["missing_depth"] == [str(root / "images" / "scene.png")]
    panel = np.asarray(Image.open(summary["panels"][0]).convert("RGB"))
    tiles = _tiles(panel, 4, (64, 96), panel_font_size(96))
    assert _is_note(tiles[1]) and _is_note(tiles[3])
    assert not _is_note(tiles[2])  # the colour affinity needs no depth


def test_depth_size_mismatch_names_both_files(scene, tmp_path):
    root, _ = scene
    save_depth_png(tmp_path / "depth" / "scene.png", np.zeros((60, 96), np.float32))
    with pytest.raises(ValueError, match=r"depth/scene\.png.*images/scene\.png"):
        run_viz([str(root / "images")], tmp_path / "out", depth_root=tmp_path / "depth",
                progress=False)


def test_image_outside_images_root_names_both(scene, tmp_path):
    root, _ = scene
    with pytest.raises(ValueError, match=f"scene.png.*{tmp_path.name}"):
        run_viz([str(root / "images")], tmp_path / "out", depth_root=root / "depth",
                images_root=tmp_path, progress=False)


# ----------------------------------------------------------------------------- predictions
TINY = ["model.backbone.name=small", "model.backbone.norm=BN", "model.backbone.freeze_at=0",
        "model.fpn.out_channels=32", "model.fcos.num_classes=3", "model.fcos.num_convs=1",
        "model.fcos.norm=BN", "model.mask_branch.channels=32", "model.mask_branch.num_convs=1",
        "input.min_size_test=64", "input.max_size_test=128", "model.fcos.inference_th=0.0",
        "model.fcos.post_nms_topk=5"]


def _make_ckpt(path: Path, depth_head: bool) -> Path:
    """An untrained tiny model whose boxes have some size (as tests/test_predict.py)."""
    torch.manual_seed(0)
    cfg = load_config(None, TINY + [f"model.depth_head={str(depth_head).lower()}"])
    model = build_model(cfg)
    with torch.no_grad():
        model.fcos_head.cls_logits.weight.mul_(200.0)
        model.fcos_head.cls_logits.bias.zero_()
        model.fcos_head.bbox_pred.bias.fill_(1.0)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(),
                "meta": {"cat_ids": [1, 2, 3], "class_names": ["a", "b", "c"]}}, path)
    return path


@pytest.mark.parametrize("depth_head", [False, True])
def test_panel_with_weights_six_tiles(scene, tmp_path, depth_head):
    root, sc = scene
    ckpt = _make_ckpt(tmp_path / "tiny.pth", depth_head)
    summary = run_viz([str(root / "images")], tmp_path / "out", depth_root=root / "depth",
                      weights=ckpt, device="cpu", score_thresh=0.0, progress=False)
    assert len(summary["tiles"]) == 6 and summary["device"] == "cpu"
    panel = np.asarray(Image.open(summary["panels"][0]).convert("RGB"))
    fs = panel_font_size(96)
    assert panel.shape[:2] == _panel_size(6, (64, 96), fs)
    tiles = _tiles(panel, 6, (64, 96), fs)
    model, cfg, _ = load_trained_model(ckpt)
    det = predict_image(model, sc["image"], TestTransform(64, 128), "cpu")
    assert len(det["scores"]) > 0
    assert np.array_equal(tiles[4], overlay_instances(
        sc["image"], det["masks"], det["boxes"], [["a", "b", "c"][i] for i in det["labels"]],
        det["scores"]))
    depth_tile = tiles[5]
    if not depth_head:
        assert _is_note(depth_tile)
        return
    # each instance's own predicted depth inside its mask, the best instance on top,
    # black outside every mask
    lit = ~(depth_tile == 0).all(axis=2)
    assert lit.any() and not (lit & ~det["masks"].any(0)).any()
    top = binary_erosion(det["masks"][0], border_value=0)
    assert top.any()
    assert np.array_equal(depth_tile[top], colorize_depth(det["depth"][0])[top])


# ----------------------------------------------------------------------------- real data
@pytest.mark.skipif(not (DATA / "tabletop-rgbd").is_dir(), reason="shared data absent")
def test_real_rgbd_panel(tmp_path):
    src = DATA / "tabletop-rgbd"
    image = np.asarray(Image.open(src / "image_0000-color.png").convert("RGB"))
    try:
        from boxdepth.depth.sensor import sensor_depth01
        d01 = sensor_depth01(src / "image_0000-depth.png", image.shape[:2])
    except ImportError:  # the sensor module is not there yet: the same steps by hand
        mm = np.asarray(Image.open(src / "image_0000-depth.png")).astype(np.float64)
        d01 = normalize_inverse_depth(np.where(mm > 0, 1.0 / np.maximum(mm, 1), 0), valid=mm > 0)
    save_depth_png(depth_path_for(tmp_path / "depth", "image_0000-color.png"), d01)
    summary = run_viz([str(src / "image_0000-color.png")], tmp_path / "out",
                      depth_root=tmp_path / "depth", progress=False)
    assert summary["images_root"] == str(src) and summary["missing_depth"] == []
    panel = np.asarray(Image.open(summary["panels"][0]).convert("RGB"))
    fs = panel_font_size(640)
    assert panel.shape[:2] == _panel_size(4, (480, 640), fs)
    tiles = _tiles(panel, 4, (480, 640), fs)
    assert np.array_equal(tiles[0], image)
    stored = load_depth_png(tmp_path / "depth" / "image_0000-color.png")
    assert np.array_equal(tiles[1], colorize_depth(stored))


def test_raw_sensor_depth_files_are_not_drawn_as_images():
    from boxdepth.viz.panels import drop_sensor_depth_files
    paths = [Path("a/x-color.png"), Path("a/x-depth.png"), Path("a/y_depth.png"),
             Path("b/x-depth.png"), Path("a/y_color.jpg"), Path("a/z-depth.png")]
    # a depth file goes only when its colour partner (same folder) is listed too
    assert drop_sensor_depth_files(paths) == [Path("a/x-color.png"), Path("b/x-depth.png"),
                                              Path("a/y_color.jpg"), Path("a/z-depth.png")]
