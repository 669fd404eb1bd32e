"""Ollama's Modelfile (FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE, LICENSE) -> an /api/create body."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


class ModelfileError(ValueError):
    pass


def parse_modelfile(text: str, base: Path) -> dict[str, Any]:
    """FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE, LICENSE; values may be \"\"\"-quoted over lines."""
    spec: dict[str, Any] = {"parameters": {}, "messages": []}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        command, _, rest = line.partition(" ")
        command, rest, role = command.upper(), rest.strip(), ""
        if command == "MESSAGE":  # the role comes before the (possibly """-quoted) content
            role, _, rest = rest.partition(" ")
            rest = rest.strip()
        if rest.startswith('"""'):
            body = rest[3:]
            while not body.endswith('"""') and i < len(lines):
                body += "\n" + lines[i]
                i += 1
            rest = body[:-3] if body.endswith('"""') else body
        elif len(rest) >= 2 and rest[0] == rest[-1] == '"':
            rest = rest[1:-1]
        if command == "FROM":
            path = (base / rest).expanduser() if not os.path.isabs(rest) else Path(rest)
            spec["from"] = str(path.resolve()) if path.exists() else rest
        elif command == "PARAMETER":
            key, _, value = rest.partition(" ")
            value = value.strip()
            try:
                parsed: Any = json.loads(value)
            except ValueError:
                parsed = value.strip('"')
            if key == "stop":
                spec["parameters"].setdefault("stop", []).append(str(parsed))
            else:
                spec["parameters"][key] = parsed
        elif command in ("SYSTEM", "TEMPLATE", "LICENSE"):
            spec[command.lower()] = rest
        elif command == "MESSAGE":
            if role.lower() not in ROLES:
                raise ModelfileError(f"MESSAGE role must be one of {', '.join(ROLES)}, not {role!r}")
            spec["messages"].append({"role": role.lower(), "content": rest})
        else:
            raise ModelfileError(f"unknown Modelfile command {command!r}")
    if "from" not in spec:
        raise ModelfileError("no FROM line in the Modelfile")
    return spec
