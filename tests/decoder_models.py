"""Decoder model folders for the tests: the builders of :mod:`trt_async.tools.tiny_decoders`
(the benchmark scripts use them too), re-exported here, where the tests import them from, and
the LLM rerankers' reference inputs and scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trt_async.tools.tiny_decoders import PROMPTS as PROMPTS
from trt_async.tools.tiny_decoders import Family as Family
from trt_async.tools.tiny_decoders import write_decoder_embedder as write_decoder_embedder
from trt_async.tools.tiny_decoders import write_llm_reranker as write_llm_reranker
from trt_async.tools.tiny_decoders import write_tokenizer as write_tokenizer

# -- references for LLM rerankers --------------------------------------------------------------


def reference_ids(
    template: str, tok: Any, query: str, doc: str, instruction: str | None
) -> list[int]:
    """The input ids as each model's reference code builds them (transformers' tokenizer)."""

    def ids(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    if template == "qwen3-reranker":  # Qwen3-Reranker's model card
        prefix = (
            "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
            'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
            "<|im_end|>\n<|im_start|>user\n"
        )
        suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        instruction = instruction or (
            "Given a web search query, retrieve relevant passages that answer the query"
        )
        body = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
        return ids(prefix) + list(tok(body)["input_ids"]) + ids(suffix)
    if template == "bge-reranker-v2-gemma":  # FlagEmbedding's FlagLLMReranker
        prompt = instruction or (
            "Given a query A and a passage B, determine whether the passage contains an answer "
            "to the query by providing a prediction of either 'Yes' or 'No'."
        )
        sep = ids("\n")
        return [tok.bos_token_id, *ids(f"A: {query}"), *sep, *ids(f"B: {doc}"), *sep, *ids(prompt)]
    # mixedbread's MxbaiRerankV2.prepare_inputs
    task = (
        "You are a search relevance expert who evaluates how well documents match search "
        "queries. For each query-document pair, carefully analyze the semantic relationship "
        "between them, then provide your binary relevance judgment (0 for not relevant, 1 for "
        "relevant).\nRelevance:"
    )
    prefix = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\n"
    )
    query_part = f"query: {query}"
    if instruction:
        query_part = f"instruction: {instruction}\n{query_part}"
    sep = ids("\n")
    return [
        *ids(prefix),
        *ids(query_part),
        *sep,
        *ids(f"document: {doc}"),
        *sep,
        *ids(task),
        *ids("<|im_end|>\n<|im_start|>assistant\n"),
    ]


def reference_scores(
    template: str, hf: Path, rows: list[list[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """(raw, probability) per pair from the full causal LM's last-position logits."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    raw, prob = [], []
    with torch.no_grad():
        for row in rows:
            logits = model(torch.tensor([row])).logits[0, -1].double()
            if template == "qwen3-reranker":
                no, yes = tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("yes")
                pair = torch.stack([logits[no], logits[yes]])
                prob.append(float(torch.log_softmax(pair, dim=0)[1].exp()))
                raw.append(float(logits[yes] - logits[no]))
            elif template == "bge-reranker-v2-gemma":
                yes = tok("Yes", add_special_tokens=False)["input_ids"][0]
                raw.append(float(logits[yes]))
                prob.append(float(torch.sigmoid(logits[yes])))
            else:
                one = tok("1", add_special_tokens=False)["input_ids"][0]
                zero = tok("0", add_special_tokens=False)["input_ids"][0]
                raw.append(float(logits[one] - logits[zero]))
                prob.append(float(torch.sigmoid(logits[one] - logits[zero])))
    return np.array(raw), np.array(prob)
