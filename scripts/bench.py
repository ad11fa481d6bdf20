#!/usr/bin/env python3
"""Benchmark `netlab up` / `netlab down` against the exported script's `up` / `down`.

For each size N (default 10, 50, 200) it writes a topology of N namespaces on
one bridge, with ip_forward, MASQUERADE, FORWARD rules and one DNAT per
namespace (netlab.model.star, the generator the tests use too), and builds it
in a sandbox, so nothing outside namespaces named PREFIX-* changes:

- `netlab up FILE --sandbox nlbNn` and `netlab down nlbNn` (the batched
  runner, netlab's default);
- `bash lab.sh up` and `bash lab.sh down`, lab.sh being
  `netlab export FILE --sandbox nlbNs`: plain bash, one process per command
  (the documents' way; the script also runs each step's probe first);
- `netlab up FILE --sandbox nlbNh --host-netns nlbNh-given` and `netlab down
  nlbNh`: the lab applied to a host that exists already (a namespace made,
  untimed, just before), as on a real machine: nothing of it is netlab's to
  delete with a namespace, and every step in it is probed first;
- a floor script of the same lab, written here by hand (floor_script()): one
  `ip -batch` per namespace entered with `nsenter --net=`, each veth born in
  its namespace, `iptables-restore --noflush`, and down by deleting the
  namespaces in one `ip -batch`: about the fewest processes the kernel work
  can be done with;
- the floor of `--host-netns` (floor_script(host=...)): the same floor on a
  namespace made just before, as netlab's --host-netns row; its `down` is the
  same work as netlab's there: the lab's namespaces deleted in one `ip
  -batch`, the host side's links in one `ip -force -batch`, its rules in one
  `iptables-restore`, ip_forward put back, and then a wait until the kernel
  has removed the host ends of the veths (as `netlab down` waits, so that the
  host is as before when it returns). The plain floor's `down` returns as soon
  as `ip netns del` has asked: the kernel's work is still to come then;
- the same lab split over two sandbox hosts (`netlab up FILE --sandbox
  nlbNm`, FILE the star with `hosts` a and b, each its half of the
  namespaces, the bridges joined by VXLAN): the underlay, then both hosts'
  plans side by side; the lab record's per-host start and end times say
  whether they really ran at once;
- the same `netlab up` and `down` run by an ordinary user (`--rootless-user`,
  default nobody, with a private state directory of its own): a rootless
  sandbox (netlab.run.rootless), every command through nsenter into its
  keeper's namespaces, against netlab's root sandbox in the same run.

`--tools` picks some of these (netlab's own row is always there): at N=5000
the exported script alone would take many minutes a run, so `--sizes
200,1000,5000 --tools floor` measures whether netlab's cost per namespace
stays flat, and its peak RSS, in reasonable time.

Each command is timed from the outside, as a whole (wall clock, interpreter
start included), with stdout to /dev/null and stderr to a file that is
printed only if the command fails. Runs are interleaved: in run r, for each
N, each tool's up and down in turn (the order reversed in odd runs), so that
drift affects them alike. Every netlab and script run uses a private
NETLAB_STATE_DIR (a temporary directory), so nothing is written to /run/netlab.
Python's bytecode cache goes to a private PYTHONPYCACHEPREFIX in that
directory (PYTHONDONTWRITEBYTECODE is dropped for netlab), so nothing is
written into the repository, and netlab starts as an installed one does, with
its modules compiled; an untimed warm-up (up and down of the smallest lab,
both ways, and `netlab --version`) fills that cache and the others first.
The plans netlab keeps of large labs (netlab.render.cache) go to a private
NETLAB_CACHE_DIR there too: a lab's first `up` renders its plan, the later
ones (and `plan --json`) read it back, as a user's second command does;
`plan --json` is also timed rendering anew (NETLAB_CACHE_DIR empty). While
netlab's lab is up, `netlab status NAME` and `netlab doctor NAME` are timed.

Peak memory is `ru_maxrss` of os.wait4() on the netlab process. On Linux that
is the maximum (not the sum) of the peak RSS of the process itself and of
each descendant it waited for (ip, iptables-restore, ...; all far smaller
than Python). It also includes the memory the child had before it exec'd
Python: a spawned child starts with this benchmark's own pages (vfork or
fork), and the kernel keeps their high-water mark across exec. So the number
is never below this benchmark's own peak RSS; the report prints that floor
(ru_maxrss of /bin/true spawned the same way). Above the floor, the number is
the netlab Python process's own peak (checked against /proc/self/status VmHWM
read at exit: 78 MB either way for `netlab up` at N=1000).

Needs root. Refuses to start (exit 2) if a namespace named PREFIX* (default
nlb*) already exists. Cleans up on failure and on Ctrl-C: `netlab down`, the
script's `down`, then `ip netns del` of any namespace of its own prefixes left.
Exit codes: 0 measured (even if a target fails: this is a benchmark, not a
test), 1 a command failed (its stderr is printed), 2 cannot start.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import pwd
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = ("netlab", "script", "host-netns", "floor", "host-floor", "two-hosts", "rootless")  # in the order each run takes them
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYTHON = ROOT / ".venv" / "bin" / "python"
sys.path.insert(0, str(ROOT))
from netlab.model.star import bridge_of, extra_bridges, star_lab  # noqa: E402 - the standard library only (netlab's own imports are lazy)


class Failed(Exception):
    """A command failed; the message says which, with its stderr."""


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="nlb-bench-"))
        self.state = self.tmp / "state"
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env["NETLAB_STATE_DIR"] = str(self.state)
        self.env["NETLAB_CACHE_DIR"] = str(self.tmp / "plans")
        # compiled modules in a private cache, written once by the warm-up, as an installed netlab has them
        self.env["PYTHONPYCACHEPREFIX"] = str(self.tmp / "pycache")
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.netlab = [args.python, "-m", "netlab"]
        self.user = pwd.getpwnam(args.rootless_user) if "rootless" in args.tools else None
        self.user_home = self.tmp / "rootless"  # the ordinary user's: its state and bytecode cache
        self.labs = {}  # N -> dict(file, script, netlab_prefix, script_prefix, steps)
        self.prefixes = []  # every sandbox prefix this run may have used
        self.samples = []  # dicts: run, n, tool, action, seconds, maxrss_kb
        self.extra = []  # plan / version samples
        self.started = datetime.datetime.now().isoformat(timespec="seconds")

    # ------------------------------------------------------------ commands
    def run(self, argv, what=None, env=None):
        """Run ARGV to completion (with ENV, else this run's): (seconds, ru_maxrss in KB). Raise
        Failed if it fails. stdout goes to /dev/null, stderr to a file shown only on failure."""
        err_path = self.tmp / "stderr"
        with open(err_path, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=env or self.env, cwd=self.tmp)
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except BaseException:
                # Ctrl-C also reached the child (same process group), which rolls back:
                # let it finish before the cleanup starts; kill it if it takes too long.
                try:
                    proc.wait(timeout=120)
                except BaseException:
                    proc.kill()
                    proc.wait()
                raise
            seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            text = err_path.read_text(errors="replace").rstrip()
            tail = "\n".join(text.splitlines()[-40:]) or "(nothing on stderr)"
            raise Failed(f"{what or 'command'} failed with exit code {proc.returncode}: "
                         f"{shlex.join(map(str, argv))}\n--- its stderr (last 40 lines):\n{tail}")
        return seconds, usage.ru_maxrss

    def quiet(self, argv, check=True):
        """An untimed helper command; returns its CompletedProcess."""
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                env=self.env, cwd=self.tmp)
        if check and result.returncode != 0:
            raise Failed(f"command failed with exit code {result.returncode}: {shlex.join(map(str, argv))}\n"
                         f"{result.stderr.rstrip()}")
        return result

    def as_user(self, argv):
        """ARGV as the rootless user, in a clean environment of its own."""
        home = self.user_home
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(home),
               "XDG_RUNTIME_DIR": str(home), "NETLAB_STATE_DIR": str(home / "state"),
               "PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(home / "pycache")}
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups",
                "env", "-i", *(f"{key}={value}" for key, value in env.items()), *argv]

    def namespaces(self, prefix):
        return [name for name in netns_list() if name.startswith(prefix + "-")]

    # ------------------------------------------------------------ preparation
    def prepare(self):
        self.state.mkdir(mode=0o700)
        os.chmod(self.tmp, 0o711)  # the rootless user reads the lab files here, and nothing else
        if self.user is not None:
            self.user_home.mkdir(mode=0o700)
            os.chown(self.user_home, self.user.pw_uid, self.user.pw_gid)
        where = self.quiet([self.args.python, "-c", "import netlab, sys; sys.stdout.write(netlab.__file__)"]).stdout
        if not where.startswith(str(ROOT)):
            raise Failed(f"{self.args.python} imports netlab from {where}, not from {ROOT}")
        self.version = self.quiet(self.netlab + ["--version"]).stdout.strip()
        for n in self.args.sizes:
            name = f"star{n}"
            lab = {
                "file": self.tmp / f"{name}.yaml",
                "script": self.tmp / f"{name}.sh",
                "netlab_prefix": f"{self.args.prefix}{n}n",
                "script_prefix": f"{self.args.prefix}{n}s",
                "rootless_prefix": f"{self.args.prefix}{n}r",
                "host_prefix": f"{self.args.prefix}{n}h",
                "floor_prefix": f"{self.args.prefix}{n}f",
                "floor": self.tmp / f"{name}-floor.sh",
                "host_floor_prefix": f"{self.args.prefix}{n}g",
                "host_floor": self.tmp / f"{name}-host-floor.sh",
                "split": self.tmp / f"{name}-split.yaml",
                "split_prefix": f"{self.args.prefix}{n}m",
            }
            self.prefixes += [lab["netlab_prefix"], lab["script_prefix"], lab["host_prefix"], lab["floor_prefix"],
                              lab["host_floor_prefix"], lab["split_prefix"]]
            lab["floor"].write_text(floor_script(n, lab["floor_prefix"]))
            lab["host_floor"].write_text(floor_script(n, lab["host_floor_prefix"],
                                                      host=f"{lab['host_floor_prefix']}-given"))
            lab["file"].write_text(star_lab(n, name))
            lab["split"].write_text(star_lab(n, f"{name}s", split=True))
            os.chmod(lab["file"], 0o644)
            self.quiet(self.netlab + ["export", str(lab["file"]), "--sandbox", lab["script_prefix"],
                                      "-o", str(lab["script"])])
            # the number of steps from the script's header, not from `plan --json`: parsing a large
            # plan here would raise this process's peak RSS, which every child's ru_maxrss includes
            with open(lab["script"]) as script:
                steps = [line for line in script if line.startswith("readonly STEPS=")]
            if len(steps) != 1:
                raise Failed(f"{lab['script']}: no 'readonly STEPS=' line")
            lab["steps"] = int(steps[0].split("=", 1)[1])
            self.labs[n] = lab

    # ------------------------------------------------------------ one lab up and down
    def netlab_up_down(self, n, run):
        lab = self.labs[n]
        prefix = lab["netlab_prefix"]
        self.must_be_down(n, prefix, "netlab up")
        up = self.run(self.netlab + ["up", str(lab["file"]), "--sandbox", prefix], "netlab up")
        self.must_be_up(n, prefix, "netlab up")
        for action in ("status", "doctor"):  # the live lab's every step, read from the kernel
            seconds, kb = self.run(self.netlab + [action, prefix], f"netlab {action}")
            self.extra.append(dict(run=run, n=n, tool="netlab", action=action, seconds=seconds, maxrss_kb=kb))
        down = self.run(self.netlab + ["down", prefix], "netlab down")
        self.must_be_down(n, prefix, "netlab down", record=self.state / f"{prefix}.journal")
        return up, down

    def script_up_down(self, n, run):
        lab = self.labs[n]
        prefix = lab["script_prefix"]
        record = self.state / f"{prefix}.script"
        self.must_be_down(n, prefix, "bash lab.sh up", record=record)
        up = self.run(["bash", str(lab["script"]), "up"], "bash lab.sh up")
        self.must_be_up(n, prefix, "bash lab.sh up")
        down = self.run(["bash", str(lab["script"]), "down"], "bash lab.sh down")
        self.must_be_down(n, prefix, "bash lab.sh down", record=record)
        return up, down

    def host_netns_up_down(self, n, run):
        """The lab on a namespace that plays an existing host."""
        lab = self.labs[n]
        prefix = lab["host_prefix"]
        return self.on_a_given_host(
            n, prefix, ("netlab up --host-netns", "netlab down (--host-netns)"),
            self.netlab + ["up", str(lab["file"]), "--sandbox", prefix, "--host-netns", f"{prefix}-given"],
            self.netlab + ["down", prefix], record=self.state / f"{prefix}.journal")

    def host_floor_up_down(self, n, run):
        """The floor script on a namespace that plays an existing host."""
        lab = self.labs[n]
        return self.on_a_given_host(n, lab["host_floor_prefix"], ("the host floor up", "the host floor down"),
                                    ["bash", str(lab["host_floor"]), "up"], ["bash", str(lab["host_floor"]), "down"])

    def on_a_given_host(self, n, prefix, what, up_argv, down_argv, record=None):
        """UP_ARGV then DOWN_ARGV, timed, on PREFIX-given: a namespace made and deleted untimed, that
        plays an existing host; after the down, it must have only its lo, no rule, and the
        ip_forward it had (a new namespace copies the root namespace's)."""
        given = f"{prefix}-given"
        self.must_be_down(n, prefix, what[0])
        self.quiet(["ip", "netns", "add", given])
        forward = self.quiet(["ip", "netns", "exec", given, "sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
        up = self.run(up_argv, what[0])
        self.must_be_up(n, prefix, what[0])  # the lab's N, its wan and the given host
        down = self.run(down_argv, what[1])
        left = self.quiet(["ip", "-n", given, "-o", "link", "show"]).stdout.splitlines()
        rules = [line for line in self.quiet(["ip", "netns", "exec", given, "iptables-save"]).stdout.splitlines()
                 if line.startswith("-A")]
        after = self.quiet(["ip", "netns", "exec", given, "sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
        if len(left) != 1 or rules or after != forward:  # lo
            raise Failed(f"after {what[1]} at N={n}: left in {given}: links {left[:3]}, rules {rules[:3]}, "
                         f"ip_forward {after} (it was {forward})")
        self.quiet(["ip", "netns", "del", given])
        self.must_be_down(n, prefix, what[1], record=record)
        return up, down

    def split_up_down(self, n, run):
        """The same lab split over two sandbox hosts (netlab.model.hosts): each its half, side by side."""
        lab = self.labs[n]
        prefix = lab["split_prefix"]
        self.must_be_down(n, prefix, "netlab up (two hosts)")
        up = self.run(self.netlab + ["up", str(lab["split"]), "--sandbox", prefix], "netlab up (two hosts)")
        found = len(self.namespaces(prefix))
        if found != n + 3:  # the lab's N, the underlay and the two hosts
            raise Failed(f"after netlab up (two hosts) at N={n}: {found} namespaces {prefix}-*, expected {n + 3}")
        record = json.loads((self.state / f"{prefix}.lab").read_text())
        self.extra.append(dict(run=run, n=n, tool="split", action="timings", timings=record["timings"]))
        down = self.run(self.netlab + ["down", prefix], "netlab down (two hosts)")
        self.must_be_down(n, prefix, "netlab down (two hosts)", record=self.state / f"{prefix}.lab")
        return up, down

    def floor_up_down(self, n, run):
        lab = self.labs[n]
        prefix = lab["floor_prefix"]
        self.must_be_down(n, prefix, "floor up")
        up = self.run(["bash", str(lab["floor"]), "up"], "floor script up")
        self.must_be_up(n, prefix, "floor script up")
        down = self.run(["bash", str(lab["floor"]), "down"], "floor script down")
        self.must_be_down(n, prefix, "floor script down")
        return up, down

    def rootless_up_down(self, n, run):
        """The same lab up and down as the ordinary user: its namespaces are its keeper's, in no
        `ip netns list` here, so up and down are checked by its journal and its processes."""
        lab = self.labs[n]
        prefix = lab["rootless_prefix"]
        record = self.user_home / "state" / f"{prefix}.journal"
        up = self.run(self.as_user(self.netlab + ["up", str(lab["file"]), "--sandbox", prefix]), "rootless netlab up")
        if not record.exists():
            raise Failed(f"after rootless netlab up at N={n}: no journal {record}")
        down = self.run(self.as_user(self.netlab + ["down", prefix]), "rootless netlab down")
        left = self.user_processes()
        if record.exists() or left:
            raise Failed(f"after rootless netlab down at N={n}: journal {'left' if record.exists() else 'gone'}, "
                         f"processes left: {left[:3]}")
        return up, down

    def user_processes(self):
        result = subprocess.run(["ps", "-u", str(self.user.pw_uid), "-o", "stat=,args="], capture_output=True,
                                text=True)
        return [line for line in result.stdout.splitlines() if line.strip() and not line.split()[0].startswith("Z")]

    def must_be_up(self, n, prefix, after):
        found = len(self.namespaces(prefix))
        if found != n + 2:  # the lab's N, and the sandbox's host and wan
            raise Failed(f"after {after} at N={n}: {found} namespaces {prefix}-*, expected {n + 2}")

    def must_be_down(self, n, prefix, before_or_after, record=None):
        left = self.namespaces(prefix)
        if left:
            raise Failed(f"around {before_or_after} at N={n}: namespaces left: {' '.join(left[:5])}"
                         f"{' ...' if len(left) > 5 else ''}")
        if record is not None and record.exists():
            raise Failed(f"around {before_or_after} at N={n}: the record {record} is still there")

    # ------------------------------------------------------------ the measurements
    def measure(self):
        smallest, largest = min(self.args.sizes), max(self.args.sizes)
        every = {"netlab": self.netlab_up_down, "script": self.script_up_down, "host-netns": self.host_netns_up_down,
                 "floor": self.floor_up_down, "host-floor": self.host_floor_up_down, "two-hosts": self.split_up_down, "rootless": self.rootless_up_down}
        tools = {tool: every[tool] for tool in self.args.tools}
        say(f"warm-up (untimed): {', '.join(tools)}, up and down, N={smallest}")
        for up_down in tools.values():
            up_down(smallest, -1)
        self.run(self.netlab + ["--version"])
        for run in range(self.args.runs):
            for n in self.args.sizes:
                order = list(tools) if run % 2 == 0 else list(reversed(tools))
                for tool in order:
                    t0 = time.perf_counter()
                    (up_s, up_kb), (down_s, down_kb) = tools[tool](n, run)
                    self.samples.append(dict(run=run, n=n, tool=tool, action="up", seconds=up_s, maxrss_kb=up_kb))
                    self.samples.append(dict(run=run, n=n, tool=tool, action="down", seconds=down_s,
                                             maxrss_kb=down_kb))
                    say(f"run {run + 1}/{self.args.runs} N={n:<5} {tool:<10} up {up_s:8.3f} s  "
                        f"down {down_s:8.3f} s  ({time.perf_counter() - t0:.1f} s)")
            lab = self.labs[largest]
            plan = self.netlab + ["plan", str(lab["file"]), "--sandbox", lab["netlab_prefix"], "--json"]
            seconds, kb = self.run(plan, "netlab plan")  # its plan kept by an earlier up
            self.extra.append(dict(run=run, n=largest, tool="netlab", action="plan", seconds=seconds, maxrss_kb=kb))
            seconds, kb = self.run(plan, "netlab plan (rendered)", {**self.env, "NETLAB_CACHE_DIR": ""})
            self.extra.append(dict(run=run, n=largest, tool="netlab", action="plan-rendered", seconds=seconds,
                                   maxrss_kb=kb))
            seconds, kb = self.run(self.netlab + ["--version"], "netlab --version")
            self.extra.append(dict(run=run, n=0, tool="netlab", action="version", seconds=seconds, maxrss_kb=kb))
        # what any child's ru_maxrss reports at least: this process's own peak RSS (monotonic, so now)
        self.floor = self.run(["/bin/true"])[1]

    # ------------------------------------------------------------ cleanup
    def cleanup(self):
        """Take down whatever may be up, delete our namespaces that are left, remove the temp dir."""
        for lab in self.labs.values():
            prefix = lab["netlab_prefix"]
            if self.namespaces(prefix) or (self.state / f"{prefix}.journal").exists():
                result = self.quiet(self.netlab + ["down", prefix], check=False)
                if result.returncode:
                    warn(f"cleanup: netlab down {prefix} failed ({result.returncode}): {result.stderr.strip()}")
            prefix = lab["host_floor_prefix"]
            if lab["host_floor"].exists() and self.namespaces(prefix):
                self.quiet(["bash", str(lab["host_floor"]), "down"], check=False)
            prefix = lab["host_prefix"]
            if (self.state / f"{prefix}.journal").exists():
                result = self.quiet(self.netlab + ["down", prefix], check=False)
                if result.returncode:
                    warn(f"cleanup: netlab down {prefix} failed ({result.returncode}): {result.stderr.strip()}")
            prefix = lab["rootless_prefix"]
            if self.user is not None and (self.user_home / "state" / f"{prefix}.journal").exists():
                result = self.quiet(self.as_user(self.netlab + ["down", prefix]), check=False)
                if result.returncode:
                    warn(f"cleanup: rootless netlab down {prefix} failed ({result.returncode}): {result.stderr.strip()}")
            prefix = lab["script_prefix"]
            if lab["script"].exists() and (self.namespaces(prefix) or (self.state / f"{prefix}.script").exists()):
                result = self.quiet(["bash", str(lab["script"]), "down"], check=False)
                if result.returncode:
                    warn(f"cleanup: bash lab.sh down ({prefix}) failed ({result.returncode}): "
                         f"{result.stderr.strip()[-2000:]}")
        for name in netns_list():
            if any(name.startswith(prefix + "-") for prefix in self.prefixes):
                warn(f"cleanup: deleting the namespace {name}, left behind")
                subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------ the report
    def report(self, command):
        args = self.args
        sizes, largest = args.sizes, max(args.sizes)

        def pick(n, tool, action):
            return [s for s in self.samples if s["n"] == n and s["tool"] == tool and s["action"] == action]

        def med(n, tool, action):
            return statistics.median(s["seconds"] for s in pick(n, tool, action))

        timed = set(args.tools)
        summary = {}
        for n in sizes:
            row = {f"{tool}_{action}": med(n, tool, action)
                   for tool in ("netlab", "script") if tool in timed for action in ("up", "down")}
            row["steps"] = self.labs[n]["steps"]
            if "script" in timed:
                row["up_ratio"] = row["script_up"] / row["netlab_up"]
                row["down_ratio"] = row["script_down"] / row["netlab_down"]
            row["netlab_up_ms_per_ns"] = row["netlab_up"] / n * 1000
            row["netlab_down_ms_per_ns"] = row["netlab_down"] / n * 1000
            for action in ("up", "down"):
                row[f"netlab_{action}_peak_rss_mb"] = max(s["maxrss_kb"] for s in pick(n, "netlab", action)) / 1024
            summary[n] = row
        plan_s = statistics.median(s["seconds"] for s in self.extra if s["action"] == "plan")
        plan_mb = max(s["maxrss_kb"] for s in self.extra if s["action"] == "plan") / 1024
        rendered_s = statistics.median(s["seconds"] for s in self.extra if s["action"] == "plan-rendered")
        live = {action: statistics.median(s["seconds"] for s in self.extra if s["action"] == action and s["n"] == largest)
                for action in ("status", "doctor")}
        version_s = statistics.median(s["seconds"] for s in self.extra if s["action"] == "version")

        out = []
        out.append(f"command: {command}")
        out.append(f"{self.version} from {ROOT} ({git_revision()}), Python {args.python}; "
                   f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs; "
                   f"started {self.started}")
        out.append(f"{args.runs} run{'s' if args.runs != 1 else ''}, interleaved; medians; timed: "
                   f"{', '.join(args.tools)}. "
                   f"netlab = `netlab up/down` (batched runner); "
                   f"script = `bash lab.sh up/down` of `netlab export` (one process per command, plus each "
                   f"step's probe). Lab starN: N namespaces on one bridge, ip_forward, MASQUERADE, FORWARD, "
                   f"one DNAT per namespace, in a sandbox (steps include the sandbox's 11). Wall clock of "
                   f"the whole command, interpreter start included, bytecode cache warm.")
        out.append("")
        out.append("| N | steps | netlab up (s) | script up (s) | up ratio | netlab down (s) | script down (s) "
                   "| down ratio | netlab per namespace up / down (ms) | netlab peak RSS up / down (MB) |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in sizes:
            r = summary[n]
            script = (f"{r['script_up']:.2f} | {r['up_ratio']:.1f}x", f"{r['script_down']:.2f} | {r['down_ratio']:.1f}x") \
                if "script" in timed else ("- | -", "- | -")
            out.append(f"| {n} | {r['steps']} | {r['netlab_up']:.3f} | {script[0]} | {r['netlab_down']:.3f} | "
                       f"{script[1]} | {r['netlab_up_ms_per_ns']:.2f} / {r['netlab_down_ms_per_ns']:.2f} | "
                       f"{r['netlab_up_peak_rss_mb']:.1f} / {r['netlab_down_peak_rss_mb']:.1f} |")
        out.append("")
        compared = timed & {"host-netns", "floor", "host-floor"}
        if compared:
            out.append("On a host that exists (`--host-netns`, a namespace made just before), and the floor scripts "
                       "(one `ip -batch` per namespace through `nsenter --net=`, veths born in their namespaces, "
                       "`iptables-restore --noflush`; the floor's down deletes the namespaces and returns, the host "
                       "floor's down also puts its host back and waits until the kernel has removed the links "
                       "there, as `netlab down` does), in the same runs:")
            out.append("")
            out.append("| N | action | sandbox (s) | --host-netns (s) | floor (s) | host floor (s) "
                       "| host-netns/sandbox | sandbox/floor | host-netns/floor | host-netns/host floor |")
            out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in sizes if compared else ():
            r = summary[n]
            for tool in ("host-netns", "floor", "host-floor"):
                for action in ("up", "down"):
                    if tool in timed:
                        r[f"{tool}_{action}"] = med(n, tool, action)
            for action in ("up", "down"):
                for key, mine, theirs in ((f"host_sandbox_{action}", "host-netns", "netlab"),
                                          (f"sandbox_floor_{action}", "netlab", "floor"),
                                          (f"hostnetns_floor_{action}", "host-netns", "floor"),
                                          (f"hostnetns_hostfloor_{action}", "host-netns", "host-floor")):
                    if {mine, theirs} <= timed | {"netlab"}:
                        r[key] = r[f"{mine}_{action}"] / r[f"{theirs}_{action}"]

                def cell(key, digits=3, unit=""):
                    return f"{r[key]:.{digits}f}{unit}" if key in r else "-"

                out.append(f"| {n} | {action} | {cell(f'netlab_{action}')} | {cell(f'host-netns_{action}')} | "
                           f"{cell(f'floor_{action}')} | {cell(f'host-floor_{action}')} | "
                           f"{cell(f'host_sandbox_{action}', 2, 'x')} | {cell(f'sandbox_floor_{action}', 2, 'x')} | "
                           f"{cell(f'hostnetns_floor_{action}', 2, 'x')} | "
                           f"{cell(f'hostnetns_hostfloor_{action}', 2, 'x')} |")
        rootless = self.user is not None
        if rootless:
            out.append("")
            out.append(f"Rootless: the same `netlab up`/`down` as the ordinary user {self.user.pw_name} (no root; "
                       f"the lab in its keeper's user namespaces), against netlab as root, in the same runs:")
            out.append("")
            out.append("| N | root up (s) | rootless up (s) | rootless/root up | root down (s) | rootless down (s) "
                       "| rootless/root down |")
            out.append("|---:|---:|---:|---:|---:|---:|---:|")
            for n in sizes:
                r = summary[n]
                r["rootless_up"], r["rootless_down"] = med(n, "rootless", "up"), med(n, "rootless", "down")
                r["rootless_up_ratio"] = r["rootless_up"] / r["netlab_up"]
                r["rootless_down_ratio"] = r["rootless_down"] / r["netlab_down"]
                out.append(f"| {n} | {r['netlab_up']:.3f} | {r['rootless_up']:.3f} | {r['rootless_up_ratio']:.2f}x | "
                           f"{r['netlab_down']:.3f} | {r['rootless_down']:.3f} | {r['rootless_down_ratio']:.2f}x |")
        if "two-hosts" in timed:
            out.append("")
            out.append("The same lab split over two sandbox hosts (netlab.model.hosts: each host its bridge and half "
                       "the namespaces and rules, the bridges joined by VXLAN, the hosts' plans run side by side after "
                       "the underlay's), against it on one, in the same runs; each host's up from the lab record's "
                       "timings (last run), and how long both were running at once:")
            out.append("")
            out.append("| N | one host up (s) | two hosts up (s) | two/one up | one host down (s) | two hosts down (s) "
                       "| underlay up (s) | host a up (s) | host b up (s) | a and b at once (s) |")
            out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in sizes if "two-hosts" in timed else ():
            r = summary[n]
            r["split_up"], r["split_down"] = med(n, "two-hosts", "up"), med(n, "two-hosts", "down")
            last = [s["timings"] for s in self.extra if s["action"] == "timings" and s["n"] == n][-1]
            (a0, a1), (b0, b1) = last["a"], last["b"]
            r["split_a"], r["split_b"], r["split_overlap"] = a1 - a0, b1 - b0, max(0.0, min(a1, b1) - max(a0, b0))
            r["split_underlay"] = last["underlay"][1] - last["underlay"][0]
            out.append(f"| {n} | {r['netlab_up']:.3f} | {r['split_up']:.3f} | {r['split_up'] / r['netlab_up']:.2f}x | "
                       f"{r['netlab_down']:.3f} | {r['split_down']:.3f} | {r['split_underlay']:.3f} | "
                       f"{r['split_a']:.3f} | {r['split_b']:.3f} | {r['split_overlap']:.3f} |")
        out.append("")
        out.append(f"`netlab plan star{largest}.yaml --sandbox {self.labs[largest]['netlab_prefix']} --json "
                   f"> /dev/null` (N={largest}, {self.labs[largest]['steps']} steps): median {plan_s:.3f} s, "
                   f"peak RSS {plan_mb:.1f} MB, its plan kept from the lab's `up`; rendered anew "
                   f"(NETLAB_CACHE_DIR=''): {rendered_s:.3f} s")
        out.append(f"`netlab status NAME` / `netlab doctor NAME` of the lab up (N={largest}): median "
                   f"{live['status']:.3f} s / {live['doctor']:.3f} s")
        out.append(f"`netlab --version` (CLI start): median {version_s:.3f} s")
        out.append(f"Peak RSS: max over runs of ru_maxrss from wait4 (MB = 1024 KB); the floor that any child "
                   f"of this benchmark reports is {self.floor / 1024:.1f} MB (its own pages at spawn time).")
        out.append("")
        out.append("Each run, in seconds (run order):")
        for n in sizes:
            for tool in args.tools:
                for action in ("up", "down"):
                    values = " ".join(f"{s['seconds']:.3f}" for s in pick(n, tool, action))
                    out.append(f"  N={n:<5} {tool:<10} {action:<4} {values}")
        for action, label in (("plan", f"N={largest:<5} netlab plan"), ("plan-rendered", f"N={largest:<5} plan, rendered"),
                              ("version", "netlab --version   ")):
            values = " ".join(f"{s['seconds']:.3f}" for s in self.extra if s["action"] == action)
            out.append(f"  {label} {values}")

        targets = []

        def target(name, ok, detail):
            targets.append(dict(target=name, result=("SKIP" if ok is None else "PASS" if ok else "FAIL"),
                                detail=detail))

        if 200 in summary and "script" in timed:
            r = summary[200]
            target("N=200: up ratio >= 8 and netlab up < 1 s", r["up_ratio"] >= 8 and r["netlab_up"] < 1,
                   f"ratio {r['up_ratio']:.1f}x, netlab up {r['netlab_up']:.3f} s")
            target("N=200: down ratio >= 15 and netlab down < 0.5 s",
                   r["down_ratio"] >= 15 and r["netlab_down"] < 0.5,
                   f"ratio {r['down_ratio']:.1f}x, netlab down {r['netlab_down']:.3f} s")
        else:
            why = "N=200 not measured" if 200 not in summary else "the script not timed (--tools)"
            target("N=200: up ratio >= 8 and netlab up < 1 s", None, why)
            target("N=200: down ratio >= 15 and netlab down < 0.5 s", None, why)
        for action in ("up", "down"):
            name = (f"flat per-namespace {action} cost: netlab {action} / N at the largest N <= 1.5 x the same at N=50 "
                    f"(lower is fine: start-up amortizes)")
            if 50 in summary and largest > 50:
                small, big = summary[50][f"netlab_{action}"] / 50, summary[largest][f"netlab_{action}"] / largest
                marginal = [(summary[k][f"netlab_{action}"] - version_s) / k * 1000 for k in (50, largest)]
                target(name, big <= 1.5 * small,
                       f"N={largest}: {big * 1000:.2f} ms vs N=50: {small * 1000:.2f} ms ({big / small:.2f}x); "
                       f"without the CLI start ({version_s:.3f} s): {marginal[1]:.2f} vs {marginal[0]:.2f} ms")
            else:
                target(name, None, "needs N=50 and a larger N")
        # from N=200 up, the kernel's own cost per namespace grows (a bridge of more ports, longer
        # chains): netlab's may grow as much as the floor script's, not more
        name = ("flat per-namespace up cost from N=200 to the largest N: netlab's up / N grows at most 1.15x as "
                "much as the floor script's")
        if 200 in summary and largest > 200 and "floor" in timed:
            growth = {tool: (summary[largest][f"{tool}_up"] / largest) / (summary[200][f"{tool}_up"] / 200)
                      for tool in ("netlab", "floor")}
            target(name, growth["netlab"] <= 1.15 * growth["floor"],
                   f"netlab {summary[200]['netlab_up'] / 200 * 1000:.2f} -> "
                   f"{summary[largest]['netlab_up'] / largest * 1000:.2f} ms ({growth['netlab']:.2f}x), "
                   f"floor {summary[200]['floor_up'] / 200 * 1000:.2f} -> "
                   f"{summary[largest]['floor_up'] / largest * 1000:.2f} ms ({growth['floor']:.2f}x)")
        else:
            target(name, None, "needs N=200, a larger N and the floor")
        name = "N=200: up --host-netns within 1.15x of up --sandbox and 1.3x of the floor"
        if 200 in summary and timed >= {"host-netns", "floor"}:
            r = summary[200]
            target(name, r["host_sandbox_up"] <= 1.15 and r["hostnetns_floor_up"] <= 1.3,
                   f"{r['host_sandbox_up']:.2f}x of sandbox, {r['hostnetns_floor_up']:.2f}x of the floor")
        else:
            target(name, None, "needs N=200, --host-netns and the floor")
        name = "N=200: down --host-netns within 1.3x of the floor (whose ip netns del returns before the kernel's work)"
        if 200 in summary and timed >= {"host-netns", "floor"}:
            target(name, summary[200]["hostnetns_floor_down"] <= 1.3, f"{summary[200]['hostnetns_floor_down']:.2f}x")
        else:
            target(name, None, "needs N=200, --host-netns and the floor")
        name = "N=200: down --host-netns within 1.3x of the host floor (the same work, to the host as before)"
        if 200 in summary and timed >= {"host-netns", "host-floor"}:
            target(name, summary[200]["hostnetns_hostfloor_down"] <= 1.3,
                   f"{summary[200]['hostnetns_hostfloor_down']:.2f}x "
                   f"({summary[200]['host-netns_down']:.3f} s against {summary[200]['host-floor_down']:.3f} s)")
        else:
            target(name, None, "needs N=200, --host-netns and host-floor")
        name = "N=200: up --sandbox within 1.3x of the floor"
        if 200 in summary and "floor" in timed:
            target(name, summary[200]["sandbox_floor_up"] <= 1.3, f"{summary[200]['sandbox_floor_up']:.2f}x")
        else:
            target(name, None, "needs N=200 and the floor")
        name = "N=200: rootless up and down within 1.3x of root"
        if rootless and 200 in summary:
            r = summary[200]
            target(name, r["rootless_up_ratio"] <= 1.3 and r["rootless_down_ratio"] <= 1.3,
                   f"up {r['rootless_up_ratio']:.2f}x, down {r['rootless_down_ratio']:.2f}x")
        else:
            target(name, None, "N=200 not measured" if rootless else "--no-rootless")
        for n, limit in ((1000, 60), (5000, 100)):
            name = f"N={n}: netlab down peak RSS < {limit} MB" + (" (and up's)" if n == 5000 else "")
            if n in summary:
                mb = (summary[n]["netlab_down_peak_rss_mb"], summary[n]["netlab_up_peak_rss_mb"])
                target(name, mb[0] < limit and (n != 5000 or mb[1] < limit), f"down {mb[0]:.1f} MB, up {mb[1]:.1f} MB")
            else:
                target(name, None, f"N={n} not measured")
        if largest == 1000:
            target("N=1000: netlab plan --json < 1 s", plan_s < 1, f"{plan_s:.3f} s (rendered anew: {rendered_s:.3f} s)")
            target("N=1000: netlab status NAME < 1 s", live["status"] < 1, f"{live['status']:.3f} s")
            target("N=1000: netlab doctor NAME < 2 s", live["doctor"] < 2, f"{live['doctor']:.3f} s")
        else:
            for name in ("netlab plan --json < 1 s", "netlab status NAME < 1 s", "netlab doctor NAME < 2 s"):
                target(f"N=1000: {name}", None, f"timed at the largest N, here {largest}, not 1000")

        out.append("")
        out.append("Targets:")
        for t in targets:
            out.append(f"  {t['result']:<4} {t['target']}: {t['detail']}")
        print("\n".join(out), flush=True)

        if args.json:
            data = dict(command=command, version=self.version, python=args.python, revision=git_revision(),
                        host=platform.node(), kernel=platform.release(), cpus=os.cpu_count(),
                        date=self.started, runs=args.runs, sizes=sizes,
                        steps={n: self.labs[n]["steps"] for n in sizes}, rss_floor_kb=self.floor,
                        samples=self.samples, extra=self.extra, summary=summary, targets=targets)
            Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
            print(f"raw timings written to {args.json}")


# ---------------------------------------------------------------- the floor
def floor_script(n: int, prefix: str, host: str = None) -> str:
    """A bash script whose `up` builds netlab.model.star's lab of N (in a sandbox named PREFIX, as
    netlab's) with about the fewest processes, and whose `down` deletes its namespaces. With HOST
    (a namespace that exists), the lab is applied to it as `netlab up --host-netns HOST` does, and
    `down` puts HOST back as it was and waits until the kernel has removed the lab's links there."""
    lab_namespaces = [f"{prefix}-n{i}" for i in range(n)]
    own = host is None
    host = host or f"{prefix}-host"
    spaces = [*([host] if own else []), f"{prefix}-wan", *lab_namespaces]

    def enter(netns, lines, command="ip -batch -", then=""):
        return [f"nsenter --net=/run/netns/{netns} {command} <<'END'{then}", *lines, "END"]

    def address(i):
        return f"10.10.{(i + 2) // 256}.{(i + 2) % 256}"

    host_side = ["link set lo up", f"link add ens3 type veth peer name wan0 netns {prefix}-wan",
                 "addr add 203.0.113.2/24 dev ens3", "link set ens3 up", "route add default via 203.0.113.1",
                 "link add br0 type bridge", "link set br0 up", "addr add 10.10.0.1/16 dev br0"]
    for k in extra_bridges(n):
        host_side += [f"link add br{k} type bridge", f"link set br{k} up",
                      f"link add brl{k} type veth peer name brl{k}p", f"link set brl{k} master br0",
                      f"link set brl{k}p master br{k}", f"link set brl{k} up", f"link set brl{k}p up"]
    for i in range(n):
        host_side += [f"link add veth{i} type veth peer name ceth{i} netns {prefix}-n{i}",
                      f"link set veth{i} master {bridge_of(i)}", f"link set veth{i} up"]
    wan = ["link set lo up", "addr add 203.0.113.1/24 dev wan0", "link set wan0 up", "addr add 198.51.100.1/32 dev lo"]
    rules = ["-A POSTROUTING -s 10.10.0.0/16 ! -o br0 -j MASQUERADE",
             *(f"-A PREROUTING -d 203.0.113.2 -p tcp -m tcp --dport {10000 + i} -j DNAT --to-destination "
               f"{address(i)}:80" for i in range(n))]
    filters = ["-A FORWARD -i br0 -j ACCEPT", "-A FORWARD -o br0 -j ACCEPT"]

    def restore(verb):
        return ["*nat", *(rule.replace("-A ", f"{verb} ", 1) for rule in rules), "COMMIT",
                "*filter", *(rule.replace("-A ", f"{verb} ", 1) for rule in filters), "COMMIT"]

    up = ["ip -batch - <<'END'", *(f"netns add {name}" for name in spaces), "END",
          *enter(host, host_side), *enter(f"{prefix}-wan", wan)]
    for i in range(n):
        up += enter(f"{prefix}-n{i}", [f"link set ceth{i} up", f"addr add {address(i)}/16 dev ceth{i}",
                                        "route add default via 10.10.0.1"])
    up += [*([] if own else [f'nsenter --net=/run/netns/{host} sysctl -n net.ipv4.ip_forward > "$0.forward"']),
           f"nsenter --net=/run/netns/{host} sysctl -qw net.ipv4.ip_forward=1",
           *enter(host, restore("-A"), "iptables-restore --noflush")]
    down = ["ip -batch - <<'END'", *(f"netns del {name}" for name in spaces), "END"]
    if not own:  # the host side, newest first (the veths' host ends go with the lab's namespaces)
        links = [f"link del brl{k}" for k in reversed(extra_bridges(n))]
        links += [f"link del br{k}" for k in reversed(extra_bridges(n))]
        links += ["link del br0", "route del default via 203.0.113.1", "link set lo down"]
        # the default route may be gone with the uplink already: -force, and the host is checked after
        down += [*enter(host, links, "ip -force -batch -", " || true"),
                 *enter(host, restore("-D"), "iptables-restore --noflush"),
                 f'nsenter --net=/run/netns/{host} sysctl -qw net.ipv4.ip_forward="$(cat "$0.forward")"',
                 'deadline=$((SECONDS + 30))',
                 f'while [ -n "$(nsenter --net=/run/netns/{host} ip -o link show type veth)" ]; do',
                 '  [ $SECONDS -lt $deadline ] || { echo "the kernel has not removed the veths after 30 s" >&2; exit 1; }',
                 "  sleep 0.005", "done"]
    return "\n".join(["#!/bin/bash", f"# The floor of netlab's star lab of {n} (scripts/bench.py).", "set -euo pipefail",
                      'case "${1:-}" in', "up)", *up, ";;", "down)", *down, ";;",
                      '*) echo "usage: $0 up|down" >&2; exit 2;;', "esac", ""])


# ---------------------------------------------------------------- helpers
def say(text):
    print(text, file=sys.stderr, flush=True)


def warn(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


def netns_list():
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def git_revision():
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no git"
    return f"git {head}{' + uncommitted changes' if dirty else ''}"


def sizes_type(text):
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    if not sizes or any(n < 1 or n > 5000 for n in sizes):
        raise argparse.ArgumentTypeError("sizes are numbers from 1 to 5000")
    return list(dict.fromkeys(sizes))


def tools_type(text):
    tools = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [tool for tool in tools if tool not in TOOLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{unknown[0]!r} is not one of {', '.join(TOOLS[1:])}")
    return [tool for tool in TOOLS if tool == "netlab" or tool in tools]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Time `netlab up`/`down` (the batched runner) against the exported bash script's "
                    "`up`/`down` (one process per command) on generated labs of N namespaces on one bridge "
                    "(ip_forward, MASQUERADE, FORWARD, one DNAT per namespace), in sandboxes, interleaved; "
                    "print a markdown table, the peak RSS of netlab up, `netlab plan --json` and "
                    "`netlab --version` times, and whether the targets are met. Needs root; only namespaces "
                    "named PREFIX* change. Exit 0 even if a target fails; 1 if a command fails; 2 if it "
                    "cannot start.",
        epilog="Example: sudo python3 scripts/bench.py --sizes 10,50,200,1000 --runs 5 --json bench.json")
    parser.add_argument("--sizes", type=sizes_type, default=[10, 50, 200], metavar="N,N,...",
                        help="lab sizes: numbers of namespaces (default: 10,50,200)")
    parser.add_argument("--runs", type=int, default=3, metavar="R",
                        help="runs of each measurement; medians are reported (default: 3, at least 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw timings and the summary to FILE")
    parser.add_argument("--python",
                        help=f"the interpreter that runs netlab, with PYTHONPATH={ROOT} so that the working "
                             f"tree's netlab is used (default: {DEFAULT_PYTHON} if it exists, else the one "
                             f"running this script)")
    parser.add_argument("--rootless-user", default="nobody", metavar="USER",
                        help="the ordinary user who runs the rootless row (default: nobody)")
    parser.add_argument("--no-rootless", dest="rootless_user", action="store_const", const=None,
                        help="no rootless row")
    parser.add_argument("--tools", type=tools_type, default=list(TOOLS), metavar="TOOL,...",
                        help=f"what to time beside netlab (always timed): some of {', '.join(TOOLS[1:])} "
                             f"(default: all)")
    parser.add_argument("--prefix", default="nlb",
                        help="start of the sandbox prefixes: PREFIX<N>n for netlab, PREFIX<N>s for the script "
                             "(default: nlb); no namespace named PREFIX* may exist before the run")
    args = parser.parse_args(argv)
    if args.python is None:
        args.python = str(DEFAULT_PYTHON) if os.access(DEFAULT_PYTHON, os.X_OK) else sys.executable
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.rootless_user is None:
        args.tools = [tool for tool in args.tools if tool != "rootless"]
    elif "rootless" in args.tools:
        try:
            pwd.getpwnam(args.rootless_user)
        except KeyError:
            parser.error(f"--rootless-user: there is no user {args.rootless_user!r}")
    if not args.prefix.replace("_", "").isalnum() or not args.prefix[0].isalpha():
        parser.error("--prefix: letters, digits and '_', starting with a letter")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    if os.geteuid() != 0:
        print("bench: needs root (it creates network namespaces): sudo python3 scripts/bench.py ...",
              file=sys.stderr)
        return 2
    for tool in ("ip", "iptables", "iptables-restore", "bash", "sysctl", "nsenter"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed", file=sys.stderr)
            return 2
    leftovers = [name for name in netns_list() if name.startswith(args.prefix)]
    if leftovers:
        print(f"bench: namespaces named {args.prefix}* exist already ({' '.join(leftovers[:8])}"
              f"{' ...' if len(leftovers) > 8 else ''}); if they are left from an earlier benchmark, remove them "
              f"with: ip netns list | awk '/^{args.prefix}/ {{print $1}}' | xargs -r -n1 ip netns del",
              file=sys.stderr)
        return 2

    # SIGTERM / SIGHUP unwind like Ctrl-C, so that the cleanup runs.
    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    bench = Bench(args)
    code = 0
    try:
        bench.prepare()
        bench.measure()
    except Failed as error:
        print(f"bench: {error}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        code = 130
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # let the cleanup finish
        say("cleaning up")
        bench.cleanup()
    if code == 0:
        bench.report(command)
    return code


if __name__ == "__main__":
    sys.exit(main())
