"""Inference: evidence over a split, the engine in its three modes, and what a setting achieves."""
