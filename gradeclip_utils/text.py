"""Tokenisation helpers: token ids with truncation warnings, readable BPE pieces, and words."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING, Sequence

import torch

from .inputs import warn_user

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


def tokenize(model: "LoadedModel", texts: str | Sequence[str]) -> torch.Tensor:
    """Token ids (K, L) for the model's text tower; warns (pointing at the caller's line) when a text
    is cut to the context length, start and end tokens included."""
    texts = as_text_list(texts, "texts")
    simple = _simple_tokenizer(model.tokenizer)
    length = model.context_length
    if simple is not None:
        for text in texts:
            pieces = len(simple.encode(text))
            if pieces + 2 > length:
                warn_user(f"text of {pieces} tokens is cut to the context length {length} "
                          f"(start and end tokens included): {text[:60]!r}...")
    return model.tokenizer(texts).to(model.device)


def token_pieces(model: "LoadedModel", ids: Sequence[int]) -> list[str]:
    """Readable BPE pieces for token ids; a piece that ends a word ends with '</w>'.

    Pieces are byte-level: a character of several UTF-8 bytes (accents, emoji) may be split over
    pieces. It is decoded across them: the piece that completes it shows it, the earlier ones are
    empty, so that the pieces of a word join to the word.
    """
    simple = _simple_tokenizer(model.tokenizer)
    if simple is None:
        raise NotImplementedError(
            f"word importance needs open_clip's SimpleTokenizer; {type(model.tokenizer).__name__} is not supported yet")
    pieces = []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in ids:
        piece = simple.decoder[int(token)]
        end = piece.endswith("</w>")
        body = piece[:-4] if end else piece
        text = decoder.decode(bytes(simple.byte_decoder[c] for c in body), final=end)
        if end:
            decoder.reset()
        pieces.append(text + ("</w>" if end else ""))
    if pieces and not pieces[-1].endswith("</w>"):  # a text cut mid-word: flush what is left
        pieces[-1] += decoder.decode(b"", final=True)
    return pieces


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
