"""Pasting masks one detection at a time (models/paste.py, boxdepth predict): the same masks,
depth and overlays as the batched float32 paste it replaced, with bounded memory."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from boxdepth.models.condinst import postprocess_detections
from boxdepth.models.paste import MaskPaster
from boxdepth.ops.pairwise import aligned_bilinear
from boxdepth.viz.draw import blend_mask, instance_colors, overlay_instances

ROOT = Path(__file__).resolve().parents[1]


def _old_probs_to_original(probs, mask_stride, input_hw, orig_hw, chunk=16):
    """The paste before issue 24 (every detection at once, float32), kept as the reference."""
    out = []
    for part in probs.float().split(chunk):
        up = aligned_bilinear(part, mask_stride)[:, :, :input_hw[0], :input_hw[1]]
        out.append(F.interpolate(up, size=tuple(orig_hw), mode="bilinear", align_corners=False)[:, 0])
    return torch.cat(out) if out else probs.new_zeros(0, *orig_hw, dtype=torch.float32)


def _probs(d, hm, wm, seed):
    gen = torch.Generator().manual_seed(seed)
    # smooth blobs plus noise: many pixels near the threshold, where rounding would show
    base = torch.rand(d, 1, hm // 2, wm // 2, generator=gen)
    return (F.interpolate(base, size=(hm, wm), mode="bilinear") * 0.6 + 0.4 *
            torch.rand(d, 1, hm, wm, generator=gen)).clamp(0, 1)


def test_paste_per_detection_equals_the_batched_paste_bit_for_bit():
    for d, (hm, wm), input_hw, orig_hw in [(21, (16, 24), (61, 90), (173, 251)),  # > one chunk
                                           (3, (8, 8), (32, 29), (20, 17)),       # downscale
                                           (0, (8, 8), (32, 32), (40, 40))]:
        probs, depth = _probs(d, hm, wm, 1), _probs(d, hm, wm, 2)
        paster = MaskPaster(probs, depth, mask_stride=4, input_hw=input_hw, orig_hw=orig_hw,
                            threshold=0.5)
        old = _old_probs_to_original(probs, 4, input_hw, orig_hw)
        assert torch.equal(paster.masks(), old > 0.5)
        assert torch.equal(paster.depths(), _old_probs_to_original(depth, 4, input_hw, orig_hw))
        if d:
            order = torch.arange(d).flip(0)
            assert torch.equal(paster.take(order).mask(0), old[-1] > 0.5)


def test_postprocess_detections_unchanged_and_lazy():
    d = 5
    probs = _probs(d, 16, 24, 3)
    det = {"boxes": torch.tensor([[4.0, 8, 20, 30], [40, 0, 60, 70], [50, 10, 60, 20],
                                  [0, 0, 90, 60], [1, 1, 2, 2]]),
           "scores": torch.rand(d), "labels": torch.arange(d), "mask_probs": probs,
           "depth_probs": probs * 0.5}
    out = postprocess_detections(det, (60, 90), (121, 179))
    keep = torch.tensor([True] * d)
    assert torch.equal(out["masks"], _old_probs_to_original(probs[keep], 4, (60, 90), (121, 179)) > 0.5)
    lazy = postprocess_detections(det, (60, 90), (121, 179), paste=False)
    assert "masks" not in lazy and torch.equal(lazy["paster"].masks(), out["masks"])
    assert torch.equal(lazy["paster"].depths(), out["depth"])


def test_overlay_one_mask_at_a_time_equals_the_overlay_from_full_masks():
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (50, 70, 3)).astype(np.uint8)
    masks = np.zeros((4, 50, 70), dtype=bool)
    masks[0, 5:30, 10:40] = True
    masks[1, 20:45, 30:69] = True  # overlaps 0: the draw order must be kept
    masks[2, 0:3, 0:70] = True
    boxes = np.array([[10, 5, 40, 30], [30, 20, 69, 45], [0, 0, 70, 3], [3, 3, 9, 9]], dtype=float)
    labels, scores = ["a", "b", "c", "d"], [0.9, 0.8, 0.7, 0.6]
    ref = overlay_instances(image, masks, boxes, labels, scores)
    canvas, colors = image.copy(), instance_colors(4)
    for k in (3, 2, 1, 0):  # the order boxdepth predict blends in
        blend_mask(canvas, masks[k], colors[k])
    assert np.array_equal(overlay_instances(canvas, None, boxes, labels, scores), ref)


def test_predict_memory_does_not_grow_with_the_detections(tmp_path):
    """Peak RSS growth of `run_predict` on a 2000x3000 image with 30 detections. The batched
    float32 paste held 30 x 6 MP x 4 B = 720 MB (+ a 16-detection chunk: 384 MB) at once."""
    script = textwrap.dedent(f"""
        import json, resource, sys
        import numpy as np
        from PIL import Image
        sys.path.insert(0, {str(ROOT)!r})
        from boxdepth.config import load_config
        from boxdepth.engine.predict import run_predict
        from tests.conftest import save_untrained_checkpoint
        from tests.test_predict import TINY
        cfg = load_config(None, [o for o in TINY if "post_nms_topk" not in o] +
                          ["model.fcos.post_nms_topk=30"])
        ckpt = save_untrained_checkpoint(__import__("pathlib").Path({str(tmp_path)!r}) / "m.pth",
                                         cfg, [1, 5, 9], ["a", "b", "c"])
        img = np.random.RandomState(0).randint(0, 256, (2000, 3000, 3)).astype(np.uint8)
        Image.fromarray(img).save({str(tmp_path / "big.png")!r})
        # warm-up: the model, the allocator and the overlay drawing at a small size
        Image.fromarray(img[:200, :300]).save({str(tmp_path / "small.png")!r})
        run_predict(ckpt, [{str(tmp_path / "small.png")!r}], {str(tmp_path / "o1")!r}, device="cpu",
                    score_thresh=1.0, progress=False)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        s = run_predict(ckpt, [{str(tmp_path / "big.png")!r}], {str(tmp_path / "o2")!r},
                        device="cpu", score_thresh=1.0, progress=False)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"detections": s["detections"], "grew_mb": (after - before) / 1024}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["detections"] == 30
    # one detection's float map is 24 MB; allow the image, overlay copies and RLE buffers
    assert got["grew_mb"] < 350, got


def test_predict_overlay_and_masks_equal_the_full_mask_drawing(tmp_path):
    from PIL import Image

    from boxdepth.data.image_io import load_image_rgb
    from boxdepth.data.rle import mask_to_rle
    from boxdepth.data.transforms import TestTransform
    from boxdepth.engine.inference import load_trained_model
    from boxdepth.engine.predict import predict_image, run_predict
    from tests.test_predict import _make_ckpt, _write_image

    ckpt = _make_ckpt(tmp_path / "m.pth", depth_head=False)
    _write_image(tmp_path / "in" / "x.png", 90, 130, 7)
    model, cfg, _ = load_trained_model(ckpt)
    image = load_image_rgb(tmp_path / "in" / "x.png")
    det = predict_image(model, image, TestTransform(64, 128), "cpu")
    thresh = float(det["scores"][4] + det["scores"][5]) / 2  # five of the twelve shown
    run_predict(ckpt, [str(tmp_path / "in" / "x.png")], tmp_path / "out", device="cpu",
                score_thresh=thresh, progress=False)
    shown = det["scores"] >= thresh
    assert shown.sum() == 5 and len(shown) == 12
    names = ["a", "b", "c"]
    ref = overlay_instances(image, det["masks"][shown], det["boxes"][shown],
                            [names[int(c)] for c in det["labels"][shown]], det["scores"][shown])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "overlays" / "x.png")), ref)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["segmentation"] for r in results] == [mask_to_rle(m) for m in det["masks"]]
