"""Entry point of the `dora` console script.

Sub-commands live in per-room modules that are imported only when their command runs, so
`dora api` never imports torch and `dora train` never imports the web stack.
Each module exposes `register(subparsers)` which adds its commands with `set_defaults(run=...)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module path -> commands it registers (kept here so `dora --help` lists them all cheaply)
COMMAND_MODULES = (
    "dora_cli.train_commands",
    "dora_cli.service_commands",
    "dora_cli.worker_commands",
    "dora_cli.serve_commands",
    "dora_cli.settings_doc",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dora", description="DoRA fine-tuning service and tools")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # that room is not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
