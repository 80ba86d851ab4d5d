"""Hosts on a virtual LAN of Linux network namespaces, so runtime tests cross real sockets between hosts.

A "switch" namespace holds a bridge; each host is a namespace of its own with loopback up and one
veth interface into the bridge, carrying the host's address on a private /24. Nothing is created
in the caller's namespace, so the machine's own network is never touched, and the hosts have no
route but the /24: their traffic can only reach each other. Every name carries the pid of the
process that made the LAN, so parallel runs do not collide.
"""
import json
import os
import shutil
import signal
import subprocess

PREFIX = "distree-lan"
SUBNET = "10.213.57"  # a private /24 that exists only inside these namespaces
IP_TIMEOUT_S = 10.0


class LanUnavailable(Exception):
    """This machine cannot host the LAN; the message says why."""


def why_unavailable() -> str | None:
    """Why a LAN cannot be made here (not root, no iproute2), or None if it may be."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"network namespaces need root; this test runs as uid {os.geteuid()}"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not on PATH"
    return None


def ip(*args: str) -> str:
    """Run `ip ARGS`; its stdout, or LanUnavailable naming the command and its error."""
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LanUnavailable(f"`ip {' '.join(args)}` failed: {err}") from None
    if done.returncode != 0:
        raise LanUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


class VirtualLan:
    """num_hosts namespaces on one bridge; host i is namespace(i) at address(i) on interface(i)."""

    def __init__(self, num_hosts: int):
        self.num_hosts = num_hosts
        self.tag = f"{PREFIX}-{os.getpid()}"
        self.switch = f"{self.tag}-switch"

    def namespace(self, i: int) -> str:
        return f"{self.tag}-host{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def interface(self, i: int) -> str:
        return f"lan{i}"  # a different name on every host, so a rank's GLOO_SOCKET_IFNAME is its own

    def namespaces(self) -> list[str]:
        return [self.switch] + [self.namespace(i) for i in range(self.num_hosts)]

    def create(self) -> None:
        """Make the switch and the hosts; LanUnavailable (with nothing left behind) if the kernel refuses."""
        self._remove_namespaces(self._leftovers())
        try:
            ip("netns", "add", self.switch)
            ip("-n", self.switch, "link", "add", "bridge0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "bridge0", "up")
            for i in range(self.num_hosts):
                ns, port = self.namespace(i), f"port{i}"
                ip("netns", "add", ns)
                ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", self.interface(i),
                   "netns", ns)
                ip("-n", self.switch, "link", "set", port, "master", "bridge0", "up")
                ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", self.interface(i))
                ip("-n", ns, "link", "set", self.interface(i), "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except LanUnavailable:
            self.remove()
            raise

    def exec_prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program on host i."""
        return ["ip", "netns", "exec", self.namespace(i)]

    def counters(self, i: int) -> tuple[int, int]:
        """Bytes (received, sent) so far on host i's LAN interface, from the kernel's own counters."""
        (link,) = json.loads(ip("-j", "-s", "-n", self.namespace(i), "link", "show", "dev", self.interface(i)))
        stats = link["stats64"]
        return stats["rx"]["bytes"], stats["tx"]["bytes"]

    def remove(self) -> None:
        """Kill whatever still runs on the hosts, then delete every namespace (the bridge and veths go with them)."""
        self._remove_namespaces([ns for ns in self.namespaces() if ns in self._existing()])

    def _existing(self) -> set[str]:
        try:
            return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}
        except LanUnavailable:
            return set()

    def _leftovers(self) -> list[str]:
        """Namespaces of an earlier LAN made under this same pid (it died before removing them)."""
        return sorted(ns for ns in self._existing() if ns.startswith(self.tag + "-"))

    def _remove_namespaces(self, names: list[str]) -> None:
        for ns in names:
            try:
                pids = [int(p) for p in ip("netns", "pids", ns).split()]
            except LanUnavailable:
                pids = []
            for pid in pids:  # only processes inside a namespace this LAN made
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                ip("netns", "delete", ns)
            except LanUnavailable:
                pass  # already gone
