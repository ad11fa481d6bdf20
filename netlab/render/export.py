"""Export: a Plan as a standalone bash script that needs no netlab.

The script (templates/script.sh.j2) holds each step as three small shell
functions (do, undo, probe) rendered from the Step's argv lists; every word is
quoted here, once, with shell_join. The script keeps its own journal so that
`down` undoes only what its `up` did.

A lab service (`netlab serve --background ADDRESS PORT`) is the one step the
script runs its own way: it carries the server (netlab.programs.serve) as a
heredoc and runs it with the target's python3, which records the detached
server's pid and start time in the script's journal; `down` stops exactly
that process. Needing python3 only then, the script needs no Python at all
for a lab without a service.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import List, Optional

from netlab.errors import InputError
from netlab.render.plan import SAVED, LabCheck, Plan, Step, in_netns, shell_join


def _undo_text(step: Step) -> Optional[str]:
    """The undo as shell words; the saved previous value comes in as "$1"."""
    if step.undo is None:
        return None
    words = []
    for word in in_netns(step.netns, step.undo):
        if SAVED in word:
            before, _, after = word.partition(SAVED)
            words.append((shlex.quote(before) if before else "") + '"$1"' + (shlex.quote(after) if after else ""))
        else:
            words.append(shell_join([word]))
    return " ".join(words)


def _probe_text(step: Step) -> Optional[str]:
    """The probe as a bash condition that is true when the step is in effect."""
    probe = step.probe
    if probe is None:
        return None
    command = shell_join(in_netns(probe.netns, probe.argv))
    if probe.match == "status":
        return f"{command} >/dev/null 2>&1"
    if probe.match == "output":
        return f'[[ -n "$({command} 2>/dev/null)" ]]'
    if probe.match == "contains":
        return f'[[ "$({command} 2>/dev/null)" == *{shlex.quote(probe.value)}* ]]'
    return f'[[ "$({command} 2>/dev/null)" == {shlex.quote(probe.value)} ]]'


APP_END = "NETLAB_HELLO_APP"  # the end of the server's heredoc


def _service(step: Step) -> dict:
    """The do, undo and probe of a service step, in the script's own words (its engine has
    hello_app, server_running and stop_server)."""
    address, port = step.argv[3:5]
    start = shell_join(in_netns(step.netns, ("python3", "-", "--background", address, port)))
    return {
        "command": f'hello_app | {start} --record "$JOURNAL" {step.index}',
        "undo": f"stop_server {step.index}",
        "undo_command": f"stop the server step {step.index} started (the pid up recorded)",
        "probe": f"server_running {step.index} || {_probe_text(step)}",
    }


# A check in bash alone (its /dev/tcp), so `bash SCRIPT verify` needs no Python: $1 ADDRESS, $2 PORT, $3 PATH.
_TCP = 'exec 3<>"/dev/tcp/$1/$2"'
_HTTP = (_TCP + ' && printf "GET %s HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n" "$3" "$1" >&3 && read -r _ code _ <&3 '
         '&& ((code >= 200 && code < 400))')
CHECK_TIMEOUT = "5"  # seconds, for a check's connection and answer


# A ping check's thresholds, judged from ping's summary: its loss and its slowest round trip.
_PING_VERDICT = ("awk -v loss={loss} -v rtt={rtt} 'match($0, /[0-9.]+% packet loss/) "
                 "{{ lost = substr($0, RSTART, RLENGTH - 13) + 0; seen = 1 }} /^rtt / {{ split($4, r, \"/\"); "
                 "slowest = r[3] + 0 }} END {{ exit !(seen && lost <= loss && (rtt == \"\" || slowest <= rtt)) }}'")


def _check(number: int, check: LabCheck) -> dict:
    """A lab check as the script runs it: ping, a connection (and GET) with bash's /dev/tcp,
    or iperf3 from the check's side to a one-off server on the other (the script's throughput)."""
    if check.kind == "throughput":
        serve = ("iperf3", "--server", "--one-off", "--bind", check.address, "--port", str(check.port), "--forceflush")
        measure = ("iperf3", "--client", check.address, "--port", str(check.port), "--time", str(check.seconds),
                   "--connect-timeout", "3000", "--json")
        if not check.runnable:
            return {"label": check.label, "command": None}
        limit = ("timeout", str(check.seconds + 15))  # the one-off server, should its client never come
        return {"label": check.label, "command": f"throughput serve_{number} measure_{number} {check.min_rate}",
                "serve": "exec " + shell_join(limit + in_netns(check.server_netns, serve)),
                "measure": shell_join(in_netns(check.netns, measure))}
    thresholds = check.max_rtt_ms is not None or check.max_loss_percent is not None
    if check.kind == "ping" and ((check.count or 1) > 1 or thresholds):
        argv = ("ping", "-n", "-q", "-c", str(check.count), "-i", "0.2", "-W", "2", check.address)
        verdict = _PING_VERDICT.format(loss=f"{check.max_loss_percent or 0:g}",
                                       rtt="" if check.max_rtt_ms is None else f"{check.max_rtt_ms:g}")
        return {"label": check.label,
                "command": shell_join(in_netns(check.netns, argv)) + " | " + verdict if check.runnable else None}
    if check.kind == "ping":
        argv = ("ping", "-n", "-q", "-c", "1", "-W", "2", check.address)
    else:
        argv = ("timeout", CHECK_TIMEOUT, "bash", "-c", _HTTP if check.kind == "http" else _TCP, "check",
                check.address, str(check.port), check.path or "/")
    return {"label": check.label, "command": shell_join(in_netns(check.netns, argv)) if check.runnable else None}


def tools_used(plan: Plan) -> List[str]:
    """The programs the script calls, so it can check for them before it starts; python3
    for a lab service, which the script runs itself (never netlab)."""
    used = set()
    for step in plan.steps:
        for argv in (step.argv, step.undo, step.save, step.probe and step.probe.argv):
            if argv:
                used.add(argv[0])
    if any(step.netns for step in plan.steps):
        used.add("ip")
    if "netlab" in used:
        used.discard("netlab")
        used.add("python3")
    return sorted(used)


def write_scripts(multi, directory: Path) -> list:
    """A lab of several hosts (netlab.render.multi) as a script per part in DIRECTORY (made if
    missing): the underlay's, which also holds the lab's checks (in a sandbox every host is on
    this machine), and each host's; and a README.md of the order to run them. Returns the paths."""
    import dataclasses

    from netlab.render.templating import comment

    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: not a directory (a lab of several hosts is one script per host)", None, "-o")
    if not directory.parent.is_dir():
        raise InputError(f"{directory}: its parent directory does not exist", None, "-o")
    directory.mkdir(exist_ok=True)
    underlay = dataclasses.replace(multi.underlay, checks=multi.checks)
    parts = [(underlay, "the underlay: the hosts' namespaces and the network between them")]
    parts += [(part.plan, f"host {part.host.name} ({part.netns})") for part in multi.parts]
    paths = []
    for plan, _ in parts:
        path = directory / f"{plan.name}.sh"
        write_script(path, export_script(plan))
        paths.append(path)
    hosts = " and ".join(f"`sudo bash {part.plan.name}.sh up`" for part in multi.parts)
    downs = ", ".join(f"`sudo bash {part.plan.name}.sh down`" for part in multi.parts)
    lines = [f"# {multi.lab}: {comment(multi.title)}", "",
             f"Exported by netlab from a lab of {len(multi.parts)} hosts, in the sandbox {multi.sandbox}: one script "
             "per part, each with up, down, plan and verify, each its own record.", ""]
    lines += [f"- `{plan.name}.sh`: {what}, {len(plan.steps)} steps" for plan, what in parts]
    lines += ["", "Up, in this order:", "",
              f"1. `sudo bash {underlay.name}.sh up`",
              f"2. {hosts} (in any order, or side by side)",
              f"3. `sudo bash {underlay.name}.sh verify`: the lab's checks, across the hosts", "",
              f"Down: {downs}, then `sudo bash {underlay.name}.sh down` (the underlay holds the hosts' namespaces).",
              ""]
    readme = directory / "README.md"
    write_file(readme, "\n".join(lines), 0o644, "-o")
    return paths + [readme]


def export_script(plan: Plan) -> str:
    from netlab import __version__, programs
    from netlab.render.templating import environment

    steps = [
        {
            "index": step.index,
            "why": step.why,
            "command": step.command,
            "undo_command": step.undo_command,
            "undo": _undo_text(step),
            "probe": _probe_text(step),
            "save": shell_join(in_netns(step.netns, step.save)) if step.save else None,
            **(_service(step) if step.service else {}),
        }
        for step in plan.steps
    ]
    app = programs.source("serve") if any(step.service for step in plan.steps) else None
    if app is not None and APP_END in app.splitlines():
        raise AssertionError(f"the server's source has a line {APP_END}, which ends its heredoc")
    return environment().get_template("script.sh.j2").render(
        plan=plan,
        steps=steps,
        version=__version__,
        tools=tools_used(plan),
        params=", ".join(f"{key}={value}" for key, value in plan.params) or "none",
        q=shlex.quote,
        app=app,
        app_end=APP_END,
        checks=[{"serve": None, "measure": None, **_check(number, check)}
                for number, check in enumerate(plan.checks, 1)],
    )


def write_script(path: Path, text: str) -> None:
    """Write the script at PATH, mode 0755, all or nothing (write_file)."""
    write_file(path, text, 0o755, "--output")


def write_file(path: Path, text: str, mode: int, option: str) -> None:
    """Write TEXT at PATH with MODE, all or nothing: a temporary file made beside PATH with
    O_EXCL (mkstemp: never through a planted symlink or into someone's file), then renamed
    over PATH. A failure is bad input for OPTION, the option that named PATH."""
    import tempfile

    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as error:
        raise InputError(f"cannot write: {error.strerror or error}", str(path), option) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), mode)
        os.replace(temporary, path)
    except OSError as error:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise InputError(f"cannot write: {error.strerror or error}", str(path), option) from None
