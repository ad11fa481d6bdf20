"""A tour written up as a lab sheet in Markdown: the documents' story, from a live run.

For each stage: its explanation, the exact commands it ran, and what this run
saw (the checks against what was expected, doctor's root cause of a check
that failed, the packets captured, the NAT rules where the stage shows them).
Everything in it comes from the run; nothing is invented.
"""

from __future__ import annotations

import datetime
import os
from typing import List

from netlab import __version__
from netlab.tour.walk import StageRun, Tour, step_span


def sheet(tour: Tour) -> str:
    plan = tour.plan
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        f"# {plan.title}",
        "",
        f"Lab `{plan.lab}`, toured live by netlab {__version__} in the sandbox `{plan.name}` on {when}, "
        f"Linux {os.uname().release}. Every command and output below is from that run.",
    ]
    for run in tour.stages:
        lines += _stage(run, len(plan.stages))
    lines += ["", "## Outcome", ""]
    if tour.interrupted:
        lines.append(f"The tour was interrupted after stage {len(tour.stages)}; the lab was taken down.")
    elif tour.as_expected:
        lines.append(f"Every stage observed what the documents say ({len(tour.stages)} stages).")
    else:
        lines.append("Some stages observed something else than the documents say:")
        lines += [""] + [f"- {line}" for line in tour.differences()]
    return "\n".join(lines) + "\n"


def _stage(run: StageRun, total: int) -> List[str]:
    stage = run.planned.stage
    lines = ["", f"## Stage {run.number} of {total}: {stage.title}", "", f"*{stage.section}*", "", stage.explain, ""]
    if run.steps:
        lines += [f"It runs {step_span(run.steps)} of the plan:", "", "```sh"]
        lines += [step.command for step in run.steps] + ["```", ""]
    else:
        lines += ["No new step: the same lab, other checks.", ""]
    if not run.ran:
        return lines + ["(interrupted before its checks ran)"]
    lines += ["| Check | Expected | Observed | Detail |", "|---|---|---|---|"]
    lines += [f"| {_cell(obs.check.label)} | {obs.expect} | {obs.observed}{'' if obs.as_expected else ' (differs)'} "
              f"| {_cell(obs.result.detail)} |" for obs in run.observations]
    for obs in run.observations:
        if obs.cause:
            lines += ["", f"Root cause of `{obs.check.label}` failing (netlab doctor): {obs.cause}"]
    if run.capture:
        lines += ["", f"Packets captured while the checks ran (`{run.capture}`):", "", "```"]
        lines += (run.packets or ["(no packet)"]) + ["```"]
    for command, output in run.shown:
        lines += ["", f"`{command}`:", "", "```"] + output.rstrip().splitlines() + ["```"]
    return lines


def _cell(text: str) -> str:
    """TEXT in a table cell: a `|` would end the cell."""
    return text.replace("|", "\\|")
