"""Where a round goes (runtime/trace.py): the breakdown of synthetic marks, and of a real session's."""
import pytest

from distree.errors import DistreeError
from distree.runtime.rank import check_options
from distree.runtime.config import ServeConfig
from distree.runtime.trace import AGGREGATOR, SEGMENTS, WHOLE, Mark, Trace, breakdown, read_marks

from test_runtime import EVENT_DEADLINE_MS, SAMPLES, make_run, median_thresholds, session


def device_marks(policy, seq, exit, device, waiting, arrived, decoded, computed, sent):
    names = ("waiting", "arrived", "decoded", "computed", "sent")
    return [Mark(e, policy, seq, exit, device, t) for e, t in zip(names, (waiting, arrived, decoded, computed, sent))]


def test_a_local_round_breaks_down_along_the_device_it_waited_for():
    marks = [Mark("issue", 0, 3, WHOLE, AGGREGATOR, 10.0), Mark("out", 0, 3, WHOLE, 0, 10.1),
             Mark("out", 0, 3, WHOLE, 1, 10.2),
             *device_marks(0, 3, WHOLE, 0, 9.0, 10.15, 10.2, 11.0, 11.1),
             *device_marks(0, 3, WHOLE, 1, 10.5, 10.6, 10.7, 12.0, 12.2),  # busy until 10.5: it waited for this one
             Mark("received", 0, 3, WHOLE, 0, 11.2), Mark("filed", 0, 3, WHOLE, 0, 11.3),
             Mark("received", 0, 3, WHOLE, 1, 12.4), Mark("filed", 0, 3, WHOLE, 1, 12.7),
             Mark("answered", 0, 3, WHOLE, AGGREGATOR, 13.0)]
    b = breakdown(marks)[0]
    got = {s: float(b[s][0]) for s in SEGMENTS}
    want = {"aggregator out": 0.2, "aggregator answer": 0.3, "device busy": 0.3, "to device": 0.1, "device in": 0.1, "compute": 1.3,
            "device out": 0.2, "to aggregator": 0.2, "handoff": 0.3}
    assert got == pytest.approx(want)
    assert sum(got.values()) == pytest.approx(float(b["total"][0])) == pytest.approx(3.0)


def test_a_per_exit_sample_adds_its_rounds_and_a_degraded_one_is_left_out():
    marks = [Mark("issue", 1, 0, WHOLE, AGGREGATOR, 0.0), Mark("out", 1, 0, WHOLE, 0, 0.1),
             *device_marks(1, 0, 1, 0, -1.0, 0.2, 0.3, 1.0, 1.1),
             Mark("received", 1, 0, 1, 0, 1.2), Mark("filed", 1, 0, 1, 0, 1.3), Mark("told", 1, 0, 1, 0, 1.5),
             *device_marks(1, 0, 2, 0, 1.2, 1.6, 1.6, 2.6, 2.6),
             Mark("received", 1, 0, 2, 0, 2.7), Mark("filed", 1, 0, 2, 0, 2.8),
             Mark("answered", 1, 0, WHOLE, AGGREGATOR, 3.0),
             Mark("issue", 1, 1, WHOLE, AGGREGATOR, 5.0), Mark("answered", 1, 1, WHOLE, AGGREGATOR, 6.0)]  # no device
    b = breakdown(marks)[1]
    assert b["samples"] == 1
    assert float(b["compute"][0]) == pytest.approx(0.7 + 1.0)
    assert float(b["aggregator out"][0]) == pytest.approx(0.1 + 0.2)
    assert float(b["aggregator answer"][0]) == pytest.approx(0.2)
    assert sum(float(b[s][0]) for s in SEGMENTS) == pytest.approx(float(b["total"][0])) == pytest.approx(3.0)


def test_trace_folder_must_be_new_or_empty(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "rank0.json").write_text("[]\n")
    run = make_run(tmp_path / "run", 2)
    with pytest.raises(DistreeError, match="not empty"):
        check_options(ServeConfig(run=run, trace=str(tmp_path / "old")), 2)
    check_options(ServeConfig(run=run, trace=str(tmp_path / "new")), 2)


def test_trace_round_trips(tmp_path):
    trace = Trace(str(tmp_path / "t"), 2)
    trace.mark("arrived", 1, 4, WHOLE, 1, 3.25)
    trace.write()
    assert read_marks(str(tmp_path / "t")) == [Mark("arrived", 1, 4, WHOLE, 1, 3.25)]


def test_a_traced_session_breaks_every_sample_down_with_no_negative_segment(tmp_path):
    """The ranks' clocks compare and every mark comes before what it causes: the segments of every
    sample are >= 0 and add up to its time from issue to answer, for a local and a per-exit policy."""
    run = make_run(tmp_path / "run", 2)
    thresholds = [median_thresholds(run, "confidence")]
    outcome, report = session(run, 2, tmp_path, ("distree", "confidence"), thresholds=thresholds, window=1,
                              deadline_ms=EVENT_DEADLINE_MS, trace=str(tmp_path / "trace"))
    assert outcome.codes == [0, 0, 0]
    parts = breakdown(read_marks(str(tmp_path / "trace")))
    assert sorted(p.name for p in (tmp_path / "trace").iterdir()) == ["rank0.json", "rank1.json", "rank2.json"]
    for p in (0, 1):
        assert parts[p]["samples"] == SAMPLES
        segments = sum(parts[p][s] for s in SEGMENTS)
        assert segments == pytest.approx(parts[p]["total"], abs=1e-9)
        for s in SEGMENTS:
            assert (parts[p][s] >= 0).all(), s
        assert (parts[p]["compute"] > 0).all()
    assert report["policies"]["confidence"]["uplink_messages_per_sample"] > 2  # more than one round per sample
