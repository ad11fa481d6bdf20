"""The README's examples work as typed: its example block, run line by line, as root.

The block of the Commands section runs in a machine of its own: new network,
mount and PID namespaces (`unshare`) with a private /run, so its sandbox
`nl-ei`, its journals and everything it makes are gone when it ends, whatever
fails, and this host is never touched. `sudo` is the user's word for root,
which the test is. Lines that need a remote host (`--remote`) are left out;
every other line must exit 0, or the code its comment says (`(exit 1)`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root
README = Path(__file__).resolve().parent.parent / "README.md"


def example_block() -> list:
    """The commands of the Commands section's example block, one a line, comments kept."""
    text = README.read_text(encoding="utf-8")
    start = text.index("Examples, as typed")
    block = text[text.index("```sh\n", start) + len("```sh\n"):]
    return block[:block.index("```")].strip().splitlines()


def test_the_block_is_the_one_the_readme_shows():
    lines = example_block()
    assert lines[0] == "netlab labs"
    assert any("--remote" in line for line in lines) and any("capture" in line for line in lines)


def _driver(lines) -> str:
    """A bash script that runs each line, checks its exit code, and says which line failed."""
    body = ["set -u", "mount -t tmpfs -o mode=0755 tmpfs /run", "ip link set lo up", 'sudo() { "$@"; }']
    for number, line in enumerate(lines, 1):
        if "--remote" in line:
            continue
        command, _, comment = line.partition("  #")
        expected = re.search(r"\(exit (\d+)\)", comment)
        code = expected.group(1) if expected else "0"
        body.append(f"echo {shlex.quote('$ ' + command.strip())}")
        if command.rstrip().endswith("&"):
            body.append(command.rstrip() + "  # checked by the wait below")
            body.append("sleep 1  # tcpdump listening before the pings (the capture counts 2 packets)")
            continue
        body.append(f"{command.strip()} </dev/null; rc=$?")
        body.append(f'[[ $rc == {code} ]] || {{ echo "README line {number}: exit $rc, not {code}: "'
                    f'{shlex.quote(command.strip())} >&2; exit 1; }}')
    body += ["wait -n || { echo 'README: the background capture failed' >&2; exit 1; }",
             "[[ -z $(ip netns list) ]] || { echo 'README: namespaces left' >&2; exit 1; }",
             "echo README: every line as typed"]
    return "\n".join(body) + "\n"


def test_the_readme_example_block_runs_as_typed(tmp_path):
    driver = tmp_path / "readme.sh"
    driver.write_text(_driver(example_block()))
    bin_dir = os.path.dirname(sys.executable)  # where scripts/setup put `netlab` (and linked it from)
    env = {"PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "NETLAB_STATE_DIR": "/run/netlab", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    result = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "bash", str(driver)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.rstrip().endswith("README: every line as typed")
    assert (tmp_path / "my-lab.yaml").read_text().startswith("# Lab 4")
    assert "nl-ei is up" in result.stdout and "5 of 5 checks passed" in result.stdout


def test_setup_says_what_it_does_and_shows_no_notice_box(tmp_path):
    """scripts/setup, as the README runs it (into a virtualenv of the test's own, no link made):
    a line per stage instead of minutes of silence, and no setuptools notice box."""
    root = README.parent
    env = {**os.environ, "NETLAB_VENV": str(tmp_path / "venv"), "NETLAB_LINK": "0"}
    result = subprocess.run(["bash", str(root / "scripts" / "setup")], capture_output=True, text=True, env=env,
                            cwd=root, stdin=subprocess.DEVNULL, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    said = [line for line in result.stdout.splitlines() if line.startswith("setup: ")]
    assert [line.split(":")[1].split()[0] for line in said] == ["apt-get", "installing", "making", "pip", "pip",
                                                               "netlab"], said
    assert "!!" not in result.stdout + result.stderr and "*******" not in result.stdout + result.stderr
    assert (tmp_path / "venv" / "bin" / "netlab").exists()
