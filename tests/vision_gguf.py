"""A tiny vision projector (mmproj) GGUF for the starter, written with the gguf package: no vision
GGUF ships in a PyPI package. It is Gemma 3's projector as llama.cpp's clip loader reads it (a
SigLIP-style ViT, 2x2 average pooling, RMS norm, a projection into the language model's
embeddings), two layers, 64x64 images in 8x8 patches: 64 patches pooled into 16 image tokens of
the starter's width (576). Weights are drawn with a fixed seed, so two different images give
different embeddings, which is all a test of the plumbing needs.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import gguf
import numpy as np

IMAGE_SIZE, PATCH, MERGE = 64, 8, 2
WIDTH, FFN, LAYERS, HEADS = 64, 128, 2, 4
TEXT_WIDTH = 576  # SmolLM2-135M's embeddings
IMAGE_TOKENS = (IMAGE_SIZE // PATCH // MERGE) ** 2


def _projector(target: Path, kind: str, seed: int, text_width: int, image_size: int, patch: int, width: int, ffn: int,
               layers: int, heads: int, keys: dict[str, int], own_tensors) -> Path:
    """What every projector here shares: the header, and a ViT's layers and final norm, weights
    drawn with a fixed seed; `keys` (uint32) and `own_tensors(weights)` (name -> array) are the kind's."""
    rng = np.random.default_rng(seed)

    def weights(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(target, arch="clip")
    writer.add_string("clip.projector_type", kind)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    for key, value in {"clip.vision.image_size": image_size, "clip.vision.patch_size": patch,
                       "clip.vision.embedding_length": width, "clip.vision.feed_forward_length": ffn,
                       "clip.vision.block_count": layers, "clip.vision.projection_dim": text_width,
                       "clip.vision.attention.head_count": heads, **keys}.items():
        writer.add_uint32(key, value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    # numpy shapes are ggml's dimensions reversed (a linear layer is [out, in]).
    ones, zeros = np.ones(width, dtype=np.float32), np.zeros(width, dtype=np.float32)
    writer.add_tensor("v.patch_embd.weight", weights(width, 3, patch, patch))
    for i in range(layers):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"v.blk.{i}.{name}.weight", weights(width, width))
            writer.add_tensor(f"v.blk.{i}.{name}.bias", weights(width))
        for name in ("ln1", "ln2"):
            writer.add_tensor(f"v.blk.{i}.{name}.weight", ones)
            writer.add_tensor(f"v.blk.{i}.{name}.bias", zeros)
        writer.add_tensor(f"v.blk.{i}.ffn_up.weight", weights(ffn, width))
        writer.add_tensor(f"v.blk.{i}.ffn_up.bias", weights(ffn))
        writer.add_tensor(f"v.blk.{i}.ffn_down.weight", weights(width, ffn))
        writer.add_tensor(f"v.blk.{i}.ffn_down.bias", weights(width))
    writer.add_tensor("v.post_ln.weight", ones)
    writer.add_tensor("v.post_ln.bias", zeros)
    for name, tensor in own_tensors(weights).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def write_projector(target: Path, text_width: int = TEXT_WIDTH, seed: int = 7, image_size: int = IMAGE_SIZE,
                    patch: int = PATCH, merge: int = MERGE, width: int = WIDTH, ffn: int = FFN, layers: int = LAYERS,
                    heads: int = HEADS, kind: str = "gemma3", longest_edge: int = 0) -> Path:
    """The defaults make the test projector; the benchmark asks for a larger one, to be timed.
    `kind` "idefics3": SmolVLM's projector instead (the same ViT; 2x2 patches shuffled into one
    token by a linear layer), which tiles an image resized to `longest_edge` into image_size tiles
    plus an overview: several image chunks for one image."""
    def own(weights) -> dict:
        tensors = {"v.patch_embd.bias": weights(width), "v.position_embd.weight": weights((image_size // patch) ** 2, width)}
        if kind == "idefics3":
            return tensors | {"mm.model.fc.weight": weights(text_width, width * merge * merge, scale=0.5)}
        return tensors | {"mm.soft_emb_norm.weight": np.ones(width, dtype=np.float32),
                          "mm.input_projection.weight": weights(width, text_width, scale=0.5)}

    keys = {"clip.vision.projector.scale_factor": merge} | ({"clip.vision.preproc_image_size": longest_edge}
                                                           if longest_edge else {})
    return _projector(target, kind, seed, text_width, image_size, patch, width, ffn, layers, heads, keys, own)


def write_vision_model(folder: Path, starter: Path, **projector) -> tuple[Path, Path]:
    """The starter and a projector side by side, as a pulled vision model is kept: (model, projector)."""
    model = folder / "starter-vision.gguf"
    shutil.copy(starter, model)
    return model, write_projector(folder / "mmproj-starter-vision-f16.gguf", **projector)


def png(color: str, size: tuple[int, int] = (80, 60)) -> bytes:
    """A plain image of one colour, as PNG bytes."""
    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", size, color).save(data, "PNG")
    return data.getvalue()


def ask(*parts) -> list[dict]:
    """A user's question about the image parts given."""
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "What is in this picture?"}]}]


def write_mrope_model(starter: Path, target: Path) -> Path:
    """The starter as a Qwen2-VL language model: the same weights under the qwen2vl architecture,
    whose rotary positions are M-RoPE (sections of each head for time, height and width), as
    Qwen2-VL's and Qwen2.5-VL's are. Its words are nonsense; its positions are what is tested."""
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(starter, "r")
    old = [name for name in reader.fields if name.startswith("llama.")]
    changes = {name.replace("llama.", "qwen2vl.", 1): MetadataDetails(reader.fields[name].types[0],
                                                                     reader.fields[name].contents()) for name in old}
    # The 32 rotary pairs of a 64-wide head, in sections: time, height, width, none left over.
    changes["qwen2vl.rope.dimension_sections"] = MetadataDetails(gguf.GGUFValueType.ARRAY, [8, 12, 12, 0],
                                                                 sub_type=gguf.GGUFValueType.INT32)
    writer = gguf.GGUFWriter(target, arch="qwen2vl", endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, changes, old)
    return target


MROPE_PATCH = 14  # an image w x h pixels (multiples of 28) is (w / 28) x (h / 28) tokens, at max of those positions


def write_mrope_projector(target: Path, text_width: int = TEXT_WIDTH, seed: int = 11) -> Path:
    """Qwen2-VL's projector as llama.cpp reads it: a ViT with 2D rotary positions over the image at
    (about) its own size (two patch kernels, no position table), 2x2 patches merged into one token
    by an MLP."""
    return _projector(target, "qwen2vl_merger", seed, text_width, 560, MROPE_PATCH, WIDTH, FFN, LAYERS, HEADS, {},
                      lambda weights: {"v.patch_embd.weight.1": weights(WIDTH, 3, MROPE_PATCH, MROPE_PATCH),
                                       "mm.0.weight": weights(WIDTH * 4, WIDTH * 4), "mm.0.bias": weights(WIDTH * 4),
                                       "mm.2.weight": weights(text_width, WIDTH * 4, scale=0.5),
                                       "mm.2.bias": weights(text_width)})


SMOLVLM_TOKENS = {"<fake_token_around_image>": gguf.TokenType.USER_DEFINED, "<global-img>": gguf.TokenType.USER_DEFINED}


def write_smolvlm_model(starter: Path, target: Path) -> Path:
    """The starter with the two tokens SmolVLM's prompts put around images (SmolVLM's language
    model is SmolLM2, the starter's family), for the idefics3 projector."""
    from embedding_gguf import write_with_template

    template = gguf.GGUFReader(starter, "r").fields[gguf.Keys.Tokenizer.CHAT_TEMPLATE].contents()
    return write_with_template(starter, target, template, SMOLVLM_TOKENS)
