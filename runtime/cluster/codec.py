"""The cluster's wire codec: messages to MessagePack bytes and back, with msgspec.

Never pickle.  What may cross (see `runtime.wire`): ``None``, `bool`, `int`
(MessagePack's range, ``-2**63 .. 2**64-1``), `float`, `str`, `bytes`,
`bytearray` and `memoryview` (they arrive as `bytes`), lists and tuples (tuples
arrive as lists), dicts with `str` keys, `runtime.Event`, refs (any
`ActorRef`, sent as its URL) and attrs classes registered with
`runtime.wire.register`.  Builtins must be of exactly those types: a subclass
(an `IntEnum`, a `defaultdict`, a named tuple) would arrive as its base type,
so it is refused rather than silently changed.

msgspec encodes attrs instances natively (as maps, without their type) and
accepts sets, datetimes, UUIDs, enums and dataclasses, so `Codec.encode` walks
the value first: it refuses what may not cross, naming where it sits, and
turns events, refs and registered attrs instances into MessagePack
extension values:

- `EXT_OBJECT` (1): a registered attrs instance; the body is the MessagePack
  of ``[tag, {field name: value}]``.
- `EXT_REF` (2): a ref; the body is its URL, UTF-8.
- `EXT_EVENT` (3): a `runtime.Event`; the body is the MessagePack of
  ``{field name: value}``.

A message made only of builtins is encoded as it is (the walk copies nothing).

Decoding is untyped MessagePack otherwise: msgspec decodes MessagePack's own
timestamp extension (-1) to a `datetime`, and maps with non-`str` keys to
dicts, although `Codec.encode` never produces either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, Final, NoReturn

import attrs
import msgspec

from runtime import wire
from runtime.errors import NotSerializable
from runtime.messages import Event
from runtime.ref import ActorRef

__all__ = ["EXT_EVENT", "EXT_OBJECT", "EXT_REF", "MAX_DEPTH", "Codec", "Undecodable"]

EXT_OBJECT: Final = 1
"""MessagePack extension code of a registered attrs instance: ``[tag, {field: value}]``."""
EXT_REF: Final = 2
"""MessagePack extension code of a ref: its URL, UTF-8."""
EXT_EVENT: Final = 3
"""MessagePack extension code of a `runtime.Event`: ``{field: value}``."""

MAX_DEPTH: Final = 100
"""How deeply containers (lists, tuples, dicts, events, attrs instances) may nest."""

_MIN_INT: Final = -(1 << 63)
_MAX_INT: Final = (1 << 64) - 1
# exact types that cross as they are, with nothing to check
_PLAIN: Final[frozenset[type]] = frozenset({str, float, bool, type(None), bytes})
_BUILTIN_BASES: Final = (int, float, str, bytes, bytearray, memoryview, list, tuple, dict)
_MISSING: Final = object()
_EVENT_FIELDS: Final = tuple(f.name for f in attrs.fields(Event))


class Undecodable(ValueError):
    """A body that cannot be decoded: not MessagePack, an unknown wire tag or
    extension code, a registered class whose constructor refused the fields,
    or nested too deeply.  The message says which."""


class _Refusal(Exception):
    """Raised inside the walk; becomes `NotSerializable` once the path is known."""

    def __init__(self, reason: str, deep: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.deep = deep  # the container found too deep, to tell a cycle from deep nesting
        self.cycle = False
        self.path: list[str] = []  # segments, innermost first

    def add(self, segment: str, container: object) -> None:
        self.path.append(segment)
        if self.deep is not None and self.deep is container:
            self.cycle = True

    def text(self) -> str:
        where = "msg" + "".join(reversed(self.path))
        if self.cycle:
            return f"{where}: the message contains a cycle (a container that contains itself)"
        return f"{where}: {self.reason}"


class _TooMany(Exception):
    """The walk met more values than the payload limit has bytes."""


@attrs.frozen
class _ClassInfo:
    """What the codec needs of a registered attrs class, worked out once."""

    tag: str
    names: tuple[str, ...]  # every attrs field, in order
    aliases: dict[str, str]  # field name -> __init__ argument, where they differ
    late: frozenset[str]  # init=False fields: set after construction
    simple: bool  # no aliases and no late fields: cls(**fields) will do

    @classmethod
    def of(cls, klass: type, tag: str) -> _ClassInfo:
        fields = attrs.fields(klass)
        aliases = {f.name: f.alias for f in fields if f.init and f.alias != f.name}
        late = frozenset(f.name for f in fields if not f.init)
        return cls(
            tag=tag,
            names=tuple(f.name for f in fields),
            aliases=aliases,
            late=late,
            simple=not aliases and not late,
        )

    def build(self, klass: type, fields: dict[Any, Any]) -> Any:
        if self.simple:
            return klass(**fields)
        kwargs: dict[Any, Any] = {}
        later: list[tuple[str, Any]] = []
        for name, value in fields.items():
            if name in self.late:
                later.append((name, value))
            else:
                kwargs[self.aliases.get(name, name)] = value
        obj = klass(**kwargs)
        for name, value in later:
            object.__setattr__(obj, name, value)  # also for frozen classes, as attrs does
        return obj


def _type_name(t: type) -> str:
    if t.__module__ == "builtins":
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse(value: object) -> NoReturn:
    """Raise the `_Refusal` that says why `value` (of a type the walk does not know)
    may not cross."""
    t = type(value)
    name = _type_name(t)
    if attrs.has(t):
        raise _Refusal(
            f"{name} is an attrs class that is not registered for the wire; call "
            f"runtime.wire.register({t.__qualname__}) on both sides"
        )
    if dataclasses.is_dataclass(t):
        raise _Refusal(
            f"{name} is a dataclass, which is not wire-serializable; make it an attrs class "
            "and call runtime.wire.register on both sides"
        )
    for base in _BUILTIN_BASES:
        if isinstance(value, base):
            raise _Refusal(
                f"{name} is a subclass of {base.__qualname__} and would arrive as a plain "
                f"{base.__qualname__}, so it is not wire-serializable; send a plain "
                f"{base.__qualname__}, or register an attrs class with runtime.wire.register"
            )
    raise _Refusal(
        f"{name} is not wire-serializable; register an attrs class with "
        "runtime.wire.register, or send builtins"
    )


def _make_walk(
    encode: Callable[[Any], bytes],
    ref_to_url: Callable[[ActorRef], str],
    infos: dict[type, _ClassInfo],
) -> Callable[[Any, int, list[int]], Any]:
    """The walk of `Codec.encode`: returns the value to hand to msgspec (`value`
    itself when nothing needs turning into an extension), or raises `_Refusal`
    or `_TooMany`.  `budget` holds how many more values may be met."""
    Ext = msgspec.msgpack.Ext
    plain = _PLAIN
    lo, hi = _MIN_INT, _MAX_INT

    def walk_fields(obj: Any, names: tuple[str, ...], depth: int, budget: list[int]) -> Any:
        if depth >= MAX_DEPTH:
            raise _Refusal(f"nested more than {MAX_DEPTH} levels deep", obj)
        budget[0] -= len(names)
        if budget[0] < 0:
            raise _TooMany
        fields: dict[str, Any] = {}
        for name in names:
            x: Any = getattr(obj, name, _MISSING)
            if x is _MISSING:  # an init=False field never set
                continue
            tx = type(x)
            if tx not in plain and not (tx is int and lo <= x <= hi):
                if tx is MappingProxyType and name == "metadata" and type(obj) is Event:
                    x = dict(x)  # what the bus gives an event without metadata
                try:
                    x = walk(x, depth + 1, budget)
                except _Refusal as e:
                    e.add(f".{name}", obj)
                    raise
            fields[name] = x
        return fields

    def walk(v: Any, depth: int, budget: list[int]) -> Any:
        t = type(v)
        if t in plain:
            return v
        if t is int:
            if lo <= v <= hi:
                return v
            raise _Refusal(
                f"the int {_short(v)} is out of the wire's range (-2**63 .. 2**64-1), "
                "so it is not wire-serializable; send it as a str"
            )
        if t is list or t is tuple:
            if depth >= MAX_DEPTH:
                raise _Refusal(f"nested more than {MAX_DEPTH} levels deep", v)
            budget[0] -= len(v)
            if budget[0] < 0:
                raise _TooMany
            out: list[Any] | None = None
            for i, x in enumerate(v):
                tx = type(x)
                if tx in plain or (tx is int and lo <= x <= hi):
                    continue
                try:
                    y = walk(x, depth + 1, budget)
                except _Refusal as e:
                    e.add(f"[{i}]", v)
                    raise
                if y is not x:
                    if out is None:
                        out = list(v)
                    out[i] = y
            return v if out is None else out
        if t is dict:
            return walk_dict(v, depth, budget)
        info = infos.get(t)
        if info is None:
            tag = wire.tag_of(t)
            if tag is not None:
                info = infos[t] = _ClassInfo.of(t, tag)
        if info is not None:
            fields = walk_fields(v, info.names, depth, budget)
            return Ext(EXT_OBJECT, encode([info.tag, fields]))
        if t is Event:
            return Ext(EXT_EVENT, encode(walk_fields(v, _EVENT_FIELDS, depth, budget)))
        if isinstance(v, ActorRef):
            return Ext(EXT_REF, ref_to_url(v).encode())
        if t is bytearray:
            return v
        if t is memoryview:
            return v if v.c_contiguous else v.tobytes()
        _refuse(v)

    def walk_dict(v: dict[Any, Any], depth: int, budget: list[int]) -> Any:
        if depth >= MAX_DEPTH:
            raise _Refusal(f"nested more than {MAX_DEPTH} levels deep", v)
        budget[0] -= 2 * len(v)
        if budget[0] < 0:
            raise _TooMany
        out: dict[str, Any] | None = None
        for k, x in v.items():
            if type(k) is not str:
                raise _Refusal(
                    f"the dict key {_short(k)} is a {_type_name(type(k))}; dict keys must be "
                    "str to be wire-serializable"
                )
            tx = type(x)
            if tx in plain or (tx is int and lo <= x <= hi):
                continue
            try:
                y = walk(x, depth + 1, budget)
            except _Refusal as e:
                e.add(f"[{_short(k)}]", v)
                raise
            if y is not x:
                if out is None:
                    out = dict(v)
                out[k] = y
        return v if out is None else out

    return walk


class Codec:
    """Encodes messages for the cluster's wire and decodes them, with msgspec MessagePack.

    `ref_to_url` turns a ref into the URL that crosses; `url_to_ref` turns a
    URL that arrives back into a ref.  `max_payload` is the NATS server's
    limit on a message, in bytes, of which `envelope_room` is kept for the
    envelope a message travels in (an encoding may take the rest, at least
    1,024 bytes).

    One codec may be used from several threads at once.
    """

    def __init__(
        self,
        *,
        ref_to_url: Callable[[ActorRef], str],
        url_to_ref: Callable[[str], ActorRef],
        max_payload: int = 1 << 20,
        envelope_room: int = 0,
    ) -> None:
        self._ref_to_url = ref_to_url
        self._url_to_ref = url_to_ref
        self._max_payload = max(1024, max_payload - envelope_room) if envelope_room else max_payload
        limit = f"the NATS server's max_payload of {max_payload:,}"
        if envelope_room:
            limit = f"{self._max_payload:,} ({limit} less {envelope_room:,} for the envelope)"
        self._limit_text = limit  # what the error says the limit is
        self._encoder = msgspec.msgpack.Encoder()
        # registered classes only: a tag, once registered, never changes
        self._infos: dict[type, _ClassInfo] = {}
        self._by_tag: dict[str, tuple[type, _ClassInfo]] = {}
        # the decoder of bodies nested `depth` tagged values deep is _decoders[depth]: the
        # depth is bounded without a counter to keep per thread
        self._decoders: list[msgspec.msgpack.Decoder[Any]] = []
        for depth in range(MAX_DEPTH + 1):
            hook = self._make_ext_hook(depth)
            self._decoders.append(msgspec.msgpack.Decoder(ext_hook=hook))
        self._decoder = self._decoders[0]
        self._walk = _make_walk(self._encoder.encode, ref_to_url, self._infos)

    @property
    def max_payload(self) -> int:
        """The largest encoding `encode` returns, in bytes."""
        return self._max_payload

    def encode(self, value: Any) -> bytes:
        """The MessagePack bytes of `value`.

        Args:
          value: what may cross the wire (see the module's docstring), nested
              at most `MAX_DEPTH` containers deep.

        Returns:
          At most `max_payload` bytes.

        Raises:
          NotSerializable: if `value` holds something that may not cross (the
              message names its type and where it sits, e.g.
              ``msg.items[2].when``), an attrs class that is not registered, a
              dict key that is not a `str`, an int out of MessagePack's range,
              a cycle, more than `MAX_DEPTH` levels of nesting, or if it
              encodes to more than `max_payload` bytes.
          Exception: whatever `ref_to_url` raises for a ref in `value`.

        """
        try:
            data = self._encoder.encode(self._walk(value, 0, [self._max_payload]))
        except _Refusal as e:
            raise NotSerializable(e.text()) from None
        except _TooMany:
            raise NotSerializable(
                f"the message holds more than {self._max_payload:,} values, so its encoding "
                f"is over the limit: {self._limit_text}"
            ) from None
        if len(data) > self._max_payload:
            raise NotSerializable(
                f"the message encodes to {len(data):,} bytes, more than {self._limit_text}"
            )
        return data

    def decode(self, data: bytes) -> Any:
        """The value `data` holds, as `encode` made it on this or another node.

        Tuples arrive as lists, `bytearray` and `memoryview` as `bytes`, refs
        as what `url_to_ref` makes of their URL, registered attrs instances
        rebuilt with their class's constructor.

        Raises:
          Undecodable: if `data` is not one whole MessagePack value, holds an
              unknown extension code or a tag not registered on this node,
              nests too deeply, or if a registered class's constructor or
              `url_to_ref` raised (the message says which).  Never anything
              else.

        """
        try:
            return self._decoder.decode(data)
        except Undecodable:
            raise
        except RecursionError:
            raise Undecodable("the body nests too deeply to decode") from None
        except Exception as exc:
            raise Undecodable(f"the body is not valid MessagePack: {exc}") from exc

    def _info(self, cls: type, tag: str) -> _ClassInfo:
        info = self._infos.get(cls)
        if info is None:
            info = self._infos[cls] = _ClassInfo.of(cls, tag)
        return info

    def _make_ext_hook(self, depth: int) -> Callable[[int, memoryview], Any]:
        """The `ext_hook` of the decoder of bodies nested `depth` tagged values deep."""
        decoders = self._decoders
        by_tag = self._by_tag
        url_to_ref = self._url_to_ref

        def ext_hook(code: int, data: memoryview) -> Any:
            if code == EXT_REF:
                try:
                    url = str(data, "utf-8")
                except UnicodeDecodeError:
                    raise Undecodable("a ref's URL is not UTF-8") from None
                try:
                    return url_to_ref(url)
                except Exception as exc:
                    raise Undecodable(
                        f"the ref {url!r} cannot be resolved: {type(exc).__name__}: {exc}"
                    ) from exc
            if code != EXT_OBJECT and code != EXT_EVENT:
                raise Undecodable(f"unknown wire extension code {code}")
            if depth >= MAX_DEPTH:
                raise Undecodable(f"the body nests more than {MAX_DEPTH} tagged values deep")
            body = decoders[depth + 1].decode(data)
            if code == EXT_EVENT:
                if type(body) is not dict:
                    raise Undecodable("an event's body is not a map of its fields")
                try:
                    return Event(**body)
                except Exception as exc:
                    raise Undecodable(
                        f"cannot rebuild an Event from its fields: {type(exc).__name__}: {exc}"
                    ) from exc
            if type(body) is not list or len(body) != 2 or type(body[1]) is not dict:
                raise Undecodable("a tagged value's body is not [tag, {field: value}]")
            tag, fields = body
            if type(tag) is not str:
                raise Undecodable(f"a tagged value's tag is not a str: {_short(tag)}")
            known = by_tag.get(tag)
            if known is None:
                cls = wire.class_for(tag)
                if cls is None:
                    raise Undecodable(
                        f"unknown wire tag {tag!r}: register it with runtime.wire.register "
                        "on this node too"
                    )
                known = by_tag[tag] = (cls, self._info(cls, tag))
            cls, info = known
            try:
                if info.simple:
                    return cls(**fields)
                return info.build(cls, fields)
            except Exception as exc:
                raise Undecodable(
                    f"cannot rebuild {tag!r} from its fields: {type(exc).__name__}: {exc}"
                ) from exc

        return ext_hook
