"""The report's figures, as PNG files (matplotlib's Agg backend: no display needed)."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from distree.policies import NUM_EXITS  # noqa: E402
from distree.run_dir import CALIBRATED  # noqa: E402
from distree.run_report import EvaluationReport  # noqa: E402

LOCAL_SCORES = ("distree", "similarity", "local-confidence", "learned-gate")
SCORE_LABELS = {"distree": "cos(u_j, u_1) = 1 / score\n(cos <= 0 at 0)", "similarity": "cos(u_j, u_j-1)",
                "local-confidence": "max softmax(u_j + b/N)", "learned-gate": "P(answer unchanged)"}
SHOWN_AS = {"distree": lambda s: 1 / s}  # the score's heavy tail (1/cos) is easier to read as cos
BASELINES = ("random",)  # drawn first and hollow, so that no policy's marker hides under theirs


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (cost, accuracy) no other point beats on both: cheaper and at least as accurate."""
    front, best = [], -1.0
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_vs_cost(report: EvaluationReport, key: str, xlabel: str, path: Path) -> None:
    """Every policy's calibration curve on test, its Pareto front, and its calibrated setting.

    For FLOPs the x axis is the FLOPs saved (as the tables give them): the front is the points no
    other saves more FLOPs at as high an accuracy. Baselines are drawn first and hollow, and
    distree last, so that its star is never hidden under another's.
    """
    fig, ax = plt.subplots(figsize=(7, 5))
    last = report.last_exit()
    saved = key == "flops_reduction"
    sign = -1 if saved else 1  # pareto() minimises its first coordinate: FLOPs saved are maximised
    order = sorted(enumerate(report.curves.items()),
                   key=lambda c: (c[1][0] not in BASELINES, c[1][0] == "distree"))
    for z, (i, (name, curve)) in enumerate(order):
        color, hollow = f"C{i}", name in BASELINES
        xy = [(p.cost(key), p.accuracy) for p in curve]
        ax.scatter(*zip(*xy), s=8, color=color, alpha=0.35, zorder=2 + z)
        front = [(sign * x, a) for x, a in pareto([(sign * x, a) for x, a in xy])]
        ax.plot(*zip(*front), color=color, label=name, ls="--" if hollow else "-", zorder=2 + z)
        main = report.calibrated(name)
        ax.scatter([main.cost(key)], [main.accuracy], marker="*", s=90 if hollow else 140, zorder=20 + z,
                   facecolor="none" if hollow else color, edgecolor=color if hollow else "k", linewidth=1.2)
    x_last = 0.0 if saved else last.cost(key)
    ax.scatter([x_last], [last.accuracy], color="k", marker="s", label="last exit", zorder=40)
    ax.axhline(last.accuracy - report.max_drop, color="grey", ls=":", lw=1, label="last exit - max drop")
    ax.set(xlabel=xlabel, ylabel="test accuracy", title="Accuracy against cost (stars: calibrated on val)")
    top = max([last.accuracy] + [p.accuracy for c in report.curves.values() for p in c]) + 0.02
    ax.set_ylim(max(0.0, min(report.exit_accuracy[1], top - 0.25)), top)
    ax.legend(fontsize=8)
    _save(fig, path)


def exit_histograms(report: EvaluationReport, path: Path) -> None:
    """Per policy's calibrated setting, the share of samples each student stops at each exit."""
    mains = [e for e in report.policies if e.setting == CALIBRATED]
    fig, axes = plt.subplots(1, len(mains), figsize=(2.6 * len(mains), 3), sharey=True, squeeze=False)
    exits = torch.arange(1, NUM_EXITS + 1)
    for ax, e in zip(axes[0], mains):
        h = torch.tensor(e.exit_histogram, dtype=torch.float64)  # (N, 7)
        share = h / h.sum(1, keepdim=True)
        width = 0.8 / len(share)
        for i, row in enumerate(share):
            x = exits + (i - (len(share) - 1) / 2) * width  # (7,)
            ax.bar(x.numpy(), row.numpy(), width, label=f"student {i + 1}")
        ax.set(title=e.policy, xlabel="exit", xticks=exits.tolist())
    axes[0][0].set_ylabel("share of test samples")
    axes[0][0].legend(fontsize=7)
    _save(fig, path)


def exit_accuracy(report: EvaluationReport, path: Path) -> None:
    """Accuracy with every student at exit j, on val and test, and the teacher's."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    exits = range(1, NUM_EXITS + 1)
    ax.plot(exits, report.exit_accuracy, marker="o", label="test")
    ax.plot(exits, report.val_exit_accuracy, marker=".", ls="--", label="val")
    if report.teacher_accuracy is not None:
        ax.axhline(report.teacher_accuracy, color="k", ls=":", label="teacher")
    ax.set(xlabel="exit j (all students)", ylabel="accuracy", title="Per-exit accuracy")
    ax.legend()
    _save(fig, path)


def threshold_sweep(report: EvaluationReport, path: Path) -> None:
    """DistrEE's rule with one shared T (the paper's sweep): accuracy and FLOPs saved on test."""
    sweep = [e for e in report.policies if e.policy == "distree" and e.shared_t is not None]
    t = [e.shared_t for e in sweep]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(t, [e.accuracy for e in sweep], marker="o", color="C0", label="accuracy")
    ax.set(xlabel="shared threshold T", ylabel="test accuracy", title="DistrEE rule, shared T", ylim=(0, 1))
    twin = ax.twinx()
    twin.plot(t, [e.flops_reduction for e in sweep], marker="s", color="C1", label="FLOPs saved")
    twin.set(ylabel="FLOPs saved vs last exit", ylim=(0, 1))
    fig.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def score_distributions(scores: dict[str, torch.Tensor], last_right: torch.Tensor, path: Path) -> None:
    """Each local score per exit 2..6, for samples exit 7 gets right and wrong (pooled over students)."""
    names = [n for n in LOCAL_SCORES if n in scores]
    fig, axes = plt.subplots(len(names), NUM_EXITS - 2, figsize=(14, 2.3 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        s = SHOWN_AS.get(name, lambda v: v)(scores[name])  # (N, 5, B)
        right = last_right.expand(s.shape[0], -1)  # (N, B)
        for j, ax in enumerate(row):
            sj = s[:, j]
            finite = sj[sj.isfinite()]
            lo, hi = (finite.quantile(0.01).item(), finite.quantile(0.99).item()) if finite.numel() else (0, 1)
            hi = hi if hi > lo else lo + 1
            for mask, label, color in ((right, "exit 7 right", "C2"), (~right, "exit 7 wrong", "C3")):
                ax.hist(sj[mask].clamp(lo, hi).numpy(), bins=30, range=(lo, hi), density=True, alpha=0.5,
                        color=color, label=label)
            ax.set_title(f"{name}, exit {j + 2}", fontsize=9)
            ax.set_xlabel(SCORE_LABELS[name], fontsize=7)
            ax.tick_params(labelsize=7)
        row[0].set_ylabel("density", fontsize=8)
    axes[0][0].legend(fontsize=7)
    _save(fig, path)


def certified_vs_epsilon(report: EvaluationReport, path: Path) -> None:
    """Per risk and policy, the mean held-out FLOPs saved by certified settings over the resplits, against
    epsilon (a resplit certifying nothing saves 0)."""
    specs = [c for c in report.certified if c.resplits]
    fig, axes = plt.subplots(1, max(1, len(specs)), figsize=(5.5 * max(1, len(specs)), 4), squeeze=False)
    for ax, spec in zip(axes[0], specs):
        epsilons = set()
        for i, (name, check) in enumerate(spec.resplits.items()):
            curve = check.curve
            epsilons |= {100 * c.epsilon for c in curve}
            ax.plot([100 * c.epsilon for c in curve], [c.mean_flops_reduction for c in curve], marker="o",
                    color=f"C{i}", label=name)
            at = check.at_epsilon
            ax.scatter([100 * at.epsilon], [at.mean_flops_reduction], marker="*", s=140, color=f"C{i}",
                       edgecolor="k", zorder=3)
        chosen = 100 * spec.epsilon
        ax.axvline(chosen, color="grey", ls=":", lw=1, label=f"chosen epsilon {chosen:g}% (stars)")
        ticks = sorted(epsilons | {chosen})
        ax.set(xscale="log", xlabel="epsilon (%)", ylabel="FLOPs saved on the held-out half",
               title=f"{spec.risk} risk, delta {spec.delta:g}: certified settings")
        ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])  # only the epsilons checked: no crowded labels
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
    _save(fig, path)


def surviving_sets(report: EvaluationReport, path: Path) -> None:
    """Per policy, test accuracy with each set of students up (healthy first; past 3 students only the
    sets that lost one): by the set's own aggregator and by the healthy one over zeros; then the
    expected accuracy at each availability p."""
    rows = report.surviving
    n = len(rows[0].sets[0].members)
    shown = [k for k, s in enumerate(rows[0].sets) if n <= 3 or len(s.members) >= n - 1]
    labels = ["+".join(map(str, rows[0].sets[k].members)) + " up" for k in shown] + \
             [f"expected\np = {a.p:g}" for a in rows[0].expected]
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.5 * len(labels) * len(rows))), 4))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        x = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(labels))]
        own = [r.sets[k].accuracy for k in shown] + [a.accuracy for a in r.expected]
        zeroed = [r.sets[k].accuracy_zeroed for k in shown] + [a.accuracy_zeroed for a in r.expected]
        ax.bar(x, own, width, color=f"C{i}", label=r.policy)
        ax.bar(x, zeroed, width, color="none", edgecolor="k", hatch="//", lw=0.5)
    ax.bar([0], [0], color="none", edgecolor="k", hatch="//", lw=0.5, label="healthy aggregator, zeros")
    ax.set_xticks(range(len(labels)), labels=labels, fontsize=8)
    ax.set(ylabel="test accuracy", ylim=(0, 1), title="When devices are lost: each set's own aggregator")
    ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)


def write_plots(report: EvaluationReport, scores: dict[str, torch.Tensor], last_right: torch.Tensor, out: Path) -> list[str]:
    """Writes every figure into out; returns their file names."""
    figures = {
        "accuracy_vs_flops.png": lambda p: accuracy_vs_cost(report, "flops_reduction",
                                                            "FLOPs saved per sample (fraction of last exit's)", p),
        "accuracy_vs_latency.png": lambda p: accuracy_vs_cost(report, "latency_ms_simulated",
                                                              "simulated latency per sample (ms)", p),
        "exit_histograms.png": lambda p: exit_histograms(report, p),
        "exit_accuracy.png": lambda p: exit_accuracy(report, p),
        "threshold_sweep.png": lambda p: threshold_sweep(report, p),
        "score_distributions.png": lambda p: score_distributions(scores, last_right, p),
    }
    if any(c.resplits for c in report.certified):
        figures["certified_vs_epsilon.png"] = lambda p: certified_vs_epsilon(report, p)
    if report.surviving:
        figures["surviving_sets.png"] = lambda p: surviving_sets(report, p)
    for name, draw in figures.items():
        draw(Path(out) / name)
    return list(figures)
