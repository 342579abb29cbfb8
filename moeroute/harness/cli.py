"""The ``moeroute`` command. Each sub-command is one module in ``moeroute/harness/commands/`` that defines
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Optional, Sequence

from moeroute.errors import MoeRouteError


def _commands() -> list:
    from moeroute.harness import commands

    mods = [importlib.import_module(f"{commands.__name__}.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    return sorted((m for m in mods if hasattr(m, "NAME")), key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moeroute", description="Benchmark and ablation suite for MoE routing.")
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="FILE",
        help="a Python file that registers extra routers (repeatable)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from moeroute.plugins import load_plugin_file

        for path in args.plugin:
            load_plugin_file(path)
        return int(args._run(args) or 0)
    except MoeRouteError as exc:
        print(f"moeroute: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moeroute: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
