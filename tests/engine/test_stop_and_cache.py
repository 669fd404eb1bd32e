"""Stop strings across token boundaries and llama.cpp-style prefix reuse of cache slots."""

import itertools
import random

import pytest
import torch

from backend.engine.kv_cache import CachePool, ForwardBatch, SequenceCache
from backend.engine.sequence import StopMatcher


def run_stop(pieces, stops):
    m = StopMatcher(tuple(stops))
    out, stopped = [], False
    for p in pieces:
        text, stopped = m.push(p)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(m.flush())
    return "".join(out), stopped


def reference_stop(text, stops):
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


@pytest.mark.parametrize("text,stops", [
    ("Hello world. User: hi", ["User:"]),
    ("abcabcabd", ["abd"]),
    ("no stop here", ["xyz"]),
    ("</s> tail", ["</s>"]),
    ("aaab", ["aab", "b"]),
    ("emoji 😀 then STOP", ["STOP"]),
    ("partial Use", ["User:"]),
])
def test_stop_strings_split_at_every_boundary(text, stops):
    expected = reference_stop(text, stops)
    for cuts in itertools.combinations(range(1, len(text)), 2):
        a, b = cuts
        assert run_stop([text[:a], text[a:b], text[b:]], stops) == expected
    assert run_stop(list(text), stops) == expected


def test_stop_never_leaks_a_prefix_that_later_completes():
    m = StopMatcher(("<|end|>",))
    emitted = ""
    for piece in ["Done", "<|", "en", "d|>", "garbage"]:
        text, stopped = m.push(piece)
        emitted += text
        if stopped:
            break
    assert stopped and emitted == "Done"


def test_random_stop_fuzz():
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("ab<>|") for _ in range(rng.randint(0, 20)))
        stops = ["".join(rng.choice("ab<>|") for _ in range(rng.randint(1, 4))) for _ in range(2)]
        pieces, i = [], 0
        while i < len(text):
            n = rng.randint(1, 4)
            pieces.append(text[i : i + n])
            i += n
        assert run_stop(pieces, stops) == reference_stop(text, stops)


def test_matched_is_the_stop_string_that_ended_the_text():
    """Which stop ended it (Anthropic's stop_sequence): the earliest in the text, the first listed
    when two start at the same place; compared with str.find over the whole text."""
    rng = random.Random(1)
    for _ in range(300):
        text = "".join(rng.choice("ab<>|") for _ in range(rng.randint(0, 20)))
        stops = ["".join(rng.choice("ab<>|") for _ in range(rng.randint(1, 4))) for _ in range(3)]
        m = StopMatcher(tuple(stops))
        for piece in (text[i : i + 3] for i in range(0, len(text), 3)):
            if m.push(piece)[1]:
                break
        hits = sorted((text.find(s), n) for n, s in enumerate(stops) if s in text)
        assert m.matched == (stops[hits[0][1]] if hits else "")


def make_pool(slots=2, capacity=16):
    def allocate(cap):
        return SequenceCache([(torch.zeros(cap, 2),)], cap)
    return CachePool(allocate, slots, capacity)


def test_pool_reuses_longest_prefix_and_keeps_one_token_to_compute():
    pool = make_pool()
    a, reused = pool.acquire([1, 2, 3, 4])
    assert reused == 0
    a.cache.length = 6
    pool.release(a, [1, 2, 3, 4, 9, 9])
    b, reused = pool.acquire([7, 7])  # no common prefix: a fresh slot, a's tokens survive
    assert b is not a and reused == 0
    c, reused = pool.acquire([1, 2, 3, 4, 9, 5, 6])
    assert c is a and reused == 5 and a.cache.length == 5
    pool.release(c, [1, 2, 3, 4, 9])
    assert pool.acquire([1, 2, 3, 4, 9, 5])[1] == 5  # the next turn of the same chat


def test_pool_identical_prompt_recomputes_last_token():
    pool = make_pool(slots=1)
    s, _ = pool.acquire([5, 6, 7])
    s.cache.length = 3
    pool.release(s, [5, 6, 7])
    s2, reused = pool.acquire([5, 6, 7])
    assert s2 is s and reused == 2 and s.cache.length == 2


def test_pool_exhaustion_is_reported():
    pool = make_pool(slots=1)
    pool.acquire([1])
    assert not pool.has_free()
    with pytest.raises(RuntimeError):
        pool.acquire([1])


def test_forward_batch_positions_and_capacity():
    c1, c2 = SequenceCache([], 8), SequenceCache([], 8)
    c1.length = 3
    batch = ForwardBatch((2, 3), (c1, c2))
    assert batch.positions().tolist() == [3, 4, 0, 1, 2]
    assert batch.spans() == [(0, 2), (2, 5)]
    batch.advance()
    assert (c1.length, c2.length) == (5, 3)
    with pytest.raises(ValueError):
        ForwardBatch((4,), (c1,))
