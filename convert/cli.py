"""Host-side ``cryedge`` subcommands; registered through the ``cryedge.commands`` entry point."""

from __future__ import annotations

import importlib

COMMAND_MODULES = ("convert.convert", "convert.train", "convert.dataset", "convert.demo")


def register(subparsers) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.add_commands(subparsers)
