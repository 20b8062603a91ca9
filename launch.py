"""Entry point: `python launch.py generate MODE [options]` generates headless; `python launch.py` starts the studio."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "generate":
        from studio.cli import main as generate

        return generate(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("Run `python launch.py generate --help` for the headless options.")
        return 0
    print("The browser studio is not built yet; generate headless with `python launch.py generate MODE ...` "
          "(see `python launch.py generate --help`).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
