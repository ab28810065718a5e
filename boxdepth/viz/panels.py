"""`boxdepth viz`: one picture per image of what the depth guidance sees (paper-style rows).

Row of tiles per image, written to ``<out_dir>/<name>_panel.png`` (`name` as in
`boxdepth predict`: the file stem, made unique):
    image | pseudo depth | colour affinity | depth affinity [| predicted masks | instance depth
          [| pseudo masks]]
The prediction tiles need `weights`; the pseudo-mask tile needs `weights` and `gt`, a COCO
json with the images' boxes (e.g. train.json): the self-distillation pseudo masks that
training would make for each GT box with this model as the teacher (viz/pseudo.py). Images
are looked up in `gt` by their path relative to `images_root` (COCO file_name); one that is
not there gets a note tile. A missing depth file gives a "no depth" tile (and a warning);
the colour affinity never needs depth.

Affinity maps are computed as the pairwise losses compute them (SPEC §2,
losses/criterion.py): at stride s = 4, on the image average-pooled by s and converted to
Lab (`color_similarity`), and on the pseudo depth average-pooled by s and scaled to
d255 (`depth_similarity` with kappa), over the k*k-1 dilated neighbours. Per pixel they
are summarised over its neighbours that lie on the image (pairs leaving the image are not
pairs, so the image border is not drawn as an edge):
    color / depth               mean S_c / mean S_d                    (h, w) in [0, 1]
    color_active / depth_active fraction of ACTIVE pairs, i.e. of the  (h, w) in [0, 1]
                                pairs the losses train on: [S_c >= color_thresh], [S_d > tau]
with (h, w) = (ceil(H / s), ceil(W / s)); the image / depth are edge-padded to a multiple
of s before pooling. The panel shows the active fractions by default (`affinity="active"`):
that binary weight is what L_pairwise and L_cons train on, and it shows, e.g., that on a
slanted table only the pairs along the slope's level lines stay active, or that noisy
pseudo depth leaves few active pairs at all; `affinity="mean"` shows mean S instead, which
draws depth edges more smoothly. The maps are computed at the image's own size unless
`short_side` is given: training resizes to a short side of 640-800 first (SPEC §5), so a
neighbour pair spans less of the scene there. Maps are shown upsampled (nearest) to the
tile size: white = every pair active / similar (inside a region), black = none (an edge).

Depth lookup: ``depth_path_for(depth_root, rel)`` with `rel` the image path relative to
`images_root` (default: the common folder of the input folders and the images' folders).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import binary_erosion
from tqdm import tqdm

from boxdepth.data.depth_io import depth_path_for, load_depth_png
from boxdepth.data.image_io import load_image_rgb
from boxdepth.losses.depth import depth_similarity
from boxdepth.ops.pairwise import color_similarity, neighbour_mask, rgb_to_lab
from boxdepth.viz.draw import (colorize_affinity, colorize_depth, make_panel,
                               note_tile, overlay_instances, save_png)

log = logging.getLogger("boxdepth")

MASK_STRIDE = 4
MAX_TILE_HEIGHT = 480  # larger images are shown smaller so that a row stays viewable


# ----------------------------------------------------------------------------- affinities
def _pool(array: np.ndarray, stride: int) -> torch.Tensor:
    """(H, W, C) -> (1, C, ceil(H/s), ceil(W/s)) float32, edge-padded then average-pooled."""
    t = torch.from_numpy(np.array(array, dtype=np.float32)).permute(2, 0, 1)[None]
    h, w = t.shape[-2:]
    ph, pw = -h % stride, -w % stride
    if ph or pw:
        t = F.pad(t, (0, pw, 0, ph), mode="replicate")
    return F.avg_pool2d(t, stride, stride)


def _summaries(sim: torch.Tensor, on_image: torch.Tensor, active: torch.Tensor):
    """(1,K,h,w) similarities -> (mean over on-image neighbours, fraction active) numpy."""
    count = on_image.sum(1).clamp(min=1.0)
    mean = (sim * on_image).sum(1) / count
    frac = (active & (on_image > 0)).to(sim.dtype).sum(1) / count
    return mean[0].numpy(), frac[0].numpy()


@torch.no_grad()
def affinity_maps(image: np.ndarray, depth01: np.ndarray | None = None, *, kernel_size: int = 3,
                  dilation: int = 2, kappa: float = 0.5, tau: float = 0.5,
                  color_thresh: float = 0.3, stride: int = MASK_STRIDE) -> dict:
    """uint8 (H, W, 3) image and optional d01 (H, W) -> {"color", "color_active", "depth",
    "depth_active"}: float32 (ceil(H/s), ceil(W/s)) maps in [0, 1] (module docstring);
    the depth entries are None without depth."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"affinity_maps expects an (H, W, 3) RGB image, got shape {img.shape}")
    lab = rgb_to_lab(_pool(img, stride))
    ones = torch.ones((1, 1) + tuple(lab.shape[-2:]))
    on_image = neighbour_mask(ones, lab, kernel_size, dilation)
    s_c = color_similarity(lab, ones, kernel_size, dilation)
    out = dict(zip(("color", "color_active"), _summaries(s_c, on_image, s_c >= color_thresh)))
    out["depth"] = out["depth_active"] = None
    if depth01 is not None:
        d = np.asarray(depth01, dtype=np.float32)
        if d.shape != img.shape[:2]:
            raise ValueError(f"affinity_maps: depth of shape {d.shape} does not match the "
                             f"image {img.shape[:2]}")
        d255 = 255.0 * _pool(d[:, :, None], stride)
        s_d = depth_similarity(d255, ones, kernel_size, dilation, kappa)
        out["depth"], out["depth_active"] = _summaries(s_d, on_image, s_d > tau)
    return out


def upsample_nearest(stride_map: np.ndarray, stride: int, hw: tuple[int, int]) -> np.ndarray:
    """A stride-s map -> (H, W): each cell repeated s x s, cropped to the image."""
    big = np.repeat(np.repeat(stride_map, stride, axis=0), stride, axis=1)
    return big[:hw[0], :hw[1]]


# ----------------------------------------------------------------------------- tiles
def instance_depth_tile(masks: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Each instance's predicted depth (K, H, W) painted inside its mask (K, H, W), the
    first (best) instance on top; background and the rim of each instance black."""
    h, w = masks.shape[1:]
    canvas, valid = np.zeros((h, w), np.float32), np.zeros((h, w), bool)
    for k in reversed(range(masks.shape[0])):
        m = masks[k]
        canvas[m], valid[m] = depth[k][m], True
        valid[m & ~_eroded(m)] = False  # a dark rim keeps touching instances apart
    return colorize_depth(canvas, valid=valid)


def _eroded(mask: np.ndarray) -> np.ndarray:
    return binary_erosion(mask, border_value=0)


AFFINITY_VIEWS = ("active", "mean")


def affinity_tiles(maps: dict, hw: tuple[int, int], *, color_thresh: float, tau: float,
                   view: str = "active") -> tuple[list[np.ndarray], list[str]]:
    """The colour and depth affinity tiles and their titles from `affinity_maps` output
    already at the display size `hw`: the fraction of active pairs (view "active") or the
    mean similarity (view "mean")."""
    if view not in AFFINITY_VIEWS:
        raise ValueError(f"affinity view must be one of {AFFINITY_VIEWS}, got {view!r}")
    suffix = "_active" if view == "active" else ""
    tiles = [colorize_affinity(maps["color" + suffix])]
    titles = [f"colour affinity: active pairs (S_c>={color_thresh:g})" if view == "active"
              else "colour affinity: mean S_c"]
    if maps["depth" + suffix] is None:
        tiles.append(note_tile(hw, "no depth"))
    else:
        tiles.append(colorize_affinity(maps["depth" + suffix]))
    titles.append(f"depth affinity: active pairs (S_d>{tau:g})" if view == "active"
                  else "depth affinity: mean S_d")
    return tiles, titles


class _Predictor:
    """A loaded model and what its two prediction tiles need."""

    def __init__(self, weights, device):
        from boxdepth.data.transforms import TestTransform
        from boxdepth.engine.inference import load_trained_model

        self.model, self.cfg, meta = load_trained_model(weights, device)
        self.weights_loaded = meta["weights_loaded"]
        self.device = device
        self.transform = TestTransform(self.cfg.input.min_size_test, self.cfg.input.max_size_test)
        n = int(self.model.num_classes)
        names = meta.get("class_names") or [f"class_{i}" for i in range(n)]
        self.class_names = [str(c) for c in names]
        self.depth_head = bool(self.model.mask_head.depth_head)

    def tiles(self, image: np.ndarray, score_thresh: float) -> tuple[list[np.ndarray], list[str]]:
        from boxdepth.engine.predict import predict_image

        det = predict_image(self.model, image, self.transform, self.device,
                            with_depth=self.depth_head)
        keep = np.nonzero(det["scores"] >= score_thresh)[0]
        names = [self.class_names[int(c)] if int(c) < len(self.class_names) else str(int(c))
                 for c in det["labels"][keep]]
        masks = det["masks"][keep]
        tiles = [overlay_instances(image, masks, det["boxes"][keep], names, det["scores"][keep])]
        titles = [f"predicted masks ({len(keep)} with score>={score_thresh:g})"]
        hw = image.shape[:2]
        if not self.depth_head or det["depth"] is None:
            tiles.append(note_tile(hw, "no instance depth: the model has no DG-MaskHead "
                                       "(model.depth_head: false)"))
        elif len(keep) == 0:
            tiles.append(note_tile(hw, f"no detection with score >= {score_thresh:g}"))
        else:
            tiles.append(instance_depth_tile(masks, det["depth"][keep]))
        titles.append("predicted instance depth (P_depth)")
        return tiles, titles


# ----------------------------------------------------------------------------- files
def default_images_root(inputs: list[str], paths: list[Path]) -> Path:
    """The common folder of the input folders and of every image's folder."""
    folders = [os.path.abspath(t) for t in inputs if Path(t).is_dir()]
    folders += [os.path.abspath(p.parent) for p in paths]
    return Path(os.path.commonpath(folders))


_SIDE_BY_SIDE = (("-depth", "-color"), ("_depth", "_color"))


def drop_sensor_depth_files(paths: list[Path]) -> list[Path]:
    """Without the raw sensor depth images of RGB-D folders: `X-depth.*` (or `X_depth.*`)
    when `X-color.*` (`X_color.*`) is among the images too."""
    stems = {(p.parent, p.stem) for p in paths}

    def partner(p: Path) -> bool:
        return any(p.stem.endswith(d) and (p.parent, p.stem[:-len(d)] + c) in stems
                   for d, c in _SIDE_BY_SIDE)
    return [p for p in paths if not partner(p)]


def relative_name(path: Path, images_root: Path) -> str:
    """`path` relative to `images_root` (posix), or an error naming both."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(images_root)).as_posix()
    except ValueError:
        raise ValueError(f"image {path} is not under the images root {images_root}; pass the "
                         f"folder the depth tree mirrors as images_root (--images-root)") from None


def load_depth_for(image_path: Path, image_hw: tuple[int, int], depth_root, rel: str):
    """-> (d01 (H, W) or None, depth path or None): None (with a warning) when the depth
    file is missing. A depth map of another size than the image is an error naming both."""
    if depth_root is None:
        return None, None
    dpath = depth_path_for(depth_root, rel)
    if not dpath.is_file():
        log.warning("viz: no depth for %s (looked for %s); drawing a 'no depth' tile. If the "
                    "depth tree mirrors another folder, pass it as --images-root",
                    image_path, dpath)
        return None, dpath
    d01 = load_depth_png(dpath)
    if d01.shape != tuple(image_hw):
        raise ValueError(f"depth map {dpath} is {d01.shape[1]}x{d01.shape[0]} but its image "
                         f"{image_path} is {image_hw[1]}x{image_hw[0]} (width x height); they "
                         f"must be the same size")
    return d01, dpath


def _resize_for_losses(image: np.ndarray, d01, short_side):
    """Image (bilinear) and depth (bilinear, SPEC §0) resized to `short_side`, if given."""
    if not short_side:
        return image, d01
    h, w = image.shape[:2]
    scale = float(short_side) / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    if d01 is not None:
        d01 = np.asarray(Image.fromarray(d01.astype(np.float32)).resize(size, Image.BILINEAR))
    return img, d01


def _display(stride_map: np.ndarray, stride: int, used_hw, hw) -> np.ndarray:
    m = upsample_nearest(stride_map, stride, used_hw)
    if tuple(used_hw) != tuple(hw):
        m = np.asarray(Image.fromarray(m.astype(np.float32)).resize(
            (hw[1], hw[0]), Image.NEAREST))
    return m


def panel_row(image: np.ndarray, d01, *, kernel_size=3, dilation=2, kappa=0.5, tau=0.5,
              color_thresh=0.3, short_side=None, affinity="active"
              ) -> tuple[list[np.ndarray], list[str]]:
    """The first four tiles (image, pseudo depth, colour and depth affinity) and titles."""
    hw = image.shape[:2]
    img_l, d_l = _resize_for_losses(image, d01, short_side)
    maps = affinity_maps(img_l, d_l, kernel_size=kernel_size, dilation=dilation, kappa=kappa,
                         tau=tau, color_thresh=color_thresh, stride=MASK_STRIDE)
    shown = {k: None if v is None else _display(v, MASK_STRIDE, img_l.shape[:2], hw)
             for k, v in maps.items()}
    tiles = [image, note_tile(hw, "no depth") if d01 is None else colorize_depth(d01)]
    titles = ["image", "pseudo depth (near = warm)"]
    t, n = affinity_tiles(shown, hw, color_thresh=color_thresh, tau=tau, view=affinity)
    return tiles + t, titles + n


def _check_viz_args(score_thresh, affinity, max_images, gt, weights) -> None:
    """Refuse bad options before any image is read."""
    if not 0.0 <= float(score_thresh) <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
    if affinity not in AFFINITY_VIEWS:
        raise ValueError(f"affinity view must be one of {AFFINITY_VIEWS}, got {affinity!r}")
    if max_images is not None and int(max_images) < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    if gt is not None and weights is None:
        raise ValueError(f"viz: the pseudo masks of {gt} are made by a model: pass its "
                         f"checkpoint too (--weights CKPT)")


def run_viz(inputs: list[str], out_dir, *, depth_root=None, images_root=None, weights=None,
            gt=None, device="auto", score_thresh=0.3, max_images=8, kernel_size=3, dilation=2,
            kappa=0.5, tau=0.5, color_thresh=0.3, short_side=None, affinity="active",
            progress=True) -> dict:
    """Write `<out_dir>/<name>_panel.png` for the first `max_images` inputs (module
    docstring). Returns {"images" (drawn), "images_found", "panels" (paths),
    "missing_depth" (image paths), "out_dir", "images_root", "depth_root", "weights",
    "device" (None without weights), "tiles" (titles of the last row), "gt", "pseudo_masks"
    ({"image", "gt", "matched", "reliable", "s_match"} per image drawn with `gt`),
    "not_in_gt" (image paths)}."""
    from boxdepth.engine.dist import resolve_device
    from boxdepth.engine.predict import check_image_headers, collect_images, output_names

    _check_viz_args(score_thresh, affinity, max_images, gt, weights)
    out_dir = Path(out_dir)
    paths = drop_sensor_depth_files(collect_images(inputs, exclude=out_dir))
    found = len(paths)
    if max_images is not None:
        paths = paths[:int(max_images)]
    check_image_headers(paths)
    root = Path(images_root) if images_root is not None else default_images_root(inputs, paths)
    rels = [relative_name(p, root) for p in paths]  # fail on a wrong root before any work
    if depth_root is None:
        log.warning("viz: no depth root given; the depth tiles will say 'no depth'")
    elif not Path(depth_root).is_dir():
        raise FileNotFoundError(f"depth root {depth_root} is not a folder")
    dev = resolve_device(device) if weights is not None else None
    predictor = _Predictor(weights, dev) if weights is not None else None
    gt_masks = None
    if gt is not None:
        from boxdepth.viz.pseudo import GtPseudoMasks
        gt_masks = GtPseudoMasks(gt, predictor.model, predictor.cfg, dev,
                                 predictor.weights_loaded)
    panels, missing, titles = [], [], []
    for path, rel, name in tqdm(list(zip(paths, rels, output_names(paths))), desc="viz",
                                disable=not progress, dynamic_ncols=True):
        image = load_image_rgb(path)
        d01, _ = load_depth_for(path, image.shape[:2], depth_root, rel)
        if d01 is None:
            missing.append(str(path))
        tiles, titles = panel_row(image, d01, kernel_size=kernel_size, dilation=dilation,
                                  kappa=kappa, tau=tau, color_thresh=color_thresh,
                                  short_side=short_side, affinity=affinity)
        if predictor is not None:
            t, n = predictor.tiles(image, float(score_thresh))
            tiles, titles = tiles + t, titles + n
        if gt_masks is not None:
            tile, title = gt_masks.tile(image, d01, rel, path)
            tiles, titles = tiles + [tile], titles + [title]
        panels.append(str(write_panel(out_dir / f"{name}_panel.png", tiles, titles)))
    return {"images": len(paths), "images_found": found, "panels": panels,
            "missing_depth": missing, "out_dir": str(out_dir), "images_root": str(root),
            "depth_root": None if depth_root is None else str(depth_root),
            "weights": None if weights is None else str(weights),
            "device": None if dev is None else str(dev), "tiles": titles,
            "gt": None if gt is None else str(gt),
            "pseudo_masks": gt_masks.drawn if gt_masks else [],
            "not_in_gt": gt_masks.not_in_gt if gt_masks else []}


def panel_font_size(tile_width: int) -> int:
    """Title font size for tiles of this (displayed) width."""
    return int(np.clip(tile_width // 24, 10, 20))


def write_panel(path: Path, tiles: list[np.ndarray], titles: list[str]) -> Path:
    """One row of tiles with titles (`make_panel`, tiles at most MAX_TILE_HEIGHT tall)."""
    h, w = tiles[0].shape[:2]
    height = min(h, MAX_TILE_HEIGHT)
    font = panel_font_size(round(w * height / h))
    save_png(path, make_panel([tiles], titles=titles, height=height, font_size=font))
    return path


def format_viz_summary(summary: dict) -> str:
    """Lines for the command line."""
    lines = [f"wrote {len(summary['panels'])} panel(s) to {summary['out_dir']}"]
    if summary["images_found"] > summary["images"]:
        lines[0] += f" (the first {summary['images']} of {summary['images_found']} images)"
    lines += [f"  {p}" for p in summary["panels"]]
    if summary["missing_depth"]:
        lines.append(f"  {len(summary['missing_depth'])} image(s) without depth under "
                     f"{summary['depth_root']} (images root {summary['images_root']})")
    if summary.get("pseudo_masks"):
        n = {k: sum(p[k] for p in summary["pseudo_masks"]) for k in ("gt", "matched", "reliable")}
        lines.append(f"  pseudo masks: {n['reliable']} reliable / {n['matched']} matched / "
                     f"{n['gt']} GT boxes in {len(summary['pseudo_masks'])} image(s)")
    if summary.get("not_in_gt"):
        lines.append(f"  {len(summary['not_in_gt'])} image(s) not in {summary['gt']} (file_names "
                     f"are looked up relative to the images root {summary['images_root']})")
    return "\n".join(lines)
