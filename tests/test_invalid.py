"""The invalid-input corpus: every bad topology file and option is refused in one line.

Each tests/invalid/*.yaml breaks exactly one validation rule of an otherwise
valid lab. Its header says which, and the exact message netlab must print:

    # rule: <what the file breaks>
    # expect: <the line netlab prints on stderr, after "netlab: error: ">
    # xfail: <why netlab does not refuse it yet>      (optional)

A file with an `# xfail:` line documents a known bug (the rule is not enforced,
or enforcing it crashes); its tests are strict xfails, so they start failing
the day the bug is fixed, and the header must then be updated.

Nothing here needs root or the network: `plan` and `export` run nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netlab.cli import main

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "invalid"
PREFIX = "netlab: error: "
MIN_CORPUS = 26


def _header(path: Path) -> dict:
    """The `# key: value` lines at the top of a corpus file."""
    header = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("# "):
            break
        key, sep, value = line[2:].partition(": ")
        if sep:
            header[key] = value
    return header


FILES = sorted(CORPUS.glob("*.yaml"))


def _cases():
    for path in FILES:
        header = _header(path)
        marks = [pytest.mark.xfail(reason=header["xfail"], raises=AssertionError, strict=True)] if "xfail" in header else []
        yield pytest.param(path, header, id=path.name, marks=marks)


CASES = list(_cases())


def _run(capsys, argv):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    with pytest.raises(SystemExit) as raised:
        main(argv)
    out, err = capsys.readouterr()
    return raised.value.code, out, err


def _assert_one_error_line(code, out, err, expected=None):
    assert "Traceback" not in out + err
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    assert err.endswith("\n")
    assert lines[0].startswith(PREFIX)
    if expected is not None:
        assert lines[0] == PREFIX + expected
    return lines[0][len(PREFIX):]


# ------------------------------------------------------------- the corpus
def test_corpus_size():
    assert len(FILES) >= MIN_CORPUS, f"only {len(FILES)} files in {CORPUS}"
    nodes_form = [path for path in FILES if path.name.startswith("nodes-")]
    assert len(nodes_form) >= 25, f"only {len(nodes_form)} files of the nodes/links form (nodes-*.yaml)"


def test_corpus_headers():
    for path in FILES:
        header = _header(path)
        assert header.get("rule"), f"{path.name}: no '# rule:' line"
        assert header.get("expect"), f"{path.name}: no '# expect:' line"
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# rule: ") and lines[1].startswith("# expect: "), path.name


@pytest.mark.parametrize("path, header", CASES)
def test_plan_refuses(path, header, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    relative = f"tests/invalid/{path.name}"
    code, out, err = _run(capsys, ["plan", relative])
    message = _assert_one_error_line(code, out, err, header["expect"])
    # the message names the file it is about (a YAML or a schema error alike)
    assert message.startswith(f"{relative}: "), message


@pytest.mark.parametrize("path, header", CASES)
def test_export_writes_nothing(path, header, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    output = tmp_path / "out.sh"
    code, out, err = _run(capsys, ["export", f"tests/invalid/{path.name}", "-o", str(output)])
    _assert_one_error_line(code, out, err, header["expect"])
    assert not output.exists()
    assert list(tmp_path.iterdir()) == []  # not even a temporary file left behind


# ----------------------------------------------- options that need no file
CLI_CASES = [
    pytest.param(
        ["plan", "egress-ingress", "--set", "nope=1"],
        "egress-ingress: --set nope: the lab has no such parameter (its parameters: public_ip, uplink, internet_ip)",
        id="set-unknown-key",
    ),
    pytest.param(
        ["plan", "egress-ingress", "--set", "public_ip"],
        "--set: 'public_ip' is not key=value",
        id="set-without-equals",
    ),
    pytest.param(
        ["plan", "egress-ingress", "--set", "=10.0.0.1"],
        "--set: '=10.0.0.1' is not key=value",
        id="set-without-key",
    ),
    pytest.param(
        ["plan", "egress-ingress", "--set", "public_ip=1.2.3.4;reboot"],
        "egress-ingress: steps[18].dnat: '1.2.3.4;reboot' is not an IPv4 address (from --set public_ip='1.2.3.4;reboot')",
        id="set-value-reaches-dnat",
    ),
    pytest.param(
        ["plan", "egress-ingress", "--sandbox", "a;b"],
        "--sandbox: 'a;b' is not a sandbox prefix (1-32 letters, digits, '_', '.', '-'; not starting with '-')",
        id="sandbox-bad-prefix",
    ),
    pytest.param(
        ["plan", "--sandbox", "a;b", "egress-ingress"],
        "--sandbox: 'a;b' is not a sandbox prefix (1-32 letters, digits, '_', '.', '-'; not starting with '-')",
        id="sandbox-bad-prefix-before-target",
    ),
    pytest.param(
        ["plan", "egress-ingress", "--sandbox", "--set", "public_ip=1.2.3.4"],
        "--set public_ip: public_ip is decided by --sandbox (203.0.113.2); drop one of the two",
        id="sandbox-and-set-public-ip",
    ),
    pytest.param(
        ["plan", "no-such-lab"],
        "no lab or file named 'no-such-lab'; `netlab labs` lists the built-in labs",
        id="unknown-lab",
    ),
    pytest.param(
        ["plan", "tests"],
        "tests: a directory, not a topology file (`netlab labs` lists the built-in labs)",
        id="target-is-a-directory",
    ),
    pytest.param(["plan"], None, id="missing-target"),
    pytest.param(["export"], None, id="export-missing-target"),
    pytest.param(["plan", "egress-ingress", "--bogus"], None, id="unknown-option"),
    pytest.param(["frobnicate"], None, id="unknown-command"),
]


@pytest.mark.parametrize("argv, expected", CLI_CASES)
def test_cli_refuses(argv, expected, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, err = _run(capsys, argv)
    _assert_one_error_line(code, out, err, expected)


def test_cli_usage_errors_say_what(capsys, monkeypatch):
    """The click usage errors without an exact expectation above still name the problem."""
    monkeypatch.chdir(ROOT)
    _, _, err = _run(capsys, ["plan"])
    assert "TARGET" in err
    _, _, err = _run(capsys, ["plan", "egress-ingress", "--bogus"])
    assert "--bogus" in err


def test_export_with_bad_option_writes_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    output = tmp_path / "out.sh"
    code, out, err = _run(capsys, ["export", "egress-ingress", "--set", "public_ip=1.2.3.4;reboot", "-o", str(output)])
    _assert_one_error_line(code, out, err)
    assert list(tmp_path.iterdir()) == []
