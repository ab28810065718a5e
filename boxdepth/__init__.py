"""boxdepth: box-supervised instance segmentation with pseudo depth (pure PyTorch).

The Python API (boxdepth/api.py): `boxdepth.Predictor(weights)(image)` and
`boxdepth.train(config, out_dir, **overrides)`. They load on first use, so that
`import boxdepth` stays light (no torch) for the command line and for tools.
"""

__version__ = "0.1.0"

_API = ("Predictor", "train", "evaluate_checkpoint")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from boxdepth import api

        return getattr(api, name)
    raise AttributeError(f"module 'boxdepth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
