"""A CLIP tokenizer over a small word list, generated in code (no download).

Byte-level BPE in CLIP's file format (``vocab.json`` + ``merges.txt``): every byte is in the
vocabulary, so any text tokenizes, and the merges spell each listed word as a single token. Used
by the tiny test pipeline and by the bundled mini model.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

#: CLIP's special tokens; the tokenizer uses ``<|endoftext|>`` for unknown and padding too.
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE mapping of every byte to a printable character (as GPT-2 and CLIP use).

    Printable Latin-1 bytes stand for themselves; the others are shifted to code points from 256
    up, so that no byte maps to whitespace or a control character.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: repeatedly merge every occurrence of the best-ranked pair."""
    while len(symbols) > 1:
        pairs = set(itertools.pairwise(symbols))
        best = min(pairs, key=lambda p: ranks.get(p, len(ranks)))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _tiny_vocab_and_merges(words: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """A CLIP-format vocabulary and merge list that spell each word in ``words`` as one token.

    Every byte is in the vocabulary both alone and as a word ending (``"x</w>"``), so any text
    can be tokenized. For each word in turn, the merges made so far are applied (they may split
    it differently than left to right: "bottom" meets the "t o" of "top" first), and merges that
    join the resulting pieces are appended. Appended merges rank below all earlier ones, so they
    never change how an earlier word is spelled.
    """
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    known = set(tokens)
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _apply_bpe([*word[:-1], word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            ranks.setdefault((pieces[0], pieces[1]), len(ranks))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            if pieces[0] not in known:
                known.add(pieces[0])
                tokens.append(pieces[0])
    # CLIP puts the special tokens last.
    tokens += [_BOS, _EOS]
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return {token: i for i, token in enumerate(tokens)}, merges


def make_word_tokenizer(words: tuple[str, ...], *, max_length: int = 77) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` that spells each of ``words`` (lowercase) as one token.

    The vocabulary and merges are written as ``vocab.json`` / ``merges.txt`` to a temporary
    directory and loaded from there, the same way a downloaded CLIP tokenizer is, so this works
    with both the Python and the Rust-backed tokenizer classes of transformers.

    Args:
        words: the words to know as whole tokens.
        max_length: prompts are padded and truncated to this many tokens.

    Example:
        >>> tok = make_word_tokenizer(("a", "dog"), max_length=8)
        >>> tok.convert_ids_to_tokens(tok("a dog").input_ids)
        ['<|startoftext|>', 'a</w>', 'dog</w>', '<|endoftext|>']
    """
    from transformers import CLIPTokenizer

    vocab, merges = _tiny_vocab_and_merges(words)
    with tempfile.TemporaryDirectory(prefix="conesreg-tokenizer-") as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        # The first line of merges.txt is a version header that every reader skips.
        (folder / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
        )
        # Loaded while the files still exist; the tokenizer keeps no reference to them.
        return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)
