"""The ``confero`` command: ``server``, ``meetings list|create``, ``chat``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec

from confero import __version__
from confero import client as api

DEFAULT_URL = "ws://127.0.0.1:8750/ws"


def server_url(text: str) -> str:
    """Accept ``host:port``, ``http(s)://host:port`` or a full ``ws(s)://.../ws`` URL."""
    if "://" not in text:
        text = f"ws://{text}"
    parts = urlsplit(text)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise argparse.ArgumentTypeError(f"unsupported URL scheme {parts.scheme!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _add_client_options(parser: argparse.ArgumentParser, *, name_required: bool) -> None:
    parser.add_argument(
        "--server", type=server_url, default=os.environ.get("CONFERO_SERVER", DEFAULT_URL),
        help="server URL, e.g. ws://127.0.0.1:8750/ws (env CONFERO_SERVER)",
    )
    parser.add_argument(
        "--name", required=name_required, default=os.environ.get("CONFERO_NAME", "cli"),
        help="your display name",
    )
    parser.add_argument("--cafile", help="trust this certificate (PEM) for wss:// servers")
    parser.add_argument(
        "--token", default=os.environ.get("CONFERO_TOKEN"),
        help="resume token from an earlier session (makes you the creator again; "
        "env CONFERO_TOKEN)",
    )


def _add_bot_options(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--create", metavar="TITLE", help="create this meeting")
    target.add_argument("--join", metavar="ID", help="join this meeting")
    parser.add_argument("--password")
    parser.add_argument("--video", default="synthetic",
                        help="synthetic (default), none, screen[:DISPLAY], camera[:DEVICE] "
                        "(needs opencv), or a video file to loop")
    parser.add_argument("--audio", default="none",
                        help="sine:HZ, mic[:DEVICE], a sound file to loop, or none (default)")
    parser.add_argument("--play", nargs="?", const="", metavar="DEVICE",
                        help="play the received audio on a sound device (default device "
                        "if none is named)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--screen", action="store_true",
                        help="also share a synthetic screen (slides) as a second video "
                        "stream; stdin 'screen on|off' toggles it")
    parser.add_argument("--screen-size", default="1280x720", metavar="WxH",
                        help="size of the synthetic screen (default 1280x720)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--duration", type=float, default=0,
                        help="seconds to stay, then leave (default: until 'leave' or a signal)")
    parser.add_argument("--chat", metavar="TEXT", help="say this once after joining")
    parser.add_argument("--record", metavar="DIR",
                        help="record what is received: audio.wav, video-*.webm, chat.jsonl")
    parser.add_argument("--stats-interval", type=float, default=0,
                        help="print a stats event every S seconds (0: only at the end)")
    parser.add_argument("--check-stamps", action="store_true",
                        help="read the synthetic stamp of every decoded frame and count "
                        "frames whose identity matches the sender's name")
    parser.add_argument("--no-stdin", action="store_true", help="ignore standard input")
    parser.add_argument("--e2ee", action="store_true",
                        help="with --create: an end-to-end encrypted meeting (needs "
                        "--passphrase to send anything others can decrypt)")
    parser.add_argument("--passphrase", default=os.environ.get("CONFERO_E2EE_PASSPHRASE"),
                        help="E2EE passphrase (never sent to the server; env "
                        "CONFERO_E2EE_PASSPHRASE)")
    parser.add_argument("--mode", choices=("auto", "server"), default="auto",
                        help="with --create: auto (two people talk peer-to-peer, the "
                        "default) or server (media always through the server)")
    parser.add_argument("--no-p2p", action="store_true",
                        help="never take part in peer-to-peer media")
    parser.add_argument("--no-simulcast", action="store_true",
                        help="send no low-resolution copy of the camera (it lets the "
                        "server serve slow links; never sent in E2EE meetings)")
    parser.add_argument("--media-transport", choices=("auto", "udp", "tcp"), default="auto",
                        help="auto (UDP; a WebSocket to the server when UDP gets no answer "
                        "within 2 s, the default), udp or tcp only")
    parser.add_argument("--media-udp-port", type=int, default=None, metavar="PORT",
                        help=argparse.SUPPRESS)  # tests: send UDP to a dead port
    parser.add_argument("--send-only", action="store_true",
                        help="do not receive or decode others' video (a cheap load "
                        "generator; audio is still received)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="confero", description="Self-hosted video meetings.")
    parser.add_argument("--version", action="version", version=f"confero {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    server = commands.add_parser("server", help="run the meeting server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=8750, help="port (0 picks a free one)")
    server.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="where the SQLite store lives (created if missing)")
    server.add_argument("--tls-cert", type=Path, help="PEM certificate: serve https/wss")
    server.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    server.add_argument("--heartbeat", type=float, default=2.0,
                        help="seconds between WebSocket pings; a silent client is dropped "
                        "after 1.5x this")
    server.add_argument("--empty-grace", type=float, default=30.0,
                        help="seconds an emptied meeting waits for its people to reconnect")
    server.add_argument("--rate-limit", type=float, default=20.0,
                        help="signaling messages per second allowed per connection")
    server.add_argument("--rate-burst", type=float, default=40.0,
                        help="burst size of --rate-limit")
    server.add_argument("--max-connections-per-address", type=int, default=256,
                        help="open WebSocket connections allowed from one address")
    server.add_argument("--max-outbox-bytes", type=int, default=4 * 1024 * 1024,
                        help="bytes queued for one connection before it counts as too slow "
                        "and is closed (4008)")
    server.add_argument("--idle-timeout", type=float, default=15.0,
                        help="seconds a TCP connection may stay open without an HTTP "
                        "request (before the first one too)")
    server.add_argument("--max-sockets-per-address", type=int, default=300,
                        help="raw TCP connections (HTTP or WebSocket) one address may hold")
    server.add_argument("--max-participants", type=int, default=50,
                        help="participants allowed in one meeting")
    server.add_argument("--chat-retention-days", type=float, default=30.0,
                        help="days the chat of an ended meeting is kept (0: deleted soon "
                        "after it ends)")
    server.add_argument("--max-chat-per-meeting", type=int, default=10_000,
                        help="chat messages one meeting may hold")
    server.add_argument("--max-chat-per-sender", type=int, default=2_000,
                        help="chat messages one participant may send in one meeting")
    server.add_argument("--media-port", type=int, default=8751,
                        help="UDP port for all RTP/RTCP media (0 picks a free one)")
    server.add_argument("--media-host", default="",
                        help="address clients should send media to (default: the host "
                        "they reached the server by)")
    server.add_argument("--turn-url", default="",
                        help="a TURN server (coturn with use-auth-secret) peers may relay "
                        "peer-to-peer media through, e.g. turn:203.0.113.1:3478")
    server.add_argument("--turn-secret", default=os.environ.get("CONFERO_TURN_SECRET", ""),
                        help="coturn's static-auth-secret (env CONFERO_TURN_SECRET); "
                        "credentials handed out per P2P session live 10 minutes")
    server.add_argument("--max-video-size", type=_video_size, default=(1920, 1080),
                        metavar="WxH", help="largest picture a VP8 keyframe may declare, "
                        "either way round; larger ones are dropped (default 1920x1080)")

    meetings = commands.add_parser("meetings", help="list or create meetings (for scripts)")
    meeting_commands = meetings.add_subparsers(dest="meetings_command", required=True)
    listing = meeting_commands.add_parser("list", help="print the open meetings")
    _add_client_options(listing, name_required=False)
    listing.add_argument("--json", action="store_true", help="print JSON")
    create = meeting_commands.add_parser(
        "create", help="create a meeting and print its id; it waits --empty-grace seconds "
        "on the server for its first participant"
    )
    _add_client_options(create, name_required=True)
    create.add_argument("--title", required=True)
    create.add_argument("--password")
    create.add_argument("--json", action="store_true",
                        help="print JSON with the id and the creator's resume token")

    bot = commands.add_parser("bot", help="a headless participant (JSON events on stdout)")
    _add_client_options(bot, name_required=True)
    _add_bot_options(bot)

    app = commands.add_parser("app", help="the desktop app (PySide6)")
    app.add_argument("--server", type=server_url, help="server URL (remembered)")
    app.add_argument("--name", help="your display name (remembered)")
    app.add_argument("--connect", action="store_true",
                     help="connect at once with the given or remembered server and name")

    chat = commands.add_parser("chat", help="interactive terminal client")
    _add_client_options(chat, name_required=True)
    chat.add_argument("--join", metavar="ID", help="join this meeting at start")
    chat.add_argument("--create", metavar="TITLE", help="create this meeting at start")
    chat.add_argument("--password", help="password for --join or --create")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "server":
            return _server(args)
        if args.command == "meetings":
            return asyncio.run(_meetings(args))
        if args.command == "app":
            from confero.app.main import run as run_app

            return run_app(args.server, args.name, args.connect)
        if args.command == "bot":
            from confero.bot import main as bot_main

            return bot_main(args)
        if args.command == "chat":
            from confero.terminal import run_terminal

            return asyncio.run(
                run_terminal(
                    args.server, args.name, cafile=args.cafile, token=args.token,
                    join=args.join, create=args.create, password=args.password,
                )
            )
    except api.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _video_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or not int(width) or not int(height):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1920x1080, got {text!r}")
    return int(width), int(height)


def _server(args: argparse.Namespace) -> int:
    from confero.server.app import ServerConfig, serve

    config = ServerConfig(
        host=args.host, port=args.port, data_dir=args.data_dir, tls_cert=args.tls_cert,
        tls_key=args.tls_key, heartbeat=args.heartbeat, empty_grace=args.empty_grace,
        media_port=args.media_port, media_host=args.media_host, rate=args.rate_limit,
        burst=args.rate_burst, max_connections_per_address=args.max_connections_per_address,
        turn_url=args.turn_url, turn_secret=args.turn_secret,
        max_video_size=args.max_video_size,
        outbox_bytes=args.max_outbox_bytes, idle_timeout=args.idle_timeout,
        max_sockets_per_address=args.max_sockets_per_address,
        max_participants=args.max_participants, chat_retention_days=args.chat_retention_days,
        max_chat_per_meeting=args.max_chat_per_meeting,
        max_chat_per_sender=args.max_chat_per_sender,
    )
    from confero.server.store import StoreError

    try:
        asyncio.run(serve(config))
    except StoreError as exc:
        print(f"error: cannot use the database: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot start the server: {exc}", file=sys.stderr)
        return 1
    return 0


async def _meetings(args: argparse.Namespace) -> int:
    client = api.Client(args.server, args.name, cafile=args.cafile, resume_token=args.token,
                        reconnect=False)
    try:
        await client.connect()
    except api.ConnectionFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if args.meetings_command == "list":
            meetings = await client.list_meetings()
            if args.json:
                print(msgspec.json.encode(meetings).decode())
            else:
                from confero.terminal import format_meetings

                print("\n".join(format_meetings(meetings)))
        else:
            result = await client.create_meeting(args.title, args.password)
            if args.json:
                print(json.dumps({"id": result.meeting.id, "title": result.meeting.title,
                                  "resume_token": client.resume_token}))
            else:
                print(result.meeting.id)
    except api.RequestError as exc:
        print(f"error: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    finally:
        await client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
