"""The `dora` command line: one entry point, each room's commands in its own module."""
