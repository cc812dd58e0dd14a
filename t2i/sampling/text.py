"""Prompt text -> the text context the UNet is conditioned on, the A1111 way.

A prompt is cut into chunks of 75 tokens (plus CLIP's start and end tokens, 77 in all); each chunk
is encoded on its own and the results are joined, so prompts are not cut off at 77 tokens. A chunk
that fills up backs off to its last comma when that comma is among its last 20 tokens, and BREAK
closes a chunk early. Token weights from emphasis brackets scale each token's embedding; with
"original" emphasis the chunk is then rescaled so that its mean is what it was unweighted.
A plain prompt (no weights, one chunk) goes through the pipeline's own text path, unchanged.
"""

from __future__ import annotations

import copy
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
    vectors: tuple[tuple[int, torch.Tensor], ...] = ()  # (position, embedding vector) replacing that token's


def _scan(ids: list[int], embeddings):
    """(token id, the embedding whose name starts there or None), skipping the rest of each name."""
    index = 0
    while index < len(ids):
        found = embeddings.match(ids, index) if embeddings is not None else None
        taken, embedding = found or (1, None)
        yield ids[index], embedding
        index += taken


def _tokens(tokenizer, segment: Segment, embeddings) -> list:
    """A segment's tokens as (id, weight, vector or None) items; an embedding's name becomes a list of
    items, one per vector (placeholder id: the name's first token, whose embedding the vector replaces)."""
    ids = tokenizer(segment.text, add_special_tokens=False, verbose=False).input_ids
    weight = segment.weight
    return [(token, weight, None) if embedding is None else [(token, weight, vector) for vector in embedding.vectors]
            for token, embedding in _scan(ids, embeddings)]


def _comma_id(tokenizer) -> int | None:
    """The id of CLIP's comma token (None for a vocabulary without one). A lookup, not get_vocab():
    that copies the whole 49k-entry vocabulary, 30 ms per call, which was most of a small image's time."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    return None if comma == tokenizer.unk_token_id else comma


def chunk_prompt(tokenizer, segments: list[Segment], embeddings=None) -> list[Chunk]:
    """The 77-token chunks of a parsed prompt; an empty prompt is one chunk of padding."""
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = _comma_id(tokenizer)
    chunks: list[Chunk] = []
    items: list[tuple] = []  # (id, weight, embedding vector or None)
    last_comma = -1

    def close() -> None:
        nonlocal items, last_comma
        pad = CHUNK - len(items)
        chunks.append(Chunk((start, *(i[0] for i in items), *[end] * pad, end),
                            (1.0, *(i[1] for i in items), *[1.0] * pad, 1.0),
                            tuple((1 + n, i[2]) for n, i in enumerate(items) if i[2] is not None)))
        items, last_comma = [], -1

    def make_room(needed: int) -> None:
        nonlocal items
        if len(items) == CHUNK and last_comma >= 0 and CHUNK - last_comma <= COMMA_BACKTRACK:
            keep = last_comma + 1  # the comma stays; the words after it open the next chunk
            moved = items[keep:]
            items = items[:keep]
            close()
            items = moved
        if len(items) + needed > CHUNK:  # full, or an embedding does not fit: it opens the next chunk whole
            close()

    for segment in segments:
        if segment.is_break:
            close()
            continue
        for token in _tokens(tokenizer, segment, embeddings):
            group = token if isinstance(token, list) else [token]
            make_room(len(group))
            if group[0][0] == comma and group[0][2] is None:
                last_comma = len(items)
            items.extend(group)
    if items or not chunks:
        close()
    return chunks


def prompt_chunks(tokenizer, prompt: str, emphasis: str, field: str = "prompts", embeddings=None) -> list[Chunk]:
    chunks = chunk_prompt(tokenizer, parse_prompt(prompt, emphasis, field), embeddings)
    if len(chunks) > MAX_CHUNKS:
        raise InvalidInput(f"is {len(chunks)} chunks of {CHUNK} tokens; t2i reads at most {MAX_CHUNKS} "
                           f"({MAX_CHUNKS * CHUNK} tokens)", field=field, value=prompt[:40] + "...")
    return chunks


def needs_chunks(tokenizer, prompt: str, emphasis: str, embeddings=None) -> bool:
    """Whether a prompt needs t2i's own encoding (weights, BREAK, embeddings, or longer than one chunk)."""
    segments = parse_prompt(prompt, emphasis)
    if not is_plain(segments):
        return True
    chunks = chunk_prompt(tokenizer, segments, embeddings)
    return len(chunks) > 1 or bool(chunks[0].vectors)


class _TokenEmbeddingWithVectors(torch.nn.Module):
    """A token-embedding layer whose outputs at some positions are embedding vectors instead."""

    def __init__(self, layer: torch.nn.Module, vectors: tuple[tuple[int, torch.Tensor], ...]):
        super().__init__()
        self.layer, self.vectors = layer, vectors

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        output = self.layer(ids).clone()
        for position, vector in self.vectors:
            output[:, position] = vector.to(output.device, output.dtype)
        return output


def _with_submodule(root: torch.nn.Module, path: str, replacement: torch.nn.Module) -> torch.nn.Module:
    """A copy of `root` whose submodule at `path` is `replacement`: only the modules on the path are
    copied (shallowly, with their own child tables); everything else is the shared model's own."""
    head, _, rest = path.partition(".")
    copied = copy.copy(root)
    copied._modules = dict(root._modules)
    child = root.get_submodule(head)
    copied._modules[head] = _with_submodule(child, rest, replacement) if rest else replacement
    return copied


def _encoder_with_vectors(text_encoder, vectors: tuple[tuple[int, torch.Tensor], ...]):
    """The text encoder for one call, its token embeddings at the given positions replaced by
    embedding vectors. CLIPTextModel takes no input embeddings, so the call gets its own view of the
    encoder with its own token-embedding layer; the shared encoder is never changed, not even for a
    moment, so generations in other threads are unaffected."""
    if not vectors:
        return text_encoder
    layer: torch.nn.Module = text_encoder.get_input_embeddings()
    path = next(name for name, module in text_encoder.named_modules() if module is layer)
    return _with_submodule(text_encoder, path, _TokenEmbeddingWithVectors(layer, vectors))


@torch.no_grad()
def encode_chunks(text_encoder, chunks: list[Chunk], clip_skip: int | None, emphasis: str,
                  pad_to: int) -> torch.Tensor:
    """(1, 77 * pad_to, width): each chunk encoded alone, weighted, joined; empty chunks pad it out."""
    device = text_encoder.device
    empty = Chunk(chunks[0].ids[:1] + (chunks[0].ids[-1],) * 76, (1.0,) * 77)
    encoded = []
    for chunk in chunks + [empty] * (pad_to - len(chunks)):
        ids = torch.tensor([chunk.ids], device=device)
        encoder = _encoder_with_vectors(text_encoder, chunk.vectors)
        if clip_skip is None or clip_skip == 1:
            z = encoder(ids)[0]
        else:  # A1111's clip skip: an earlier layer, through the final layer norm
            hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
            z = getattr(encoder, "text_model", encoder).final_layer_norm(hidden)
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


def text_inputs(pipe, prompts: list[str], negative: str, clip_skip: int | None, emphasis: str = "original",
                embeddings=None) -> dict:
    """The pipeline's text arguments for one batch: plain prompts when the pipeline's own text path
    gives the same context (exact parity with diffusers), else embeddings built here."""
    tokenizer = pipe.tokenizer
    plain = clip_skip in (None, 1) and not any(needs_chunks(tokenizer, p, emphasis, embeddings)
                                               for p in [*prompts, negative])
    if plain:
        return {"prompt": prompts, "negative_prompt": [negative] * len(prompts) if negative else None}
    positive, negative_context = contexts(pipe, prompts, negative, clip_skip, emphasis, embeddings)
    return {"prompt_embeds": positive, "negative_prompt_embeds": negative_context.repeat(len(prompts), 1, 1)}


def contexts(pipe, prompts: list[str], negative: str, clip_skip: int | None, emphasis: str = "original",
             embeddings=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the prompts' contexts, the negative prompt's), built here with A1111's prompt syntax, all one length."""
    tokenizer = pipe.tokenizer
    positive = [prompt_chunks(tokenizer, p, emphasis, embeddings=embeddings) for p in prompts]
    negative_chunks = prompt_chunks(tokenizer, negative, emphasis, "negative_prompt", embeddings)
    length = max(len(c) for c in [*positive, negative_chunks])  # one batch: one context length
    encoder = pipe.text_encoder
    return (torch.cat([encode_chunks(encoder, c, clip_skip, emphasis, length) for c in positive]),
            encode_chunks(encoder, negative_chunks, clip_skip, emphasis, length))


def context_length(tokenizer, prompt: str, negative: str, emphasis: str, embeddings=None) -> int:
    """How many chunks a prompt's context has beside its negative prompt (batches keep it equal)."""
    return max(len(prompt_chunks(tokenizer, prompt, emphasis, embeddings=embeddings)),
               len(prompt_chunks(tokenizer, negative, emphasis, "negative_prompt", embeddings)))


def embeddings_used(tokenizer, texts: list[str], emphasis: str, embeddings) -> list:
    """The embeddings these texts name, each once, in order of first use (the infotext's `TI hashes`)."""
    used = {}
    for text in texts if embeddings is not None else ():
        for segment in parse_prompt(text, emphasis):
            ids = tokenizer(segment.text, add_special_tokens=False, verbose=False).input_ids
            used.update({e.name: e for _, e in _scan(ids, embeddings) if e is not None and e.name not in used})
    return list(used.values())
