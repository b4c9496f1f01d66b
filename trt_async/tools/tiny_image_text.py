"""Tiny randomly initialised CLIP and SigLIP folders, for checking and measuring the server,
laid out as the hub's are.

Each is a seeded, randomly initialised transformers model with a small tokenizer trained
here (on :func:`trt_async.tools.tiny_models.corpus`) and a ``preprocessor_config.json`` as
the real checkpoints ship it:

* CLIP: a BPE tokenizer whose ``<|startoftext|>`` / ``<|endoftext|>`` are the last ids of the
  vocabulary (as in CLIP's), pad = end-of-text, 77 positions; the text config's
  ``eos_token_id`` is the real one, or the legacy 2 of older configs (the model then pools
  at the largest id); OpenAI's mean and std, shortest edge resized then centre-cropped.
* SigLIP: a Unigram tokenizer with ``<pad>`` 0, ``</s>`` 1 (also the pad token, as
  SiglipTokenizer's default), ``<unk>`` 2, 64 positions; mean and std 0.5, resized to a square.

torch, transformers and tokenizers are imported only inside the builders (the export extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from trt_async.tools.tiny_models import corpus

#: The vision towers' input size (the real ones take 224 and more; small keeps tests quick).
IMAGE_SIZE = 32
CLIP_MAX_POSITIONS = 77
SIGLIP_MAX_POSITIONS = 64
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_TOWER = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


def clip_preprocessor_config(size: int = IMAGE_SIZE, crop: int = IMAGE_SIZE) -> dict[str, object]:
    """openai/clip-vit-base-patch32's preprocessor_config.json, for ``size`` and ``crop``."""
    return {
        "crop_size": {"height": crop, "width": crop},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": OPENAI_CLIP_STD,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": size},
    }


def siglip_preprocessor_config(size: int = IMAGE_SIZE) -> dict[str, object]:
    """google/siglip-base-patch16-224's preprocessor_config.json, for ``size``."""
    return {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": size, "width": size},
    }


def write_clip_tokenizer(out_dir: Path) -> dict[str, int]:
    """A lowercasing BPE tokenizer.json in CLIP's framing; returns its special ids and size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    out_dir.mkdir(parents=True, exist_ok=True)
    tok: Any = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder()
    trainer = BpeTrainer(vocab_size=600, special_tokens=["<unk>"], show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    # Added after training, so they take the last ids, as in CLIP's vocabulary.
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        pair="<|startoftext|> $A <|endoftext|> $B <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)],
    )
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "model_max_length": CLIP_MAX_POSITIONS,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return {"bos": bos, "eos": eos, "pad": eos, "vocab": tok.get_vocab_size()}


def write_siglip_tokenizer(out_dir: Path) -> dict[str, int]:
    """A lowercasing Unigram tokenizer.json that appends ``</s>``, SigLIP's pad token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    out_dir.mkdir(parents=True, exist_ok=True)
    tok: Any = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁")
    tok.decoder = decoders.Metaspace(replacement="▁")
    trainer = UnigramTrainer(
        vocab_size=700,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        max_piece_length=8,
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": SIGLIP_MAX_POSITIONS,
        # As Google's converted checkpoints save it (transformers' convert_siglip_to_hf.py):
        # no attention mask, since the original model takes none; transformers' pipeline
        # then feeds the model none.
        "model_input_names": ["input_ids"],
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return {"eos": eos, "pad": eos, "vocab": tok.get_vocab_size()}


#: ViT-B/32's vision tower (openai/clip-vit-base-patch32), for timings.
VIT_B_32 = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
}


def write_clip(
    out_dir: Path,
    *,
    eos: Literal["real", "legacy"] = "real",
    seed: int = 0,
    vision: Literal["tiny", "vit-b-32"] = "tiny",
) -> Path:
    """A 2-layer CLIPModel folder (``eos="legacy"``: the text config says eos 2;
    ``vision="vit-b-32"``: a vision tower of ViT-B/32's shape, for timings)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    ids = write_clip_tokenizer(out_dir)
    config = CLIPConfig(
        text_config={
            **_TOWER,
            "vocab_size": ids["vocab"],
            "max_position_embeddings": CLIP_MAX_POSITIONS,
            "bos_token_id": ids["bos"] if eos == "real" else 0,
            "eos_token_id": ids["eos"] if eos == "real" else 2,
            "pad_token_id": ids["pad"] if eos == "real" else 1,
        },
        vision_config=(
            VIT_B_32
            if vision == "vit-b-32"
            else {**_TOWER, "image_size": IMAGE_SIZE, "patch_size": 8}
        ),
        projection_dim=24,
        architectures=["CLIPModel"],
    )
    torch.manual_seed(seed)
    model: Any = CLIPModel(config)
    model.eval()
    model.save_pretrained(out_dir)
    vision_config: Any = config.vision_config
    size = int(vision_config.image_size)
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(clip_preprocessor_config(size, size), indent=2)
    )
    return out_dir


def write_siglip(out_dir: Path, *, seed: int = 0) -> Path:
    """A 2-layer SiglipModel folder."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    ids = write_siglip_tokenizer(out_dir)
    config = SiglipConfig(
        text_config={
            **_TOWER,
            "vocab_size": ids["vocab"],
            "max_position_embeddings": SIGLIP_MAX_POSITIONS,
            "pad_token_id": ids["pad"],
            "eos_token_id": ids["eos"],
        },
        vision_config={**_TOWER, "image_size": IMAGE_SIZE, "patch_size": 8},
        architectures=["SiglipModel"],
    )
    torch.manual_seed(seed)
    model: Any = SiglipModel(config)
    model.eval()
    with torch.no_grad():  # transformers initialises both to 0; trained ones are not
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-4.0)
    model.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(siglip_preprocessor_config(), indent=2)
    )
    return out_dir
