"""FLOPs from torch.utils.flop_counter, a policy's FLOPs per sample, simulated latency, timing."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from distree.costs import CostConfig, DeviceConfig, FlopTable, count_flops, flops_per_sample, simulated_latency
from distree.inference.engine import InferenceEngine
from distree.inference.timing import TimingConfig, exit_machinery, stage_seconds, time_engines
from distree.policies import make_policy
from inference_cases import K, N, tiny_batch, tiny_model

MODEL = tiny_model()
X, INDEX = tiny_batch(b=4)


def test_flops_are_counted_per_stage_and_head():
    table = count_flops(MODEL, X[:1])
    assert table.stage[0, 0] == 2 * 16 * 1 * 9 * 16 * 16  # the stem: 3x3 conv, 1 -> 16 channels, 16x16
    widths = torch.tensor([16, 16, 16, 32, 32, 64, 64], dtype=torch.float64)
    torch.testing.assert_close(table.head, (2 * widths * K).repeat(N, 1))
    with FlopCounterMode(display=False) as counter:
        torch.nn.Sequential(*MODEL.students[0].stages[:3])(X[:1])
    assert table.stage[0, :3].sum() == counter.get_total_flops()
    assert table.last_exit() == table.stage.sum() + table.head[:, -1].sum() + table.aggregator


def test_flops_per_sample_follow_the_exits():
    table = FlopTable(torch.ones(N, 7, dtype=torch.float64) * 10, torch.ones(N, 7, dtype=torch.float64), 2.0)
    exits = torch.tensor([[1, 6], [3, 6]])  # student 0 at exits 2 and 7, student 1 at exits 4 and 7
    assert flops_per_sample(table, exits, make_policy("distree")).tolist() == [(20 + 2) + (40 + 4) + 2, 2 * 77 + 2]
    assert flops_per_sample(table, torch.full((N, 1), 6), make_policy("last-exit")).item() == table.last_exit()
    per_exit = torch.tensor([[2], [2]])  # all students at exit 3: the aggregator ran at exits 2 and 3
    assert flops_per_sample(table, per_exit, make_policy("confidence")).item() == 2 * 33 + 2 * 2


def test_simulated_latency_waits_for_the_slowest_device_and_pays_messages():
    table = FlopTable(torch.full((N, 7), 1e6, dtype=torch.float64), torch.zeros(N, 7, dtype=torch.float64), 0.0)
    slow = DeviceConfig(flops_per_s=1e8, bandwidth_bps=8e3, latency_s=0.01)  # 10 ms per stage, 40 ms per message
    config = CostConfig(devices=[DeviceConfig(), slow])
    exits = torch.tensor([[6], [1]])  # fast device to exit 7 (7 ms), slow one to exit 2 (20 ms)
    message = 10 * 4 * 8 / 8e3 + 0.01
    local = simulated_latency(table, exits, make_policy("distree"), 10, config)
    assert local.item() == max(7e-3 + 4 * 10 * 8 / 10e6 + 5e-3, 20e-3 + message)
    together = torch.tensor([[2], [2]])  # per-exit policy: all stop at exit 3, decisions at exits 2 and 3
    per_exit = simulated_latency(table, together, make_policy("confidence"), 10, config)
    assert abs(per_exit.item() - ((20e-3 + message) + (10e-3 + message))) < 1e-12


def test_timing_measures_both_modes():
    engines = {"last": InferenceEngine(MODEL, make_policy("last-exit")),
               "distree": InferenceEngine(MODEL, make_policy("distree"), 1.0)}
    timings = time_engines(engines, X, INDEX, TimingConfig(compacting_samples=4, batch_size=2,
                                                           streaming_samples=2, repeats=1))
    for t in timings.values():
        assert t.streaming_ms > 0 and t.compacting_ms > 0 and t.samples_per_s > 0
        assert t.streaming_p10_ms <= t.streaming_p90_ms and t.streaming_sem_ms >= 0


def test_exit_machinery_is_the_walk_beyond_its_stages_per_exit():
    engine = InferenceEngine(MODEL, make_policy("local-confidence"), 0.5)
    cost = exit_machinery(engine.steps[0], X, TimingConfig(repeats=1))
    # the definitions only: which of two timings is larger is the machine's load, not the code's
    assert cost["walk_ms"] > 0 and cost["stages_ms"] > 0 and cost["bare_op_us"] > 0
    per_exit_us = 1e3 * (cost["walk_ms"] - cost["stages_ms"]) / 7
    assert abs(cost["machinery_us_per_exit"] - per_exit_us) < 1e-6
    assert abs(cost["machinery_over_bare_op"] - cost["machinery_us_per_exit"] / cost["bare_op_us"]) < 1e-9


def test_stage_seconds_price_every_stage_and_head_per_sample():
    seconds = stage_seconds(MODEL, X, batch_size=2, config=TimingConfig(repeats=1))
    assert seconds.stage.shape == (N, 7) and (seconds.stage > 0).all() and (seconds.head > 0).all()
    exits = torch.full((N, 1), 6)
    assert flops_per_sample(seconds, exits, make_policy("last-exit")).item() == seconds.last_exit()
