"""Faults injected at the narrowest seam, for tests that run a real cryedge command with one thing failing."""

# a cryedge command (`run`, `eval`) with MediaPipe raising on its calls numbered FIRST to LAST ("90", "5-60", "1-" for
# every call from the first; one call a frame for a model of the face alone), as its graph does when it fails
# (detect_for_video raises RuntimeError): the one fault injected, at the narrowest seam (LandmarkExtractor._run, the
# call into MediaPipe); everything else is real. Run as `python -c FAILING_LANDMARKER FIRST-LAST COMMAND ARGS...`.
FAILING_LANDMARKER = """
import sys
from edge import landmarks
from edge.cli import main

first, _, last = sys.argv[1].partition("-")
first, last = int(first), (int(last) if last else float("inf")) if "-" in sys.argv[1] else int(first)
calls = 0
run = landmarks.LandmarkExtractor._run

def failing(self, task, image, timestamp_ms):
    global calls
    calls += 1
    if first <= calls <= last:
        raise RuntimeError("CalculatorGraph::Run() failed in Run: \\nCalculator::Process() for node \\"facelandmarker\\"")
    return run(self, task, image, timestamp_ms)

landmarks.LandmarkExtractor._run = failing
sys.exit(main(sys.argv[2:]))
"""

# the calling thread blocked for ever in native code, the GIL released: a mutex that is not recursive, locked twice; the
# seams below hang with it
HANG_FOR_EVER = """
import ctypes

def hang_for_ever(*args, **kwargs):
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)
"""

# a cryedge command with MediaPipe hanging in native code, as a graph that deadlocks does: once the file HANG exists,
# the next call into MediaPipe (LandmarkExtractor._run) creates HANG.hung and blocks for ever on a mutex it already
# holds, the GIL released, so not even a Python signal handler runs on that thread again. Run as
# `python -c HANGING_LANDMARKER HANG COMMAND ARGS...`.
HANGING_LANDMARKER = HANG_FOR_EVER + """
import sys
from pathlib import Path
from edge import landmarks
from edge.cli import main

hang = Path(sys.argv[1])
run = landmarks.LandmarkExtractor._run

def hanging(self, task, image, timestamp_ms):
    if hang.exists():
        hang.with_name(hang.name + ".hung").touch()
        hang_for_ever()
    return run(self, task, image, timestamp_ms)

landmarks.LandmarkExtractor._run = hanging
sys.exit(main(sys.argv[2:]))
"""

# a cryedge command whose frame loop comes back at the moment the main thread gives up on it: once the file HANG
# exists, the next call into MediaPipe (LandmarkExtractor._run) creates HANG.hung and blocks (the GIL released) until
# a thread ends the running cry (Alarm._end), then returns. That end, the first, waits up to 5 s for a second thread
# ending the same cry before it goes on: the window in which the main thread ends the cry of a loop it gave up on is
# held open for the loop's next frame. Run as `python -c RETURNING_LANDMARKER HANG COMMAND ARGS...`.
RETURNING_LANDMARKER = """
import sys
import threading
from pathlib import Path
from edge import alarm, landmarks
from edge.cli import main

hang = Path(sys.argv[1])
ending = threading.Event()
both_ending = threading.Barrier(2)
run, end = landmarks.LandmarkExtractor._run, alarm.Alarm._end

def returning(self, task, image, timestamp_ms):
    if hang.exists() and not ending.is_set():
        hang.with_name(hang.name + ".hung").touch()
        ending.wait()
    return run(self, task, image, timestamp_ms)

def ending_slowly(self, t, reason, decided):
    if hang.exists():
        ending.set()
        try:
            both_ending.wait(timeout=5)
        except threading.BrokenBarrierError:  # no second thread came (or came too late): on alone
            pass
    return end(self, t, reason, decided)

landmarks.LandmarkExtractor._run = returning
alarm.Alarm._end = ending_slowly
sys.exit(main(sys.argv[2:]))
"""


def first_frame_due_within(seconds: float, seam: str) -> str:
    """``seam`` (a script above) with the daemon's first frame due ``seconds`` after its source's own wait for one
    (edge.daemon.FIRST_FRAME_SECONDS, a minute for a Pi 3's first inference): a test of a frame loop stuck before its
    first frame, or of a camera reopened from the start, need not wait that minute."""
    return f"import edge.daemon\nedge.daemon.FIRST_FRAME_SECONDS = {seconds!r}\n{seam}"

# a cryedge command with a TFLite model's invoke hanging in native code, as a delegate or kernel that deadlocks does:
# once the file HANG exists, the next invoke (TFLiteModel.invoke, of any model the command runs) creates HANG.hung
# and blocks for ever on a mutex it already holds, the GIL released. Run as `python -c HANGING_MODEL HANG COMMAND ARGS...`.
HANGING_MODEL = HANG_FOR_EVER + """
import sys
from pathlib import Path
from edge import model
from edge.cli import main

hang = Path(sys.argv[1])
invoke = model.TFLiteModel.invoke

def hanging(self, x):
    if hang.exists():
        hang.with_name(hang.name + ".hung").touch()
        hang_for_ever()
    return invoke(self, x)

model.TFLiteModel.invoke = hanging
sys.exit(main(sys.argv[2:]))
"""


# a `cryedge run` whose start-up hangs in native code, as a landmarker's creation, a delegate's load or a camera driver's
# open that never returns: WHAT "landmarker" hangs MediaPipe's FaceLandmarker.create_from_options (before the broker is
# connected), "camera" the video file's open (FileSource.open, once the broker has had "online"), for ever on a mutex it
# already holds, the GIL released. Run as `python -c HANGING_START WHAT COMMAND ARGS...`.
HANGING_START = HANG_FOR_EVER + """
import sys
from edge import source
from edge.cli import main
from edge.mediapipe_import import import_mediapipe

if sys.argv[1] == "landmarker":
    import_mediapipe().tasks.vision.FaceLandmarker.create_from_options = hang_for_ever
else:
    source.FileSource.open = hang_for_ever
sys.exit(main(sys.argv[2:]))
"""


def start_up_due_within(seconds: float, seam: str) -> str:
    """``seam`` (a script above) with the daemon's start-up due ``seconds`` after it began (edge.daemon.START_UP_SECONDS,
    90 s for a Pi's slow loading): a test of a start-up stuck, or of one that is not, need not wait that long."""
    return f"import edge.daemon\nedge.daemon.START_UP_SECONDS = {seconds!r}\n{seam}"
