"""Run TensorFlow training in a child process, so a native abort fails one test, not the whole run.

TensorFlow aborts the process (``env.cc: Check failed: ret == 0 (11 vs. 0) Thread ... creation via
pthread_create() failed``, then ``Fatal Python error: Aborted``) when the kernel refuses a thread
with EAGAIN: a pids or task limit reached by everything else running on a shared machine. Every
Keras ``fit`` makes new tf.data threads each epoch (measured: 11 threads at rest, 17 during a fit),
so fits are where a busy machine's limit is met, and in one pytest process the abort ended the
whole run. Here a fit runs in a child: that exact abort is retried once (the limit is the machine's,
not the code's) and reported as a warning; any other failure fails the test with the child's stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

THREAD_LIMIT_ABORT = "creation via pthread_create() failed"
REPO = Path(__file__).resolve().parents[1]


class ChildFailed(AssertionError):
    pass


def is_thread_limit_abort(returncode: int, stderr: str) -> bool:
    """True for TensorFlow's abort on a refused thread (SIGABRT with its CHECK line), nothing else."""
    return returncode == -signal.SIGABRT and THREAD_LIMIT_ABORT in stderr


def run_python(code: str, *, timeout: float = 600, retries: int = 1, env: dict | None = None) -> str:
    """Run ``code`` in a fresh interpreter with the checkout and tests/ on the path; its stdout. Raises ChildFailed."""
    path = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH")]
    child_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)), TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    for attempt in range(retries + 1):
        result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                                timeout=timeout, env=child_env, cwd=REPO, check=False)
        if result.returncode == 0:
            return result.stdout
        if is_thread_limit_abort(result.returncode, result.stderr) and attempt < retries:
            line = next(line for line in result.stderr.splitlines() if THREAD_LIMIT_ABORT in line)
            warnings.warn(f"TensorFlow could not start a thread (machine's task limit); retried once: {line.strip()}",
                          stacklevel=2)
            time.sleep(2.0)
            continue
        break
    tail = "\n".join(result.stderr.strip().splitlines()[-25:])
    raise ChildFailed(f"child exited {result.returncode}:\n{tail}")
