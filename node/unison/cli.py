"""`unison` command line: one entry point, one subcommand per program.

Each subcommand lives in its own module exposing `main(argv: list[str]) -> int`; this
file only dispatches, so parts stay independent and start-up stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "node": ("unison.node", "run a node: unison node -config FILE replicator|relayer"),
    "client": ("unison.client.main", "run the CRDT client that prints converged state"),
    "up": ("unison.local.up", "run a UnisonCluster manifest as local processes"),
    "demo": ("unison.local.demo", "start a local cluster and run the seed's scenarios"),
    "curve-keypair": ("unison.notify.keygen",
                      "make a ZeroMQ CURVE certificate pair for notifier authentication"),
    "render": ("unison_operator.render_cli", "print the Kubernetes manifests for a UnisonCluster"),
    "operator": ("unison_operator.run", "run the Kubernetes operator (kopf)"),
}


# What may start a `unisondb` command line: it runs a node, so `unison` does too.
NODE_SPELLINGS = frozenset({"-config", "--config", "-c", "replicator", "relayer", "server",
                            "replica", "relay"})


def available() -> dict[str, tuple[str, str]]:
    """Subcommands whose module is present in this installation."""
    out = {}
    for name, (mod, helptext) in COMMANDS.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out[name] = (mod, helptext)
    return out


def usage() -> str:
    cmds = available()
    width = max(len(n) for n in cmds) if cmds else 0
    lines = [
        "usage: unison COMMAND [ARGS...]",
        "",
        "Multi-datacenter CRDT database with ZeroMQ change notifications.",
        "",
        "commands:",
    ]
    lines += [f"  {n.ljust(width)}  {h}" for n, (_, h) in cmds.items()]
    lines += ["", "Run `unison COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:  # a command is required: say which there are, as a usage error
        print(usage(), file=sys.stderr)
        return 2
    if args[0] == "help" and len(args) > 1:  # `unison help up` = `unison up --help`
        args = [args[1], "--help"]
    elif args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        from unison import __version__

        print(f"unison {__version__}")
        return 0
    if args[0] in NODE_SPELLINGS:  # UnisonDB's own spellings: `unisondb -config F relayer`
        args = ["node", *args]
    cmds = available()
    if args[0] not in cmds:
        print(f"unison: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(cmds[args[0]][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
