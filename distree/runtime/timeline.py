"""A policy's run over time: per window of samples, and per phase of each fault and each loss.

A fault's window is the samples issued while it was in force ([start, end), from the aggregator's
clock: FaultLog.windows); a lost device's is every sample issued after it was declared lost
(`loss_windows`: it never returns); a sample is before, during or after it. A timeline window takes
the phase of its middle sample.
"""
import numpy as np

from distree.runtime.policy_run import PolicyRun, accuracy, percentiles_ms


def phase(sample: float, window: dict) -> str:
    return "before" if sample < window["start"] else "during" if sample < window["end"] else "after"


def stretch(run: PolicyRun, samples: np.ndarray) -> dict:
    """Latency, accuracy, settings and shadows over the given answers (indices into run)."""
    preds, labels = np.asarray(run.preds)[samples], np.asarray(run.labels)[samples]
    settings = np.asarray(run.settings, dtype=float).reshape(len(run.preds), -1)[samples]  # (S, N)
    chosen = set(samples.tolist())
    shadow = [d for s, d in run.shadow if s in chosen]
    return {"samples": int(len(samples)), "first": int(samples[0]) if len(samples) else None,
            "latency_ms": percentiles_ms([run.latency_s[k] for k in samples]),
            "accuracy": accuracy(preds, labels) if len(samples) else None,
            "mean_setting": settings.mean(0).tolist() if len(samples) else None,  # per device; -1: static
            "shadows": len(shadow), "shadow_disagreements": int(sum(shadow))}


def loss_windows(lost_at: dict[int, float], issued_s: list[float]) -> list[dict]:
    """Per lost device, the samples (issued at issued_s) issued after it was declared lost: [start, end)."""
    return [{"fault": f"lost:{i}", "start": next((s for s, t in enumerate(issued_s) if t >= at), len(issued_s)),
             "end": len(issued_s)} for i, at in sorted(lost_at.items())]


def timeline(run: PolicyRun, faults: list[dict], size: int) -> list[dict]:
    """Per window of `size` answers: stretch() and the phase of each fault."""
    rows = []
    for lo in range(0, len(run.preds), size):
        hi = min(lo + size, len(run.preds))
        row = stretch(run, np.arange(lo, hi))
        row["phase"] = {f["fault"]: phase((lo + hi - 1) / 2, f) for f in faults}
        row["last_setting"] = run.settings[hi - 1]
        rows.append(row)
    return rows


def phases(run: PolicyRun, faults: list[dict]) -> dict:
    """Per fault: stretch() over the answers before, during and after it."""
    k = np.arange(len(run.preds))
    out = {}
    for f in faults:
        parts = {"before": k < f["start"], "during": (k >= f["start"]) & (k < f["end"]), "after": k >= f["end"]}
        out[f["fault"]] = {**f, **{name: stretch(run, k[mask]) for name, mask in parts.items() if mask.any()}}
    return out


def timeline_table(name: str, entry: dict) -> str:
    """The console's view of a policy's timeline: a row per window."""
    adaptive = entry.get("adaptive") or {}
    target_ms = adaptive.get("target_ms")
    head = f"{name}: timeline" + (f", target p{adaptive['percentile']:g} <= {target_ms:.4g} ms" if target_ms else "")
    lines = [head, f"{'samples':>11}{'median ms':>11}{'p95 ms':>9}{'acc':>7}{'settings':>12}{'shadow':>8}  phase"]
    for row in entry["timeline"]:
        lat, first = row["latency_ms"], row["first"]
        fmt = lambda v, w, d=2: f"{v:>{w}.{d}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
        settings = ",".join("-" if v < 0 else f"{v:.1f}" for v in row["mean_setting"])
        shadow = f"{row['shadow_disagreements']}/{row['shadows']}" if row["shadows"] else "-"
        phase = ", ".join(f"{f} {p}" for f, p in row["phase"].items()) or "-"
        span = f"{first}-{first + row['samples'] - 1}"
        lines.append(f"{span:>11}{fmt(lat['median'], 11)}{fmt(lat['p95'], 9)}"
                     f"{fmt(row['accuracy'], 7, 3)}{settings:>12}{shadow:>8}  {phase}")
    if adaptive:
        s = adaptive["shadow"]
        lines.append(f"{adaptive['threshold_messages']} setting changes; shadow: {s['disagreements']} of "
                     f"{s['shadows']} disagree with exit 7" + (f" (upper bound {s['upper_bound']:.3f} at "
                                                              f"1 - {s['delta']:g}; epsilon {s['epsilon']:g})"
                                                              if s["shadows"] else ""))
        bounds = [r["bound"] for r in s.get("per_setting", []) if r["bound"] is not None and any(r["setting"])]
        if bounds:
            lines.append(f"pooled with {s['calibration_samples']} calibration samples, the largest bound of a "
                         f"setting run off the conservative end: {max(bounds):.4f} (epsilon {s['epsilon']:g})")
        for g in adaptive["shadow_guard"]:
            why = (f"the bound of settings {g['setting']} passed epsilon {g['epsilon']:g}" if g.get("rule") == "bound"
                   else f"{g['disagreements']} of {g['shadows']} disagree, over epsilon {g['epsilon']:g}")
            lines.append(f"shadow check at sample {g['sample']}: {why}: every device at setting {g['cap']} or "
                         "more conservative")
    return "\n".join(lines)
