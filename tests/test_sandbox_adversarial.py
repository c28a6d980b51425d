"""The code sandbox (`rewards.sandbox.run_python`) against hostile programs.

Every hostile program must end within its limit with a reason, and leave the machine as it
was: files outside the sandbox intact, no process of the run alive, no zombie, no cgroup or
temp dir left. Isolation tests FAIL (never skip) where bubblewrap is missing: the set-up
installs it, and a scorer without it is not isolated. Destructive programs run only after a
harmless probe showed that the files they target are invisible inside the sandbox.
"""

import os
import socket
import sys
import tempfile

import pytest

from rewards.sandbox import sandbox_capabilities
from sandbox_helpers import (REPO, SECRET, SLACK_S, Machine, assert_ends_in_time,
                             assert_paths_invisible, require_bwrap, require_process_limit)

pytestmark = pytest.mark.timeout(30)   # a hang guard: every run here should end in seconds


@pytest.fixture
def machine(tmp_path, monkeypatch):
    watched = Machine(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(watched.scratch_root))
    try:
        yield watched
        watched.check_unharmed()
    finally:
        watched.repo_sentinel.unlink(missing_ok=True)


# ---- hostile programs --------------------------------------------------------------------

def test_infinite_loop(machine):
    result = machine.run("while True:\n    pass\n")
    assert not result.ok and result.reason == "timeout"
    assert_ends_in_time(result)


def test_threads_that_spin(machine):
    body = """
    import threading
    def spin():
        while True:
            pass
    for _ in range(8):
        threading.Thread(target=spin).start()
    """
    result = machine.run(body)
    assert not result.ok and result.reason in ("timeout", "cpu time limit"), result
    assert_ends_in_time(result)


def test_fork_bomb(machine):
    require_process_limit()
    body = """
    while True:
        try:
            os.fork()
        except OSError:
            pass
    """
    result = machine.run(body)
    assert not result.ok and result.reason == "timeout"
    assert_ends_in_time(result)


def test_while_true_fork(machine):
    require_process_limit()
    result = machine.run("while True:\n    os.fork()\n")
    assert not result.ok and result.reason in ("timeout", "exit code 1", "memory limit"), result
    assert_ends_in_time(result)


def test_allocate_10_gb(machine):
    result = machine.run("hoard = bytearray(10 * 1024 ** 3)\n")
    assert not result.ok and result.reason == "memory limit", result
    assert_ends_in_time(result)


def test_memory_spread_over_forked_children(machine):
    # Each child stays under its own RLIMIT_AS; only the memory cgroup sees the total.
    assert sandbox_capabilities()["memory_cgroup"], sandbox_capabilities()["notes"]
    body = """
    children = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            hoard = b"x" * (200 << 20)
            import time; time.sleep(1)
            os._exit(0)
        children.append(pid)
    sys.exit(any(os.waitpid(pid, 0)[1] for pid in children))
    """
    result = machine.run(body, timeout_s=5)
    assert not result.ok and result.reason == "memory limit", result
    assert_ends_in_time(result, timeout_s=5)


def test_write_a_1_gb_file(machine):
    body = """
    with open("big.bin", "wb") as f:
        for _ in range(1024):
            f.write(b"x" * (1 << 20))
    """
    result = machine.run(body)
    assert not result.ok and result.reason == "file size limit", result
    assert_ends_in_time(result)


def test_fill_the_disk_with_many_files(machine):
    require_bwrap()
    body = """
    for n in range(100):
        with open(f"part{n}.bin", "wb") as f:
            f.write(b"x" * (15 << 20))
    """
    result = machine.run(body)
    assert not result.ok and result.reason in ("disk limit", "memory limit"), result


def test_print_100_mb(machine):
    result = machine.run("print('x' * (100 << 20))\n")
    assert not result.ok and result.reason == "output limit"
    assert len(result.stdout) <= 1 << 20
    assert_ends_in_time(result)


def test_flood_stderr_forever(machine):
    result = machine.run("while True:\n    sys.stderr.write('y' * 65536)\n",
                         max_output_bytes=1 << 16)
    assert not result.ok and result.reason == "output limit"
    assert len(result.stderr) == 1 << 16


def test_close_stdout_then_write(machine):
    result = machine.run("os.close(1)\nprint('into the void')\n")
    assert not result.ok and result.reason.startswith("exit code"), result
    assert_ends_in_time(result)


def test_close_both_pipes_then_hang(machine):
    result = machine.run("os.close(1)\nos.close(2)\nwhile True:\n    pass\n")
    assert not result.ok and result.reason == "timeout"
    assert_ends_in_time(result)


def test_background_process_that_outlives_the_run(machine):
    # Double fork + setsid: out of the process group, holding the output pipes open.
    body = """
    import time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(1000)
        os._exit(0)
    os.wait()
    print("parent done")
    """
    result = machine.run(body)
    assert result.ok and result.stdout == "parent done\n", result
    assert result.duration_s < SLACK_S, "waited for the daemon"


def test_background_process_and_a_hang(machine):
    body = """
    import signal, time
    if os.fork() == 0:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        time.sleep(1000)
    while True:
        pass
    """
    result = machine.run(body)
    assert not result.ok and result.reason == "timeout"
    assert_ends_in_time(result)


def test_too_many_open_files(machine):
    result = machine.run("hoard = [open(__file__) for _ in range(10000)]\n")
    assert not result.ok and "Too many open files" in result.stderr


def test_unbounded_recursion_in_c(machine):
    # repr() of a deeply nested list recurses in C: with the guard lifted, the stack overflows.
    body = "sys.setrecursionlimit(10 ** 9)\nnest = []\nfor _ in range(300_000):\n" \
           "    nest = [nest]\nprint(len(repr(nest)))\n"
    result = machine.run(body, timeout_s=5)
    assert not result.ok and result.reason.startswith(("killed by signal", "memory limit")), result
    assert_ends_in_time(result, timeout_s=5)


def test_environment_is_empty(machine, monkeypatch):
    monkeypatch.setenv("AHA_TEST_SECRET", SECRET)
    result = machine.run("print(dict(os.environ))\nsys.exit(1)\n")
    assert SECRET not in result.stdout and "AHA_TEST_SECRET" not in result.stdout
    assert not result.ok and result.reason == "exit code 1"


def test_other_processes_environments_are_invisible(machine, monkeypatch):
    require_bwrap()
    monkeypatch.setenv("AHA_TEST_SECRET", SECRET)
    body = """
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            print(open(f"/proc/{pid}/environ", "rb").read())
        except OSError as exc:
            print(exc)
    sys.exit(1)
    """
    result = machine.run(body)
    assert SECRET not in result.stdout + result.stderr
    assert not result.ok


def test_read_files_outside_its_directory(machine):
    require_bwrap()
    targets = [str(REPO / "pyproject.toml"), str(machine.sentinel), "/etc/passwd",
               "/root/.bash_history"]
    body = f"""
    leaked = 0
    for path in {targets!r}:
        try:
            print(open(path, errors="replace").read()[:200])
            leaked += 1
        except OSError as exc:
            print("refused:", exc)
    print(os.listdir("/"))
    sys.exit(0 if leaked else 1)
    """
    result = machine.run(body)
    assert not result.ok and result.reason == "exit code 1", result
    assert "[project]" not in result.stdout and "still here" not in result.stdout
    assert "'work'" not in result.stdout.splitlines()[-1]


def test_network_connection_to_the_host(machine):
    require_bwrap()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        body = f"""
        import socket
        with socket.create_connection(("127.0.0.1", {port}), timeout=1) as conn:
            conn.sendall(b"exfiltrated")
        print("CONNECTED")
        """
        result = machine.run(body)
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    assert not result.ok and "CONNECTED" not in result.stdout
    assert "Connection refused" in result.stderr or "unreachable" in result.stderr, result


def test_kill_its_parent_and_the_scorer(machine):
    require_bwrap()   # without a pid namespace, these kills would land
    parent_before = os.getppid()
    body = f"""
    import signal, time
    for target in (os.getppid(), {os.getpid()}, {os.getppid()}, 1):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError as exc:
            print(target, exc)
    time.sleep(0.3)
    print("still running")
    sys.exit(3)
    """
    result = machine.run(body)
    assert os.getppid() == parent_before
    assert not result.ok and result.reason in ("exit code 3", "killed by signal 9"), result


def test_delete_files_outside_the_sandbox(machine):
    require_bwrap()
    assert_paths_invisible(machine)
    body = f"""
    import shutil
    deleted = []
    for path in ({str(machine.sentinel)!r}, {str(machine.repo_sentinel)!r}):
        try:
            os.remove(path)
            deleted.append(path)
        except OSError as exc:
            print("refused:", exc)
    shutil.rmtree({str(machine.sentinel.parent)!r}, ignore_errors=True)
    for directory in (sys.base_prefix, "/usr"):
        try:
            open(os.path.join(directory, "aha-was-here"), "w").close()
            deleted.append(directory)
        except OSError as exc:
            print("refused:", exc)
    sys.exit(3 if deleted else 4)
    """
    result = machine.run(body)
    assert not result.ok and result.reason == "exit code 4", result
    for directory in (os.path.realpath(sys.base_prefix), "/usr"):
        assert not os.path.exists(os.path.join(directory, "aha-was-here"))

