"""Tokenizer built from GGUF metadata alone (gpt2 byte-level BPE, llama SentencePiece BPE), llama.cpp-exact."""

from __future__ import annotations

from typing import Any, Iterable

from tokenizers import Regex, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from .detokenizer import IncrementalDetokenizer, byte_level_decoder

__all__ = ["Tokenizer", "TokenizerError", "IncrementalDetokenizer"]

# GGUF token types (gguf.TokenType), which llama.cpp maps one to one onto token attributes.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes per `tokenizer.ggml.pre`, as llama.cpp's llama-vocab.cpp applies them:
# each one splits every piece left by the previous one, keeping matches and gaps alike.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Escapes mark letters with singleton canonical decompositions (U+1F7D, U+2126, ...): typed
# literally, any NFC-normalizing editor would silently turn them into other code points.
_DEEPSEEK_LLM_LETTERS = (
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃"
)
_PRE_REGEXES: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "llama3": [_LLAMA3],
    "gpt2": [_GPT2],
    "smollm": [r"\p{N}", _GPT2],
    "qwen2": [_QWEN2],
    "qwen35": [_QWEN35],
    "deepseek-llm": [
        r"[\r\n]",
        r"\s?[" + _DEEPSEEK_LLM_LETTERS + r"]+",
        r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
        r"\s+$",
        r"[一-龥ࠀ-一가-퟿]+",
        r"\p{N}+",
    ],
    "deepseek-coder": [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"],
    "deepseek-v3": [
        r"\p{N}{1,3}",
        r"[一-龥぀-ゟ゠-ヿ]+",
        r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
        r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ],
}
# `tokenizer.ggml.pre` names -> (regex family, ignore_merges, add_bos default), after llama.cpp's table.
_PRE_ALIASES: dict[str, tuple[str, bool, bool | None]] = {
    **{n: ("llama3", True, True) for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral")},
    **{n: ("llama3", False, None) for n in ("dbrx", "smaug-bpe")},  # llama3's regex, BPE merges as usual
    **{n: ("qwen2", False, None) for n in ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan")},
    **{n: ("smollm", False, None) for n in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone")},
    **{n: ("gpt2", False, None) for n in ("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "mellum")},
    "qwen35": ("qwen35", False, None),
    "deepseek-llm": ("deepseek-llm", False, None),
    "deepseek-coder": ("deepseek-coder", False, None),
    "deepseek-v3": ("deepseek-v3", False, None),
    "default": ("default", False, None),
}
# Tokens that end a turn, by text; llama.cpp recognises the same list since GGUFs rarely say.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")  # fmt: skip
_EOG_TEXTS = set(_EOT_TEXTS) | {"<|eom_id|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "</s>", "[EOS]",
                                "<eos>", "<turn|>", "<|tool_response>", "[e~["}  # fmt: skip


class TokenizerError(ValueError):
    """One line naming the GGUF tokenizer field that is missing or unsupported."""


class Tokenizer:
    """encode/decode with llama.cpp's semantics; the BPE merge loop runs in the `tokenizers` crate."""

    def __init__(self, tokens: list[str], token_types: list[int], model: str, hf: _HFTokenizer, *,
                 bos_id: int | None, eos_id: int | None, eot_id: int | None, eog_ids: set[int],
                 add_bos: bool, add_eos: bool, add_space_prefix: bool) -> None:  # fmt: skip
        self.tokens = tokens
        self.token_types = token_types
        self.model = model
        self._hf = hf
        # encode_batch releases the GIL while the crate works and encode holds it: a 1 MB prompt
        # froze every other thread (the engine's among them) for 0.5 s. _fast skips offsets.
        self._encode_batch = getattr(hf, "encode_batch_fast", hf.encode_batch)
        self.bos_id, self.eos_id, self.eot_id = bos_id, eos_id, eot_id
        self.eog_ids = frozenset(eog_ids)
        self.add_bos, self.add_eos, self.add_space_prefix = add_bos, add_eos, add_space_prefix
        self._byte_decoder = byte_level_decoder() if model == "gpt2" else None
        self._pieces: dict[int, bytes] = {}
        # llama.cpp matches these verbatim before the BPE pass, longest first (user-defined ones
        # even when parse_special is off); equal lengths keep id order so results are stable.
        special = [i for i, t in enumerate(token_types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
        special.sort(key=lambda i: (-len(tokens[i]), i))
        self._special = [(tokens[i], i, token_types[i] == USER_DEFINED) for i in special if tokens[i]]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> "Tokenizer":
        model = metadata.get("tokenizer.ggml.model")
        tokens = metadata.get("tokenizer.ggml.tokens")
        if model is None or tokens is None:
            raise TokenizerError("GGUF has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
        types = list(metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
        add_bos_default, add_space_default = False, False
        if model == "gpt2":
            pre = metadata.get("tokenizer.ggml.pre") or "default"
            if pre not in _PRE_ALIASES:
                raise TokenizerError(f"unsupported pre-tokenizer tokenizer.ggml.pre='{pre}'")
            family, ignore_merges, bos = _PRE_ALIASES[pre]
            add_bos_default = bool(bos)
            merges = metadata.get("tokenizer.ggml.merges") or []
            hf = _byte_level_bpe(tokens, merges, _PRE_REGEXES[family], ignore_merges)
        elif model == "llama":
            scores = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
            add_bos_default, add_space_default = True, True
            hf = _sentencepiece_bpe(tokens, scores)
        else:
            raise TokenizerError(f"unsupported tokenizer model tokenizer.ggml.model='{model}'")

        def key(name: str, default=None):
            return metadata.get(f"tokenizer.ggml.{name}", default)

        def token_id(name: str) -> int | None:
            v = key(f"{name}_token_id")
            return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

        by_text = {t: i for i, t in enumerate(tokens)}
        eot_id = token_id("eot")
        if eot_id is None:
            found = [by_text[t] for t in _EOT_TEXTS if t in by_text]
            eot_id = min(found) if found else None
        eog = {by_text[t] for t in _EOG_TEXTS if t in by_text}
        eog |= {i for i in (token_id("eos"), eot_id, token_id("eom")) if i is not None}
        # llama.cpp's exceptions: harmony-style vocabularies end a message, not the generation,
        # with <|end|>; Gemma-4-style ones use </s> as text when <|tool_response> exists.
        names = by_text.keys()
        if "<|end|>" in names and ({"<|return|>", "<|call|>"} <= names or {"<|calls|>", "<|flush|>"} <= names):
            eog.discard(by_text["<|end|>"])
            types[by_text["<|end|>"]] = USER_DEFINED
        if "</s>" in by_text and "<|tool_response>" in by_text:
            eog.discard(by_text["</s>"])
            types[by_text["</s>"]] = NORMAL
        for i in eog:
            # As llama.cpp: an end-of-generation token is control even when the GGUF says otherwise.
            if types[i] != CONTROL:
                types[i] = CONTROL
        return cls(tokens, types, model, hf, bos_id=token_id("bos"), eos_id=token_id("eos"), eot_id=eot_id,
                   eog_ids=eog, add_bos=bool(key("add_bos_token", add_bos_default)),
                   add_eos=bool(key("add_eos_token", False)),
                   add_space_prefix=bool(key("add_space_prefix", add_space_default)))  # fmt: skip

    def is_eog(self, token: int) -> bool:
        return token in self.eog_ids

    def is_control(self, token: int) -> bool:
        return self.token_types[token] in (CONTROL, UNKNOWN)

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        out: list[int] = []
        pieces = self._partition(text, parse_special)
        if add_special and self.add_bos:
            if self.bos_id is None:
                raise TokenizerError("tokenizer.ggml.add_bos_token is true but bos_token_id is not set")
            # A rendered chat template usually spells out the BOS itself; like llama.cpp's chat
            # path (which strips it from the template output) we never send two.
            if not pieces or pieces[0] != self.bos_id:
                out.append(self.bos_id)
        prev_special = True  # SentencePiece prefixes a space to the first fragment and after specials
        for piece in pieces:
            if isinstance(piece, int):
                out.append(piece)
                prev_special = True
                continue
            if self.model == "llama":
                if self.add_space_prefix and prev_special:
                    piece = " " + piece
                piece = piece.replace(" ", "\u2581")
            out.extend(self._encode_batch([piece], add_special_tokens=False)[0].ids)
            prev_special = False
        if add_special and self.add_eos:
            if self.eos_id is None:
                raise TokenizerError("tokenizer.ggml.add_eos_token is true but eos_token_id is not set")
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Splits text at special-token strings: each token in turn, longest first, over the
        fragments still raw, exactly the order llama.cpp's tokenizer_st_partition uses."""
        pieces: list[str | int] = [text] if text else []
        for tok_text, tok_id, user_defined in self._special:
            if not parse_special and not user_defined:
                continue
            if tok_text not in text:
                continue  # cheap pre-filter: most of a 262k vocabulary's specials never occur
            nxt: list[str | int] = []
            for piece in pieces:
                if isinstance(piece, int) or tok_text not in piece:
                    nxt.append(piece)
                    continue
                parts = piece.split(tok_text)
                for j, part in enumerate(parts):
                    if j:
                        nxt.append(tok_id)
                    if part:
                        nxt.append(part)
            pieces = nxt
        return pieces

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens give their own text (e.g. b"<|im_end|>")."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
        return piece

    def _piece(self, token: int) -> bytes:
        text, kind = self.tokens[token], self.token_types[token]
        if kind == BYTE and text.startswith("<0x") and len(text) == 6:
            return bytes([int(text[3:5], 16)])
        if kind in (CONTROL, UNKNOWN, USER_DEFINED):
            return text.encode()
        if self._byte_decoder is not None:
            dec = self._byte_decoder
            # A char outside the byte map can only come from a broken vocab; keep it readable.
            return b"".join(bytes([dec[c]]) if c in dec else c.encode() for c in text)
        return text.replace("\u2581", " ").encode()

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        data = b"".join(self.token_bytes(i) for i in ids if not (skip_special and self.is_control(i)))
        return data.decode("utf-8", errors="replace")


def _byte_level_bpe(tokens: list[str], merges: list[str], regexes: list[str], ignore_merges: bool) -> _HFTokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = []
    for m in merges:
        # llama.cpp splits at the first space after position 0 (a token may itself start with one).
        pos = m.find(" ", 1)
        if pos < 0:
            continue
        a, b = m[:pos], m[pos + 1 :]
        if a in vocab and b in vocab and a + b in vocab:  # the crate rejects merges into unknown tokens
            pairs.append((a, b))
    hf = _HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level])
    return hf


def _sentencepiece_bpe(tokens: list[str], scores: list[float]) -> _HFTokenizer:
    """llama.cpp's SPM loop merges the adjacent pair whose concatenation is the highest-scoring
    vocabulary entry. Ranking every (left, right) split of every entry by that entry's score
    gives the same result in a rank-ordered BPE, because in these vocabularies scores are unique
    per entry, and two pairs that form the same entry never overlap, so their order is moot."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked: list[tuple[float, int, int, str, str]] = []
    for tid, text in enumerate(tokens):
        for k in range(1, len(text)):
            a, b = text[:k], text[k:]
            if a in vocab and b in vocab:
                ranked.append((-scores[tid], tid, k, a, b))
    ranked.sort()
    merges = [(a, b) for _, _, _, a, b in ranked]
    return _HFTokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
