"""The processes an actor is made of, named so that a dead actor's leftovers can be found."""

from __future__ import annotations


def process_tree() -> list[tuple[int, float]]:
    """`(pid, create time)` of this process and all its descendants, this process first; the
    create time tells a process from a later one that was given the same pid."""
    import psutil

    me = psutil.Process()
    return [(p.pid, p.create_time()) for p in [me, *me.children(recursive=True)]]
