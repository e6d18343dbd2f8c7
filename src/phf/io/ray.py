"""Ray, for ``--engine ray`` (phf.data.ray_scoring scores shards on it, phf.study.ray_arms runs a
study's arms on it): imported lazily, so phf works without it.

Every node must see the same paths (input, ``--out``, the study directory: a shared filesystem)
and have phf and any user scorer module installed.
"""

from __future__ import annotations

import logging
import socket
from contextlib import contextmanager

from phf.errors import PhfError

# The local instance moves only shard statistics through its object store (workers write Parquet
# straight to --out), so it needs far less than Ray's default of 30% of memory.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


class RayEngineError(PhfError, RuntimeError):
    """Ray is not installed, or no Ray cluster answers at the address given."""


def require_ray():
    """The ``ray`` module, or a one-line error telling how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayEngineError("--engine ray needs Ray: pip install 'phf[ray]'") from None
    return ray


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds where nothing listens at a ``host:port`` address: ray.init retries an
    unreachable cluster for minutes before it gives up. Other forms ("auto") are Ray's to resolve."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayEngineError(f"--ray-address {address}: nothing answers at {host}:{port} ({reason})") from None


@contextmanager
def connected(address: str | None = None):
    """Ray, connected to ``address`` or to a new local instance; a session the caller already
    opened with ``ray.init`` is reused and left open."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise RayEngineError(f"--ray-address {address}: no Ray cluster answers there ({exc})") from None
    else:
        # address="local": start our own instance even if `ray start` runs on this machine.
        ray.init(
            address="local",
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            logging_level=logging.WARNING,
        )
    try:
        yield ray
    finally:
        ray.shutdown()
