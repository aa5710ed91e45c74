"""Static files: the pure path decision (directly, and with hypothesis) and a real aiohttp server driven by a
raw socket client, because aiohttp's own client would normalise ``..`` away before sending."""

from __future__ import annotations

import asyncio
import email.utils
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TIMEOUT, wait_for
from wsgate.gateway import static
from wsgate.gateway.static import (
    CHUNK_SIZE,
    Outcome,
    StaticFiles,
    accepts_html,
    content_type,
    make_etag,
    modified_since,
    none_match,
    resolve,
    split_target,
)

SECRET = b"SECRET-outside-the-root-3f9d1c"
HIDDEN = b"HIDDEN-dotfile-inside-the-root-81be02"
INDEX = b"<!doctype html><title>kiosk</title>"
SUB_INDEX = b"<!doctype html><title>sub</title>"
APP_JS = b"console.log('kiosk');\n"

# ----------------------------------------------------------------------------------------------------------
# The tree: tmp/secret.txt and tmp/outside/ lie outside tmp/root, the served root.


def build_tree(base: Path) -> Path:
    (base / "secret.txt").write_bytes(SECRET)
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "index.html").write_bytes(SECRET)

    root = base / "root"
    root.mkdir()
    (root / "index.html").write_bytes(INDEX)
    (root / "app.js").write_bytes(APP_JS)
    files = {
        "mod.mjs": b"export {};\n",
        "data.json": b'{"a": 1}\n',
        "logo.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        "prog.wasm": b"\0asm\1\0\0\0",
        "site.webmanifest": b"{}",
        "style.css": b"body {}",
        "notes.txt": b"notes",
        "page.html": b"<p>page</p>",
        "blob.nosuchtype": b"\x00\x01",
        "archive.tar.gz": b"\x1f\x8b",
        "picture.PNG": b"\x89PNG",
        "LICENSE": b"license text",
        "%2e%2e": b"a file literally named %2e%2e",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    sub = root / "sub"
    sub.mkdir()
    (sub / "index.html").write_bytes(SUB_INDEX)
    (sub / "page.txt").write_bytes(b"sub page")
    (root / "empty").mkdir()
    (root / ".env").write_bytes(HIDDEN)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(HIDDEN)
    (root / "sub" / ".secret").write_bytes(HIDDEN)

    (root / "leak.txt").symlink_to(base / "secret.txt")  # absolute target, outside
    (root / "leakdir").symlink_to(outside, target_is_directory=True)
    (root / "up").symlink_to("..", target_is_directory=True)  # relative target, outside
    (root / "alias.js").symlink_to("app.js")  # inside: allowed
    (root / "subalias").symlink_to("sub", target_is_directory=True)  # inside: allowed
    (root / "sneaky").symlink_to(".env")  # inside, but to a hidden file
    (root / "loop").symlink_to("loop")
    evil = root / "evil"
    evil.mkdir()
    (evil / "index.html").symlink_to(outside / "index.html")  # a directory index that leads out
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return build_tree(tmp_path)


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("static"))


# ----------------------------------------------------------------------------------------------------------
# resolve(): the decision, without a server.


@pytest.mark.parametrize(
    ("raw_path", "relative"),
    [
        ("/", "index.html"),
        ("/index.html", "index.html"),
        ("/app.js", "app.js"),
        ("/sub/", "sub/index.html"),
        ("/sub/page.txt", "sub/page.txt"),
        ("//sub//page.txt", "sub/page.txt"),
        ("/alias.js", "app.js"),
        ("/subalias/", "sub/index.html"),
        ("/subalias/page.txt", "sub/page.txt"),
        ("/%61pp.js", "app.js"),
        ("/%252e%252e", "%2e%2e"),  # decoded once: the literal name, inside the root
        ("/LICENSE", "LICENSE"),
    ],
)
def test_resolve_serves_files_inside_the_root(shared_root: Path, raw_path: str, relative: str) -> None:
    resolution = resolve(shared_root, raw_path)
    assert resolution.outcome is Outcome.FILE, resolution
    assert resolution.path == (shared_root / relative).resolve()


@pytest.mark.parametrize(
    ("raw_path", "outcome"),
    [
        ("/../secret.txt", Outcome.BAD_REQUEST),
        ("/sub/../../secret.txt", Outcome.BAD_REQUEST),
        ("/sub/..", Outcome.BAD_REQUEST),
        ("/./app.js", Outcome.BAD_REQUEST),
        ("/%2e%2e/secret.txt", Outcome.BAD_REQUEST),
        ("/%2E%2e/secret.txt", Outcome.BAD_REQUEST),
        ("/%2E%2e/", Outcome.BAD_REQUEST),
        ("/.%2e/secret.txt", Outcome.BAD_REQUEST),
        ("/..%2fsecret.txt", Outcome.BAD_REQUEST),
        ("/%2e%2e%2fsecret.txt", Outcome.BAD_REQUEST),
        ("/..%5csecret.txt", Outcome.BAD_REQUEST),
        ("/..%5Csecret.txt", Outcome.BAD_REQUEST),
        ("/..\\secret.txt", Outcome.BAD_REQUEST),
        ("/sub%2fpage.txt", Outcome.BAD_REQUEST),
        ("/sub%2Fpage.txt", Outcome.BAD_REQUEST),
        ("/%00", Outcome.BAD_REQUEST),
        ("/app.js%00.html", Outcome.BAD_REQUEST),
        ("/index.html%0a", Outcome.BAD_REQUEST),
        ("/C:/Windows/win.ini", Outcome.BAD_REQUEST),
        ("/c:%5cwindows%5cwin.ini", Outcome.BAD_REQUEST),
        ("/app.js::$DATA", Outcome.BAD_REQUEST),
        ("/%2fetc%2fpasswd", Outcome.BAD_REQUEST),
        ("/%c0%ae%c0%ae/secret.txt", Outcome.BAD_REQUEST),  # overlong UTF-8 for "."
        ("/%%32%65%%32%65/secret.txt", Outcome.BAD_REQUEST),
        ("/%u002e%u002e/secret.txt", Outcome.BAD_REQUEST),
        ("/%2", Outcome.BAD_REQUEST),
        ("/%zz", Outcome.BAD_REQUEST),
        ("/a b", Outcome.BAD_REQUEST),
        ("/caf\u00e9", Outcome.BAD_REQUEST),
        ("app.js", Outcome.BAD_REQUEST),
        ("", Outcome.BAD_REQUEST),
        ("/%252e%252e/secret.txt", Outcome.NOT_FOUND),  # the directory "%2e%2e" does not exist
        ("/%252e%252e%252fsecret.txt", Outcome.NOT_FOUND),
        ("/%ef%bc%8e%ef%bc%8e/secret.txt", Outcome.NOT_FOUND),  # fullwidth dots are just a name
        ("/sub/..;/secret.txt", Outcome.NOT_FOUND),
        ("//etc/passwd", Outcome.NOT_FOUND),
        ("/leak.txt", Outcome.NOT_FOUND),
        ("/leakdir/secret.txt", Outcome.NOT_FOUND),
        ("/leakdir/", Outcome.NOT_FOUND),
        ("/up/secret.txt", Outcome.NOT_FOUND),
        ("/evil/", Outcome.NOT_FOUND),
        ("/.env", Outcome.NOT_FOUND),
        ("/%2eenv", Outcome.NOT_FOUND),
        ("/.git/config", Outcome.NOT_FOUND),
        ("/.git/", Outcome.NOT_FOUND),
        ("/sub/.secret", Outcome.NOT_FOUND),
        ("/...", Outcome.NOT_FOUND),
        ("/sneaky", Outcome.NOT_FOUND),
        ("/loop", Outcome.NOT_FOUND),
        ("/empty/", Outcome.NOT_FOUND),
        ("/empty", Outcome.NOT_FOUND),
        ("/missing.js", Outcome.NOT_FOUND),
        ("/app.js/", Outcome.NOT_FOUND),
        ("/app.js/x", Outcome.NOT_FOUND),
    ],
)
def test_resolve_refuses(shared_root: Path, raw_path: str, outcome: Outcome) -> None:
    resolution = resolve(shared_root, raw_path)
    assert resolution.outcome is outcome, resolution
    assert resolution.path is None
    assert resolution.status == outcome.value


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_resolve_refuses_a_fifo(shared_root: Path) -> None:
    assert resolve(shared_root, "/pipe").outcome is Outcome.NOT_FOUND


def test_resolve_refuses_everything_when_the_root_is_gone(tmp_path: Path) -> None:
    assert resolve(tmp_path / "missing", "/").outcome is Outcome.NOT_FOUND


@pytest.mark.parametrize(
    ("raw_path", "location"),
    [
        ("/sub", "/sub/"),
        ("//sub", "/sub/"),  # never a protocol-relative "//sub/"
        ("/subalias", "/subalias/"),
        ("/%73ub", "/sub/"),
    ],
)
def test_resolve_redirects_a_directory_to_its_trailing_slash(
    shared_root: Path, raw_path: str, location: str
) -> None:
    resolution = resolve(shared_root, raw_path)
    assert resolution.outcome is Outcome.REDIRECT
    assert resolution.location == location
    assert resolution.path is None


@pytest.mark.parametrize(
    ("raw_path", "fallback"),
    [
        ("/kiosk/settings", True),
        ("/kiosk/7", True),
        ("/v1.2/route", True),
        ("/empty/", True),
        ("/LICENSE/", True),
        ("/missing.js", False),
        ("/app.js/", False),
        ("/.hidden-route", False),
        ("/leak.txt", False),
        ("/up/secret", False),
        ("/../x", False),
        ("/sub/%2e%2e", False),
    ],
)
def test_resolve_marks_what_an_spa_may_answer(shared_root: Path, raw_path: str, fallback: bool) -> None:
    resolution = resolve(shared_root, raw_path)
    assert resolution.outcome is not Outcome.FILE
    assert resolution.fallback is fallback


_TOKENS = st.sampled_from(
    [
        "/", "//", "..", ".", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", "%00", "%25", "%", "%2", "C:",
        "leak.txt", "leakdir", "up", "secret.txt", "outside", "sub", "subalias", "index.html", "evil", ".env",
        ".git", "alias.js", "app.js", "loop", "sneaky", "empty", "pipe", "%c0%ae", "?", "#", "~", ";",
    ]
)  # fmt: skip
_RAW_PATHS = st.one_of(
    st.lists(st.one_of(_TOKENS, st.text(max_size=4)), max_size=10).map(lambda parts: "/" + "".join(parts)),
    st.text(max_size=40),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw_path=_RAW_PATHS)
def test_resolve_never_leaves_the_root(shared_root: Path, raw_path: str) -> None:
    real_root = shared_root.resolve()
    resolution = resolve(shared_root, raw_path)
    if resolution.path is None:
        assert resolution.outcome is not Outcome.FILE
    else:
        assert resolution.outcome is Outcome.FILE
        assert resolution.path.is_relative_to(real_root)
        assert resolution.path.is_file()
        assert not any(part.startswith(".") for part in resolution.path.relative_to(real_root).parts)
        assert resolution.path.read_bytes() not in (SECRET, HIDDEN)
    if resolution.location is not None:
        assert resolution.outcome is Outcome.REDIRECT
        assert resolution.location.startswith("/")
        assert not resolution.location.startswith("//")
        assert resolution.location.endswith("/")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", ("/", "")),
        ("/?kiosk=7", ("/", "kiosk=7")),
        ("/a/../b?x=/../", ("/a/../b", "x=/../")),
        ("/a#frag", ("/a", "")),
        ("http://host/x/../y?q", ("/x/../y", "q")),
        ("http://host", ("/", "")),
        ("*", None),
        ("host:443", None),
        ("x", None),
    ],
)
def test_split_target_keeps_the_path_raw(target: str, expected: tuple[str, str] | None) -> None:
    assert split_target(target) == expected


# ----------------------------------------------------------------------------------------------------------
# Header helpers.


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("mod.mjs", "text/javascript; charset=utf-8"),
        ("APP.JS", "text/javascript; charset=utf-8"),
        ("index.html", "text/html; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("data.json", "application/json"),
        ("logo.svg", "image/svg+xml"),
        ("prog.wasm", "application/wasm"),
        ("site.webmanifest", "application/manifest+json"),
        ("picture.PNG", "image/png"),
        ("font.woff2", "font/woff2"),
        ("archive.tar.gz", "application/gzip"),
        ("blob.nosuchtype", "application/octet-stream"),
        ("LICENSE", "application/octet-stream"),
    ],
)
def test_content_type(name: str, expected: str) -> None:
    assert content_type(name) == expected


def test_etag_is_strong_and_follows_size_mtime_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "f.js"
    path.write_bytes(b"one")
    first = os.stat(path)
    etag = make_etag(first)
    assert re.fullmatch(r'"[0-9a-f]{24}"', etag)
    assert make_etag(os.stat(path)) == etag  # stable

    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns + 1))
    assert make_etag(os.stat(path)) != etag

    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
    path.write_bytes(b"two!")
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert make_etag(os.stat(path)) != etag  # size

    # Same size and mtime, another inode (the old file kept aside so its inode cannot be reused).
    path.write_bytes(b"one")
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert make_etag(os.stat(path)) == etag
    path.rename(tmp_path / "old.js")
    path.write_bytes(b"eno")
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert make_etag(os.stat(path)) != etag


@pytest.mark.parametrize(
    ("if_none_match", "matches"),
    [
        (['"abc"'], True),
        (['W/"abc"'], True),  # weak comparison
        (['"x", "abc"'], True),
        (['"x",W/"abc" , "y"'], True),
        (['"x"', '"abc"'], True),  # two field lines
        (["*"], True),
        ([" * "], True),
        (['"abc-"'], False),
        (['"ab"'], False),
        (["abc"], False),  # not quoted: not an entity tag
        (['"a,b", "x"'], False),
        ([""], False),
    ],
)
def test_none_match(if_none_match: list[str], matches: bool) -> None:
    assert none_match(if_none_match, '"abc"') is matches


def test_none_match_with_a_comma_inside_a_tag() -> None:
    assert none_match(['"x", "a,b"'], '"a,b"')


def test_modified_since() -> None:
    now = 1_700_000_000.0
    mtime = 1_600_000_000
    at = email.utils.formatdate(mtime, usegmt=True)
    later = email.utils.formatdate(mtime + 60, usegmt=True)
    earlier = email.utils.formatdate(mtime - 1, usegmt=True)
    future = email.utils.formatdate(now + 3600, usegmt=True)
    assert not modified_since(at, mtime, now)
    assert not modified_since(later, mtime, now)
    assert modified_since(earlier, mtime, now)
    assert modified_since(future, mtime, now)  # a date in the future is ignored
    assert modified_since("not a date", mtime, now)
    assert modified_since("", mtime, now)
    assert not modified_since(email.utils.formatdate(mtime), mtime, now)  # "-0000" zone


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"], True),
        (["TEXT/HTML"], True),
        (["application/json", "text/html;q=0.5"], True),
        (["*/*"], False),
        (["text/*"], False),
        (["text/html;q=0"], False),
        (["text/html;q=bad"], False),
        (["application/json"], False),
        ([], False),
    ],
)
def test_accepts_html(accept: list[str], expected: bool) -> None:
    assert accepts_html(accept) is expected


# ----------------------------------------------------------------------------------------------------------
# A real server and a raw client.


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    raw: bytes


async def raw_request(
    port: int, target: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> RawResponse:
    """Send the request line exactly as given and read the whole answer (Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()
    return parse_response(raw)


def parse_response(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        parsed[key] = f"{parsed[key]}, {value.strip()}" if key in parsed else value.strip()
    return RawResponse(int(status_line.split()[1]), parsed, body, raw)


Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve a root on a free loopback port, mounted the way the gateway mounts it."""
    runners: list[web.AppRunner] = []

    async def start(root: Path, *, spa: bool = False) -> int:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", StaticFiles(root, spa=spa).handle)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        assert isinstance(port, int)
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


TRAVERSALS = [
    ("/../secret.txt", 400),
    ("/../../../../../../etc/passwd", 400),
    ("/sub/../../secret.txt", 400),
    ("/sub/../.env", 400),
    ("/%2e%2e/secret.txt", 400),
    ("/%2E%2e/secret.txt", 400),
    ("/%2E%2e/%2e%2E/secret.txt", 400),
    ("/.%2e/secret.txt", 400),
    ("/%2e%2e%2fsecret.txt", 400),
    ("/..%2fsecret.txt", 400),
    ("/..%2Fsecret.txt", 400),
    ("/..%5csecret.txt", 400),
    ("/..\\secret.txt", 400),
    ("/%5c..%5csecret.txt", 400),
    ("/..%00/secret.txt", 400),
    ("/secret.txt%00.html", 400),
    ("/%2ftmp%2fsecret.txt", 400),
    ("/C:/Windows/win.ini", 400),
    ("/c:%5cwindows%5cwin.ini", 400),
    ("/%c0%ae%c0%ae/secret.txt", 400),
    ("/%%32%65%%32%65/secret.txt", 400),
    ("/%u002e%u002e/secret.txt", 400),
    ("/leakdir%2fsecret.txt", 400),
    ("http://127.0.0.1/../secret.txt", 400),
    ("http://127.0.0.1/%2e%2e/secret.txt", 400),
    ("/%252e%252e/secret.txt", 404),
    ("/%252e%252e%252fsecret.txt", 404),
    ("/%ef%bc%8e%ef%bc%8e/secret.txt", 404),
    ("/sub/..;/secret.txt", 404),
    ("//etc/passwd", 404),
    ("//secret.txt", 404),
    ("/leak.txt", 404),
    ("/leakdir/secret.txt", 404),
    ("/leakdir/", 404),
    ("/leakdir", 404),
    ("/up/secret.txt", 404),
    ("/up/outside/secret.txt", 404),
    ("/evil/", 404),
    ("/.env", 404),
    ("/%2eenv", 404),
    ("/%2Eenv", 404),
    ("/.git/config", 404),
    ("/sub/.secret", 404),
    ("/sneaky", 404),
    ("/loop", 404),
    ("/pipe", 404),
]


@pytest.mark.parametrize("spa", [False, True], ids=["plain", "spa"])
async def test_no_traversal_variant_reaches_a_file_outside_the_root(
    root: Path, serve: Serve, spa: bool
) -> None:
    # The absolute path of the secret, as an attacker who guessed it would send it.
    variants = [*TRAVERSALS, ("/" + str(root.parent / "secret.txt"), 404)]
    port = await serve(root, spa=spa)
    for target, expected in variants:
        response = await raw_request(port, target, headers={"Accept": "text/html"})
        assert SECRET not in response.raw, target
        assert HIDDEN not in response.raw, target
        assert response.headers["x-content-type-options"] == "nosniff", target
        if spa and response.status == 200:
            # Only a would-be client route falls back, and only to the root index.
            assert expected == 404, target
            assert response.body == INDEX, target
        else:
            assert response.status == expected, (target, response.status, response.body)


async def test_a_file_is_served_with_its_headers(root: Path, serve: Serve) -> None:
    port = await serve(root)
    response = await raw_request(port, "/app.js")
    assert response.status == 200
    assert response.body == APP_JS
    headers = response.headers
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["content-length"] == str(len(APP_JS))
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "public, max-age=0"
    assert re.fullmatch(r'"[0-9a-f]+"', headers["etag"])  # strong: no W/
    mtime = int((root / "app.js").stat().st_mtime)
    assert email.utils.parsedate_to_datetime(headers["last-modified"]).timestamp() == mtime
    assert "content-encoding" not in headers
    assert "transfer-encoding" not in headers


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/mod.mjs", "text/javascript; charset=utf-8"),
        ("/data.json", "application/json"),
        ("/logo.svg", "image/svg+xml"),
        ("/prog.wasm", "application/wasm"),
        ("/site.webmanifest", "application/manifest+json"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/page.html", "text/html; charset=utf-8"),
        ("/blob.nosuchtype", "application/octet-stream"),
        ("/archive.tar.gz", "application/gzip"),
    ],
)
async def test_content_types_on_the_wire(root: Path, serve: Serve, target: str, expected: str) -> None:
    port = await serve(root)
    response = await raw_request(port, target)
    assert response.status == 200
    assert response.headers["content-type"] == expected
    assert response.body == (root / target.lstrip("/")).read_bytes()


async def test_index_pages_and_directories(root: Path, serve: Serve) -> None:
    port = await serve(root)

    home = await raw_request(port, "/?kiosk=7")
    assert home.status == 200
    assert home.body == INDEX
    assert home.headers["content-type"] == "text/html; charset=utf-8"
    assert home.headers["cache-control"] == "no-cache"

    direct = await raw_request(port, "/index.html")
    assert direct.body == INDEX
    assert direct.headers["cache-control"] == "no-cache"

    sub = await raw_request(port, "/sub/")
    assert (sub.status, sub.body) == (200, SUB_INDEX)
    assert sub.headers["cache-control"] == "no-cache"

    for target, location in [
        ("/sub", "/sub/"),
        ("/sub?kiosk=7", "/sub/?kiosk=7"),
        ("//sub", "/sub/"),
        ("/subalias", "/subalias/"),
    ]:
        redirect = await raw_request(port, target)
        assert redirect.status == 301, target
        assert redirect.headers["location"] == location

    for target in ["/empty/", "/empty", "/sub/missing.txt", "/app.js/"]:
        assert (await raw_request(port, target)).status == 404, target

    assert (await raw_request(port, "/alias.js")).body == APP_JS  # a symlink inside the root
    assert (await raw_request(port, "/subalias/page.txt")).body == b"sub page"


async def test_conditional_requests(root: Path, serve: Serve) -> None:
    port = await serve(root)
    first = await raw_request(port, "/app.js")
    etag, last_modified = first.headers["etag"], first.headers["last-modified"]

    async def status_with(**headers: str) -> RawResponse:
        names = {key.replace("_", "-"): value for key, value in headers.items()}
        return await raw_request(port, "/app.js", headers=names)

    fresh = await status_with(If_None_Match=etag)
    assert fresh.status == 304
    assert fresh.body == b""
    assert fresh.headers["etag"] == etag
    assert fresh.headers["cache-control"] == "public, max-age=0"
    assert "content-length" not in fresh.headers  # RFC 9110 §8.6: never a length that is not the file's

    for value in [f"W/{etag}", f'"other", {etag}', "*"]:
        assert (await status_with(If_None_Match=value)).status == 304, value
    assert (await status_with(If_None_Match='"other"')).status == 200
    # If-None-Match wins over If-Modified-Since.
    assert (await status_with(If_None_Match='"other"', If_Modified_Since=last_modified)).status == 200

    assert (await status_with(If_Modified_Since=last_modified)).status == 304
    mtime = (root / "app.js").stat().st_mtime
    older = email.utils.formatdate(mtime - 10, usegmt=True)
    assert (await status_with(If_Modified_Since=older)).status == 200
    assert (await status_with(If_Modified_Since="yesterday")).status == 200

    # A new version of the file gets a new ETag: a kiosk revalidating picks it up.
    (root / "app.js").write_bytes(b"console.log('v2');\n")
    os.utime(root / "app.js", (mtime + 5, mtime + 5))
    changed = await status_with(If_None_Match=etag)
    assert changed.status == 200
    assert changed.body == b"console.log('v2');\n"
    assert changed.headers["etag"] != etag

    index = await raw_request(port, "/")
    again = await raw_request(port, "/", headers={"If-None-Match": index.headers["etag"]})
    assert again.status == 304
    assert again.headers["cache-control"] == "no-cache"


async def test_last_modified_is_never_in_the_future(root: Path, serve: Serve) -> None:
    future = time.time() + 86_400
    os.utime(root / "app.js", (future, future))
    port = await serve(root)
    response = await raw_request(port, "/app.js")
    assert email.utils.parsedate_to_datetime(response.headers["last-modified"]).timestamp() <= time.time()


@pytest.mark.parametrize("target", ["/app.js", "/", "/sub/", "/logo.svg", "/missing.js", "/sub", "/../x"])
async def test_head_has_the_headers_of_get_and_no_body(root: Path, serve: Serve, target: str) -> None:
    port = await serve(root)
    get = await raw_request(port, target)
    head = await raw_request(port, target, method="HEAD")
    assert head.status == get.status
    assert head.body == b""
    get.headers.pop("date")
    head.headers.pop("date")
    assert head.headers == get.headers


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
async def test_other_methods_are_405_with_allow(root: Path, serve: Serve, method: str) -> None:
    port = await serve(root)
    response = await raw_request(port, "/app.js", method=method, headers={"Content-Length": "0"})
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert APP_JS not in response.body


async def test_spa_falls_back_to_the_root_index_for_html_routes(root: Path, serve: Serve) -> None:
    port = await serve(root, spa=True)
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}

    for target in ["/kiosk/settings", "/kiosk/7?kiosk=7", "/empty/", "/v1.2/route"]:
        response = await raw_request(port, target, headers=browser)
        assert (response.status, response.body) == (200, INDEX), target
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["vary"] == "Accept"
        assert response.headers["content-type"] == "text/html; charset=utf-8"

    head = await raw_request(port, "/kiosk/settings", method="HEAD", headers=browser)
    assert (head.status, head.body) == (200, b"")
    etag = head.headers["etag"]
    cached = await raw_request(port, "/kiosk/settings", headers={**browser, "If-None-Match": etag})
    assert cached.status == 304
    assert cached.headers["vary"] == "Accept"

    # Not HTML (fetch() sends */*), or an extension, or hidden: still 404.
    not_html = await raw_request(port, "/kiosk/settings", headers={"Accept": "*/*"})
    assert not_html.status == 404
    assert not_html.headers["vary"] == "Accept"
    assert (await raw_request(port, "/kiosk/settings")).status == 404
    assert (await raw_request(port, "/kiosk/settings", headers={"Accept": "text/html;q=0"})).status == 404
    for target in ["/missing.js", "/kiosk/logo.png", "/.hidden-route", "/app.js/"]:
        assert (await raw_request(port, target, headers=browser)).status == 404, target

    # Behind a symlink that leads out, a missing name is not a client route: otherwise 404 versus fallback
    # would tell which files exist outside the root.
    for target in ["/up/outside", "/up/outside/nothing-here", "/up/nothing-here", "/leakdir/nothing-here"]:
        response = await raw_request(port, target, headers=browser)
        assert response.status == 404, target

    # Files still win over the fallback.
    assert (await raw_request(port, "/app.js", headers=browser)).body == APP_JS
    assert (await raw_request(port, "/sub/", headers=browser)).body == SUB_INDEX


async def test_spa_off_does_not_fall_back(root: Path, serve: Serve) -> None:
    port = await serve(root, spa=False)
    response = await raw_request(port, "/kiosk/settings", headers={"Accept": "text/html"})
    assert response.status == 404
    assert "vary" not in response.headers


async def test_spa_without_a_root_index_is_404(root: Path, serve: Serve) -> None:
    (root / "index.html").unlink()
    port = await serve(root, spa=True)
    assert (await raw_request(port, "/kiosk", headers={"Accept": "text/html"})).status == 404
    assert (await raw_request(port, "/")).status == 404


async def test_a_root_that_disappears_serves_nothing(root: Path, serve: Serve) -> None:
    port = await serve(root)
    assert (await raw_request(port, "/app.js")).status == 200
    shutil.rmtree(root)
    assert (await raw_request(port, "/app.js")).status == 404


# ----------------------------------------------------------------------------------------------------------
# Bodies: bounded reads, truncation, no descriptor left open.


class RecordingFile:
    """Wraps the opened file to record the size of every read."""

    def __init__(self, file: BinaryIO, reads: list[int]) -> None:
        self.file = file
        self.reads = reads

    def read(self, size: int = -1) -> bytes:
        self.reads.append(size)
        return self.file.read(size)

    def close(self) -> None:
        self.file.close()


async def test_a_large_file_is_streamed_in_bounded_chunks(
    root: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 123)
    (root / "big.bin").write_bytes(data)
    reads: list[int] = []
    real_open = static._open_file

    def recording_open(path: Path) -> tuple[BinaryIO, os.stat_result] | None:
        opened = real_open(path)
        assert opened is not None
        return RecordingFile(opened[0], reads), opened[1]  # type: ignore[return-value]

    monkeypatch.setattr(static, "_open_file", recording_open)
    port = await serve(root)
    response = await raw_request(port, "/big.bin")
    assert response.status == 200
    assert response.headers["content-length"] == str(len(data))
    assert response.body == data
    assert len(reads) == 4
    assert all(0 < size <= CHUNK_SIZE for size in reads)


async def test_a_file_that_shrinks_while_sent_ends_the_connection(
    root: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"x" * (2 * CHUNK_SIZE)
    (root / "shrinking.bin").write_bytes(data)
    real_open = static._open_file

    def open_then_truncate(path: Path) -> tuple[BinaryIO, os.stat_result] | None:
        opened = real_open(path)
        os.truncate(path, CHUNK_SIZE // 2)  # after the fstat that set Content-Length
        return opened

    monkeypatch.setattr(static, "_open_file", open_then_truncate)
    port = await serve(root)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Keep-alive: only the server closing the connection ends the read.
    writer.write(b"GET /shrinking.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    await writer.wait_closed()
    response = parse_response(raw)
    assert response.headers["content-length"] == str(len(data))
    assert len(response.body) == CHUNK_SIZE // 2


def open_files_under(path: Path) -> list[str]:
    fd_dir = Path("/proc/self/fd")
    found = []
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_no_file_descriptor_is_left_open(root: Path, serve: Serve) -> None:
    (root / "big.bin").write_bytes(b"y" * (64 * CHUNK_SIZE))
    port = await serve(root)
    for target in ["/app.js", "/", "/sub", "/missing", "/pipe", "/loop"]:
        await raw_request(port, target)
    await raw_request(port, "/app.js", method="HEAD")
    await raw_request(port, "/app.js", headers={"If-None-Match": "*"})
    # A client that goes away in the middle of a large body.
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readexactly(4096)
        writer.transport.abort()
    await wait_for(lambda: not open_files_under(root.resolve()), what="every served file to be closed")
