"""Prompts in the request path, without a model: which prompt a request gets, how a
config's prompts and instruction are checked at load, and prompted requests sharing the
tokenisation hops with plain ones.

The tokenizer is a small byte-level BPE trained here as Qwen3-Embedding's is laid out
(tests/decoder_models.py: it appends ``<|endoftext|>``); tests/test_decoder_http.py checks
the same paths' vectors and scores against sentence-transformers and torch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import pytest

from tests.decoder_models import PROMPTS, write_tokenizer
from trt_async.backends.modelfiles import ExportManifest
from trt_async.core.capabilities import Capabilities, model_prompts
from trt_async.core.config import ConfigError, ModelConfig, ModelKind
from trt_async.core.errors import EmptyInput, InputTooLong, Part
from trt_async.core.fairpool import FairPool
from trt_async.core.prompting import (
    PromptedRequest,
    check_configured,
    encode_each,
    encode_prompted,
    encode_prompted_each,
)
from trt_async.core.templates import (
    QWEN3_RERANKER,
    ConflictingPrompts,
    InstructionNotTaken,
    PromptsNotTaken,
    PromptTooLong,
    UnknownPrompt,
)
from trt_async.core.tokenize_queue import TokenizeQueue
from trt_async.core.tokenizer import Encoding, TextRequest, TextTokenizer

T = TypeVar("T")
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    folder = tmp_path_factory.mktemp("qwen-tokenizer")
    write_tokenizer(folder, "qwen3", appends_eos=True)
    return TextTokenizer(folder / "tokenizer.json", MAX_LENGTH, with_type_ids=False)


def embedder(**kw: Any) -> Capabilities:
    return Capabilities.of(
        ModelKind.EMBEDDING,
        gives_vectors=True,
        heads_available=frozenset(),
        labels={},
        **kw,
    )


def llm_reranker(**kw: Any) -> Capabilities:
    return Capabilities.of(
        ModelKind.RERANKER,
        gives_vectors=False,
        heads_available=frozenset(),
        labels={},
        pair_template=QWEN3_RERANKER.template,
        **kw,
    )


# -- which prompt a request gets ---------------------------------------------------------------


def test_a_requests_prompt_by_name_text_input_type_or_default() -> None:
    caps = embedder(prompts=PROMPTS)
    assert caps.prompt("m") == ""  # no default: texts as sent
    assert caps.prompt("m", prompt_name="query") == PROMPTS["query"]
    assert caps.prompt("m", prompt="raw: ") == "raw: "
    assert caps.prompt("m", input_type="search_query") == PROMPTS["query"]
    assert caps.prompt("m", input_type="search_document") == PROMPTS["document"]
    # A use the model has no prompt for goes as sent, even past a default.
    with_default = embedder(prompts=PROMPTS, default_prompt_name="terse")
    assert with_default.prompt("m") == PROMPTS["terse"]
    assert with_default.prompt("m", input_type="clustering") == ""
    assert (
        with_default.prompt("m", prompt_name="query", input_type="clustering") == (PROMPTS["query"])
    )
    with pytest.raises(UnknownPrompt, match="not one of this model's prompts: document, query"):
        caps.prompt("m", prompt_name="passage")
    with pytest.raises(ConflictingPrompts):
        caps.prompt("m", prompt_name="query", prompt="x")


def test_a_model_without_prompts_refuses_them_and_ignores_nothing() -> None:
    plain = embedder()
    assert not plain.takes_prompts
    assert plain.prompt("m", input_type="search_query") == ""  # Cohere always sends one
    for kw, part in (({"prompt_name": "query"}, Part.PROMPT_NAME), ({"prompt": "q"}, Part.PROMPT)):
        with pytest.raises(PromptsNotTaken, match="has no prompts") as refused:
            plain.prompt("m", **kw)
        assert refused.value.part is part
    reranker = llm_reranker()
    with pytest.raises(PromptsNotTaken, match="it does not embed"):
        reranker.prompt("r", prompt_name="query")


def test_llm_rerankers_take_instructions_and_refuse_classification() -> None:
    reranker = llm_reranker(instruction="Find cities")
    assert reranker.reranks and reranker.takes_instruction and not reranker.classifies
    assert reranker.instruction == "Find cities"
    assert not reranker.entails
    reranker.require_reranks("r")
    reranker.require_instruction("r")
    from trt_async.core.errors import WrongModelKind

    for check in (reranker.require_classifies, reranker.require_zero_shot):
        with pytest.raises(WrongModelKind, match="LLM reranker \\(template qwen3-reranker\\)"):
            check("r")
    with pytest.raises(InstructionNotTaken, match="takes no instruction"):
        embedder().require_instruction("e")
    # An embedder's graph never takes a template, whatever a manifest says.
    assert embedder(pair_template=QWEN3_RERANKER.template).pair_template is None


# -- the config's prompts and instruction ------------------------------------------------------


def test_config_prompts_join_the_models_and_the_default_is_checked() -> None:
    manifest = ExportManifest(
        task="embed", inputs=["input_ids"], output="x", prompts=PROMPTS, default_prompt_name=None
    )
    prompts, default = model_prompts("m", ModelConfig(model_path="/m"), manifest)
    assert prompts == PROMPTS and default is None
    config = ModelConfig(
        model_path="/m", prompts={"query": "Q: ", "summary": "S: "}, default_prompt_name="summary"
    )
    prompts, default = model_prompts("m", config, manifest)
    assert prompts == {**PROMPTS, "query": "Q: ", "summary": "S: "} and default == "summary"
    manifest.default_prompt_name = "query"
    # null turns off the model's own default; left out, the model's stays.
    off = ModelConfig(model_path="/m", default_prompt_name=None)
    assert model_prompts("m", off, manifest)[1] is None
    assert model_prompts("m", ModelConfig(model_path="/m"), manifest)[1] == "query"
    bad = ModelConfig(model_path="/m", default_prompt_name="passage")
    with pytest.raises(ConfigError, match="'passage' is not one of the model's prompts"):
        model_prompts("m", bad, manifest)


def test_config_checks_at_load(tok: TextTokenizer) -> None:
    ok = ModelConfig(model_path="/m", prompts={"short": "Q: "}, instruction=None)
    check_configured("m", embedder(prompts={"short": "Q: "}), ok, tok)
    long_prompt = "query words " * 60
    too_long = ModelConfig(model_path="/m", prompts={"long": long_prompt})
    with pytest.raises(ConfigError, match=r"prompt 'long' takes \d+ tokens, leaving no room"):
        check_configured("m", embedder(prompts={"long": long_prompt}), too_long, tok)
    # A model's own prompt too long for this max_length refuses only its requests...
    check_configured(
        "m", embedder(prompts={"long": long_prompt}), ModelConfig(model_path="/m"), tok
    )
    # ...unless it is the default, which every request gets.
    as_default = embedder(prompts={"long": long_prompt}, default_prompt_name="long")
    with pytest.raises(ConfigError, match="prompt 'long'"):
        check_configured("m", as_default, ModelConfig(model_path="/m"), tok)
    with pytest.raises(ConfigError, match="prompts and default_prompt_name are for embedding"):
        check_configured("r", llm_reranker(), ModelConfig(model_path="/m", prompts={}), tok)
    with pytest.raises(ConfigError, match="instruction is for LLM rerankers"):
        check_configured("e", embedder(), ModelConfig(model_path="/m", instruction="x"), tok)
    instructed = ModelConfig(model_path="/m", instruction="Judge the passage " * 20)
    with pytest.raises(ConfigError, match="the template with its instruction takes"):
        caps = llm_reranker(instruction=instructed.instruction)
        check_configured("r", caps, instructed, tok)


# -- tokenising prompted requests --------------------------------------------------------------


def test_prompted_requests_tokenise_as_each_alone_and_fail_alone(tok: TextTokenizer) -> None:
    texts = ["hello world", "The quick brown fox jumps over the lazy dog. " * 9]
    requests = [
        PromptedRequest(texts, "query: ", truncate=True),
        PromptedRequest(["machine learning"], "other: ", truncate=True, direction="left"),
        PromptedRequest(["ok", ""], "query: ", truncate=True),
        PromptedRequest(texts, "query: ", truncate=False),
        PromptedRequest(["x"], "query words " * 60, truncate=True, part=Part.PROMPT),
    ]
    results = encode_prompted_each(tok, requests)
    for request, result in zip(requests[:2], results[:2], strict=True):
        alone = encode_prompted(
            tok, request.texts, request.prompt, truncate=True, direction=request.direction
        )
        assert result == alone
    assert isinstance(results[0], list) and len(results[0][1].ids) == MAX_LENGTH
    assert isinstance(results[2], EmptyInput) and results[2].index == 1
    assert isinstance(results[3], InputTooLong) and results[3].index == 1
    assert isinstance(results[4], PromptTooLong) and results[4].part is Part.PROMPT
    # With requests that have no prompt, each kind tokenised together, each as alone.
    mixed = encode_each(tok, [TextRequest(texts, True), requests[0]])
    assert mixed == [tok.encode(texts, truncate=True), results[0]]


class CountingPool(FairPool):
    """A FairPool that counts the thread hops it is handed."""

    def __init__(self) -> None:
        super().__init__(1, "test-tokenize")
        self.hops = 0

    async def run(self, owner: Hashable, fn: Callable[[], T]) -> T:
        self.hops += 1
        return await super().run(owner, fn)


async def test_prompted_and_plain_requests_share_the_tokenisation_hops(
    tok: TextTokenizer,
) -> None:
    pool = CountingPool()
    queue: TokenizeQueue[list[Encoding]] = TokenizeQueue(tok, pool, "model", lambda e: e)
    asked: list[tuple[list[str], str]] = [
        (["hello world"], ""),
        (["good morning", "machine learning"], "query: "),
        (["a b c"], ""),
        (["the cat sat"], "other prompt: "),
        (["d e f", "g h"], "query: "),
        ([""], "query: "),
        (["x y"], ""),
    ]
    results = await asyncio.gather(
        *(queue.run(queue.request(texts, truncate=True, prompt=prompt)) for texts, prompt in asked),
        return_exceptions=True,
    )
    # The first request's hop starts at once; the rest, fewer texts than pay for a hop
    # beside it (TEXTS_TO_SPREAD), wait for it and share the second.
    assert pool.hops == 2 < len(asked)
    for (texts, prompt), result in zip(asked, results, strict=True):
        if not texts[0]:
            assert isinstance(result, EmptyInput)
        else:
            assert result == encode_prompted(tok, texts, prompt, truncate=True)
    with pytest.raises(TypeError, match="not before pairs"):
        queue.request([("a", "b")], truncate=True, prompt="q: ")
