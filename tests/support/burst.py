"""Many requests released at once: every connection is opened first, then every request is written together."""

from __future__ import annotations

import asyncio


async def _one_status(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    return int(line.split()[1]) if line.startswith(b"HTTP/") else 0  # 0: the connection closed unanswered


async def _burst(targets: list[tuple[int, str]], timeout: float) -> list[int]:
    async def connect(port: int):
        return await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)

    connections = await asyncio.gather(*(connect(port) for port, _ in targets))
    try:
        for (_, writer), (_, path) in zip(connections, targets, strict=True):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: burst\r\nConnection: close\r\n\r\n".encode())
        await asyncio.gather(*(writer.drain() for _, writer in connections))
        return list(
            await asyncio.wait_for(asyncio.gather(*(_one_status(reader) for reader, _ in connections)), timeout)
        )
    finally:
        for _, writer in connections:
            writer.close()


def burst(targets: list[tuple[int, str]], *, timeout: float = 60.0) -> list[int]:
    """The status of each request, in order; each target is (port, path), one connection and request each."""
    return asyncio.run(_burst(targets, timeout))
