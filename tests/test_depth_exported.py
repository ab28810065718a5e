"""`boxdepth depth --model FILE.onnx|FILE.tflite`: tiny ONNX models exported here (output =
a known function of the input), PyDNet++ (TFLite) on a real RGB-D frame, errors."""
from __future__ import annotations

import hashlib
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from boxdepth.cli import main
from boxdepth.data.depth_io import (depth_path_for, load_depth_png, normalize_inverse_depth,
                                    read_depth_meta)
from boxdepth.depth.exported import ExportedOptions, load_exported_model
from boxdepth.depth.generate import generate_depth

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PYDNET = SHARED / "models" / "pydnet" / "optimized_pydnet++.tflite"
OSD = SHARED / "data" / "osd-rgbd"
CODE = 1.0 / 65535.0
IN_H, IN_W = 16, 24  # the tiny models' input size; the images are 30x50 (resize both ways)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class RedPlusOne(torch.nn.Module):
    """d = 2 * red + 1 (> 0), NCHW or NHWC, optionally at half resolution."""

    def __init__(self, nhwc: bool = False, half: bool = False):
        super().__init__()
        self.nhwc, self.half = nhwc, half

    def forward(self, x):
        red = x[..., :1] if self.nhwc else x[:, :1]
        if self.half and not self.nhwc:
            red = F.avg_pool2d(red, 2)
        return red * 2 + 1


class TwoOutputs(torch.nn.Module):
    def forward(self, x):
        return x[:, :1] * 2 + 1, -x[:, :1]


def _export(tmp_path, name, module, shape, *, dynamic=None, outputs=("depth",), metadata=None):
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy (offline) exporter
        torch.onnx.export(module.eval(), (torch.rand(*shape),), buf, input_names=["image"],
                          output_names=list(outputs), dynamic_axes=dynamic, opset_version=17,
                          dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / name
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return {
        "nchw": _export(d, "nchw.onnx", RedPlusOne(half=True), (1, 3, IN_H, IN_W)),
        "nhwc": _export(d, "nhwc.onnx", RedPlusOne(nhwc=True), (1, IN_H, IN_W, 3)),
        "dynamic": _export(d, "dyn.onnx", RedPlusOne(), (1, 3, IN_H, IN_W),
                           dynamic={"image": {2: "h", 3: "w"}, "depth": {2: "h", 3: "w"}}),
        "two": _export(d, "two.onnx", TwoOutputs(), (1, 3, IN_H, IN_W), outputs=("a", "b")),
        "meta": _export(d, "meta.onnx", RedPlusOne(), (1, 3, IN_H, IN_W),
                        metadata={"boxdepth.polarity": "depth", "boxdepth.scale": "1.0",
                                  "boxdepth.mean": "0,0,0", "boxdepth.std": "2,2,2"}),
        "rank3": _export(d, "rank3.onnx", torch.nn.Identity(), (3, IN_H, IN_W)),
        "gray": _export(d, "gray.onnx", torch.nn.Identity(), (1, 1, IN_H, IN_W)),
        "identity": _export(d, "identity.onnx", torch.nn.Identity(), (1, 3, IN_H, IN_W)),
    }


def _gradient_images(root: Path, n: int = 2) -> list[str]:
    """30x50 images whose red channel rises left to right (the rest is noise)."""
    rng = np.random.default_rng(0)
    names = []
    for k in range(n):
        rgb = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
        rgb[..., 0] = np.linspace(10 + 20 * k, 240, 50).astype(np.uint8)[None, :]
        root.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / f"im{k}.png")
        names.append(f"im{k}.png")
    return names


def _expected(rgb: np.ndarray, polarity: str, half: bool = False) -> np.ndarray:
    """The pipeline by hand: stretch to the input size, d = 2 r + 1, back to 30x50."""
    red = np.asarray(Image.fromarray(rgb).resize((IN_W, IN_H), Image.BILINEAR), np.float32)
    d = torch.from_numpy(red[..., 0] / 255 * 2 + 1)[None, None]
    if half:
        d = F.avg_pool2d(d, 2)
    d = F.interpolate(d, size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
    return normalize_inverse_depth(d if polarity == "disparity" else 1.0 / d)


def _run(images, out, model, **options):
    return generate_depth(images, out, model_dir=model, progress=False,
                          exported=ExportedOptions(**options))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("polarity", ["disparity", "depth"])
def test_layouts_polarity_resize_and_normalisation(models, tmp_path, layout, polarity):
    names = _gradient_images(tmp_path / "img")
    s = _run(tmp_path / "img", tmp_path / "d", models[layout], polarity=polarity)
    assert (s["written"], s["forward_passes"], s["model_type"]) == (2, 2, "exported-onnx")
    for n in names:
        rgb = np.asarray(Image.open(tmp_path / "img" / n).convert("RGB"))
        got = load_depth_png(depth_path_for(tmp_path / "d", n))
        assert got.shape == (30, 50)
        assert np.abs(got - _expected(rgb, polarity, half=layout == "nchw")).max() <= 2 * CODE
        # the key property: nearer = larger; "depth" d rises to the right, so 1/d falls
        cols = got.mean(axis=0)
        assert (cols[-5:].mean() > cols[:5].mean()) == (polarity == "disparity")
        assert got.min() == 0.0 and got.max() == 1.0
    meta = read_depth_meta(tmp_path / "d")
    assert meta["input"]["layout"] == layout and meta["polarity"] == polarity


def test_depth_is_inverted_not_negated(models, tmp_path):
    """1/d, not -d: on a red ramp the two differ by far more than the PNG's rounding."""
    names = _gradient_images(tmp_path / "img", n=1)
    _run(tmp_path / "img", tmp_path / "d", models["nhwc"], polarity="depth")
    rgb = np.asarray(Image.open(tmp_path / "img" / names[0]).convert("RGB"))
    red = np.asarray(Image.fromarray(rgb).resize((IN_W, IN_H), Image.BILINEAR), np.float32)
    d = F.interpolate(torch.from_numpy(red[..., 0] / 255 * 2 + 1)[None, None], size=(30, 50),
                      mode="bilinear", align_corners=False)[0, 0].numpy()
    got = load_depth_png(depth_path_for(tmp_path / "d", names[0]))
    assert np.abs(got - normalize_inverse_depth(1 / d)).max() <= 2 * CODE
    assert np.abs(got - normalize_inverse_depth(-d)).max() > 0.05


def test_resume_meta_and_no_mixing(models, tmp_path):
    _gradient_images(tmp_path / "img", n=3)
    out = tmp_path / "d"
    _run(tmp_path / "img", out, models["nchw"], polarity="depth")
    before = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    s = _run(tmp_path / "img", out, models["nchw"], polarity="depth")
    assert (s["written"], s["skipped_existing"], s["forward_passes"]) == (0, 3, 0)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == before
    meta = read_depth_meta(out)
    assert meta["source"] == str(models["nchw"].resolve()) and meta["inverse_depth"] is True
    assert meta["model_sha256"] == hashlib.sha256(models["nchw"].read_bytes()).hexdigest()
    assert meta["scaling"] == {"scale": 1 / 255, "mean": [0.0] * 3, "std": [1.0] * 3}
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temp files
    with pytest.raises(ValueError, match="polarity 'depth', not 'disparity'"):
        _run(tmp_path / "img", out, models["nchw"], polarity="disparity")
    with pytest.raises(ValueError, match="holds depth from"):
        _run(tmp_path / "img", out, models["identity"], polarity="depth")
    with pytest.raises(ValueError, match="scaling"):
        _run(tmp_path / "img", out, models["nchw"], polarity="depth", scale=1.0)
    s = generate_depth(tmp_path / "img", out, model_dir=models["nchw"], progress=False,
                       overwrite=True, exported=ExportedOptions(polarity="disparity"))
    assert s["written"] == 3 and read_depth_meta(out)["polarity"] == "disparity"


def test_dynamic_input_size_and_output_choice(models, tmp_path):
    names = _gradient_images(tmp_path / "img", n=1)
    with pytest.raises(ValueError, match=r"dyn\.onnx.*dynamic.*--input-size"):
        _run(tmp_path / "img", tmp_path / "d0", models["dynamic"], polarity="disparity")
    _run(tmp_path / "img", tmp_path / "d1", models["dynamic"], polarity="disparity",
         input_size=(IN_H, IN_W))
    rgb = np.asarray(Image.open(tmp_path / "img" / names[0]).convert("RGB"))
    got = load_depth_png(depth_path_for(tmp_path / "d1", names[0]))
    assert np.abs(got - _expected(rgb, "disparity")).max() <= 2 * CODE
    # output "b" is -red: as disparity it is the mirror image of output "a"
    a = _run(tmp_path / "img", tmp_path / "da", models["two"], polarity="disparity")
    b = _run(tmp_path / "img", tmp_path / "db", models["two"], polarity="disparity", output="1")
    assert a["written"] == b["written"] == 1
    ga, gb = (load_depth_png(depth_path_for(tmp_path / k, names[0])) for k in ("da", "db"))
    assert np.abs(ga + gb - 1).max() <= 2 * CODE
    assert read_depth_meta(tmp_path / "db")["output"] == "b"
    model = load_exported_model(models["two"], options=ExportedOptions(polarity="depth",
                                                                       output="b"))
    assert model.out_index == 1
    with pytest.raises(ValueError, match=r"two\.onnx: no output 'c'; outputs are 0: a, 1: b"):
        load_exported_model(models["two"], options=ExportedOptions(polarity="depth", output="c"))


def test_file_metadata_states_polarity_and_scaling(models):
    model = load_exported_model(models["meta"])  # no options needed: the file says it all
    assert model.polarity == "depth" and model.scaling == (1.0, (0, 0, 0), (2, 2, 2))
    x, _ = model.preprocess(np.full((30, 50, 3), 200, np.uint8))
    assert x.shape == (3, IN_H, IN_W) and torch.allclose(x, torch.full_like(x, 100.0))
    load_exported_model(models["meta"], options=ExportedOptions(polarity="depth", scale=1.0))
    with pytest.raises(ValueError, match="states polarity depth, but --polarity disparity"):
        load_exported_model(models["meta"], options=ExportedOptions(polarity="disparity"))
    with pytest.raises(ValueError, match="states scale 1.0, but --scale 0.5"):
        load_exported_model(models["meta"], options=ExportedOptions(scale=0.5))


@pytest.mark.parametrize("which, message", [
    ("rank3", r"rank3\.onnx: input 'image' has rank 3"),
    ("gray", r"gray\.onnx: input shape 1x1x16x24 has no 3-channel dimension"),
])
def test_input_shape_errors(models, which, message):
    with pytest.raises(ValueError, match=message):
        load_exported_model(models[which], options=ExportedOptions(polarity="depth"))


def test_more_errors_name_the_file(models, tmp_path):
    opts = ExportedOptions(polarity="depth")
    with pytest.raises(ValueError, match=r"identity\.onnx: say which way.*--polarity"):
        load_exported_model(models["identity"])
    with pytest.raises(ValueError, match=r"gray\.onnx: input shape .* 1 channels in the nchw"):
        load_exported_model(models["gray"], options=ExportedOptions(polarity="depth",
                                                                    layout="nchw"))
    with pytest.raises(ValueError, match=r"identity\.onnx: the model's input is 16x24"):
        load_exported_model(models["identity"], options=ExportedOptions(polarity="depth",
                                                                    input_size=(32, 32)))
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(ValueError, match=r"junk\.onnx is not a loadable ONNX model"):
        load_exported_model(bad, options=opts)
    _gradient_images(tmp_path / "img", n=1)
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"model\.pt: unknown model file suffix '\.pt'"):
        _run(tmp_path / "img", tmp_path / "d", pt, polarity="depth")
    with pytest.raises(FileNotFoundError, match=r"no model file at .*gone\.onnx"):
        load_exported_model(tmp_path / "gone.onnx", options=opts)
    # an output that is not one map:
    with pytest.raises(ValueError, match=r"identity\.onnx: output 'depth' has shape \(1, 3, 16"):
        _run(tmp_path / "img", tmp_path / "d", models["identity"], polarity="disparity")


def test_missing_runtimes_name_the_extra(models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"nchw\.onnx.*pip install 'boxdepth\[export\]'"):
        load_exported_model(models["nchw"], options=ExportedOptions(polarity="depth"))
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
                 "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    fake = tmp_path / "m.tflite"
    fake.write_bytes(b"\0" * 16)
    with pytest.raises(ImportError, match=r"m\.tflite.*pip install 'boxdepth\[tflite\]'"):
        load_exported_model(fake, options=ExportedOptions(polarity="depth"))


def test_cli(models, tmp_path, capsys):
    _gradient_images(tmp_path / "img", n=1)
    args = ["depth", str(tmp_path / "img"), "--out", str(tmp_path / "d"), "--quiet"]
    assert main(args + ["--model", str(models["nhwc"]), "--polarity", "depth",
                        "--mean", "0,0,0", "--std", "1,1,1"]) == 0
    assert "1 depth maps written" in capsys.readouterr().out
    assert main(args + ["--model", str(models["nhwc"])]) == 2
    assert "nhwc.onnx: say which way" in capsys.readouterr().err
    (tmp_path / "hf").mkdir()
    assert main(args + ["--model", str(tmp_path / "hf"), "--polarity", "depth"]) == 2
    assert "--polarity apply only to .onnx/.tflite models" in capsys.readouterr().err


def _tflite_runtime():
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            __import__(name)
            return name
        except ImportError:
            pass
    pytest.skip("no TFLite runtime: pip install 'boxdepth[tflite]' (ai-edge-litert)")


def test_pydnet_tflite_on_a_real_frame(tmp_path, monkeypatch):
    _tflite_runtime()
    if not PYDNET.is_file() or not (OSD / "images" / "test40.png").is_file():
        pytest.skip(f"needs {PYDNET} and {OSD}/images/test40.png (../shared is absent)")
    from scipy.stats import spearmanr
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "test40.png").write_bytes((OSD / "images" / "test40.png").read_bytes())
    s = _run(tmp_path / "img", tmp_path / "d", PYDNET, polarity="depth")
    assert s["written"] == 1 and s["model_type"] == "exported-tflite"
    got = load_depth_png(depth_path_for(tmp_path / "d", "test40.png"))
    assert got.shape == (480, 640)
    meta = read_depth_meta(tmp_path / "d")
    assert meta["input"] == {"layout": "nhwc", "height": 448, "width": 640, "dtype": "float32"}
    assert meta["output"] == "PSD/resize_images/ResizeBilinear"
    mm = np.asarray(Image.open(OSD / "depth_mm" / "test40.png")).astype(np.float64)
    valid = mm > 0
    rho = spearmanr(got[valid], -mm[valid])[0]
    assert rho > 0.8, f"stored map should rank like the sensor's inverse depth, got {rho:.2f}"
