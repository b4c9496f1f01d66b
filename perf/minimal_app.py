"""The bare HTTP stack the design fixes, with nothing of the server's: the overhead floor.

One Litestar route, ``POST /v1/embeddings``, on granian (one worker, uvloop, HTTP/1, as
``trt-async serve`` runs it): the OpenAI body decoded into a msgspec Struct by Litestar and a
fixed vector of ``--dim`` floats answered per input. No model, no tokenizer, no middleware.
What the server costs a request beyond this app's cost is its own.

    python -m perf.minimal_app --port 8206 [--dim 32]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
from litestar import Litestar, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

#: The width of the vector answered per input (the near-instant model's: 32).
DIM_ENV = "TRT_ASYNC_MINIMAL_DIM"


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    input: str | list[str]
    model: str
    encoding_format: str = "float"


class Embedding(msgspec.Struct):
    embedding: list[float]
    index: int
    object: str = "embedding"


class Usage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(msgspec.Struct):
    data: list[Embedding]
    model: str
    usage: Usage
    object: str = "list"


def create_minimal_app() -> Litestar:
    dim = int(os.environ.get(DIM_ENV, "32"))
    vector = [round(0.01 * (i + 1), 6) for i in range(dim)]

    @post("/v1/embeddings", status_code=200)
    async def embeddings(
        data: Annotated[EmbeddingRequest, Body(media_type=RequestEncodingType.JSON)],
    ) -> EmbeddingResponse:
        n = 1 if isinstance(data.input, str) else len(data.input)
        return EmbeddingResponse(
            data=[Embedding(vector, i) for i in range(n)], model=data.model, usage=Usage(n, n)
        )

    return Litestar([embeddings])


def main(argv: Sequence[str] | None = None) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8206)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--dim", type=int, default=32, help="floats answered per input")
    args = p.parse_args(argv)
    os.environ[DIM_ENV] = str(args.dim)
    server: Any = Granian(
        "perf.minimal_app:create_minimal_app",
        factory=True,
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
    )
    server.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
