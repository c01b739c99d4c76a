"""Sub-commands of the ``medvit`` CLI, one module per area.

Each module exposes ``register(subparsers)``, which adds its sub-commands with
``set_defaults(func=...)``; every ``func`` parses nothing itself and calls one library function.
"""

COMMAND_MODULES = ("models", "data", "train", "runs", "calibrate", "pretrain", "study", "explain", "demo")
