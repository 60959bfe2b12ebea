"""Print a clip's alarm events in clip time, as ``cryedge run --fast --no-health --source CLIP`` finds them.

The CLI prints wall-clock times, which under ``--fast`` (and under emulation) say nothing about
where in the clip a cry starts; this runs the same daemon with the same overrides and prints each
event's time from the clip's first frame, so runs on different machines can be compared.
Usage: python clip_events.py CLIP  ->  one JSON line: {"events": [{"kind", "t", "reason"}], "frames"}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(clip: str) -> int:
    from edge.config import load_config
    from edge.daemon import Daemon, limit_malloc_arenas

    limit_malloc_arenas()
    config = load_config(None, {"source": {"uri": str(Path(clip).resolve()), "realtime": False},
                                "health": {"enabled": False}})
    daemon = Daemon(config)
    events = []
    with daemon:
        publish = daemon.publisher.publish_event
        daemon.publisher.publish_event = lambda event: (events.append(event), publish(event))
        daemon.run()
        origin = daemon.source.status.first_frame_t
        frames = daemon.stats.frames
    print(json.dumps({
        "events": [{"kind": e.kind, "t": round(e.t - origin, 3), "reason": getattr(e, "reason", None)} for e in events],
        "frames": frames,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
