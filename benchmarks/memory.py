"""Peak RSS of `cryedge run --fast --no-health` (the demo clip, face + pose), and why it varies.

Prints the median peak RSS (ru_maxrss from wait4, MiB) over --runs runs in two page-cache states of
the venv's shared libraries: evicted before each run (the loader faults them in page by page), and
read sequentially before each run (as `pip install`, hashing or `cp` leave them). On kernels whose
page cache keeps large folios for such files (measured: 6.18 on ext4), the second state lets the
loader map the libraries' code with 2 MiB pages, and RSS counts every whole page: clean file pages
the kernel can drop, not the process's own anonymous memory, which stays the same. It also prints how
much was PMD-mapped (/proc/PID/smaps_rollup FilePmdMapped), sampled while the demo runs.

    .venv/bin/python benchmarks/memory.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def libraries() -> list[Path]:
    site = Path(sysconfig.get_paths()["purelib"])
    return [p for p in site.rglob("*.so*") if p.is_file() and p.stat().st_size > 1 << 20]


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_through(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as file:
            while file.read(1 << 20):
                pass


def file_pmd_mapped_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("FilePmdMapped:"))


def peak_rss(cwd: Path) -> tuple[float, float]:
    """(peak RSS MiB, most FilePmdMapped MiB seen) of one demo run."""
    cryedge = Path(sys.executable).with_name("cryedge")
    process = subprocess.Popen([str(cryedge), "run", "--fast", "--no-health"], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pmd = 0
    while True:
        pmd = max(pmd, file_pmd_mapped_kib(process.pid))
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            if status != 0:
                raise SystemExit(f"cryedge run failed (status {status})")
            return usage.ru_maxrss / 1024, pmd / 1024
        time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    paths = libraries()
    cwd = Path(__file__).resolve().parents[1]
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    print(f"kernel {os.uname().release}; THP {thp.read_text().strip() if thp.exists() else '?'}; "
          f"{len(paths)} libraries > 1 MiB in the venv")
    for state, prepare in (("libraries evicted", evict), ("libraries read sequentially", read_through)):
        runs = []
        for _ in range(args.runs):
            evict(paths)
            if prepare is read_through:
                read_through(paths)
            runs.append(peak_rss(cwd))
        rss = [r for r, _ in runs]
        print(f"{state:30s} peak RSS median {statistics.median(rss):6.1f} MiB (runs {', '.join(f'{r:.1f}' for r in rss)}); "
              f"file PMD-mapped {statistics.median(p for _, p in runs):.0f} MiB")


if __name__ == "__main__":
    main()
