"""Packaging: a non-editable install carries the templates and the built-in labs.

Builds a wheel of this checkout, installs it into a private directory, and runs
it from elsewhere, so neither the source tree nor an editable install can
stand in for what `pip install .` ships.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("package")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(ROOT)],
        capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("netlab_ns-*.whl")
    target = work / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return wheel, target, work


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # -P: do not put the current directory first; PYTHONPATH: only the private install
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run([sys.executable, "-P", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_wheel_ships_templates_and_labs(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(p.name for p in (ROOT / "templates").glob("*.j2"))
    labs = sorted(p.name for p in (ROOT / "netlab" / "model" / "labs").glob("*.yaml"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("netlab/templates/")) == templates
    assert sorted(n.split("/")[-1] for n in names if n.startswith("netlab/model/labs/")) == labs
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "netlab").rglob("*.py"))
    assert sorted(n for n in names if n.endswith(".py")) == modules  # every stage's package is listed in setup.cfg


def test_installed_package_finds_its_templates(installed):
    _, target, work = installed
    where = run_installed(target, work, "-c", "import netlab.render.templating as t; print(t.templates_dir())")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == target / "netlab" / "templates"
    plan = run_installed(target, work, "-m", "netlab", "plan", "egress-ingress", "--sandbox")
    assert plan.returncode == 0, plan.stderr
    assert "ip netns exec nl-ei-host iptables -t nat -A POSTROUTING -s 192.168.0.0/16 ! -o br0 -j MASQUERADE" in plan.stdout
    script = run_installed(target, work, "-m", "netlab", "export", "bridge-3ns")
    assert script.returncode == 0 and script.stdout.startswith("#!/usr/bin/env bash")
    listed = run_installed(target, work, "-m", "netlab", "labs")
    assert listed.returncode == 0 and listed.stdout.count("from Lab ") == 7


def test_console_script_is_declared(installed):
    wheel, _, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        assert "netlab = netlab.cli:main" in archive.read(entry_points).decode()
