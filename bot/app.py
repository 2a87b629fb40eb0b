"""Builds kefu from config and runs it: database, channels, pipeline, outbox worker, HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import text
from starlette.routing import BaseRoute

from bot import outbox
from bot.access_log import AccessLog
from bot.care import build_care, staff_room
from bot.config import Config, ConfigError, EmailConfig, require_secret, secret
from bot.effects import Phase
from bot.http import build_app
from bot.insight import build_insight
from bot.leader import election_for
from bot.messages import Inbound, Receipt
from bot.metrics import Metrics
from bot.outbox import OutboxWorker
from bot.pipeline import Pipeline
from bot.plugins import Observers
from bot.plugins import pipeline as plugged_pipeline
from bot.scheduler import build_campaigns
from channels import telegram, telegram_webhook
from channels.base import Channel, Misconfigured
from channels.email import EmailChannel, ImapSettings, MailStore, SmtpSettings
from channels.mail_auth import AuthSettings
from channels.mail_compose import Composer
from channels.mail_compose import Identity as MailSender
from channels.webhook import Source, WebhookChannel
from channels.webhook_signing import SecretError
from handlers import email_events, staff_feed, staff_group, telegram_links, telegram_survey
from handlers.complaints import load_classifier
from storage.channel_state import StateStore
from storage.db import Database

log = logging.getLogger("kefu.app")

# Libraries that log routine work at INFO (APScheduler: each job run; uvicorn: its banner; alembic:
# each migration step). kefu's own events say what matters; theirs show from WARNING up.
THIRD_PARTY = ("apscheduler", "uvicorn", "alembic", "telegram", "httpx", "httpcore", "aiosqlite")


class StartupError(Exception):
    """kefu cannot start for a reason the person starting it can fix; the message says how."""


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("kefu").setLevel(level)
    # httpx logs every request URL at INFO; Telegram's URLs carry the bot token.
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.WARNING)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts so that a taken port is one clear
    error (and "kefu.started" is never logged for a server that cannot listen)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {host}:{port}: {exc.strerror}; set [http] host to an address "
            "of this machine"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; another program (or another "
            "kefu) is using it: stop it or set [http] port in config.toml"
        ) from None
    sock.set_inheritable(True)
    return sock

SOURCE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TELEGRAM_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def build_webhook(config: Config, env: Mapping[str, str]) -> WebhookChannel:
    sources: dict[str, Source] = {}
    disabled: dict[str, str] = {}
    for name, src in config.webhook.sources.items():
        if not SOURCE_NAME.match(name):
            raise ConfigError(
                f"[webhook.sources] has source name {name!r}: use letters, digits, '-' and '_'"
            )
        value = secret(src.secret_env, env)
        if value is None:
            disabled[name] = f"set {src.secret_env} to turn it on"
            log.warning(
                "webhook.source.off source=%s: environment variable %s is not set; "
                "set it to the source's shared secret to turn the source on",
                name,
                src.secret_env,
            )
            continue
        previous = secret(src.previous_secret_env, env) if src.previous_secret_env else None
        source = Source(name, value, src.callback_url, src.signing, previous)
        try:
            source.signer(config.webhook.max_skew_seconds)
        except SecretError as exc:
            variables = " or ".join(v for v in (src.secret_env, src.previous_secret_env) if v)
            raise ConfigError(
                f'[webhook.sources.{name}] signing = "{src.signing}": the secret in {variables} '
                f"{exc}"
            ) from None
        sources[name] = source
    return WebhookChannel(
        sources,
        disabled=disabled,
        max_skew_seconds=config.webhook.max_skew_seconds,
        max_body_bytes=config.http.max_body_bytes,
    )


def build_telegram(kefu: Kefu) -> Channel | None:
    tg = kefu.config.telegram
    if not tg.enabled:
        log.info(
            "channel.telegram.off: set [telegram] enabled = true and put the bot token in %s "
            "to turn it on",
            tg.token_env,
        )
        return None
    token = require_secret(tg.token_env, "[telegram]", kefu.env)
    webhook_secret: str | None = None
    if tg.mode == "webhook":
        webhook_secret = require_secret(
            tg.webhook_secret_env, '[telegram] mode = "webhook"', kefu.env
        )
        if not TELEGRAM_SECRET.match(webhook_secret):
            raise ConfigError(
                f"environment variable {tg.webhook_secret_env} must be 1-256 characters of "
                "A-Z, a-z, 0-9, '_' and '-' (Telegram's rule for a webhook secret_token)"
            )
    # httpx logs each request's URL at INFO and PTB logs its base URL at DEBUG: both hold the token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("telegram").setLevel(logging.WARNING)
    hooks = telegram.Hooks(
        link=functools.partial(telegram_links.handle, kefu.db),
        thread_of=functools.partial(staff_group.thread_of, kefu.db),
        save_thread=functools.partial(staff_group.save_thread, kefu.db),
        survey=functools.partial(telegram_survey.handle, kefu.db, kefu.config),
    )
    if tg.staff_chat_id is None:
        log.info("telegram.staff_chat.off: set [telegram] staff_chat_id to mirror conversations")
    else:
        desk = staff_group.StaffDesk(
            kefu.db,
            config=kefu.config,
            # kefu.worker is read when a commit happens: it is made after the channels.
            on_commit=lambda: kefu.worker.wake(),  # noqa: PLW0108
        )
        hooks = dataclasses.replace(
            hooks,
            staff=desk.handle,
            staff_ids=functools.partial(staff_group.staff_telegram_ids, kefu.db),
            take=functools.partial(staff_feed.take, kefu.db),
        )
        room = staff_room(kefu.config)
        assert room is not None  # Telegram is on
        kefu.observers.add(Phase.MIRROR, staff_group.mirror_observer(room))
    channel = telegram.TelegramChannel(
        telegram.make_bot(token, tg.base_url),
        staff_chat_id=tg.staff_chat_id,
        mode=tg.mode,
        poll_timeout=tg.poll_timeout_seconds,
        hooks=hooks,
        messages_per_second=tg.messages_per_second,
        group_messages_per_minute=tg.group_messages_per_minute,
        webhook_url=tg.webhook_url,
        webhook_secret=webhook_secret,
    )
    if tg.mode == "webhook":
        kefu.routes.append(
            telegram_webhook.webhook_route(channel, max_body_bytes=kefu.config.http.max_body_bytes)
        )
    else:
        # Telegram answers 409 to all but one getUpdates per bot: one process polls, all send.
        channel.poll_at_start = False

        async def poll() -> None:
            channel.start_polling()

        kefu.election.join("telegram.poll", on_elected=poll, on_deposed=channel.stop_polling)
    return channel


def build_email(kefu: Kefu) -> Channel | None:
    em = kefu.config.email
    if not em.enabled:
        log.info(
            "channel.email.off: fill [email] (address, imap_host, smtp_host), set enabled = true "
            "and put the mailbox password in %s to turn it on",
            em.password_env,
        )
        return None
    kefu.observers.add(Phase.CHANNEL, email_events.on_bounce)
    # aioimaplib logs every line it receives at DEBUG: whole mails, the customers' words.
    logging.getLogger("aioimaplib").setLevel(logging.INFO)
    channel = email_channel(em, kefu.env, kefu.db)
    # One reader per folder across all processes; every process sends by SMTP.
    folder = f"email.imap:{channel.reader.s.username}@{em.imap_host}:{em.imap_port}/{em.folder}"

    async def read() -> None:
        await channel.start(kefu.receive)

    kefu.election.join(folder, on_elected=read, on_deposed=channel.stop)
    kefu.elected_channels.add(channel.name)
    return channel


def email_channel(em: EmailConfig, env: Mapping[str, str], db: Database) -> EmailChannel:
    """The email channel as [email] describes it (also what `kefu email backfill` reads with)."""
    for key in ("address", "imap_host", "smtp_host"):
        if not getattr(em, key):
            raise ConfigError(f"[email] enabled = true but [email] {key} is not set")
    password = require_secret(em.password_env, "[email]", env)
    username = em.username or em.address
    assert em.address is not None and em.imap_host is not None and em.smtp_host is not None
    assert username is not None
    state = StateStore(db, "email")
    return EmailChannel(
        address=em.address,
        imap=ImapSettings(
            host=em.imap_host,
            port=em.imap_port,
            security=em.imap_security,
            username=username,
            password=password,
            folder=em.folder,
            processed_folder=em.processed_folder,
            poll_interval=em.poll_interval_seconds,
            idle_recheck=em.idle_recheck_seconds,
            timeout=em.timeout_seconds,
            ca_file=em.ca_file,
            acknowledge_max_age=timedelta(days=em.acknowledge_max_age_days),
        ),
        smtp=SmtpSettings(
            host=em.smtp_host,
            port=em.smtp_port,
            security=em.smtp_security,
            # smtp_username = "": a relay that needs no login (kefu sends no AUTH)
            username=username if em.smtp_username is None else em.smtp_username,
            password=password,
            timeout=em.timeout_seconds,
            ca_file=em.ca_file,
        ),
        store=MailStore(em.store_dir, em.max_attachment_bytes),
        composer=Composer(
            Path(email_events.__file__).parent / "templates",
            MailSender(address=em.address, name=em.from_name),
        ),
        load_state=state.load,
        save_state=state.save,
        auth=AuthSettings(authserv_ids=tuple(em.authserv_id), verify_dkim=em.dkim_verify),
    )


class Kefu:
    """One running kefu: everything `kefu run` starts, in the order it needs."""

    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = dict(os.environ if env is None else env)
        self.metrics = Metrics()
        self.db = Database(config.storage.url)
        # Singletons (the Telegram poller, each IMAP folder, each scheduled job) run in the
        # process elected for them; on SQLite that is always this one.
        self.election = election_for(self.db.url)
        self.elected_channels: set[str] = set()  # started by the election, not by start()
        self.webhook = build_webhook(config, self.env)
        self.channels: dict[str, Channel] = {"webhook": self.webhook}
        # Builders may add pipeline observers (each in its phase) and HTTP routes of their own.
        self.observers = Observers()
        self.routes: list[BaseRoute] = []
        for build in (build_telegram, build_email):
            channel = build(self)
            if channel is not None:
                self.channels[channel.name] = channel
        # Checks every greeting template (a broken one stops start-up) and adds the opt-out
        # observer.
        self.scheduler = build_campaigns(self)
        # Complaint care: the router, flags, acknowledgements, surveys, SLA and auto-close jobs.
        self.care = build_care(self, self.scheduler)
        # Churn warnings and follow-ups: they route with care's router.
        self.insight = build_insight(self, self.care, self.scheduler)
        # The outbox sends through each channel's sending side: the webhook's is its callbacks.
        senders: dict[str, Channel] = {**self.channels, "webhook": self.webhook.callbacks}
        self.worker = OutboxWorker(self.db, senders, config.outbox, metrics=self.metrics)
        self.pipeline: Pipeline = plugged_pipeline(
            self.db,
            classify=load_classifier(config.complaints),
            route=self.care.router,
            observers=self.observers.ordered(),
            on_commit=self.worker.wake,
            max_queue=config.pipeline.max_queue,
            queue_wait_seconds=config.pipeline.queue_wait_seconds,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self.server: uvicorn.Server | None = None

    async def receive(self, inbound: Inbound) -> Receipt:
        return await self.pipeline.receive(inbound)

    async def health(self) -> dict[str, object]:
        try:
            async with self.db.sessions() as session:
                await session.execute(text("SELECT 1"))
                depth = await outbox.depth(session)
        except Exception as exc:  # noqa: BLE001 - health reports, it does not raise
            return {"status": "degraded", "database": f"error: {type(exc).__name__}"}
        return {
            "status": "ok",
            "database": "ok",
            "channels": sorted(self.channels),
            "outbox": depth,
        }

    async def refresh_metrics(self) -> None:
        async with self.db.sessions() as session:
            for status, n in (await outbox.depth(session)).items():
                self.metrics.outbox_depth.labels(status).set(n)

    def http_app(self) -> Any:
        return AccessLog(
            build_app(
                webhook=self.webhook,
                metrics=self.metrics,
                health=self.health,
                before_metrics=self.refresh_metrics,
                extra_routes=self.routes,
            )
        )

    async def start(self) -> None:
        await self.db.upgrade()
        for name, channel in self.channels.items():
            if name not in self.elected_channels:
                try:
                    await channel.start(self.receive)
                except Misconfigured as exc:
                    raise ConfigError(str(exc)) from None
        await self.scheduler.start(self.election)
        # The first round of the election runs here: a lone process leads everything before
        # the worker sends (the planner's catch-up and expiry run first).
        await self.election.start()
        self._tasks.append(asyncio.create_task(self.worker.run(), name="kefu-outbox"))

    async def stop(self) -> None:
        await self.scheduler.stop()
        self.worker.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(task, timeout=15)
        # Channels stop receiving before the pipeline closes, so a message they are handing
        # over (a Telegram poll batch, an IMAP fetch) is still committed and acknowledged.
        await self.election.stop()
        for channel in self.channels.values():
            await channel.stop()
        await self.pipeline.close()
        await self.db.dispose()

    def make_server(self) -> uvicorn.Server:
        return _Server(
            uvicorn.Config(
                self.http_app(),
                host=self.config.http.host,
                port=self.config.http.port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )

    async def serve(self, *, handle_signals: bool = True) -> None:
        """Runs until SIGINT/SIGTERM (or `self.server.should_exit`), then stops every part."""
        sock = bind(self.config.http.host, self.config.http.port)
        try:
            await self.start()
        except BaseException:
            sock.close()
            raise
        self.server = self.make_server()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, _request_exit, self.server, sig)
        try:
            await self.server.serve(sockets=[sock])
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            await self.stop()
            log.info("kefu.stopped")


class _Server(uvicorn.Server):
    """uvicorn re-raises the signal after serve() returns; kefu stops its own parts first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = (sockets[0].getsockname()[:2] if sockets
                          else (self.config.host, self.config.port))
            log.info("kefu.started http=%s:%d", host, port)


def _request_exit(server: uvicorn.Server, sig: int) -> None:
    log.info("kefu.stopping signal=%s", signal.Signals(sig).name)
    if server.should_exit:
        server.force_exit = True
    server.should_exit = True
