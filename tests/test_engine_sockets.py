"""Where a rollout worker's engine puts its ZMQ socket files (actors/rollout_worker.py): a
directory of the actor's own, and each start removes those of actors that are gone. (That vLLM
really binds its sockets there: tests/test_stack_rollout.py.)"""

import os
import subprocess
import sys
import tempfile

from actors.rollout_worker import _SOCKET_DIR_PREFIX, _private_socket_dir


def _gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_start_gets_its_own_directory_and_removes_only_those_of_processes_that_are_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("VLLM_RPC_BASE_PATH", "restored after the test")
    dead = tmp_path / f"{_SOCKET_DIR_PREFIX}{_gone_pid()}-abc"
    alive = tmp_path / f"{_SOCKET_DIR_PREFIX}{os.getppid()}-def"  # a live process: another actor's engine
    not_ours = tmp_path / f"{_SOCKET_DIR_PREFIX}notapid-x"
    user_file = tmp_path / "a-users-file"
    for directory in (dead, alive, not_ours):
        directory.mkdir()
        (directory / "0f1e2d3c").write_text("")
    user_file.write_text("mine")

    path = _private_socket_dir()

    assert os.environ["VLLM_RPC_BASE_PATH"] == path
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith(f"{_SOCKET_DIR_PREFIX}{os.getpid()}-") and os.listdir(path) == []
    assert not dead.exists()
    assert alive.is_dir() and not_ours.is_dir() and user_file.read_text() == "mine"
    assert _private_socket_dir() != path  # a second engine in one process gets another one
