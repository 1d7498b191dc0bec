"""Delay and loss on one replica's link, inside the network namespace the chaos run lives in.

Every process of the run talks over that namespace's own loopback device; each replica has its own
loopback address (127.0.0.1x), so a filter on that address impairs exactly one replica's traffic.
`tc netem` (delay with jitter, random loss) is used where the kernel has it. Some kernels (the
microVMs these runs may land on) have neither sch_netem nor sch_prio; then the same fault is made
from what they do have: an htb class with a narrow rate (queueing delay, as on a congested link)
and iptables' `statistic` match for random loss.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=30)


@dataclass
class LinkFault:
    address: str
    delay_ms: int = 150
    jitter_ms: int = 50
    loss_percent: float = 5.0
    narrow_rate: str = "4mbit"
    method: str = ""
    _undo: list[list[str]] = field(default_factory=list)

    def apply(self) -> str:
        """Impair traffic to and from `address` on lo; returns what was used."""
        try:
            self._netem()
            self.method = (
                f"tc netem delay {self.delay_ms}ms {self.jitter_ms}ms loss {self.loss_percent:g}% (prio band)"
            )
        except subprocess.CalledProcessError:
            _run("tc", "qdisc", "del", "dev", "lo", "root", check=False)
            self._htb_and_iptables()
            self.method = (
                f"no sch_netem in this kernel: htb rate {self.narrow_rate} (queueing delay) and iptables "
                f"statistic drop {self.loss_percent:g}% each way"
            )
        return self.method

    def _filters(self, parent: str, flow: str) -> None:
        for direction in ("dst", "src"):
            _run(
                "tc", "filter", "add", "dev", "lo", "parent", parent, "protocol", "ip", "prio", "1",
                "u32", "match", "ip", direction, f"{self.address}/32", "flowid", flow,
            )  # fmt: skip

    def _netem(self) -> None:
        _run("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio")
        self._undo.append(["tc", "qdisc", "del", "dev", "lo", "root"])
        _run(
            "tc", "qdisc", "add", "dev", "lo", "parent", "1:3", "handle", "30:", "netem",
            "delay", f"{self.delay_ms}ms", f"{self.jitter_ms}ms", "loss", f"{self.loss_percent:g}%",
        )  # fmt: skip
        self._filters("1:0", "1:3")

    def _htb_and_iptables(self) -> None:
        _run("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1")
        self._undo.append(["tc", "qdisc", "del", "dev", "lo", "root"])
        _run("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "20gbit")
        rate = self.narrow_rate
        _run(
            "tc",
            "class",
            "add",
            "dev",
            "lo",
            "parent",
            "1:",
            "classid",
            "1:2",
            "htb",
            "rate",
            rate,
            "ceil",
            rate,
        )
        self._filters("1:", "1:2")
        probability = f"{self.loss_percent / 100:.4f}"
        for flag in ("-s", "-d"):
            rule = [flag, self.address, "-m", "statistic", "--mode", "random", "--probability", probability]
            _run("iptables", "-A", "OUTPUT", *rule, "-j", "DROP")
            self._undo.append(["iptables", "-D", "OUTPUT", *rule, "-j", "DROP"])

    def remove(self) -> None:
        for command in reversed(self._undo):
            _run(*command, check=False)
        self._undo.clear()
