"""The cluster's wire codec (`runtime.cluster.codec`): what crosses, what is refused and why,
and that decoding fails only with `Undecodable`."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import re
import uuid
from types import MappingProxyType
from typing import Any

import attrs
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import wire
from runtime.cluster.codec import EXT_EVENT, EXT_OBJECT, EXT_REF, MAX_DEPTH, Codec, Undecodable
from runtime.errors import NotSerializable
from runtime.messages import Event
from runtime.ref import ActorRef

# --- fixtures: refs and registered classes --------------------------------------------


class FakeRef(ActorRef):
    """A ref without a system: equal by path."""

    __slots__ = ("fake_path",)

    def __init__(self, path: str) -> None:
        self._cell = None  # type: ignore[assignment]
        self.fake_path = path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeRef) and other.fake_path == self.fake_path

    def __hash__(self) -> int:
        return hash(self.fake_path)

    def __repr__(self) -> str:
        return f"<FakeRef {self.fake_path}>"


def ref_to_url(ref: ActorRef) -> str:
    assert isinstance(ref, FakeRef)
    return f"troupe://n1{ref.fake_path}"


def url_to_ref(url: str) -> ActorRef:
    prefix = "troupe://n1"
    if not url.startswith(prefix):
        raise LookupError(f"no node in {url!r}")
    return FakeRef(url[len(prefix) :])


def make_codec(max_payload: int = 1 << 20) -> Codec:
    return Codec(ref_to_url=ref_to_url, url_to_ref=url_to_ref, max_payload=max_payload)


@wire.register
@attrs.frozen
class Point:
    x: int
    y: int
    label: str = "p"


@attrs.define
class Box:
    items: list[Any]
    owner: ActorRef | None = None
    corner: Point = Point(0, 0)
    note: dict[str, Any] = attrs.Factory(dict)


wire.register(Box, "test_codec:Box")


@attrs.frozen
class Private:
    _secret: str
    count: int = attrs.field(init=False, default=0)
    total: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "total", len(self._secret))


wire.register(Private, "test_codec:Private")


@attrs.frozen
class Touchy:
    n: int = attrs.field()

    @n.validator
    def _check(self, attribute: Any, value: int) -> None:
        if value < 0:
            raise ValueError("n must not be negative")


wire.register(Touchy, "test_codec:Touchy")


@attrs.frozen
class Unregistered:
    a: int


@attrs.frozen
class Holder:
    items: list[Any]


wire.register(Holder, "test_codec:Holder")


@attrs.frozen
class Link:
    next: Any


wire.register(Link, "test_codec:Link")


@dataclasses.dataclass
class DataThing:
    a: int


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


class Name(str):
    pass


Pair = collections.namedtuple("Pair", "a b")


# --- round trips ----------------------------------------------------------------------


def roundtrip(value: Any, codec: Codec | None = None) -> Any:
    codec = codec or make_codec()
    return codec.decode(codec.encode(value))


def strict_equal(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not True, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        1.5,
        -0.0,
        float("inf"),
        "",
        "héllo",
        b"",
        b"\x00\xff",
        [],
        {},
        [1, "a", None, [2.5, {"k": [b"x"]}]],
        {"a": {"b": {"c": [1, 2, {"d": None}]}}},
    ],
)
def test_builtins_round_trip(value: Any) -> None:
    assert strict_equal(roundtrip(value), value)


def test_builtins_are_encoded_as_they_are() -> None:
    value = {"a": [1, 2.5, "x", None, True, b"y"], "b": (1, 2)}
    assert make_codec().encode(value) == msgspec.msgpack.encode(value)


def test_tuples_arrive_as_lists_and_buffers_as_bytes() -> None:
    value = (1, (2, 3), [bytearray(b"ab"), memoryview(b"cd"), memoryview(b"abcdef")[::2]])
    assert strict_equal(roundtrip(value), [1, [2, 3], [b"ab", b"cd", b"ace"]])


def test_registered_attrs_round_trip() -> None:
    assert roundtrip(Point(1, 2)) == Point(1, 2, "p")
    box = Box(items=[Point(3, 4, "q"), (5, 6)], owner=FakeRef("/app/a"), note={"p": Point(7, 8)})
    back = roundtrip(box)
    assert type(back) is Box
    assert back.items == [Point(3, 4, "q"), [5, 6]]
    assert back.owner == FakeRef("/app/a")
    assert back.corner == Point(0, 0)
    assert back.note == {"p": Point(7, 8)}
    nested = Holder([Holder([Box([Point(1, 1)])]), {"h": Holder([])}])
    assert roundtrip(nested) == nested


def test_registered_attrs_with_private_and_init_false_fields() -> None:
    value = Private("abc")
    object.__setattr__(value, "count", 5)
    back = roundtrip(value)
    assert (back._secret, back.count, back.total) == ("abc", 5, 3)


def test_registered_body_is_tag_and_fields_by_name() -> None:
    data = make_codec().encode(Point(1, 2))
    ext = msgspec.msgpack.decode(data)
    assert isinstance(ext, msgspec.msgpack.Ext) and ext.code == EXT_OBJECT
    assert msgspec.msgpack.decode(ext.data) == [wire.tag_of(Point), {"x": 1, "y": 2, "label": "p"}]


def test_refs_cross_through_the_callbacks() -> None:
    seen: list[Any] = []

    def to_url(ref: ActorRef) -> str:
        seen.append(ref)
        return ref_to_url(ref)

    codec = Codec(ref_to_url=to_url, url_to_ref=url_to_ref)
    data = codec.encode({"r": [FakeRef("/app/x")]})
    assert seen == [FakeRef("/app/x")]
    assert codec.decode(data) == {"r": [FakeRef("/app/x")]}
    ext = msgspec.msgpack.decode(codec.encode(FakeRef("/y")))
    assert ext.code == EXT_REF and ext.data == b"troupe://n1/y"


def test_event_round_trip() -> None:
    event = Event(
        topic="t.x",
        payload={"p": [Point(1, 2), FakeRef("/a")]},
        source="/app/pub",
        id=7,
        timestamp=12.5,
        correlation_id="c1",
        metadata={"m": [1, 2]},
        msg_id="m1",
        node="n1",
    )
    back = roundtrip(event)
    assert type(back) is Event and back == event
    plain = Event(topic="t", metadata=MappingProxyType({}))  # as the bus makes one
    assert roundtrip(plain) == Event(topic="t")
    assert msgspec.msgpack.decode(make_codec().encode(plain)).code == EXT_EVENT


# --- refusals -------------------------------------------------------------------------


def refused(value: Any, codec: Codec | None = None) -> str:
    with pytest.raises(NotSerializable) as info:
        (codec or make_codec()).encode(value)
    return str(info.value)


def test_refusal_names_the_type_and_where_it_sits() -> None:
    msg = Holder(items=[1, 2, Box(items=[], note={"when": datetime.datetime(2024, 1, 1)})])
    assert refused(msg) == (
        "msg.items[2].note['when']: datetime.datetime is not wire-serializable; "
        "register an attrs class with runtime.wire.register, or send builtins"
    )
    assert refused({1, 2}).startswith("msg: set is not wire-serializable")
    assert refused([object()]).startswith("msg[0]: object is not wire-serializable")
    assert refused(uuid.uuid4()).startswith("msg: uuid.UUID is not wire-serializable")
    assert refused(Event("t", payload=frozenset())).startswith(
        "msg.payload: frozenset is not wire-serializable"
    )
    assert refused(Event("t", metadata={"k": {1.5}})).startswith(
        "msg.metadata['k']: set is not wire-serializable"
    )


def test_refuses_enums_and_builtin_subclasses() -> None:
    assert refused([Colour.RED]).startswith(f"msg[0]: {Colour.__module__}.Colour is not")
    assert "is a subclass of int and would arrive as a plain int" in refused({"l": Level.LOW})
    assert "is a subclass of str" in refused(Name("x"))
    assert "is a subclass of dict" in refused(collections.defaultdict(list))
    assert "is a subclass of dict" in refused(collections.OrderedDict())
    assert "is a subclass of tuple" in refused(Pair(1, 2))


def test_refuses_dataclasses_and_unregistered_attrs() -> None:
    assert "is a dataclass" in refused(DataThing(1))
    text = refused([Unregistered(1)])
    assert text.startswith("msg[0]: ")
    assert "is an attrs class that is not registered for the wire" in text
    assert "call runtime.wire.register(Unregistered) on both sides" in text


def test_refuses_non_str_dict_keys() -> None:
    assert refused({"a": {1: "x"}}) == (
        "msg['a']: the dict key 1 is a int; dict keys must be str to be wire-serializable"
    )
    assert "dict key b'k'" in refused({b"k": 1})


def test_refuses_ints_out_of_range() -> None:
    assert refused([2**70]).startswith(
        "msg[0]: the int 1180591620717411303424 is out of the wire's range"
    )
    assert "out of the wire's range" in refused(Point(2**64, 0))
    assert "out of the wire's range" in refused(-(2**63) - 1)


def test_refuses_cycles() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    assert "the message contains a cycle" in refused(loop)
    d: dict[str, Any] = {}
    d["self"] = [d]
    assert "the message contains a cycle" in refused({"top": d})
    box = Box(items=[])
    box.items.append(box)
    assert "the message contains a cycle" in refused(box)


def test_refuses_too_deep() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    text = refused(deep)
    assert f"nested more than {MAX_DEPTH} levels deep" in text
    assert "cycle" not in text
    ok: Any = 1
    for _ in range(MAX_DEPTH):
        ok = [ok]
    assert roundtrip(ok) == ok


def test_what_encodes_at_the_depth_limit_decodes() -> None:
    chain: Any = None
    for _ in range(MAX_DEPTH):
        chain = Link(chain)
    assert roundtrip(chain) == chain
    assert f"nested more than {MAX_DEPTH} levels deep" in refused(Link(chain))


def test_refuses_too_big() -> None:
    codec = make_codec(max_payload=1000)
    assert codec.max_payload == 1000
    assert refused("x" * 2000, codec) == (
        "the message encodes to 2,003 bytes, more than the NATS server's max_payload of 1,000"
    )
    assert len(codec.encode("x" * 990)) <= 1000
    # shared sub-lists that would unfold to 2**60 values: refused without walking them all
    blowup: list[Any] = []
    for _ in range(60):
        blowup = [blowup, blowup]
    assert "over the limit: the NATS server's max_payload of" in refused(blowup, codec)


# --- decoding failures ----------------------------------------------------------------


def undecodable(data: bytes, codec: Codec | None = None) -> str:
    with pytest.raises(Undecodable) as info:
        (codec or make_codec()).decode(data)
    return str(info.value)


def ext(code: int, body: Any) -> msgspec.msgpack.Ext:
    data = body if isinstance(body, bytes) else msgspec.msgpack.encode(body)
    return msgspec.msgpack.Ext(code, data)


def test_unknown_tag_and_ext_code() -> None:
    data = msgspec.msgpack.encode([1, ext(EXT_OBJECT, ["x.y:Z", {}])])
    assert undecodable(data) == (
        "unknown wire tag 'x.y:Z': register it with runtime.wire.register on this node too"
    )
    assert "unknown wire extension code 9" in undecodable(msgspec.msgpack.encode(ext(9, b"")))


def test_bad_bytes_and_truncated_data() -> None:
    assert "not valid MessagePack" in undecodable(b"\xc1")
    assert "not valid MessagePack" in undecodable(b"")
    data = make_codec().encode(Holder([Box([Point(1, 2)], owner=FakeRef("/a")), "tail"]))
    for end in range(len(data)):
        undecodable(data[:end])
    undecodable(data + b"\x00")


def test_malformed_bodies() -> None:
    for body in [b"\xc1", [1, 2, 3], ["t"], [1, {}], ["test_codec:Box", [1]]]:
        undecodable(msgspec.msgpack.encode(ext(EXT_OBJECT, body)))
    undecodable(msgspec.msgpack.encode(ext(EXT_EVENT, [1])))
    assert "cannot rebuild an Event" in undecodable(
        msgspec.msgpack.encode(ext(EXT_EVENT, {"nope": 1}))
    )
    assert "not UTF-8" in undecodable(msgspec.msgpack.encode(ext(EXT_REF, b"\xff")))
    text = undecodable(msgspec.msgpack.encode(ext(EXT_REF, b"elsewhere://x")))
    assert text.startswith("the ref 'elsewhere://x' cannot be resolved: LookupError")


def test_constructor_that_raises() -> None:
    data = msgspec.msgpack.encode(ext(EXT_OBJECT, ["test_codec:Touchy", {"n": -1}]))
    assert undecodable(data) == (
        "cannot rebuild 'test_codec:Touchy' from its fields: ValueError: n must not be negative"
    )
    data = msgspec.msgpack.encode(ext(EXT_OBJECT, ["test_codec:Touchy", {"m": 1}]))
    assert re.match(
        r"cannot rebuild 'test_codec:Touchy' from its fields: TypeError", undecodable(data)
    )


def test_deep_bodies_are_undecodable_not_recursion() -> None:
    undecodable(b"\x91" * 200_000 + b"\xc0")
    body: Any = ext(EXT_OBJECT, ["test_codec:Holder", {"items": []}])
    for _ in range(MAX_DEPTH + 5):
        body = ext(EXT_OBJECT, ["test_codec:Holder", {"items": [body]}])
    assert "nests more than" in undecodable(msgspec.msgpack.encode(body))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_undecodable(data: bytes) -> None:
    try:
        make_codec().decode(data)
    except Undecodable:
        pass


# --- property: any builtin value round-trips ------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def as_arrived(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [as_arrived(x) for x in value]
    if isinstance(value, dict):
        return {k: as_arrived(x) for k, x in value.items()}
    return value


CODEC = make_codec()


@settings(max_examples=200, deadline=None)
@given(values)
def test_builtins_round_trip_property(value: Any) -> None:
    assert strict_equal(CODEC.decode(CODEC.encode(value)), as_arrived(value))
