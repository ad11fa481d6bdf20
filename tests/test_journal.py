"""The journal and the lock, as pure file code: no root, no namespaces."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

import netlab
from conftest import wait_stopped
from netlab.errors import InputError
from netlab.run import journal, store


def _journal(directory, name="box1", lab="egress-ingress"):
    plan = netlab.make_plan(lab, sandbox=name)
    header = {"name": plan.name, "lab": plan.lab, "digest": plan.digest,
              "steps": [step.to_dict() for step in plan.steps]}
    return journal.Journal.create(store.journal_path(directory, name), header)


def test_records_are_read_back_and_a_torn_last_line_is_dropped(tmp_path):
    record = _journal(tmp_path)
    for event in ({"start": 1}, {"done": 1}, {"start": 2}, {"done": 2}, {"start": 3}, {"failed": 3},
                  {"saved": 4, "value": "0"}, {"start": 4}):
        record.append(**event)
    record.close()
    with open(record.path, "a") as handle:
        handle.write('{"done": 4')  # kill -9 in the middle of a write
    again = store.read_journal(record.path)
    assert again.started == [1, 2, 3, 4]
    assert again.done == {1, 2}
    assert again.saved == {4: "0"}
    assert again.to_undo() == [4, 2, 1]  # a failed step met something that was not the lab's
    assert not again.complete and again.from_this_boot
    total = len(netlab.make_plan("egress-ingress", sandbox="box1").steps)
    assert [step.index for step in again.steps()] == list(range(1, total + 1))
    assert again.header["pid"] == os.getpid()
    assert oct(record.path.stat().st_mode & 0o777) == "0o600"


def test_a_record_after_a_torn_line_is_not_lost(tmp_path):
    record = _journal(tmp_path)
    record.append(start=1)
    record.close()
    with open(record.path, "a") as handle:
        handle.write('{"done": 1')
    again = store.read_journal(record.path).open_for_append()
    again.append(rollback=True)
    again.close()
    assert store.read_journal(record.path).has("rollback")
    assert [p.name for p in tmp_path.iterdir()] == ["box1.journal"]  # no temporary file left by create


def test_what_a_journal_says_follows_the_records_appended_after_a_question(tmp_path):
    """done, saved and servers are gathered once and then only from the records appended since."""
    record = _journal(tmp_path)
    record.append_many([{"start": 1}, {"done": 1}, {"start": 2}])
    assert (record.started, record.done, record.saved, record.servers) == ([1, 2], {1}, {}, {})
    record.append(saved=2, value="1")
    record.append_many([{"done": 2}, {"start": 3}, {"server": 3, "pid": 4321, "started": 99}])
    record.append(done=3)
    assert record.started == [1, 2, 3] and record.done == {1, 2, 3}
    assert record.saved == {2: "1"} and record.servers == {3: "4321:99"}
    record.close()
    again = store.read_journal(record.path)  # read from the file: the same answers
    assert (again.started, again.done, again.saved, again.servers) == (
        record.started, record.done, record.saved, record.servers)


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    path = tmp_path / "x.journal"
    path.write_text("plan 1234\n")
    with pytest.raises(netlab.NetlabError, match="is not a netlab journal"):
        store.read_journal(path)
    assert store.all_journals(tmp_path) == []


def test_find_takes_the_name_on_the_host_or_the_one_lab_of_that_name(tmp_path):
    _journal(tmp_path, "box1").close()
    local = store.LocalStore(tmp_path)
    assert local.find("box1").path.name == "box1.journal"
    assert local.find("egress-ingress").path.name == "box1.journal"
    assert local.find("egress-ingress", exact=True) is None
    assert local.find("bridge-3ns") is None
    _journal(tmp_path, "box2").close()
    with pytest.raises(InputError, match=r"2 labs of egress-ingress are up \(box1, box2\); name one of them"):
        local.find("egress-ingress")


def test_a_journal_read_before_the_lock_is_parsed_again_only_if_written_since(tmp_path):
    record = _journal(tmp_path, "box1")
    local = store.LocalStore(tmp_path)
    found = local.find("box1")
    assert local.reread(found) is found  # unchanged: down parses a large journal once
    record.append(start=1)
    again = local.reread(found)
    assert again is not found and again.started == [1]
    record.close()
    record.remove()
    assert local.reread(again) is None


def test_the_state_dir_is_made_0700_and_a_symlink_is_refused(tmp_path):
    made = store.state_dir(tmp_path / "a" / "state")
    assert oct(made.stat().st_mode & 0o777) == "0o700"
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(InputError, match="is a symlink; refusing to use it"):
        store.state_dir(tmp_path / "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is not a directory"):
        store.state_dir(tmp_path / "file")


def test_a_second_lock_holder_fails_at_once_and_the_lock_file_goes(tmp_path):
    with store.Lock(tmp_path, "box1"):
        assert (tmp_path / "box1.lock").read_text().strip() == str(os.getpid())
        holder = store.Lock(tmp_path, "box1")
        assert holder.held_elsewhere()
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from netlab.run.store import Lock\n"
             "try:\n    Lock(Path(sys.argv[1]), 'box1').acquire()\nexcept Exception as e:\n    print(e)",
             str(tmp_path)], capture_output=True, text=True, timeout=30)
        assert other.stdout.strip() == (f"box1 is busy: another netlab up or down of it is running "
                                        f"(pid {os.getpid()}); wait for it, or check `netlab status`")
        with store.Lock(tmp_path, "box2"):  # another lab is not held up
            pass
    assert not (tmp_path / "box1.lock").exists()
    assert not store.Lock(tmp_path, "box1").held_elsewhere()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "box1.lock").write_text(gone.stdout)  # left by a process killed with SIGKILL
    assert not store.Lock(tmp_path, "box1").held_elsewhere()
    with store.Lock(tmp_path, "box1"):  # a stale lock file is taken over
        assert (tmp_path / "box1.lock").read_text().strip() == str(os.getpid())


def test_the_journal_header_is_json_with_what_down_needs(tmp_path):
    record = _journal(tmp_path)
    header = json.loads(record.path.read_text().splitlines()[0])
    assert {"netlab_journal", "pid", "boot_id", "created", "name", "lab", "digest", "steps"} <= set(header)
    assert all({"argv", "undo", "probe", "netns"} <= set(step) for step in header["steps"])


# ------------------------------------------------------------ the pause point of crash and signal tests
_WRITER = """
import sys
from pathlib import Path
from netlab.run import journal
record = journal.Journal.create(Path(sys.argv[1]), {"name": "box1", "lab": "egress-ingress", "digest": "0"})
for index in (1, 2, 3):
    record.append(start=index)
    record.append(done=index)
record.append_many([{"start": 4}, {"start": 5}, {"start": 6}])  # a round's starts, as the batched runner writes them
record.append_many([{"done": 4}, {"done": 5}, {"done": 6}])
record.append(rollback=True)
record.close()
"""
_WRITTEN = [{"start": 1}, {"done": 1}, {"start": 2}, {"done": 2}, {"start": 3}, {"done": 3},
            {"start": 4}, {"start": 5}, {"start": 6}, {"done": 4}, {"done": 5}, {"done": 6}, {"rollback": True}]


def _records_on_disk(path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


@contextlib.contextmanager
def _reaped(process):
    """PROCESS killed (if still there) and reaped after the block, whatever it asserted."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def _writer(tmp_path, pause):
    env = {key: value for key, value in os.environ.items() if key != journal.PAUSE}
    if pause is not None:
        env[journal.PAUSE] = pause
    path = tmp_path / "box1.journal"
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return process, path


@pytest.mark.parametrize("pause, upto", [
    ("done:2", 4),  # one record: the process stops right after it
    ("start:5", 9),  # in the middle of records written together: after all of them
    ("rollback", 13),  # a key without a value
])
def test_the_pause_point_stops_the_process_right_after_its_record(tmp_path, pause, upto):
    assert journal.PAUSE == "NETLAB_TEST_PAUSE"
    process, path = _writer(tmp_path, pause)
    with _reaped(process):
        wait_stopped(process, timeout=60)
        assert _records_on_disk(path) == _WRITTEN[:upto]  # durable, and nothing after it
        os.kill(process.pid, signal.SIGCONT)
        assert process.wait(timeout=60) == 0, process.stderr.read()
    assert _records_on_disk(path) == _WRITTEN


@pytest.mark.parametrize("pause", [None, "", "done:9", "saved"])
def test_no_pause_without_a_matching_record(tmp_path, pause):
    """Unset or empty, and a record that never comes (as a test choosing a step its run never
    starts would see): the process runs to its end."""
    process, path = _writer(tmp_path, pause)
    with _reaped(process):
        assert process.wait(timeout=60) == 0, process.stderr.read()
    assert _records_on_disk(path) == _WRITTEN
