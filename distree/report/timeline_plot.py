"""The adaptive runtime's figure: latency and each device's setting over the sample index."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


TIMELINE_PLOT = "adaptive_timeline.png"  # beside a session's report, where a policy adapted


def write_session_figures(report_path) -> list[Path]:
    """The figures of a distributed session, drawn from its report (distributed.json) and written
    beside it: the adaptive timeline where a policy's thresholds followed a target. The paths written."""
    report_path = Path(report_path)
    report = json.loads(report_path.read_text())
    if not any("adaptive" in p for p in report["policies"].values()):
        return []
    path = report_path.parent / TIMELINE_PLOT
    adaptive_timeline(report, path)
    return [path]


def adaptive_timeline(report: dict, path: Path) -> None:
    """Per adapting policy: per-sample latency with the windows' p95 and the target above, the
    setting each device was issued under below; the slow and link faults' windows shaded."""
    names = [n for n, p in report["policies"].items() if "adaptive" in p]
    if not names:
        return
    fig, axes = plt.subplots(2 * len(names), 1, figsize=(9, 5 * len(names)), sharex=True, squeeze=False)
    for k, name in enumerate(names):
        p = report["policies"][name]
        top, bottom = axes[2 * k][0], axes[2 * k + 1][0]
        latency = np.asarray(p["latency_ms_per_sample"])  # (S,)
        top.scatter(np.arange(len(latency)), latency, s=3, color="C0", alpha=0.35, label="per sample")
        mid = [row["first"] + row["samples"] / 2 for row in p["timeline"]]
        top.plot(mid, [row["latency_ms"]["p95"] for row in p["timeline"]], color="C0", marker="o", ms=3,
                 label=f"p95 per {report.get('timeline_window', '')} samples".replace("per  ", "per window "))
        target = p["adaptive"]["target_ms"] or 0.0  # None: a relative target never measured (too few samples)
        top.axhline(target, color="C3", ls="--", lw=1, label="target")
        settings = np.asarray(p["settings_per_sample"])  # (S, N)
        for i in range(settings.shape[1]):
            bottom.step(np.arange(len(settings)), settings[:, i], where="post", label=f"device {i}")
        for ax in (top, bottom):
            for f in p["phases"].values():
                ax.axvspan(f["start"], f["end"], color="grey", alpha=0.15, lw=0)
        top.set(ylabel="latency (ms)", title=f"{name}: p{p['adaptive']['percentile']:g} target "
                                             f"{target:.4g} ms (shaded: injected faults)")
        top.set_ylim(0, max(2.5 * target, float(np.percentile(latency, 99)) * 1.1))
        bottom.set(ylabel="setting (0: conservative)", yticks=range(len(p["adaptive"]["path"])))
        top.legend(fontsize=7, loc="upper left")
        bottom.legend(fontsize=7, loc="upper left")
    axes[-1][0].set_xlabel("sample")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
