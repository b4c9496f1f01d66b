"""The least a server of this design can add to one text's time: the one-client floor.

A Litestar app with one route, ``POST /v1/embeddings``, served the way ``trt-async serve``
serves (granian, one worker, uvloop, HTTP/1): the body decoded into the server's own
request struct (msgspec), the text tokenised, run at batch 1 on the lane a batch alone gets
and mean-pooled by the bare backend (the server's own runtime and session options) in one
thread hop off the event loop, the vectors encoded as the server encodes them. No
scheduler, no second thread hop for the tokenizer, no middleware (request ids, timing
headers, access log, metrics, keys).

    python -m perf.design_floor --port 8205 [--config FILE]

serves it; measure it beside the server with the table's one-client point, whose goal is
the p50 against one bare text in the same run:

    python -m perf.peer_table --target after=URL --target floor=http://127.0.0.1:8205 \\
        --points single-c1 --rounds 5 --out DIR

Its p50 over the bare text is what granian, Litestar, msgspec and one thread hop cost on
this machine; the server's p50 over the floor's is what the rest of the server costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from litestar import Litestar, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.params import Body

from trt_async.backends.shapes import Bucket
from trt_async.bench.bare import BareBackend
from trt_async.bench.server import base_config
from trt_async.core.errors import InvalidInput
from trt_async.core.heads import l2_normalize
from trt_async.http.openai_api import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    Usage,
    encode_vectors,
    split_input,
)

#: The floor app reads its model config from here (unset: the embedded model).
CONFIG_ENV = "TRT_ASYNC_FLOOR_CONFIG"


def create_floor_app() -> Litestar:
    path = os.environ.get(CONFIG_ENV)
    config = base_config(Path(path) if path else None)
    bare = BareBackend(next(iter(config.embedding_models.values())))
    # One thread, as the server's runner gives the lane a batch alone runs on.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floor")

    def embed(texts: list[str]) -> tuple[np.ndarray, int]:
        items = bare.encode(texts)
        length = bare.grid.length_for(max(len(e) for e in items))
        pooled = bare.run_batch(Bucket(bare.grid.batch_for(len(items)), length), items)
        return l2_normalize(pooled), sum(len(e) for e in items)

    # The server's own wire structs and vector encoding, so decoding and encoding cost what
    # they cost the server.
    @post("/v1/embeddings", status_code=200)
    async def embeddings(
        data: Annotated[EmbeddingRequest, Body(media_type=RequestEncodingType.JSON)],
    ) -> EmbeddingResponse:
        try:
            texts = split_input(data.input)
        except InvalidInput as exc:
            raise ValidationException(str(exc)) from None
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValidationException("the floor embeds texts: send a string or strings")
        loop = asyncio.get_running_loop()
        vectors, tokens = await loop.run_in_executor(worker, embed, texts)
        rows = encode_vectors(vectors, data.encoding_format)
        return EmbeddingResponse(
            data=[Embedding(row, i) for i, row in enumerate(rows)],
            model=data.model,
            usage=Usage(tokens, tokens),
        )

    def close() -> None:
        worker.shutdown()
        bare.close()

    return Litestar([embeddings], on_shutdown=[close])


def main(argv: Sequence[str] | None = None) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8205)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--config", type=Path, help="model config (default: the embedded model)")
    args = p.parse_args(argv)
    if args.config is not None:
        os.environ[CONFIG_ENV] = str(args.config.resolve())
    server: Any = Granian(
        "perf.design_floor:create_floor_app",
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
