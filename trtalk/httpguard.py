"""The rules every trtalk HTTP endpoint applies before a handler runs (`trtalk serve` and the
stream's control endpoint share them; framework-free, so aiohttp and ``http.server`` both use it).

- Host and Origin: a tokenless server listens on loopback only, but any web page can make the
  browser send it requests, or reach it under its own name by DNS rebinding. Such a server answers
  only requests addressed to a loopback name (`check_host`) and state-changing ones only from its
  own page (`check_origin`). A malformed ``Host`` (``localhost:abc``) is a 400.
- Bodies: JSON bodies need ``Content-Type: application/json`` (a charset other than UTF-8 is a
  415; a cross-site form or ``text/plain`` post is refused); ``Content-Length`` must be a
  non-negative integer (else 400) and at most the endpoint's limit (else 413, nothing read);
  JSON nested deeper than `MAX_JSON_DEPTH` is a 400, never a RecursionError.
- Time: a client has `HEADER_TIMEOUT_S` to send its headers and `BODY_TIMEOUT_S` for its body,
  so a slow client cannot hold a connection or an upload slot.
- Tokens: at least `MIN_TOKEN_CHARS` characters, the same for every endpoint; ``?token=`` values
  are redacted (`redact`) from every logged line.

Every violation is an `HttpRefusal` (status + one-line reason), which the endpoints turn into a
short JSON answer and one log line, no traceback.
"""

from __future__ import annotations

import json
import re
import urllib.parse

from trtalk.errors import TrtalkError
from trtalk.net import is_loopback

__all__ = ["BODY_TIMEOUT_S", "HEADER_TIMEOUT_S", "HttpRefusal", "MAX_JSON_DEPTH", "MIN_TOKEN_CHARS",
           "check_host", "check_origin", "check_token", "content_length", "json_body", "parse_host",
           "redact", "require_json"]

MIN_TOKEN_CHARS = 8
HEADER_TIMEOUT_S = 15.0
BODY_TIMEOUT_S = 30.0
MAX_JSON_DEPTH = 64
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class HttpRefusal(Exception):
    """A request refused: ``status`` (4xx; 503 when the server is ending) and a one-line ``reason``
    for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def check_token(token: str | None, flag: str = "--token") -> str | None:
    """``token`` unchanged, or TrtalkError if it is shorter than `MIN_TOKEN_CHARS` or blank."""
    if token is not None and (len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token)):
        raise TrtalkError(f"{flag} must be at least {MIN_TOKEN_CHARS} characters, without spaces")
    return token


def parse_host(value: str | None) -> str:
    """The host name of a ``Host`` header (brackets stripped); HttpRefusal 400 when missing or
    malformed (a port that is not a number up to 65535, spaces, an empty name)."""
    text = (value or "").strip()
    if not text or any(c.isspace() or ord(c) < 33 or c in "/?#@\\" for c in text):
        raise HttpRefusal(400, "bad Host header")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise HttpRefusal(400, "bad Host header")
        name, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise HttpRefusal(400, "bad Host header")
        port = rest[1:] if rest else None
    else:
        name, sep, port = text.rpartition(":") if ":" in text else (text, "", None)
        if sep and ":" in name:
            raise HttpRefusal(400, "bad Host header")
    if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise HttpRefusal(400, "bad Host header: the port must be a number")
    if not name:
        raise HttpRefusal(400, "bad Host header")
    return name


def check_host(host_header: str | None, token: str | None) -> None:
    """HttpRefusal unless ``host_header`` is well formed and, on a tokenless server, a loopback
    name (a token server may sit behind a proxy that rewrites Host: the token is its check)."""
    name = parse_host(host_header)
    if not token and not is_loopback(name):
        raise HttpRefusal(403, f"this server answers only on loopback names, not {name[:64]!r}")


def check_origin(method: str, origin: str | None, host_header: str | None, token: str | None) -> None:
    """HttpRefusal 403 for a state-changing request of a tokenless server sent from another
    site's page (its ``Origin`` is not this server)."""
    if token or method.upper() in SAFE_METHODS or origin is None:
        return
    try:
        netloc = urllib.parse.urlsplit(origin).netloc
    except ValueError:
        netloc = None
    if origin == "null" or not netloc or netloc.lower() != (host_header or "").strip().lower():
        raise HttpRefusal(403, "cross-site request refused: use the server's own page")


def content_length(value: str | None, limit: int) -> int | None:
    """The declared body size (None: none declared); HttpRefusal 400 for a negative or
    non-numeric one, 413 above ``limit`` bytes."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise HttpRefusal(400, "bad Content-Length")
    n = int(text)
    if n > limit:
        raise HttpRefusal(413, f"the body is over {limit} bytes")
    return n


def require_json(content_type: str | None) -> None:
    """HttpRefusal 415 unless ``content_type`` is application/json (charset, if any, UTF-8)."""
    mime, _, params = (content_type or "").partition(";")
    if mime.strip().lower() != "application/json":
        raise HttpRefusal(415, "the body must be JSON (Content-Type: application/json)")
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise HttpRefusal(415, "JSON bodies are UTF-8 (charset=utf-8 or none)")


def _depth_ok(data: str, limit: int) -> bool:
    """Whether the brackets of JSON text ``data`` nest at most ``limit`` deep (strings skipped)."""
    depth, in_str, esc = 0, False, False
    for ch in data:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def json_body(data: bytes) -> object:
    """Parse a JSON body (UTF-8); HttpRefusal 400 for invalid text or one nested deeper than
    `MAX_JSON_DEPTH`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpRefusal(400, "the body must be UTF-8 JSON") from None
    if not _depth_ok(text, MAX_JSON_DEPTH):
        raise HttpRefusal(400, f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise HttpRefusal(400, "the body must be JSON") from None


_TOKEN_RE = re.compile(r"(?i)([?&;]token=)[^&\s\"#]*")


def redact(text: str) -> str:
    """``text`` with every ``token=`` query value replaced by ``***`` (for log lines)."""
    return _TOKEN_RE.sub(r"\1***", text)
