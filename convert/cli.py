"""Host-side ``cryedge`` subcommands; registered through the ``cryedge.commands`` entry point."""

from __future__ import annotations

from edge.cli import add_commands_of

COMMAND_MODULES = ("convert.convert", "convert.train", "convert.dataset", "convert.demo", "convert.evaluate",
                   "convert.conditions", "convert.audio_demo")


def register(subparsers) -> None:
    add_commands_of(COMMAND_MODULES, subparsers)
