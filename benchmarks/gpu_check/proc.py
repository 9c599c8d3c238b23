"""One child process with a time limit, its output streamed line by line (no torch import here).

The child runs in a process group of its own (``start_new_session``): at the limit the whole group gets
SIGTERM, then SIGKILL after a grace period, so the compile workers a stage spawned die with it.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time

GRACE_S = 5.0


def _pump(stream, callback, tail):
    for line in iter(stream.readline, ""):
        line = line.rstrip("\n")
        tail.append(line)
        callback(line)
    stream.close()


def _kill(proc) -> None:
    """SIGTERM to the child's process group, SIGKILL after ``GRACE_S``."""
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(cmd: list[str], timeout: float, env: dict, on_stdout, on_stderr, cwd=None) -> dict:
    """Runs ``cmd``; calls ``on_stdout(line)`` / ``on_stderr(line)`` as lines arrive. Returns ``{"rc",
    "timed_out", "seconds", "stderr_tail" (last lines), "stdout_tail"}``; rc is None when it was killed."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            env=env, cwd=cwd, start_new_session=True, errors="replace")
    tails = {"out": collections.deque(maxlen=40), "err": collections.deque(maxlen=40)}
    threads = [threading.Thread(target=_pump, args=(proc.stdout, on_stdout, tails["out"]), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, on_stderr, tails["err"]), daemon=True)]
    for t in threads:
        t.start()
    timed_out = False
    try:
        proc.wait(max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(proc)
    except BaseException:  # Ctrl-C in the parent: take the child down too
        _kill(proc)
        raise
    for t in threads:
        t.join(GRACE_S)  # a grandchild outside the group could hold a pipe open: do not wait for it forever
    return {"rc": None if timed_out else proc.returncode, "timed_out": timed_out, "seconds": time.time() - t0,
            "stderr_tail": list(tails["err"]), "stdout_tail": list(tails["out"])}


def last_error(result: dict) -> str:
    """The last meaningful stderr line of a failed child (an exception's last line), shortened."""
    for line in reversed(result["stderr_tail"]):
        text = line.strip()
        if text and not text.startswith(("warnings.warn", "^")):
            return (text[:237] + "...") if len(text) > 240 else text
    return ""
