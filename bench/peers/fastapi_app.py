"""The seed's stack as a peer: FastAPI on uvicorn, forwarding with one shared httpx.AsyncClient.

    uvicorn peers.fastapi_app:app --workers 2 --loop uvloop --http httptools

BENCH_UPSTREAM is the base URL to forward to. With BENCH_REDIS_URL set, every request first makes one Redis call
(a fixed-window counter per client address in one EVALSHA), as the seed's rate limiter did.
"""

import contextlib
import os

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9/").rstrip("/")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
WINDOW = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""
state: dict = {}


@contextlib.asynccontextmanager
async def lifespan(app):
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        state["client"] = client
        if REDIS_URL:
            state["redis"] = aioredis.Redis.from_url(REDIS_URL, max_connections=1000)
            state["window"] = state["redis"].register_script(WINDOW)
        yield
        if REDIS_URL:
            await state["redis"].aclose()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def proxy(path: str, request: Request) -> Response:
    if REDIS_URL:
        count = await state["window"](keys=[f"bench:window:{request.client.host}"], args=[1])
        if count > 1_000_000_000:
            return Response(status_code=429)
    headers = [(k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP]
    query = f"?{request.url.query}" if request.url.query else ""
    upstream = await state["client"].request(
        request.method, f"{UPSTREAM}/{path}{query}", headers=headers, content=await request.body()
    )
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        headers={k: v for k, v in upstream.headers.items() if k not in HOP_BY_HOP},
    )
