"""Bounded waits on Ray calls: every wait on an actor has a deadline and says what it waited for."""

from __future__ import annotations


def answered(ray, refs: list) -> bool:
    """Whether any of `refs` has a result (or an error) now, without waiting."""
    done, _ = ray.wait(list(refs), num_returns=1, timeout=0)
    return bool(done)


def get_with_timeout(ray, ref, timeout_s: float, what: str):
    """`ray.get` that turns a timeout into an error saying what was being waited for."""
    from ray.exceptions import GetTimeoutError

    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        raise TimeoutError(f"{what} did not answer within {timeout_s:g} s (cluster.timeout_s)") from None


def get_all(ray, refs: list, timeout_s: float, what: str) -> list:
    """Results of `refs` in order; the first failure is raised at once (not after the others,
    which may be stuck in a collective with the failed peer), and the whole wait is bounded."""
    import time

    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what}: {len(pending)} of {len(refs)} calls did not finish within "
                               f"{timeout_s:g} s (cluster.timeout_s)")
        ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
        for ref in ready:
            try:
                ray.get(ref)  # raises the remote error, if any
            except Exception:
                _collect_peers(ray, pending)
                raise
    return ray.get(list(refs))


def _collect_peers(ray, refs: list, grace_s: float = 5.0) -> None:
    """Fetch, and drop, the results of the failed call's peers that end within `grace_s`.

    Peers of a collective usually fail alike and at once (a RunFailed is decided on every
    rank); an error never fetched is printed by Ray, traceback and all, as "unhandled" when
    its reference goes away — after the one line the user was given.
    """
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=grace_s) if refs else ([], [])
    for ref in done:
        try:
            ray.get(ref)
        except Exception:
            pass  # the error being raised already says what went wrong
