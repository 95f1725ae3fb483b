"""Tokenisation helpers: token ids with truncation warnings, readable BPE pieces, and words."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .notices import warn_user

if TYPE_CHECKING:
    from .loading import LoadedModel


def as_text_list(texts: str | Sequence[str], what: str = "prompts") -> list[str]:
    """Validate texts: a string or a non-empty list or tuple of strings (an empty or whitespace-only
    string is allowed: it tokenises to the start and end tokens alone)."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (list, tuple)):
        if not texts:
            raise ValueError(f"{what} is empty: give at least one text")
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"{what} must be strings; got {type(bad[0]).__name__}")
        return list(texts)
    raise TypeError(f"{what} must be a string or a list of strings, got {type(texts).__name__}")


def _simple_tokenizer(tokenizer):
    """open_clip's SimpleTokenizer behind ``tokenizer``, or None for other tokenizers."""
    return tokenizer if hasattr(tokenizer, "byte_decoder") and hasattr(tokenizer, "encode") else None


#: ordinary words that every usable CLIP tokenizer maps to distinct, known ids
PROBE_WORDS = ("photo", "dog", "red", "car", "tree")


class HFTokenizer:
    """A Hugging Face tokenizer (``CLIPTokenizer`` / ``CLIPTokenizerFast``) as the callable the package
    uses: texts to (K, context_length) id tensors, cut to the context length and padded after the end
    token with 0, as OpenAI's ``clip.tokenize`` and open_clip pad (Hugging Face pads with the end token).
    Under the causal mask the embedding does not depend on the padding, but Grad-ECLIP's word
    importance does (its spatial weight is min-max normalised over every position, padding included,
    as the authors compute it), so both tokenizers give the same words and the same importance."""

    def __init__(self, tokenizer, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, int(context_length)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                                 return_tensors="pt")
        ids = encoded["input_ids"].long()
        end = getattr(self.tokenizer, "eos_token_id", None)
        if end is not None:
            is_end = ids == end
            first = torch.where(is_end.any(dim=1), is_end.int().argmax(dim=1), torch.full_like(ids[:, 0], ids.shape[1]))
            ids = ids.masked_fill(torch.arange(ids.shape[1])[None] > first[:, None], 0)
        return ids

    def count(self, text: str) -> int:
        """Tokens of ``text`` without the start and end tokens."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def special_tokens(self) -> int:
        """How many start and end tokens the tokenizer adds to a text (CLIP's and BERT's 2)."""
        return special_token_count(self.tokenizer)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return list(self.tokenizer.convert_ids_to_tokens([int(i) for i in ids]))


def special_token_count(tokenizer: Any) -> int:
    """How many special tokens a Hugging Face ``tokenizer`` adds to one text (2 for CLIP's start and end and
    for BERT's [CLS] and [SEP]; 1 for SigLIP's end token alone)."""
    return len(tokenizer("", add_special_tokens=True)["input_ids"])


def _is_hf_tokenizer(tokenizer) -> bool:
    return hasattr(tokenizer, "convert_ids_to_tokens") and hasattr(tokenizer, "unk_token_id")


def checked_tokenizer(tokenizer, context_length: int, vocab_size: int | None = None):
    """A tokenizer a user passed, wrapped (Hugging Face tokenizers) and checked on ordinary words: they
    must get distinct ids, none of them the unknown token, all inside the model's vocabulary, in
    sequences no longer than the context length. An offline ``from_pretrained`` can silently return a
    stub that maps every word to the unknown token; that is refused here rather than explained."""
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be callable (texts -> token ids), got {type(tokenizer).__name__}")
    if _is_hf_tokenizer(tokenizer):
        tokenizer = HFTokenizer(tokenizer, context_length)
    ids = tokenizer(list(PROBE_WORDS))
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype not in (torch.long, torch.int, torch.int32):
        raise TypeError(f"the tokenizer must return a (K, L) integer tensor, got {type(ids).__name__}"
                        + (f" of shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else ""))
    if ids.shape[1] > context_length:
        raise ValueError(f"the tokenizer gives sequences of {ids.shape[1]} tokens; the text tower holds {context_length}")
    if vocab_size is not None and int(ids.max()) >= vocab_size:
        raise ValueError(f"the tokenizer gives id {int(ids.max())}, outside the text tower's vocabulary of {vocab_size}")
    inner = getattr(tokenizer, "tokenizer", None)
    unknown = getattr(inner, "unk_token_id", None)
    words = [set(row.tolist()) for row in ids]
    special = set.intersection(*words)  # start, end and padding: in every row
    content = [row - special for row in words]
    if any(not row for row in content) or len(set.union(*content)) < len(PROBE_WORDS) \
            or (unknown is not None and any(unknown in row for row in content)):
        raise ValueError(
            f"the tokenizer maps ordinary words {PROBE_WORDS} to unknown or identical ids ({ids.tolist()}): it is not "
            "a usable CLIP tokenizer (an offline from_pretrained can return such a stub). Leave tokenizer=None for "
            "open_clip's bundled CLIP tokenizer, which gives the same ids for CLIP checkpoints.")
    return tokenizer


def tokenize(model: "LoadedModel", texts: str | Sequence[str]) -> torch.Tensor:
    """Token ids (K, L) for the model's text tower; warns (pointing at the caller's line) when a text
    is cut to the context length, the tokenizer's start and end tokens included."""
    texts = as_text_list(texts, "texts")
    simple = _simple_tokenizer(model.tokenizer)
    count = (lambda t: len(simple.encode(t))) if simple is not None else getattr(model.tokenizer, "count", None)
    length = model.context_length
    special = getattr(model.tokenizer, "special_tokens", 2)  # a wrapped tokenizer's own; CLIP's start and end
    if count is not None:
        for text in texts:
            pieces = count(text)
            if pieces + special > length:
                warn_user(f"text of {pieces} tokens is cut to the context length {length} "
                          f"({special} start/end token{'s' if special != 1 else ''} included): {text[:60]!r}...")
    return model.tokenizer(texts).to(model.device)


def has_words(text: str) -> bool:
    """Whether ``text`` has a letter or a digit: a prompt of punctuation or spaces alone has no words (it is
    still embedded and scored, but names nothing)."""
    return any(character.isalnum() for character in text)


def _all_token_ids(model: "LoadedModel", text: str) -> list[int] | None:
    """Every BPE id of ``text`` (no start or end token, no cut to the context length), or None for a
    tokenizer that cannot tell."""
    simple = _simple_tokenizer(model.tokenizer)
    if simple is not None:
        return list(simple.encode(text))
    if hasattr(model.tokenizer, "all_ids"):
        return list(model.tokenizer.all_ids(text))
    if isinstance(model.tokenizer, HFTokenizer):
        return list(model.tokenizer.tokenizer(text, add_special_tokens=False)["input_ids"])
    return None


def cut_words(model: "LoadedModel", text: str, kept: Sequence[str]) -> list[str]:
    """The words of ``text`` that the cut to the context length left out, given the BPE pieces that were
    kept (``token_pieces`` of the tokenised text): [] when the whole text fits. A word cut in the middle
    counts as left out (its end was)."""
    ids = _all_token_ids(model, text)
    if ids is None or len(ids) <= len(kept):
        return []
    words = [word for word, _ in group_words(token_pieces(model, ids))]
    whole = len(group_words(kept)) - (1 if kept and not kept[-1].endswith("</w>") else 0)
    return words[whole:]


def cut_note(words: Sequence[str], limit: int = 8) -> str:
    """"cut at the context length: ignored “in blue …” (12 words)": what a text cut to the context length
    lost, its first ``limit`` words quoted ("" when nothing was cut)."""
    if not words:
        return ""
    shown = " ".join(words[:limit]) + (" \u2026" if len(words) > limit else "")
    return f"cut at the context length: ignored \u201c{shown}\u201d ({len(words)} word{'s' if len(words) != 1 else ''})"


def token_pieces(model: "LoadedModel", ids: Sequence[int]) -> list[str]:
    """Readable BPE pieces for token ids; a piece that ends a word ends with '</w>'.

    Pieces are byte-level: a character of several UTF-8 bytes (accents, emoji) may be split over
    pieces. It is decoded across them: the piece that completes it shows it, the earlier ones are
    empty, so that the pieces of a word join to the word.
    """
    if hasattr(model.tokenizer, "readable_pieces"):  # a tokenizer that is not byte-level BPE says it itself
        return model.tokenizer.readable_pieces(ids)
    simple = _simple_tokenizer(model.tokenizer)
    if getattr(model.tokenizer, "plain_pieces", False):  # pieces of text already (a WordPiece tokenizer's), not bytes
        return list(model.tokenizer.pieces(ids))
    if simple is not None:
        raw = [simple.decoder[int(token)] for token in ids]
    elif hasattr(model.tokenizer, "pieces"):
        raw = model.tokenizer.pieces(ids)
    else:
        raise NotImplementedError(
            f"word importance needs a CLIP byte-pair tokenizer (open_clip's, or a Hugging Face CLIPTokenizer); "
            f"{type(model.tokenizer).__name__} is not one")
    byte_decoder = _byte_decoder()
    pieces = []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for piece in raw:
        end = piece.endswith("</w>")
        body = piece[:-4] if end else piece
        text = decoder.decode(bytes(byte_decoder[c] for c in body if c in byte_decoder), final=end)
        if end:
            decoder.reset()
        pieces.append(text + ("</w>" if end else ""))
    if pieces and not pieces[-1].endswith("</w>"):  # a text cut mid-word: flush what is left
        pieces[-1] += decoder.decode(b"", final=True)
    return pieces


def word_spans(model: "LoadedModel", tokens: torch.Tensor) -> list[tuple[int, int]]:
    """Where the words of each (K, L) token sequence are, (start, end) positions: the tokenizer's own
    ``spans`` where it has them (SigLIP's: no start token, padding after the end token); else CLIP's, from
    after the start token up to the end token the text tower pools at."""
    if hasattr(model.tokenizer, "spans"):
        return [tuple(span) for span in model.tokenizer.spans(tokens.cpu())]
    eos = model.adapter.text_word_end(tokens).cpu()  # CLIP's pooled end token; BLIP's [SEP]
    return [(1, int(end)) for end in eos]


def _byte_decoder() -> dict[str, int]:
    """CLIP's byte-level BPE alphabet back to bytes (the same table in open_clip and transformers)."""
    from open_clip.tokenizer import bytes_to_unicode

    return {v: k for k, v in bytes_to_unicode().items()}


def group_words(pieces: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Group BPE pieces into words: (word, indices of its pieces)."""
    words: list[tuple[str, list[int]]] = []
    current, members = "", []
    for index, piece in enumerate(pieces):
        end = piece.endswith("</w>")
        current += piece[:-4] if end else piece
        members.append(index)
        if end:
            words.append((current, members))
            current, members = "", []
    if members:
        words.append((current, members))
    return words


def display_piece(piece: str) -> str:
    return piece[:-4] if piece.endswith("</w>") else piece
