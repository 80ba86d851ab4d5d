"""What an export folder holds, read by both the exporter and the runtime: its manifest.json and
the ONNX student session a device runs. Below both, so neither imports the other.

Nothing here is imported by this file, so `distree.artifacts.onnx_student` loads without torch.
"""
