"""report.md: the evaluation's numbers as readable tables, with the figures linked."""
import math

from distree.run_dir import CALIBRATED


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x, fmt=".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _saved(e: dict, mode: str) -> str:
    """Time saved in a mode: measured / predicted by FLOPs / predicted by per-stage wall-clock."""
    keys = (f"time_saved_{mode}", f"flops_saved_{mode}", f"stage_time_saved_{mode}")
    if e.get(keys[0]) is None:
        return "-"
    return " / ".join(f"{100 * e[k]:.0f}%" for k in keys)


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def policy_table(report: dict) -> str:
    """One row per policy and setting (the shared-T sweep excluded), test split."""
    last = report["last_exit_accuracy"]
    lines = [_row(["policy", "setting", "accuracy", "vs last exit (pt)", "FLOPs saved", "sim. latency (ms)",
                   "measured latency (ms)", "throughput (/s)", "time saved, streaming", "time saved, compacting"]),
             _row(["---"] * 10)]
    for e in report["policies"]:
        if e["setting"].startswith("shared T="):
            continue
        lines.append(_row([e["policy"], e["setting"], _pct(e["accuracy"]), f"{100 * (e['accuracy'] - last):+.2f}",
                           _pct(e["flops_reduction"]), _num(e["latency_ms_simulated"]),
                           _num(e["latency_ms_measured"], ".2f"), _num(e.get("throughput_per_s"), ".0f"),
                           _saved(e, "streaming"), _saved(e, "compacting")]))
    return "\n".join(lines)


def sweep_table(report: dict) -> str:
    rows = [e for e in report["policies"] if e["setting"].startswith("shared T=")]
    lines = [_row(["T", "accuracy", "FLOPs saved", "sim. latency (ms)"]), _row(["---"] * 4)]
    lines += [_row([e["setting"].split("=")[1], _pct(e["accuracy"]), _pct(e["flops_reduction"]),
                    _num(e["latency_ms_simulated"])]) for e in rows]
    return "\n".join(lines)


def exit_table(report: dict) -> str:
    lines = [_row(["exit"] + list(range(1, 8))), _row(["---"] * 8)]
    lines.append(_row(["test"] + [_pct(a) for a in report["exit_accuracy"]]))
    lines.append(_row(["val"] + [_pct(a) for a in report["val_exit_accuracy"]]))
    return "\n".join(lines)


def auroc_table(report: dict) -> str:
    lines = [_row(["score", "exit 2", "exit 3", "exit 4", "exit 5", "exit 6"]), _row(["---"] * 6)]
    lines += [_row([name] + [_num(a, ".2f") for a in values])
              for name, values in report["score_auroc"].items()]
    return "\n".join(lines)


def summary(report: dict) -> str:
    g, o = report["goal"], report["oracle"]
    verdict = "met" if g["met"] else "not met"
    best = f"{g['policy']} saves {_pct(g['flops_reduction'])}" if g["policy"] else "no local policy stays within it"
    return (f"Goal (a local policy saving >= {_pct(g['target'])} of FLOPs within {100 * report['max_drop']:.1f} points "
            f"of last exit, on test): {verdict}; {best}. The oracle (first exit whose aggregated answer equals "
            f"exit 7's) would save {_pct(o['flops_reduction'])}.")


def _elapsed(report: dict) -> str:
    if "evaluation_s" in report:  # written by the demo: the whole experiment, then its evaluation
        return f"the whole experiment took {report['elapsed_s']:.0f} s, its evaluation {report['evaluation_s']:.0f} s"
    return f"evaluated in {report['elapsed_s']:.0f} s"


def render(report: dict, figures: list[str]) -> str:
    teacher = report.get("teacher_accuracy")
    head = [f"# DistrEE evaluation: {report.get('dataset', '?')}", "",
            f"{report['num_students']} students; teacher accuracy {_pct(teacher)}; last-exit accuracy "
            f"{_pct(report['last_exit_accuracy'])}; last-exit cost {report['flops']['last_exit'] / 1e6:.1f} MFLOPs "
            f"per sample; {_elapsed(report)}.", "", summary(report), "",
            f"Thresholds are chosen on the validation split (`{CALIBRATED}`: least FLOPs within "
            f"{100 * report['max_drop']:.1f} points of last exit there); every number below is on the test split. "
            "Measured latency is wall-clock per sample in streaming mode (one thread). 'Time saved' against "
            "last exit, on the timed samples: measured / predicted by FLOPs / predicted by each stage's and "
            "head's own measured time; the target is measured >= 80% of the FLOPs prediction. The gap between "
            "the two predictions is the model's (early stages are memory-bound), the gap between the last "
            "prediction and the measurement is the exit machinery's."]
    sections = [("Policies", policy_table(report)), ("DistrEE rule, the paper's shared-T sweep", sweep_table(report)),
                ("Accuracy with every student at exit j", exit_table(report)),
                ("Can a score tell exits that keep exit 7's answer from those that change it? (AUROC)",
                 auroc_table(report))]
    body = [f"## {title}\n\n{table}" for title, table in sections]
    images = "## Figures\n\n" + "\n".join(f"![{f[:-4]}]({f})" for f in figures)
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "\n\n" + images + "\n"
