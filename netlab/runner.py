"""Bringing a lab up and down on this host, with a write-ahead journal.

`up` takes the lab's lock and starts its journal, or goes on with an
interrupted `up` of the same plan. For each step: a step whose probe says it
is already in effect was not made by the lab; it is recorded as found and
never undone. Otherwise its old value is saved (sysctl), `start` is recorded,
the step runs and `done` is recorded. A failing step, SIGINT or SIGTERM
undoes the started steps in reverse; when all are undone, the journal is
removed (otherwise it is kept for `down`).

`down` undoes what the journal records, in reverse, each step only if its
probe says it is still in effect, so an object already gone is no error and
an interrupted `down` or rollback converges when run again.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from netlab import journal as journals
from netlab.errors import InputError, NetlabError
from netlab.execute import TIMED_OUT, Executor, Result, require_root
from netlab.plan import Plan, Step


class StepFailed(NetlabError):
    """A step failed; the rollback that followed is in the message."""

    def __init__(self, message: str, step: Step, result: Result):
        self.step = step
        self.result = result
        super().__init__(message)


class Interrupted(NetlabError):
    """SIGINT or SIGTERM stopped an `up` or `down`."""

    def __init__(self, message: str, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(message)


class LabConflict(NetlabError):
    """The lab's journal says something else is, or was, going on."""


class Reporter:
    """What the runner tells as it goes; silent here, the CLI prints."""

    def step(self, step: Step, total: int, action: str) -> None:
        """ACTION: run, found (already in effect, left alone), show, undo."""

    def output(self, step: Step, text: str) -> None:
        """What a read-only step printed."""

    def warn(self, text: str) -> None:
        """Something the user should know that is not an error."""


@dataclass(frozen=True)
class Outcome:
    name: str
    changed: int  # steps run (up) or undone (down)
    found: int  # steps left alone: in effect before the lab (up), or already gone (down)
    summary: str


class _DeferredSignals:
    """SIGINT and SIGTERM are noted and acted on between steps, never mid-step."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "_DeferredSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.received = self.received or signum

    def check(self, message: str) -> None:
        if self.received:
            raise Interrupted(f"{signal.Signals(self.received).name}: {message}", self.received)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _header(plan: Plan) -> dict:
    return {
        "name": plan.name,
        "lab": plan.lab,
        "title": plan.title,
        "digest": plan.digest,
        "sandbox": plan.sandbox.prefix if plan.sandbox else None,
        "host_netns": plan.host_netns,
        "params": dict(plan.params),
        "steps": [step.to_dict() for step in plan.steps],
        "checks": [check.to_dict() for check in plan.checks],
    }


def _current(path: Path, reporter: Reporter) -> Optional[journals.Journal]:
    """The journal at PATH, if any; one from before the last reboot is removed (the reboot undid it)."""
    if not path.exists():
        return None
    record = journals.Journal.read(path)
    if record.from_this_boot:
        return record
    reporter.warn(f"{record.name}: its journal was written before the last reboot, which undid the lab; removed")
    record.remove()
    return None


# ---------------------------------------------------------------- up
def up(plan: Plan, state_dir=None, reporter: Optional[Reporter] = None,
       executor: Optional[Executor] = None) -> Outcome:
    """Apply PLAN: every step in place, or (after a failure or a signal) none of them."""
    reporter = reporter or Reporter()
    executor = executor or Executor()
    require_root("up")
    directory = journals.state_dir(state_dir)
    if plan.host_netns and not executor.run(("ip", "netns", "pids", plan.host_netns)).ok:
        raise InputError(f"there is no network namespace {plan.host_netns!r} (see `ip netns list`)",
                         None, "--host-netns")
    total = len(plan.steps)
    with journals.Lock(directory, plan.name):
        path = journals.journal_path(directory, plan.name)
        record = _current(path, reporter)
        if record is None:
            record = journals.Journal.create(path, _header(plan))
        else:
            if record.digest != plan.digest:
                raise LabConflict(
                    f"{plan.name} is already up with another plan (lab {record.lab}, plan {record.digest}, "
                    f"not {plan.digest}); take it down first: netlab down {plan.name}")
            if record.complete:
                return Outcome(plan.name, 0, 0, f"{plan.name} is already up ({total} steps, plan {plan.digest}); "
                                                f"nothing changed")
            if record.has("rollback") or record.failed:
                raise LabConflict(f"an earlier up or down of {plan.name} did not finish; "
                                  f"run `netlab down {plan.name}` first")
            record.open_for_append()
            record.append(resume=os.getpid())
            _settle(record, plan, executor)
        with _DeferredSignals() as signals:
            try:
                ran, found = _apply(plan, record, executor, reporter, signals)
                record.append(up=True)
            except BaseException as error:
                complete = _rollback(record, plan, executor, reporter)
                if not isinstance(error, NetlabError):
                    raise
                after = ("rolled back: the host is as it was" if complete else
                         f"the rollback could not undo everything (above); run `netlab down {plan.name}`")
                error.args = (f"{error}; {after}",)
                raise
        record.close()
    extra = f", {found} already in effect and left as they were" if found else ""
    return Outcome(plan.name, ran, found, f"{plan.name} is up: {ran} of {total} steps run{extra}")


def _settle(record: journals.Journal, plan: Plan, executor: Executor) -> None:
    """After a crash: a step that started but has no `done` counts as done if it is in effect."""
    steps = {step.index: step for step in plan.steps}
    done = record.done
    for index in record.started:
        if index not in done and executor.in_effect(steps[index]):
            record.append(done=index)


def _apply(plan: Plan, record: journals.Journal, executor: Executor, reporter: Reporter,
           signals: _DeferredSignals):
    total = len(plan.steps)
    settled = record.done | record.found
    ran = found = 0
    for step in plan.steps:
        signals.check(f"interrupted before step {step.index} of {total}")
        if step.index in settled:
            continue
        if step.read_only:
            reporter.step(step, total, "show")
            result = executor.run_step(step)
            if not result.ok:
                raise _step_failed(plan, step, result)
            reporter.output(step, result.stdout)
            continue
        if executor.in_effect(step):
            record.append(found=step.index)
            reporter.step(step, total, "found")
            found += 1
            continue
        reporter.step(step, total, "run")
        if step.save:
            saved = executor.save(step)
            if not saved.ok:
                raise _step_failed(plan, step, saved)
            record.append(saved=step.index, value=saved.stdout.strip())
        record.append(start=step.index)
        result = executor.run_step(step)
        if not result.ok:
            if result.code != TIMED_OUT:  # a step that timed out may have taken effect: its probe decides
                record.append(failed=step.index)  # what it ran into was not the lab's: never undone
            raise _step_failed(plan, step, result)
        record.append(done=step.index)
        ran += 1
    signals.check("interrupted after the last step")
    return ran, found


def _step_failed(plan: Plan, step: Step, result: Result) -> StepFailed:
    said = "; ".join(line.strip() for line in result.stderr.strip().splitlines() if line.strip())
    said = said or f"exit code {result.code}"
    return StepFailed(f"{plan.name}: step {step.index} of {len(plan.steps)} failed: {step.command}: {said}",
                      step, result)


def _rollback(record: journals.Journal, plan: Plan, executor: Executor, reporter: Reporter) -> bool:
    """Undo what this `up` started, in reverse; True when everything is undone (journal removed)."""
    reporter.warn(f"{plan.name}: rolling back: undoing the steps done, in reverse")
    try:
        record.append(rollback=True)
    except NetlabError:
        pass  # the journal cannot be written (a full disk): undo all the same
    _, _, failures = _undo_all(record, executor, reporter)
    if failures:
        record.close()
        return False
    record.remove()
    return True


def _undo_all(record: journals.Journal, executor: Executor, reporter: Reporter, signals=None):
    """Undo the journal's started steps in reverse, each only if in effect.

    Returns (undone, already gone, failures). With SIGNALS, a signal stops it
    between steps (the journal is kept, so `down` finishes the work).
    """
    steps = {step.index: step for step in record.steps()}
    total = len(steps)
    saved = record.saved
    done = record.done
    undone = gone = failures = 0
    for index in record.to_undo():
        if signals is not None:
            signals.check(f"{record.name}: down interrupted; the journal is kept: run `netlab down {record.name}` "
                          f"to finish")
        step = steps[index]
        if step.undo is None:
            continue
        if executor.in_effect(step) is False:
            gone += 1
            if step.save and index in done:
                reporter.warn(f"step {index}: {step.probe.argv[-1]} no longer holds the lab's value "
                              f"({step.probe.value}); left as it is")
            continue
        if step.save and index not in saved:
            reporter.warn(f"step {index}: no recorded previous value; left as it is: {step.command}")
            continue
        reporter.step(step, total, "undo")
        result = executor.undo(step, saved.get(index))
        if result.ok or executor.in_effect(step) is False:
            undone += 1
            continue
        failures += 1
        said = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit code {result.code}"
        reporter.warn(f"could not undo step {index}: {' '.join(result.argv)}: {said}")
    return undone, gone, failures


# ---------------------------------------------------------------- down
def down(name: str, state_dir=None, reporter: Optional[Reporter] = None,
         executor: Optional[Executor] = None, exact: bool = False) -> Outcome:
    """Undo the lab called NAME on this host (or, unless EXACT, the one lab whose own
    name is NAME); a lab that is not up is nothing to do."""
    reporter = reporter or Reporter()
    executor = executor or Executor()
    require_root("down")
    directory = journals.state_dir(state_dir)
    if exact:
        path = journals.journal_path(directory, name)
        path = path if path.exists() else None
    else:
        path = journals.find(directory, name)
    if path is None:
        return Outcome(name, 0, 0, f"{name} is not up; nothing to do")
    real_name = path.name[: -len(journals.SUFFIX)]
    with journals.Lock(directory, real_name):
        record = _current(path, reporter)
        if record is None:
            return Outcome(real_name, 0, 0, f"{real_name} is not up; nothing to do")
        record.open_for_append()
        record.append(rollback=True)
        with _DeferredSignals() as signals:
            undone, gone, failures = _undo_all(record, executor, reporter, signals)
        if failures:
            record.close()
            raise NetlabError(f"{real_name}: {failures} step(s) could not be undone (above); the journal is kept: "
                              f"fix what is named and run `netlab down {real_name}` again")
        record.remove()
    extra = f" ({gone} already gone)" if gone else ""
    return Outcome(real_name, undone, gone, f"{real_name} is down: {undone} steps undone{extra}")
