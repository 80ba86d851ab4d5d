"""The distributed runtime with real processes on loopback: agreement with the engine, and faults.

Every session runs a tiny run (untrained WRN-16-1 students on the synthetic set) as 1 + N local
processes through `distree.runtime.deploy`, bounded by a timeout so no test can hang. Fault
tests use injected faults (runtime/faults.py) so that a real SIGKILL, SIGSTOP or stall happens
at a known sample.
"""
import json
import os
import subprocess
import sys
import time
from multiprocessing.connection import wait

import pytest
import torch

from distree.inference.engine import InferenceEngine
from distree.inference.evidence import model_evidence, policy_scores
from distree.policies import make_policy
from distree.runtime import messages as m
from distree.runtime.config import ServeConfig
from distree.runtime.deploy import deploy, free_port, start
from distree.runtime.device import LOST
from distree.runtime.faults import parse_fault
from distree.runtime.heartbeat import Watch
from distree.samples import load_samples
from distree.runtime.netem import LinkModel, link_models
from distree.runtime.pinning import parse_cpus
from distree.errors import DistreeError
from distree.plan import make_plan, parse_thresholds
from distree.inference.evidence import collect_evidence
from distree.models.surviving_sets import fit_surviving_sets
from distree.run_settings import ServedSetting, store_settings
from distree.run_dir import (build_students, load_student_model, load_surviving_sets, read_config, run_splits,
                             save_atomic,
                             save_surviving_sets, write_config)
from distree.training.presets import run_config

SAMPLES = 24
SESSION_TIMEOUT = 120.0  # no session may hang a test: an outer bound, met only by a hang
EVENT_DEADLINE_MS = 30000.0  # a round ends when every live device has answered or a loss is seen, not by time


def make_run(path, n: int, width: int = 1) -> str:
    """A run directory with N untrained students (random weights, WRN-16-width) on the synthetic set."""
    config = run_config("smoke")
    config["students"]["num_students"] = n
    config["students"]["model"]["width"] = width
    torch.manual_seed(n)
    model = build_students(config)
    with torch.no_grad():
        model.bias.normal_()
    path.mkdir(parents=True, exist_ok=True)
    write_config(path, config)
    save_atomic({"config": config, "model": model.state_dict()}, path / "students.pt")
    return str(path)


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run2"), 2)


def make_run_with_sets(path, n: int, width: int = 1) -> str:
    """make_run's run with its surviving-set aggregators fitted, as `distree evaluate` adds them."""
    run = make_run(path, n, width)
    model = load_student_model(run)
    train = collect_evidence(model, run_splits(run, read_config(run)).train, limit=256)
    save_surviving_sets(run, fit_surviving_sets(model, train.u, train.labels))
    return run


@pytest.fixture(scope="module")
def run2_sets(tmp_path_factory):
    return make_run_with_sets(tmp_path_factory.mktemp("run2_sets"), 2)


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run3"), 3)


def median_thresholds(run: str, name: str) -> str:
    """POLICY=T2,...,T6 at the median score of each exit, so that samples leave at many exits."""
    model, policy = load_student_model(run), make_policy(name)
    x = load_samples(run, "test", SAMPLES).x
    with torch.no_grad():
        scores = policy_scores(policy, model_evidence(model, x, torch.arange(len(x))))  # (N, 5, B)
    finite = [s[s.isfinite()] for s in scores.transpose(0, 1).flatten(1)]
    return f"{name}=" + ",".join(f"{float(s.median()) if s.numel() else 1.0:.6g}" for s in finite)


def session(run: str, n: int, tmp_path, policies=("distree",), timeout=SESSION_TIMEOUT, **options):
    """Deploy a session; (outcome, report or None)."""
    options = {"reference_samples": 0, **options}
    config = ServeConfig(run=run, samples=SAMPLES, policies=list(policies), report=str(tmp_path / "report.json"),
                         **options)
    outcome = deploy(config, n, timeout_s=timeout)
    path = tmp_path / "report.json"
    return outcome, (json.loads(path.read_text()) if path.exists() else None)


def engine_predictions(run: str, name: str, thresholds: str, members=None) -> list[int]:
    """The single-process engine's predictions, one sample at a time on one thread, as each device runs;
    with members, those students only, answered by their surviving set's aggregator."""
    model, policy = load_student_model(run), make_policy(name)
    surviving = None if members is None else load_surviving_sets(run, len(model.students))
    t = torch.tensor([float(v) for v in thresholds.split("=")[1].split(",")]) if thresholds else None
    x = load_samples(run, "test", SAMPLES).x
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = InferenceEngine(model, policy, t, members, surviving).run(x, torch.arange(len(x)), mode="streaming")
    finally:
        torch.set_num_threads(threads)
    return result.logits.argmax(-1).tolist()


# -- the wire format and option parsing: no processes -------------------------------------------------

def test_messages_round_trip():
    u = torch.randn(10)
    msg = m.decode(m.encode(m.FEATURE, 7, 1, 3, u, micros=1234), (m.FEATURE,), num_policies=2, num_exits=7,
                   payload_numel=10, num_samples=8)
    assert (msg.kind, msg.seq, msg.policy, msg.exit, msg.micros) == (m.FEATURE, 7, 1, 3, 1234)
    assert torch.equal(msg.payload, u)  # bit-exact: float32 travels as its bits
    assert m.decode(m.encode(m.STOP, 7, 1, 3), (m.CONTINUE, m.STOP), 2, 7, 0).kind == m.STOP
    x = torch.randn(3, 4, 4)  # an input, as the aggregator sends it: a row of a numpy array, the same bytes
    assert torch.equal(m.encode(m.INPUT, 2, 0, 0, x.numpy().reshape(-1)), m.encode(m.INPUT, 2, 0, 0, x))


@pytest.mark.parametrize("msg, error", [
    (m.encode(m.FEATURE, 0, 0, 99, torch.zeros(10)), "exit index 99"),
    (m.encode(m.FEATURE, 0, 5, 1, torch.zeros(10)), "policy index 5"),
    (m.encode(m.FEATURE, 40, 0, 1, torch.zeros(10)), "sample id 40"),
    (m.encode(m.FEATURE, -1, 0, 1, torch.zeros(10)), "sample id -1"),
    (m.encode(m.FEATURE, 0, 0, 1, torch.zeros(9)), "expected 10"),
    (m.encode(m.FEATURE, 0, 0, 1, torch.tensor([float("nan")] + [0.0] * 9)), "NaN"),
    (m.encode(m.FEATURE, 0, 0, 1, torch.zeros(10), micros=-5), "negative compute time"),
    (m.encode(m.INPUT, 0, 0, 0, torch.zeros(10)), "unexpected kind INPUT"),
    (torch.zeros(15, dtype=torch.int32), "bad magic"),
    (torch.zeros(15, dtype=torch.float32), "1-D int32"),
    (torch.zeros(3, dtype=torch.int32), "1-D int32"),
])
def test_malformed_messages_are_rejected(msg, error):
    with pytest.raises(m.BadMessage, match=error):
        m.decode(msg, (m.FEATURE,), num_policies=2, num_exits=7, payload_numel=10, num_samples=32)


def test_option_parsing():
    assert parse_fault("stall:0@5:2.5", 2).seconds == 2.5
    assert parse_fault("kill:agg@3", 2).target == "agg"
    for bad in ("kill:2@1", "stall:0@5", "kill:0@5:1", "explode:0@1", "kill:0"):
        with pytest.raises(Exception, match="fault"):
            parse_fault(bad, 2)
    assert link_models("5", "10", "0,1", 2) == [LinkModel(5, 10, 0), LinkModel(5, 10, 1)]
    with pytest.raises(Exception, match="--link-delay-ms"):
        link_models("1,2,3", "0", "0", 2)


def test_silence_counts_from_a_peers_first_beat():
    """A peer still starting is not silent, however long it takes, until its startup allowance runs out;
    once it has beaten, dead_after counts from its last beat. Times are given, not waited for."""
    watch = Watch([1], dead_after=1.0, startup_s=10.0, now=0.0)
    assert watch.silence(1, now=9.0) is None  # never beaten: starting, long past dead_after
    assert watch.silence(1, now=10.5) == "no first heartbeat within 10.5 s"
    watch.saw(1, 0, now=11.0)  # a counter never bumped: still no beat
    assert watch.silence(1, now=11.0).startswith("no first heartbeat")
    watch.saw(1, 3, now=12.0)
    assert watch.silence(1, now=12.9) is None
    assert watch.silence(1, now=13.5) == "no heartbeat for 1.5 s"
    watch.saw(1, 3, now=13.6)  # the same count: no beat since
    assert watch.silence(1, now=13.6) == "no heartbeat for 1.6 s"


def test_plan_takes_given_then_calibrated_then_default_thresholds(tmp_path):
    calibrated = [{"policy": "distree", "setting": "calibrated", "thresholds": [1.1, 1.2, "inf", 1.3, 1.4]},
                  {"policy": "distree", "setting": "FLOPs <= 50%", "thresholds": [9, 9, 9, 9, 9]},
                  {"policy": "confidence", "setting": "calibrated", "thresholds": [0.9] * 5}]
    (tmp_path / "report.json").write_text(json.dumps({"policies": calibrated}))
    plan = make_plan(["distree", "confidence", "last-exit"], parse_thresholds(["confidence=0.5"]), tmp_path)
    assert plan[0].thresholds.tolist() == pytest.approx([1.1, 1.2, float("inf"), 1.3, 1.4])
    assert plan[1].thresholds.tolist() == [0.5] * 5
    assert plan[2].thresholds.tolist() == [float("inf")] * 5
    with pytest.raises(Exception, match="--threshold"):
        parse_thresholds(["distree"])


# -- healthy sessions ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_predictions_equal_the_engine_n2(run2, tmp_path):
    names = ("distree", "last-exit", "confidence", "entropy")
    thresholds = {n: median_thresholds(run2, n) for n in ("distree", "confidence", "entropy")}
    outcome, report = session(run2, 2, tmp_path, names, thresholds=list(thresholds.values()),
                              deadline_ms=EVENT_DEADLINE_MS)  # no answer degraded by a loaded machine
    assert outcome.codes == [0, 0, 0] and not outcome.killed
    for name in names:
        p = report["policies"][name]
        assert p["predictions"] == engine_predictions(run2, name, thresholds.get(name)), name
        assert p["degraded"] == 0 and p["rejected_messages"] == 0
    exits = report["policies"]["distree"]["exit_histogram"]
    assert sum(count > 0 for count in exits[0]) >= 2  # the thresholds spread the exits
    assert report["policies"]["distree"]["uplink_messages_per_sample"] == 2  # one message per device
    assert report["policies"]["entropy"]["uplink_messages_per_sample"] > 2  # one per device and exit


@pytest.mark.slow
def test_predictions_equal_the_engine_n3_with_emulated_links(run3, tmp_path):
    thresholds = [median_thresholds(run3, "distree"), median_thresholds(run3, "confidence")]
    outcome, report = session(run3, 3, tmp_path, ("distree", "confidence"), thresholds=thresholds,
                              link_delay_ms="0,0,15", link_jitter_ms="1", reference_samples=4,
                              deadline_ms=EVENT_DEADLINE_MS)
    assert outcome.codes == [0, 0, 0, 0]
    for name, t in zip(("distree", "confidence"), thresholds):
        p = report["policies"][name]
        assert p["predictions"] == engine_predictions(run3, name, t)
        assert p["predictions_match_single_process"]
        assert p["latency_ms_measured"]["median"] >= 14  # the slow link sets the pace
        assert p["latency_ms_simulated"]["median"] >= 15  # the model with the same link, side by side


# -- faults ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_killed_device_leaves_every_sample_answered(run2, tmp_path, capfd):
    # a round waits for every live device (a healthy sample on a loaded machine is never answered degraded), so
    # device 1 gets every sample and its input 8 is sample 8; the kill ends sample 8's wait by the broken link
    outcome, report = session(run2, 2, tmp_path, ("distree", "confidence"), faults=["kill:1@8"],
                              deadline_ms=EVENT_DEADLINE_MS)
    assert outcome.codes[:2] == [0, 0] and outcome.codes[2] == -9  # SIGKILL
    check_device_1_killed_at_8(report)
    said = [line for line in capfd.readouterr().err.splitlines() if "no surviving-set aggregators" in line]
    assert len(said) == 1 and "distree evaluate" in said[0]  # a run without them says so, once
    assert report["policies"]["distree"]["degraded_by_set"]["0"]["aggregator"] == "zeros"


@pytest.mark.slow
def test_killed_device_answers_by_the_surviving_set(run2_sets, tmp_path, capfd):
    thresholds = median_thresholds(run2_sets, "distree")
    outcome, report = session(run2_sets, 2, tmp_path, faults=["kill:1@8"], deadline_ms=EVENT_DEADLINE_MS,
                              thresholds=[thresholds])
    assert outcome.codes[:2] == [0, 0] and outcome.codes[2] == -9
    p = report["policies"]["distree"]
    degraded = p["degraded_samples"]
    assert degraded and degraded == list(range(degraded[0], SAMPLES))
    healthy = engine_predictions(run2_sets, "distree", thresholds)
    alone = engine_predictions(run2_sets, "distree", thresholds, members=(0,))
    assert [p["predictions"][k] for k in degraded] == [alone[k] for k in degraded]  # the single process, device 0 alone
    assert [p["predictions"][k] for k in range(degraded[0])] == healthy[:degraded[0]]
    assert alone != healthy  # the set's own aggregator answers, not the healthy one
    by_set = p["degraded_by_set"]
    assert list(by_set) == ["0"] and by_set["0"]["answers"] == len(degraded)
    assert by_set["0"]["aggregator"] == "surviving set" and by_set["0"]["settings"] == [[-1, -1]]
    lost = p["phases"]["lost:1"]  # the loss is a phase of the timeline: issued after it, every answer degraded
    assert lost["start"] >= degraded[0] and lost["end"] == SAMPLES and lost["during"]["samples"] == SAMPLES - lost["start"]
    assert "no surviving-set aggregators" not in capfd.readouterr().err


def check_answers_by_surviving_set(run: str, report: dict, name: str, thresholds: str) -> dict:
    """Every degraded answer of policy `name` is the single-process engine's for the set of devices
    that answered it, by that set's aggregator; the sets, by name ("0+2")."""
    p = report["policies"][name]
    by_set = p["degraded_by_set"]
    assert sum(d["answers"] for d in by_set.values()) == p["degraded"] and "none" not in by_set
    for members, d in by_set.items():
        alone = engine_predictions(run, name, thresholds, members=tuple(int(i) for i in members.split("+")))
        assert [p["predictions"][k] for k in d["samples"]] == [alone[k] for k in d["samples"]], members
        assert d["aggregator"] == "surviving set"
    return by_set


@pytest.fixture(scope="module")
def run2_certified(tmp_path_factory):
    """A run2_sets-like run whose settings hold, as `distree evaluate` stores them, distree's calibrated
    thresholds (the median scores) and a certified-accuracy setting for each surviving set: device 0
    alone at every sample to exit 7, device 1 alone at the median."""
    run = make_run_with_sets(tmp_path_factory.mktemp("run2_certified"), 2)
    median = parse_thresholds([median_thresholds(run, "distree")])["distree"]
    never = make_policy("distree").default_thresholds()
    store_settings(run, [ServedSetting("calibrated", {"distree": median}),
                         ServedSetting("certified-accuracy", {"distree": median}, options={"risk": "accuracy"},
                                       by_set={"distree": {(0,): never, (1,): median}})])
    return run


@pytest.fixture(scope="module")
def run3_sets(tmp_path_factory):
    return make_run_with_sets(tmp_path_factory.mktemp("run3_sets"), 3)


@pytest.mark.slow
def test_a_lost_device_moves_the_others_to_their_sets_certified_setting(run2_certified, tmp_path):
    outcome, report = session(run2_certified, 2, tmp_path, faults=["kill:1@8"], deadline_ms=EVENT_DEADLINE_MS,
                              window=1)
    assert outcome.codes[:2] == [0, 0] and outcome.codes[2] == -9
    p = report["policies"]["distree"]
    assert p["loss_settings"] == [{"members": [0], "setting": 1, "thresholds": ["inf"] * 5},
                                  {"members": [1], "setting": 2, "thresholds": p["thresholds"]}]
    assert [(mv["device"], mv["setting"]) for mv in p["moves"]] == [(0, 1)]  # once, device 0 alone is left
    settings = p["settings_per_sample"]
    moved = [k for k, s in enumerate(settings) if s[0] == 1]
    assert moved and moved == list(range(moved[0], SAMPLES)) and set(moved) <= set(p["degraded_samples"])
    served = median_thresholds(run2_certified, "distree")
    alone_served = engine_predictions(run2_certified, "distree", served, members=(0,))
    alone_never = engine_predictions(run2_certified, "distree", "distree=" + ",".join(["inf"] * 5), members=(0,))
    for k in p["degraded_samples"]:  # issued before the move: the served setting; after: every sample to exit 7
        assert p["predictions"][k] == (alone_never if k in moved else alone_served)[k], k
    assert p["degraded_by_set"]["0"]["settings"] == [[-1, -1], [1, -1]]  # the served setting, then the set's


@pytest.mark.slow
def test_n3_loses_one_device_then_a_second(run3_sets, tmp_path):
    thresholds = median_thresholds(run3_sets, "distree")
    outcome, report = session(run3_sets, 3, tmp_path, faults=["kill:1@6", "kill:2@14"], deadline_ms=EVENT_DEADLINE_MS,
                              thresholds=[thresholds], window=1)
    assert outcome.codes[:2] == [0, 0] and outcome.codes[2:] == [-9, -9]
    assert set(report["lost_devices"]) == {"1", "2"}
    p = report["policies"]["distree"]
    assert p["samples"] == SAMPLES and p["degraded"] == SAMPLES - p["degraded_samples"][0]
    by_set = check_answers_by_surviving_set(run3_sets, report, "distree", thresholds)
    assert set(by_set) == {"0+2", "0"} and max(by_set["0+2"]["samples"]) < min(by_set["0"]["samples"])
    assert set(p["phases"]) == {"lost:1", "lost:2"}


@pytest.mark.slow
def test_frozen_device_counts_as_lost_and_its_set_answers(run2_sets, tmp_path):
    thresholds = median_thresholds(run2_sets, "distree")
    outcome, report = session(run2_sets, 2, tmp_path, faults=["freeze:1@4"], deadline_ms=200, dead_after_s=1.0,
                              window=1, link_delay_ms="100,0", thresholds=[thresholds])
    assert outcome.codes[:2] == [0, 0] and outcome.killed == [2]
    assert "heartbeat" in report["lost_devices"]["1"]
    by_set = check_answers_by_surviving_set(run2_sets, report, "distree", thresholds)
    assert "0" in by_set and by_set["0"]["samples"][-1] == SAMPLES - 1  # lost: device 0 alone to the end


@pytest.mark.slow
def test_late_device_leaves_its_round_to_the_surviving_set(run2_sets, tmp_path):
    thresholds = median_thresholds(run2_sets, "distree")
    outcome, report = session(run2_sets, 2, tmp_path, faults=["stall:0@4:2"], deadline_ms=300, warmup=0,
                              thresholds=[thresholds])
    assert outcome.codes == [0, 0, 0] and not report["lost_devices"]
    by_set = check_answers_by_surviving_set(run2_sets, report, "distree", thresholds)
    assert "1" in by_set  # the stalled round, answered by device 1 alone


def test_cpus_name_one_entry_per_rank_of_usable_cpus():
    usable = sorted(os.sched_getaffinity(0))
    c = usable[0]
    assert parse_cpus(f"{c},{c}+{usable[-1]},{c}", 3) == [{c}, {c, usable[-1]}, {c}]
    for bad, why in ((f"{c},{c}", "2 entries for 3 ranks"), (f"{c},x,{c}", "'x' is not a CPU"),
                     (f"{c},{c},{max(usable) + 1000}", f"CPU {max(usable) + 1000} is not one")):
        with pytest.raises(DistreeError, match=why):
            parse_cpus(bad, 3)


def test_a_pinned_session_answers_as_the_engine(run2, tmp_path):
    c = min(os.sched_getaffinity(0))
    outcome, report = session(run2, 2, tmp_path, ("distree",), cpus=f"{c},{c},{c}", window=1,
                              deadline_ms=EVENT_DEADLINE_MS)
    assert outcome.codes == [0, 0, 0]
    assert report["aggregator_cpus"] == [c]
    assert report["policies"]["distree"]["predictions"] == engine_predictions(run2, "distree", None)


def test_when_every_device_is_late_the_next_sample_waits_for_one_to_catch_up(run2, tmp_path):
    """Both devices stall 1 s at once: the samples of that second are answered from no evidence (their
    deadline, 300 ms, passes), but once the devices answer what they hold they get samples again, rather
    than the aggregator answering every later sample from nothing."""
    outcome, report = session(run2, 2, tmp_path, faults=["stall:0@4:1", "stall:1@4:1"], deadline_ms=300,
                              warmup=0, window=1)
    assert outcome.codes == [0, 0, 0] and not report["lost_devices"]
    p = report["policies"]["distree"]
    assert 1 <= p["degraded_by_set"]["none"]["answers"] <= 8
    assert all(k < 16 for k in p["degraded_samples"])


def check_device_1_killed_at_8(report: dict) -> None:
    """What a session of distree and confidence reports after `kill:1@8`: every sample answered."""
    assert "1" in report["lost_devices"]
    for name in ("distree", "confidence"):
        p = report["policies"][name]
        assert p["samples"] == SAMPLES and len(p["predictions"]) == SAMPLES
    degraded = report["policies"]["distree"]["degraded_samples"]
    assert degraded[0] in (7, 8) and degraded == list(range(degraded[0], SAMPLES))  # 7 if its answer was in flight
    assert report["policies"]["confidence"]["degraded"] == SAMPLES
    assert report["policies"]["distree"]["accuracy_degraded"] is not None


@pytest.mark.slow
def test_stalled_device_does_not_stall_the_stream(run2, tmp_path):
    deadline, stall = 0.3, 2.0  # the stall ends within the aggregator's 2 s drain of END, so device 0 stops cleanly
    outcome, report = session(run2, 2, tmp_path, faults=[f"stall:0@4:{stall:g}"], deadline_ms=deadline * 1e3,
                              warmup=0)
    assert outcome.codes == [0, 0, 0]
    p = report["policies"]["distree"]
    assert p["samples"] == SAMPLES and p["degraded"] >= 1
    assert p["latency_ms_measured"]["p99"] < stall / 2 * 1e3  # the deadline, not the stall, bounds it
    assert not report["lost_devices"]  # slow is not dead: its heartbeat went on


@pytest.mark.slow
def test_frozen_device_is_declared_lost(run2, tmp_path):
    # device 0's slow link keeps the stream going >= 2 s after the freeze (19 samples, each 100 ms on the link),
    # twice dead_after: the frozen device falls silent while the aggregator still waits on its stream
    outcome, report = session(run2, 2, tmp_path, faults=["freeze:1@4"], deadline_ms=200, dead_after_s=1.0,
                              window=1, link_delay_ms="100,0")
    assert outcome.codes[:2] == [0, 0] and outcome.killed == [2]  # deploy ends the frozen process
    assert "heartbeat" in report["lost_devices"]["1"]
    assert report["policies"]["distree"]["samples"] == SAMPLES


@pytest.mark.slow
def test_malformed_message_is_rejected_and_answered_degraded(run2, tmp_path):
    # a healthy round never takes 5 s, however loaded the machine; only the corrupted sample waits it out
    outcome, report = session(run2, 2, tmp_path, faults=["corrupt:0@3"], deadline_ms=5000)
    assert outcome.codes == [0, 0, 0]
    p = report["policies"]["distree"]
    assert p["rejected_messages"] == 1 and p["degraded_samples"] == [3]
    assert not report["lost_devices"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill:agg@5", "freeze:agg@5"])
def test_devices_stop_when_the_aggregator_is_gone(run2, tmp_path, fault):
    """Each device ends by itself (exit code LOST): waited for, not given a time to do it in."""
    config = ServeConfig(run=run2, samples=SAMPLES, policies=["distree"], report=str(tmp_path / "report.json"),
                         reference_samples=0, faults=[fault], dead_after_s=3.0)
    procs = start(config, 2)
    try:
        pending = {p.sentinel: p for p in procs[1:]}
        bound = time.monotonic() + SESSION_TIMEOUT
        while pending and time.monotonic() < bound:
            for sentinel in wait(list(pending), timeout=bound - time.monotonic()):
                pending.pop(sentinel).join()
        codes = [p.exitcode for p in procs[1:]]  # None: still running at the outer bound
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
    assert codes == [LOST, LOST]
    assert not (tmp_path / "report.json").exists()  # the aggregator never finished


# -- the torchrun launch path ---------------------------------------------------------------------------

@pytest.mark.slow
def test_torchrun_launch(run2, tmp_path):
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "distree.serve", "--", "--run", run2, "--samples", "8",
           "--policies", "distree,last-exit", "--reference-samples", "0", "--report", str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=SESSION_TIMEOUT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(report.read_text())["policies"]["last-exit"]["samples"] == 8
