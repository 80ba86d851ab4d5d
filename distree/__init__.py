"""distree: distributed early-exit inference (DistrEE) for edge devices."""

__version__ = "0.1.0"
