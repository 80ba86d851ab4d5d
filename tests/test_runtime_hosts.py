"""The distributed runtime across hosts: each rank in its own network namespace, over real sockets.

The aggregator and every device run on a host of their own (tests/virtual_lan.py: namespaces on
a bridge, one address each), launched by hand as on real machines: `ip netns exec HOST python -m
distree.serve` with RANK, WORLD_SIZE, MASTER_ADDR = the aggregator's address and
GLOO_SOCKET_IFNAME = that host's interface. Needs root and iproute2; elsewhere every test here
skips and says why.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distree.runtime import messages as m
from distree.samples import load_samples
from test_runtime import (EVENT_DEADLINE_MS, SAMPLES, SESSION_TIMEOUT, check_device_1_killed_at_8,
                          engine_predictions, make_run, median_thresholds)
from virtual_lan import LanUnavailable, VirtualLan, why_unavailable

DEVICES = 3
REPO = Path(__file__).resolve().parents[1]
DEAD_AFTER_S = 5.0  # the runtime's default: a device stops by itself this long after its aggregator


@pytest.fixture(scope="module")
def lan():
    """The aggregator's host and DEVICES device hosts; removed afterwards whatever happened."""
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    lan = VirtualLan(DEVICES + 1)
    try:
        lan.create()
    except LanUnavailable as err:
        pytest.skip(f"cannot make network namespaces here: {err}")
    try:
        yield lan
    finally:
        lan.remove()


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run3"), DEVICES)


@pytest.fixture
def ranks():
    """The rank processes a test starts; any still running at its end are killed."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def launch(lan: VirtualLan, procs: list, run: str, tmp_path: Path, port: int, *options: str) -> list[int]:
    """Start one rank per host by hand, wait for the session; every rank's exit code (rank 0 first)."""
    report = tmp_path / "report.json"
    args = ["--run", run, "--samples", str(SAMPLES), "--backend", "gloo", "--reference-samples", "0",
            "--connect-timeout-s", "30", "--report", str(report), *options]
    for rank in range(DEVICES + 1):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "WORLD_SIZE": str(DEVICES + 1), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": lan.address(0), "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": lan.interface(rank)}
        with open(tmp_path / f"rank{rank}.log", "w") as log:
            procs.append(subprocess.Popen([*lan.exec_prefix(rank), sys.executable, "-m", "distree.serve", *args],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        procs[0].wait(SESSION_TIMEOUT)
        for proc in procs[1:]:
            proc.wait(DEAD_AFTER_S + 2)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the session did not end in time\n{log_tails(tmp_path)}")
    return [proc.returncode for proc in procs]


def input_bytes(run: str) -> int:
    """Bytes of one INPUT message on the wire (header and image), the least a device receives per sample."""
    x = load_samples(run, "test", 1).x
    return 4 * m.message_size(x[0].numel())


def log_tails(tmp_path: Path) -> str:
    return "\n".join(f"rank {r}: {(tmp_path / f'rank{r}.log').read_text()[-800:]}" for r in range(DEVICES + 1))


def report_of(tmp_path: Path, codes: list[int]) -> dict:
    """The aggregator's report, or a failure that shows every rank's output."""
    path = tmp_path / "report.json"
    assert path.exists(), f"no report; exit codes {codes}\n{log_tails(tmp_path)}"
    return json.loads(path.read_text())


@pytest.mark.slow
def test_predictions_equal_the_engine_across_hosts(lan, ranks, run3, tmp_path):
    names = ("distree", "confidence")
    thresholds = [median_thresholds(run3, name) for name in names]
    before = [lan.counters(i) for i in range(DEVICES + 1)]
    codes = launch(lan, ranks, run3, tmp_path, 29500, "--policies", ",".join(names),
                   *(f"--threshold={t}" for t in thresholds))
    after = [lan.counters(i) for i in range(DEVICES + 1)]
    report = report_of(tmp_path, codes)
    assert codes == [0] * (DEVICES + 1)
    for name, t in zip(names, thresholds):
        p = report["policies"][name]
        assert p["predictions"] == engine_predictions(run3, name, t), name
        assert p["degraded"] == 0 and p["rejected_messages"] == 0
    # every device host received each sample once per policy on its LAN interface, and the aggregator's sent them
    least = len(names) * SAMPLES * input_bytes(run3)
    received = [a[0] - b[0] for a, b in zip(after, before)]
    sent = [a[1] - b[1] for a, b in zip(after, before)]
    assert all(r >= least for r in received[1:]), (received, least)
    assert sent[0] >= DEVICES * least, (sent, least)
    assert all(s > 0 for s in sent[1:]), sent  # and the devices' answers came back over theirs


@pytest.mark.slow
def test_killed_host_leaves_every_sample_answered(lan, ranks, run3, tmp_path):
    codes = launch(lan, ranks, run3, tmp_path, 29501, "--policies", "distree,confidence", "--fault", "kill:1@8",
                   "--deadline-ms", str(EVENT_DEADLINE_MS))
    report = report_of(tmp_path, codes)
    assert codes[:2] == [0, 0] and codes[2] == -9 and codes[3:] == [0] * (DEVICES - 2)  # device 1 is rank 2
    check_device_1_killed_at_8(report)
