"""`ollama-compat`: `serve` starts the server; every other verb is a client of a running one."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from .server import main as serve  # imports the engine; client verbs stay light

        return serve(argv[1:])
    from .cli import main as client

    return client(argv)


if __name__ == "__main__":
    sys.exit(main())
