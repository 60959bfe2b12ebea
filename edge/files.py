"""Files the commands write (a model, its card, a dataset, a report, a bundle): whole, or not at all.

A disk that fills up mid-write left a 0-byte or cut-short file under the real name, in place of the good one
that was there (a model that no longer loads, a card without its model), and the error named no file: the
write, not the open, failed, so ``OSError.filename`` was empty and the command line said only
"No space left on device".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(*paths: Path) -> Iterator[tuple[Path, ...]]:
    """Temporary paths beside ``paths`` to write to, moved onto them only when the block ends without an error.

    On an error (a full disk, a read-only one, Ctrl-C) the temporary files are removed and what was at ``paths``
    stays as it was. A temporary path keeps its file's suffix (Keras, numpy and OpenCV go by it). An OSError
    that names no file, or a temporary one, is raised again naming the real path."""
    paths = tuple(Path(path) for path in paths)
    temporaries = tuple(path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}") for path in paths)
    try:
        yield temporaries
        for temporary, path in zip(temporaries, paths, strict=True):
            os.replace(temporary, path)
    except OSError as error:
        named = {os.fspath(temporary): path for temporary, path in zip(temporaries, paths, strict=True)}
        where = named.get(os.fspath(error.filename)) if error.filename is not None else paths[0]
        if where is None:
            raise
        raise OSError(error.errno, error.strerror or str(error), os.fspath(where)) from error
    finally:
        for temporary in temporaries:
            with contextlib.suppress(OSError):
                temporary.unlink()


def write_bytes(path: Path, data: bytes) -> None:
    """``path.write_bytes(data)``, but whole or not at all (see ``replacing``)."""
    with replacing(path) as (temporary,):
        temporary.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)`` (UTF-8), but whole or not at all (see ``replacing``)."""
    write_bytes(path, text.encode())
