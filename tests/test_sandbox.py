"""The code sandbox (`rewards.sandbox.run_python`) against hostile programs.

Every hostile program must end within its limit with a reason, and leave the machine as it
was: files outside the sandbox intact, no process of the run alive, no zombie, no cgroup or
temp dir left. Isolation tests FAIL (never skip) where bubblewrap is missing: the set-up
installs it, and a scorer without it is not isolated. Destructive programs run only after a
harmless probe showed that the files they target are invisible inside the sandbox.
"""

import os
import signal
import socket
import sys
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rewards import sandbox
from rewards.sandbox import run_python, sandbox_capabilities, warn_if_weak

REPO = Path(__file__).resolve().parent.parent
LIMITS = {"timeout_s": 2, "memory_mb": 256}
SLACK_S = 1.5   # start-up of bwrap and two interpreters, and the clean-up after a kill
SECRET = "aha-secret-" + uuid.uuid4().hex
# Process names (/proc/PID/comm, 15 characters at most) of a run: bwrap and the real python.
SANDBOX_COMMANDS = {"bwrap", os.path.basename(os.path.realpath(sys.executable))[:15]}
pytestmark = pytest.mark.timeout(30)   # a hang guard: every run here should end in seconds


def require_bwrap():
    caps = sandbox_capabilities()
    assert caps["bwrap"], f"bubblewrap missing or refused (run `make setup`): {caps['notes']}"


def require_process_limit():
    # Without a pids cgroup nothing stops a fork bomb run by root: do not start one.
    caps = sandbox_capabilities()
    assert caps["pids_cgroup"] or os.geteuid() != 0, f"no pids cgroup: {caps['notes']}"


def tagged(body: str, marker: str) -> str:
    """The program re-execs itself with `marker` as its argument, so that it and every process
    it forks carry the marker in /proc/PID/cmdline, where a survivor can be found."""
    return (f"import os, sys\nif sys.argv[1:] != [{marker!r}]:\n"
            f"    os.execv(sys.executable, [sys.executable, '-I', sys.argv[0], {marker!r}])\n"
            + textwrap.dedent(body))


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass   # ended while we looked
    return found


def zombies() -> dict[int, str]:
    """Zombies a run could leave: children of this process, or orphans (parent PID 1, which
    in many containers never reaps) that were bwrap or the sandbox's Python."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                name, fields = f.read().rsplit(")", 1)
            state, parent = fields.split()[:2]
        except (OSError, ValueError):
            continue
        orphan = int(parent) == 1 and name.split("(", 1)[1] in SANDBOX_COMMANDS
        if state == "Z" and (int(parent) == os.getpid() or orphan):
            found[int(entry)] = f"{name.split('(', 1)[1]} (parent {parent})"
    return found


def own_cgroups() -> list[str]:
    prefix = f"aha-sandbox-{os.getpid()}-"
    return [name for parent in sandbox_capabilities()["cgroup_parents"]
            for name in os.listdir(parent) if name.startswith(prefix)]


class Machine:
    """A sentinel file in a temp dir and one in the repo, a marker for the run's processes,
    and a private temp root for the sandbox's work dirs."""

    def __init__(self, tmp_path: Path):
        self.marker = "aha-hostile-" + uuid.uuid4().hex
        self.sentinel = tmp_path / "sentinel.txt"
        self.sentinel.write_text("still here")
        self.repo_sentinel = REPO / f".sandbox-sentinel-{uuid.uuid4().hex}"
        self.repo_sentinel.write_text("still here")
        self.scratch_root = tmp_path / "scratch"
        self.scratch_root.mkdir()
        self.zombies_before = zombies()

    def check_unharmed(self):
        assert self.sentinel.read_text() == "still here"
        assert self.repo_sentinel.read_text() == "still here"
        assert (REPO / "pyproject.toml").is_file()
        time.sleep(0.1)
        assert processes_with(self.marker) == [], "a process of the run survived it"
        new_zombies = {pid: what for pid, what in zombies().items()
                       if pid not in self.zombies_before}
        assert not new_zombies, f"zombies left behind: {new_zombies}"
        assert own_cgroups() == [], "a cgroup of the run was not removed"
        assert list(self.scratch_root.iterdir()) == [], "a work dir was not removed"

    def run(self, body: str, **limits):
        return run_python(tagged(body, self.marker), **{**LIMITS, **limits})


@pytest.fixture
def machine(tmp_path, monkeypatch):
    watched = Machine(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(watched.scratch_root))
    try:
        yield watched
        watched.check_unharmed()
    finally:
        watched.repo_sentinel.unlink(missing_ok=True)


def assert_ends_in_time(result, timeout_s=LIMITS["timeout_s"]):
    assert result.duration_s < timeout_s + SLACK_S, result


def assert_paths_invisible(machine):
    """The harmless probe run before any destructive program."""
    probe = run_python(f"import os\nprint(os.path.exists({str(machine.sentinel)!r}), "
                       f"os.path.exists({str(machine.repo_sentinel)!r}))", **LIMITS)
    assert probe.ok and probe.stdout.split() == ["False", "False"], probe


# ---- the set-up gave this machine every layer --------------------------------------------

def test_this_machine_has_every_isolation_layer():
    caps = sandbox_capabilities()
    assert caps["bwrap"] and caps["pids_cgroup"], caps
    assert warn_if_weak() == tuple(caps["notes"])


# ---- well-behaved programs ---------------------------------------------------------------

def test_hello_world():
    result = run_python("print('hello')", **LIMITS)
    assert (result.ok, result.stdout, result.reason, result.returncode) == (
        True, "hello\n", "ok", 0)


def test_stdin_is_delivered_and_an_unread_one_does_not_block():
    echoed = run_python("import sys\nprint(sys.stdin.read().upper(), end='')",
                        stdin="abc\ndef\n", **LIMITS)
    assert echoed.ok and echoed.stdout == "ABC\nDEF\n"
    ignored = run_python("print('done')", stdin="x" * (8 << 20), **LIMITS)
    assert ignored.ok and ignored.stdout == "done\n"


def test_syntax_error_fails_with_its_traceback():
    result = run_python("def broken(:\n    pass", **LIMITS)
    assert not result.ok and result.reason == "exit code 1"
    assert "SyntaxError" in result.stderr


def test_undecodable_output_is_replaced():
    result = run_python("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end')", **LIMITS)
    assert result.ok and result.stdout == "ok \ufffd\ufffd end"


def test_stdlib_scratch_files_and_exit_builtin_work():
    code = ("import json, collections\nopen('notes.txt', 'w').write('x' * 1000)\n"
            "print(json.dumps(len(open('notes.txt').read())))\nexit(0)")
    result = run_python(code, **LIMITS)
    assert result.ok and result.stdout == "1000\n", result


@pytest.mark.timeout(60)
def test_runs_from_threads_at_once():
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: run_python(f"print({n} * 2)", **LIMITS), range(4)))
    assert [r.stdout for r in results] == ["0\n", "2\n", "4\n", "6\n"]


def test_a_failing_sandbox_is_reported_not_raised(monkeypatch):
    sandbox_capabilities()   # probe first: the probe itself needs a temp dir
    def no_temp_dir(*args, **kwargs):
        raise OSError("disk gone")
    monkeypatch.setattr(tempfile, "mkdtemp", no_temp_dir)
    result = run_python("print(1)", **LIMITS)
    assert not result.ok and result.returncode is None
    assert result.reason.startswith("sandbox unavailable") and "disk gone" in result.reason


def test_unencodable_code_and_stdin_are_the_programs_failure():
    result = run_python("print('\udcff')\n", stdin="\ud800", **LIMITS)
    assert not result.ok and "SyntaxError" in result.stderr, result


def test_impossible_limits_are_a_caller_error():
    with pytest.raises(ValueError):
        run_python("print(1)", timeout_s=0, memory_mb=256)


def test_sys_exit_0_before_the_tests_is_ok_at_this_level():
    # The sandbox reports the exit honestly (ok, code 0); the "code" reward counts passed
    # tests from the output, so skipping them earns nothing there.
    result = run_python("import sys\nsys.exit(0)\nassert False, 'the tests'", **LIMITS)
    assert (result.ok, result.returncode, result.stdout) == (True, 0, "")
    assert result.duration_s < SLACK_S


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
    assert_ends_in_time(result)


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


def test_signal_verdicts_read_bwrap_and_plain_exit_codes():
    assert sandbox._exit_reason(-signal.SIGKILL, "", False, False) == "killed by signal 9"
    assert sandbox._exit_reason(128 + 24, "", True, False) == "cpu time limit"
    assert sandbox._exit_reason(137, "", False, False) == "exit code 137"
    assert sandbox._exit_reason(-9, "", True, True) == "memory limit"
