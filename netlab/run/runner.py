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
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

from netlab.errors import ConnectionLost, InputError, NetlabError
from netlab.render.plan import Plan, Step
from netlab.run import journal as journals
from netlab.run.execute import TIMED_OUT, Executor, Result, local_executor


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


class _InPlanOrder(Reporter):
    """The steps of a batched `up` told in plan order, as the documents read: a round can
    hold step 27 and the next one step 8, so each step's line waits until every earlier
    step of ORDER (the steps this `up` goes through) has had its own. What is still held
    when the run ends (it failed, or was interrupted) is told by `flush`, in order."""

    def __init__(self, reporter: Reporter, order: Sequence[int]):
        self.reporter = reporter
        self.order = list(order)
        self.next = 0
        self.held = {}  # index -> [(step, total, action), outputs...]

    def step(self, step: Step, total: int, action: str) -> None:
        if action == "undo":
            self.flush()
            self.reporter.step(step, total, action)
            return
        self.held[step.index] = [(step, total, action)]
        while self.next < len(self.order) and self.order[self.next] in self.held:
            self._tell(self.held.pop(self.order[self.next]))
            self.next += 1

    def output(self, step: Step, text: str) -> None:
        if step.index in self.held:
            self.held[step.index].append(text)
        else:
            self.reporter.output(step, text)

    def warn(self, text: str) -> None:
        self.reporter.warn(text)

    def _tell(self, told: list) -> None:
        (step, total, action), outputs = told[0], told[1:]
        self.reporter.step(step, total, action)
        for text in outputs:
            self.reporter.output(step, text)

    def flush(self) -> None:
        for index in sorted(self.held):
            self._tell(self.held.pop(index))
        self.next = len(self.order)


@dataclass(frozen=True)
class Outcome:
    name: str
    changed: int  # steps run (up) or undone (down)
    found: int  # steps left alone: in effect before the lab (up), or already gone (down)
    summary: str
    was_up: bool = False  # up: the lab was up before this run (it may have mended it)


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
        "checks": [check.to_dict() for check in plan.checks],
    }


def _down_command(name: str, executor: Executor) -> str:
    """The command that takes NAME down, for messages."""
    where = f" --remote {executor.remote.label}" if executor.remote else ""
    return f"netlab down {name}{where}"


def _left_as_is(error: ConnectionLost, name: str, store, executor: Executor) -> ConnectionLost:
    error.args = (f"{error}; {name} is left as it was when the connection dropped, and the journal{store.where} "
                  f"records it: run `{_down_command(name, executor)}` once the host answers",)
    return error


def _current(store, name: str, reporter: Reporter, executor: Executor,
             known: Optional[journals.Journal] = None) -> Optional[journals.Journal]:
    """The journal of NAME in STORE, if any (KNOWN, read before the lock was taken, unless it has
    been written since), with EXECUTOR attached to its lab. One from before the host's last
    reboot is removed (the reboot undid the lab), and so is one whose lab vanished with its
    namespaces (a rootless lab whose keeper ended)."""
    record = store.read(name) if known is None else store.reread(known)
    if record is None:
        return None
    if not record.from_this_boot:
        reporter.warn(f"{record.name}: its journal was written before the last reboot, which undid the lab; removed")
        record.remove()
        return None
    executor.attach(record)
    if executor.vanished:
        reporter.warn(f"{record.name}: the keeper of its namespaces has ended, and every namespace and process of "
                      f"the lab with it; its journal is removed")
        record.remove()
        return None
    return record


# ---------------------------------------------------------------- up
def up(plan: Plan, state_dir=None, reporter: Optional[Reporter] = None,
       executor: Optional[Executor] = None, step_by_step: bool = False, to: Optional[int] = None,
       check: bool = False) -> Outcome:
    """Apply PLAN: every step in place, or (after a failure or a signal) none of them.

    The steps run in batches (netlab.run.batches), unless STEP_BY_STEP: one process each,
    as the documents run them. With TO, only steps 1 to TO (to see a check fail before
    the step that fixes it, as the documents do): the journal records where it stopped,
    and a later `up` goes on from there. A lab that is up already converges: a step of
    its own that went missing (a rule deleted by hand) is applied again; with CHECK,
    only said (LabDrift), nothing changed."""
    reporter = reporter or Reporter()
    executor = executor or local_executor()
    total = len(plan.steps)
    if to is not None and not 1 <= to <= total:
        raise InputError(f"--to takes a step number from 1 to {total}, not {to}", None, "--to")
    executor.require_root("up")
    executor.admit(plan)
    store = executor.state_store(state_dir)
    if plan.host_netns and not executor.run(("ip", "netns", "pids", plan.host_netns)).ok:
        raise InputError(f"there is no network namespace {plan.host_netns!r} (see `ip netns list`)",
                         None, "--host-netns")
    with store.lock(plan.name):
        record = _current(store, plan.name, reporter, executor)
        if check and (record is None or not record.complete or record.digest != plan.digest):
            said = ("not up" if record is None else "up with another plan" if record.digest != plan.digest
                    else "only partly up")
            raise LabDrift(f"{plan.name} is {said}{store.where}; `up --check` changes nothing (without it, "
                           f"`netlab up` brings the lab up)")
        if record is None:
            record = store.create(plan.name, {**_header(plan), **executor.lab_header()}, plan.steps)
            try:
                executor.new_lab(lambda keeper: record.append(keeper=keeper))
            except BaseException:
                record.remove()
                raise
        else:
            if record.digest != plan.digest:
                raise LabConflict(
                    f"{plan.name} is already up with another plan (lab {record.lab}, plan {record.digest}, "
                    f"not {plan.digest}); take it down first: {_down_command(plan.name, executor)}")
            if record.complete:
                return _mend(plan, record, store, executor, reporter, check)
            if record.has("rollback") or record.failed:
                raise LabConflict(f"an earlier up or down of {plan.name} did not finish; "
                                  f"run `{_down_command(plan.name, executor)}` first")
            record.open_for_append()
            _settle(record, plan, executor)
            if to is not None and not {step.index for step in plan.steps[:to]} - record.done - record.found:
                record.close()  # and no `resume`: where an earlier `up --to` stopped still holds
                return Outcome(plan.name, 0, 0,
                               f"{plan.name}: steps 1-{to} of {total} were already done; nothing changed")
            record.append(resume=os.getpid())
        steps = plan.steps if to is None else plan.steps[:to]
        with _DeferredSignals() as signals:
            try:
                apply = _apply if step_by_step else _apply_batched
                ran, found = apply(plan, steps, record, executor, reporter, signals)
                record.append(**({"up": True} if len(steps) == total else {"to": len(steps)}))
            except BaseException as error:
                if isinstance(error, ConnectionLost):  # nothing more can run there: the journal keeps it all
                    raise _left_as_is(error, plan.name, store, executor) from None
                try:
                    complete = _rollback(record, plan, executor, reporter, step_by_step)
                except ConnectionLost as lost:
                    raise _left_as_is(lost, plan.name, store, executor) from None
                if not isinstance(error, NetlabError):
                    raise
                after = ("rolled back: the host is as it was" if complete else
                         f"the rollback could not undo everything (above); run "
                         f"`{_down_command(plan.name, executor)}`")
                error.args = (f"{error}; {after}",)
                raise
        record.close()
    extra = f", {found} already in effect and left as they were" if found else ""
    if len(steps) < total:
        return Outcome(plan.name, ran, found, f"{plan.name}: steps 1-{len(steps)} of {total} done ({ran} run{extra}); "
                                              f"`netlab up` again goes on from step {len(steps) + 1}")
    return Outcome(plan.name, ran, found, f"{plan.name} is up: {ran} of {total} steps run{extra}")


class LabDrift(NetlabError):
    """`up --check`: steps of a lab that is up went missing."""


def _mend(plan: Plan, record: journals.Journal, store, executor: Executor, reporter: Reporter,
          check: bool) -> Outcome:
    """A lab that is up: apply again, in plan order, the steps of its own that are missing
    now, journaled as any step; if one fails, undo what this run applied again, so the lab
    is as it was. With CHECK, say what is missing and change nothing."""
    total = len(plan.steps)
    done = record.done
    from netlab.run.probes import in_effect_many

    mine = [step for step in plan.steps if step.index in done and step.probe is not None]
    missing = [step for step, live in zip(mine, in_effect_many(executor, [step.probe for step in mine]))
               if live is False]
    if not missing:
        record.close()
        return Outcome(plan.name, 0, 0, f"{plan.name} is already up ({total} steps, plan {plan.digest}); "
                                        f"nothing changed", was_up=True)
    numbers = ", ".join(str(step.index) for step in missing)
    if check:
        record.close()
        raise LabDrift(f"{plan.name} is up, but {len(missing)} of its steps are missing (step(s) "
                       f"{numbers}): `netlab up` without --check applies them again")
    record.open_for_append()
    again = []
    with _DeferredSignals() as signals:
        try:
            for step in missing:
                signals.check(f"interrupted before step {step.index} of {total}")
                reporter.step(step, total, "run")
                if step.index in record.servers:  # its server may live on where nobody reaches it: stop it
                    _stop_server(step, record.servers[step.index], executor)
                _start(plan, step, record, executor, keep_saved=True)
                again.append(step.index)
                _run_started(plan, step, record, executor, mending=True)
        except BaseException as error:
            if isinstance(error, ConnectionLost):
                raise _left_as_is(error, plan.name, store, executor) from None
            reporter.warn(f"{plan.name}: undoing the {len(again)} step(s) this run applied again")
            _, _, failures = _undo_all(record, executor, reporter, None, list(reversed(again)))
            record.close()
            if not isinstance(error, NetlabError):
                raise
            after = (f"what it applied again is undone: {plan.name} is as it was, {len(missing)} steps missing"
                     if not failures else "some of what it applied again could not be undone (above)")
            error.args = (f"{error}; {after}",)
            raise
    record.close()
    return Outcome(plan.name, len(missing), 0, f"{plan.name} was up with {len(missing)} step(s) missing; mended: "
                                               f"step(s) {numbers} applied again", was_up=True)


def _settle(record: journals.Journal, plan: Plan, executor: Executor) -> None:
    """After a crash: a step that started but has no `done` counts as done if it is in effect."""
    steps = {step.index: step for step in plan.steps}
    done = record.done
    for index in record.started:
        if index not in done and executor.in_effect(steps[index]):
            record.append(done=index)


def _apply(plan: Plan, steps: Sequence[Step], record: journals.Journal, executor: Executor, reporter: Reporter,
           signals: _DeferredSignals):
    """Apply STEPS (the plan's, or its first ones) one process each, the documents' way."""
    total = len(plan.steps)
    settled = record.done | record.found
    ran = found = 0
    for step in steps:
        signals.check(f"interrupted before step {step.index} of {total}")
        if step.index not in settled:
            outcome = _apply_step(plan, step, record, executor, reporter)
            ran += outcome == "run"
            found += outcome == "found"
    signals.check("interrupted after the last step")
    return ran, found


def _apply_step(plan: Plan, step: Step, record: journals.Journal, executor: Executor, reporter: Reporter) -> str:
    """Run one step the documents' way: probe, save, record `start`, run, record `done`.
    Returns "run", "found" (in effect already: left alone) or "show" (read-only)."""
    total = len(plan.steps)
    if step.read_only:
        reporter.step(step, total, "show")
        result = executor.run_step(step)
        if not result.ok:
            raise _step_failed(plan, step, result)
        reporter.output(step, result.stdout)
        return "show"
    if executor.in_effect(step):
        record.append(found=step.index)
        reporter.step(step, total, "found")
        return "found"
    reporter.step(step, total, "run")
    _start(plan, step, record, executor)
    _run_started(plan, step, record, executor)
    return "run"


def _start(plan: Plan, step: Step, record: journals.Journal, executor: Executor, keep_saved: bool = False) -> None:
    """Record what STEP replaces (a sysctl's old value, for its undo), then that it starts. With
    KEEP_SAVED (a mend), a value saved before stays: the one from before the lab, not the drift."""
    if step.save and not (keep_saved and step.index in record.saved):
        saved = executor.save(step)
        if not saved.ok:
            raise _step_failed(plan, step, saved)
        record.append(saved=step.index, value=saved.stdout.strip())
    record.append(start=step.index)


def _run_started(plan: Plan, step: Step, record: journals.Journal, executor: Executor,
                 mending: bool = False) -> None:
    """Run a step whose `start` is recorded, and record how it ended (and, for a lab service,
    which process serves: `down` stops exactly it). MENDING, a step the lab did before is
    applied again: one that fails is the lab's all the same (its `done` says so)."""
    result = executor.run_step(step)
    if not result.ok:
        if result.code != TIMED_OUT and not mending:  # one that timed out may have taken effect: its probe decides
            record.append(failed=step.index)  # what it ran into was not the lab's: never undone
        raise _step_failed(plan, step, result)
    server = _SERVER.search(result.stdout) if step.service else None
    if server:
        record.append(server=step.index, pid=int(server.group(1)), started=server.group(2))
    record.append(done=step.index)


_SERVER = re.compile(r"\(pid (\d+), started (\d+)\)")  # what `netlab serve --background` prints


def _stop_server(step: Step, server: str, executor: Executor) -> Result:
    """Stop exactly the process SERVER (`PID:START`) that STEP started, from the host's root
    namespace: also when the step's namespace was deleted by hand and the server lives on."""
    return executor.run(("netlab", "serve", "--stop", *step.argv[3:5], "--pid", server))


# ---------------------------------------------------------------- up, in batches
def _parallel(function, items: Sequence, workers: int) -> list:
    """FUNCTION on each item, up to WORKERS (an Executor's) side by side: the batches of
    a round, the probes; they wait mostly on the kernel's locks."""
    if len(items) <= 1:
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(function, items))


def _existing_namespaces(executor: Executor) -> set:
    listed = executor.run(("ip", "netns", "list"))
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()} if listed.ok else set()


def _apply_batched(plan: Plan, steps: Sequence[Step], record: journals.Journal, executor: Executor,
                   reporter: Reporter, signals: _DeferredSignals):
    """Apply STEPS (the plan's, or its first ones) in batches, with the journal's guarantees of `_apply`.

    Only steps in a namespace this `up` creates skip their probe: nothing can be in
    effect there before the lab. A batch's steps are recorded as started before it
    runs and done after; a failed batch is gone through step by step (`_recover`).
    """
    settled = record.done | record.found
    pending = [step for step in steps if step.index not in settled]
    reporter = _InPlanOrder(reporter, [step.index for step in pending])
    try:
        return _run_rounds(plan, pending, record, executor, reporter, signals)
    finally:
        reporter.flush()


def _run_rounds(plan: Plan, pending: Sequence[Step], record: journals.Journal, executor: Executor,
                reporter: Reporter, signals: _DeferredSignals):
    """The batched `up` of PENDING: the probes, then the rounds of batches."""
    from netlab.run.batches import SINGLE, created_netns, lane_of, schedule
    from netlab.run.probes import in_effect_many

    total = len(plan.steps)
    existing = _existing_namespaces(executor)
    fresh = {created_netns(step) for step in pending if created_netns(step)} - existing
    probed = [step for step in pending if step.probe is not None and lane_of(step) != SINGLE
              and step.netns not in fresh and created_netns(step) not in fresh]
    states = in_effect_many(executor, [step.probe for step in probed])  # a few dumps per namespace
    already = {step.index for step, state in zip(probed, states) if state}
    for step in probed:
        if step.index in already:
            reporter.step(step, total, "found")
    record.append_many([{"found": index} for index in sorted(already)])
    ran, found = 0, len(already)
    for batches in schedule([step for step in pending if step.index not in already]).rounds:
        signals.check(f"interrupted before step {batches[0].steps[0].index} of {total}")
        together = [batch for batch in batches if batch.tool != SINGLE]
        for batch in together:
            for step in batch.steps:
                reporter.step(step, total, "run")
        record.append_many([{"start": step.index} for batch in together for step in batch.steps])
        results = _parallel(lambda batch: executor.run(batch.tool_argv, batch.netns, batch.input), together,
                            executor.workers)
        record.append_many([{"done": step.index} for batch, result in zip(together, results) if result.ok
                            for step in batch.steps])
        for batch, result in zip(together, results):
            if result.ok:
                ran += len(batch.steps)
            else:
                done, left = _recover(plan, batch, result, record, executor)
                ran, found = ran + done, found + left
        for batch in batches:
            if batch.tool == SINGLE:
                signals.check(f"interrupted before step {batch.steps[0].index} of {total}")
                outcome = _apply_step(plan, batch.steps[0], record, executor, reporter)
                ran += outcome == "run"
                found += outcome == "found"
    signals.check("interrupted after the last step")
    return ran, found


def _failed_line(batch, result: Result) -> Optional[int]:
    """The input line a failed batch stopped at: `ip -batch` says `Command failed -:N`,
    iptables-restore `line N`; None when it does not say (a syntax error)."""
    pattern = r"Command failed -:(\d+)" if batch.tool != "iptables" else r"\bline (\d+)"
    match = re.search(pattern, result.stderr)
    return int(match.group(1)) if match else None


def _recover(plan: Plan, batch, result: Result, record: journals.Journal, executor: Executor):
    """After BATCH failed: its steps are started; settle each, and run alone the ones not in
    effect, so a failure names its step and says what the command said, as step by step.

    `ip -batch` stops at the failing line: the lines before it are done. The failing
    line did not take effect, so a step of it that is in effect was so before (found).
    iptables-restore applies a table all or nothing, so only the probes can tell.
    Returns (steps done, steps found)."""
    line = _failed_line(batch, result) if result.code != TIMED_OUT else None
    failing = batch.unit_at(line) if line else None
    units = list(batch.units)
    if failing is not None and batch.tool != "iptables":
        before = units[: units.index(failing)]
        record.append_many([{"done": step.index} for unit in before for step in unit.steps])
        done = sum(len(unit.steps) for unit in before)
        units = units[len(before):]
    else:
        done = 0
    found = 0
    for unit in units:
        for step in unit.steps:
            if executor.in_effect(step):
                if unit is failing:
                    record.append(found=step.index)
                    found += 1
                else:
                    record.append(done=step.index)
                    done += 1
                continue
            _run_started(plan, step, record, executor)
            done += 1
    return done, found


def _step_failed(plan: Plan, step: Step, result: Result) -> StepFailed:
    said = "; ".join(line.strip() for line in result.stderr.strip().splitlines() if line.strip())
    said = said or f"exit code {result.code}"
    if step.argv[:3] == ("tc", "qdisc", "add") and "qdisc kind is unknown" in said:
        kind = next((word for word in ("netem", "tbf") if word in step.argv), "that")
        said += (f" (this kernel has no {kind} qdisc: it needs CONFIG_NET_SCH_{kind.upper()}, "
                 f"or the module: modprobe sch_{kind})")
    return StepFailed(f"{plan.name}: step {step.index} of {len(plan.steps)} failed: {step.command}: {said}",
                      step, result)


def _rollback(record: journals.Journal, plan: Plan, executor: Executor, reporter: Reporter,
              step_by_step: bool = False) -> bool:
    """Undo what this `up` started, in reverse; True when everything is undone (journal removed)."""
    reporter.warn(f"{plan.name}: rolling back: undoing the steps done, in reverse")
    try:
        record.append(rollback=True)
    except NetlabError:
        pass  # the journal cannot be written (a full disk): undo all the same
    undo = _undo_all if step_by_step else _teardown
    _, _, failures = undo(record, executor, reporter)
    if failures and not executor.rootless:  # a rootless lab's keeper takes what is left with it
        record.close()
        return False
    executor.lab_gone()
    record.remove()
    return True


def _undo_all(record: journals.Journal, executor: Executor, reporter: Reporter, signals=None, only=None,
              states=None):
    """Undo the journal's started steps in reverse (or the steps ONLY, in that order),
    each only if in effect: as STATES says (step index -> in effect, as read a moment
    ago by netlab.run.probes), else, and where that could not tell, as its probe says now.

    Returns (undone, already gone, failures). With SIGNALS, a signal stops it
    between steps (the journal is kept, so `down` finishes the work).
    """
    states = states or {}
    steps = {step.index: step for step in record.steps()}
    total = len(steps)
    saved = record.saved
    done = record.done
    servers = record.servers
    undone = gone = failures = 0
    for index in record.to_undo() if only is None else only:
        _interruptible(signals, record, executor)
        step = steps[index]
        if step.undo is None:
            continue
        if index in servers:  # that very process, wherever it runs now
            reporter.step(step, total, "undo")
            result = _stop_server(step, servers[index], executor)
            if result.ok and executor.in_effect(step) is not True:
                undone += 1
                continue
            if result.ok:  # another netlab server listens there (one started again by hand): it goes too
                result = executor.undo(step, None)
        elif (states[index] if states.get(index) is not None else executor.in_effect(step)) is False:
            gone += 1
            if step.save and index in done and not _holds_saved(step, saved.get(index), executor):
                reporter.warn(f"step {index}: {step.probe.argv[-1]} no longer holds the lab's value "
                              f"({step.probe.value}); left as it is")
            continue
        elif step.save and index not in saved:
            reporter.warn(f"step {index}: no recorded previous value; left as it is: {step.command}")
            continue
        else:
            reporter.step(step, total, "undo")
            result = executor.undo(step, saved.get(index))
        if result.ok or (index not in servers and executor.in_effect(step) is False):
            undone += 1
            continue
        failures += 1
        said = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit code {result.code}"
        reporter.warn(f"could not undo step {index}: {' '.join(result.argv)}: {said}")
    return undone, gone, failures


def _holds_saved(step: Step, saved: Optional[str], executor: Executor) -> bool:
    """Whether STEP's setting (a sysctl, an MTU) holds SAVED, the value it had before the lab:
    put back already (by a `down` that stopped before the end), so there is nothing to say."""
    if saved is None:
        return False
    result = executor.save(step)
    return result.ok and result.stdout.strip() == saved.strip()


LINK_GONE_TIMEOUT = 30  # seconds the kernel may take to finish deleting a namespace's veths


def _teardown(record: journals.Journal, executor: Executor, reporter: Reporter, signals=None):
    """Undo the journal's started steps with few processes (netlab.run.batches.teardown): what
    lives in the lab's namespaces (its services) one by one, then the namespaces deleted in
    one `ip -force -batch`, which takes everything inside them along. While the kernel finishes
    that deletion, the host side: its `ip` undos a few to a process, its rules in one
    iptables-restore per namespace. Whatever a batch could not undo is undone step by step.
    Returns (undone, already gone, failures), as `_undo_all`."""
    from netlab.run.batches import created_netns, teardown
    from netlab.run.probes import in_effect_many

    steps = {step.index: step for step in record.steps()}
    total = len(steps)
    plan = teardown(steps, record.to_undo(), record.done)
    undone, gone, failures = _undo_all(record, executor, reporter, signals, plan.first)
    # the host side read now: while the kernel deletes the namespaces' links, it holds up every read
    states = _host_side_states(record, steps, plan.alone, executor)
    again = []  # what a batch could not undo: each one on its own, after the batches, to say why
    if plan.delete:
        _interruptible(signals, record, executor)
        for index in plan.delete:
            reporter.step(steps[index], total, "undo")
        executor.run(("ip", "-force", "-batch", "-"), None, plan.delete_input(steps))  # -force: every line
        left = _existing_namespaces(executor)
        stuck = [index for index in plan.delete if created_netns(steps[index]) in left]
        undone += len(plan.delete) - len(stuck) + len(plan.covered)
        again += stuck
    counts, unsure = _undo_host_side(record, steps, plan.alone, states, executor, reporter, signals)
    undone, gone, failures = undone + counts[0], gone + counts[1], failures + counts[2]
    for batch in plan.rules:
        _interruptible(signals, record, executor)
        for step in batch.steps:
            reporter.step(step, total, "undo")
        if executor.run(batch.tool_argv, batch.netns, batch.input).ok:
            undone += len(batch.steps)
        else:  # all or nothing: some rule was gone already, or in use
            again += [step.index for step in batch.steps]
    if again:
        more = _undo_all(record, executor, reporter, None, again)
        undone, gone, failures = undone + more[0], gone + more[1], failures + more[2]
    failures += _wait_until_gone(plan.leftovers, executor, reporter)
    if unsure:  # the steps of a host-side batch that said a line failed, asked again once the kernel is done
        still = dict(zip(unsure, in_effect_many(executor, [steps[index].probe for index in unsure])))
        left = [index for index in unsure if still[index] is not False]
        more = _undo_all(record, executor, reporter, None, left, still)
        undone, gone, failures = undone + len(unsure) - len(left) + more[0], gone + more[1], failures + more[2]
    return undone, gone, failures


def _interruptible(signals, record: journals.Journal, executor: Executor) -> None:
    """Between the batches of `down`: stop here if a signal came (the journal is kept)."""
    if signals is not None:
        signals.check(f"{record.name}: down interrupted; the journal is kept: run "
                      f"`{_down_command(record.name, executor)}` to finish")


def _host_side_states(record: journals.Journal, steps: dict, indexes: Sequence[int],
                      executor: Executor) -> Dict[int, Optional[bool]]:
    """Whether each of INDEXES (steps outside the lab's namespaces) is in effect, from one dump
    per namespace (netlab.run.probes); lab services are asked as `down` stops them."""
    from netlab.run.probes import in_effect_many

    servers = record.servers
    asked = [steps[index] for index in indexes
             if steps[index].undo is not None and steps[index].probe is not None and index not in servers]
    return dict(zip((step.index for step in asked), in_effect_many(executor, [step.probe for step in asked])))


def _undo_host_side(record: journals.Journal, steps: dict, indexes: Sequence[int], states: dict,
                    executor: Executor, reporter: Reporter, signals):
    """Undo INDEXES (in this order), outside the lab's namespaces, as STATES (_host_side_states,
    read before the deletion) says: each run of `ip` undos of steps in effect in one namespace
    in one `ip -force -batch` (netlab.run.batches.undo_runs), the rest one by one. A step that
    was in effect then may have gone with the lab's namespaces since (a route through one of
    their veths): a batch that says a line failed leaves its steps unsure, to be asked again
    once the kernel is done. Returns ((undone, already gone, failures), the unsure steps)."""
    from netlab.run.batches import SINGLE, undo_runs

    known_gone = [index for index in indexes if states.get(index) is False]  # nothing to run: they part no run
    undone, gone, failures = _undo_all(record, executor, reporter, None, known_gone, states)
    unsure = []
    rest = [steps[index] for index in indexes if states.get(index) is not False]
    for batch in undo_runs(rest, {index for index, live in states.items() if live}):
        _interruptible(signals, record, executor)
        if batch.tool != SINGLE:
            for step in batch.steps:
                reporter.step(step, len(steps), "undo")
            if executor.run(batch.tool_argv, batch.netns, batch.input).ok:
                undone += len(batch.steps)
            else:
                unsure += [step.index for step in batch.steps]
            continue
        more = _undo_all(record, executor, reporter, signals, [step.index for step in batch.steps], states)
        undone, gone, failures = undone + more[0], gone + more[1], failures + more[2]
    return (undone, gone, failures), unsure


def _wait_until_gone(links, executor: Executor, reporter: Reporter) -> int:
    """Wait until LINKS ((netns, name) pairs) are gone: the kernel deletes a namespace's
    veths after `ip netns del` returns, and a rebuild would collide with their names.
    Returns 1 (a failure) if some are still there after LINK_GONE_TIMEOUT seconds."""
    by_netns = {}
    for netns, name in links:
        by_netns.setdefault(netns, set()).add(name)
    deadline = time.monotonic() + LINK_GONE_TIMEOUT
    delay = 0.002
    while by_netns:
        read = time.monotonic()
        for netns, present in _link_names(executor, list(by_netns)).items():
            by_netns[netns] &= present
            if not by_netns[netns]:
                del by_netns[netns]
        if not by_netns:
            break
        took = time.monotonic() - read
        if time.monotonic() > deadline:
            names = ", ".join(sorted(name for names in by_netns.values() for name in names))
            reporter.warn(f"the kernel has not yet removed {names} after {LINK_GONE_TIMEOUT} s")
            return 1
        time.sleep(delay)
        # a read in this process costs no process, but it parses every link: never more often than it takes
        delay = max(min(delay * 1.5, 0.02 if executor.reads_kernel else 0.1), took)
    return 0


def _link_names(executor: Executor, namespaces: Sequence[Optional[str]]) -> Dict[Optional[str], set]:
    """The names of the links in each of NAMESPACES now (an empty set where it is gone, or
    cannot be read): read in this process where it may (netlab.run.netlink), else by `ip`."""
    from netlab.run import netlink

    read = netlink.read_many({netns: (("link",), ()) for netns in namespaces}) if executor.reads_kernel else {}
    names = {}
    for netns in namespaces:
        dump = read.get(netns)
        if isinstance(dump, (dict, netlink.Gone)):
            names[netns] = {link["ifname"] for link in dump[("json", "link")]} if isinstance(dump, dict) else set()
            continue
        listed = executor.run(("ip", "-o", "link", "show"), netns)
        names[netns] = {line.split(":")[1].strip().split("@")[0] for line in listed.stdout.splitlines()
                        if line.count(":") >= 2} if listed.ok else set()
    return names


# ---------------------------------------------------------------- down
def down(name: str, state_dir=None, reporter: Optional[Reporter] = None,
         executor: Optional[Executor] = None, exact: bool = False, step_by_step: bool = False) -> Outcome:
    """Undo the lab called NAME on this host (or, unless EXACT, the one lab whose own
    name is NAME); a lab that is not up is nothing to do. Namespaces the lab created are
    deleted with what is in them (`_teardown`), unless STEP_BY_STEP: each step undone
    on its own, as the documents would."""
    reporter = reporter or Reporter()
    executor = executor or local_executor()
    executor.require_root("down")
    store = executor.state_store(state_dir)
    found = store.find(name, exact)
    if found is None:
        return Outcome(name, 0, 0, f"{name} is not up{store.where}; nothing to do")
    real_name = found.name
    with store.lock(real_name):
        record = _current(store, real_name, reporter, executor, known=found)
        if record is None:
            return Outcome(real_name, 0, 0, f"{real_name} is not up; nothing to do")
        record.open_for_append()
        record.append(rollback=True)
        with _DeferredSignals() as signals:
            undo = _undo_all if step_by_step else _teardown
            try:
                undone, gone, failures = undo(record, executor, reporter, signals)
            except ConnectionLost as error:
                error.args = (f"{error}; the journal{store.where} is kept: run "
                              f"`{_down_command(real_name, executor)}` again once it answers",)
                raise
        if failures and executor.rootless:
            reporter.warn(f"{real_name}: {failures} step(s) could not be undone (above); ending the lab's keeper "
                          f"takes them with it, and everything else of the lab")
        elif failures:
            record.close()
            raise NetlabError(f"{real_name}: {failures} step(s) could not be undone (above); the journal is kept: "
                              f"fix what is named and run `{_down_command(real_name, executor)}` again")
        to_undo = set(record.to_undo())
        taken = sum(1 for step in record.steps() if step.undo is not None and step.index in to_undo)
        executor.lab_gone()
        record.remove()
    # the lab's steps that down took back: the same count whichever way (a batch deletes a namespace with
    # what is in it; one by one, the undo of a veth takes its other end too, which is then "gone")
    return Outcome(real_name, undone, gone, f"{real_name} is down: {taken} steps undone")
