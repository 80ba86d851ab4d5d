"""report.md: the evaluation's numbers as readable tables, with the figures linked."""
import math

from distree.run_dir import CALIBRATED, jsonable_thresholds
from distree.run_report import (Certificate, CertifiedPolicy, EvaluationReport, Goal, PolicyRow, ResplitCheck,
                                ResplitPoint)
from distree.run_settings import ServedSetting, Stored


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x, fmt=".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _saved(e: PolicyRow, mode: str) -> str:
    """Time saved in a mode: measured / predicted by FLOPs / predicted by per-stage wall-clock."""
    t = e.saved[mode]
    if t is None:
        return "-"
    return " / ".join(f"{100 * v:.0f}%" for v in (t.measured, t.by_flops, t.by_stages))


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def policy_table(report: EvaluationReport) -> str:
    """One row per policy and setting (the shared-T sweep excluded), test split."""
    last = report.last_exit_accuracy
    lines = [_row(["policy", "setting", "accuracy", "vs last exit (pt)", "FLOPs saved", "sim. latency (ms)",
                   "measured latency (ms)", "throughput (/s)", "time saved, streaming", "time saved, compacting"]),
             _row(["---"] * 10)]
    for e in report.policies:
        if e.shared_t is not None:
            continue
        lines.append(_row([e.policy, e.setting, _pct(e.accuracy), f"{100 * (e.accuracy - last):+.2f}",
                           _pct(e.flops_reduction), _num(e.latency_ms_simulated),
                           _num(e.latency_ms_measured, ".2f"), _num(e.throughput_per_s, ".0f"),
                           _saved(e, "streaming"), _saved(e, "compacting")]))
    return "\n".join(lines)


def sweep_table(report: EvaluationReport) -> str:
    rows = [e for e in report.policies if e.shared_t is not None]
    lines = [_row(["T", "accuracy", "FLOPs saved", "sim. latency (ms)"]), _row(["---"] * 4)]
    lines += [_row([f"{e.shared_t:g}", _pct(e.accuracy), _pct(e.flops_reduction), _num(e.latency_ms_simulated)])
              for e in rows]
    return "\n".join(lines)


def exit_table(report: EvaluationReport) -> str:
    lines = [_row(["exit"] + list(range(1, 8))), _row(["---"] * 8)]
    lines.append(_row(["test"] + [_pct(a) for a in report.exit_accuracy]))
    lines.append(_row(["val"] + [_pct(a) for a in report.val_exit_accuracy]))
    return "\n".join(lines)


def auroc_table(report: EvaluationReport) -> str:
    lines = [_row(["score", "exit 2", "exit 3", "exit 4", "exit 5", "exit 6"]), _row(["---"] * 6)]
    lines += [_row([name] + [_num(a, ".2f") for a in values]) for name, values in report.score_auroc.items()]
    return "\n".join(lines)


def summary(report: EvaluationReport) -> str:
    g = report.goal
    verdict = "met" if g.met else "not met"
    best = f"{g.policy} saves {_pct(g.flops_reduction)}" if g.policy else \
        f"no local policy's {CALIBRATED} row stays within it"
    return (f"Goal (a local policy saving >= {_pct(g.target)} of FLOPs within {100 * report.max_drop:.1f} points "
            f"of last exit, on test; only each policy's `{CALIBRATED}` row counts, its thresholds chosen on val "
            "alone, not the budget or certified rows, whose settings answer other questions, nor the random "
            f"baseline): {verdict}; {best}. The oracle (first exit whose aggregated answer equals "
            f"exit 7's) would save {_pct(report.oracle_flops_reduction)}.")


def machinery_summary(report: EvaluationReport) -> str:
    """The exit machinery's cost per decision at B = 1 against its target, when it was measured."""
    m = report.machinery
    if m is None:
        return ""
    verdict = "met" if m.over_bare_op <= 2 else "not met"
    return (f"Exit machinery at B = 1, one thread (target: at most 2x one bare exit-head call): {verdict}; "
            f"{m.us_per_exit:.0f} us per decision beyond its stage against {m.bare_op_us:.0f} us "
            f"for the bare op ({m.over_bare_op:.1f}x).")


def _p(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _exceeds(point: ResplitPoint | None) -> list[str]:
    """The resplit check's two exceedances: the held-out half's risk and the pooled risk over epsilon."""
    if point is None:
        return ["-", "-"]
    pooled = "-" if point.pool_exceed_fraction is None else f"{100 * point.pool_exceed_fraction:.1f}%"
    return [f"{100 * point.exceed_fraction:.1f}%", pooled]


def _resplit(check: ResplitCheck | None) -> list[str]:
    if check is None:
        return ["-", "-", "-"]
    return _exceeds(check.at_epsilon) + [_pct(check.at_epsilon.mean_flops_reduction)]


def _next_samples(e: CertifiedPolicy) -> str:
    """What labelling more data would buy: the samples that certify the next candidate at its loss rate."""
    if e.candidate + 1 >= e.candidates:
        return "- (last candidate)"
    if e.next_samples is None:
        return "none: it loses at epsilon or more"
    return f"{e.next_samples:,} (+{max(0, e.next_samples - e.calibration_samples):,})"


def certified_table(spec: Certificate) -> str:
    """One row per policy for one risk: its certificate on val, its test numbers, the resplit check."""
    lines = [_row(["policy", "candidate", "losing / val samples", "p-value", "test accuracy vs last exit (pt)",
                   f"test {spec.risk} risk", "FLOPs saved (test)", "resplits: held-out risk > epsilon",
                   "resplits: pooled risk > epsilon", "resplits: mean FLOPs saved",
                   "val samples that would certify the next candidate"]),
             _row(["---"] * 11)]
    for e in spec.policies:
        check = _resplit(spec.resplits.get(e.policy)) + [_next_samples(e)]
        if not e.certified:
            lines.append(_row([e.policy, "none", "-", "-", "-", "-", "-", *check]))
            continue
        lines.append(_row([e.policy, f"{e.candidate + 1} of {e.candidates}", f"{e.losses} / {e.calibration_samples}",
                           _p(e.p_value), f"{100 * e.test_accuracy_change:+.2f}", f"{100 * e.test_risk:.2f}%",
                           _pct(e.test_flops_reduction), *check]))
    return "\n".join(lines)


def certified_text(spec: Certificate) -> str:
    """What is certified, at what cost in samples, and a sentence per policy that certifies nothing."""
    eps, delta, n = spec.epsilon, spec.delta, spec.calibration_samples
    what = {"accuracy": "harm rate (wrong where exit 7 is right; bounds the accuracy drop)",
            "consistency": "consistency risk (answer differs from exit 7's; label-free)"}[spec.risk]
    head = (f"{spec.risk}: {what} <= {100 * eps:g}% with probability >= {1 - delta:g}, certified on {n} "
            f"validation samples (exact binomial test, fixed-sequence order from the training split): a setting "
            f"passes where at most {spec.max_losses} of them lose; these samples certify no epsilon below "
            f"{100 * spec.smallest_epsilon:.3f}%. Resplits: val and test pooled and halved at random, each half "
            f"certifying anew; 'held-out risk > epsilon' is how often the other half's risk exceeded epsilon, an "
            f"estimate that runs high by construction (the halves' losses add up to the pool's), 'pooled risk > "
            f"epsilon' how often the certified setting's risk over the whole pool, the population the halves are "
            f"drawn from, did: the guarantee's own event, at most {delta:g} for a valid procedure. The last column "
            f"says what labelling more data would buy: the validation samples, in all, that would certify the next "
            f"candidate on the path if its loss rate stayed what it is here (the binomial tail at that rate).")
    none = [f"No setting of {e.policy} can be certified at {100 * eps:g}%" +
            (f"; its next candidate needs epsilon >= {100 * e.next_epsilon:.2f}%." if e.next_epsilon is not None
             else ".")
            for e in spec.policies if not e.certified]
    sets = [certified_sets_table(spec)] if spec.surviving_sets else []
    return "\n\n".join([head, certified_table(spec), *none, *sets])


def certified_sets_table(spec: Certificate) -> str:
    """A row per surviving set and local policy: the setting certified with only that set answering."""
    lines = [_row(["students up", "policy", "candidate", "losing / val samples", f"test {spec.risk} risk",
                   "FLOPs saved (test, of the set's)", "resplits: held-out risk > epsilon",
                   "resplits: pooled risk > epsilon"]), _row(["---"] * 8)]
    for d in spec.surviving_sets:
        for e in d.policies:
            exceed = _exceeds(d.resplits.get(e.policy))
            if not e.certified:
                lines.append(_row([_members(d.members), e.policy, "none", "-", "-", "-", *exceed]))
                continue
            lines.append(_row([_members(d.members), e.policy, f"{e.candidate + 1} of {e.candidates}",
                               f"{e.losses} / {e.calibration_samples}", f"{100 * e.test_risk:.2f}%",
                               _pct(e.test_flops_reduction), *exceed]))
    return ("The same candidate path, certified anew for every surviving set: the risk against that set's own "
            "exit-7 answer, by its own aggregator.\n\n" + "\n".join(lines))


def certified_goal(spec: Certificate, target: float = 0.35) -> Goal:
    """The local policy (random aside) whose certified setting saves the most FLOPs on test."""
    ok = [e for e in spec.policies if e.certified and e.local and e.policy != "random"]
    best = max(ok, key=lambda e: e.test_flops_reduction, default=None)
    saved = best.test_flops_reduction if best else 0.0
    return Goal(best and best.policy, saved, target, saved >= target)


def certified_summary(report: EvaluationReport) -> str:
    out = []
    for spec in report.certified:
        g = certified_goal(spec)
        best = f"{g.policy} saves {_pct(g.flops_reduction)} on test" if g.policy else "none is certified"
        out.append(f"Certified ({spec.risk} risk <= {100 * spec.epsilon:g}%, delta {spec.delta:g}): "
                   f"{'met' if g.met else 'not met'} (a local policy saving >= {_pct(g.target)}); {best}.")
    return " ".join(out)


def _thresholds(t) -> str:
    return ", ".join(v if isinstance(v, str) else f"{v:.4g}" for v in jsonable_thresholds(t))


def _chose(setting: ServedSetting) -> str:
    """What chose a setting, in words."""
    o = setting.options
    if "risk" in o:
        return f"{o['risk']} risk <= {100 * o['epsilon']:g}%, delta {o['delta']:g}"
    return "-" if o.get("max_drop") is None else f"least FLOPs within {100 * o['max_drop']:.1f} points on val"


def settings_table(stored: Stored) -> str:
    """Every setting the run serves: one row per setting and policy, with its thresholds."""
    lines = [_row(["setting", "chosen by", "policy", "thresholds T2..T6", "this evaluation"]), _row(["---"] * 5)]
    for setting in stored.settings.settings.values():
        note = ("added" if setting.name in stored.added else
                "its own differ: kept as stored" if setting.name in stored.kept else "kept as stored")
        lines += [_row([f"`{setting.name}`", _chose(setting), policy, _thresholds(t), note])
                  for policy, t in setting.thresholds.items()]
    return "\n".join(lines)


def stored_summary(stored: Stored) -> str:
    """One sentence on what this evaluation did to the settings the run serves."""
    added = ", ".join(stored.added) or "none"
    first = " (it held none for these students.pt)" if stored.fresh else ""
    out = f"Settings added to the run{first}: {added}."
    if stored.kept:
        out += (f" Kept as stored, not replaced by this evaluation's: {', '.join(stored.kept)} (deploy and export "
                "serve what they served; evaluate with --name NAME to add these as NAME:...).")
    return out


def _members(members: list[int]) -> str:
    return "+".join(str(i) for i in members)


def surviving_table(report: EvaluationReport) -> str:
    """Accuracy per surviving set of students (a row each), with the set's aggregator and with zeros,
    then the accuracy expected when each device is up with probability p."""
    rows = report.surviving
    head = ["students up"] + [r.policy if r.policy == "last-exit" else f"{r.policy} ({r.setting})" for r in rows]
    lines = [_row(head), _row(["---"] * len(head))]
    for k, first in enumerate(rows[0].sets):
        lines.append(_row([_members(first.members)] + [
            f"{_pct(r.sets[k].accuracy)} ({_pct(r.sets[k].accuracy_zeroed)}), {_pct(r.sets[k].flops_reduction)} saved"
            for r in rows]))
    for k, first in enumerate(rows[0].expected):
        lines.append(_row([f"expected, p = {first.p:g}"] +
                          [f"{_pct(r.expected[k].accuracy)} ({_pct(r.expected[k].accuracy_zeroed)})" for r in rows]))
    return ("Students are numbered from 0. A cell is the test accuracy with the surviving set's own aggregator "
            "(in brackets: the healthy aggregator with the missing evidence zeroed, as runs evaluated before "
            "surviving sets answer) and the FLOPs its students save against their own last exit. The last rows "
            "weigh every failure pattern by its probability when each device is up with probability p, "
            "independently; no device up counts as wrong.\n\n" + "\n".join(lines))


def _elapsed(report: EvaluationReport) -> str:
    if report.phases_s is None:
        return f"evaluated in {report.elapsed_s:.0f} s"
    # written by the demo: the whole experiment, then each phase
    phases = ", ".join(f"{name} {s:.0f} s" for name, s in report.phases_s.items())
    return f"the whole experiment took {report.elapsed_s:.0f} s ({phases})" + \
        (f" on {report.machine}" if report.machine else "")


def render(report: EvaluationReport, figures: list[str], stored: Stored | None = None) -> str:
    head = [f"# DistrEE evaluation: {report.dataset}", "",
            f"{report.num_students} students; teacher accuracy {_pct(report.teacher_accuracy)}; last-exit accuracy "
            f"{_pct(report.last_exit_accuracy)}; last-exit cost {report.last_exit_flops / 1e6:.1f} MFLOPs "
            f"per sample; {_elapsed(report)}.", "", summary(report), "", certified_summary(report), "",
            machinery_summary(report), "",
            f"Thresholds are chosen on the validation split (`{CALIBRATED}`: least FLOPs within "
            f"{100 * report.max_drop:.1f} points of last exit there); every number below is on the test split. "
            "Measured latency is wall-clock per sample in streaming mode (one thread). 'Time saved' against "
            "last exit, on the timed samples: measured / predicted by FLOPs / predicted by each stage's and "
            "head's own measured time; the target is measured >= 90% of the per-stage prediction. The gap between "
            "the two predictions is the model's (early stages are memory-bound), the gap between the last "
            "prediction and the measurement is the exit machinery's."]
    sections = [("Policies", policy_table(report)), ("DistrEE rule, the paper's shared-T sweep", sweep_table(report)),
                *[(f"Certified settings: {c.risk} risk", certified_text(c)) for c in report.certified],
                *([("Settings the run serves",
                    f"`distree deploy` and `distree export` serve `{CALIBRATED}` unless --setting names another. "
                    f"{stored_summary(stored)}\n\n{settings_table(stored)}")] if stored is not None else []),
                *([("When devices are lost: accuracy per surviving set", surviving_table(report))]
                  if report.surviving else []),
                ("Accuracy with every student at exit j", exit_table(report)),
                ("Can a score tell exits that keep exit 7's answer from those that change it? (AUROC)",
                 auroc_table(report))]
    body = [f"## {title}\n\n{table}" for title, table in sections]
    images = "## Figures\n\n" + "\n".join(f"![{f[:-4]}]({f})" for f in figures)
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "\n\n" + images + "\n"
