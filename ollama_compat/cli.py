"""The `ollama`-style client verbs (run, list, ps, show, pull, create, cp, rm, stop) against a
running server chosen by OLLAMA_HOST. Standard library only: no engine, no torch."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from .modelfile import ModelfileError, parse_modelfile
from .settings import parse_host
from .types import VERSION


class CliError(Exception):
    pass


class Client:
    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")

    def _open(self, method: str, path: str, body: Any = None, data: Any = None, headers: dict | None = None):
        payload = data if data is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=payload, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
        try:
            return urllib.request.urlopen(req, timeout=None)
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except ValueError:
                message = text or e.reason
            raise CliError(f"Error: {message}") from None
        except urllib.error.URLError as e:
            raise CliError(f"Error: could not connect to ollama-compat at {self.base} ({e.reason}); "
                           "is `ollama-compat serve` running?") from None  # fmt: skip

    def json(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as r:
            text = r.read().decode()
        return json.loads(text) if text.strip() else {}

    def stream(self, path: str, body: Any) -> Iterator[dict]:
        with self._open("POST", path, body) as r:
            for raw in r:
                if not raw.strip():
                    continue
                line = json.loads(raw)
                if "error" in line:
                    raise CliError(f"Error: {line['error']}")
                yield line

    def upload(self, path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        try:
            self._open("HEAD", f"/api/blobs/{digest}").close()
        except CliError:
            # The open file is the body: urllib streams it, so a 100 GB GGUF never sits in memory.
            with open(path, "rb") as f:
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)}
                self._open("POST", f"/api/blobs/{digest}", data=f, headers=headers).close()
        return digest


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _human_time(stamp: str, now: float) -> str:
    """Ollama's format.HumanTime: "3 minutes ago", "About an hour from now", "Forever"."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))  # Go writes nanoseconds
    try:
        delta = datetime.fromisoformat(text).timestamp() - now
    except ValueError:
        return stamp
    if delta > 10 * 365 * 86400:
        return "Forever"
    return f"{_human_duration(abs(delta))} {'from now' if delta > 0 else 'ago'}"


def _human_duration(seconds: float) -> str:
    """Ollama's format.humanDuration: whole seconds and minutes, then rounded hours."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        return "1 second" if int(seconds) == 1 else f"{int(seconds)} seconds"
    if seconds < 3600:
        return "About a minute" if int(seconds // 60) == 1 else f"{int(seconds // 60)} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    for limit, size, unit in ((48, 1, "hours"), (24 * 14, 24, "days"), (24 * 60, 24 * 7, "weeks"),
                              (24 * 730, 24 * 30, "months")):  # fmt: skip
        if hours < limit:
            return f"{hours // size} {unit}"
    return f"{int(seconds // (365 * 86400))} years"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("    ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def cmd_list(client: Client, args) -> None:
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in client.json("GET", "/api/tags")["models"]:
        rows.append([m["name"], m["digest"][:12], _size(m["size"]), _human_time(m["modified_at"], time.time())])
    _table(rows)


def cmd_ps(client: Client, args) -> None:
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in client.json("GET", "/api/ps")["models"]:
        rows.append([m["name"], m["digest"][:12], _size(m["size"]), _processor(m), str(m["context_length"]),
                     _human_time(m["expires_at"], time.time())])  # fmt: skip
    _table(rows)


def _processor(m: dict) -> str:
    """Ollama's PROCESSOR column: the share of the model in GPU memory."""
    size, vram = m.get("size") or 0, m.get("size_vram") or 0
    if vram <= 0 or size <= 0:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    gpu = round(100 * vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


def cmd_show(client: Client, args) -> None:
    info = client.json("POST", "/api/show", {"model": args.model})
    if args.modelfile:
        print(info["modelfile"], end="")
        return
    d, mi = info["details"], info["model_info"]
    arch = mi.get("general.architecture", d["family"])
    print("  Model")
    for key, value in [("architecture", arch), ("parameters", d["parameter_size"]),
                       ("context length", mi.get(f"{arch}.context_length", "")),
                       ("embedding length", mi.get(f"{arch}.embedding_length", "")),
                       ("quantization", d["quantization_level"])]:  # fmt: skip
        print(f"    {key:<20}{value}")
    print("\n  Capabilities")
    for cap in info.get("capabilities", []):
        print(f"    {cap}")
    if info.get("parameters"):
        print("\n  Parameters\n" + "\n".join("    " + line for line in info["parameters"].splitlines()))
    if info.get("system"):
        print("\n  System\n    " + info["system"])


def _progress(lines: Iterator[dict]) -> None:
    """One bar per status, redrawn in place; a new status starts a new line."""
    open_bar = ""  # the status whose bar is on the current line, unfinished
    for line in lines:
        status = line.get("status", "")
        if open_bar and open_bar != status:
            print()
            open_bar = ""
        if line.get("total"):
            pct = 100 * line.get("completed", 0) // max(1, line["total"])
            bar = "█" * (pct // 5) + "▏" * (20 - pct // 5)
            print(f"\r{status} {pct:3d}% {bar} {_size(line['total'])}", end="", flush=True)
            open_bar = status if pct < 100 else ""
            if pct == 100:
                print()
        else:
            print(status, flush=True)
    if open_bar:
        print()


def cmd_pull(client: Client, args) -> None:
    _progress(client.stream("/api/pull", {"model": args.model}))


def cmd_create(client: Client, args) -> None:
    modelfile = Path(args.file)
    try:
        spec = parse_modelfile(modelfile.read_text(), modelfile.parent)
    except (OSError, ModelfileError) as e:
        raise CliError(f"Error: {e}") from None
    body: dict[str, Any] = {"model": args.model, **{k: v for k, v in spec.items() if v and k != "from"}}
    source = Path(spec["from"])
    if source.is_file():  # upload the weights, as Ollama's CLI does: the server takes no paths
        print("gathering model components", flush=True)
        body["files"] = {source.name: client.upload(source)}
    elif spec["from"].startswith(("/", "./", "../", "~")) or spec["from"].endswith(".gguf"):
        raise CliError(f"Error: FROM {spec['from']}: no such file")
    else:
        body["from"] = spec["from"]
    _progress(client.stream("/api/create", body))


def cmd_cp(client: Client, args) -> None:
    client.json("POST", "/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")


def cmd_rm(client: Client, args) -> None:
    for name in args.models:
        client.json("DELETE", "/api/delete", {"model": name})
        print(f"deleted '{name}'")


def cmd_stop(client: Client, args) -> None:
    client.json("POST", "/api/generate", {"model": args.model, "keep_alive": 0})


def _chat(client: Client, model: str, messages: list[dict], think: bool | str | None) -> str:
    body: dict[str, Any] = {"model": model, "messages": messages}
    if think is not None:
        body["think"] = think
    content, thinking_shown = [], False
    for line in client.stream("/api/chat", body):
        message = line.get("message", {})
        if not content and message.get("content"):
            # The whitespace a model writes before its answer (after a skipped <think></think>,
            # with --think=false) is not shown, as Ollama's thinking parser drops it.
            message = {**message, "content": message["content"].lstrip()}
        if message.get("thinking"):
            if not thinking_shown:
                print("Thinking...", flush=True)
                thinking_shown = True
            print(f"\033[2m{message['thinking']}\033[0m" if sys.stdout.isatty() else message["thinking"],
                  end="", flush=True)  # fmt: skip
        if message.get("content"):
            if thinking_shown and not content:
                print("\n...done thinking.\n", flush=True)
            content.append(message["content"])
            print(message["content"], end="", flush=True)
    print("\n" if sys.stdout.isatty() else "", flush=True)
    return "".join(content)


def _read_prompt() -> str | None:
    """One message: a line, or several between \"\"\" marks. None at end of input."""
    prompt = ">>> " if sys.stdin.isatty() else ""
    try:
        line = input(prompt)
    except EOFError:
        return None
    if not line.startswith('"""'):
        return line
    parts = [line[3:]]
    while True:
        try:
            more = input("... " if prompt else "")
        except EOFError:
            break
        if more.endswith('"""'):
            parts.append(more[:-3])
            break
        parts.append(more)
    return "\n".join(parts).strip("\n")


def cmd_run(client: Client, args) -> None:
    try:
        client.json("POST", "/api/show", {"model": args.model})
    except CliError as e:
        if "not found" not in str(e):
            raise
        _progress(client.stream("/api/pull", {"model": args.model}))
    think = False if args.nothink else args.think
    if args.prompt:
        _chat(client, args.model, [{"role": "user", "content": " ".join(args.prompt)}], think)
        return
    client.json("POST", "/api/generate", {"model": args.model})  # load now, as Ollama's run does
    messages: list[dict] = []
    while (text := _read_prompt()) is not None:
        command = text.strip()
        if command in ("/bye", "/exit"):
            break
        if not command:
            continue
        if command == "/clear":
            messages.clear()
            print("Cleared session context")
            continue
        if command in ("/set think", "/set nothink"):
            think = command == "/set think"
            print(f"Set '{'think' if think else 'nothink'}' mode.")
            continue
        if command.startswith("/"):
            print(HELP)
            continue
        messages.append({"role": "user", "content": text})
        try:
            messages.append({"role": "assistant", "content": _chat(client, args.model, messages, think)})
        except KeyboardInterrupt:  # Ctrl-C stops this answer (closing the stream cancels it), not the session
            messages.pop()
            print()


HELP = """Available Commands:
  /set think      Ask for reasoning
  /set nothink    Ask for no reasoning
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message."""


def _think_flag(value: str) -> bool | str:
    """Ollama's `run --think[=value]`: true, false, or a level."""
    if value in ("true", "false"):
        return value == "true"
    if value in ("high", "medium", "low", "max"):
        return value
    raise argparse.ArgumentTypeError(f"invalid value for --think: {value!r} (must be true, false, high, medium, low, or max)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ollama-compat", description="Ollama-compatible server for MoE models on CPU.")
    p.add_argument("-v", "--version", action="store_true", help="show the version")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", help="start the server (ollama-compat serve --help)")
    run = sub.add_parser("run", help="chat with a model")
    run.add_argument("model")
    run.add_argument("prompt", nargs="*")
    run.add_argument("--think", default=None, type=_think_flag, metavar="true|false|high|medium|low|max",
                     help="ask for reasoning (or not, or at a level), as Ollama's --think")  # fmt: skip
    run.add_argument("--nothink", action="store_true", help="ask for no reasoning")
    sub.add_parser("list", aliases=["ls"], help="list models")
    sub.add_parser("ps", help="list loaded models")
    show = sub.add_parser("show", help="show a model")
    show.add_argument("model")
    show.add_argument("--modelfile", action="store_true")
    sub.add_parser("pull", help="fetch a model").add_argument("model")
    create = sub.add_parser("create", help="create a model from a Modelfile")
    create.add_argument("model")
    create.add_argument("-f", "--file", default="Modelfile")
    cp = sub.add_parser("cp", help="copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    sub.add_parser("rm", help="remove models").add_argument("models", nargs="+")
    sub.add_parser("stop", help="unload a model").add_argument("model")
    return p


COMMANDS = {"run": cmd_run, "list": cmd_list, "ls": cmd_list, "ps": cmd_ps, "show": cmd_show, "pull": cmd_pull,
            "create": cmd_create, "cp": cmd_cp, "rm": cmd_rm, "stop": cmd_stop}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # A bare --think is --think=true (cobra's NoOptDefVal): the next word stays the prompt.
    argv = ["--think=true" if a == "--think" else a for a in (sys.argv[1:] if argv is None else argv)]
    args, rest = parser.parse_known_args(argv)
    if rest and args.command == "run" and not any(r.startswith("-") for r in rest):
        args.prompt += rest  # flags anywhere, as Ollama's cobra takes them: run m --think=false hi
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.version:
        print(f"ollama-compat version is {VERSION}")
        return 0
    if not args.command:
        parser.print_help()
        return 0
    client = Client(parse_host(os.environ.get("OLLAMA_HOST")).url)
    try:
        COMMANDS[args.command](client, args)
    except CliError as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
