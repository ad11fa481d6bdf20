"""A guided tour: a lab's stages (netlab.model.stages), run live, one after another.

For each stage: show what it is about and the commands it runs, wait for the
reader (when there is one), bring the lab up to the stage's step with the
runner's journal (`up --to`, so every stage goes on from the one before), run
the stage's checks with a capture around them, and set what each check gave
against what the documents say it gives, with doctor's root cause of each
check that fails. A stage that observes something else differs: the tour is
also a test that the story holds on this kernel. However it ends, the lab is
taken down (Ctrl-C, SIGTERM and a closed terminal too), unless asked to keep
it at the end.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from netlab.check.capture import Capture
from netlab.check.doctor import causes_of
from netlab.check.status import read_lab
from netlab.check.verify import CheckResult, run_checks
from netlab.errors import InputError, NetlabError
from netlab.render.plan import LabCheck, Plan, PlanStage, Step
from netlab.run.execute import Executor, local_executor
from netlab.run.runner import Interrupted, Reporter, down, up


@dataclass(frozen=True)
class Observation:
    """A check of a stage: what the documents say it gives, and what it gave."""

    check: LabCheck
    expect: str  # pass or fail
    result: CheckResult
    cause: str = ""  # doctor's root cause, for a check that failed

    @property
    def observed(self) -> str:
        return {True: "pass", False: "fail", None: "skipped"}[self.result.ok]

    @property
    def as_expected(self) -> bool:
        return self.observed == self.expect

    def to_dict(self) -> dict:
        return {"check": self.check.label, "expect": self.expect, "observed": self.observed,
                "as_expected": self.as_expected, "detail": self.result.detail, "cause": self.cause or None}


@dataclass
class StageRun:
    """One stage as this run saw it."""

    number: int
    planned: PlanStage
    steps: Tuple[Step, ...]  # the commands it ran to get there
    observations: List[Observation] = field(default_factory=list)
    capture: str = ""  # the tcpdump command, if the stage captures
    packets: List[str] = field(default_factory=list)
    shown: List[Tuple[str, str]] = field(default_factory=list)  # (command, its output)
    ran: bool = False  # its checks ran (not cut off by Ctrl-C)

    @property
    def as_expected(self) -> bool:
        return self.ran and all(observation.as_expected for observation in self.observations)

    def to_dict(self) -> dict:
        stage = self.planned.stage
        return {
            "number": self.number, "title": stage.title, "section": stage.section, "explain": stage.explain,
            "through": self.planned.through, "commands": [step.command for step in self.steps],
            "checks": [observation.to_dict() for observation in self.observations],
            "capture": {"command": self.capture, "packets": self.packets} if self.capture else None,
            "shown": [{"command": command, "output": output} for command, output in self.shown],
            "ran": self.ran, "as_expected": self.as_expected,
        }


@dataclass
class Tour:
    plan: Plan
    stages: List[StageRun] = field(default_factory=list)
    interrupted: bool = False
    kept: bool = False  # the lab was left up at the end, as asked

    @property
    def as_expected(self) -> bool:
        return (not self.interrupted and len(self.stages) == len(self.plan.stages)
                and all(stage.as_expected for stage in self.stages))

    def differences(self) -> List[str]:
        """A line for each check that gave what its stage does not expect."""
        return [f"stage {run.number} ({run.planned.stage.title}): {obs.check.label} was expected to "
                f"{obs.expect}, and it gave {obs.observed} ({obs.result.detail})"
                for run in self.stages for obs in run.observations if not obs.as_expected]

    def to_dict(self) -> dict:
        return {"lab": self.plan.lab, "title": self.plan.title, "name": self.plan.name,
                "stages": [run.to_dict() for run in self.stages], "interrupted": self.interrupted,
                "kept": self.kept, "as_expected": self.as_expected, "differences": self.differences()}


class _Hangup(BaseException):
    """SIGTERM or SIGHUP between steps: end the tour as Ctrl-C does."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def walk(plan: Plan, state_dir=None, executor: Optional[Executor] = None, reporter: Optional[Reporter] = None,
         say: Callable[[str], None] = lambda line: None, pause: Optional[Callable[[str], None]] = None,
         keep: bool = False) -> Tour:
    """Tour PLAN's stages. SAY gets the text a reader follows, a line at a time; PAUSE, when
    given, is called before each stage with its prompt and returns once the reader goes on.
    The lab is taken down at the end (with KEEP, only when the tour did not finish). Ctrl-C,
    SIGTERM or SIGHUP take it down and raise Interrupted, with the tour so far in `.tour`."""
    executor = executor or local_executor()
    reporter = reporter or Reporter()
    if not plan.stages:
        raise InputError(f"{plan.lab} has no stages to tour (labs with stages: see `netlab labs`)", None, "LAB")
    if plan.sandbox is None:
        raise InputError("a tour builds the lab and takes it down again in a sandbox: add --sandbox", None, "--sandbox")
    executor.require_root("tour")
    found = executor.state_store(state_dir).read(plan.name)
    if found is not None:
        executor.attach(found)
    if found is not None and executor.vanished:  # a rootless lab gone with its keeper: nothing is left of it
        found.remove()
    elif found is not None:
        raise NetlabError(f"{plan.name} is up already; a tour builds it from its first step: take it down first "
                          f"(netlab down {plan.name}), or tour in another sandbox (--sandbox PREFIX)")
    tour = Tour(plan)
    previous = {number: signal.signal(number, _hang_up) for number in (signal.SIGTERM, signal.SIGHUP)}
    finished = False
    try:
        done = 0
        for number, planned in enumerate(plan.stages, 1):
            run = StageRun(number, planned, plan.steps[done:planned.through])
            tour.stages.append(run)
            _introduce(run, len(plan.stages), say)
            if pause is not None:
                pause(f"Enter runs {'them' if run.steps else 'its checks'}; Ctrl-C takes the lab down: ")
            if run.steps:
                up(plan, state_dir, reporter, executor, to=planned.through)
            _observe(run, plan.name, state_dir, executor)
            _report(run, say)
            done = planned.through
        finished = True
    except (KeyboardInterrupt, _Hangup, Interrupted) as error:  # Interrupted: up's own, rolled back
        tour.interrupted = True
        _take_down(plan, state_dir, executor, reporter, say)
        signum = signal.SIGINT if isinstance(error, KeyboardInterrupt) else error.signum
        stopped = Interrupted(f"{signal.Signals(signum).name}: the tour stopped at stage {len(tour.stages)} of "
                              f"{len(plan.stages)}; {plan.name} was taken down", signum)
        stopped.tour = tour
        raise stopped from None
    except BaseException:
        _take_down(plan, state_dir, executor, reporter, say)
        raise
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if finished and keep:
        tour.kept = True
        say(f"{plan.name} is left up, as asked: `netlab down {plan.name}` takes it down")
    else:
        _take_down(plan, state_dir, executor, reporter, say)
    return tour


def _hang_up(signum, frame) -> None:
    raise _Hangup(signum)


def _take_down(plan: Plan, state_dir, executor: Executor, reporter: Reporter, say) -> None:
    outcome = down(plan.name, state_dir, reporter, executor)
    say(outcome.summary)


def _introduce(run: StageRun, total: int, say) -> None:
    stage = run.planned.stage
    say("")
    say(f"== Stage {run.number} of {total}: {stage.title}")
    say(f"   ({stage.section})")
    say(f"   {stage.explain}")
    if run.steps:
        say(f"   It runs {step_span(run.steps)}:")
        for step in run.steps:
            say(f"     {step.command}")
            if step.why:
                say(f"       # {step.why}")
    else:
        say("   It runs no new step: the same lab, other checks.")


def step_span(steps) -> str:
    """`step 24` or `steps 1-23`: the plan steps STEPS (consecutive)."""
    first, last = steps[0].index, steps[-1].index
    return f"step {first}" if first == last else f"steps {first}-{last}"


def _observe(run: StageRun, name: str, state_dir, executor: Executor) -> None:
    """Run the stage's checks (inside its capture), then find the cause of each that fails."""
    planned, capture = run.planned, run.planned.stage.capture
    checks = [check for check, _ in planned.checks]
    if capture is None or not executor.can_capture:  # a rootless lab without subordinate ids
        results = run_checks(checks, executor)
    else:
        with Capture(planned.capture_netns, capture.iface, capture.filter, capture.count, executor) as packets:
            results = run_checks(checks, executor)
        run.capture, run.packets = packets.command, packets.lines
    record, _ = read_lab(name, state_dir, action="tour", executor=executor)
    for (check, expect), result in zip(planned.checks, results):
        cause = ""
        if result.ok is False:
            found = causes_of(record, check, executor)
            cause = found[0].line if found else "doctor finds no cause on its path"
        run.observations.append(Observation(check, expect, result, cause))
    for step in planned.show:
        shown = executor.run(step.argv, step.netns)
        run.shown.append((step.command, shown.stdout if shown.ok else shown.stderr))
    run.ran = True


def _report(run: StageRun, say) -> None:
    width = max([len("CHECK")] + [len(obs.check.label) for obs in run.observations])
    say(f"   {'CHECK':<{width}}  EXPECTED  OBSERVED  DETAIL")
    for obs in run.observations:
        mark = "" if obs.as_expected else "   <- not what the documents say"
        say(f"   {obs.check.label:<{width}}  {obs.expect:<8}  {obs.observed:<8}  {obs.result.detail}{mark}")
        if obs.cause:
            say(f"     root cause: {obs.cause}")
    if run.capture:
        say(f"   Captured ({run.capture}):")
        for line in run.packets or ["(no packet)"]:
            say(f"     {line}")
    for command, output in run.shown:
        say(f"   $ {command}")
        for line in output.rstrip().splitlines():
            say(f"     {line}")
    verdict = "as the documents say" if run.as_expected else "NOT as the documents say"
    say(f"   Stage {run.number}: {verdict}")
