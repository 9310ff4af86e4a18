"""Topic patterns (NATS syntax) against an independent reference matcher.

`*` matches exactly one segment, `>` one or more trailing segments.  The
reference below is written from that definition alone; the bus's
`matches`, its trie (`PatternIndex`) and a running system must agree with it.
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from runtime import Supervisor
from runtime.bus import Subscription
from runtime.topics import (
    PatternIndex,
    _widest,
    check_pattern,
    check_topic,
    cover,
    covers,
    matches,
)

# -- the reference -------------------------------------------------------------


def ref_match(pattern: list[str], topic: list[str]) -> bool:
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == ">":
        return len(topic) >= 1  # one or more trailing segments
    if not topic:
        return False
    if head != "*" and head != topic[0]:
        return False
    return ref_match(rest, topic[1:])


def ref_valid_topic(text: str) -> bool:
    parts = text.split(".")
    return all(p and "*" not in p and ">" not in p for p in parts)


def ref_valid_pattern(text: str) -> bool:
    parts = text.split(".")
    for i, p in enumerate(parts):
        if not p:
            return False
        if p == ">" and i != len(parts) - 1:
            return False
        if p not in ("*", ">") and ("*" in p or ">" in p):
            return False
    return True


# -- strategies ------------------------------------------------------------------

WORDS = ["a", "b", "c", "ab"]  # few, so that topics and patterns collide often
topic_parts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5)


@st.composite
def pattern_parts(draw: st.DrawFn) -> list[str]:
    parts = draw(st.lists(st.sampled_from([*WORDS, "*", "*"]), min_size=0, max_size=4))
    if not parts or draw(st.booleans()):
        parts.append(">")
    return parts


def join(parts: list[str]) -> str:
    return ".".join(parts)


# -- matches ---------------------------------------------------------------------


@given(pattern_parts(), topic_parts)
@settings(max_examples=600, deadline=None)
def test_matches_agrees_with_the_reference(pattern: list[str], topic: list[str]) -> None:
    assert matches(join(pattern), join(topic)) == ref_match(pattern, topic)


@given(topic_parts)
@settings(max_examples=200, deadline=None)
def test_a_topic_matches_itself_and_the_obvious_wildcards(topic: list[str]) -> None:
    text = join(topic)
    assert matches(text, text)
    assert matches(">", text)
    assert matches(join(["*"] * len(topic)), text)
    assert not matches(join(["*"] * (len(topic) + 1)), text)
    assert not matches(text + ".>", text)  # '>' needs at least one more segment
    assert matches(join([*topic[:-1], ">"]), text)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a", "a", True),
        ("a", "a.b", False),
        ("*", "a", True),
        ("*", "a.b", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("a.>", "a", False),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c", True),
        ("a.*", "a.b.c", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("*.b", "a.b", True),
        ("*.b", "b", False),
        ("*.>", "a", False),
        ("*.>", "a.b", True),
        ("training.*", "training.done", True),
        ("model.>", "model.v1.saved", True),
        ("model.>", "models.v1", False),
        ("ab", "a", False),
    ],
)
def test_matches_examples(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


@given(st.text(alphabet="ab.*>", min_size=0, max_size=8))
@settings(max_examples=500, deadline=None)
def test_validation_agrees_with_the_reference(text: str) -> None:
    try:
        check_pattern(text)
        pattern_ok = True
    except ValueError:
        pattern_ok = False
    assert pattern_ok == ref_valid_pattern(text)
    try:
        check_topic(text)
        topic_ok = True
    except ValueError:
        topic_ok = False
    assert topic_ok == ref_valid_topic(text)
    if not pattern_ok:
        with pytest.raises(ValueError):
            Subscription(text)
        with pytest.raises(ValueError):
            matches(text, "a")
    if not topic_ok:
        with pytest.raises(ValueError):
            matches(">", text)


@pytest.mark.parametrize("bad", [None, 1, 1.5, b"a", ["a"], ("a",), object()])
def test_non_strings_are_value_errors(bad: Any) -> None:
    with pytest.raises(ValueError):
        check_pattern(bad)
    with pytest.raises(ValueError):
        check_topic(bad)
    with pytest.raises(ValueError):
        Subscription(bad)


# -- the index -------------------------------------------------------------------


def matched(index: PatternIndex, topic: list[str]) -> list[Subscription]:
    return index.match(join(topic), tuple(topic))


def expected(subs: list[Subscription], topic: list[str]) -> set[int]:
    return {id(s) for s in subs if ref_match(s.pattern.split("."), topic)}


def assert_pruned(index: PatternIndex) -> None:
    root = index._root
    assert index.count == 0
    assert not root.children and root.star is None and not root.here and not root.tail


@given(st.lists(pattern_parts(), max_size=25), st.lists(topic_parts, min_size=1, max_size=25))
@settings(max_examples=300, deadline=None)
def test_index_matches_what_the_reference_matches(
    patterns: list[list[str]], topics: list[list[str]]
) -> None:
    index = PatternIndex()
    subs = [Subscription(join(p), seq=i) for i, p in enumerate(patterns)]
    for sub in subs:
        index.add(sub)
    assert index.count == len(subs)
    for topic in topics:
        found = matched(index, topic)
        assert len(found) == len({id(s) for s in found})  # each subscription once
        assert {id(s) for s in found} == expected(subs, topic)
        assert [s.seq for s in found] == sorted(s.seq for s in found)  # subscription order
        assert matched(index, topic) == found  # cached answer is the same


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Random add / remove / match steps; removes pick among live subscriptions."""
    ops: list[tuple[str, Any]] = []
    live = 0
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.sampled_from(["add", "add", "remove", "match"]))
        if kind == "remove" and live == 0:
            kind = "add"
        if kind == "add":
            ops.append(("add", draw(pattern_parts())))
            live += 1
        elif kind == "remove":
            ops.append(("remove", draw(st.integers(0, live - 1))))
            live -= 1
        else:
            ops.append(("match", draw(topic_parts)))
    return ops


@given(operations(), st.lists(topic_parts, min_size=1, max_size=10))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_index_add_remove_sequences_agree_with_the_reference_and_prune(
    ops: list[tuple[str, Any]], probes: list[list[str]]
) -> None:
    index = PatternIndex()
    live: list[Subscription] = []
    seq = 0
    for kind, arg in ops:
        if kind == "add":
            sub = Subscription(join(arg), seq=seq)
            seq += 1
            index.add(sub)
            live.append(sub)
        elif kind == "remove":
            index.remove(live.pop(arg))
        else:
            assert {id(s) for s in matched(index, arg)} == expected(live, arg)
        assert index.count == len(live)
        for topic in probes:
            assert {id(s) for s in matched(index, topic)} == expected(live, topic)
    for sub in list(live):  # remove the rest in a random-ish order
        index.remove(sub)
        live.remove(sub)
        for topic in probes:
            assert {id(s) for s in matched(index, topic)} == expected(live, topic)
    assert_pruned(index)


def test_same_pattern_twice_is_two_subscriptions_removed_one_at_a_time() -> None:
    index = PatternIndex()
    one, two = Subscription("a.*", seq=0), Subscription("a.*", seq=1)
    index.add(one)
    index.add(two)
    assert matched(index, ["a", "b"]) == [one, two]
    index.remove(one)
    assert matched(index, ["a", "b"]) == [two]
    index.remove(two)
    assert matched(index, ["a", "b"]) == []
    assert_pruned(index)


def test_churn_does_not_grow_the_trie() -> None:
    index = PatternIndex()
    rng = random.Random(7)
    for i in range(5_000):
        parts = [rng.choice(["a", "b", "*", f"x{i}"]) for _ in range(rng.randint(1, 4))]
        sub = Subscription(join(parts), seq=i)
        index.add(sub)
        assert sub in matched(index, [f"x{i}" if p == "*" else p for p in parts])
        index.remove(sub)
    assert_pruned(index)


# -- through a running system ------------------------------------------------------


async def test_bus_publish_counts_agree_with_the_reference(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Random streams on random patterns; each publish reaches exactly the
    reference's matching subscribers (and the runtime's listeners never count)."""
    rng = random.Random(20_240_601)
    patterns: list[list[str]] = []
    for _ in range(60):
        parts = [rng.choice([*WORDS, "*"]) for _ in range(rng.randint(0, 3))]
        if not parts or rng.random() < 0.4:
            parts.append(">")
        patterns.append(parts)
    async with runtime.open_system(Supervisor("app", children=[])) as system:
        async with AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(system.bus.stream(join(p), capacity=1000))
                for p in patterns
            ]
            topics = [[rng.choice(WORDS) for _ in range(rng.randint(1, 4))] for _ in range(200)]
            for topic in topics:
                want = sum(ref_match(p, topic) for p in patterns)
                assert await system.bus.publish(join(topic), None) == want
                assert system.publish(join(topic), None) == want
            for pattern, events in zip(patterns, streams, strict=True):
                got = []
                while True:
                    try:
                        got.append(events.receive_nowait().topic)
                    except trio.WouldBlock:
                        break
                want_topics = [join(t) for t in topics if ref_match(pattern, t) for _ in (0, 1)]
                assert got == want_topics


@pytest.mark.parametrize(
    ("outer", "inner", "covered"),
    [
        ("jobs.>", "jobs.high.*", True),
        ("*.x", "a.x", True),
        ("a.x", "*.x", False),
        ("a.>", "a.>", True),
        ("a.>", ">", False),
        (">", "a.>", True),
        ("*", "a.b", False),
        ("a.*", "a.>", False),
        (">", "system.x", False),
        ("system.>", "system.x", True),
    ],
)
def test_covers_says_whether_every_topic_of_one_pattern_matches_another(
    outer: str, inner: str, covered: bool
) -> None:
    assert covers(outer, inner) is covered


@given(st.lists(st.sampled_from(["a", "b", "*"]), min_size=1, max_size=3), st.booleans())
def test_widest_keeps_exactly_the_topics_matched(parts: list[str], tail: bool) -> None:
    """A topic matches one of `_widest(ps)` iff it matches one of `ps`."""
    patterns = [".".join(parts), ".".join(parts[:1]) + (".>" if tail else ""), "a.b", "*.b"]
    kept = _widest(patterns)
    assert set(kept) <= set(patterns)
    for topic in ["a", "b", "a.b", "b.b", "a.a", "a.b.c", "b.a.b"]:
        assert any(matches(p, topic) for p in kept) == any(matches(p, topic) for p in patterns)


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        ([], None),
        (["a.>"], "a.>"),
        (["jobs.>", "jobs.high.*"], "jobs.>"),
        (["jobs.a.>", "jobs.b.*"], "jobs.>"),
        (["a.>", "b.>"], ">"),
        (["jobs", "jobs.x"], ">"),  # `jobs.>` would miss `jobs` itself
        (["x.y.z", "x.y.w"], "x.y.>"),
    ],
)
def test_cover_is_one_pattern_as_narrow_as_the_common_words_allow(
    patterns: list[str], expected: str | None
) -> None:
    assert cover(patterns) == expected


@given(
    st.lists(st.lists(st.sampled_from(["a", "b", "*", ">"]), min_size=1, max_size=3), max_size=4)
)
def test_cover_matches_every_topic_one_of_its_patterns_matches(words: list[list[str]]) -> None:
    patterns = [".".join(w[: w.index(">") + 1] if ">" in w else w) for w in words]
    covering = cover(patterns)
    for topic in ["a", "b", "a.b", "b.b", "a.a", "a.b.a", "b.a.b"]:
        if any(matches(p, topic) for p in patterns):
            assert covering is not None and matches(covering, topic), (patterns, topic)
