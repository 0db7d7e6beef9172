"""Test guard: no test touches the network (docs/architecture.md, "Tests").

A pytest plugin (``-p tests.network_guard`` in pyproject.toml), loaded before any conftest.
Connections and name lookups to anything but this machine (loopback, unix sockets) raise ``NetworkBlocked``, an ``OSError``, so code that
handles an unreachable network (the hub check) behaves as offline, and each blocked attempt is
reported as a warning naming the address. Local servers (the Gradio app under Playwright) work.
Set STEERING_LAB_ALLOW_NETWORK=1 to lift the guard for a manual run.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import warnings

import pytest

# Keep libraries that phone home quiet in the test process (the user's shell is untouched).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")


class NetworkBlocked(OSError):
    """A test tried to reach another machine."""


def _is_local(host: object) -> bool:
    if host is None or host in ("localhost", "", "ip6-localhost", socket.gethostname()):
        return True
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
        return address.is_loopback or address.is_unspecified
    except ValueError:
        return str(host).endswith(".localhost")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _blocked(what: str) -> NetworkBlocked:
    message = f"tests must not touch the network: blocked {what}"
    warnings.warn(message, pytest.PytestWarning, stacklevel=3)
    return NetworkBlocked(message)


def _connect(self: socket.socket, address, *args):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        raise _blocked(f"connect to {address[0]}:{address[1]}")
    return _real_connect(self, address, *args)


def _connect_ex(self: socket.socket, address, *args):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        raise _blocked(f"connect to {address[0]}:{address[1]}")
    return _real_connect_ex(self, address, *args)


def _getaddrinfo(host, *args, **kwargs):
    if not _is_local(host.decode() if isinstance(host, bytes) else host):
        raise _blocked(f"name lookup of {host}")
    return _real_getaddrinfo(host, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("STEERING_LAB_ALLOW_NETWORK") == "1":
        return
    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect_ex
    socket.getaddrinfo = _getaddrinfo
