"""Probe by dump (netlab.run.probes) gives every step's probe its own answer, in fewer processes.

As root, in sandboxes, for every built-in lab and the impairment labs: the
answers read from one dump per namespace equal the probes run one by one,
with the lab fully up (where no probe needs asking again), half up (`up --to`),
and after hand-made drift of every kind (a rule, a route, an address, a link
down, a qdisc, a sysctl, a whole namespace gone). tests/labs/probe-shapes.yaml
holds the probes the dump reads in other words (`0.0.0.0/0` as `default`).
Links, addresses, routes and sysctls are dumped both in-process (rtnetlink)
and by `ip -j` processes, and the two must agree.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import netlab_cli, sh
from netlab.check.status import read_lab
from netlab.model.source import catalog
from netlab.run.execute import Executor
from netlab.run.probes import in_effect_many

pytestmark = pytest.mark.root
HERE = Path(__file__).parent
LABS = [lab.name for lab in catalog()] + [str(HERE / "labs" / name) for name in ("shaped.yaml", "probe-shapes.yaml")]


class Counting(Executor):
    """The host's executor, counting the probes it is asked one by one."""

    asked = 0

    def check(self, probe):
        self.asked += 1
        return super().check(probe)


class CountingByProcess(Counting):
    """The same, reading every dump with a process (`ip -j ...`), never in-process by rtnetlink."""

    reads_kernel = False


def both_ways(state_dir, name):
    """(by dump, one by one, how many the dump left to ask) for every probe of the lab NAME. The
    dumps are read both ways, in-process by rtnetlink (netlab.run.netlink) and by `ip -j`
    processes, which must agree answer for answer and in what they leave to ask."""
    record, _ = read_lab(name, state_dir)
    probes = [step.probe for step in record.steps() if step.probe is not None]
    in_process, by_process = Counting(), CountingByProcess()
    dumped = in_effect_many(in_process, probes)
    assert in_effect_many(by_process, probes) == dumped and by_process.asked == in_process.asked
    return dumped, [Executor().check(probe) for probe in probes], in_process.asked


def ok(result) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("lab", LABS)
def test_the_dump_answers_as_the_probes_do_up_half_up_and_drifted(lab, sandbox_prefix, state_dir):
    try:
        ok(netlab_cli(state_dir, "up", lab, "--sandbox", sandbox_prefix))
        dumped, probed, left = both_ways(state_dir, sandbox_prefix)
        asked_again = 1 if lab.endswith("probe-shapes.yaml") else 0  # its service on 0.0.0.0: ss's filter judges it
        assert dumped == probed and all(probed) and left == asked_again  # all in effect, none asked again
        drift(sandbox_prefix)
        dumped, probed, _ = both_ways(state_dir, sandbox_prefix)
        assert dumped == probed and not all(probed)
        ok(netlab_cli(state_dir, "down", sandbox_prefix))
        steps = len(json.loads(ok(netlab_cli(state_dir, "plan", lab, "--sandbox", sandbox_prefix, "--json")))["steps"])
        ok(netlab_cli(state_dir, "up", lab, "--sandbox", sandbox_prefix, "--to", str(steps // 2)))
        dumped, probed, _ = both_ways(state_dir, sandbox_prefix)
        assert dumped == probed and not all(probed)
    finally:
        netlab_cli(state_dir, "down", sandbox_prefix)


def drift(prefix: str) -> None:
    """Undo by hand one thing of each kind the lab has, as a user's mistakes would."""
    host = f"{prefix}-host"

    def run(netns, *argv):
        return sh("ip", "netns", "exec", netns, *argv)

    rules = [line for line in run(host, "iptables-save").stdout.splitlines() if line.startswith("-A")]
    for line in rules[:1]:  # the first rule of the filter or nat table: which it is, iptables knows
        for table in ("filter", "nat"):
            run(host, "iptables", "-t", table, "-D", *line.split()[1:])
    run(host, "sysctl", "-w", "net.ipv4.ip_forward=0")
    run(f"{prefix}-wan", "ip", "addr", "del", "198.51.100.1/32", "dev", "lo")
    run(host, "ip", "route", "del", "default")
    run(host, "tc", "qdisc", "del", "dev", "veth-h", "root")
    lab_namespaces = [name for name in sh("ip", "netns", "list").stdout.split()
                      if name.startswith(prefix + "-") and name not in (host, f"{prefix}-wan")]

    def links_of(name):
        return len(sh("ip", "-n", name, "-o", "link", "show").stdout.splitlines())

    # the namespace with the most links is deleted (a router takes its peers' ends with it), another has a link down
    lab_namespaces.sort(key=lambda name: (-links_of(name), name))
    lab_namespaces = lab_namespaces[1:2] + lab_namespaces[:1]
    for name in lab_namespaces[:1]:
        links = [line.split(":")[1].strip().split("@")[0] for line in
                 sh("ip", "-n", name, "-o", "link", "show").stdout.splitlines()]
        for link in links[1:2]:  # after lo
            sh("ip", "-n", name, "link", "set", link, "down")
    for name in lab_namespaces[1:2]:
        peers = peers_in(name, [other for other in sh("ip", "netns", "list").stdout.split()
                                if other.startswith(prefix + "-") and other != name])
        sh("ip", "netns", "del", name)
        settle(peers)


def peers_in(victim: str, others) -> list:
    """(namespace, link) of each veth end in OTHERS whose other end is in the namespace VICTIM."""
    found = []
    for other in others:
        names = {entry["nsid"]: entry.get("name") for entry in
                 json.loads(sh("ip", "-n", other, "-j", "netns", "list-id", check=True).stdout or "[]")}
        for link in json.loads(sh("ip", "-n", other, "-j", "link", "show", check=True).stdout or "[]"):
            if "link_netnsid" in link and names.get(link["link_netnsid"]) == victim:
                found.append((other, link["ifname"]))
    return found


def settle(peers) -> None:
    """Wait until the kernel has freed a deleted namespace: its veths die some time after `ip netns
    del`, and their ends in other namespaces with them (a state it certainly reaches; the bound only
    turns a hang into a failure). Then the dump and the probes read the same kernel."""
    deadline = time.monotonic() + 60
    for netns, link in peers:
        while sh("ip", "-n", netns, "link", "show", "dev", link).returncode == 0:
            if time.monotonic() > deadline:
                pytest.fail(f"{link} in {netns} outlived its peer's namespace by 60 s", pytrace=False)
            time.sleep(0.01)
