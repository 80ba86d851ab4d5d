"""Export: each student of a run as one portable artifact that walks to its own exit.

ONNX (onnx_export.py, with the fused ops translated in onnx_ops.py) for ONNX Runtime, and an
AOTInductor package (pt2_export.py) for PyTorch without the training code; manifest.py writes
what an export holds and conformance.py checks every artifact against the PyTorch engine.
"""
