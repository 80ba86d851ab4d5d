"""Thresholds that follow the devices: slow and link faults, the latency target, the THRESHOLDS
message and the shadow check, with real processes on loopback where a session is needed.

Sessions run the synthetic set's 128 test samples on untrained students, one sample in flight
(window 1) so a sample's latency is its devices' compute and messages, bounded by a timeout. The
latency target is 1.8x the session's own median before anything moves (`latency_target_x`), so
the test does not depend on how fast the machine is: with WRN-16-6 students, whose exit 2 costs about an
eighth of exit 7, a `slow:1@50:4` device is over it at full depth (2x to 4x slower: a sleeping
device leaves the other more of the CPU) and well under it at the cheap end of the path, and
back at full depth the unslowed device has slack. Faults start and end at counts of inputs, and
every bound is in samples, derived from the controller's rules. A shared machine's pace can
change by 2x within seconds, so the session checks that premise on its own samples and runs
again where it did not hold.
"""
import json
import threading
from collections import deque

import pytest
import torch

from distree import cli
from distree.errors import DistreeError
from distree.report import write_session_figures
from distree.inference.evidence import bias_share
from distree.inference.step import DeviceStep
from distree.policies import make_policy
from distree.runtime import messages as m
from distree.runtime.adaptive import MAX_RELAX_WINDOWS, AdaptConfig, Controller, ShadowCheck
from distree.runtime.config import ServeConfig
from distree.runtime.deploy import deploy
from distree.runtime.device import Device, ThresholdSettings
from distree.runtime.faults import parse_fault
from distree.plan import make_plan
from distree.runtime.plan import with_paths
from distree.runtime.rank import check_options
from distree.risk_grid import GridCertificate, SettingCosts
from test_runtime import EVENT_DEADLINE_MS, make_run, make_run_with_sets, median_thresholds

INF = float("inf")
SESSION_TIMEOUT = 300.0  # an outer bound, met only by a hang


@pytest.fixture(scope="module")
def wide2(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("wide2"), 2, width=6)


@pytest.fixture(scope="module")
def wide2_sets(tmp_path_factory):
    """wide2's kind of run with its surviving-set aggregators and, as `distree evaluate` stores them, a
    certified-consistency grid over path_file's 3 settings that certifies every combination, and for
    each device left alone a grid that certifies its settings 0 and 2 but not 1 (a grid the healthy one
    could not be mistaken for)."""
    from distree.run_settings import ServedSetting, store_settings

    run = make_run_with_sets(tmp_path_factory.mktemp("wide2_sets"), 2, width=6)
    median = [float(v) for v in median_thresholds(run, "distree").split("=")[1].split(",")]
    path = torch.tensor([[INF] * 5, median, [-INF] * 5])  # (3, 5): path_file's
    healthy = small_grid([[0] * 3] * 3)
    healthy.path = path
    alone = {(i,): GridCertificate(path, 1000, torch.tensor([0, 90, 20]), torch.tensor([True, False, True]), 0.05,
                                   0.1, healthy.costs, members=(i,)) for i in range(2)}
    store_settings(run, [ServedSetting("calibrated", {"distree": path[1]}),
                         ServedSetting("certified-consistency", {"distree": path[1]}, {"distree": healthy},
                                       {"risk": "consistency", "epsilon": 0.05, "delta": 0.1},
                                       set_grids={"distree": alone})])
    return run


@pytest.fixture(scope="module")
def wide3(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("wide3"), 3, width=4)  # compute well above the messages' time


def path_file(run: str, directory) -> str:
    """A 3-setting DistrEE path: every exit off, each exit's median score, every sample at exit 2."""
    median = [float(v) for v in median_thresholds(run, "distree").split("=")[1].split(",")]
    path = directory / "path.json"
    path.write_text(json.dumps({"distree": [["inf"] * 5, median, ["-inf"] * 5]}))
    return str(path)


def session(run: str, n: int, tmp_path, **options):
    """Deploy a session (by default over the whole test split); (outcome, report or None)."""
    tmp_path.mkdir(exist_ok=True)
    options = {"samples": 0, "reference_samples": 0, "window": 1, **options}
    config = ServeConfig(run=run, policies=["distree"], report=str(tmp_path / "report.json"), **options)
    outcome = deploy(config, n, timeout_s=SESSION_TIMEOUT)
    path = tmp_path / "report.json"
    return outcome, (json.loads(path.read_text()) if path.exists() else None)


# -- no processes ---------------------------------------------------------------------------------------

def test_threshold_messages_are_checked():
    t = torch.tensor([INF, 1.2, 1.1, -INF, 1.0])
    msg = m.decode(m.encode_thresholds(2, 0, t, 12), (m.THRESHOLDS,), 1, 7, 12, num_settings=[3])
    assert (msg.kind, msg.seq, msg.policy) == (m.THRESHOLDS, 2, 0) and torch.equal(msg.payload, t)
    bad = [(m.encode_thresholds(3, 0, t, 12), "setting index 3"),
           (m.encode_thresholds(0, 1, t, 12), "setting index 0 out of range \\[0, 0\\)"),  # a policy with no path
           (m.encode_thresholds(0, 0, torch.tensor([float("nan")] * 5), 12), "NaN"),
           (m.encode(m.THRESHOLDS, 0, 0, 0, torch.ones(12)), "past its thresholds"),
           (m.encode_thresholds(0, 0, t, 11), "expected 12")]
    for raw, error in bad:
        with pytest.raises(m.BadMessage, match=error):
            m.decode(raw, (m.THRESHOLDS,), 2, 7, 12, num_settings=[3, 0])


def test_device_takes_only_its_paths_settings(capsys):
    from distree.training.presets import run_config
    from distree.run_dir import build_students

    model = build_students(run_config("smoke"))
    path = torch.tensor([[INF] * 5, [-INF] * 5])  # (2, 5)
    step = DeviceStep(model.students[0], 0, make_policy("distree"), path[0], bias_share(model))
    settings = ThresholdSettings(0, [step], [path])
    x = torch.randn(3, 32, 32)
    assert step.run_one(x, 0)[1] == 6  # every exit off: the last
    assert settings.apply(m.decode(m.encode_thresholds(1, 0, path[1], 8), (m.THRESHOLDS,), 1, 7, 8, num_settings=[2]))
    assert step.run_one(x, 0)[1] == 1 and settings.current == [1]  # the fused gate's thresholds changed in place
    off_path = m.decode(m.encode_thresholds(0, 0, torch.full((5,), 1.5), 8), (m.THRESHOLDS,), 1, 7, 8,
                        num_settings=[2])
    assert not settings.apply(off_path)
    assert settings.rejected == 1 and settings.current == [1] and torch.equal(step.thresholds, path[1])
    assert "rejected a THRESHOLDS message" in capsys.readouterr().err


def test_controller_moves_with_hysteresis():
    config = AdaptConfig(target_s=0.010, window=10, react=3)  # p95; slack at 7 ms
    control = Controller(config, 2, length=4)
    observe = lambda index, seconds, times, device=0, compute=None: [  # noqa: E731
        control.observe(device, index, seconds, seconds - 0.0005 if compute is None else compute) for _ in range(times)]
    assert observe(0, 0.020, 3) == [None, None, 1]  # over budget: one step cheaper once `react` answers agree
    assert observe(0, 0.008, 30, device=1) == [None] * 30  # under budget, not under slack: stays
    assert observe(0, 0.001, 1) == [None]  # issued under the old setting: says nothing
    assert observe(1, 0.005, 10) == [None] * 10  # slack, but setting 0 computes 4.3x as long: no step back
    assert control.devices[0].ratios == {0: pytest.approx(0.0195 / 0.0045)}
    assert observe(1, 0.0012, 9, compute=0.0007) == [None] * 8 + [0]  # faster now (5.6 ms predicted): step back
    assert observe(0, 0.020, 3) == [None, None, 1] and control.devices[0].relax_wait == 20  # it failed: wait longer
    assert observe(1, 0.004, 29) == [None] * 29  # 20 ms predicted at setting 0 from the ratio just measured
    assert observe(1, 0.004, 1) == [0]  # after 3 windows the old ratio is not trusted: try
    assert control.limit(0) == {} and control.indices == [0, 0]
    assert observe(0, 0.020, 5) == [None] * 5  # capped at the conservative end: nowhere cheaper to go


def test_shadow_check_acts_only_on_significant_disagreement():
    check = ShadowCheck(epsilon=0.01, delta=0.1)  # no grid: the drift rule alone
    assert [check.add((1, 0), False) for _ in range(17)] == [None] * 17
    assert check.add((1, 0), True) is None  # 1 of 18: P(X >= 1) = 0.17 at 1%, no evidence against it
    assert check.add((0, 1), True) == {"rule": "drift", "disagreements": 2, "shadows": 19}  # P(X >= 2) = 0.015
    assert (check.k, check.n) == (0, 0)
    s = check.summary()
    assert (s["shadows"], s["disagreements"]) == (19, 2) and s["estimate"] < s["upper_bound"] < 0.3
    assert [r["shadows"] for r in s["per_setting"]] == [1, 18] and s["per_setting"][0]["bound"] is None


def small_grid(losses, n=1000, epsilon=0.05, delta=0.1) -> GridCertificate:
    """A grid of 2 devices x 3 settings whose calibration lost `losses` (3, 3) of n samples."""
    from distree.risk import binomial_cdf
    losses = torch.tensor(losses)
    certified = binomial_cdf(n, epsilon)[losses] <= delta / losses.numel()
    share = torch.zeros(3, 2, 7, dtype=torch.float64)  # every sample at one exit per setting
    share[0, :, 6] = share[1, :, 3] = share[2, :, 0] = 1.0
    flops = torch.tensor([1.0, 2, 3, 4, 5, 6, 8], dtype=torch.float64).expand(2, -1)  # (N, 7)
    return GridCertificate(torch.tensor([[INF] * 5, [1.2] * 5, [-INF] * 5]), n, losses, certified, epsilon, delta,
                           SettingCosts(share, flops))  # costs 8, 4, 1 at any percentile


def test_the_grid_certifies_every_combination_at_once():
    from distree.inference.outcome import PolicyEvaluator
    from distree.costs import student_flops
    from distree.risk_grid import certify_grid, combination_losses, device_path, setting_exits
    from inference_cases import synthetic_evidence, synthetic_flops

    e = PolicyEvaluator(make_policy("local-confidence"), synthetic_evidence(b=2000, seed=3), synthetic_flops())
    candidates = torch.stack([torch.full((5,), q) for q in (INF, 0.9, 0.8, 0.6, 0.3, -INF)])  # (6, 5)
    exits = setting_exits(e, candidates)  # (6, N, B)
    losses = combination_losses(e, exits)  # (6, 6)
    full = e.evidence.logits_at(torch.full_like(exits[0], 6)).argmax(-1)  # exit 7's answer
    answer = e.evidence.logits_at(torch.stack([exits[3, 0], exits[1, 1]])).argmax(-1)
    assert losses[3, 1] == (answer != full).sum() and losses[0, 0] == 0
    assert losses[5, 5] > losses[5, 0] > 0
    path = device_path(e, candidates, 0.05, steps=4)  # cut where one device alone passes 5% on this evidence
    assert torch.equal(path[0], candidates[0]) and len(path) <= 4
    grid = certify_grid(e, path, 0.05, 0.1)
    assert grid.certified[0, 0] and not grid.certified[-1, -1]
    for index in torch.nonzero(grid.certified).tolist():  # certified: its own bound within epsilon
        assert grid.bound(tuple(index)) <= 0.05
    for percentile in (50, 95):
        cost = grid.costs.at(percentile)  # (C, N)
        assert cost.shape == (len(path), 2) and (cost[:-1] >= cost[1:]).all()  # cheaper along it
        flops = torch.stack([student_flops(e.flops, x, e.policy) for x in setting_exits(e, path)])  # (C, N, B): every sample's FLOPs
        at_most = (flops <= cost.unsqueeze(-1)).double().mean(-1)  # (C, N): the percentile's definition
        below = (flops < cost.unsqueeze(-1)).double().mean(-1)
        assert (at_most >= percentile / 100).all() and (below < percentile / 100).all()
    back = GridCertificate.from_json(json.loads(json.dumps(grid.to_json())))
    assert torch.equal(back.losses, grid.losses) and torch.equal(back.certified, grid.certified)
    assert torch.equal(back.path, grid.path) and torch.allclose(back.costs.at(50), grid.costs.at(50))


def test_setting_costs_at_a_percentile_and_as_stored_before_the_histogram():
    share = torch.tensor([[[0.5, 0.0, 0.0, 0.3, 0.0, 0.0, 0.2]]], dtype=torch.float64)  # (1, 1, 7)
    costs = SettingCosts(share, torch.tensor([[1.0, 2, 3, 4, 5, 6, 7]], dtype=torch.float64))
    assert [float(costs.at(p)) for p in (10, 50, 51, 80, 81, 95)] == [1.0, 1.0, 4.0, 4.0, 7.0, 7.0]
    old = {"cost": [[52.7, 52.7], [52.7, 30.0]]}  # a grid stored with the 95th percentile only
    assert torch.equal(SettingCosts.from_json(old, 2).at(50), torch.tensor(old["cost"], dtype=torch.float64))


def test_the_controller_prices_settings_at_the_percentile_it_holds():
    grid = small_grid([[0, 10, 20], [10, 20, 30], [20, 30, 34]])
    grid.costs.share[1] = 0.0  # setting 1: 90% of samples leave at exit 1, 10% run to exit 7
    grid.costs.share[1, :, 0], grid.costs.share[1, :, 6] = 0.9, 0.1
    at_median = Controller(AdaptConfig(target_s=0.010, percentile=50, window=10, react=3), 2, length=3, grid=grid)
    at_p95 = Controller(AdaptConfig(target_s=0.010, window=10, react=3), 2, length=3, grid=grid)
    assert at_median.cost[1].tolist() == [1.0, 1.0] and at_p95.cost[1].tolist() == [8.0, 8.0]
    # 40 ms, nearly all compute: at the median setting 1 predicts 5 ms, so the median goes no further;
    # at the 95th it saves nothing, so the p95 goes on to setting 2
    assert [at_median.observe(1, 0, 0.040, 0.039) for _ in range(3)] == [None, None, 1]
    assert [at_p95.observe(1, 0, 0.040, 0.039) for _ in range(3)] == [None, None, 2]


def test_controller_runs_only_certified_combinations_and_jumps_by_cost():
    grid = small_grid([[0, 10, 40], [10, 20, 80], [40, 80, 90]])  # at 5% of 1000, delta / 9: 34 or fewer certify
    assert grid.certified.tolist() == [[True, True, False], [True, True, False], [False, False, False]]
    control = Controller(AdaptConfig(target_s=0.010, window=10, react=3), 2, length=3, grid=grid)
    # 40 ms at setting 0, nearly all of it compute: setting 1 (cost 4 of 8) predicts 20 ms, setting 2 may not run
    assert [control.observe(1, 0, 0.040, 0.039) for _ in range(3)] == [None, None, 1]
    assert [control.observe(1, 1, 0.040, 0.039) for _ in range(3)] == [None] * 3  # (0, 2) may not run: stays
    grid.certified[0, 2] = True  # now it may, and the jump goes as far as the cost says it must
    control = Controller(AdaptConfig(target_s=0.010, window=10, react=3), 2, length=3, grid=grid)
    assert [control.observe(1, 0, 0.040, 0.039) for _ in range(3)] == [None, None, 2]  # cost 8 -> 1: 5.9 ms
    assert [control.observe(0, 0, 0.020, 0.019) for _ in range(3)] == [None] * 3  # (1, 2) is not certified
    control.rule_out((0, 2))  # the shadow check stopped it: back to a combination that may run
    assert control.limit(control.cap) == {1: 1} and control.indices == [0, 1] and control.cap == 1


def test_a_device_within_budget_steps_back_to_make_room_for_one_over_it():
    grid = small_grid([[0, 10, 20], [10, 20, 80], [20, 80, 90]])  # certified: (0, *), (1, 0), (1, 1), (2, 0)

    def cheap_device_0(latency: float, compute: float) -> Controller:
        control = Controller(AdaptConfig(target_s=0.010, window=10, react=3), 2, length=3, grid=grid)
        assert [control.observe(0, 0, 0.040, 0.039) for _ in range(3)] == [None, None, 2]  # to the cheap end
        assert [control.observe(0, 2, latency, compute) for _ in range(3)] == [None] * 3
        return control

    # device 0 at 2.5 ms there predicts 5.5 ms at setting 1 and 9.5 ms at setting 0, within 10: with it at
    # setting 0, device 1 (40 ms, its compute 39) may go to setting 2 (cost 8 -> 1, 5.9 ms predicted)
    control = cheap_device_0(0.0025, 0.001)
    assert [control.observe(1, 0, 0.040, 0.039) for _ in range(3)] == [None, None, 2]
    assert control.take_made_room() == {0: 0} and control.take_made_room() == {}
    assert control.indices == [0, 2] and control.allowed(control.indices)
    # device 0 near its own budget (9 ms, 19 ms predicted at setting 1): no step back, device 1 stays
    control = cheap_device_0(0.009, 0.005)
    assert [control.observe(1, 0, 0.040, 0.039) for _ in range(3)] == [None] * 3
    assert control.take_made_room() == {} and control.indices == [2, 0]


def test_controller_holds_the_cheap_end_through_a_slowdown_and_returns_after():
    grid = small_grid([[0, 10, 20], [10, 20, 80], [20, 80, 90]])  # (0, 2) certified; costs 8, 4, 1
    control = Controller(AdaptConfig(target_s=0.010, window=10, react=3), 2, length=3, grid=grid)
    assert [control.observe(1, 0, 0.008, 0.003) for _ in range(10)] == [None] * 10  # 8 ms: within 10
    assert [control.observe(1, 0, 0.014, 0.009) for _ in range(2)] == [None, 2]  # 3x slower: to the cheap end
    assert control.devices[1].seen[0] == (pytest.approx(0.008), pytest.approx(0.003))  # the slowed answers left out
    slowed = [control.observe(1, 2, 0.008, 0.009 / 8) for _ in range(30)]  # 3x the healthy compute per unit of cost
    assert slowed == [None] * 30  # 24 ms predicted at setting 0 (8 x 3), 11.4 at setting 1 (8 + 4.5 - 1.1): stays
    healthy = [control.observe(1, 2, 0.003, 0.003 / 8) for _ in range(10)]
    back = healthy.index(0)  # the slowdown over: 8 ms predicted at setting 0 once the median compute is healthy
    assert healthy[:back] == [None] * back and back < 10


def test_shadow_check_keeps_each_combinations_pooled_bound_within_epsilon():
    grid = small_grid([[0, 10, 40], [10, 34, 80], [40, 80, 90]])
    check = ShadowCheck(0.05, 0.1, grid)
    assert grid.certified[1, 1] and grid.bound((1, 1)) <= 0.05  # 34 of 1000: certified, just
    assert [check.add((0, 0), False) for _ in range(100)] == [None] * 100  # the floor agrees: no drift either
    fired, count = None, 0
    while fired is None:
        fired = check.add((1, 1), True)
        count += 1
    assert fired["rule"] == "bound" and fired["setting"] == [1, 1] and fired["bound"] > 0.05 and count <= 3
    assert grid.bound((1, 1), count - 1, count - 1) <= 0.05 < grid.bound((1, 1), count, count)  # the first past it
    row = next(r for r in check.summary()["per_setting"] if r["setting"] == [1, 1])
    assert (row["calibration_losses"], row["shadows"], row["disagreements"]) == (34, count, count)


def test_a_surviving_sets_grid_tests_its_members_settings_only():
    from distree.inference.outcome import PolicyEvaluator
    from distree.risk import binomial_cdf
    from distree.risk_grid import certify_grid, combination_losses, setting_exits
    from inference_cases import synthetic_evidence, synthetic_flops

    e = PolicyEvaluator(make_policy("local-confidence"), synthetic_evidence(b=2000, seed=3), synthetic_flops())
    path = torch.stack([torch.full((5,), q) for q in (INF, 0.8, 0.5, -INF)])  # (4, 5)
    full = combination_losses(e, setting_exits(e, path))  # (4, 4): both devices
    alone = certify_grid(e, path, 0.05, 0.1, members=(1,))  # device 0's setting is never read by the set
    assert alone.losses.shape == (4,) and torch.equal(alone.losses, full[0])  # device 0 held at the first
    assert torch.equal(alone.certified, binomial_cdf(2000, 0.05)[alone.losses] <= 0.1 / 4)  # Bonferroni over 4, not 16
    for j in range(4):  # a combination of the session's devices is looked up by device 1's setting alone
        assert alone.allows([3, j]) == alone.allows([0, j]) == bool(alone.certified[j])
        assert alone.bound([2, j]) == alone.bound((0, j))
    back = GridCertificate.from_json(json.loads(json.dumps(alone.to_json())))
    assert back.members == (1,) and torch.equal(back.losses, alone.losses) and back.allows([0, 0])


def test_after_a_loss_the_controller_moves_only_among_the_sets_combinations():
    grid = small_grid([[0, 10, 20], [10, 20, 30], [20, 30, 34]])  # healthy: every combination certified
    assert grid.certified.all()
    control = Controller(AdaptConfig(target_s=0.010, window=10, react=3), 2, length=3, grid=grid)
    assert [control.observe(0, 0, 0.040, 0.039) for _ in range(3)] == [None, None, 2]  # device 0 to the cheap end
    alone = GridCertificate(grid.path, 1000, torch.tensor([0, 20, 60]), torch.tensor([True, True, False]), 0.05, 0.1,
                            grid.costs, members=(0,))  # device 1 lost: device 0's setting 2 is not certified alone
    assert control.lose(alone) == {0: 1} and control.indices == [1, 0]
    assert [control.observe(0, 1, 0.040, 0.039) for _ in range(12)] == [None] * 12  # over budget, but 2 may not run
    assert control.lose(None) == {0: 0} and control.cap == 0  # no grid for the set that is left: the safe end
    assert [control.observe(0, 0, 0.040, 0.039) for _ in range(12)] == [None] * 12
    check = ShadowCheck(0.05, 0.1, grid)
    check.add((2, 0), True)
    check.lose(alone, (0,), sample=7)
    s = check.summary()
    assert s["shadows"] == 0 and s["calibration_samples"] == 1000
    assert s["before_loss"][0]["shadows"] == 1 and s["before_loss"][0]["until_sample"] == 7
    assert check.add((1, 1), False) is None and check.summary()["per_setting"][0]["calibration_losses"] == 20


def test_evaluation_stores_each_surviving_sets_grid():
    from distree.evaluation import EvaluateConfig, certify_sets
    from distree.inference.outcome import PolicyEvaluator
    from distree.risk import RiskSpec
    from distree.risk_grid import certify_grid
    from distree.run_settings import ServedSetting, settings_from_report
    from inference_cases import synthetic_evidence, synthetic_flops

    val, test = (synthetic_evidence(b=800, seed=s) for s in (3, 4))
    evals = [{"local-confidence": PolicyEvaluator(make_policy("local-confidence"), ev, synthetic_flops())}
             for ev in (val, test)]
    path = torch.stack([torch.full((5,), q) for q in (INF, 0.9, 0.6, 0.3, -INF)])  # (5, 5)
    healthy = certify_grid(evals[0]["local-confidence"], path[:3], 0.2, 0.1)
    spec = RiskSpec("consistency", 0.2, 0.1)
    rows = certify_sets(spec, {"local-confidence": path}, {(1,): evals[0]}, {(1,): evals[1]},
                        EvaluateConfig(resplits=0), {"local-confidence": healthy})
    grid = GridCertificate.from_json(rows[0]["policies"][0]["grid"])
    assert grid.members == (1,) and torch.equal(grid.path, healthy.path) and grid.losses.shape == (3,)
    report = {"policies": [], "certified": [{**spec.__dict__, "policies": [], "surviving_sets": rows}]}
    served = settings_from_report(report)["certified-consistency"]
    again = ServedSetting.from_json(json.loads(json.dumps(served.to_json())))  # as settings.json keeps it
    assert torch.equal(again.set_grids["local-confidence"][(1,)].losses, grid.losses)


def test_evaluation_stores_the_certified_grid():
    from distree.evaluation import EvaluateConfig, certify_policies
    from distree.inference.outcome import PolicyEvaluator
    from distree.risk import RiskSpec
    from inference_cases import synthetic_evidence, synthetic_flops

    val, test, train = (synthetic_evidence(b=800, seed=s) for s in (3, 4, 5))
    evals = [{n: PolicyEvaluator(make_policy(n), ev, synthetic_flops()) for n in ("last-exit", "local-confidence")}
             for ev in (val, test)]
    path = {"local-confidence": torch.stack([torch.full((5,), q) for q in (INF, 0.9, 0.6, 0.3, -INF)])}  # (5, 5)
    config = EvaluateConfig(resplits=0, grid_steps=3)
    out = certify_policies(RiskSpec("consistency", 0.2, 0.1), path, evals[0], evals[1], config, train)
    grid = GridCertificate.from_json(out["policies"][0]["grid"])
    assert len(grid.path) <= 3 and grid.path[0][0] == INF and grid.n == 800 and grid.certified[0, 0]
    accuracy = certify_policies(RiskSpec("accuracy", 0.2, 0.1), path, evals[0], evals[1], config, train)
    assert "grid" not in accuracy["policies"][0]  # the shadows watch consistency: only its certificate has one


def test_plan_reads_the_certified_grid(tmp_path):
    grid = small_grid([[0, 10, 40], [10, 20, 80], [40, 80, 90]]).to_json()
    certified = [{"risk": "consistency", "epsilon": 0.05, "delta": 0.1,
                  "policies": [{"policy": "distree", "certified": True, "candidate": 4, "grid": grid,
                                "thresholds": [1.2] * 5},
                               {"policy": "entropy", "certified": False, "candidate": -1}]}]
    (tmp_path / "report.json").write_text(json.dumps({"policies": [], "certified": certified}))
    plan = with_paths(make_plan(["distree", "entropy"], {}, tmp_path), tmp_path, None, steps=2, epsilon=0.01,
                      delta=0.1, num_devices=2)
    assert plan[0].path.tolist() == [[INF] * 5, pytest.approx([1.2] * 5), [-INF] * 5]  # a grid is not thinned
    assert plan[0].thresholds[0] == INF and plan[0].risk["epsilon"] == 0.05 and plan[0].grid.n == 1000
    assert plan[1].path is None
    with pytest.raises(DistreeError, match="certified grid for 3 devices"):
        with_paths(make_plan(["distree"], {}, tmp_path), tmp_path, None, 3, 0.01, 0.1, num_devices=3)
    listed = tmp_path / "path.json"
    listed.write_text(json.dumps({"distree": [["inf"] * 5, [1.3] * 5, [1.2] * 5, [1.1] * 5, [1.05] * 5]}))
    plan = with_paths(make_plan(["distree"], {}, tmp_path), tmp_path, str(listed), 3, 0.01, 0.1, num_devices=2)
    assert plan[0].grid is None and len(plan[0].path) == 3 and plan[0].risk["epsilon"] == 0.01  # certifies nothing
    listed.write_text(json.dumps({"distree": {**grid, "losses": grid["losses"][:4]}}))
    with pytest.raises(DistreeError, match="--threshold-path"):
        with_paths(make_plan(["distree"], {}, tmp_path), tmp_path, str(listed), 3, 0.01, 0.1, num_devices=2)


@pytest.mark.parametrize("option, error", [
    ({"latency_target_ms": 0.0}, "--latency-target-ms"), ({"latency_target_ms": -5.0}, "--latency-target-ms"),
    ({"latency_target_ms": 10.0, "percentile": 100.0}, "--percentile"), ({"percentile": 0.0}, "--percentile"),
    ({"faults": ["slow:1@5:0.5"]}, "FACTOR >= 1"), ({"faults": ["slow:2@5:2"]}, "device must be in 0..1"),
    ({"faults": ["link:3@5:10"]}, "device must be in 0..1"), ({"faults": ["link:0@5"]}, "DELAY_MS"),
])
def test_bad_options_are_refused_before_any_process(tmp_path, option, error):
    with pytest.raises(DistreeError, match=error):
        check_options(ServeConfig(run=str(tmp_path), **option), 2)


@pytest.fixture(scope="module")
def run2_small(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("small2"), 2)


def test_cli_exits_2_on_a_bad_target(run2_small, capsys):
    for argv in (["deploy", "--run", run2_small, "--latency-target-ms", "0"],
                 ["deploy", "--run", run2_small, "--percentile", "120"],
                 ["deploy", "--run", run2_small, "--fault", "slow:5@1:2"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_parse_slow_and_link_faults():
    assert parse_fault("slow:1@50:4", 2).factor == 4 and parse_fault("slow:1@50:4", 2).seconds == 0
    assert parse_fault("slow:1@50:4:2.5", 2).seconds == 2.5
    f = parse_fault("link:0@10:40:2", 2)
    assert (f.delay_ms, f.mbps) == (40, 2)


# -- sessions -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_slow_device_moves_cheaper_and_returns(wide2, tmp_path):
    # the slowdown is inputs 50..79 of device 1 (a later slow fault of factor 1 ends it): counted, not timed
    start, end, window = 50, 80, 10
    for attempt in range(3):  # a shared machine's pace can change by 2x within seconds: then again
        outcome, report = session(wide2, 2, tmp_path, faults=[f"slow:1@{start}:4", f"slow:1@{end}:1"],
                                  latency_target_x=1.8, percentile=50, adapt_window=window, warmup=5,
                                  deadline_ms=5000, threshold_path=path_file(wide2, tmp_path))  # never degraded
        assert outcome.codes == [0, 0, 0]
        p = report["policies"]["distree"]
        latency, target_ms = p["latency_ms_per_sample"], p["adaptive"]["target_ms"]  # 1.8x samples 5..34's median
        # the premise: nothing moved before the slowdown, unslowed with slack, slowed over the target
        quiet = all(mv["sample"] >= start for mv in p["adaptive"]["moves"])
        if quiet and sorted(latency[40:50])[5] < target_ms / 1.45 and sorted(latency[50:55])[2] > target_ms:
            break
    else:
        pytest.fail(f"the machine's pace kept changing: latency {[round(v) for v in latency[30:55]]} ms against a "
                    f"target of {target_ms:.1f} ms")
    phase = p["phases"][f"slow:1@{start}"]
    assert (phase["start"], phase["end"]) == (start, end)  # window 1, no deadline missed: input k is sample k
    moves = [mv for mv in p["adaptive"]["moves"] if mv["device"] == 1 and mv["sample"] >= start]
    assert moves[0]["reason"] == "over budget" and moves[0]["sample"] - start <= 12  # a bounded reaction
    settings = [s[1] for s in p["settings_per_sample"]]
    cheaper = [k for k in range(start, end) if settings[k] > 0]  # slowed, issued under a cheaper setting
    assert len(cheaper) >= 10
    latency = sorted(p["latency_ms_per_sample"][k] for k in cheaper)
    assert latency[len(latency) // 2] < target_ms  # back under the target while still slowed
    back = next((k for k in range(end, len(settings)) if settings[k] == 0), None)  # device 1 returned
    assert back is not None, p["adaptive"]["moves"]
    # each step back waits for a full window under its setting, twice as long after each step back that did
    # not hold (runtime/adaptive.py), and the window must first fill with unslowed answers; the steps are counted
    # from the setting sample `end` was issued under (a move made at the last slowed sample applies from `end`)
    wait = window
    for before, after in zip(moves, moves[1:]):
        if before["reason"] == "slack" and after["reason"] == "over budget":
            wait = min(2 * wait, MAX_RELAX_WINDOWS * window)
    assert back - end <= window + settings[end] * wait, p["adaptive"]["moves"]
    assert max(s[0] for s in p["settings_per_sample"][:back]) == 0  # device 0, never slowed, never moved
    assert p["timeline"] and {"before", "during", "after"} <= set(phase)
    assert write_session_figures(tmp_path / "report.json") == [tmp_path / "adaptive_timeline.png"]  # as deploy does
    assert (tmp_path / "adaptive_timeline.png").stat().st_size > 0


@pytest.mark.slow
def test_after_a_loss_the_device_left_moves_only_among_its_sets_combinations(wide2_sets, tmp_path, capfd):
    # device 0, slowed from input 20 on, moves to setting 1, which the healthy grid certifies; device 1 is
    # killed at its input 60, and device 0 alone may run settings 0 and 2 only: it steps back from 1 and,
    # still slowed, may go to 2 when over budget (with device 1 gone it often has the slack not to), never to 1
    for attempt in range(3):  # the premise: the slowdown moved device 0 to setting 1 before the loss
        outcome, report = session(wide2_sets, 2, tmp_path, faults=["slow:0@20:4", "kill:1@60"], latency_target_x=1.8,
                                  percentile=50, adapt_window=10, warmup=5, deadline_ms=EVENT_DEADLINE_MS)
        assert outcome.codes[:2] == [0, 0] and outcome.codes[2] == -9
        p = report["policies"]["distree"]
        settings = [s[0] for s in p["settings_per_sample"]]
        lost = p["degraded_samples"][0]
        if 1 in settings[:lost]:
            break
    else:
        pytest.fail(f"device 0 never ran setting 1 before the loss: {p['adaptive']['moves']}")
    assert p["adaptive"]["set_grids"] == [{"members": [0], "certified": 2, "combinations": 3},
                                          {"members": [1], "certified": 2, "combinations": 3}]
    left = [mv for mv in p["adaptive"]["moves"] if mv["reason"] == "devices 0 left"]
    assert [(mv["device"], mv["setting"]) for mv in left] in ([(0, 0)], []), p["adaptive"]["moves"]
    after = left[0]["sample"] if left else lost  # the move, where device 0 was at 1 then, precedes the next input
    assert 1 not in settings[after + 1:]  # the set's grid, not the healthy one
    assert [b["members_after"] for b in p["adaptive"]["shadow"]["before_loss"]] == [[0]]
    assert "no combinations certified" not in capfd.readouterr().err  # the set's grid was there and used


@pytest.mark.slow
def test_no_target_moves_nothing_but_slow_and_link_faults_cost_time(wide3, tmp_path):
    # every round waits for all devices, so no device is ever late and its input k is sample k
    outcome, report = session(wide3, 3, tmp_path, faults=["slow:2@30:8", "slow:2@70:1", "link:0@80:40"],
                              deadline_ms=EVENT_DEADLINE_MS)
    assert outcome.codes == [0, 0, 0, 0]
    p = report["policies"]["distree"]
    assert "adaptive" not in p and all(s == [-1, -1, -1] for s in p["settings_per_sample"])
    slow, link = p["phases"]["slow:2@30"], p["phases"]["link:0@80"]
    assert (slow["start"], slow["end"], link["start"]) == (30, 70, 80)  # the second slow fault ended the first
    assert "slow:2@70" not in p["phases"]  # factor 1: the end of the first, not a fault of its own
    # the slowed device computes 8x as long (what it reports, its sleep included): 40 of the 126 answers after
    # warm-up, so the 95th percentile of the slowest device's compute is one of them and the median is not
    compute = p["device_compute_ms"]
    assert compute["p95"] >= 4 * compute["median"]
    # and the answers wait for it: latency c + m becomes 8c + m (the messages' m is the machine's load)
    before, during = slow["before"]["latency_ms"]["median"], slow["during"]["latency_ms"]["median"]
    resumed = sorted(p["latency_ms_per_sample"][slow["end"]:80])  # factor 1 again, before the link fault
    assert during > before and resumed[len(resumed) // 2] < during
    unfaulted = sorted(p["latency_ms_per_sample"][:slow["start"]])  # before either fault (slowed ones follow)
    delayed = link["during"]["latency_ms"]["median"]
    assert delayed >= 40 and delayed > unfaulted[len(unfaulted) // 2]  # every answer waits 40 ms more


@pytest.mark.slow
def test_out_of_range_thresholds_are_rejected_by_the_devices(run2_small, tmp_path, capfd):
    outcome, report = session(run2_small, 2, tmp_path, faults=["corrupt:agg@10"], latency_target_ms=1e4,
                              threshold_path=path_file(run2_small, tmp_path), deadline_ms=EVENT_DEADLINE_MS)
    assert outcome.codes == [0, 0, 0]
    err = capfd.readouterr().err
    assert err.count("rejected a THRESHOLDS message") == 2  # one per device, and neither stopped
    p = report["policies"]["distree"]
    assert p["samples"] == 128 and p["degraded"] == 0 and p["adaptive"]["moves"] == []


class HeldReceive:
    """A posted receive that completes when `release` is set, as gloo's does: is_completed() stays false."""

    def __init__(self):
        self.release = threading.Event()

    def is_completed(self) -> bool:
        return False

    def wait(self) -> None:
        self.release.wait(timeout=60)


def test_shadow_stages_stop_once_a_message_has_arrived():
    """A device runs shadow stages only while no message waits: the input that arrives after the second
    stage is taken after at most one more, not after the shadows' whole walk (ten stages here)."""
    work, stages = HeldReceive(), []

    class Walker:
        def _shadow_stage(self, shadows):
            stages.append(len(stages))
            if len(stages) == 2:
                work.release.set()
                threading.Event().wait(0.05)  # the helper thread sees the receive complete meanwhile
            shadows.popleft()

    buf, received = Device._between_messages(Walker(), ("buf", work), deque(range(10)))
    received.wait()
    assert buf == "buf" and 2 <= len(stages) <= 3
