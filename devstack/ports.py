"""Port helpers for the embedded services."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (tests use these so they run beside `make run`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


class PortTaken(RuntimeError):
    """A port the dev stack needs is taken; the message names the setting that moves it."""

    def __init__(self, what: str, port: int, setting: str) -> None:
        super().__init__(
            f"port {port} for {what} is already in use; stop whatever holds it or set {setting}="
            f"<another port> (e.g. {setting}={port + 1})"
        )
