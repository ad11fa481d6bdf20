"""The kept plans (netlab.render.cache): the same plan rendering would make, or none at all.

No root needed: these render plans and read them back. A kept plan must equal
a fresh rendering; any change to what a plan is made of (the file, a
parameter, the sandbox, the host's namespace) is a new plan; a file that is
damaged, or that someone else could have written, is never read; small labs
are not kept, and the directory keeps a bounded number of plans.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from netlab.model.star import star_lab
from netlab.render import cache
from netlab.render.plan import make_plan


@pytest.fixture
def kept(tmp_path, monkeypatch):
    directory = tmp_path / "plans"
    monkeypatch.setenv("NETLAB_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def lab(tmp_path):
    path = tmp_path / "star.yaml"
    path.write_text(star_lab(60, "starcache"))
    return path


def plan_of(path, sandbox="nltc", host_netns=None, params=None, renders=None):
    """cached_plan of PATH, counting in RENDERS (a list) each time it had to render."""
    params = params or {}

    def render():
        if renders is not None:
            renders.append(1)
        return make_plan(str(path), sandbox, host_netns, params)

    return cache.cached_plan(str(path), sandbox, host_netns, params, render)


def test_a_kept_plan_is_the_plan_rendering_makes_and_is_read_back_without_rendering(kept, lab):
    renders = []
    first = plan_of(lab, renders=renders)
    assert len(first.steps) >= cache.MIN_STEPS and len(list(kept.glob("*.plan"))) == 1
    again = plan_of(lab, renders=renders)
    assert renders == [1]
    assert again == first == make_plan(str(lab), "nltc", None, {})
    assert again.digest == first.digest and again.to_dict() == first.to_dict()
    assert oct(kept.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("change", ["file", "param", "sandbox", "host_netns"])
def test_anything_a_plan_is_made_of_changed_is_a_new_plan(kept, lab, change):
    text = lab.read_text()
    renders = []
    first, then = {  # the options of the plan kept, and of the one asked for next
        "file": ({}, {}),
        "param": ({"sandbox": None}, {"sandbox": None, "params": {"public_ip": "192.0.2.77"}}),  # a sandbox decides it
        "sandbox": ({}, {"sandbox": "nltd"}),
        "host_netns": ({}, {"host_netns": "nltc-given"}),
    }[change]
    before = plan_of(lab, renders=renders, **first)
    if change == "file":
        lab.write_text(text.replace("10.10.0.1/16", "10.10.0.254/16"))
    after = plan_of(lab, renders=renders, **then)
    assert renders == [1, 1] and after != before
    assert after == make_plan(str(lab), then.get("sandbox", "nltc"), then.get("host_netns"), then.get("params", {}))
    assert len(list(kept.glob("*.plan"))) == 2


def test_a_damaged_or_foreign_writable_file_is_never_read(kept, lab):
    renders = []
    plan_of(lab, renders=renders)
    (path,) = kept.glob("*.plan")
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    assert plan_of(lab, renders=renders) == make_plan(str(lab), "nltc", None, {}) and renders == [1, 1]
    os.chmod(path, 0o664)  # kept anew (whole) above; now others of its group could have written it
    assert plan_of(lab, renders=renders) is not None and renders == [1, 1, 1]
    os.chmod(path, 0o600)
    os.chmod(kept, 0o777)  # a directory anyone may write: its plans could be anyone's
    plan_of(lab, renders=renders)
    assert renders == [1, 1, 1, 1]


def test_small_labs_are_not_kept_and_the_directory_is_bounded(kept, tmp_path):
    plan_of("egress-ingress", sandbox="")
    assert not kept.exists()
    for i in range(cache.KEPT + 3):
        path = tmp_path / f"star{i}.yaml"
        path.write_text(star_lab(60, f"star{i}"))
        plan_of(path)
    assert len(list(kept.glob("*.plan"))) == cache.KEPT
    assert not list(kept.glob(".writing-*"))


def test_an_empty_cache_dir_keeps_nothing(monkeypatch, lab, tmp_path):
    monkeypatch.setenv("NETLAB_CACHE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    renders = []
    plan_of(lab, renders=renders)
    plan_of(lab, renders=renders)
    assert renders == [1, 1] and not (tmp_path / ".cache").exists()


def test_plan_json_from_a_kept_plan_is_the_same_text(kept, lab):
    def plan_json():
        result = subprocess.run([sys.executable, "-m", "netlab", "plan", str(lab), "--sandbox", "nltc", "--json"],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    first = plan_json()
    assert len(list(kept.glob("*.plan"))) == 1
    second = plan_json()
    assert second == first and len(json.loads(second)["steps"]) >= cache.MIN_STEPS
