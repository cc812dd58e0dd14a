"""Prompt text -> the text context the UNet is conditioned on."""

from __future__ import annotations

import torch


@torch.no_grad()
def clip_skip_embeddings(pipe, texts: list[str], clip_skip: int) -> torch.Tensor:
    """Text context from the clip_skip-th last CLIP layer, through the final layer norm (A1111).

    Done here rather than by the pipeline's `clip_skip=` because diffusers 0.42 reaches for
    `text_encoder.text_model`, which transformers >= 5.6 no longer has; and A1111 applies clip
    skip to the negative prompt too, which the pipeline does not.
    """
    tokens = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(pipe.device)
    hidden = pipe.text_encoder(tokens, output_hidden_states=True).hidden_states[-clip_skip]
    text_model = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)  # wrapped before transformers 5.6
    return text_model.final_layer_norm(hidden)


def text_inputs(pipe, prompts: list[str], negative: str, clip_skip: int | None) -> dict:
    """The pipeline's text arguments: plain prompts, or embeddings when clip skip asks for an earlier layer."""
    if clip_skip is None or clip_skip == 1:
        return {"prompt": prompts, "negative_prompt": [negative] * len(prompts) if negative else None}
    return {"prompt_embeds": clip_skip_embeddings(pipe, prompts, clip_skip),
            "negative_prompt_embeds": clip_skip_embeddings(pipe, [negative] * len(prompts), clip_skip)}
