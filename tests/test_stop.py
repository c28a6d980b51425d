"""Stopping a run on request (cluster/run/stop.py): the first SIGTERM/SIGINT only marks the request,
the second stops at once, the handlers are given back, and the resume command is the same
command line with --resume. Real signals, sent to this process."""

import os
import signal

import pytest

from cluster.run.stop import StopRequest, resume_command


def test_the_first_signal_asks_the_second_stops_and_the_handlers_come_back(capsys):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop = StopRequest().install()
    try:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal == "SIGTERM"
        assert "[aha] SIGTERM: finishing the current step, then a checkpoint and exit" in capsys.readouterr().out
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == "SIGTERM"  # the first signal is the one reported
    finally:
        stop.restore()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_ctrl_c_is_a_request_too():
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == "SIGINT"
    finally:
        stop.restore()


@pytest.mark.parametrize("argv, command", [
    (["train", "r.toml"], "aha train r.toml --resume"),
    (["train", "r.toml", "--run.steps", "8", "--resume"], "aha train r.toml --run.steps 8 --resume"),
    (["sft", "my recipe.toml", "--overwrite"], "aha sft 'my recipe.toml' --resume"),
    (["distill", "d.toml", "--learner.lr", "1e-4"], "aha distill d.toml --learner.lr 1e-4 --resume"),
    (["pipeline", "p.toml", "--from", "rl"], "aha pipeline p.toml"),  # it resumes the interrupted stage itself
    (["pipeline", "p.toml", "--overwrite"], "aha pipeline p.toml"),
])
def test_the_resume_command_is_the_same_command_line_resuming(argv, command):
    assert resume_command(argv) == command
