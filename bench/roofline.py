"""Weight bytes read per decoded token, counted from a GGUF's own tensor table (KERNELS.md 5.2).

Every matmul weight is read once per token, except routed experts (expert_used_count of
expert_count per layer) and the token embedding (one row, unless the output head is tied to
it). The KV cache is left out: at the short contexts of the benchmark it is a few percent.
"""

from __future__ import annotations

import sys

from gguf import GGUFReader


def bytes_per_token(path: str) -> dict:
    reader = GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())
    field = reader.fields.get(f"{arch}.expert_used_count")
    used = int(field.contents()) if field else 0
    experts = int(reader.fields[f"{arch}.expert_count"].contents()) if used else 0
    names = {t.name for t in reader.tensors}
    routed = other = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue  # one row per token
        if "_exps." in t.name:
            routed += int(t.n_bytes) * used // experts
        else:
            other += int(t.n_bytes)
    return {"routed_bytes": routed, "other_bytes": other, "bytes_per_token": routed + other}


if __name__ == "__main__":
    for p in sys.argv[1:]:
        b = bytes_per_token(p)
        print(f"{p}: {b['bytes_per_token'] / 1e9:.3f} GB/token (routed {b['routed_bytes'] / 1e9:.3f})")
