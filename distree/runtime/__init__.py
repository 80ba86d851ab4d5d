"""Distributed inference on torch.distributed: one process per student device, one aggregator.

Rank 0 aggregates, rank i + 1 runs student i (group.py). The aggregator feeds samples, every
device runs its student to the exit its local policy picks and sends that exit's evidence once
(messages.py); per-exit policies send at every exit and wait for the aggregator's decision.
Faults are bounded by deadlines and heartbeats (aggregator.py, device.py, heartbeat.py), links
can be slowed to an edge device's radio (netem.py), and faults injected on purpose (faults.py).
Launch with `torchrun --nproc-per-node N+1 -m distree.serve -- --run DIR` or `distree deploy`.
"""
