"""Prompts, LLM reranker templates and the decoder heads, without a model.

The template texts are checked against the reference code's own string building (the model
cards' and libraries' formatting, written out here); tests/test_decoder_models.py checks
the token ids and scores against transformers on real (tiny) models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trt_async.backends.modelfiles import ModelFiles, sentence_transformers_pooling_modes
from trt_async.core import heads
from trt_async.core.errors import InputTooLong, Part
from trt_async.core.templates import (
    BGE_RERANKER_V2_GEMMA,
    MXBAI_RERANK_V2,
    QWEN3_RERANKER,
    ConflictingPrompts,
    PairIds,
    PromptTooLong,
    UnknownPrompt,
    instruction_for,
    join_pair,
    pair_texts,
    prompt_name_for_input_type,
    prompt_text,
    takes_instruction,
)

PROMPTS = {"query": "Instruct: find\nQuery:", "document": ""}


def test_last_token_pooling_reads_each_rows_own_last_real_token() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(4, 6, 3)).astype(np.float32)
    right = np.array(
        [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    )
    left = np.array(
        [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 1]]
    )
    pool = heads.make_reducer("last")
    assert np.array_equal(pool(hidden, right), hidden[[0, 1, 2, 3], [2, 5, 0, 1]])
    assert np.array_equal(pool(hidden, left), hidden[[0, 1, 2, 3], [5, 5, 5, 5]])
    assert pool(hidden, right).dtype == np.float32


def test_two_token_score_is_the_softmax_of_the_true_token() -> None:
    """Qwen3-Reranker's score is softmax([no, yes])[yes]; the reducer keeps the log-odds,
    whose sigmoid (the rerank path's activation) must be that probability."""
    logits = np.array([[2.0, -1.0], [-3.5, 4.25], [0.0, 0.0], [30.0, -30.0]], dtype=np.float32)
    rows = heads.make_score_reducer("softmax")(logits, np.ones((4, 1)))
    assert rows.shape == (4, 1)
    expected = heads.softmax(logits.astype(np.float64))[:, 1]
    assert np.allclose(heads.sigmoid(rows[:, 0].astype(np.float64)), expected, atol=1e-7)
    one = heads.make_score_reducer("logit")(logits[:, :1], np.ones((4, 1)))
    assert np.array_equal(one, logits[:, :1])
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        heads.make_score_reducer("softmax")(logits[:, :1], np.ones((4, 1)))


def test_prompt_text_as_sentence_transformers_chooses_it() -> None:
    assert prompt_text(PROMPTS, None) == ""
    assert prompt_text(PROMPTS, "query") == PROMPTS["query"]  # the model's default
    assert prompt_text(PROMPTS, "query", prompt_name="document") == ""
    assert prompt_text(PROMPTS, None, prompt="raw: ") == "raw: "
    assert prompt_text(None, None, prompt="raw: ") == "raw: "  # any model takes a prompt's text
    with pytest.raises(UnknownPrompt) as unknown:
        prompt_text(PROMPTS, None, prompt_name="passage")
    assert "'passage' is not one of this model's prompts: document, query" in str(unknown.value)
    assert unknown.value.part is Part.PROMPT_NAME
    with pytest.raises(UnknownPrompt, match="has no named prompts"):
        prompt_text(None, None, prompt_name="query")
    with pytest.raises(ConflictingPrompts):
        prompt_text(PROMPTS, None, prompt_name="query", prompt="x")


def test_cohere_input_types_map_to_the_models_prompts() -> None:
    assert prompt_name_for_input_type(PROMPTS, "search_query") == "query"
    assert prompt_name_for_input_type(PROMPTS, "search_document") == "document"
    assert prompt_name_for_input_type({"passage": "p: "}, "search_document") == "passage"
    assert prompt_name_for_input_type(PROMPTS, "clustering") is None
    assert prompt_name_for_input_type(None, "search_query") is None


def qwen3_card_body(instruction: str, query: str, doc: str) -> str:
    # Qwen3-Reranker's model card, format_instruction.
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


def test_qwen3_reranker_texts_are_the_model_cards() -> None:
    template = QWEN3_RERANKER.template
    instruction = instruction_for(template, None)
    assert (
        instruction == "Given a web search query, retrieve relevant passages that answer the query"
    )
    texts = pair_texts(template, "what is {x}?", instruction)
    assert texts.query + texts.document("a doc {document}") == qwen3_card_body(
        instruction, "what is {x}?", "a doc {document}"
    )
    assert texts.before == (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        "<|im_end|>\n<|im_start|>user\n",
    )
    assert texts.after == ("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",)
    own = pair_texts(template, "q", instruction_for(template, "Find code", "configured"))
    assert own.query == "<Instruct>: Find code\n<Query>: q\n"
    assert QWEN3_RERANKER.formula == "softmax" and QWEN3_RERANKER.tokens == ("no", "yes")


def test_gemma_and_mxbai_texts_are_their_libraries() -> None:
    gemma = pair_texts(BGE_RERANKER_V2_GEMMA.template, "q", None)
    assert (gemma.before, gemma.query, gemma.between, gemma.document("d")) == (
        ("{bos}",),
        "A: q",
        ("\n",),
        "B: d",
    )
    default = instruction_for(BGE_RERANKER_V2_GEMMA.template, None)
    assert default is not None and default.startswith("Given a query A and a passage B")
    assert pair_texts(BGE_RERANKER_V2_GEMMA.template, "q", "Judge.").after == ("\n", "Judge.")
    plain = pair_texts(
        MXBAI_RERANK_V2.template, "q", instruction_for(MXBAI_RERANK_V2.template, None)
    )
    assert plain.query == "query: q" and plain.document("d") == "document: d"
    told = pair_texts(MXBAI_RERANK_V2.template, "q", "be strict")
    assert told.query == "instruction: be strict\nquery: q"
    assert told.after[1].endswith("(0 for not relevant, 1 for relevant).\nRelevance:")
    assert told.after[2] == "<|im_end|>\n<|im_start|>assistant\n"
    for r in (QWEN3_RERANKER, BGE_RERANKER_V2_GEMMA, MXBAI_RERANK_V2):
        assert takes_instruction(r.template)


IDS = PairIds(before=[1, 2], between=[3], after=[4, 5], query_frame=[10, 11])


def test_a_pair_is_cut_in_the_document_never_in_the_template() -> None:
    query, document = [10, 11, 20, 21], list(range(100, 130))
    joined = join_pair(IDS, query, document, max_length=64, truncate=False, query_share=0.75)
    assert joined == [1, 2, *query, 3, *document, 4, 5]
    cut = join_pair(IDS, query, document, max_length=20, truncate=True, query_share=0.75)
    assert len(cut) == 20
    assert cut == [1, 2, *query, 3, *document[:11], 4, 5]
    with pytest.raises(InputTooLong) as too_long:
        join_pair(IDS, query, document, max_length=20, truncate=False, query_share=0.75, index=3)
    assert too_long.value.part is Part.DOCUMENTS and "document 3" in str(too_long.value)


def test_a_long_query_keeps_its_share_and_its_instruction() -> None:
    query, document = [10, 11, *range(200, 260)], list(range(100, 130))
    cut = join_pair(IDS, query, document, max_length=45, truncate=True, query_share=0.75)
    budget = 45 - 5
    assert len(cut) == 45 and cut[2 : 2 + 30] == query[:30]  # 0.75 of the budget
    assert cut[32] == 3 and cut[33:43] == document[: budget - 30]
    tiny = join_pair(IDS, query, document, max_length=9, truncate=True, query_share=0.1)
    assert tiny[2:5] == [10, 11, 200]  # the frame and one query token stay


def test_an_instruction_that_leaves_no_room_is_refused() -> None:
    with pytest.raises(PromptTooLong) as refused:
        join_pair(IDS, [10, 11, 20], [100], max_length=8, truncate=True, query_share=0.75)
    assert refused.value.part is Part.INSTRUCTION
    assert "takes 7 tokens" in str(refused.value) and "this model's 8" in str(refused.value)


def test_sentence_transformers_pooling_configs_old_and_new(tmp_path: Path) -> None:
    legacy = {"pooling_mode_cls_token": False, "pooling_mode_lasttoken": True}
    assert sentence_transformers_pooling_modes(legacy) == ["last"]
    assert sentence_transformers_pooling_modes({"pooling_mode": "lasttoken"}) == ["last"]
    assert sentence_transformers_pooling_modes({"pooling_mode": ["mean", "max"]}) == [
        "mean",
        "max",
    ]
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken"}))
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert ModelFiles.resolve(tmp_path).st_pooling == "last"
