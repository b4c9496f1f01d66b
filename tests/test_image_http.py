"""Image-text models over HTTP: every route that takes images, the two seeds' APIs, and the
hostile-image list, through the real app with tiny CLIP and SigLIP models.

References are independent of the server: transformers' CLIPModel / SiglipModel in torch
with transformers' (PIL) image processor and tokenizer, and transformers' own
zero-shot-image-classification pipeline.

Two apps run in-process: one as deployed by default (image URLs off), one with URLs on
for an allowlist, whose fetcher reaches the local test servers (see tests/image_servers.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient
from PIL import Image, ImageOps

from tests.http_fixtures import BASE_URL, assert_error, free_port
from tests.image_models import png_header_only, write_clip, write_siglip
from tests.image_servers import SeedImages, image_server, local_fetcher, make_certificate
from tests.test_image_inputs import PNG
from trt_async.app import create_app
from trt_async.cli import main
from trt_async.core.config import Config, ImageUrlConfig, ModelConfig
from trt_async.core.inference import Inference
from trt_async.core.requests import ImageTextEmbedRequest
from trt_async.tools import export_clip

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch", reason="exporting needs the export extra")
transformers = pytest.importorskip("transformers", reason="the reference (export extra)")

REPO = Path(__file__).resolve().parents[1]
#: The seed's example model, served under the name its model_name and pretrained make.
CLIP = "ViT-B-32_laion2b_s34b_b79k"
SIGLIP = "siglip"
#: The CLIP's text tower served alone: an ordinary embedding model.
TEXT_ONLY = "clip-text"
ADMIN_KEY = "test-admin-key"
TEXTS = [
    "a photo of a cat",
    "A man is playing a guitar on the street corner.",
    "hello",
    "今天天氣很好",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 12),  # past 77 and 64 tokens
]
LABELS = ["cat", "dog", "a red car", "bird"]


# -- the seeds' bodies, verbatim from their READMEs -------------------------------------------

#: Not strict JSON: the trailing comma is in the seed's README.
SEED_LOAD_ST = b"""{
    "model_name": "intfloat/e5-small-v2",
}"""
SEED_LOAD_CLIP = b"""{
    "model_name": "ViT-B-32",
    "pretrained": "laion2b_s34b_b79k"
}"""
SEED_INFER = b"""{
    "model_name": "ViT-B-32",
    "pretrained": "laion2b_s34b_b79k",
    "text": ["I am a sentence.", "I am another sentence.", "I am a third sentence."],
    "image": ["https://example.com/image1.jpg", "https://example.com/image2.jpg"]
}"""
SEED_UNLOAD = SEED_DELETE = SEED_LOAD_CLIP
#: Seed 004's curl example (-d "[{\"query\": \"asdf\"}, ...]"), as the shell passes it.
PROXY_BODY = (
    b'[{"query": "asdf"}, {"query": "asdf asdf"}, {"query": "asdf asdf asdf"}, '
    b'{"query": "asdf asdf asdf asdf"}]'
)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def sample_images() -> list[bytes]:
    """Several sizes, modes and formats."""
    rng = np.random.default_rng(11)
    out = []
    for i, (w, h) in enumerate([(40, 30), (17, 64), (64, 64), (100, 50), (33, 33)]):
        pixels = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        pixels[: h // 2] //= 2 + i
        image = Image.fromarray(pixels)
        if i == 2:
            image = image.convert("RGBA")
        if i == 3:
            image = image.convert("L")
        fmt = "JPEG" if i == 1 else ("GIF" if i == 4 else "PNG")
        out.append(_encoded(image, fmt))
    return out


IMAGES = sample_images()
SEED_JPEGS = {
    "/image1.jpg": _encoded(Image.fromarray(np.full((24, 32, 3), 90, dtype=np.uint8)), "JPEG"),
    "/image2.jpg": IMAGES[1],
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{b64(data)}"


# -- models and apps ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(Hugging Face folder, exported folder) of the tiny CLIP and SigLIP."""
    root = tmp_path_factory.mktemp("image-http")
    out = {}
    for name, build in (("clip", write_clip), ("siglip", write_siglip)):
        hf = build(root / f"{name}-hf")
        export_clip.export_image_text_model(hf, root / name, progress=False)
        out[name] = (hf, root / name)
    return out


@pytest.fixture(scope="module")
def model_root(
    tmp_path_factory: pytest.TempPathFactory, towers: dict[str, tuple[Path, Path]]
) -> Path:
    """``server.model_roots``: the seed's CLIP as ``ViT-B-32/laion2b_s34b_b79k`` and a text
    model as ``intfloat/e5-small-v2`` (the CLIP's text tower, an ordinary export)."""
    root = tmp_path_factory.mktemp("model-root")
    shutil.copytree(towers["clip"][1], root / "ViT-B-32" / "laion2b_s34b_b79k")
    shutil.copytree(towers["clip"][1] / "text", root / "intfloat" / "e5-small-v2")
    return root


def image_config(towers: dict[str, tuple[Path, Path]], root: Path) -> Config:
    clip = str(towers["clip"][1])
    config = Config(
        embedding_models={
            SIGLIP: ModelConfig(model_path=str(towers["siglip"][1])),
            CLIP: ModelConfig(model_path=clip),
            TEXT_ONLY: ModelConfig(model_path=str(Path(clip) / "text")),
        }
    )
    config.server.model_roots = [str(root)]
    config.server.admin_api_key = ADMIN_KEY
    config.server.max_body_bytes = 1 << 20
    config.server.drain_seconds = 2
    return config


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    towers: dict[str, tuple[Path, Path]], model_root: Path
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The default deployment: image URLs off; seed 004's MODEL_NAME names the text model."""
    os.environ["MODEL_NAME"] = TEXT_ONLY
    try:
        app = create_app(image_config(towers, model_root))
    finally:
        del os.environ["MODEL_NAME"]
    async with AsyncTestClient(app, base_url=BASE_URL, timeout=60) as c:
        c.headers["authorization"] = f"Bearer {ADMIN_KEY}"
        yield c


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int | None, Any]]:
    """(plain HTTP port, HTTPS port or None without openssl, the client TLS context)."""
    SeedImages.images = SEED_JPEGS
    try:
        server_tls, client_tls = make_certificate(tmp_path_factory.mktemp("tls"))
    except (FileNotFoundError, subprocess.CalledProcessError):
        server_tls = client_tls = None
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(image_server())
        https = stack.enter_context(image_server(server_tls)) if server_tls is not None else None
        yield plain, https, client_tls


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def url_client(
    towers: dict[str, tuple[Path, Path]],
    model_root: Path,
    servers: tuple[int, int | None, Any],
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """Image URLs on for 127.0.0.1, example.com and private names, 4 KiB and 1 s per
    image."""
    _, https, client_tls = servers
    config = image_config(towers, model_root)
    config.server.image_urls = ImageUrlConfig(
        enabled=True,
        # The private ones are allowed by name: the address checks must refuse them.
        allow_hosts=["127.0.0.1", "example.com", "private.test", "10.1.2.3", "169.254.169.254"],
        max_bytes=4096,
        timeout_s=1.0,
    )
    app = create_app(
        config, image_fetcher=local_fetcher(config.server.image_urls, client_tls, https)
    )
    async with AsyncTestClient(app, base_url=BASE_URL, timeout=60) as c:
        c.headers["authorization"] = f"Bearer {ADMIN_KEY}"
        yield c


# -- references ---------------------------------------------------------------------------------

_torch_models: dict[Path, Any] = {}


def _model(hf: Path) -> tuple[Any, Any, Any]:
    if hf not in _torch_models:
        model = transformers.AutoModel.from_pretrained(str(hf), attn_implementation="eager")
        _torch_models[hf] = (
            model.eval(),
            transformers.AutoTokenizer.from_pretrained(str(hf)),
            transformers.AutoImageProcessor.from_pretrained(str(hf), backend="pil"),
        )
    return _torch_models[hf]


def _features(out: Any) -> np.ndarray:
    tensor = out if hasattr(out, "shape") else out.pooler_output
    return tensor.detach().double().numpy()


def torch_texts(hf: Path, texts: Sequence[str]) -> np.ndarray:
    model, tok, _ = _model(hf)
    siglip = model.config.model_type == "siglip"
    padding = {"padding": "max_length", "max_length": 64} if siglip else {"padding": True}
    enc = tok(list(texts), truncation=True, return_tensors="pt", **padding)
    if siglip:
        enc.pop("attention_mask", None)  # none for SigLIP, as its tokenizer makes
    with torch.inference_mode():
        return _features(model.get_text_features(**enc))


def torch_images(hf: Path, images: Sequence[bytes]) -> np.ndarray:
    model, _, processor = _model(hf)
    opened = [ImageOps.exif_transpose(Image.open(io.BytesIO(b))) for b in images]
    with torch.inference_mode():
        pixels = processor(images=opened, return_tensors="pt")["pixel_values"]
        return _features(model.get_image_features(pixel_values=pixels))


def pipeline_scores(hf: Path, image: bytes, labels: Sequence[str]) -> dict[str, float]:
    model, tok, processor = _model(hf)
    pipe = transformers.pipeline(
        "zero-shot-image-classification", model=model, tokenizer=tok, image_processor=processor
    )
    found = pipe(Image.open(io.BytesIO(image)), candidate_labels=list(labels))
    return {item["label"]: float(item["score"]) for item in found}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def rows(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def check_parity(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """Each served vector against torch's (cosine >= 0.999), unit length; the vectors of
    different inputs differ far more (a tower that ignored its input would pass the cosine
    check on a random model's similar vectors)."""
    found = cosines(got, want)
    assert found.min() >= 0.999, (what, found)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    assert cosines(got[:1], got[1:2])[0] < 0.9999, what
    return float(found.min())


# -- parity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip", "siglip"])
async def test_both_towers_match_torch(
    name: str, client: AsyncTestClient[Litestar], towers: dict[str, tuple[Path, Path]]
) -> None:
    hf = towers[name][0]
    served = CLIP if name == "clip" else SIGLIP
    refs = [b64(IMAGES[0]), data_uri(IMAGES[1], "image/jpeg"), *map(data_uri, IMAGES[2:])]
    body = {
        "model": served,
        "input": [*[{"text": t} for t in TEXTS], *[{"image": r} for r in refs]],
    }
    r = await client.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    vectors = rows([d["embedding"] for d in r.json()["data"]])
    assert [d["index"] for d in r.json()["data"]] == list(range(len(TEXTS) + len(IMAGES)))
    text_cos = check_parity(vectors[: len(TEXTS)], torch_texts(hf, TEXTS), f"{name} text")
    image_cos = check_parity(vectors[len(TEXTS) :], torch_images(hf, IMAGES), f"{name} image")
    print(
        f"{name} over HTTP: least cosine to torch: text 1 - {1 - text_cos:.1e}, "
        f"image 1 - {1 - image_cos:.1e}"
    )
    # The usage counts the texts' tokens.
    assert r.json()["usage"]["prompt_tokens"] > len(TEXTS)


@pytest.mark.parametrize("name", ["clip", "siglip"])
async def test_zero_shot_matches_transformers_pipeline(
    name: str, client: AsyncTestClient[Litestar], towers: dict[str, tuple[Path, Path]]
) -> None:
    hf = towers[name][0]
    served = CLIP if name == "clip" else SIGLIP
    r = await client.post(
        "/v1/zero-shot",
        json={
            "model": served,
            "images": [b64(IMAGES[0]), b64(IMAGES[3])],
            "candidate_labels": LABELS,
        },
    )
    assert r.status_code == 200, r.text
    worst = 0.0
    for item, image in zip(r.json()["data"], (IMAGES[0], IMAGES[3]), strict=True):
        assert "sequence" not in item  # images are not echoed
        want = pipeline_scores(hf, image, LABELS)
        got = dict(zip(item["labels"], item["scores"], strict=True))
        assert item["scores"] == sorted(item["scores"], reverse=True)
        assert set(got) == set(LABELS)
        worst = max(worst, max(abs(got[k] - want[k]) for k in LABELS))
        # The labels' scores differ by far more than the tolerance: the check can fail.
        assert max(want.values()) - min(want.values()) > 100 * 1e-6
    assert worst <= 1e-6, worst
    print(f"{name} zero-shot over HTTP: max abs difference to the pipeline {worst:.2e}")
    if name == "clip":
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-6)  # a softmax over the labels
    # One image by `image`, the template given.
    one = await client.post(
        "/v1/zero-shot",
        json={"model": served, "image": b64(IMAGES[0]), "candidate_labels": LABELS,
              "hypothesis_template": "This is a photo of {}."},
    )  # fmt: skip
    assert one.status_code == 200, one.text
    alone, together = one.json()["data"][0], r.json()["data"][0]
    assert alone["labels"] == together["labels"]
    np.testing.assert_allclose(alone["scores"], together["scores"], atol=1e-7)


async def test_default_image_model_and_text_routes(client: AsyncTestClient[Litestar]) -> None:
    """A request with images and no model goes to the first image-text model; the text tower
    serves every text route as an embedding model."""
    r = await client.post("/embeddings_image", json={"input": [b64(IMAGES[0])]})
    assert r.status_code == 200 and r.json()["model"] == SIGLIP, r.text
    r = await client.post(
        "/v1/zero-shot", json={"image": b64(IMAGES[0]), "candidate_labels": LABELS}
    )
    assert r.status_code == 200 and r.json()["model"] == SIGLIP, r.text
    texts = await client.post("/embed", json={"model": CLIP, "inputs": TEXTS[:2]})
    assert texts.status_code == 200, texts.text
    same = await client.post("/v1/embeddings", json={"model": CLIP, "input": TEXTS[:2]})
    np.testing.assert_allclose(
        rows(texts.json()), rows([d["embedding"] for d in same.json()["data"]]), atol=1e-6
    )


# -- the peers' shapes ------------------------------------------------------------------------


async def test_every_image_shape_gives_the_same_vectors(client: AsyncTestClient[Litestar]) -> None:
    image, text = IMAGES[0], TEXTS[0]
    jina = await client.post(
        "/v1/embeddings",
        json={"model": CLIP, "input": [{"image": data_uri(image)}, text, {"text": TEXTS[1]}]},
    )
    assert jina.status_code == 200, jina.text
    j = rows([d["embedding"] for d in jina.json()["data"]])
    expect_image, expect_text = j[0], j[1]
    base = {"model": CLIP}
    answers = {
        "infinity modality": await client.post(
            "/v1/embeddings", json={**base, "input": [b64(image)], "modality": "image"}
        ),
        "infinity /embeddings": await client.post(
            "/embeddings", json={**base, "input": data_uri(image), "modality": "image"}
        ),
        "infinity /embeddings_image": await client.post(
            "/embeddings_image", json={**base, "input": [data_uri(image)]}
        ),
        "vLLM messages": await client.post(
            "/v1/embeddings",
            json={
                **base,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": data_uri(image)}}],
                    }
                ],
            },
        ),
    }
    for what, r in answers.items():
        assert r.status_code == 200, (what, r.text)
        np.testing.assert_allclose(rows(r.json()["data"][0]["embedding"]), expect_image, atol=1e-6)
    cohere = await client.post(
        "/v2/embed",
        json={**base, "images": [data_uri(image)], "input_type": "image",
              "embedding_types": ["float"]},
    )  # fmt: skip
    assert cohere.status_code == 200, cohere.text
    np.testing.assert_allclose(
        rows(cohere.json()["embeddings"]["float"][0]), expect_image, atol=1e-6
    )
    mixed = await client.post(
        "/v2/embed",
        json={**base, "inputs": [
            {"content": [{"type": "text", "text": text}]},
            {"content": [{"type": "image_url", "image_url": {"url": data_uri(image)}}]},
            {"content": [{"type": "image_url", "image_url": data_uri(image)}]}]},
    )  # fmt: skip
    assert mixed.status_code == 200, mixed.text
    got = rows(mixed.json()["embeddings"]["float"])
    np.testing.assert_allclose(got, [expect_text, expect_image, expect_image], atol=1e-6)
    # The seed's own /infer, and the OpenAI SDK with infinity's extra body field.
    infer = await client.post(
        "/infer", json={"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
                        "text": [text], "image": [b64(image)]},
    )  # fmt: skip
    assert infer.status_code == 200, infer.text
    np.testing.assert_allclose(rows(infer.json()["image_embeddings"][0]), expect_image, atol=1e-6)
    np.testing.assert_allclose(rows(infer.json()["text_embeddings"][0]), expect_text, atol=1e-6)
    openai = pytest.importorskip("openai")
    sdk = openai.AsyncOpenAI(api_key="EMPTY", base_url=f"{BASE_URL}/v1", http_client=client)
    created = await sdk.embeddings.create(
        model=CLIP, input=[data_uri(image)], extra_body={"modality": "image"}
    )
    np.testing.assert_allclose(rows(created.data[0].embedding), expect_image, atol=1e-6)


async def test_shapes_that_do_not_fit_are_refused(client: AsyncTestClient[Litestar]) -> None:
    image = data_uri(IMAGES[0])
    cases: list[tuple[str, dict[str, Any], int, str, str]] = [
        ("/v1/embeddings", {"model": TEXT_ONLY, "input": [{"image": image}]}, 400, "openai",
         "no image tower"),
        ("/v1/embeddings", {"model": CLIP, "input": [{"image": image, "text": "a"}]}, 422,
         "openai", "exactly one of `text` and `image`"),
        ("/v1/embeddings", {"model": CLIP, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": image}}]}]},
         422, "openai", "exactly one here"),
        ("/v1/embeddings", {"model": CLIP, "input": ["a"], "messages": []}, 422, "openai",
         "not both"),
        ("/v1/embeddings", {"model": CLIP, "input": [{"image": image}], "prompt_name": "q"},
         422, "openai", "has no prompts"),
        ("/v2/embed", {"model": CLIP, "images": [image], "embedding_types": ["int8"]}, 422,
         "cohere", "float or base64"),
        ("/v2/embed", {"model": CLIP, "images": [image], "texts": ["a"]}, 422, "cohere",
         "exactly one of texts, images and inputs"),
        ("/v1/zero-shot", {"model": CLIP, "text": "a", "candidate_labels": ["x"]}, 400,
         "openai", "classifies images zero-shot"),
        ("/v1/zero-shot", {"model": CLIP, "image": image, "candidate_labels": []}, 400,
         "openai", "candidate_labels is empty"),
        ("/v1/zero-shot", {"model": CLIP, "image": image, "images": [image],
                           "candidate_labels": ["x"]}, 422, "openai", "exactly one of"),
        ("/infer", {"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}, 422, "detail",
         "at least one of text and image"),
        ("/infer", {"model_name": "nope", "text": ["a"]}, 404, "detail", "not found"),
    ]  # fmt: skip
    for path, body, status, dialect, words in cases:
        r = await client.post(path, json=body)
        if dialect == "cohere":  # Cohere's {"message"}
            assert r.status_code == status and set(r.json()) == {"message"}, r.text
            message = r.json()["message"]
        else:
            error = assert_error(r, status, dialect)
            message = error["message"] if dialect == "openai" else error["detail"]
        assert words in message, (path, body, message)


# -- seed 002 ---------------------------------------------------------------------------------


def _post_raw(client: AsyncTestClient[Litestar], path: str, body: bytes) -> Any:
    return client.post(path, content=body, headers={"content-type": "application/json"})


async def test_seed_002_api_verbatim(
    url_client: AsyncTestClient[Litestar],
    towers: dict[str, tuple[Path, Path]],
    model_root: Path,
    servers: tuple[int, int | None, Any],
) -> None:
    """The seed README's bodies as written. Its sentence-transformer load body has a trailing
    comma, which is not JSON: refused with what is wrong (the seed's FastAPI refuses it too,
    with 422); without the comma it loads. The example's images are https URLs on
    example.com, served here by a local HTTPS server."""
    c = url_client
    bad = await _post_raw(c, "/load_sentence_transformer_model", SEED_LOAD_ST)
    assert "not valid JSON" in assert_error(bad, 400, "detail")["detail"]
    fixed = SEED_LOAD_ST.replace(b'",\n}', b'"\n}')
    loaded = await _post_raw(c, "/load_sentence_transformer_model", fixed)
    assert loaded.status_code == 200 and loaded.json() == {
        "message": "Model intfloat/e5-small-v2 loaded."
    }, loaded.text
    again = await _post_raw(c, "/load_sentence_transformer_model", fixed)
    assert again.json() == {"message": "Model intfloat/e5-small-v2 is already loaded."}
    clip = await _post_raw(c, "/load_clip_model", SEED_LOAD_CLIP)
    assert clip.json() == {"message": "Model ViT-B-32 (laion2b_s34b_b79k) is already loaded."}

    if servers[1] is None:
        pytest.skip("no openssl command to make the example's https server a certificate")
    r = await _post_raw(c, "/infer", SEED_INFER)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"text_embeddings", "image_embeddings", "processingTimeMs"}
    assert len(answer["text_embeddings"]) == 3 and len(answer["image_embeddings"]) == 2
    assert isinstance(answer["processingTimeMs"], float) and answer["processingTimeMs"] > 0
    hf = towers["clip"][0]
    texts = json.loads(SEED_INFER)["text"]
    check_parity(rows(answer["text_embeddings"]), torch_texts(hf, texts), "seed text")
    jpegs = [SEED_JPEGS["/image1.jpg"], SEED_JPEGS["/image2.jpg"]]
    check_parity(rows(answer["image_embeddings"]), torch_images(hf, jpegs), "seed images")
    st = await c.post("/infer", json={"model_name": "intfloat/e5-small-v2", "text": texts})
    assert st.status_code == 200 and st.json()["image_embeddings"] == []
    np.testing.assert_allclose(
        rows(st.json()["text_embeddings"]), rows(answer["text_embeddings"]), atol=1e-6
    )

    stats = await c.get("/metrics", headers={"accept": "application/json"})
    assert stats.status_code == 200 and stats.headers["content-type"].startswith("application/json")
    by_name = {m["name"]: m for m in stats.json()["model_stats"]}
    assert {f"{CLIP}_image_encoder", f"{CLIP}_text_encoder", "intfloat_e5-small-v2"} <= set(by_name)
    keys = {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
            "cache_hit", "cache_miss"}  # fmt: skip
    for entry in by_name.values():
        assert entry["version"] == "1" and set(entry["inference_stats"]) == keys
        assert all(set(v) == {"count", "ns"} for v in entry["inference_stats"].values())
    image_stats = by_name[f"{CLIP}_image_encoder"]["inference_stats"]
    assert image_stats["success"]["count"] >= 1 and image_stats["success"]["ns"] > 0
    assert image_stats["compute_infer"]["ns"] > 0
    assert by_name["intfloat_e5-small-v2"]["inference_stats"]["success"]["count"] == 1
    prometheus = await c.get("/metrics")
    assert prometheus.headers["content-type"].startswith("text/plain")
    assert "trt_async_requests_total" in prometheus.text

    gone = await _post_raw(c, "/unload_model", SEED_UNLOAD)
    assert gone.json() == {"message": "Model ViT-B-32 (laion2b_s34b_b79k) unloaded."}, gone.text
    missing = await _post_raw(c, "/infer", SEED_INFER)
    assert "not found" in assert_error(missing, 404, "detail")["detail"]
    back = await _post_raw(c, "/load_clip_model", SEED_LOAD_CLIP)
    assert back.json() == {"message": "Model ViT-B-32 (laion2b_s34b_b79k) loaded."}, back.text
    assert (await _post_raw(c, "/infer", SEED_INFER)).status_code == 200
    deleted = await _post_raw(c, "/delete_model", SEED_DELETE)
    assert deleted.status_code == 200 and "deleted" in deleted.json()["message"]
    assert (model_root / "ViT-B-32" / "laion2b_s34b_b79k" / "trt_async.json").is_file()
    assert_error(await _post_raw(c, "/infer", SEED_INFER), 404, "detail")
    assert (await _post_raw(c, "/load_clip_model", SEED_LOAD_CLIP)).status_code == 200


async def test_seed_002_management_refusals(client: AsyncTestClient[Litestar]) -> None:
    cases = [
        ({"model_name": "..", "pretrained": "x"}, 400, "cannot name a folder"),
        ({"model_name": "a/../../etc", "pretrained": "x"}, 400, "cannot name a folder"),
        ({"model_name": "ViT-L-14", "pretrained": "openai"}, 404, "no folder ViT-L-14/openai"),
    ]
    for body, status, words in cases:
        r = await client.post("/load_clip_model", json=body)
        assert words in assert_error(r, status, "detail")["detail"], r.text
    # The ST load of a folder that is a text model: /load_clip_model refuses it as no CLIP.
    r = await client.post("/load_clip_model", json={"model_name": "intfloat/e5-small-v2"})
    assert "not a CLIP or SigLIP export" in assert_error(r, 400, "detail")["detail"]
    no_key = await client.post(
        "/load_clip_model", json={"model_name": "x"}, headers={"authorization": "Bearer nope"}
    )
    assert_error(no_key, 401, "detail")


# -- seed 004 ---------------------------------------------------------------------------------


async def test_seed_004_route_verbatim(client: AsyncTestClient[Litestar]) -> None:
    r = await _post_raw(client, "/v1/embedding", PROXY_BODY)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert isinstance(answer, list) and len(answer) == 4
    assert all(set(item) == {"embedding"} for item in answer)
    vectors = rows([item["embedding"] for item in answer])
    # MODEL_NAME named the text model (24 dimensions; the first embedding model has 32).
    same = await client.post(
        "/v1/embeddings",
        json={"model": TEXT_ONLY, "input": [q["query"] for q in json.loads(PROXY_BODY)]},
    )
    np.testing.assert_allclose(
        vectors, rows([d["embedding"] for d in same.json()["data"]]), atol=1e-6
    )
    assert vectors.shape == (4, 24)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for body, words in [
        (b"[]", "empty list"),
        (b'[{"q": "a"}]', "query"),
        (b'{"query": "a"}', "Expected `array`"),
        (b'[{"query": ""}]', "query[0] is an empty string"),
        (b'[{"query": "a"},', "not valid JSON"),
    ]:
        bad = await _post_raw(client, "/v1/embedding", body)
        assert 400 <= bad.status_code < 500, bad.text
        assert words in assert_error(bad, bad.status_code, "detail")["detail"], bad.text


def _serve(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["serve", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trt-async serve: "), lines
    return lines[0]


def test_seed_004_settings_checked_at_start(
    tmp_path: Path,
    towers: dict[str, tuple[Path, Path]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRT_ASYNC_CONFIG", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"embedding_models:\n  clip:\n    model_path: {towers['clip'][1]}\n"
        f"  sig:\n    model_path: {towers['siglip'][1]}\n"
    )
    port = str(free_port())
    monkeypatch.setenv("EMBEDDING_SIZE", "1024")
    line = _serve(capsys, "--config", str(config), "--port", port)
    assert "EMBEDDING_SIZE=1024, but model 'clip' gives 24-dimensional vectors" in line
    monkeypatch.setenv("MODEL_NAME", "sig")
    assert "model 'sig' gives 32-dimensional" in _serve(
        capsys, "--config", str(config), "--port", port
    )
    monkeypatch.setenv("MODEL_NAME", "model")
    assert "MODEL_NAME='model' names no served model (served: clip, sig)" in _serve(
        capsys, "--config", str(config), "--port", port
    )
    monkeypatch.delenv("MODEL_NAME")
    monkeypatch.setenv("EMBEDDING_SIZE", "24")
    monkeypatch.setenv("SERVER_PORT", "80a")
    assert "SERVER_PORT='80a' is not a port number" in _serve(capsys, "--config", str(config))
    # SERVER_PORT is the port without --port: a busy one is refused by that number.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setenv("SERVER_PORT", str(taken))
        line = _serve(capsys, "--config", str(config), "--host", "127.0.0.1")
        assert f"port {taken} on 127.0.0.1 is already in use" in line


@pytest.mark.integration
def test_seed_004_proxy_as_deployed(tmp_path: Path, towers: dict[str, tuple[Path, Path]]) -> None:
    """``trt-async serve`` with the proxy's environment (SERVER_PORT, MODEL_NAME,
    EMBEDDING_SIZE) answers its curl example on that port."""
    config = tmp_path / "c.yaml"
    config.write_text(
        f"embedding_models:\n  sig:\n    model_path: {towers['siglip'][1]}\n"
        f"  model:\n    model_path: {towers['clip'][1] / 'text'}\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRT_ASYNC_")}
    env.update(SERVER_PORT=str(port), MODEL_NAME="model", EMBEDDING_SIZE="24", PYTHONPATH=str(REPO))
    log = tmp_path / "server.log"
    with log.open("w") as out:
        command = [sys.executable, "-m", "trt_async", "serve", "--config", str(config)]
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        r = httpx.post(
            f"{url}/v1/embedding", content=PROXY_BODY, headers={"content-type": "application/json"}
        )
        assert r.status_code == 200, r.text
        assert [len(item["embedding"]) for item in r.json()] == [24] * 4
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- hostile images ----------------------------------------------------------------------------


async def _still_serving(client: AsyncTestClient[Litestar]) -> None:
    r = await client.post(
        "/infer", json={"model_name": CLIP, "text": ["ok"], "image": [b64(IMAGES[0])]}
    )
    assert r.status_code == 200 and len(r.json()["image_embeddings"]) == 1, r.text


async def test_hostile_images_are_refused_and_the_server_keeps_serving(
    client: AsyncTestClient[Litestar],
    url_client: AsyncTestClient[Litestar],
    servers: tuple[int, int | None, Any],
) -> None:
    """Each hostile image is item 1 (after a good one): its 4xx names ``image[1]``; a normal
    request succeeds after each."""
    port = servers[0]
    local = f"http://127.0.0.1:{port}"
    bomb = png_header_only(20_000, 20_000)
    truncated = PNG[: len(PNG) // 2]
    cases: list[tuple[str, AsyncTestClient[Litestar], str, int, str]] = [
        ("loopback target, URLs off", client, f"{local}/cat.png", 403, "does not fetch image URLs"),
        ("redirect into a private range", url_client, f"{local}/to-private", 403,
         "10.1.2.3 is a private address"),
        ("redirect to a name of a private address", url_client, f"{local}/to-name", 403,
         "'private.test' resolves to 10.9.8.7, which is a private address"),
        ("redirect to the metadata address", url_client, f"{local}/to-metadata", 403,
         "169.254.169.254 is a cloud metadata address"),
        ("host not allowed", url_client, f"http://localhost:{port}/cat.png", 403,
         "not in server.image_urls.allow_hosts"),
        ("oversized body (declared)", url_client, f"{local}/big", 413, "more than the 4096"),
        ("oversized body (streamed)", url_client, f"{local}/big-unsized", 413,
         "more than the 4096 bytes"),
        ("slow server", url_client, f"{local}/slow", 422, "did not arrive within 1 s"),
        ("non-image (fetched)", url_client, f"{local}/page", 422, "text/html, not an image"),
        ("non-image (inline)", client, b64(b"this is not an image at all"), 422,
         "not an image in a supported format"),
        ("truncated PNG (fetched)", url_client, f"{local}/truncated.png", 422,
         "truncated or corrupt"),
        ("truncated PNG (inline)", client, b64(truncated), 422, "truncated or corrupt"),
        ("20,000 x 20,000 PNG bomb (fetched)", url_client, f"{local}/bomb.png", 413,
         "is a decompression bomb"),
        ("20,000 x 20,000 PNG bomb (inline)", client, data_uri(bomb), 413,
         "is a decompression bomb"),
    ]  # fmt: skip
    report = []
    for what, c, ref, status, words in cases:
        started = time.perf_counter()
        r = await c.post(
            "/infer",
            json={"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", "text": ["a"],
                  "image": [b64(IMAGES[0]), ref]},
        )  # fmt: skip
        detail = assert_error(r, status, "detail")["detail"]
        assert detail.startswith("image[1] ") and words in detail, (what, detail)
        report.append(f"{what}: {status} {detail[:90]} ({time.perf_counter() - started:.2f} s)")
        await _still_serving(c)
        await _still_serving(url_client if c is client else client)
    # Other routes name the item as they number it.
    jina = await url_client.post(
        "/v1/embeddings",
        json={"model": CLIP, "input": ["a", {"image": f"{local}/bomb.png"}]},
    )
    error = assert_error(jina, 413, "openai")
    assert error["param"] == "input" and error["message"].startswith("input[1] "), error
    big_body = await client.post("/infer", json={"model_name": CLIP, "image": ["A" * (1 << 20)]})
    assert_error(big_body, 413, "detail")
    report.append("request body over server.max_body_bytes: 413")
    await _still_serving(client)
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["models"][CLIP] == "ready"
    print("\n".join(report))


async def test_image_requests_share_hops_and_batches(client: AsyncTestClient[Litestar]) -> None:
    """Requests that arrive together are decoded in shared hops and run in shared batches
    of the vision tower (the server's own entry, without HTTP's serialising test client):
    far fewer batches than requests, and equal images give equal vectors whichever batch
    they ran in."""
    app = client.app
    inference: Inference = app.state["inference"]
    model = inference.registry.get(CLIP)
    vision = model.runtime.vision
    assert vision is not None
    stats = vision.scheduler.stats
    items, batches = stats.items_run, sum(stats.batches.values())
    refs = [b64(image) for image in IMAGES] * 6
    requests = [ImageTextEmbedRequest(images=[ref], model=CLIP) for ref in refs]
    results = await asyncio.gather(*(inference.run(model, r) for r in requests))
    ran = sum(stats.batches.values()) - batches
    assert stats.items_run - items == len(refs)
    assert ran <= len(refs) // 4, (ran, len(refs))
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.images[0], results[i % len(IMAGES)].images[0], atol=1e-6)
