"""``python -m tools.linksim``: a TCP proxy that shapes what crosses it like a real access link
(``tools.linksim.model``): a round trip, jitter, a bandwidth cap per direction, stalls.

Two ways in: ``--target HOST:PORT`` forwards every connection there (a NATS or WebSocket port);
without it the proxy speaks SOCKS5, so a browser started with ``--proxy-server=socks5://...``
sends ALL its traffic (page, API, WebSocket) through one shaped link, as a phone does. Only
loopback destinations are allowed: this is a test tool, never a way out of the machine.

Every connection shares the one link per direction (the access link is shared), and the proxy
reads from a sender only while the bottleneck queue has room, so backpressure reaches the
sender's socket (and a browser's ``WebSocket.bufferedAmount``) as on a real uplink.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import socket
import struct
import sys
import threading
from dataclasses import dataclass

from tools.linksim.model import LinkSpec, Pipe

SOCKET_BUFFER = 64 * 1024  # the proxy's own socket buffers: small, so the simulated queue is THE queue


class SocksError(ConnectionError):
    """A SOCKS5 client asked for something this proxy does not do."""


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    stalls: int = 0


async def socks5_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[str, int]:
    """The destination of a SOCKS5 CONNECT (no authentication); loopback only."""
    ver, n = await reader.readexactly(2)
    methods = await reader.readexactly(n)
    if ver != 5 or 0 not in methods:
        writer.write(b"\x05\xff")
        raise SocksError("not SOCKS5 without authentication")
    writer.write(b"\x05\x00")
    ver, cmd, _, atyp = await reader.readexactly(4)
    if atyp == 1:
        host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
    elif atyp == 4:
        host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
    elif atyp == 3:
        host = (await reader.readexactly((await reader.readexactly(1))[0])).decode("ascii", "replace")
    else:
        raise SocksError(f"address type {atyp}")
    (port,) = struct.unpack("!H", await reader.readexactly(2))
    loopback = host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)
    if ver != 5 or cmd != 1 or not loopback:
        writer.write(b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")  # not allowed
        raise SocksError(f"CONNECT to {host}:{port} refused (loopback only)")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class LinkProxy:
    """The proxy on an asyncio loop; ``reshape`` and ``stall`` act on connections already open."""

    def __init__(
        self,
        spec: LinkSpec,
        target: tuple[str, int] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self.target = target
        self.up = Pipe(spec.up, seed)
        self.down = Pipe(spec.down, seed + 1)
        self.stats = ProxyStats()
        self._host, self._port = host, port
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[:2]

    async def start(self) -> LinkProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)  # inherited on accept
        sock.bind((self._host, self._port))
        self._server = await asyncio.start_server(self._accept, sock=sock)
        return self

    def reshape(self, spec: LinkSpec) -> None:
        self.spec = spec
        self.up.reshape(spec.up)
        self.down.reshape(spec.down)

    def stall(self, seconds: float) -> None:
        now = asyncio.get_running_loop().time()
        for pipe in (self.up, self.down):
            pipe.prune_stalls(now)
            pipe.stall(now, seconds)
        self.stats.stalls += 1

    async def close(self) -> None:
        """Stop listening and close every connection (its reads end; nothing is cancelled mid-write)."""
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                host, port = self.target or await socks5_target(reader, writer)
                up_reader, upstream = await asyncio.open_connection(host, port)
                self._writers.add(upstream)
            except (SocksError, OSError, asyncio.IncompleteReadError):
                self.stats.refused += 1
                with contextlib.suppress(OSError):
                    if self.target is None:
                        writer.write(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
                        await writer.drain()
                return
            upstream.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            if self.target is None:
                writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")  # bound address: unused
            self.stats.connections += 1
            conn = object()
            await asyncio.gather(
                self._relay(reader, upstream, self.up, conn, "bytes_up"),
                self._relay(up_reader, writer, self.down, conn, "bytes_down"),
            )
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
                    self._writers.discard(w)
            self._tasks.discard(task)

    async def _relay(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pipe: Pipe,
        conn: object,
        counter: str,
    ) -> None:
        """Read while the bottleneck has room, deliver each chunk at its arrival time, in order."""
        loop = asyncio.get_running_loop()
        deliveries: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            while (item := await deliveries.get()) is not None:
                at, data = item
                while (wait := pipe.stalled_until(at) - loop.time()) > 0:  # a stall may begin meanwhile
                    await asyncio.sleep(wait)
                    at = pipe.stalled_until(at)
                dst.write(data)
                await dst.drain()
                setattr(self.stats, counter, getattr(self.stats, counter) + len(data))

        writer = asyncio.create_task(deliver())
        try:
            while True:
                while not pipe.has_room(loop.time()):
                    nxt = pipe.next_departure() or loop.time()
                    await asyncio.sleep(max(0.001, nxt - loop.time()))
                try:
                    data = await src.read(pipe.shape.chunk_bytes)
                except OSError:
                    data = b""
                if not data or writer.done():
                    break
                left = pipe.send(loop.time(), len(data))
                deliveries.put_nowait((pipe.arrival(conn, left), data))
            deliveries.put_nowait(None)
            with contextlib.suppress(OSError):
                await writer
                if dst.can_write_eof():
                    dst.write_eof()
        except OSError:
            pass
        finally:
            if not writer.done():
                writer.cancel()
            pipe.forget(conn)


class ProxyThread:
    """A ``LinkProxy`` on its own loop in a thread, for synchronous callers (the browser bench)."""

    def __init__(self, spec: LinkSpec, target: tuple[str, int] | None = None, seed: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self.proxy = LinkProxy(spec, target, seed=seed)
        self._thread = threading.Thread(target=self._loop.run_forever, name="linksim", daemon=True)

    def start(self) -> ProxyThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self.proxy.address

    def reshape(self, spec: LinkSpec) -> None:
        self._loop.call_soon_threadsafe(self.proxy.reshape, spec)

    def stall(self, seconds: float) -> None:
        self._loop.call_soon_threadsafe(self.proxy.stall, seconds)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.proxy.close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _serve(args: argparse.Namespace) -> None:
    spec = LinkSpec.of(args.rtt_ms, args.jitter_ms, args.uplink_kbps, args.downlink_kbps, args.queue_ms)
    host, port = _hostport(args.listen)
    proxy = await LinkProxy(spec, _hostport(args.target) if args.target else None, host, port).start()
    host, port = proxy.address
    mode = "forward" if args.target else "socks5"
    print(json.dumps({"listen": f"{host}:{port}", "mode": mode, **spec.describe()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.stall_every_s or None)
        if not stop.is_set() and args.stall_every_s:
            proxy.stall(args.stall_s)
    await proxy.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.linksim", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--target", default="", help="HOST:PORT to forward to; empty: a SOCKS5 proxy")
    p.add_argument("--rtt-ms", type=float, default=0.0, help="round trip, half each way")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="extra delay per chunk, 0..J ms, each way")
    p.add_argument("--uplink-kbps", type=float, default=0.0, help="client to server cap; 0: none")
    p.add_argument("--downlink-kbps", type=float, default=0.0, help="server to client cap; 0: none")
    p.add_argument("--queue-ms", type=float, default=1000.0, help="bottleneck buffer at the cap")
    p.add_argument("--stall-every-s", type=float, default=0.0, help="stall the link this often; 0: never")
    p.add_argument("--stall-s", type=float, default=2.0, help="how long each stall lasts")
    asyncio.run(_serve(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
