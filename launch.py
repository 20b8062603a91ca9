"""Entry point: `python launch.py generate MODE [options]` generates headless; `python launch.py` starts the studio."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "generate":
        from studio.cli import main as generate

        return generate(argv[1:])
    from studio.serve import main as serve

    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
