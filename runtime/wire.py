"""`runtime.wire`: the registry of the types that may cross the cluster's wire.

A light module (no msgspec, no NATS): modules register their message classes
unconditionally, whether or not the process ever joins a cluster.  Both
sides of a cluster register the same classes under the same tags; the codec
(`runtime.cluster.codec`) looks them up here.

What may cross without registering: ``None``, `bool`, `int`, `float`,
`str`, `bytes`, lists and tuples (tuples arrive as lists), dicts with `str`
keys, `runtime.Event` and refs.  Anything else must be an attrs class
registered with `register`; other values raise `NotSerializable` in the
sender.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

import attrs

__all__ = ["class_for", "register", "registered", "tag_of"]

T = TypeVar("T", bound=type)

_lock = threading.Lock()  # registering is rare and may happen on any thread (imports)
_by_tag: dict[str, type] = {}
_by_class: dict[type, str] = {}


def _default_tag(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register(cls: T, tag: str | None = None) -> T:
    """Let instances of the attrs class `cls` cross the wire, under `tag` (default:
    ``"<module>:<qualified name>"``).  Returns `cls`, so it also works as a
    class decorator (``@register``).

    Registering the same class under the same tag again does nothing.  Raises
    `TypeError` if `cls` is not an attrs class, `ValueError` if `tag` is empty
    or already names another class, or if `cls` is already registered under
    another tag.
    """
    if not (isinstance(cls, type) and attrs.has(cls)):  # (narrows `cls` for attrs)
        raise TypeError(
            f"runtime.wire.register takes an attrs class (@attrs.frozen or @attrs.define), "
            f"got {cls!r}"
        )
    if tag is None:
        tag = _default_tag(cls)
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"a wire tag is a non-empty string, got {tag!r}")
    with _lock:
        known = _by_tag.get(tag)
        if known is not None and known is not cls:
            raise ValueError(
                f"the wire tag {tag!r} already names {_default_tag(known)}; "
                f"give {_default_tag(cls)} another tag"
            )
        old = _by_class.get(cls)
        if old is not None and old != tag:
            raise ValueError(
                f"{_default_tag(cls)} is already registered under the tag {old!r}; "
                "register a class under one tag only"
            )
        _by_tag[tag] = cls
        _by_class[cls] = tag
    return cls  # type: ignore[return-value]  # attrs.has() narrowed it to AttrsInstance


def tag_of(cls: type) -> str | None:
    """The tag `cls` is registered under, or None."""
    return _by_class.get(cls)


def class_for(tag: str) -> type | None:
    """The class registered under `tag`, or None."""
    return _by_tag.get(tag)


def registered() -> dict[str, Any]:
    """A copy of the registry: tag -> class."""
    with _lock:
        return dict(_by_tag)
