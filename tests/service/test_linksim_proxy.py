"""The link simulator as a real proxy in front of a real nats-server: a PING's round trip is the
link's, bytes cross at the capped rate, a stall holds everything, and the SOCKS5 side (what a
browser uses) reaches loopback and nothing else."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.bus import connect
from tools.linksim.model import LinkSpec
from tools.linksim.proxy import LinkProxy

pytestmark = pytest.mark.service


def _hostport(nats_url: str) -> tuple[str, int]:
    host, port = nats_url.removeprefix("nats://").rsplit(":", 1)
    return host, int(port)


async def _through(nats_url: str, spec: LinkSpec):  # type: ignore[no-untyped-def]
    proxy = await LinkProxy(spec, _hostport(nats_url)).start()
    host, port = proxy.address
    return proxy, await connect(f"nats://{host}:{port}", "linksim-test", give_up_after_s=5)


async def _flush_ms(nc) -> float:  # type: ignore[no-untyped-def]
    t = time.monotonic()
    await nc.flush(timeout=10)
    return (time.monotonic() - t) * 1000


async def test_round_trip_rate_and_stall_through_the_proxy(nats_url: str) -> None:
    proxy, nc = await _through(nats_url, LinkSpec.of(rtt_ms=120, uplink_kbps=4000))
    try:
        rtts = [await _flush_ms(nc) for _ in range(3)]
        assert 115 <= min(rtts) <= 200, rtts
        # 400 kB at 500 kB/s reach a subscriber on the server's side ~0.8 s + 60 ms later
        direct = await connect(nats_url, "linksim-direct", give_up_after_s=5)
        done = asyncio.Event()
        got: list[int] = []

        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            got.append(len(msg.data))
            if len(got) == 10:
                done.set()

        await direct.subscribe("linksim.test", cb=on_msg)
        await direct.flush()
        payload = b"x" * 40_000
        t = time.monotonic()
        for _ in range(10):
            await nc.publish("linksim.test", payload)
        await asyncio.wait_for(done.wait(), 10)
        took = time.monotonic() - t
        await direct.close()
        assert 0.8 <= took <= 1.3, took
        proxy.stall(1.0)
        assert 1000 <= await _flush_ms(nc) <= 1500
        assert nc.is_connected and proxy.stats.stalls == 1
        assert proxy.stats.bytes_up >= 400_000
        proxy.reshape(LinkSpec())  # the bench switches cases on a running proxy
        assert await _flush_ms(nc) < 60
    finally:
        await nc.close()
        await proxy.close()


async def _socks_connect(proxy: LinkProxy, host: bytes, port: int) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        writer.write(b"\x05\x01\x00")
        assert await reader.readexactly(2) == b"\x05\x00"
        writer.write(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + port.to_bytes(2, "big"))
        reply = await reader.readexactly(10)
        first = await asyncio.wait_for(reader.readline(), 5) if reply[1] == 0 else b""
        return reply, first
    finally:
        writer.close()


async def test_socks5_reaches_loopback_only(nats_url: str) -> None:
    proxy = await LinkProxy(LinkSpec.of(rtt_ms=20)).start()
    try:
        _, port = _hostport(nats_url)
        reply, first = await _socks_connect(proxy, b"127.0.0.1", port)
        assert reply[:2] == b"\x05\x00" and first.startswith(b"INFO "), (reply, first)
        reply, _ = await _socks_connect(proxy, b"example.com", 80)
        assert reply[1] != 0 and proxy.stats.refused == 1  # never a way out of the machine
    finally:
        await proxy.close()
