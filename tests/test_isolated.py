"""tests/isolated.py: a Keras fit that meets the machine's task limit fails one test, and only that abort is retried."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from isolated import THREAD_LIMIT_ABORT, ChildFailed, is_thread_limit_abort, run_python

ABORT_ONCE = """
import os, sys
from pathlib import Path
marker = Path({marker!r})
if not marker.exists():
    marker.write_text("1")
    print({message!r}, file=sys.stderr, flush=True)
    os.abort()
print("second attempt ran")
"""


def test_tensorflows_thread_limit_abort_is_retried_once_with_a_warning(tmp_path):
    line = f"F0000 env.cc:84] Check failed: ret == 0 (11 vs. 0) Thread tf_data_private_threadpool {THREAD_LIMIT_ABORT}."
    code = ABORT_ONCE.format(marker=str(tmp_path / "ran"), message=line)
    with pytest.warns(UserWarning, match="retried once.*tf_data_private_threadpool"):
        assert run_python(code).strip() == "second attempt ran"


def test_any_other_crash_fails_at_once_with_the_childs_stderr(tmp_path):
    code = ABORT_ONCE.format(marker=str(tmp_path / "ran"), message="free(): invalid pointer")
    with pytest.raises(ChildFailed, match="invalid pointer"):
        run_python(code)
    with pytest.raises(ChildFailed, match="AssertionError: wrong"):
        run_python("assert False, 'wrong'")


def test_a_limit_that_stays_fails_after_one_retry(tmp_path):
    code = f"import os, sys\nprint('Thread x {THREAD_LIMIT_ABORT}', file=sys.stderr, flush=True)\nos.abort()"
    with pytest.warns(UserWarning), pytest.raises(ChildFailed, match=THREAD_LIMIT_ABORT.replace("(", r"\(").replace(")", r"\)")):
        run_python(code)


PIDS = Path("/sys/fs/cgroup/pids")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not (PIDS / "cgroup.procs").exists(), reason="needs root and a cgroup-v1 pids controller")
def test_a_keras_fit_under_a_task_limit_aborts_with_the_signature_the_retry_matches(tmp_path):
    """The real failure, reproduced: a pids cgroup of 12 tasks makes TensorFlow abort inside a Keras fit.

    Measured with TensorFlow's default pools on 2 cores: 11 threads at rest after a fit, 17 during it.
    """
    group = PIDS / f"cryedge-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "pids.max").write_text("12")
        code = ("import keras, numpy as np\nfrom convert import zoo\nm = zoo.build('conv1d')\n"
                "m.compile('adam', 'binary_crossentropy')\nx, y = zoo.synthetic_windows(64)\n"
                "m.fit(x, y, epochs=2, verbose=0)\n")
        child = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                               timeout=300, cwd=Path(__file__).resolve().parents[1],
                               env={key: value for key, value in os.environ.items() if not key.startswith("TF_NUM_")},
                               preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())), check=False)
    finally:
        group.rmdir()
    assert is_thread_limit_abort(child.returncode, child.stderr), child.stderr[-2000:]
    assert "Fatal Python error: Aborted" in child.stderr
