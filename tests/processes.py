"""Fault tests' shared step: kill a child process with SIGKILL once it has paused at a known point.

Imported as ``tests.processes`` (see ``tests/bad_input.py`` on importing from ``tests/``)."""

import signal
import time


def kill_when_paused(proc, marker, *, ready=None, what: str = "run", reached: str = "paused",
                     timeout: float = 180) -> None:
    """Wait until ``marker`` (written by the paused child, holding its pid) exists and ``ready()`` holds,
    then SIGKILL ``proc``; an assertion names what went wrong (the child ended, or never got there)."""
    ready = ready or marker.exists
    try:
        deadline = time.monotonic() + timeout
        while not (marker.exists() and ready()):
            assert proc.poll() is None, f"the {what} ended before it was killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, f"the {what} never {reached}"
            time.sleep(0.05)
        assert int(marker.read_text()) == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
