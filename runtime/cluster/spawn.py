"""Starting actors on another node: child specs and `which_children` rows on the wire
(the class as an import string, the arguments through the codec)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import NotSerializable, RemoteError
from ..spec import ChildInfo, ChildSpec, Mailbox, Supervisor, child
from .codec import Codec, Undecodable

if TYPE_CHECKING:
    from .node import Cluster


def child_info_to_wire(info: ChildInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "path": info.path,
        "url": info.ref.url,
        "kind": info.kind,
        "state": info.state,
        "restart": info.restart,
        "dynamic": info.dynamic,
    }


def child_info_from_wire(item: Any, cluster: Cluster) -> ChildInfo:
    if not isinstance(item, dict):
        raise RemoteError("Undecodable", f"a child's description came back as {item!r}")
    return ChildInfo(
        name=str(item["name"]),
        path=str(item["path"]),
        ref=cluster.resolve(str(item["url"])),
        kind=str(item["kind"]),
        state=str(item["state"]),
        restart=str(item["restart"]),
        dynamic=bool(item["dynamic"]),
    )


def import_path(factory: Any) -> str:
    """``"module:QualifiedName"`` for a spec's factory, to start it on another node."""
    if isinstance(factory, str):
        return factory
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or module == "__main__":
        raise NotSerializable(
            f"{factory!r} cannot be started on another node: give child() an import string "
            "like 'myapp.workers:Worker' naming a module-level class both nodes can import"
        )
    return f"{module}:{qualname}"


def spec_to_wire(spec: ChildSpec | Supervisor, codec: Codec) -> list[Any]:
    if not isinstance(spec, ChildSpec):
        raise TypeError(
            f"a remote start_child takes a child(...) spec (supervisors are started "
            f"locally), got {spec!r}"
        )
    mailbox = None if spec.mailbox is None else [spec.mailbox.capacity, spec.mailbox.overflow]
    return [
        import_path(spec.factory),
        spec.name,
        codec.encode([list(spec.args), dict(spec.kwargs)]),
        spec.restart,
        spec.shutdown,
        mailbox,
        spec.hibernate_after,
    ]


def spec_from_wire(data: Any, codec: Codec) -> ChildSpec:
    # A node of the previous release sends six fields (no hibernate_after).
    factory, name, body, restart, shutdown, mailbox = data[:6]
    hibernate_after = data[6] if len(data) > 6 else None
    try:
        args, kwargs = codec.decode(body)
    except Undecodable as error:
        raise ValueError(
            f"the arguments of {factory!r} could not be decoded here: {error}"
        ) from None
    return child(
        str(factory),
        name=str(name),
        args=args,
        kwargs=kwargs,
        restart=restart,
        shutdown=shutdown,
        mailbox=None if mailbox is None else Mailbox(capacity=mailbox[0], overflow=mailbox[1]),
        hibernate_after=hibernate_after,
    )
