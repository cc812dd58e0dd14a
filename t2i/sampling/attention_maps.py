"""Cross-attention maps per word (DAAM, Tang et al. 2023, written anew for t2i's prompts).

Every cross-attention layer of the call's own UNet copy gets a processor that computes its output exactly as
diffusers' default one does (the image is unchanged, bit for bit) and, beside it, the attention
probabilities of the conditional half of the batch: per layer, the mean over heads, each token's map at the
layer's resolution (non-square sizes included), upsampled bicubically to the latent, clamped at 0, and summed
over layers and steps. DAAM's daam package pins diffusers 0.21, so it cannot be a dependency; its algorithm is
short, and this version also keeps the lowest-resolution layers and non-square images.

Tokens map back to words through t2i's own chunking (t2i.sampling.text): a prompt longer than 75 tokens or cut
by BREAK is several 77-token chunks side by side in the context, so position c * 77 + p is token p of chunk c;
a word is the tokens up to one ending a word ("</w>"), and its map the sum of theirs. Emphasis weights are
kept beside each word.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image, ImageDraw

from t2i.sampling.prompts import parse_prompt
from t2i.sampling.text import chunk_prompt


@dataclass(frozen=True)
class Word:
    text: str
    positions: tuple[int, ...]  # token positions in the joined context
    weight: float  # the emphasis weight its tokens carry


@dataclass(frozen=True)
class AttentionMaps:
    """One image's maps: `maps[i]` is `words[i]`'s heat map at the image's size (unnormalised); `tokens`
    holds every context position's map at the latent's size (padding included)."""

    words: tuple[Word, ...]
    maps: torch.Tensor  # (words, height, width)
    tokens: torch.Tensor  # (context length, latent height, latent width)

    def tiles(self, image: Image.Image) -> list[Image.Image]:
        """One tile per word: its map, normalised, over the image in red, labelled (with its weight if not 1)."""
        base = image.convert("RGB")
        tiles = []
        for word, heat in zip(self.words, self.maps):
            scaled = (heat / heat.max().clamp(min=1e-12)).clamp(0, 1).numpy()
            red = Image.new("RGB", base.size, (255, 0, 0))
            mask = Image.fromarray((scaled * 200).astype("uint8"), "L")
            tile = Image.composite(red, base, mask)
            label = word.text if word.weight == 1 else f"{word.text} ({word.weight:g})"
            ImageDraw.Draw(tile).text((2, 1), label, fill=(0, 0, 0))
            tiles.append(tile)
        return tiles

    def overlay(self, image: Image.Image) -> Image.Image:
        """The image, then its word tiles, in a row."""
        tiles = [image.convert("RGB"), *self.tiles(image)]
        width, height = tiles[0].size
        grid = Image.new("RGB", (width * len(tiles), height), "white")
        for index, tile in enumerate(tiles):
            grid.paste(tile, (index * width, 0))
        return grid


def prompt_words(tokenizer, prompt: str, emphasis: str, embeddings=None) -> tuple[Word, ...]:
    """The prompt's words with their positions in the joined context (start and end tokens and padding left out)."""
    chunks = chunk_prompt(tokenizer, parse_prompt(prompt, emphasis), embeddings)
    words: list[Word] = []
    pending: list[int] = []
    text = ""
    for index, chunk in enumerate(chunks):
        ids = list(chunk.ids)
        used = next((n for n in range(1, 76) if ids[n] == tokenizer.eos_token_id), 76)
        for position in range(1, used):
            token = tokenizer.convert_ids_to_tokens(ids[position])
            pending.append(index * 77 + position)
            text += token.replace("</w>", "")
            if token.endswith("</w>"):
                words.append(Word(text, tuple(pending), chunk.weights[position]))
                pending, text = [], ""
    if pending:
        words.append(Word(text, tuple(pending), 1.0))
    return tuple(words)


class MapStore:
    """The summed per-token maps of one pipeline call, at the latent's size."""

    def __init__(self, chunks: int, cond_index: int):
        self.chunks, self.cond_index = chunks, cond_index  # the batch's parts and which is conditional
        self.latent_size: tuple[int, int] | None = None  # of the pipeline's current UNet call, and its batch
        self.batch = 0
        self.total: torch.Tensor | None = None  # (images, tokens, H, W)

    def reset(self) -> None:
        self.total = None

    def see(self, attn, hidden_states, context) -> None:
        batch = hidden_states.shape[0]
        if self.latent_size is None or batch != self.batch:  # not the pipeline's call (SAG's extra pass)
            return
        count = batch // self.chunks
        part = slice(self.cond_index * count, (self.cond_index + 1) * count)
        hidden, context = hidden_states[part], context[part]
        with torch.no_grad():
            query = attn.head_to_batch_dim(attn.to_q(hidden))
            key = attn.head_to_batch_dim(attn.to_k(context))
            probabilities = attn.get_attention_scores(query, key).float()  # (count * heads, HW, tokens)
        heads = attn.heads
        height, width = self.latent_size
        cells = probabilities.shape[1]
        factor = round((height * width / cells) ** 0.5)
        rows, columns = -(-height // factor), -(-width // factor)
        if rows * columns != cells:
            return  # a layout this reading cannot place (never in SD UNets)
        maps = probabilities.reshape(count, heads, rows, columns, -1).mean(1).permute(0, 3, 1, 2)
        maps = F.interpolate(maps, size=(height, width), mode="bicubic", align_corners=False).clamp(min=0)
        self.total = maps if self.total is None else self.total + maps


class StoringCrossAttention(AttnProcessor2_0):
    """diffusers' default attention (its output, bit for bit), reading the probabilities beside it."""

    def __init__(self, store: MapStore):
        super().__init__()
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is not None and hidden_states.dim() == 3:
            self.store.see(attn, hidden_states, encoder_hidden_states)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def watch_cross_attention(unet, cfg: bool, pag: bool) -> MapStore:
    """Store cross-attention maps from `unet` (a per-call copy); the batch's layout is [unconditional,]
    conditional[, perturbed] (CFG, PAG), and the latent's size is read before each pipeline call."""
    store = MapStore(1 + cfg + pag, 1 if cfg else 0)
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            module.set_processor(StoringCrossAttention(store))

    def before_call(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        store.latent_size, store.batch = tuple(sample.shape[-2:]), sample.shape[0]

    unet.register_forward_pre_hook(before_call, with_kwargs=True)
    unet.attention_store = store
    return store


def check_filter(wanted: tuple[str, ...], words: dict[str, tuple[Word, ...]]) -> None:
    """Each word the maps are filtered to must be a word of some prompt."""
    from t2i.errors import check

    known = {w.text for found in words.values() for w in found}
    for word in wanted:
        check(word in known, "attention_words", word, "is not a word of the prompt",
              choices=sorted(known)[:20] or ["(the prompt has no words)"])


def image_maps(store: MapStore, index: int, words: tuple[Word, ...], size: tuple[int, int],
               wanted: tuple[str, ...] = ()) -> AttentionMaps:
    """Image `index`'s maps: per token at the latent's size, per word at the image's (width, height); with
    `wanted`, of those words only."""
    assert store.total is not None
    words = tuple(w for w in words if not wanted or w.text in wanted)
    tokens = store.total[index].cpu()
    per_word = torch.stack([tokens[list(w.positions)].sum(0) for w in words]) if words else tokens[:0]
    upsampled = F.interpolate(per_word[None], size=(size[1], size[0]), mode="bicubic",
                              align_corners=False)[0].clamp(min=0) if words else per_word
    return AttentionMaps(words, upsampled, tokens)
