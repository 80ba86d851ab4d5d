"""The evaluation report: numbers (evaluate), figures (plots) and the readable summary (markdown)."""

MAIN = "calibrated"  # the setting of goal (a): least FLOPs within max_drop of last-exit, chosen on val
