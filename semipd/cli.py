"""The `semipd` command. Each subcommand lives in the module that owns its job and
exposes ``add_arguments(parser)`` and ``run(args) -> int``; they are imported only
when chosen, so `semipd demo` never imports torch."""

from __future__ import annotations

import argparse
import importlib
import sys

from semipd import __version__

DESCRIPTION = ("semipd: LLM serving with prefill and decode on disjoint sets of a GPU's SMs, steered by an "
               "SLO-aware controller; a simulated GPU runs the same scheduler and controller without one.")
# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("semipd.sim.demo", "the seed's demo: SLO-aware controller on a simulated GPU"),
    "simulate": ("semipd.sim.cli", "replay a workload on the simulated GPU under several policies"),
    "serve": ("semipd.server.cli", "OpenAI-compatible server on the real engine"),
    "bench": ("semipd.bench.cli", "load generator for any OpenAI-compatible server"),
    "generate": ("semipd.engine.cli", "offline generation with the real engine"),
    "profile": ("semipd.engine.profiling.cli", "measure a GPU + model over SM splits; writes the performance profile"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semipd", description=DESCRIPTION,
                                     epilog="`semipd COMMAND --help` lists a command's options.")
    parser.add_argument("--version", action="version", version=f"semipd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported.
        if argv and argv[0] == name:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
