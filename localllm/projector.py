"""What a vision projector (mmproj GGUF) costs and gives, read from its header: its weights, the
compute buffer its encoder needs, and the tokens one image becomes (for projectors that resize
every image to one size; others tile or keep the aspect, and their count depends on the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .printable import printable

# Patches per side pooled into one token, where the header does not say (llama.cpp's defaults).
DEFAULT_MERGE = {"gemma3": 4, "idefics3": 3}
FIXED_SIZE = ("gemma3", "mlp", "mlp_norm", "ldp", "ldpv2", "llama4", "glm_edge")


@dataclass(frozen=True)
class ProjectorFacts:
    kind: str
    image_size: int
    patch_size: int
    weight_bytes: int
    compute_bytes: int  # the encoder's largest buffer for one image (flash attention, as mtmd runs it)
    tokens_per_image: int | None  # None: it depends on the image (tiling, native resolution)

    def images_fitting(self, n_ctx: int, reserved: int = 0) -> int | None:
        """How many images fit in a context beside `reserved` tokens of text."""
        if not self.tokens_per_image:
            return None
        return max(0, (n_ctx - reserved) // self.tokens_per_image)


def read(path: Path) -> ProjectorFacts:
    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
    except (OSError, ValueError, IndexError) as exc:
        raise UsageError(f"{printable(path.name)} is not a GGUF file ({printable(str(exc))[:100]})") from None

    def value(key: str, default=None):
        field = reader.fields.get(key)
        return field.contents() if field is not None else default

    if value("general.architecture") != "clip" or not value("clip.has_vision_encoder", False):
        raise UsageError(f"{printable(path.name)} is not a vision projector")
    kind = str(value("clip.vision.projector_type") or value("clip.projector_type") or "?")
    image, patch = int(value("clip.vision.image_size", 0)), int(value("clip.vision.patch_size", 1)) or 1
    width, ffn = int(value("clip.vision.embedding_length", 0)), int(value("clip.vision.feed_forward_length", 0))
    merge = int(value("clip.vision.projector.scale_factor", DEFAULT_MERGE.get(kind, 1)) or 1)
    patches = (image // patch) ** 2
    tokens = patches // (merge * merge) if kind in FIXED_SIZE else None
    # The encoder's peak: one layer's activations over every patch (attention, the feed-forward
    # inner layer, residuals), in f32, twice over for the allocator's overlap. Checked against
    # what clip reports on the test projector (tests/test_vision.py); an estimate, not a reading.
    compute = patches * (ffn + 6 * width) * 4 * 2
    weights = sum(int(t.n_bytes) for t in reader.tensors)
    return ProjectorFacts(kind, image, patch, weights, compute, tokens)
