"""CLI: python -m backend.testmodels ARCH OUT.gguf [--qtype Q8_0] [--seed 0] [--config '{...}']."""

from __future__ import annotations

import argparse
import json

from . import FAMILIES, SUPPORTED_QTYPES, write_model


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m backend.testmodels", description=__doc__)
    p.add_argument("arch", choices=sorted(FAMILIES))
    p.add_argument("out")
    p.add_argument("--qtype", default="F32", choices=sorted(SUPPORTED_QTYPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="JSON object of HF config overrides")
    p.add_argument("--split-max-tensors", type=int, default=0)
    a = p.parse_args()
    config = json.loads(a.config) if a.config else None
    path = write_model(a.arch, a.out, config=config, qtype=a.qtype, seed=a.seed, split_max_tensors=a.split_max_tensors)
    print(path)


if __name__ == "__main__":
    main()
