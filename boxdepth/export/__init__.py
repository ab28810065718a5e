"""Exporting the inference network to ONNX / TorchScript and running the exported file.

graph.py     the traceable wrapper (dense outputs) and the output names
exporter.py  `export_model`: checkpoint -> .onnx / .pt with its metadata embedded
runner.py    `ExportedModel` and `run_exported_predict`: the exported file + the Python
             post-processing (decoding, NMS, dynamic mask head, pasting) -> COCO results
"""
