"""`jrm`: one entry point for the project's commands (each is also runnable as `python -m jrm_engine.X`)."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("jrm_engine.train", "train a Joint Reward Model"),
    "evaluate": ("jrm_engine.evaluate", "benchmark metrics for a checkpoint or a score file"),
    "explain": ("jrm_engine.explain", "have a checkpoint write its critique of one edit"),
    "export": ("jrm_engine.export.cli", "export a checkpoint to ONNX / TensorRT / AOTInductor"),
    "serve": ("jrm_engine.serve.cli", "HTTP reward server on the C++ runtime (uvicorn or Ray Serve replicas)"),
}


def exit_status(command) -> int:
    """Run `command()`; bad input (ValueError, and OSError such as a missing file or an unwritable output path, whose
    messages name the record, argument or path) is one line on stderr and exit status 2 instead of a traceback."""
    try:
        command()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: jrm COMMAND [ARGS...]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<10} {help_}")
        print("\n`jrm COMMAND --help` explains each command.")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
