"""The hub's state machine: admission, sessions, subscriptions with recovery, publishing and fan-out.

Nothing here parses HTTP or WebSocket frames. The ``/ws`` endpoint (:mod:`wsgate.hub.websocket`) calls
:meth:`Hub.admit` with the request's headers, writes the 101 and registers the :class:`Session`
(:meth:`Hub.open_session`); the session hands each client message to :meth:`Hub.run_command`, one at a time,
and reports its end (:meth:`Hub.session_closed`, then :meth:`Hub.end_session`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from wsgate.auth.origins import OriginPolicy
from wsgate.auth.tokens import Grant, PublishCredentials, TokenVerifier, credential_from_headers
from wsgate.config import HubConfig
from wsgate.errors import ProtocolError, WsgateError
from wsgate.handshake import check_upgrade, single_header
from wsgate.hub import protocol
from wsgate.hub.broker import Broker, create_broker
from wsgate.hub.broker.base import PresenceEntry, Published
from wsgate.hub.eager import start_eagerly
from wsgate.hub.frames import (
    GOING_AWAY,
    INTERNAL_ERROR,
    MESSAGE_TOO_BIG,
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    server_frame,
)
from wsgate.hub.idempotency import MIN_WINDOW, IdempotencyStore
from wsgate.hub.keepalive import Keepalive
from wsgate.hub.metrics import HubMetrics
from wsgate.hub.session import Session
from wsgate.logs import access_log

log = logging.getLogger("wsgate.hub")

# How long closing the hub waits for its short tasks (ends of sessions) before cancelling them.
CLOSE_WAIT = 5.0


class Overloaded(WsgateError):
    """The hub is at ``limits.max_connections`` (HTTP 429)."""

    status = 429


class Draining(WsgateError):
    """The hub is shutting down (HTTP 503)."""

    status = 503


class Hub:
    """One hub node: local sessions and subscriptions, backed by a broker for history and other nodes."""

    def __init__(self, config: HubConfig, *, broker: Broker | None = None) -> None:
        self.config = config
        self.metrics = HubMetrics()
        self.broker = broker or create_broker(
            config.broker, history_size=config.history.size, history_ttl=config.history.ttl
        )
        self.origins = OriginPolicy(config.allowed_origins, allow_missing=config.allow_missing_origin)
        signing = config.signing
        self.verifier = TokenVerifier(
            config.tokens,
            signing.keys if signing else None,
            audience=signing.audience if signing else None,
        )
        self.publishers = PublishCredentials(config.publish_api.tokens, self.verifier)
        # Idempotency-Key answers live as long as the history they point into (at least a minute).
        self.idempotency = IdempotencyStore(window=max(config.history.ttl, MIN_WINDOW))
        self.draining = False
        self.sessions: dict[str, Session] = {}
        self._reserved = 0  # connection slots held by other than sessions
        # channel -> session id -> session, for sessions that receive live messages.
        self._live: dict[str, dict[str, Session]] = {}
        # channel -> session id -> buffered (offset, frame) while that session's recovery is being read.
        self._pending: dict[str, dict[str, list[tuple[int, bytes]]]] = {}
        # channel -> frames delivered this event-loop iteration, written together by _flush.
        self._outbox: dict[str, list[bytes]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        # Pings and pong deadlines for every connection (sessions and echo connections), one timer in all.
        self.keepalive = Keepalive(config.limits.ping_interval)
        # Short tasks: commands that wait for the broker, and the ends of sessions.
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.broker.start(self.deliver)
        self.keepalive.start()

    async def close(self) -> None:
        self.keepalive.stop()
        if self._tasks:
            # Ends of sessions unsubscribing; commands still waiting for the broker are cut short.
            _, late = await asyncio.wait(set(self._tasks), timeout=CLOSE_WAIT)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await self.broker.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._track(task)
        return task

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- admission -------------------------------------------------------------------------------------

    def admit(self, method: str, headers: Mapping[str, str]) -> Grant:
        """Decide a WebSocket handshake; raises an error carrying the HTTP status to answer.

        The order puts cheap refusals first and never touches the credential of a request that is refused
        for another reason.
        """
        self.check_handshake(method, headers)
        token = credential_from_headers(headers, self.config.auth_header)
        return self.verifier.verify_optional(token)

    def check_handshake(self, method: str, headers: Mapping[str, str]) -> None:
        """Every check of :meth:`admit` but the credential: draining, upgrade, capacity, Origin.

        The test-only ``/echo`` endpoint admits with this alone (:mod:`wsgate.hub.echo`).
        """
        if self.draining:
            raise Draining("the hub is shutting down; reconnect to another node")
        check_upgrade(method, headers)
        if len(self.sessions) + self._reserved >= self.config.limits.max_connections:
            raise Overloaded("too many connections; retry later")
        self.origins.check(single_header(headers, "Origin"))

    def reserve_slot(self) -> None:
        """Count a connection that is not a session against ``limits.max_connections`` (``/echo``)."""
        self._reserved += 1

    def release_slot(self) -> None:
        self._reserved -= 1

    def reject(self, reason: str) -> None:
        self.metrics.rejections.labels(reason).inc()

    # --- sessions --------------------------------------------------------------------------------------

    def open_session(self, session: Session) -> None:
        """Count a session whose 101 is written: it may now subscribe, and it will be pinged."""
        self.sessions[session.id] = session
        self._idle.clear()
        self.metrics.connections.inc()
        self.keepalive.add(session)
        expires_at = session.grant.expires_at
        if expires_at is not None:
            # A signed token's lifetime bounds the connection it opened (DESIGN.md §4: 1008 on expiry).
            delay = max(0.0, expires_at - time.time())
            session.expiry = asyncio.get_running_loop().call_later(
                delay, self.close_session_soon, session, POLICY_VIOLATION, "token expired"
            )

    def session_closed(self, session: Session) -> None:
        """A session's connection has ended or is being closed by us: no more pings; log how it ended."""
        self.keepalive.discard(session)
        if session.expiry is not None:
            session.expiry.cancel()
        code = session.close_code
        reason = session.close_reason or ("too large" if code == MESSAGE_TOO_BIG else "")
        self.metrics.disconnects.labels(str(code)).inc()
        access_log.info(
            "ws close id=%s subject=%s code=%s reason=%s duration=%.1fs",
            session.id,
            session.grant.subject,
            code,
            reason or "-",
            time.monotonic() - session.opened,
        )

    def end_session_soon(self, session: Session) -> None:
        self._spawn(self.end_session(session))

    async def end_session(self, session: Session) -> None:
        """Forget a session whose connection has closed: its subscriptions, presence and slot."""
        session.closing = True
        if session.expiry is not None:
            session.expiry.cancel()
        if self.sessions.pop(session.id, None) is None:
            return
        self.metrics.connections.dec()
        for channel in list(session.channels):
            await self._unsubscribe(session, channel)
        if not self.sessions:
            self._idle.set()

    def slow_consumer(self, session: Session) -> None:
        self.metrics.slow_consumers.inc()
        self.close_session_soon(session, TRY_AGAIN_LATER, "slow consumer")

    def close_session_soon(self, session: Session, code: int, reason: str) -> None:
        """Close a session with ``code`` (from timers, fan-out and shutdown): its close frame goes out behind
        what it was already sent, and the connection ends with the peer's answer or after a grace period."""
        session.close(code, reason)

    def run_command(self, session: Session, text: str) -> asyncio.Task[None] | None:
        """Handle one client message, at once (:func:`~wsgate.hub.eager.start_eagerly`). If it has to wait,
        the task that finishes it is returned and tells the session when it is done
        (``Session.command_done``); the session reads nothing else meanwhile."""
        task = start_eagerly(self._command(session, text))
        if task is not None:
            self._track(task)
            task.add_done_callback(lambda _: session.command_done())
        return task

    async def _command(self, session: Session, text: str) -> None:
        try:
            await self.handle_message(session, text)
        except Exception:
            # A broker that fails (Redis gone) must not leave the client hanging: say so with 1011.
            log.exception("error handling a message on connection %s", session.id)
            session.close(INTERNAL_ERROR, "internal error")

    # --- client messages -------------------------------------------------------------------------------

    async def handle_message(self, session: Session, raw: bytes | str) -> None:
        """Act on one text message from a client; protocol errors are answered, not raised."""
        try:
            command = protocol.decode_command(raw)
            if isinstance(command, protocol.Subscribe):
                await self.subscribe(session, command)
            elif isinstance(command, protocol.Unsubscribe):
                await self.unsubscribe(session, command.channel)
            else:
                if not session.grant.can_publish(command.channel):
                    raise ProtocolError(f"no publish right on channel {command.channel}", code="forbidden")
                await self.publish(command.channel, command.data, via="websocket")
        except ProtocolError as exc:
            session.send_error(exc.code, exc.message)

    async def subscribe(self, session: Session, command: protocol.Subscribe) -> None:
        channel = command.channel
        if not session.grant.can_subscribe(channel):
            raise ProtocolError(f"no subscribe right on channel {channel}", code="forbidden")
        if channel in session.channels:
            raise ProtocolError(f"already subscribed to {channel}")
        if len(session.channels) >= self.config.limits.max_subscriptions:
            raise ProtocolError("too many subscriptions on this connection", code="limit")
        session.channels.add(channel)
        self.metrics.subscriptions.inc()

        # Live messages that arrive while history is being read are held back, then sent after the replay
        # with duplicates dropped by offset: the client sees every offset once, in order.
        held: list[tuple[int, bytes]] = []
        pending = self._pending.setdefault(channel, {})
        pending[session.id] = held
        try:
            if channel not in self._live:
                self._live[channel] = {}
                await self.broker.listen(channel)
            recovery = await self.broker.recover(channel, command.since)
        finally:
            del pending[session.id]
            if not pending:
                del self._pending[channel]

        session.send_text(protocol.subscribed(channel, recovery.epoch, recovery.offset, recovery.recovered))
        for entry in recovery.missed or ():
            session.send_text(protocol.message(channel, entry.offset, entry.data))
        for offset, frame in held:
            if offset > recovery.offset:
                session.send(frame)
        # Frames still in the outbox are in `held` too: write them to the current subscribers first, or
        # the new one would receive them twice.
        self._flush(channel)
        self._live[channel][session.id] = session
        await self.broker.join(
            channel, PresenceEntry(session.id, session.grant.subject, session.connected_at)
        )

    async def unsubscribe(self, session: Session, channel: str) -> None:
        if channel not in session.channels:
            raise ProtocolError(f"not subscribed to {channel}")
        # Frames published before the unsubscribe, still in the outbox, are the client's: write them now.
        self._flush(channel)
        await self._unsubscribe(session, channel)

    async def _unsubscribe(self, session: Session, channel: str) -> None:
        session.channels.discard(channel)
        self.metrics.subscriptions.dec()
        live = self._live.get(channel)
        if live is not None and live.pop(session.id, None) is not None:
            await self.broker.leave(channel, session.id)
        await self._release_if_unused(channel)

    async def _release_if_unused(self, channel: str) -> None:
        """Stop listening to a channel once no local session receives it or is about to."""
        if channel in self._live and not self._live[channel] and channel not in self._pending:
            del self._live[channel]
            await self.broker.unlisten(channel)

    # --- publishing and fan-out ------------------------------------------------------------------------

    async def publish(self, channel: str, data: str, *, via: str) -> Published:
        started = time.perf_counter()
        published = await self.broker.publish(channel, data)
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        self.metrics.messages_in.labels(via).inc()
        return published

    def deliver(self, channel: str, offset: int, data: str) -> None:
        """Broker callback: encode the message once, for every local subscriber.

        Frames for live subscribers wait in the channel's outbox until the end of this event-loop iteration:
        a burst of publishes then costs one ``write`` per subscriber instead of one per subscriber per
        message (the syscall is most of a delivery's cost).
        """
        live = self._live.get(channel)
        pending = self._pending.get(channel)
        if not live and not pending:
            return
        frame = server_frame(protocol.message(channel, offset, data).encode())
        if live:
            outbox = self._outbox.get(channel)
            if outbox is None:
                self._outbox[channel] = [frame]
                asyncio.get_running_loop().call_soon(self._flush, channel)
            else:
                outbox.append(frame)
        if pending:
            for held in pending.values():
                held.append((offset, frame))

    def _flush(self, channel: str) -> None:
        """Write a channel's waiting frames, joined, to each live subscriber."""
        frames = self._outbox.pop(channel, None)
        live = self._live.get(channel)
        if not frames or not live:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        for session in live.values():
            session.send(data)
        self.metrics.messages_out.inc(len(live) * len(frames))

    async def presence(self, channel: str) -> list[PresenceEntry]:
        return await self.broker.presence(channel)

    # --- shutdown --------------------------------------------------------------------------------------

    async def drain(self, deadline: float) -> None:
        """Refuse new connections and close every open one with 1001, waiting at most ``deadline`` seconds."""
        self.draining = True
        sessions = list(self.sessions.values())
        if not sessions:
            return
        log.info("draining %d connection(s)", len(sessions))
        for session in sessions:
            self.close_session_soon(session, GOING_AWAY, "server shutting down")
        try:
            async with asyncio.timeout(deadline):
                await self._idle.wait()
        except TimeoutError:
            late = list(self.sessions.values())
            log.warning("%d connection(s) did not close within %.1fs; dropping them", len(late), deadline)
            for session in late:
                session.abort()
