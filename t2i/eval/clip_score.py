"""CLIP score (Hessel et al., 2021) as diffusers' evaluation guide and torchmetrics compute it:
100 x the cosine of a CLIP model's image and caption embeddings, floored at 0, one number an image.

The CLIP model comes from a local folder or the Hugging Face cache, never from the network: an
evaluation should not start a multi-GB download by surprise, and offline runs must work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from t2i.errors import LoadError, NotFound, first_line

DEFAULT_CLIP = "openai/clip-vit-base-patch16"  # the guide's model


def load_clip(source: str):
    """(CLIPModel, CLIPProcessor) from a local folder or a cached hub id; a one-line error if absent."""
    from huggingface_hub import constants
    from transformers import CLIPModel, CLIPProcessor

    from t2i.models.loading import HUB_ID

    path = Path(source).expanduser()
    if not path.is_dir() and not HUB_ID.match(source):
        raise NotFound("no such folder", field="clip_model", value=source,
                       hint="give a local CLIP folder or a cached hub id (e.g. openai/clip-vit-base-patch16)")
    where = str(path) if path.is_dir() else f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=True, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        raise NotFound(f"no CLIP weights (model.safetensors) in {where}", field="clip_model", value=source,
                       hint="give a local CLIP folder with {clip_model}, or download it once with "
                            f"`hf download {source if not path.is_dir() else DEFAULT_CLIP}`") from exc
    except Exception as exc:
        raise LoadError(f"not a CLIP model t2i can load ({first_line(exc)})", field="clip_model",
                        value=source) from exc
    return model.eval(), processor


@torch.no_grad()
def clip_scores(model, processor, images, captions, batch_size: int = 32) -> np.ndarray:
    """One CLIP score per (image, caption) pair; captions past CLIP's 77 tokens are cut, as in torchmetrics."""
    scores = []
    for start in range(0, len(images), batch_size):
        inputs = processor(text=list(captions[start:start + batch_size]), images=list(images[start:start + batch_size]),
                           return_tensors="pt", padding=True, truncation=True,
                           max_length=processor.tokenizer.model_max_length)
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        image, text = (getattr(e, "pooler_output", e) for e in (image, text))
        cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
        scores.append((100 * cosine).clamp(min=0))
    return torch.cat(scores).numpy().astype(np.float64)
