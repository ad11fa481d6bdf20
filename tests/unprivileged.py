"""Test helpers for rootless labs: ordinary users, and netlab as one of them runs it.

CI runs as root, so the rootless tests make their own users: `nlt…u1`,
`nlt…u2` (the run's prefix and a number), each with a runtime directory of
its own under /tmp as its XDG_RUNTIME_DIR and HOME, removed with the user,
and its processes killed, when the session ends. netlab runs as such a user
from a stage: a world-readable copy of this netlab and the packages it
imports, run by the system's python3 (a checkout or a virtualenv under
/root would not be reachable by another user).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from conftest import RUN_ENV, RUN_PREFIX, sh

SYSTEM_PYTHON = "/usr/bin/python3"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path  # also its XDG_RUNTIME_DIR

    @property
    def state_dir(self) -> Path:
        return self.home / "netlab"


def make_user(number: int) -> User:
    name = f"{RUN_PREFIX}u{number}"
    sh("useradd", "--no-create-home", "--no-user-group", "--gid", "nogroup", "--home-dir", "/nonexistent",
       "--shell", "/usr/sbin/nologin", name, check=True)
    entry = pwd.getpwnam(name)
    home = Path(f"/tmp/{name}-run")
    home.mkdir(mode=0o700)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    return User(name, entry.pw_uid, entry.pw_gid, home)


def live_processes(user: User) -> list:
    """USER's processes that still run (a zombie waits for init to collect it: it runs nothing)."""
    result = sh("ps", "-u", str(user.uid), "-o", "pid=,stat=,args=")
    return [line.strip() for line in result.stdout.splitlines() if line.strip() and not line.split()[1].startswith("Z")]


def remove_user(user: User) -> None:
    sh("pkill", "-9", "-u", str(user.uid))
    sh("userdel", user.name)
    shutil.rmtree(user.home, ignore_errors=True)


def make_stage() -> Path:
    """A directory every user can read, with netlab (its templates inside) and the packages
    of the interpreter running the tests, for the system's python3."""
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        raise RuntimeError(f"{SYSTEM_PYTHON} is Python {version}, the tests run {sys.version_info[:2]}: the "
                           f"packages' compiled parts need the same (run scripts/setup, which makes the venv with it)")
    import netlab

    stage = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}-stage-"))
    site = stage / "site"
    shutil.copytree(sysconfig.get_paths()["purelib"], site, symlinks=True,
                    ignore=shutil.ignore_patterns("__editable__*", "netlab", "__pycache__"))
    package = Path(netlab.__file__).parent
    shutil.copytree(package, site / "netlab", ignore=shutil.ignore_patterns("__pycache__", "templates"))
    templates = package / "templates" if (package / "templates").is_dir() else package.parent / "templates"
    shutil.copytree(templates, site / "netlab" / "templates")
    subprocess.run([SYSTEM_PYTHON, "-m", "compileall", "-q", str(site)], check=False, capture_output=True)
    os.chmod(stage, 0o755)
    for root, dirs, files in os.walk(stage):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return stage


def user_argv(user: User, stage: Path, *argv, **env) -> list:
    """ARGV run as USER, in a clean environment: its runtime directory, the stage, the run's mark."""
    values = {"PATH": PATH, "HOME": str(user.home), "XDG_RUNTIME_DIR": str(user.home), "LANG": "C.UTF-8",
              "PYTHONPATH": str(stage / "site"), **RUN_ENV, **env}
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "env", "-i",
            *(f"{key}={value}" for key, value in values.items()), *map(str, argv)]


def as_user(user: User, stage: Path, *args, timeout=300, **env) -> subprocess.CompletedProcess:
    """`netlab ARGS` run by USER."""
    return subprocess.run(user_argv(user, stage, SYSTEM_PYTHON, "-m", "netlab", *args, **env), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)
