"""What ``cryedge models fetch`` wrote, so that a bundle damaged on disk since is refused, not run.

``fetch`` lists each bundle it writes with its sha256 in ``DIGESTS_NAME`` beside it (``sha256sum``'s
format: ``sha256sum -c SHA256SUMS`` in that folder checks them too). The landmark stage checks a bundle
against that list before MediaPipe loads it: 4 KiB of zeros in the face landmark model's weights (an SD
card's damage) loaded without an error and moved the face points by up to 46 pixels on a 512-pixel photo,
so the cry model judged wrong points all night, and nothing said so. A bundle the list does not name (one
given by path, a folder written before the list existed) is not checked.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from edge.errors import ModelError

DIGESTS_NAME = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64})  \*?(.+)$")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def written_digests(folder: Path) -> dict[str, str]:
    """file name -> sha256 as ``fetch`` listed them in ``folder``; {} without a list."""
    try:
        text = (Path(folder) / DIGESTS_NAME).read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    return {m.group(2): m.group(1) for line in text.splitlines() if (m := _LINE.match(line))}


def record_digests(folder: Path, digests: dict[str, str]) -> None:
    """List ``digests`` (file name -> sha256) in ``folder``, keeping the entries of other files."""
    listed = {**written_digests(folder), **digests}
    (Path(folder) / DIGESTS_NAME).write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(listed.items())))


def check_written(path: Path) -> None:
    """ModelError, one line, when ``path`` is not the file ``fetch`` wrote there (its list says another sha256)."""
    path = Path(path)
    expected = written_digests(path.parent).get(path.name)
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise ModelError(
            f"landmark model {path} is not the one `cryedge models fetch` wrote there (sha256 {actual[:12]}..., "
            f"written {expected[:12]}..., {DIGESTS_NAME}): damaged on disk, or replaced by hand; run "
            f"`cryedge models fetch --output {path.parent}` again")
