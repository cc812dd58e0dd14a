"""Prompt text -> the text context the UNet is conditioned on, the A1111 way.

A prompt is cut into chunks of 75 tokens (plus CLIP's start and end tokens, 77 in all); each chunk
is encoded on its own and the results are joined, so prompts are not cut off at 77 tokens. A chunk
that fills up backs off to its last comma when that comma is among its last 20 tokens, and BREAK
closes a chunk early. Token weights from emphasis brackets scale each token's embedding; with
"original" emphasis the chunk is then rescaled so that its mean is what it was unweighted.
A plain prompt (no weights, one chunk) goes through the pipeline's own text path, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2i.errors import InvalidInput
from t2i.sampling.prompts import Segment, is_plain, parse_prompt

CHUNK = 75  # tokens per chunk, between the start and end tokens
COMMA_BACKTRACK = 20  # a full chunk moves the words after its last comma on if the comma is this close
MAX_CHUNKS = 20  # 1,500 tokens: far past any useful prompt, and a bound on the context's size


@dataclass(frozen=True)
class Chunk:
    ids: tuple[int, ...]  # 77 token ids: start, 75 tokens or padding, end
    weights: tuple[float, ...]  # one per id; 1 for the start, end and padding


def chunk_prompt(tokenizer, segments: list[Segment]) -> list[Chunk]:
    """The 77-token chunks of a parsed prompt; an empty prompt is one chunk of padding."""
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.get_vocab().get(",</w>")
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        pad = CHUNK - len(ids)
        chunks.append(Chunk((start, *ids, *[end] * pad, end), (1.0, *weights, *[1.0] * pad, 1.0)))
        ids, weights, last_comma = [], [], -1

    for segment in segments:
        if segment.is_break:
            close()
            continue
        for token in tokenizer(segment.text, add_special_tokens=False, verbose=False).input_ids:
            if len(ids) == CHUNK:
                if last_comma >= 0 and CHUNK - last_comma <= COMMA_BACKTRACK:
                    keep = last_comma + 1  # the comma stays; the words after it open the next chunk
                    moved = ids[keep:], weights[keep:]
                    ids, weights = ids[:keep], weights[:keep]
                    close()
                    ids, weights = list(moved[0]), list(moved[1])
                else:
                    close()
            if token == comma:
                last_comma = len(ids)
            ids.append(token)
            weights.append(segment.weight)
    if ids or not chunks:
        close()
    return chunks


def prompt_chunks(tokenizer, prompt: str, emphasis: str, field: str = "prompts") -> list[Chunk]:
    chunks = chunk_prompt(tokenizer, parse_prompt(prompt, emphasis, field))
    if len(chunks) > MAX_CHUNKS:
        raise InvalidInput(f"is {len(chunks)} chunks of {CHUNK} tokens; t2i reads at most {MAX_CHUNKS} "
                           f"({MAX_CHUNKS * CHUNK} tokens)", field=field, value=prompt[:40] + "...")
    return chunks


def needs_chunks(tokenizer, prompt: str, emphasis: str) -> bool:
    """Whether a prompt needs t2i's own encoding (weights, BREAK, or longer than one chunk)."""
    segments = parse_prompt(prompt, emphasis)
    return not is_plain(segments) or len(chunk_prompt(tokenizer, segments)) > 1


@torch.no_grad()
def encode_chunks(text_encoder, chunks: list[Chunk], clip_skip: int | None, emphasis: str,
                  pad_to: int) -> torch.Tensor:
    """(1, 77 * pad_to, width): each chunk encoded alone, weighted, joined; empty chunks pad it out."""
    device = text_encoder.device
    empty = Chunk(chunks[0].ids[:1] + (chunks[0].ids[-1],) * 76, (1.0,) * 77)
    encoded = []
    for chunk in chunks + [empty] * (pad_to - len(chunks)):
        ids = torch.tensor([chunk.ids], device=device)
        if clip_skip is None or clip_skip == 1:
            z = text_encoder(ids)[0]
        else:  # A1111's clip skip: an earlier layer, through the final layer norm
            hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
            z = getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)
        weights = torch.tensor(chunk.weights, device=device, dtype=z.dtype)[None, :, None]
        if any(w != 1 for w in chunk.weights) and emphasis != "none":
            mean = z.mean()
            z = z * weights
            # "original": back to the unweighted mean. Undefined when the weighted mean is 0 (an encoder
            # whose outputs average to zero, such as an untrained final layer norm): left unscaled then
            if emphasis == "original" and z.mean() != 0:
                z = z * (mean / z.mean())
        encoded.append(z)
    return torch.cat(encoded, dim=1)


def text_inputs(pipe, prompts: list[str], negative: str, clip_skip: int | None, emphasis: str = "original") -> dict:
    """The pipeline's text arguments for one batch: plain prompts when the pipeline's own text path
    gives the same context (exact parity with diffusers), else embeddings built here."""
    tokenizer = pipe.tokenizer
    plain = clip_skip in (None, 1) and not any(needs_chunks(tokenizer, p, emphasis) for p in [*prompts, negative])
    if plain:
        return {"prompt": prompts, "negative_prompt": [negative] * len(prompts) if negative else None}
    positive = [prompt_chunks(tokenizer, p, emphasis) for p in prompts]
    negative_chunks = prompt_chunks(tokenizer, negative, emphasis, "negative_prompt")
    length = max(len(c) for c in [*positive, negative_chunks])  # one batch: one context length
    encoder = pipe.text_encoder
    return {"prompt_embeds": torch.cat([encode_chunks(encoder, c, clip_skip, emphasis, length) for c in positive]),
            "negative_prompt_embeds": encode_chunks(encoder, negative_chunks, clip_skip, emphasis,
                                                    length).repeat(len(prompts), 1, 1)}


def context_length(tokenizer, prompt: str, negative: str, emphasis: str) -> int:
    """How many chunks a prompt's context has beside its negative prompt (batches keep it equal)."""
    return max(len(prompt_chunks(tokenizer, prompt, emphasis)),
               len(prompt_chunks(tokenizer, negative, emphasis, "negative_prompt")))
