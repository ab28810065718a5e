import json

import numpy as np
import pytest
from PIL import Image

from boxdepth.data.depth_io import (depth_path_for, load_depth_png, normalize_inverse_depth,
                                    read_depth_meta, save_depth_png, write_depth_meta)
from boxdepth.fileio import atomic_write_bytes


def test_depth_path_mirrors_image_tree(tmp_path):
    assert depth_path_for(tmp_path, "train/a/0001.jpg") == tmp_path / "train" / "a" / "0001.png"
    assert depth_path_for(tmp_path, "x.JPEG") == tmp_path / "x.png"


def test_save_load_round_trip_is_16_bit(tmp_path):
    d = np.linspace(0, 1, 12 * 7, dtype=np.float32).reshape(7, 12)
    p = tmp_path / "d" / "img.png"
    save_depth_png(p, d)
    with Image.open(p) as im:
        assert np.asarray(im).dtype == np.uint16
    back = load_depth_png(p)
    assert back.shape == (7, 12)
    assert np.abs(back - d).max() <= 0.5 / 65535 + 1e-7


def test_normalisation_is_robust_and_clipped():
    inv = np.arange(1000, dtype=np.float64)
    inv[0] = -1e6          # an outlier must not squash the rest
    out = normalize_inverse_depth(inv)
    assert out.min() == 0.0 and out.max() == 1.0
    lo, hi = np.percentile(inv, [1, 99])
    np.testing.assert_allclose(out[500], (500 - lo) / (hi - lo), rtol=1e-6)
    assert np.all(normalize_inverse_depth(np.full((3, 3), 2.0)) == 0)


def test_normalisation_uses_valid_pixels_only():
    inv = np.array([[0.0, 10.0], [20.0, 1e9]])
    valid = np.array([[True, True], [True, False]])
    out = normalize_inverse_depth(inv, valid, 0, 100)
    np.testing.assert_allclose(out[:, :], [[0, 0.5], [1, 1]])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_depth_png(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_depth_png(bad)


def test_meta_written_and_read(tmp_path):
    write_depth_meta(tmp_path, "sensor", unit="mm")
    meta = read_depth_meta(tmp_path)
    assert meta["source"] == "sensor" and meta["inverse_depth"] is True and meta["unit"] == "mm"
    assert read_depth_meta(tmp_path / "none") is None
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(ValueError, match="meta.json"):
        read_depth_meta(tmp_path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "keep.json"
    atomic_write_bytes(p, json.dumps({"v": 1}).encode())

    class Boom(Exception):
        pass

    from boxdepth.fileio import atomic_path
    with pytest.raises(Boom):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise Boom
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["keep.json"]


def test_atomic_writes_make_ordinary_permission_files(tmp_path):
    import os
    import stat
    p = tmp_path / "perm.json"
    atomic_write_bytes(p, b"{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
