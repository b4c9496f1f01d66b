"""Common clients, unchanged, against the real app: what each sends and what it reads.

Each client library is used where it is installed; a shape-level test of the same
exchange (the request the library sends, the fields it reads) always runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.http_fixtures import BASE_URL, EMBEDDER, assert_error

pytest_plugins = ["tests.http_fixtures"]

#: LangChain's OpenAIEmbeddings sends tiktoken (cl100k_base) ids by default; these are
#: "hello world" and "good morning", every id inside MiniLM's 30522-token vocabulary.
CL100K_IDS = [[15339, 1917], [19045, 6693]]


# -- OpenAI SDK / LangChain's default token ids ------------------------------------------------


async def test_langchain_style_token_ids_are_refused_with_the_fix(client: Any) -> None:
    r = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": CL100K_IDS})
    error = assert_error(r, 422, "openai")
    assert error["param"] == "input" and error["type"] == "invalid_request_error"
    assert "not a token-id list made by this model's tokenizer" in error["message"]
    assert "check_embedding_ctx_length=False" in error["message"]


async def test_openai_sdk_sees_the_refusal(client: Any, minilm_hf_dir: Path) -> None:
    openai = pytest.importorskip("openai")
    api = openai.AsyncOpenAI(api_key="EMPTY", base_url=f"{BASE_URL}/v1", http_client=client)
    with pytest.raises(openai.UnprocessableEntityError, match="check_embedding_ctx_length"):
        await api.embeddings.create(model=EMBEDDER, input=CL100K_IDS)
    # The model's own ids keep working and give the text's vector.
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(minilm_hf_dir))(["hello world"])["input_ids"]
    by_ids = await api.embeddings.create(model=EMBEDDER, input=ids)
    by_text = await api.embeddings.create(model=EMBEDDER, input="hello world")
    assert np.allclose(by_ids.data[0].embedding, by_text.data[0].embedding, atol=1e-6)
