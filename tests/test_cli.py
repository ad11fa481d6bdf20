"""The command line: every command, its output formats, and its options."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

import netlab
from netlab.cli import main, normalize_sandbox
from test_golden import LABS


def run(capsys, *args):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_labs_lists_the_seven_in_series_order_then_the_labs_beyond_it(capsys):
    code, out, _ = run(capsys, "labs", "--json")
    assert code == 0
    labs = json.loads(out)
    assert [lab["name"] for lab in labs] == LABS
    assert all(lab["title"] and lab["document"].startswith("Lab ") for lab in labs[:7])
    assert all(not lab["document"].startswith("Lab ") for lab in labs[7:])
    code, out, _ = run(capsys, "labs")
    assert [line.split()[0] for line in out.splitlines()[::2]] == LABS


def test_show_prints_the_topology_file(capsys):
    from netlab.model.source import builtin_path

    code, out, _ = run(capsys, "show", "egress-ingress")
    assert code == 0 and out == builtin_path("egress-ingress").read_text()


def test_a_shown_lab_is_an_ordinary_topology_file(capsys, tmp_path):
    _, text, _ = run(capsys, "show", "ns-root-bridge")
    copy = tmp_path / "mine.yaml"
    copy.write_text(text.replace("name: ns-root-bridge", "name: mine"))
    code, out, _ = run(capsys, "plan", str(copy), "--json")
    assert code == 0 and json.loads(out)["lab"] == "mine"
    assert [s["command"] for s in json.loads(out)["steps"]] == [
        s.command for s in netlab.build_plan(netlab.load("ns-root-bridge")).steps
    ]


def test_plan_text_numbers_explains_and_shows_commands(capsys):
    code, out, _ = run(capsys, "plan", "egress-ingress")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("# egress-ingress:")
    assert lines[1].startswith("  1. ") and lines[2] == "     ip netns add ns0"
    assert "     ip netns exec ns0 ip addr add 192.168.0.2/16 dev ceth0" in lines


def test_plan_json_has_the_promised_fields(capsys):
    code, out, _ = run(capsys, "plan", "egress-ingress", "--sandbox", "--json")
    data = json.loads(out)
    assert code == 0 and data["sandbox"] == "nl-ei" and data["name"] == "nl-ei"
    for index, step in enumerate(data["steps"], 1):
        assert {"index", "netns", "argv", "command", "undo", "why"} <= set(step)
        assert step["index"] == index
    masquerade = next(s for s in data["steps"] if "MASQUERADE" in s["argv"])
    assert masquerade["netns"] == "nl-ei-host"
    assert masquerade["undo"][:5] == ["iptables", "-t", "nat", "-D", "POSTROUTING"]


def test_set_changes_a_parameter(capsys):
    _, out, _ = run(capsys, "plan", "egress-ingress", "--set", "public_ip=192.0.2.10")
    assert "-d 192.0.2.10 -p tcp" in out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["plan", "egress-ingress", "--sandbox"], ["plan", "egress-ingress", "--sandbox="]),
        (["plan", "--sandbox", "egress-ingress"], ["plan", "--sandbox=", "egress-ingress"]),
        (["plan", "egress-ingress", "--sandbox", "box1"], ["plan", "egress-ingress", "--sandbox=box1"]),
        (["plan", "--sandbox", "box1", "egress-ingress"], ["plan", "--sandbox=box1", "egress-ingress"]),
        (["plan", "--sandbox", "--json", "egress-ingress"], ["plan", "--sandbox=", "--json", "egress-ingress"]),
        (["plan", "--sandbox=b2", "x"], ["plan", "--sandbox=b2", "x"]),
    ],
)
def test_sandbox_takes_an_optional_prefix(args, expected):
    assert normalize_sandbox(args) == expected


def test_sandbox_prefix_names_every_namespace(capsys):
    _, out, _ = run(capsys, "plan", "bridge-3ns", "--sandbox", "box7", "--json")
    steps = json.loads(out)["steps"]
    created = [s["argv"][3] for s in steps if s["argv"][:3] == ["ip", "netns", "add"]]
    assert created == ["box7-host", "box7-wan", "box7-red-ns", "box7-blue-ns", "box7-green-ns"]
    assert {s["netns"] for s in steps} <= {None, "box7-host", "box7-wan", "box7-red-ns", "box7-blue-ns", "box7-green-ns"}


def test_host_netns_puts_the_host_side_in_that_namespace(capsys):
    _, out, _ = run(capsys, "plan", "egress-ingress", "--host-netns", "box-h", "--json")
    steps = json.loads(out)["steps"]
    assert {s["netns"] for s in steps} == {None, "box-h", "ns0"}
    assert [s["argv"] for s in steps if s["netns"] is None] == [["ip", "netns", "add", "ns0"]]
    _, out, _ = run(capsys, "plan", "egress-ingress", "--sandbox", "box", "--host-netns", "box-h", "--json")
    steps = json.loads(out)["steps"]
    created = [s["argv"][3] for s in steps if s["argv"][:3] == ["ip", "netns", "add"]]
    assert created == ["box-wan", "box-ns0"]  # the host namespace is the caller's: never created
    assert json.loads(out)["host_netns"] == "box-h"


@pytest.mark.parametrize("args,message", [
    (("--host-netns", "a/b"), "--host-netns: 'a/b' is not a valid namespace name"),
    (("--host-netns", "ns0"), "egress-ingress: --host-netns: 'ns0' is also a namespace the lab creates"),
    (("--sandbox", "b", "--host-netns", "b-wan"), "egress-ingress: --host-netns: 'b-wan' is also a namespace the lab creates"),
])
def test_a_bad_host_netns_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = run(capsys, "plan", "egress-ingress", *args)
    assert code == 2 and out == ""
    assert err.splitlines()[0].startswith(f"netlab: error: {message}") and len(err.splitlines()) == 1


def test_export_writes_an_executable_script(capsys, tmp_path):
    target = tmp_path / "lab.sh"
    code, out, err = run(capsys, "export", "egress-ingress", "--sandbox", "-o", str(target))
    assert code == 0 and out == "" and "wrote" in err
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert target.read_text().startswith("#!/usr/bin/env bash\n")
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left


def test_export_never_writes_through_a_planted_symlink(capsys, tmp_path):
    """The temporary file is made with O_EXCL under a name nobody can guess, then renamed: a
    symlink planted at the old fixed temporary name, or at the target itself, changes nothing
    but the target's own directory entry."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for pid in range(os.getpid() - 5, os.getpid() + 5):  # the names the old writer used
        (out_dir / f".lab.sh.{pid}.tmp").symlink_to(victim)
    target = out_dir / "lab.sh"
    target.symlink_to(victim)
    code, _, err = run(capsys, "export", "egress-ingress", "--sandbox", "-o", str(target))
    assert code == 0, err
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink() and target.read_text().startswith("#!/usr/bin/env bash\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_export_to_stdout_is_the_script(capsys):
    code, out, _ = run(capsys, "export", "ns-basics")
    assert code == 0 and out.startswith("#!/usr/bin/env bash\n") and "do_1() { ip netns add ns0; }" in out


def test_help_explains_every_command(capsys):
    for command in ("labs", "show", "plan", "export", "up", "down", "status"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and ("Example: netlab" in out or "Example: sudo netlab" in out)


def test_python_dash_m_and_version():
    result = subprocess.run([sys.executable, "-m", "netlab", "--version"], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, f"netlab {netlab.__version__}\n")


def test_unknown_command_is_one_line_exit_2():
    result = subprocess.run([sys.executable, "-m", "netlab", "frob"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["netlab: error: No such command 'frob'. (see: netlab --help)"]


def test_plan_piped_into_head_is_quiet():
    result = subprocess.run(
        f"{sys.executable} -m netlab plan bridge-3ns | head -1", shell=True, capture_output=True, text=True,
    )
    assert result.stdout.startswith("# bridge-3ns") and "Traceback" not in result.stderr


# ------------------------------------------------------------ messages that point at the real mistake
def test_netlab_alone_prints_the_whole_help_and_exits_2():
    result = subprocess.run([sys.executable, "-m", "netlab"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stdout.startswith("Usage: netlab [OPTIONS] COMMAND [ARGS]...\n\n")
    assert "\n  up " in result.stdout and "\n  down " in result.stdout  # readable: a line per command
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, expected", [
    (["plan", "egress-ingres"], "no lab or file named 'egress-ingres'; did you mean egress-ingress?"),
    (["plan", "--sandbox", "egress-ingres"], "no lab or file named 'egress-ingres'; did you mean egress-ingress?"),
    (["up", "--sandbox", "bridge3ns"], "no lab or file named 'bridge3ns'; did you mean bridge-3ns?"),
    (["export", "--sandbox", "labs/mine.yaml"], "no lab or file named 'labs/mine.yaml'; `netlab labs` lists the built-in labs"),
    (["plan", "--sandbox", "box1"], "Missing argument 'TARGET'. (see: netlab plan --help)"),  # a real prefix
    (["plan", "egress-ingress", "--set", "public_ip=abc"],
     "egress-ingress: steps[18].dnat: 'abc' is not an IPv4 address (from --set public_ip='abc')"),
    (["plan", "egress-ingress", "--set", "publik_ip=1.2.3.4"],
     "egress-ingress: --set publik_ip: the lab has no such parameter (its parameters: public_ip, uplink, internet_ip)"),
])
def test_a_mistake_is_named_as_the_user_made_it(capsys, argv, expected):
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (2, "", f"netlab: error: {expected}\n")


def test_step_numbers_in_messages_are_the_ones_plan_shows(capsys, tmp_path):
    """The fourth step of a file is steps[4], and `netlab plan` numbers it 4."""
    lab = tmp_path / "lab.yaml"
    lab.write_text("name: n\ntitle: t\nsteps:\n  - netns: ns0\n  - netns: ns1\n  - netns: ns2\n  - netns: ns1\n")
    code, _, err = run(capsys, "plan", str(lab))
    assert code == 2 and err == f"netlab: error: {lab}: steps[4].netns: 'ns1' is created twice\n"
    lab.write_text("name: n\ntitle: t\nsteps:\n  - netns: ns0\n  - netns: ns1\n  - netns: ns2\n")
    code, out, _ = run(capsys, "plan", str(lab))
    assert code == 0 and "  3. " in out and "ip netns add ns2" in out.split("  3. ")[1].splitlines()[1]


def test_a_file_that_is_not_a_lab_is_refused_without_showing_any_of_it(capsys, tmp_path):
    """`netlab plan /etc/shadow` must not print a line of it: not as a key, not as a value."""
    secret = tmp_path / "shadow"
    secret.write_text("root:$y$j9T$SECRETSALT$SECRETHASH:19500:0:99999:7:::\n"
                      "daemon:*:19500:0:99999:7:::\npassword: hunter2-SECRET\n")
    for text in (secret.read_text(), "password: hunter2-SECRET\n", "- root:SECRET\n"):
        secret.write_text(text)
        code, out, err = run(capsys, "plan", str(secret))
        assert code == 2 and out == "" and "SECRET" not in err and "hunter2" not in err, err
        assert err == f"netlab: error: {secret}: not a topology file (one holds a mapping: name, title, params, steps, checks)\n" \
            or "not valid YAML" in err
