"""The ``moeroute`` command. Each sub-command is one module in ``moeroute/experiments/commands/``, named as the
command, that defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

Only the module of the command being run is imported (all of them for ``--help``), so a quick command such as
``moeroute routers`` does not pay for the imports of ``bench`` or ``report``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Optional, Sequence

from moeroute.core.errors import MoeRouteError, RoutingInvariantError

COMMANDS_PACKAGE = "moeroute.experiments.commands"


def command_names() -> list[str]:
    """The sub-commands, from the module names alone (nothing imported)."""
    package = importlib.import_module(COMMANDS_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, the other commands are listed without importing their modules."""
    parser = argparse.ArgumentParser(prog="moeroute", description="Benchmark and ablation suite for MoE routing.")
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="FILE",
        help="a Python file that registers extra routers (repeatable)",
    )
    parser.add_argument("--traceback", action="store_true", help="on an error, print the full traceback too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in command_names():
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        mod = importlib.import_module(f"{COMMANDS_PACKAGE}.{name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = set(command_names())
    chosen = next((a for a in argv if a in names), None)
    help_asked = chosen is None or any(a in ("-h", "--help") for a in argv[: argv.index(chosen)])
    args = build_parser(None if help_asked else chosen).parse_args(argv)
    try:
        from moeroute.core.plugins import load_plugin_file

        for path in args.plugin:
            load_plugin_file(path)
        return int(args._run(args) or 0)
    except (MoeRouteError, RoutingInvariantError) as exc:
        if args.traceback:
            raise
        what = "routing refused" if isinstance(exc, RoutingInvariantError) else "error"
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        print(f"moeroute: {what}: {first}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moeroute: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
