"""boxdepth: box-supervised instance segmentation with pseudo depth (pure PyTorch)."""

__version__ = "0.1.0"
