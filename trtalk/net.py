"""Which listen addresses stay on this machine: the one rule both HTTP endpoints use.

`trtalk serve` and the stream's control endpoint bind 127.0.0.1 unless told otherwise; bound to
anything else they require a token. "Loopback" is decided here once, for both.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback", "url_host"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for everything
    else, wildcard addresses (0.0.0.0, ::) and other names included."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """``host`` as a browser should be sent to it: a wildcard address becomes 127.0.0.1 (this
    machine), an IPv6 address goes in brackets."""
    host = host.strip()
    if host in ("", "0.0.0.0", "::", "[::]"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
