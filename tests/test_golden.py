"""Golden files: each built-in lab's rendered plan, held against the documents.

tests/golden/LAB.txt is the exact command list `netlab plan LAB` renders. Its
annotations say where a command departs from tests/reference/lab-commands.md
(a copy of the series' command sequences) and why, so the test checks both
ways: rendered plan == golden commands, and golden with its annotations undone
== the document's block, in order, every line accounted for.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import netlab
from netlab.model.sandbox import default_prefix
from netlab.model.source import catalog

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
REFERENCE = HERE / "reference" / "lab-commands.md"

LABS = ["ns-basics", "ns-host-veth", "ns-root-bridge", "egress-ingress", "two-ns-veth", "bridge-3ns", "process-comm",
        "two-subnets"]
# which "## Lab N" sections of lab-commands.md each lab reproduces ("Lab 3, then:" for lab 4)
SECTIONS = {
    "ns-basics": ["Lab 1"],
    "ns-host-veth": ["Lab 2"],
    "ns-root-bridge": ["Lab 3"],
    "egress-ingress": ["Lab 3", "Lab 4"],
    "two-ns-veth": ["Lab 5"],
    "bridge-3ns": ["Lab 6"],
    "process-comm": ["Lab 7"],
    "two-subnets": [],  # a lab the series lacks: its golden file is its compiled plan alone
}
NODES_REWRITE = HERE / "labs" / "egress-ingress-nodes.yaml"  # lab 4 in the nodes/links form


def words(line: str) -> str:
    return " ".join(line.split())


def document_lines(section: str) -> list:
    """The command lines of the first code block under `## SECTION:` (none if it has no block)."""
    text = REFERENCE.read_text()
    match = re.search(rf"^## {section}:.*?(?=^## )", text, re.S | re.M)
    assert match, f"no section {section!r} in {REFERENCE}"
    block = re.search(r"^```\n(.*?)^```", match.group(0), re.S | re.M)
    return [words(line) for line in block.group(1).splitlines() if line.strip()] if block else []


def golden(lab: str, suffix: str = "txt") -> list:
    """(command, annotation kind, annotation text) for each command line of a golden file."""
    rows = []
    for line in (GOLDEN / f"{lab}.{suffix}").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        command, _, note = line.partition("  # ")
        kind, _, text = note.partition(": ")
        rows.append((command.strip(), kind or None, text))
    return rows


def rendered(lab: str, sandbox: bool = False) -> list:
    topology = netlab.load(lab, sandbox=sandbox)
    box = netlab.Sandbox.create("", topology.name, topology.namespaces) if sandbox else None
    return [step.command for step in netlab.build_plan(topology, box).steps]


def test_every_builtin_lab_has_a_golden_file():
    assert sorted(lab.name for lab in catalog()) == sorted(LABS)
    assert sorted(path.name for path in GOLDEN.glob("*.txt")) == sorted(
        [f"{lab}.txt" for lab in LABS] + ["egress-ingress.sandbox.txt", "egress-ingress.nodes.txt"]
    )


@pytest.mark.parametrize("lab", LABS)
def test_rendered_plan_matches_golden(lab):
    assert rendered(lab) == [command for command, _, _ in golden(lab)]


def test_the_nodes_form_of_lab_4_compiles_to_its_golden_plan():
    plan = netlab.make_plan(str(NODES_REWRITE))
    assert [step.command for step in plan.steps] == [command for command, _, _ in golden("egress-ingress", "nodes.txt")]


@pytest.mark.parametrize("lab", [lab for lab in LABS if SECTIONS[lab]])
def test_golden_matches_document(lab):
    expected = [line for section in SECTIONS[lab] for line in document_lines(section)]
    accounted = []
    for command, kind, text in golden(lab):
        assert kind in (None, "doc", "added", "note"), f"unknown annotation {kind!r} on {command!r}"
        if kind == "added":
            assert text.strip(), f"{command!r} is added without a reason"
            continue
        if kind == "doc":
            doc_line, bar, reason = text.partition(" | ")
            assert bar and reason.strip(), f"{command!r} departs from the document without a reason"
            accounted.append(words(doc_line))
        else:
            accounted.append(words(command))
    assert accounted == expected


def test_sandbox_plan_matches_golden():
    assert rendered("egress-ingress", sandbox=True) == [c for c, _, _ in golden("egress-ingress", "sandbox.txt")]


def test_sandbox_plan_is_the_lab_inside_the_sandbox():
    """After the sandbox's own steps, the sandbox plan is the lab's, host side in nl-ei-host."""
    inside = rendered("egress-ingress", sandbox=True)[11:]
    plain = rendered("egress-ingress", sandbox=False)
    assert len(inside) == len(plain)
    for boxed, original in zip(inside, plain):
        if original.startswith("ip netns add "):
            assert boxed == original.replace("ip netns add ", "ip netns add nl-ei-")
        elif original.startswith("ip netns exec "):
            assert boxed == original.replace("ip netns exec ", "ip netns exec nl-ei-")
        else:
            assert boxed == "ip netns exec nl-ei-host " + original.replace("10.0.0.25", "203.0.113.2").replace(
                "netns ns0", "netns nl-ei-ns0"
            )


def test_default_sandbox_prefixes_are_short_and_distinct():
    prefixes = [default_prefix(lab) for lab in LABS]
    assert len(set(prefixes)) == len(LABS)
    assert all(len(prefix) <= 9 for prefix in prefixes)
