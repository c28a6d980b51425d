"""The code sandbox (`rewards.sandbox.run_python`) with well-behaved programs, and its API.

Hostile programs are in test_sandbox_adversarial.py; both share tests/sandbox_helpers.py.
"""

import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewards import sandbox
from rewards.sandbox import run_python, sandbox_capabilities, warn_if_weak
from sandbox_helpers import LIMITS, SLACK_S

pytestmark = pytest.mark.timeout(30)   # a hang guard: every run here should end in seconds


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


# ---- verdicts ----------------------------------------------------------------------------

def test_signal_verdicts_read_bwrap_and_plain_exit_codes():
    assert sandbox._exit_reason(-signal.SIGKILL, "", False, False) == "killed by signal 9"
    assert sandbox._exit_reason(128 + 24, "", True, False) == "cpu time limit"
    assert sandbox._exit_reason(137, "", False, False) == "exit code 137"
    assert sandbox._exit_reason(-9, "", True, True) == "memory limit"
