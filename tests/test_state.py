"""Trust in state files, and journal writes that fail: as root, through the CLI.

`down` and `status` act on what a journal says, so a state directory or a file
in it that someone else could have written is refused (exit 2, one line that
names the path and the fix) and nothing is run, changed or chmodded. A journal
that cannot be written (a full disk, a file size limit) during `up` rolls the
lab back and says why, and never leaves a journal `down` cannot read.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RUN_ENV, namespaces, sh, wait_stopped
from kernel import changes, settled, snapshot
from netlab.model.star import star_lab

pytestmark = pytest.mark.root
NOBODY = 65534
FIX = "refusing to use it (remove it, or set NETLAB_STATE_DIR to a directory of your own)"


def netlab(state: Path, *args, pause=None, **kwargs):
    env = {**os.environ, "NETLAB_STATE_DIR": str(state)}
    env.pop("NETLAB_TEST_PAUSE", None)
    if pause:
        env["NETLAB_TEST_PAUSE"] = pause
    argv = [sys.executable, "-m", "netlab", *map(str, args)]
    if kwargs.pop("background", False):
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                stdin=subprocess.DEVNULL, **kwargs)
    return subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)


def refused(result, path, why, where="") -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"netlab: error: {where}{path} {why}; {FIX}\n"


@pytest.fixture
def state(tmp_path):
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def lab_up(state, sandbox_prefix):
    """bridge-3ns up in a sandbox; taken down after the test, with a state dir of our own."""
    result = netlab(state, "up", "bridge-3ns", "--sandbox", sandbox_prefix)
    assert result.returncode == 0, result.stderr
    yield state / f"{sandbox_prefix}.journal"
    for path in state.iterdir():  # whatever the test planted, so the real journal is used again
        if path.is_symlink() or not path.name.endswith(".journal"):
            path.unlink()
    os.chown(state, 0, 0)
    os.chmod(state, 0o700)
    for journal in state.glob("*.journal"):
        os.chown(journal, 0, 0)
        os.chmod(journal, 0o600)
    netlab(state, "down", sandbox_prefix)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_state_dir_others_can_write_is_refused_and_left_as_it_is(state, mode):
    os.chmod(state, mode)
    for args in (("status",), ("down", "box1"), ("up", "ns-basics", "--sandbox", "nltx")):
        refused(netlab(state, *args), state, f"is writable by group or others (mode {mode:04o})", "NETLAB_STATE_DIR: ")
        assert stat.S_IMODE(os.stat(state).st_mode) == mode, "the directory was chmodded before it was checked"
    assert not [name for name in namespaces() if name.startswith("nltx-")]


def test_a_state_dir_of_another_user_is_refused(state):
    os.chown(state, NOBODY, NOBODY)
    refused(netlab(state, "status"), state, f"belongs to another user (uid {NOBODY})", "NETLAB_STATE_DIR: ")


def test_a_planted_journal_is_never_run(state, lab_up, sandbox_prefix, tmp_path):
    """A journal that is a symlink, another user's, or writable by others: status and down
    refuse it (status does not skip it), and the lab it names is left as it is."""
    before = settled(snapshot(sandbox_prefix))
    real = tmp_path / "real.journal"
    os.rename(lab_up, real)
    lab_up.symlink_to(real)
    for args in (("status",), ("status", sandbox_prefix), ("down", sandbox_prefix)):
        refused(netlab(state, *args), lab_up, "is a symlink")
    lab_up.unlink()
    os.rename(real, lab_up)
    os.chown(lab_up, NOBODY, NOBODY)
    refused(netlab(state, "down", sandbox_prefix), lab_up, f"belongs to another user (uid {NOBODY})")
    os.chown(lab_up, 0, 0)
    os.chmod(lab_up, 0o666)
    refused(netlab(state, "down", sandbox_prefix), lab_up, "is writable by group or others (mode 0666)")
    assert settled(snapshot(sandbox_prefix)) == before


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_lock_that_is_not_a_file_is_one_clear_line(state, sandbox_prefix, kind, tmp_path):
    lock = state / f"{sandbox_prefix}.lock"
    if kind == "fifo":
        os.mkfifo(lock, 0o600)
        why = "is not a regular file"
    else:
        lock.symlink_to(tmp_path / "elsewhere")
        why = "is a symlink"
    refused(netlab(state, "up", "ns-basics", "--sandbox", sandbox_prefix), lock, why)
    assert not (tmp_path / "elsewhere").exists()
    assert not [name for name in namespaces() if name.startswith(f"{sandbox_prefix}-")]


# ------------------------------------------------------------ the exported script
def test_the_script_checks_its_state_dir_before_it_changes_anything(state, sandbox_prefix, tmp_path):
    script = tmp_path / "lab.sh"
    assert netlab(state, "export", "ns-basics", "--sandbox", sandbox_prefix, "-o", script).returncode == 0
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NETLAB_STATE_DIR": str(state), **RUN_ENV}
    run = lambda: subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, env=env,  # noqa: E731
                                 stdin=subprocess.DEVNULL, timeout=120)
    os.chmod(state, 0o777)
    result = run()
    assert result.returncode == 2 and f"{state} is writable by group or others (mode 777)" in result.stderr
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o777
    os.chmod(state, 0o700)
    journal = state / f"{sandbox_prefix}.script"
    journal.symlink_to(tmp_path / "elsewhere")
    result = run()
    assert result.returncode == 2 and f"{journal} is a symlink; refusing to use it" in result.stderr
    assert not (tmp_path / "elsewhere").exists()
    assert not [name for name in namespaces() if name.startswith(f"{sandbox_prefix}-")]


# ------------------------------------------------------------ journal writes that fail
@pytest.fixture
def star50(tmp_path):
    path = tmp_path / "star50.yaml"
    path.write_text(star_lab(50, "star50"))
    return path


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 2 MiB tmpfs (mounted under the test's own directory: no network is touched)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount), check=True)
    yield mount
    sh("umount", "-l", str(mount))


@pytest.mark.parametrize("mode", ["batched", "step-by-step"])
def test_a_full_disk_during_up_rolls_back_and_says_why(tiny_tmpfs, star50, sandbox_prefix, mode):
    """up pauses after its first step is recorded; the disk is then filled; the next page
    of the journal cannot be written (star50 writes far more than one page)."""
    state = tiny_tmpfs / "state"
    before = snapshot(sandbox_prefix)
    extra = ("--step-by-step",) if mode == "step-by-step" else ()
    process = netlab(state, "up", star50, "--sandbox", sandbox_prefix, *extra, pause="start:1", background=True)
    try:
        wait_stopped(process.pid)
        fd = os.open(tiny_tmpfs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill every page that is left
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
    finally:
        process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("netlab: error: cannot write the journal ") and "No space left on device" in last
    assert last.endswith("rolled back: the host is as it was")
    assert changes(before, snapshot(sandbox_prefix)) == []
    (tiny_tmpfs / "filler").unlink()
    assert netlab(state, "status").stdout.strip() == "no labs are up"
    down = netlab(state, "down", sandbox_prefix)
    assert down.returncode == 0, down.stderr


def test_a_file_size_limit_during_up_rolls_back_and_down_can_read_what_is_left(state, star50, sandbox_prefix):
    """RLIMIT_FSIZE set on the paused up (prlimit): a write that passes it fails (EFBIG)."""
    before = snapshot(sandbox_prefix)
    process = netlab(state, "up", star50, "--sandbox", sandbox_prefix, "--step-by-step", pause="done:3",
                     background=True)
    try:
        wait_stopped(process.pid)
        journal = state / f"{sandbox_prefix}.journal"
        limit = journal.stat().st_size + 100
        sh("prlimit", f"--pid={process.pid}", f"--fsize={limit}", check=True)
    finally:
        process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, out + err
    assert "cannot write the journal" in err and "File too large" in err
    if journal.exists():  # the rollback could not remove what it could not write: down reads it
        down = netlab(state, "down", sandbox_prefix)
        assert down.returncode == 0, down.stderr
    assert changes(before, snapshot(sandbox_prefix)) == []


# ------------------------------------------------------------ the same on a remote host
def _remote_sh(script: str, *args: str):
    """A remote store's shell script as the remote host runs it (`sh -c SCRIPT sh ARGS`)."""
    return subprocess.run(["sh", "-c", script, "sh", *args], capture_output=True, text=True, timeout=30)


def test_a_remote_store_trusts_its_files_as_the_local_one_does(tmp_path):
    """The remote state directory and journals go through the same refusals, in POSIX shell:
    exit 2 (InputError on the netlab side), one line, nothing chmodded or read."""
    from netlab.remote import state as remote

    directory = tmp_path / "remote-state"
    directory.mkdir(mode=0o700)
    assert _remote_sh(remote._STATE_DIR, str(directory), "create").stdout.strip() == str(directory)
    os.chmod(directory, 0o777)
    said = _remote_sh(remote._STATE_DIR, str(directory), "create")
    assert said.returncode == 2 and said.stderr == f"{directory} is writable by group or others (mode 777); {FIX}\n"
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o777, "chmodded before it was checked"
    os.chmod(directory, 0o700)
    os.chown(directory, NOBODY, NOBODY)
    said = _remote_sh(remote._STATE_DIR, str(directory), "")
    assert said.returncode == 2 and f"{directory} belongs to another user (uid {NOBODY})" in said.stderr
    os.chown(directory, 0, 0)

    journal = directory / "box1.journal"
    (tmp_path / "elsewhere").write_text('{"netlab_journal": 1}\n')
    journal.symlink_to(tmp_path / "elsewhere")
    for script in (remote._READ, remote._LIST):
        said = _remote_sh(script, str(journal) if script is remote._READ else str(directory))
        assert said.returncode == 2 and said.stderr == f"{journal} is a symlink; {FIX}\n" and said.stdout == ""
    journal.unlink()
    journal.write_text('{"netlab_journal": 1}\n')
    os.chmod(journal, 0o620)
    said = _remote_sh(remote._READ, str(journal))
    assert said.returncode == 2 and said.stderr == f"{journal} is writable by group or others (mode 620); {FIX}\n"
    os.chmod(journal, 0o600)
    assert _remote_sh(remote._READ, str(journal)).stdout == '{"netlab_journal": 1}\n'
    assert _remote_sh(remote._READ, str(directory / "none.journal")).returncode == 3  # no journal: not up
