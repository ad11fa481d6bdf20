"""The command line: a thin typer front end over the library.

Every failure the user can cause ends as one line on stderr and exit code 2
(bad input, nothing run or written) or 1 (a command failed); no traceback.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from netlab import __version__
from netlab.errors import InputError, NetlabError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(
    name="netlab",
    help=(
        "Linux network-namespace labs: turn a lab of the series (or a topology file) into the "
        "exact ip, iptables and sysctl commands of the documents, read them, and export them "
        "as a standalone bash script, or bring it up and down with a rollback journal. Exit codes: "
        "0 done, 1 a command failed (rolled back) or the lab is busy, 2 bad input (nothing was run "
        "or written), 130/143 interrupted by SIGINT/SIGTERM (rolled back)."
    ),
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

TARGET_HELP = "A built-in lab name (see `netlab labs`) or the path of a topology file."
SANDBOX_HELP = (
    "Build the lab in a throwaway sandbox: the host side in namespace PREFIX-host, a fake "
    "internet in PREFIX-wan (198.51.100.1 stands in for 8.8.8.8), lab namespaces named "
    "PREFIX-NAME. Nothing outside the sandbox changes. Without PREFIX (or with --sandbox=), "
    "the lab's default, `nl-` and its initials."
)
SET_HELP = "Set a lab parameter, e.g. --set public_ip=192.0.2.10 (repeatable; `netlab show` lists them)."

_SANDBOX_OPTION = typer.Option(None, "--sandbox", metavar="[PREFIX]", help=SANDBOX_HELP)
_SET_OPTION = typer.Option([], "--set", metavar="KEY=VALUE", help=SET_HELP)


HOST_NETNS_HELP = (
    "Run the host side inside the existing namespace NS (a container's, or a test harness's) "
    "instead of the root namespace; netlab never creates or deletes NS. With --sandbox, NS plays "
    "the sandbox's host."
)
NAME_HELP = "The lab's name on this host (see `netlab status`): its sandbox prefix, or its own name."

_HOST_NETNS_OPTION = typer.Option(None, "--host-netns", metavar="NS", help=HOST_NETNS_HELP)
REMOTE_HELP = (
    "Work on a remote host over SSH instead of this one: [USER@]HOST[:PORT] as ssh takes it (your ssh "
    "config and keys or agent; no password prompt), or vagrant:NAME for a machine of a Vagrantfile here. "
    "Root there, or passwordless sudo. The host needs only iproute2, iptables and a POSIX shell (and "
    "python3 for a lab service or a tcp/http check). The journal and lock live on that host, so `down` "
    "works from any machine. A connection that fails is one line and exit 1, with nothing changed."
)
_REMOTE_OPTION = typer.Option(None, "--remote", metavar="[USER@]HOST[:PORT]|vagrant:NAME", help=REMOTE_HELP)
_SSH_OPT_OPTION = typer.Option([], "--ssh-opt", metavar="ARGS", help=(
    "Arguments for ssh, split as a shell would: --ssh-opt='-i ~/.ssh/lab_key', --ssh-opt='-o "
    "ProxyJump=bastion', --ssh-opt='-F ./ssh_config' (repeatable; they win over netlab's own)."))
_STEP_BY_STEP_OPTION = typer.Option(False, "--step-by-step", help=(
    "Run (or undo) each step as a process of its own, as the documents do, instead of in batches. "
    "Slower; the result is the same."))


@contextmanager
def _host(remote: Optional[str], ssh_opts: List[str]):
    """The executor of the host to work on: this one, or the one --remote names, connected."""
    if remote is None:
        if ssh_opts:
            raise InputError("--ssh-opt is for --remote; there is no remote host", None, "--ssh-opt")
        from netlab.run.execute import local_executor

        yield local_executor()
        return
    from netlab.remote.ssh import connect

    with connect(remote, ssh_opts) as executor:
        yield executor


def _make_plan(target: str, sandbox: Optional[str], assignments: List[str], host_netns: Optional[str] = None,
               several_hosts: bool = False):
    """The plan of TARGET; a large one as it was kept the last time (netlab.render.cache). A lab of
    several hosts (a plan for each) only where SEVERAL_HOSTS says the command takes one."""
    from netlab.model.source import parse_overrides
    from netlab.render.cache import cached_plan
    from netlab.render.plan import make_plan

    params = parse_overrides(assignments)
    plan = cached_plan(target, sandbox, host_netns, params, lambda: make_plan(target, sandbox, host_netns, params))
    if _several_hosts(plan) and not several_hosts:
        raise InputError("a lab of several hosts is for plan, export, graph, up, down, status, verify, doctor and "
                         "exec, for now; "
                         "this command takes a lab of one host", target)
    return plan


def _writable(path: Optional[Path], option: str) -> None:
    """PATH (given with OPTION) names a file in a directory that exists, or is None."""
    if path is not None and (path.is_dir() or not path.absolute().parent.is_dir()):
        raise InputError(f"{path}: not a file in an existing directory", None, option)


def _print_json(data) -> None:
    """DATA as JSON for scripts, in a form a person reads too: a mapping a key per line, a list an
    element per line, each element on one line (so the C encoder writes it: a plan of 9000 steps
    in a tenth of the time `indent` takes). Written as it is made: a value that is an iterator
    (a plan's steps) is a list whose elements are made, written and let go one at a time."""
    import json

    write = sys.stdout.write

    def block(value, pad: str) -> None:
        if isinstance(value, (list, tuple, map)):
            first = True
            for element in value:
                write(("[\n" if first else ",\n") + f"{pad}  {json.dumps(element)}")
                first = False
            write("[]" if first else f"\n{pad}]")
        else:
            write(json.dumps(value))

    if isinstance(data, dict) and data:
        for i, (key, value) in enumerate(data.items()):
            write(("{\n" if i == 0 else ",\n") + f"  {json.dumps(key)}: ")
            block(value, "  ")
        write("\n}\n")
    else:
        block(data, "")
        write("\n")
    sys.stdout.flush()


def _several_hosts(plan) -> bool:
    from netlab.render.plan import several_hosts

    return several_hosts(plan)


def _print_hosts(multi, as_json: bool) -> None:
    """`plan` of a lab of several hosts: the underlay's steps, then each host's, each numbered on its own."""
    if as_json:
        _print_json(multi.to_dict())
        return
    where = f"in the sandbox {multi.sandbox}" if multi.sandbox else "each on its own machine"
    typer.echo(f"# {multi.lab}: {multi.title} ({len(multi.parts)} hosts, {where})")
    parts = [("underlay (the network between the hosts, on this machine)", multi.underlay)] if multi.underlay else []
    parts += [(f"host {part.host.name} ({part.netns or part.host.reach})", part.plan) for part in multi.parts]
    for title, plan in parts:
        typer.echo(f"# {title}: {len(plan.steps)} steps")
        for step in plan.steps:
            typer.echo(f"{step.index:3d}. {step.why}")
            typer.echo(f"     {step.command}")


def _up_hosts(multi, verify: bool, refused: dict, ssh_opts: List[str], yes: bool) -> None:
    """`up` of a lab of several hosts (netlab.run.multi): all of them, or none; then its checks, if asked.
    Outside a sandbox, at most one host is this machine, and its own network is asked for as in `up`."""
    from netlab.run import multi as hosts
    from netlab.run.progress import TerminalReporter

    for option, given in refused.items():
        if given:
            raise InputError(f"{option} is not for a lab of several hosts, for now", None, option)
    here = [part for part in multi.parts if part.host.reach == "local"] if multi.sandbox is None else []
    if len(here) > 1:
        raise InputError(f"hosts {' and '.join(part.host.name for part in here)} are both this machine (reach: local); "
                         "give each its own reach ([USER@]HOST[:PORT]), or run the lab in a sandbox (--sandbox)")
    if here and not yes and sys.stdin.isatty() and sys.stdout.isatty():
        _confirm_real_host(here[0].plan, None, None)
    record = multi.record()
    with _lab_executors(record, ssh_opts) as found:
        outcome = hosts.up(multi, found, reporter_for=lambda label: TerminalReporter(label=label))
        typer.echo(outcome.summary)
        from netlab.check.verify import host_checks

        if not verify or _report_checks(multi.name, host_checks(record, found), as_json=False):
            return
        hosts.down(record, found, reporter_for=lambda label: TerminalReporter(label=label))
    raise NetlabError("a check failed; rolled back: every host is as it was")


def _lab_executors(record: dict, ssh_opts: List[str], unreachable: Optional[dict] = None):
    """The executor of each host of a lab of several hosts' RECORD (netlab.remote.hosts), in a `with`;
    with UNREACHABLE, the hosts that cannot be reached left out (netlab.remote.hosts.executors)."""
    from netlab.remote.hosts import executors

    return executors([(part["host"], part["reach"]) for part in record["hosts"]], record["sandbox"] is not None,
                     ssh_opts, unreachable)


@app.command("labs")
def labs_command(as_json: bool = typer.Option(False, "--json", help="A JSON list, for scripts.")):
    """List the built-in labs: name, title, source document, and the tour of those with stages.

    Example: netlab labs
    """
    from netlab.model.source import catalog

    labs = catalog()
    if as_json:
        _print_json([{"name": lab.name, "title": lab.title, "document": lab.document, "stages": lab.stages}
                     for lab in labs])
        return
    width = max(len(lab.name) for lab in labs)
    for lab in labs:
        typer.echo(f"{lab.name:<{width}}  {lab.title}")
        tour = f"; a tour of {lab.stages} stages (netlab tour {lab.name} --sandbox)" if lab.stages else ""
        typer.echo(f"{'':<{width}}  from {lab.document}{tour}")


@app.command("show")
def show_command(
    lab: str = typer.Argument(..., metavar="LAB", help=TARGET_HELP),
    steps: bool = typer.Option(False, "--steps", help=(
        "Print the lab in the step form: a lab of nodes and links compiled into the ordered steps it "
        "runs (a file that works the same), checked first; a lab of steps as it is.")),
):
    """Print a lab's topology file, to read, or to copy and edit.

    Example: netlab show egress-ingress > my-lab.yaml

    Example: netlab show two-subnets --steps > my-steps.yaml
    """
    from netlab.model.source import read_text, step_form_text

    typer.echo(step_form_text(lab) if steps else read_text(lab), nl=False)


@app.command("plan")
def plan_command(
    target: str = typer.Argument(..., metavar="TARGET", help=TARGET_HELP),
    sandbox: Optional[str] = _SANDBOX_OPTION,
    host_netns: Optional[str] = _HOST_NETNS_OPTION,
    assignments: List[str] = _SET_OPTION,
    as_json: bool = typer.Option(False, "--json", help="A JSON object with the list of steps, for scripts."),
    show_batches: bool = typer.Option(False, "--show-batches", help=(
        "Show what `netlab up` actually runs on a clean host: the steps gathered into `ip -batch` "
        "and `iptables-restore` processes, in rounds, and how `down` undoes them.")),
):
    """Print the numbered steps of a lab, each with its explanation and exact command. Runs nothing.

    Example: netlab plan egress-ingress --sandbox
    """
    plan = _make_plan(target, sandbox, assignments, host_netns, several_hosts=True)
    if _several_hosts(plan):
        if show_batches:
            raise InputError("--show-batches shows one host's plan; a lab of several hosts has one per host", None,
                             "--show-batches")
        _print_hosts(plan, as_json)
        return
    if show_batches:
        _print_batches(plan, as_json)
        return
    if as_json:
        _print_json(plan.to_dict(lazy=True))
        return
    where = f", in the sandbox {plan.sandbox.prefix}" if plan.sandbox else ""
    typer.echo(f"# {plan.lab}: {plan.title} ({len(plan.steps)} steps{where})")
    for step in plan.steps:
        typer.echo(f"{step.index:3d}. {step.why}")
        typer.echo(f"     {step.command}")


def _print_batches(plan, as_json: bool) -> None:
    from netlab.run.batches import explain

    explanation = explain(plan.steps)
    if as_json:
        _print_json(explanation.to_dict())
        return
    typer.echo(f"# {plan.lab}: {explanation.heading}")
    for line in explanation.lines():
        typer.echo(line)


@app.command("export")
def export_command(
    target: str = typer.Argument(..., metavar="TARGET", help=TARGET_HELP),
    sandbox: Optional[str] = _SANDBOX_OPTION,
    host_netns: Optional[str] = _HOST_NETNS_OPTION,
    assignments: List[str] = _SET_OPTION,
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", metavar="FILE", help="Write the script to FILE (mode 0755) instead of stdout."
    ),
):
    """Write the lab as a standalone bash script with up, down and plan actions.

    A lab of several hosts is written as one script per host (and, in a sandbox,
    one for the underlay that joins them) into the directory -o names, with a
    README.md of the order to run them in.

    Example: netlab export egress-ingress --sandbox -o lab.sh && sudo bash lab.sh up

    Example: netlab export tests/labs/two-hosts.yaml --sandbox -o two-hosts/
    """
    from netlab.render.export import export_script, write_script

    plan = _make_plan(target, sandbox, assignments, host_netns, several_hosts=True)
    if _several_hosts(plan):
        from netlab.render.export import write_scripts

        if output is None or str(output) == "-":
            raise InputError("a lab of several hosts is one script per host: give -o DIRECTORY", None, "-o")
        for path in write_scripts(plan, output):
            typer.echo(f"wrote {path}", err=True)
        return
    script = export_script(plan)
    if output is None or str(output) == "-":
        typer.echo(script, nl=False)
        return
    write_script(output, script)
    typer.echo(f"wrote {output}", err=True)


@app.command("up")
def up_command(
    target: str = typer.Argument(..., metavar="TARGET", help=TARGET_HELP),
    sandbox: Optional[str] = _SANDBOX_OPTION,
    host_netns: Optional[str] = _HOST_NETNS_OPTION,
    assignments: List[str] = _SET_OPTION,
    verify: bool = typer.Option(False, "--verify", help=(
        "Then run the lab's checks (see `netlab verify`); if one fails, take the lab down again "
        "and exit 1.")),
    step_by_step: bool = _STEP_BY_STEP_OPTION,
    to: Optional[int] = typer.Option(None, "--to", metavar="N", help=(
        "Stop after step N (see `netlab plan`), as the exported script's `up --to N` does: to see a "
        "check fail before the step that fixes it, as the documents do. A later `up` goes on from "
        "there with the same journal; `status` shows the lab as `partial (to N)`.")),
    check: bool = typer.Option(False, "--check", help=(
        "For a lab that is up: say which of its steps went missing (exit 1), and change nothing. "
        "Without it, `up` applies them again.")),
    yes: bool = typer.Option(False, "--yes", "-y", help=(
        "Do not ask before changing a real machine's own network (no --sandbox, no --host-netns); "
        "without a terminal netlab never asks.")),
    remote: Optional[str] = _REMOTE_OPTION,
    ssh_opts: List[str] = _SSH_OPT_OPTION,
):
    """Bring a lab up: run its steps in order, recording each in a journal first.

    Either the whole lab is in place, or none of it: a failing step, Ctrl-C or
    SIGTERM undoes the steps done, in reverse. After a crash, `netlab down NAME`
    undoes what the journal records. A step already in effect before the lab
    (an identical rule, ip_forward already 1) is left alone, and `down` leaves
    it too. Running `up` again on a lab that is up applies again only the steps
    of its own that went missing (a rule deleted by hand), and says so; with
    `--check` it only says so (exit 1), changing nothing.

    The steps run in batches (see `netlab plan --show-batches`): the same commands,
    in few processes.

    Example: sudo netlab up egress-ingress --sandbox --verify

    Example: sudo netlab up egress-ingress --sandbox --to 25   (then: netlab verify nl-ei; netlab up ...)

    Example: netlab up egress-ingress --sandbox --remote root@lab1.example.net --verify
    """
    from netlab.run.progress import TerminalReporter
    from netlab.run.runner import down, up

    plan = _make_plan(target, sandbox, assignments, host_netns, several_hosts=True)
    if _several_hosts(plan):
        _up_hosts(plan, verify, {"--step-by-step": step_by_step, "--to": to is not None, "--check": check,
                                 "--remote": remote is not None}, ssh_opts, yes)
        return
    with _host(remote, ssh_opts) as executor:
        executor.admit(plan)  # an ordinary user's real-host lab is refused before any question
        if (not yes and not check and plan.sandbox is None and plan.host_netns is None and sys.stdin.isatty()
                and sys.stdout.isatty()):
            _confirm_real_host(plan, remote, to)
        with TerminalReporter() as reporter:
            outcome = up(plan, reporter=reporter, executor=executor, step_by_step=step_by_step, to=to,
                         check=check)
        typer.echo(outcome.summary)
        if not verify:
            return
        from netlab.check.verify import run_checks

        if _report_checks(plan.name, run_checks(plan.checks, executor), as_json=False):
            return
        if to is not None and to < len(plan.steps):  # a check may fail before its step: the documents' way
            raise NetlabError(f"a check failed with steps 1-{to} of {len(plan.steps)} applied; {plan.name} is "
                              f"left as it is (see: netlab doctor {plan.name}; go on: netlab up without --to)")
        if outcome.was_up or not (outcome.changed or outcome.found):
            raise NetlabError(f"a check failed; {plan.name} was up before this run and is left as it is "
                              f"(see: netlab doctor {plan.name})")
        with TerminalReporter() as reporter:
            down(plan.name, reporter=reporter, executor=executor, exact=True, step_by_step=step_by_step)
    raise NetlabError("a check failed; rolled back: the host is as it was")


def _confirm_real_host(plan, remote: Optional[str], to: Optional[int]) -> None:
    """On a terminal, before a lab changes a real machine's own network: what it touches, and a question."""
    from netlab.render.plan import touches

    steps = plan.steps[:to] if to else plan.steps
    machine = f"{remote}'s" if remote else "this machine's"
    typer.echo(f"{plan.lab} without --sandbox changes {machine} own network: {len(steps)} steps "
               f"(`netlab plan {plan.lab}` lists them).")
    for line in touches(steps):
        typer.echo(f"  {line}")
    typer.echo("A sandbox changes nothing outside itself: netlab up " + plan.lab + " --sandbox")
    try:
        answer = input("Apply them? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise NetlabError("not applied; nothing changed (--yes skips this question)")


@app.command("down")
def down_command(
    name: str = typer.Argument(..., metavar="NAME", help=NAME_HELP),
    step_by_step: bool = _STEP_BY_STEP_OPTION,
    remote: Optional[str] = _REMOTE_OPTION,
    ssh_opts: List[str] = _SSH_OPT_OPTION,
):
    """Take a lab down: undo, in reverse, every step its journal records.

    Only what the lab did is undone: what was there before is left, and a sysctl
    gets its old value back only if it still holds the lab's. Works after a crash
    too; a lab that is not up is nothing to do (exit 0). A namespace the lab
    created is deleted with everything in it, in one go.

    Example: sudo netlab down nl-ei

    Example: netlab down nl-ei --remote root@lab1.example.net
    """
    from netlab.run.progress import TerminalReporter
    from netlab.run.runner import down

    if remote is None:
        from netlab.run import multi

        record = multi.read_record(name)
        if record is not None:  # a lab of several hosts: every one of them
            if step_by_step:
                raise InputError("--step-by-step is not for a lab of several hosts, for now", None, "--step-by-step")
            unreachable: dict = {}
            with _lab_executors(record, ssh_opts, unreachable) as found:
                for host, why in unreachable.items():
                    typer.echo(f"netlab: {host}: {why}; its part stays up, for a later `netlab down {name}`", err=True)
                typer.echo(multi.down(record, found, reporter_for=lambda label: TerminalReporter(label=label)).summary)
            return
    with _host(remote, ssh_opts) as executor, TerminalReporter() as reporter:
        outcome = down(name, reporter=reporter, executor=executor, step_by_step=step_by_step)
    typer.echo(outcome.summary)


@app.command("status")
def status_command(
    name: Optional[str] = typer.Argument(None, metavar="NAME", help=NAME_HELP),
    as_json: bool = typer.Option(False, "--json", help="JSON, for scripts."),
    remote: Optional[str] = _REMOTE_OPTION,
    ssh_opts: List[str] = _SSH_OPT_OPTION,
):
    """List the labs that are up; with NAME, probe each of its steps in the live kernel.

    A step is `in effect`, `missing` (the lab did it, and it is gone: drift),
    `not applied`, `pre-existing` (it was in effect before the lab; left alone)
    or `read-only`. With NAME, the exit code is 1 when a step is missing or not
    applied.

    Example: sudo netlab status nl-ei

    Example: netlab status --remote vagrant:default
    """
    from netlab.run import multi

    record = multi.read_record(name) if remote is None and name is not None else None
    if record is not None:  # a lab of several hosts: each part, where it runs
        from netlab.check import status
        from netlab.run.execute import local_executor

        with _lab_executors(record, ssh_opts) as hosts:
            found = [status.lab_steps(part["journal"], executor=hosts.get(part["host"]) or local_executor())
                     for part in multi.parts(record)]
        _print_steps(found, as_json, {"name": name, "lab": record["lab"]})
        return
    with _host(remote, ssh_opts) as executor:
        _status(name, as_json, executor)


def _status(name: Optional[str], as_json: bool, executor) -> None:
    from netlab.check import status
    if name is None:
        labs = status.labs(executor=executor)
        if as_json:
            _print_json({"labs": [lab.to_dict() for lab in labs]})
        elif not labs:
            typer.echo("no labs are up")
        else:
            rows = [(lab.name, lab.state, f"{lab.applied}/{lab.steps}", lab.lab) for lab in labs]
            widths = [max(len(row[column]) for row in rows + [("NAME", "STATE", "STEPS", "LAB")]) for column in range(3)]
            for row in [("NAME", "STATE", "STEPS", "LAB")] + rows:
                typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
        return
    _print_steps([status.lab_steps(name, executor=executor)], as_json)


def _print_steps(found, as_json: bool, lab: Optional[dict] = None) -> None:
    """`status NAME`: each (summary, step states) of FOUND, a lab's, or (with LAB, a lab of several
    hosts') each part's; exit 1 when a step is missing or not applied."""
    from netlab.check import status

    if as_json:
        shown = [{**summary.to_dict(), "steps": [step.to_dict() for step in steps]} for summary, steps in found]
        _print_json(shown[0] if lab is None else {**lab, "parts": shown})
    for summary, steps in [] if as_json else found:
        typer.echo(f"{summary.name}: lab {summary.lab}, {summary.state}, plan {summary.digest}, "
                   f"since {summary.created}")
        for step in steps:
            typer.echo(f"{step.index:4d}  {step.state:<12}  {step.command}")
    if any(step.state in (status.MISSING, status.NOT_APPLIED) for _, steps in found for step in steps):
        raise typer.Exit(EXIT_FAILED)


def _report_checks(name: str, results, as_json: bool) -> bool:
    """Print the checks' table (or JSON); whether they all passed."""
    from netlab.check.verify import passed, table

    ok = passed(results)
    if as_json:
        _print_json({"name": name, "passed": ok, "checks": [result.to_dict() for result in results]})
        return ok
    if not results:
        typer.echo(f"{name}: the lab declares no checks")
        return ok
    for line in table(results):
        typer.echo(line)
    good = sum(result.ok is True for result in results)
    typer.echo(f"{name}: {good} of {len(results)} checks passed")
    return ok


@app.command("verify")
def verify_command(
    name: str = typer.Argument(..., metavar="NAME", help=NAME_HELP),
    as_json: bool = typer.Option(False, "--json", help="JSON, for scripts."),
    remote: Optional[str] = _REMOTE_OPTION,
    ssh_opts: List[str] = _SSH_OPT_OPTION,
):
    """Run the lab's checks against the live lab and print a table: check, result, time.

    The checks are the documents' tests: a ping from a namespace, an HTTP or TCP
    connection from a namespace, the host or the internet side. In a sandbox the
    internet is its own namespace and 198.51.100.1 stands in for 8.8.8.8. Exit
    code 0 when every check passes, 1 otherwise (then try `netlab doctor NAME`).

    Example: sudo netlab verify nl-ei

    Example: netlab verify nl-ei --remote root@lab1.example.net
    """
    from netlab.check.status import read_lab
    from netlab.check.verify import lab_checks, run_checks

    if remote is None:
        from netlab.run import multi

        record = multi.read_record(name)
        if record is not None:  # a lab of several hosts: its checks, each from the host it runs on
            with _lab_executors(record, ssh_opts) as found:
                from netlab.check.verify import host_checks

                passed = _report_checks(name, host_checks(record, found), as_json)
            if not passed:
                raise typer.Exit(EXIT_FAILED)
            return
    with _host(remote, ssh_opts) as executor:
        record, _ = read_lab(name, action="verify", executor=executor)
        passed = _report_checks(record.name, run_checks(lab_checks(record), executor), as_json)
    if not passed:
        raise typer.Exit(EXIT_FAILED)


@app.command("doctor")
def doctor_command(
    name: str = typer.Argument(..., metavar="NAME", help=NAME_HELP),
    as_json: bool = typer.Option(False, "--json", help="JSON, for scripts."),
    ssh_opts: List[str] = _SSH_OPT_OPTION,
):
    """Find why a lab does not work: each root cause in one line, with the command that fixes it.

    Runs the lab's checks, compares every step with the live kernel, and walks
    the path of each failing check: namespaces, links and loopbacks up,
    addresses, routes, ip_forward, MASQUERADE for a private source, the FORWARD
    chain (a DROP policy, as Docker sets, with bridge-nf-call-iptables), DNAT
    for an ingress port (in OUTPUT too when the client is the host itself), and
    a server listening on the right address. Exit code 0 when the checks pass
    and nothing is wrong, 1 when a cause is found or a check fails.

    Example: sudo netlab doctor nl-ei
    """
    from netlab.check.doctor import diagnose, diagnose_hosts
    from netlab.run import multi

    record = multi.read_record(name)
    if record is not None:  # a lab of several hosts: every part, where it runs
        with _lab_executors(record, ssh_opts) as found:
            report = diagnose_hosts(record, found)
    else:
        report = diagnose(name)
    if as_json:
        _print_json(report.to_dict())
    else:
        for line in report.lines():
            typer.echo(line)
    if not report.healthy:
        raise typer.Exit(EXIT_FAILED)


@app.command("tour")
def tour_command(
    target: str = typer.Argument(..., metavar="LAB", help=TARGET_HELP + " It must declare stages (`netlab labs`)."),
    sandbox: Optional[str] = _SANDBOX_OPTION,
    assignments: List[str] = _SET_OPTION,
    no_pause: bool = typer.Option(False, "--no-pause", help=(
        "Run straight through, without waiting for Enter (as without a terminal: for CI and scripts).")),
    as_json: bool = typer.Option(False, "--json", help=(
        "Print the tour as one JSON record at the end (stages, commands, checks expected and observed, "
        "packets) instead of the story; never waits.")),
    markdown: Optional[Path] = typer.Option(None, "--markdown", metavar="FILE", help=(
        "Also write the story as a lab sheet in Markdown: each stage's explanation, its exact commands "
        "and this run's real outputs.")),
    keep: bool = typer.Option(False, "--keep", help="Leave the lab up after the last stage (`netlab down` later)."),
):
    """Walk the documents' story of a lab, live, stage by stage, in a sandbox.

    Each stage shows what it is about and the commands it runs, waits for Enter,
    brings the lab up to its step (as `up --to` does), runs its checks and sets
    what they gave against what the documents say, with doctor's root cause of
    each check that fails, the packets captured where the documents run tcpdump,
    and the NAT rules where they list them. Ctrl-C at any point takes the lab
    down; so does the end of the tour (unless --keep). Exit code 0 when every
    stage observed what the documents say, 1 when one did not (the tour is also
    a test that the story holds on this kernel), 2 bad input, 130 interrupted.

    Example: sudo netlab tour egress-ingress --sandbox

    Example: sudo netlab tour egress-ingress --sandbox --no-pause --markdown lab4-sheet.md
    """
    import contextlib

    from netlab.run.progress import TerminalReporter
    from netlab.run.runner import Interrupted, Reporter
    from netlab.tour.walk import walk

    _writable(markdown, "--markdown")
    plan = _make_plan(target, sandbox, assignments)
    say = (lambda line: None) if as_json else typer.echo
    pause = None if as_json or no_pause or not sys.stdin.isatty() else input
    try:
        with (contextlib.nullcontext(Reporter()) if as_json else TerminalReporter()) as reporter:
            tour = walk(plan, reporter=reporter, say=say, pause=pause, keep=keep)
    except Interrupted as interrupt:  # the lab is down again; what the tour saw so far is shown
        _tour_output(interrupt.tour, as_json, markdown)
        raise
    _tour_output(tour, as_json, markdown)
    if not tour.as_expected:
        for line in tour.differences():
            sys.stderr.write(f"netlab: {line}\n")
        raise NetlabError(f"{plan.name}: {len(tour.differences())} checks of the tour did not give what the "
                          f"documents say (above)")


def _tour_output(tour, as_json: bool, markdown: Optional[Path]) -> None:
    if as_json:
        _print_json(tour.to_dict())
    else:
        verdict = ("every stage as the documents say" if tour.as_expected else
                   "interrupted" if tour.interrupted else "a stage differs from the documents")
        typer.echo(f"\n{tour.plan.name}: tour of {tour.plan.lab}: {len(tour.stages)} of {len(tour.plan.stages)} "
                   f"stages, {verdict}")
    if markdown is not None:
        from netlab.render.export import write_file
        from netlab.tour.sheet import sheet

        write_file(markdown, sheet(tour), 0o644, "--markdown")
        typer.echo(f"wrote {markdown}", err=True)


@app.command("graph")
def graph_command(
    target: str = typer.Argument(..., metavar="TARGET|NAME", help=(
        TARGET_HELP + " Or the NAME of a lab that is up (see `netlab status`): its live state.")),
    sandbox: Optional[str] = _SANDBOX_OPTION,
    host_netns: Optional[str] = _HOST_NETNS_OPTION,
    assignments: List[str] = _SET_OPTION,
    fmt: str = typer.Option("svg", "--format", "-f", metavar="FORMAT", help=(
        "svg (Graphviz's dot draws it), dot, mermaid (a flowchart for Markdown) or html (one page: "
        "the picture and a table of the steps).")),
    live: bool = typer.Option(False, "--live", help=(
        "TARGET is the name of a lab that is up, even if a built-in lab or a file has that name.")),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE", help="Write to FILE, not stdout."),
    ssh_opts: List[str] = _SSH_OPT_OPTION,
):
    """Draw a lab: its namespaces, bridges, veth ends with their addresses, NAT, port forwards and services.

    From a lab or a topology file (either form), as its plan would build it; or
    from a lab that is up, with each link and rule drawn in effect or missing,
    from the same probes `status` uses (root). A lab of several hosts is one
    picture: each host a box with its namespaces inside, each VXLAN segment a
    line between its two devices. Exit code 0, or 1 when a live lab has a step
    missing (it is drawn so).

    Example: netlab graph egress-ingress --sandbox -o lab4.svg

    Example: netlab graph two-subnets --format mermaid

    Example: sudo netlab graph nl-ei --format html -o nl-ei.html
    """
    from netlab.check.status import lab_namespaces
    from netlab.model.source import builtin_path
    from netlab.render.graph import FORMATS, MISSING, picture, render

    if fmt not in FORMATS:
        raise InputError(f"{fmt!r} is not a format (one of: {', '.join(FORMATS)})", None, "--format")
    _writable(output, "--output")
    states = None
    from netlab.run.multi import read_record

    a_name = live or not (builtin_path(target) or os.path.exists(target))  # of a lab that is up
    several = read_record(target) if a_name else None
    if several is not None:  # a lab of several hosts that is up: each part's steps, live, where it runs
        if sandbox is not None or host_netns is not None or assignments:
            raise InputError("a lab that is up is drawn as it is: no --sandbox, --host-netns or --set",
                             None, "TARGET")
        pic, steps = _live_several_hosts(several, ssh_opts)
        states = pic.states
    elif a_name:
        from netlab.check.status import read_lab, step_states
        from netlab.run.execute import local_executor

        if sandbox is not None or host_netns is not None or assignments:
            raise InputError("a lab that is up is drawn as it is: no --sandbox, --host-netns or --set",
                             None, "TARGET")
        executor = local_executor()
        try:
            record, _ = read_lab(target, action="graph", executor=executor)
        except InputError as error:
            if live:
                raise
            from netlab.model.source import not_found

            raise InputError(f"{not_found(target)}; and {error.message}", None, "TARGET") from None
        steps = record.steps()
        states = {state.index: state.state for state in step_states(record, executor)}
        names = lab_namespaces(record.header.get("sandbox"), record.header.get("host_netns"), steps)
        pic = picture(record.name, steps, {real: own for own, real in names.items()}, states)
    else:
        plan = _make_plan(target, sandbox, assignments, host_netns, several_hosts=True)
        if _several_hosts(plan):
            from netlab.render.graph import several_hosts_picture

            parts = ([("underlay", plan.underlay.steps, None)] if plan.underlay else []) + [
                (part.host.name, part.plan.steps, None) for part in plan.parts]
            pic, steps = several_hosts_picture(plan.name, parts, plan.sides)
        else:
            steps = plan.steps
            names = lab_namespaces(plan.sandbox.prefix if plan.sandbox else None, plan.host_netns, steps)
            pic = picture(plan.name, steps, {real: own for own, real in names.items()})
    text = render(fmt, pic, steps)
    if output is None:
        typer.echo(text, nl=False)
    else:
        from netlab.render.export import write_file

        write_file(output, text, 0o644, "--output")
        typer.echo(f"wrote {output}", err=True)
    if states and any(state in MISSING for state in states.values()):
        raise typer.Exit(EXIT_FAILED)


def _live_several_hosts(record: dict, ssh_opts: List[str]):
    """The picture of the lab of several hosts RECORD that is up, each part's steps in their live
    state on the host it runs on, and the steps it numbers (netlab.render.graph.several_hosts_picture)."""
    from netlab.check.status import read_lab, step_states
    from netlab.render.graph import several_hosts_picture
    from netlab.run.execute import local_executor
    from netlab.run.multi import parts

    found = []
    with _lab_executors(record, ssh_opts) as hosts:
        for part in parts(record):
            executor = hosts.get(part["host"]) or local_executor()
            journal, _ = read_lab(part["journal"], action="graph", executor=executor)
            found.append((part["host"], journal.steps(),
                          {state.index: state.state for state in step_states(journal, executor)}))
    sides = [(name, host, netns) for name, (host, netns) in record["sides"].items()]
    return several_hosts_picture(record["name"], found, sides)


@app.command("exec", context_settings={"ignore_unknown_options": True})
def exec_command(
    name: str = typer.Argument(..., metavar="NAME", help=NAME_HELP),
    netns: str = typer.Argument(..., metavar="NS", help=(
        "The lab's namespace as the lab names it (ns0; the sandbox prefix is added for you), `host` "
        "for the host side or `internet` for a sandbox's internet side; in a lab of several hosts, a "
        "host's name for its own side.")),
    command: List[str] = typer.Argument(..., metavar="-- COMMAND...", help="The command and its arguments."),
    remote: Optional[str] = _REMOTE_OPTION,
    ssh_opts: List[str] = _SSH_OPT_OPTION,
):
    """Run a command inside a namespace of the lab; its exit code is netlab's.

    The command gets the terminal, if there is one, so `bash` works. Write `--`
    before the command, so its options are not taken for netlab's.

    Example: sudo netlab exec nl-ei ns0 -- ip route

    Example: netlab exec nl-ei ns0 --remote root@lab1.example.net -- ping -c 1 198.51.100.1
    """
    import shutil

    from netlab.check.status import read_lab, resolve_netns
    from netlab.run import multi

    record = multi.read_record(name) if remote is None else None
    if record is not None:  # a lab of several hosts: its sides are the hosts', the namespaces', the internet's
        sides = record["sides"]
        if netns not in sides:
            raise InputError(f"{netns!r} is not a side of {name} (its sides: {', '.join(sorted(sides))})", None, "NS")
        host, real = sides[netns]
        with _lab_executors(record, ssh_opts) as found:
            executor = found.get(host)
            if executor is not None and executor.remote is not None:
                argv = executor.interactive_argv(command, real, sys.stdin.isatty())
            else:
                if shutil.which(command[0]) is None:
                    raise InputError(f"{command[0]}: command not found", None, "COMMAND")
                from netlab.run.execute import local_executor

                argv = local_executor().command_line(tuple(command), real, None)[0]
        _exec(argv)
    with _host(remote, ssh_opts) as executor:
        record, _ = read_lab(name, action="exec", executor=executor)
        real = resolve_netns(record, netns)
        if executor.remote is not None:  # over a connection of its own, which has the terminal
            argv = executor.interactive_argv(command, real, sys.stdin.isatty())
        else:
            argv, _ = executor.command_line(tuple(command), real, None)
    if remote is None and shutil.which(command[0]) is None:
        raise InputError(f"{command[0]}: command not found", None, "COMMAND")
    _exec(argv)


@app.command("capture")
def capture_command(
    name: str = typer.Argument(..., metavar="NAME", help=NAME_HELP),
    iface: str = typer.Argument(..., metavar="[NS:]IFACE", help=(
        "The interface: br0, or ns0:ceth0 (`host:` and `internet:` too). Without NS, the one side of "
        "the lab that has an interface of that name.")),
    expression: Optional[List[str]] = typer.Argument(None, metavar="[FILTER]...", help="A tcpdump filter, e.g. icmp."),
    count: Optional[int] = typer.Option(None, "-c", "--count", min=1, help="Stop after COUNT packets."),
    write: Optional[Path] = typer.Option(None, "-w", "--write", metavar="FILE", help=(
        "Write the packets to FILE, a pcap file for Wireshark (or `tcpdump -r FILE`), instead of "
        "printing them.")),
):
    """Watch the packets on an interface of the lab with tcpdump, to see where they stop.

    As the documents do: capture on the bridge and on the uplink while a ping
    runs, and compare. Ctrl-C ends it (or -c COUNT). With -w FILE the packets
    go to a pcap file to open in Wireshark.

    Example: sudo netlab capture nl-ei br0 -c 4 icmp

    Example: sudo netlab capture nl-ei ens3 -w uplink.pcap   (then: wireshark uplink.pcap)
    """
    from netlab.check.capture import require_tcpdump, tcpdump_argv
    from netlab.check.status import find_link, read_lab
    from netlab.run.execute import local_executor

    executor = local_executor()
    record, _ = read_lab(name, action="capture", executor=executor)
    if not executor.can_capture:
        from netlab.check.capture import ROOTLESS_CAPTURE

        raise InputError(ROOTLESS_CAPTURE)
    real, link = find_link(record, iface, executor)
    _writable(write, "--write")
    argv = tcpdump_argv(link, expression or (), count, None if write is None else str(write.absolute()))
    require_tcpdump()
    where = f"{link} in {real}" if real else link
    into = f", into {write} (a pcap file for Wireshark)" if write is not None else ""
    until = f"after {count} packets or Ctrl-C" if count else "with Ctrl-C"
    sys.stderr.write(f"netlab: capturing on {where}{into}; stop it {until}\n")
    _exec(executor.command_line(tuple(argv), real, None)[0])


def _exec(argv) -> None:
    """Become ARGV: its exit code and its terminal are the user's."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], list(argv))


@app.command("serve")
def serve_command(
    address: str = typer.Argument(..., metavar="ADDRESS",
                                  help="The IPv4 address to listen on; 0.0.0.0 is every address of the namespace."),
    port: str = typer.Argument(..., metavar="PORT", help="The TCP port, 1-65535."),
    background: bool = typer.Option(
        False, "--background", help="Return as soon as the port is listening, the server detached (a lab's step)."
    ),
    stop: bool = typer.Option(
        False, "--stop", help="Stop the netlab server listening on exactly ADDRESS:PORT (a step's undo)."
    ),
    pid: Optional[str] = typer.Option(None, "--pid", metavar="PID:START", help=(
        "With --stop: stop exactly the server process PID whose start time is START (as --background "
        "printed it), from any namespace, if it still is netlab's server on ADDRESS:PORT; never another "
        "process. How `netlab down` stops a lab's server.")),
):
    """Run the documents' hello-world HTTP server on ADDRESS:PORT, in the current namespace.

    It answers every GET with "Hello, World! :)", as the documents' app on port
    3000 does, and logs nothing. A lab's `service` step runs `netlab serve
    --background ADDRESS PORT` in its namespace; `--background` binds first, so
    a bad address fails here (exit 1, one line), and returns once the port
    listens, and prints its pid and start time. `--stop` ends the netlab servers
    listening on exactly ADDRESS:PORT (SIGTERM, then SIGKILL after 3 s) and never
    another program's; nothing listening there is success. `--stop --pid PID:START`
    ends exactly that server, from any namespace. Without either, it serves in the foreground
    until Ctrl-C.

    Example: sudo ip netns exec ns0 netlab serve --background 192.168.0.2 3000
    """
    from netlab.model.topology import ipv4_address
    from netlab.model.topology import port as parse_port
    from netlab.programs import serve

    try:
        address = str(ipv4_address(address))
    except ValueError as error:
        raise InputError(str(error), None, "ADDRESS") from None
    try:
        number = parse_port(port)
    except ValueError as error:
        raise InputError(str(error), None, "PORT") from None
    if background and stop:
        raise InputError("--background and --stop exclude each other")
    exact = None
    if pid is not None:
        process, _, started = pid.partition(":")
        if not stop or not process.isdigit() or not started.isdigit():
            raise InputError(f"{pid!r} is not PID:START (and --pid goes with --stop)", None, "--pid")
        exact = int(process), started
    where = f"{address}:{number}"
    if stop or background:
        try:
            if exact:
                out, err = serve.stop_pid_report(address, number, *exact)
            else:
                out, err = (serve.stop_report if stop else serve.start_report)(address, number)
        except serve.ServeError as error:
            raise NetlabError(str(error)) from None
        for line in err:
            typer.echo(line, err=True)
        for line in out:
            typer.echo(line)
        return
    try:
        server = serve.listen(address, number)
    except OSError as error:
        raise NetlabError(f"cannot listen on {where}: {error.strerror or error}") from None
    typer.echo(f"serving http://{where}/ (Ctrl-C stops it)", err=True)
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print netlab's version and exit.", is_eager=True),
):
    if version:
        typer.echo(f"netlab {__version__}")
        raise typer.Exit(EXIT_OK)


# ------------------------------------------------------------ entry point
def normalize_sandbox(args: List[str]) -> List[str]:
    """Give `--sandbox` its optional PREFIX: `--sandbox` alone becomes `--sandbox=`.

    The word after --sandbox is its PREFIX unless it is an option, a built-in
    lab or an existing file (that is the TARGET): `plan --sandbox egress-ingress`
    and `plan egress-ingress --sandbox box1` both do what they say.
    """
    from netlab.model.source import builtin_path

    out = []
    i = 0
    _SANDBOX_WORDS.clear()
    while i < len(args):
        word = args[i]
        if word == "--":
            out.extend(args[i:])
            break
        if word == "--sandbox":
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or following.startswith("-") or builtin_path(following) or os.path.exists(following):
                out.append("--sandbox=")
            else:
                out.append(f"--sandbox={following}")
                _SANDBOX_WORDS.append(following)
                i += 1
        else:
            out.append(word)
        i += 1
    return out


_SANDBOX_WORDS: List[str] = []  # the words normalize_sandbox took for a PREFIX: maybe a TARGET mistyped


def _missing_target(error) -> Optional[str]:
    """When TARGET is missing and a word after --sandbox was taken for its PREFIX, that word
    was most likely the lab, mistyped or missing: say so, as for any unknown lab."""
    if not _SANDBOX_WORDS or "Missing argument 'TARGET'" not in error.format_message():
        return None
    from netlab.model.source import not_found

    word = _SANDBOX_WORDS[-1]
    message = not_found(word)
    looks_like_a_file = "/" in word or word.endswith((".yaml", ".yml"))
    return message if looks_like_a_file or "did you mean" in message else None


def _click_exceptions():
    """The click that typer runs on: vendored as typer._click by newer typers."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def main(argv: Optional[List[str]] = None) -> None:
    click = _click_exceptions()
    args = normalize_sandbox(list(sys.argv[1:] if argv is None else argv))
    if not args:  # the whole help, readable; no command is a usage error
        app(args=["--help"], prog_name="netlab", standalone_mode=False)
        sys.exit(EXIT_BAD_INPUT)
    usage_error = click.UsageError
    click_error = click.ClickException
    abort = getattr(click, "Abort", KeyboardInterrupt)
    try:
        code = app(args=args, prog_name="netlab", standalone_mode=False)
    except SystemExit:
        raise
    except InputError as error:
        _fail(EXIT_BAD_INPUT, str(error))
    except NetlabError as error:
        _fail(error.exit_code, str(error))
    except usage_error as error:
        mistyped = _missing_target(error)
        if mistyped:
            _fail(EXIT_BAD_INPUT, mistyped)
        hint = f" (see: netlab {error.ctx.info_name} --help)" if error.ctx and error.ctx.parent else " (see: netlab --help)"
        _fail(EXIT_BAD_INPUT, error.format_message().replace("\n", " ") + hint)
    except click_error as error:
        _fail(EXIT_BAD_INPUT, error.format_message().replace("\n", " "))
    except (abort, KeyboardInterrupt):
        _fail(130, "interrupted")
    except BrokenPipeError:
        _quiet_stdout()  # `netlab plan | head`: the reader left; nothing to say
        sys.exit(EXIT_FAILED)
    except Exception as error:  # a bug: still one line, and how to see the rest
        if os.environ.get("NETLAB_DEBUG"):
            raise
        _fail(EXIT_FAILED, f"internal error: {type(error).__name__}: {error} (NETLAB_DEBUG=1 shows the traceback)")
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the flush at exit cannot fail on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _fail(code: int, message: str) -> None:
    sys.stderr.write(f"netlab: error: {message}\n")
    sys.exit(code)
