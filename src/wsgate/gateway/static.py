"""Static files next to the proxied routes: the kiosk page and its assets, with no way out of the root.

Mount :meth:`StaticFiles.handle` on a catch-all route (``app.router.add_route("*", "/{path:.*}", …)``); it
ignores the route's match info and works from the request line itself.

**Why the raw path.** aiohttp percent-decodes ``request.path`` (``/a%2fb`` → ``/a/b``, ``/%2e%2e/x`` →
``/../x``) and does not remove dot segments, so the decoded path has already lost the difference between a
separator and an encoded slash that is part of a name. Every decision here is made on ``request.raw_path``,
the request target exactly as sent: it is split on literal ``/`` first and only then is each segment decoded,
exactly once. A decoded segment that contains ``/``, ``\\``, ``:`` (drive letters, NTFS streams), a control
character (NUL included) or is ``.``/``..`` cannot name a file under the root and the request is answered 400;
``%252e`` decodes to the literal name ``%2e``, which simply does not exist.

**Containment.** The joined path is resolved with ``Path.resolve(strict=True)`` (following every symlink) and
must still be inside the resolved root (``Path.is_relative_to``); a symlink that leads out is 404, one that
stays inside is followed. A lenient ``resolve()`` is checked first, so a *missing* name behind a symlink that
leads out is refused as "outside" too: SPA mode would otherwise reveal which files exist outside the root. A
hidden name (a segment starting with ``.``), requested or reached through a symlink (or through an alias such
as a Windows 8.3 short name, which resolution expands), is 404. The file is then opened with ``O_NOFOLLOW``
and checked with ``fstat`` to be a regular file, and every header comes from that ``fstat``, so what is
described is what is sent.

**Decisions** (:func:`resolve`, pure apart from the ``stat`` calls path resolution needs):

==========================================  ======================================================
request                                     answer
==========================================  ======================================================
a regular file under the root               200 (HEAD: the same headers, no body)
``/``, ``/dir/`` with ``index.html``        200 with that ``index.html``
``/dir`` (a directory, no trailing slash)   301 to ``/dir/`` (query kept) so relative URLs work
a directory without ``index.html``          404: there are no listings
missing, hidden, outside the root           404
not a path (see above), bad ``%`` escape    400
another method than GET and HEAD            405 with ``Allow: GET, HEAD``
==========================================  ======================================================

An absolute-form target (``GET http://host/path``) is judged by its raw path the same way. Empty segments
are merged (``//a`` is ``/a``), as nginx does; a redirect is always built from the cleaned segments, so it can
never become a protocol-relative ``//host`` URL.

**SPA mode** (``spa=True``): a GET or HEAD that finds nothing (missing, or a directory without an index),
whose last segment has no extension and whose ``Accept`` lists ``text/html`` is answered with the root
``index.html``; such answers carry ``Vary: Accept``. ``fetch()`` sends ``Accept: */*`` by default, so a
script asking for a missing resource still gets its 404. Hidden names, escapes and 400s never fall back.

**Caching.** A strong ``ETag`` is a hash of inode, size and ``st_mtime_ns`` (no content hashing, and the
inode is not disclosed). ``If-None-Match`` (lists, ``*``, weak comparison as RFC 9110 §13.1.2 requires for
it) takes precedence over ``If-Modified-Since``; a date in the future is ignored, as Apache does. HTML
(``index.html`` above all) is sent with ``Cache-Control: no-cache`` so a kiosk picks up a new version on its
next load; other files with ``public, max-age=0``: stored, but revalidated on each use, which costs a 304.
That is deliberate: after a deploy, a kiosk reload must not pair a new page with an old script, and file names
are not assumed to carry content hashes. ``Last-Modified`` is capped at the current time (RFC 9110 §8.8.2.1).

**Not supported**: Range requests (the whole file is always sent; ``Accept-Ranges: none`` says so),
precompressed ``.gz``/``.br`` siblings, and ``sendfile``. Bodies are streamed in :data:`CHUNK_SIZE` reads on
the default executor, so memory stays bounded whatever the file size. aiohttp's ``web.FileResponse`` is not
used: its ``ETag`` (mtime and size) cannot be replaced, it reopens the file by name without ``O_NOFOLLOW``,
and it would serve ``.gz``/``.br`` siblings that the containment check never saw. Text files are assumed to
be UTF-8.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import enum
import hashlib
import logging
import mimetypes
import os
import re
import stat
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit

from aiohttp import hdrs, web

log = logging.getLogger("wsgate.gateway")

INDEX = "index.html"
# Bytes per read while streaming a body: large enough that a multi-megabyte bundle takes few executor hops,
# small enough that many concurrent downloads stay within a few megabytes of memory.
CHUNK_SIZE = 256 * 1024
ALLOW = "GET, HEAD"
HTML_CACHE_CONTROL = "no-cache"
DEFAULT_CACHE_CONTROL = "public, max-age=0"

# Fixed here rather than taken from the host's /etc/mime.types, whose answers differ between systems (".js"
# is "application/javascript" on many); RFC 9239 makes text/javascript the type for JavaScript.
CONTENT_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".cjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
}
FALLBACK_CONTENT_TYPE = "application/octet-stream"

# Visible ASCII except the characters that end a path ("?", "#") or are no URL character at all ("\\").
_PATH_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - set("?#\\")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_NOT_A_NAME = re.compile(r"[/\\:\x00-\x1f\x7f]")
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)  # the resolved path has no symlink left; refuse one swapped in since
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in must not block the opening thread
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


class Outcome(enum.Enum):
    """What a request path leads to, with the HTTP status that answers it."""

    FILE = 200
    REDIRECT = 301
    BAD_REQUEST = 400
    NOT_FOUND = 404


@dataclass(frozen=True, slots=True)
class Resolution:
    """The decision for one raw path.

    ``path`` is set only for :attr:`Outcome.FILE`: the fully resolved path of a regular file inside the root.
    ``location`` is set only for :attr:`Outcome.REDIRECT`. ``fallback`` marks a 404 that SPA mode may answer
    with the root ``index.html``. ``reason`` is a short text for logs and tests, never sent to the client.
    """

    outcome: Outcome
    reason: str
    path: Path | None = None
    location: str | None = None
    fallback: bool = False

    @property
    def status(self) -> int:
        return self.outcome.value


def _bad(reason: str) -> Resolution:
    return Resolution(Outcome.BAD_REQUEST, reason)


def _not_found(reason: str, *, fallback: bool = False) -> Resolution:
    return Resolution(Outcome.NOT_FOUND, reason, fallback=fallback)


def split_target(raw_target: str) -> tuple[str, str] | None:
    """``(raw path, raw query)`` of a request target as sent, neither decoded nor normalised.

    Origin form (``/a/b?q``) is cut at the first ``?`` (and at a ``#``, which no client should send);
    absolute form (``http://host/a/b?q``) keeps only its path. Anything else (``*``, authority form) is None.
    """
    if raw_target.startswith("/"):
        path, _, query = raw_target.partition("?")
        return path.partition("#")[0], query.partition("#")[0]
    if "://" not in raw_target:
        return None
    try:
        parts = urlsplit(raw_target)  # splits only; dot segments and escapes are left as they are
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return parts.path or "/", parts.query


def _unquote(segment: str) -> str | None:
    """The segment percent-decoded exactly once, as strict UTF-8; None for a bad escape or bad UTF-8."""
    if "%" not in segment:
        return segment
    pieces = _ESCAPE.split(segment)  # [text, hex, text, hex, …, text]
    data = bytearray()
    for index, piece in enumerate(pieces):
        if index % 2:
            data.append(int(piece, 16))
        elif "%" in piece:
            return None  # a "%" not followed by two hex digits
        else:
            data += piece.encode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _has_extension(name: str) -> bool:
    return "." in name.lstrip(".")


def _contained(real_root: Path, path: Path) -> tuple[Path | None, str]:
    """``path`` with every symlink resolved if it exists inside the root and is not hidden there.

    The lenient resolution comes first so that a missing name behind a symlink that leads out (or to a hidden
    name) is refused as such, not reported "missing": otherwise SPA mode, which falls back only for missing
    names, would tell an attacker which files exist outside the root.
    """
    try:
        for strict in (False, True):
            real = path.resolve(strict=strict)
            if not real.is_relative_to(real_root):
                return None, "outside the root"
            if any(part.startswith(".") for part in real.relative_to(real_root).parts):
                return None, "hidden"
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop before Python 3.13
        return None, "missing"
    return real, ""


def resolve(root: Path, raw_path: str) -> Resolution:
    """Decide what the raw (still percent-encoded) request path ``raw_path`` names under ``root``.

    No I/O beyond the ``stat`` and ``readlink`` calls that resolving the path needs. Whatever ``raw_path`` is,
    a returned :attr:`Resolution.path` is a regular file inside ``root.resolve()`` with no hidden segment.
    """
    if not raw_path.startswith("/"):
        return _bad("not an absolute path")
    if not _PATH_CHARS.issuperset(raw_path):
        return _bad("a character that has no place in a URL path")
    raw_segments = [segment for segment in raw_path.split("/") if segment]
    wants_directory = raw_path.endswith("/")
    segments: list[str] = []
    for raw_segment in raw_segments:
        segment = _unquote(raw_segment)
        if segment is None:
            return _bad("a malformed percent escape, or not UTF-8")
        if segment in (".", ".."):
            return _bad("a dot segment")
        if _NOT_A_NAME.search(segment):
            return _bad("a separator, drive letter or control character inside a name")
        segments.append(segment)
    if any(segment.startswith(".") for segment in segments):
        return _not_found("hidden")
    # Only a name without an extension can be a client-side route in SPA mode.
    fallback = not segments or not _has_extension(segments[-1])

    try:
        real_root = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return _not_found("the root does not exist")
    real, problem = _contained(real_root, real_root.joinpath(*segments))
    if real is None:
        return _not_found(problem, fallback=fallback and problem == "missing")
    if real.is_dir():
        index, problem = _contained(real_root, real / INDEX)
        if index is None or not index.is_file():
            return _not_found(f"a directory without {INDEX}", fallback=fallback)
        if not wants_directory:
            location = "".join("/" + quote(segment, safe="!$&'()*+,;=@") for segment in segments) + "/"
            return Resolution(Outcome.REDIRECT, "a directory without its trailing slash", location=location)
        return Resolution(Outcome.FILE, "the directory's index", path=index)
    if not real.is_file():
        return _not_found("not a regular file")
    if wants_directory:
        return _not_found("a file asked for as a directory", fallback=fallback)
    return Resolution(Outcome.FILE, "a file", path=real)


def content_type(name: str) -> str:
    """The Content-Type for a file name, with ``charset=utf-8`` on text types."""
    suffix = Path(name).suffix.lower()
    media_type = CONTENT_TYPES.get(suffix)
    if media_type is None:
        guessed, encoding = mimetypes.guess_type("file" + suffix, strict=True)
        # An encoding (".tar.gz" → gzip) means the bytes are not of the guessed type as sent.
        media_type = guessed if guessed is not None and encoding is None else FALLBACK_CONTENT_TYPE
    return f"{media_type}; charset=utf-8" if media_type.startswith("text/") else media_type


def make_etag(st: os.stat_result) -> str:
    """A strong entity tag from inode, size and modification time in nanoseconds."""
    fields = struct.pack("!QQq", st.st_ino & (2**64 - 1), st.st_size, st.st_mtime_ns)
    return '"' + hashlib.blake2b(fields, digest_size=12).hexdigest() + '"'


_ENTITY_TAG = re.compile(r'(?:W/)?"([^"]*)"')


def none_match(if_none_match: Iterable[str], etag: str) -> bool:
    """True when an ``If-None-Match`` (all its field lines) matches ``etag``: ``*``, or any listed tag by weak
    comparison (RFC 9110 §13.1.2: the opaque tags are equal, ``W/`` prefixes ignored)."""
    opaque = etag.removeprefix("W/")
    for value in if_none_match:
        if value.strip() == "*":
            return True
        if any(f'"{tag}"' == opaque for tag in _ENTITY_TAG.findall(value)):
            return True
    return False


def modified_since(if_modified_since: str, last_modified: int, now: float) -> bool:
    """False when the ``If-Modified-Since`` date is valid, not in the future, and not before ``last_modified``
    (whole seconds); an invalid or future date is ignored, so the answer is True."""
    try:
        date = email.utils.parsedate_to_datetime(if_modified_since)
        since = (date if date.tzinfo is not None else date.replace(tzinfo=datetime.UTC)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return True
    return since > now or last_modified > since


def accepts_html(accept: Iterable[str]) -> bool:
    """True when an ``Accept`` header lists ``text/html`` with a non-zero weight (``*/*`` does not count)."""
    for value in accept:
        for media_range in value.split(","):
            media_type, *params = (part.strip() for part in media_range.split(";"))
            if media_type.lower() != "text/html":
                continue
            weight = 1.0
            for param in params:
                name, _, number = param.partition("=")
                if name.strip().lower() == "q":
                    try:
                        weight = float(number)
                    except ValueError:
                        weight = 0.0
            if weight > 0:
                return True
    return False


def _open_file(path: Path) -> tuple[BinaryIO, os.stat_result] | None:
    """Open ``path`` for reading; None unless it is (still) a regular file. Blocking: run it in a thread."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return open(fd, "rb", buffering=0), st  # the caller closes it
    except BaseException:
        os.close(fd)
        raise


def _close_opened(future: asyncio.Future[tuple[BinaryIO, os.stat_result] | None]) -> None:
    if not future.cancelled() and future.exception() is None and (opened := future.result()) is not None:
        opened[0].close()


class StaticFiles:
    """Serves the files under ``root`` for GET and HEAD; ``spa`` adds the single-page-app fallback."""

    def __init__(self, root: Path, *, spa: bool = False) -> None:
        self.root = root
        self.spa = spa

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return _error(405, "method not allowed; use GET or HEAD", headers={hdrs.ALLOW: ALLOW})
        target = split_target(request.raw_path)
        if target is None:
            return _error(400, "the request target is not a path")
        raw_path, raw_query = target
        loop = asyncio.get_running_loop()
        resolution = await loop.run_in_executor(None, resolve, self.root, raw_path)
        vary: dict[str, str] = {}
        if resolution.outcome is Outcome.NOT_FOUND and resolution.fallback and self.spa:
            vary = {hdrs.VARY: hdrs.ACCEPT}
            if accepts_html(request.headers.getall(hdrs.ACCEPT, ())):
                resolution = await loop.run_in_executor(None, resolve, self.root, "/")
        if resolution.outcome is Outcome.REDIRECT:
            assert resolution.location is not None
            location = resolution.location
            if raw_query and _PATH_CHARS.union("?").issuperset(raw_query):
                location += "?" + raw_query
            return _error(301, "moved", headers={hdrs.LOCATION: location})
        if resolution.path is None:
            log.debug("static: %d for %.200r: %s", resolution.status, raw_path, resolution.reason)
            reason = "not found" if resolution.outcome is Outcome.NOT_FOUND else "not a valid file path"
            return _error(resolution.status, reason, headers=vary)
        return await self._send(request, resolution.path, vary)

    async def _send(self, request: web.Request, path: Path, vary: dict[str, str]) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, _open_file, path)
        try:
            opened = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)  # the thread may still open it: close it then
            raise
        if opened is None:
            return _error(404, "not found", headers=vary)
        file, st = opened
        try:
            etag = make_etag(st)
            now = time.time()
            last_modified = int(min(st.st_mtime, now))
            cache_control = HTML_CACHE_CONTROL if content_type(path.name).startswith("text/html") else None
            headers = {
                hdrs.ETAG: etag,
                hdrs.CACHE_CONTROL: cache_control or DEFAULT_CACHE_CONTROL,
                hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff",
                **vary,
            }
            if_none_match = request.headers.getall(hdrs.IF_NONE_MATCH, ())
            if if_none_match:
                fresh = none_match(if_none_match, etag)
            else:
                if_modified_since = request.headers.get(hdrs.IF_MODIFIED_SINCE)
                fresh = if_modified_since is not None and not modified_since(
                    if_modified_since, last_modified, now
                )
            if fresh:
                return web.Response(status=304, headers=headers)
            response = web.StreamResponse(status=200, headers=headers)
            response.headers[hdrs.CONTENT_TYPE] = content_type(path.name)
            response.headers[hdrs.ACCEPT_RANGES] = "none"
            response.content_length = st.st_size
            response.last_modified = last_modified
            await response.prepare(request)
            if request.method == hdrs.METH_GET:
                await _stream(file, st.st_size, response, path)
            await response.write_eof()
            return response
        finally:
            file.close()


async def _stream(file: BinaryIO, size: int, response: web.StreamResponse, path: Path) -> None:
    """Send exactly ``size`` bytes of ``file`` in bounded reads; if the file shrank meanwhile, the connection
    is closed after the short body so the client sees the truncation instead of waiting for the rest."""
    loop = asyncio.get_running_loop()
    remaining = size
    while remaining > 0:
        chunk = await loop.run_in_executor(None, file.read, min(CHUNK_SIZE, remaining))
        if not chunk:
            log.warning("static: %s shrank while being sent; closing the connection", path.name)
            response.force_close()
            return
        remaining -= len(chunk)
        await response.write(chunk)


def _error(status: int, text: str, *, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, text=f"{status}: {text}\n", headers=headers)
    response.headers[hdrs.X_CONTENT_TYPE_OPTIONS] = "nosniff"
    return response
