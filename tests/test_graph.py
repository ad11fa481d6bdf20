"""`netlab graph`: every built-in lab as a picture, in every format, and a live lab's missing link.

Without root: each lab (with and without a sandbox), in svg, dot, mermaid and
html; the SVG parses as XML, names every namespace and interface of the plan,
and rsvg-convert turns it into a PNG (so a broken file fails). As root, in a
sandbox: a lab that is up, drawn from its journal, with one link deleted by
hand: that link is drawn missing, and the exit code says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

import netlab
from conftest import IN_CI, sh
from netlab.model.source import catalog

LABS = [lab.name for lab in catalog()]


@pytest.fixture(scope="module", autouse=True)
def graphviz():
    missing = [tool for tool in ("dot", "rsvg-convert") if shutil.which(tool) is None]
    if missing:
        why = f"{' and '.join(missing)} not installed (scripts/setup --test installs graphviz and librsvg2-bin)"
        if IN_CI:
            pytest.fail(f"{why}: in CI every test runs")
        pytest.skip(why)


def graph(*args, state_dir=None, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"NETLAB_STATE_DIR": str(state_dir)} if state_dir else {})}
    result = subprocess.run([sys.executable, "-m", "netlab", "graph", *map(str, args)], capture_output=True,
                            text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def named(plan) -> tuple:
    """The namespaces and interfaces PLAN makes (the names a picture must show)."""
    namespaces, ifaces = set(), set()
    for step in plan.steps:
        argv = step.argv
        if argv[:3] == ("ip", "netns", "add"):
            namespaces.add(argv[3])
        elif argv[:3] == ("ip", "link", "add"):
            ifaces.add(argv[3])
            if "peer" in argv:
                ifaces.add(argv[argv.index("peer") + 2])
    return namespaces, ifaces


def svg_text(svg: str) -> str:
    """All the text an SVG shows (it must parse as XML)."""
    root = ElementTree.fromstring(svg)
    return "\n".join(element.text or "" for element in root.iter() if element.tag.endswith("text"))


@pytest.mark.parametrize("sandbox", [None, "box"], ids=["real", "sandbox"])
@pytest.mark.parametrize("lab", LABS)
def test_every_lab_is_drawn_in_every_format(lab, sandbox, tmp_path):
    plan = netlab.make_plan(lab, sandbox=sandbox)
    namespaces, ifaces = named(plan)
    extra = ["--sandbox", sandbox] if sandbox else []
    svg = graph(lab, *extra).stdout
    shown = svg_text(svg)
    for name in namespaces | ifaces:
        assert name in shown, f"{lab}: {name} is not in the picture"
    picture = tmp_path / "lab.svg"
    picture.write_text(svg)
    png = tmp_path / "lab.png"
    subprocess.run(["rsvg-convert", str(picture), "-o", str(png)], check=True, capture_output=True, timeout=60)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dot = graph(lab, *extra, "--format", "dot").stdout
    assert dot.startswith(f'graph "{plan.name}" {{') and all(name in dot for name in ifaces)
    mermaid = graph(lab, *extra, "--format", "mermaid").stdout
    assert mermaid.startswith("flowchart LR\n") and all(name in mermaid for name in ifaces | namespaces)
    page = tmp_path / "lab.html"
    graph(lab, *extra, "--format", "html", "-o", page)
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "</svg>" in text
    assert all(step.command.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               .replace('"', "&quot;").replace("'", "&#x27;") in text for step in plan.steps)


def test_the_nodes_form_and_the_step_form_of_a_lab_draw_the_same_elements():
    from test_nodes import REWRITE

    def elements(target):
        dot = graph(target, "--format", "dot").stdout
        return sorted(line.strip() for line in dot.splitlines() if " [" in line and "cluster" not in line
                      and "_notes " not in line)

    assert elements(REWRITE) == elements("egress-ingress")


@pytest.mark.parametrize("args, message", [
    (["egress-ingress", "--format", "png"], "'png' is not a format (one of: svg, dot, mermaid, html)"),
    (["egress-ingres"], "did you mean egress-ingress"),
    (["egress-ingress", "-o", "/no/such/dir/x.svg"], "not a file in an existing directory"),
])
def test_a_graph_that_cannot_be_drawn_is_one_line_and_exit_2(args, message, tmp_path):
    result = graph(*args, state_dir=tmp_path / "state", check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1, \
        result.stderr


@pytest.mark.root
def test_a_live_lab_is_drawn_with_its_missing_link(sandbox_prefix, state_dir):
    env = {**os.environ, "NETLAB_STATE_DIR": str(state_dir)}
    up = subprocess.run([sys.executable, "-m", "netlab", "up", "egress-ingress", "--sandbox", sandbox_prefix],
                        capture_output=True, text=True, env=env, timeout=300)
    assert up.returncode == 0, up.stderr
    try:
        healthy = graph(sandbox_prefix, "--format", "dot", state_dir=state_dir).stdout
        assert "missing" not in healthy and 'color="red"' not in healthy
        sh("ip", "netns", "exec", f"{sandbox_prefix}-host", "ip", "link", "del", "veth0", check=True)
        drawn = graph(sandbox_prefix, "--format", "dot", state_dir=state_dir, check=False)
        assert drawn.returncode == 1, drawn.stderr
        cable = next(line for line in drawn.stdout.splitlines() if "_veth0 -- " in line and "_ceth0" in line)
        assert 'color="red"' in cable and 'xlabel="missing"' in cable
        ends = [line for line in drawn.stdout.splitlines() if " -- " not in line and
                ("_veth0 [" in line or "_ceth0 [" in line)]
        assert len(ends) == 2 and all('xlabel="missing"' in line for line in ends)
        html = graph(sandbox_prefix, "--format", "html", state_dir=state_dir, check=False).stdout
        assert "<svg" in html and "missing" in html
    finally:
        subprocess.run([sys.executable, "-m", "netlab", "down", sandbox_prefix], capture_output=True, env=env,
                       timeout=300)
