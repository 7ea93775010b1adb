"""The lab's CLI: `PYTHONPATH=tests python3 -m jflab COMMAND ...` (as root).

    rootfs [--suite S] [--rebuild]
    boot NAME [--suite S] [--ip N] [--bind SRC:DST] [--bind-ro SRC:DST] [--keep]
    run NAME [--stdin] -- CMD...
    shell NAME
    reboot NAME
    stop NAME...
    list
    down
    pebble [start | stop | root | dns NAME IP]
"""
from __future__ import annotations

import argparse
import json
import sys

import jflab
from jflab import pebble


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m jflab", description=jflab.__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("rootfs", help="build the cached rootfs (if missing or its recipe changed)")
    s.add_argument("--suite", choices=sorted(jflab.SUITES), default=jflab.DEFAULT_SUITE)
    s.add_argument("--rebuild", action="store_true")
    s = sub.add_parser("boot", help="boot a node on a fresh overlay")
    s.add_argument("name")
    s.add_argument("--suite", choices=sorted(jflab.SUITES),
                   help=f"Debian suite (default {jflab.DEFAULT_SUITE}; with --keep, the node's own)")
    s.add_argument("--ip", help="host number (e.g. 20) or address on the lab network")
    s.add_argument("--bind", action="append", default=[], metavar="SRC:DST")
    s.add_argument("--bind-ro", action="append", default=[], metavar="SRC:DST")
    s.add_argument("--keep", action="store_true", help="reuse the node's existing overlay")
    s = sub.add_parser("run", help="run a command in a node: run [--stdin] NAME -- CMD...")
    s.add_argument("name")
    s.add_argument("--stdin", action="store_true", help="pass this process's stdin to the command")
    for verb in ("shell", "reboot"):
        sub.add_parser(verb).add_argument("name")
    sub.add_parser("stop", help="power nodes off (their overlays are kept)").add_argument("names", nargs="+")
    sub.add_parser("list", help="nodes, their addresses, suites and whether they run")
    sub.add_parser("down", help="stop everything the lab started")
    s = sub.add_parser("pebble", help="the ACME test server on the bridge: start (prints where it is), "
                                      "stop, root (its issuing root, PEM), dns NAME IP (an A record)")
    s.add_argument("action", nargs="?", default="start", choices=["start", "stop", "root", "dns"])
    s.add_argument("args", nargs="*", metavar="NAME IP")
    argv = sys.argv[1:] if argv is None else argv
    command = []
    if "--" in argv:
        argv, command = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = p.parse_args(argv)

    problems = jflab.preflight()
    if problems:
        p.error("; ".join(problems))
    try:
        if args.cmd == "rootfs":
            print(jflab.build_rootfs(args.suite, force=args.rebuild))
        elif args.cmd == "boot":
            print(jflab.boot(args.name, ip=args.ip, binds=args.bind, binds_ro=args.bind_ro, fresh=not args.keep,
                             suite=args.suite))
        elif args.cmd == "run":
            if not command:
                p.error("run NAME -- CMD...")
            res = jflab.run(args.name, command, input=sys.stdin.read() if args.stdin else None)
            sys.stdout.write(res.stdout)
            sys.stderr.write(res.stderr)
            return res.rc
        elif args.cmd == "shell":
            return jflab.shell(args.name)
        elif args.cmd == "stop":
            jflab.stop(*args.names)
        elif args.cmd == "reboot":
            print(jflab.reboot(args.name))
        elif args.cmd == "list":
            for name in jflab.nodes():
                state = "running" if jflab.leader(name) else "stopped"
                print(f"{name}\t{jflab.node_ip(name)}\t{jflab.node_suite(name)}\t{state}")
        elif args.cmd == "down":
            jflab.down()
        elif args.cmd == "pebble":
            if args.action == "dns" and len(args.args) != 2:
                p.error("pebble dns NAME IP")
            if args.action != "dns" and args.args:
                p.error(f"pebble {args.action} takes no arguments")
            if args.action == "start":
                print(json.dumps(jflab.ensure_pebble(), indent=2))
            elif args.action == "stop":
                jflab.stop_pebble()
            elif args.action == "root":
                sys.stdout.write(jflab.pebble_root())
            else:
                jflab.add_dns(*args.args)
                print(f"{args.args[0]} -> {args.args[1]} (Pebble's DNS {pebble.info()['dns']})")
    except jflab.LabError as exc:
        print(f"jflab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
