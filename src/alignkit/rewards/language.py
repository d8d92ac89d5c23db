"""Language-consistency reward (DeepSeek-R1, reasoning-oriented RL; lecture R1-06, definition from the paper).

R = (words of the reasoning written in the target language's script) / (all script-bearing words of it).

The reasoning is the completion without its answer blocks (``<answer>...</answer>``; an unclosed one runs
to the end) and without the tags themselves: the think block, and any text outside it, is judged -- moving
off-language text out of the think block does not hide it. Words are counted by Unicode script, not by
language:

- alphabetic scripts (Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Thai, Hangul): a run of letters
  of the script is one word; a Latin run of one letter is not counted (it is almost always a variable: "x");
- Han, Hiragana and Katakana: every character is one word (Chinese and Japanese write no spaces);
- digits, punctuation, symbols and LaTeX commands (``\\frac``) are not words.

Languages: en, fr, de, es, it, pt, nl, vi, id, tr (Latin), zh (Han), ja (Han + kana), ko (Hangul, Han),
ru, uk (Cyrillic), el (Greek), ar (Arabic), he (Hebrew), hi (Devanagari), th (Thai); a script name
("latin", "han", ...) works too. So "en" accepts any Latin-script word (French included): the reward catches
script switching (English <-> Chinese), the failure R1 reports, not switching between Latin-script languages.

Decided: reasoning with no script-bearing word but some content (a digit: "23+45=68", the arithmetic task's
traces) gets 1.0 -- nothing in it is inconsistent; reasoning with no letter or digit at all (an empty
completion, an empty think block, punctuation only, or only an answer block) gets 0.0 -- there is nothing
to be consistent.

Threat model: what a policy may try and what this reward does

- drop the reasoning (empty completion, ``<think></think>``, only ``<answer>48</answer>``): 0.0.
- write the reasoning outside the think block in another script, with a short on-language think block:
  counted, since everything but the answer is judged.
- hide words in tags: the tag names (``<think>``) are not words.
- limits (not refused): padding with target-language filler words raises the share (the ratio is R1's
  definition), and digits/symbols-only reasoning gets 1.0; code in the reasoning counts as Latin words.
  Weight it small beside accuracy (R1 adds it to accuracy), so that neither pays more than solving.
"""

from __future__ import annotations

import re

_SCRIPTS = {
    "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "cyrillic": "\u0400-\u04ff",
    "greek": "\u0370-\u03ff",
    "arabic": "\u0600-\u06ff",
    "hebrew": "\u0590-\u05ff",
    "devanagari": "\u0900-\u097f",
    "thai": "\u0e00-\u0e7f",
    "hangul": "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af",
}
_CHARACTER_SCRIPTS = {  # one character = one word
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df",
    "kana": "\u3040-\u309f\u30a0-\u30ff",
}
_WORD = re.compile(
    r"\\[A-Za-z]+"  # LaTeX command: skipped
    + "".join(f"|(?P<{name}>[{chars}]{{{2 if name == 'latin' else 1},}})" for name, chars in _SCRIPTS.items())
    + "".join(f"|(?P<{name}>[{chars}])" for name, chars in _CHARACTER_SCRIPTS.items())
)
_LANGUAGES = {
    **{code: {"latin"} for code in ("en", "fr", "de", "es", "it", "pt", "nl", "vi", "id", "tr")},
    "zh": {"han"}, "ja": {"han", "kana"}, "ko": {"hangul", "han"}, "ru": {"cyrillic"}, "uk": {"cyrillic"},
    "el": {"greek"}, "ar": {"arabic"}, "he": {"hebrew"}, "hi": {"devanagari"}, "th": {"thai"},
    **{name: {name} for name in (*_SCRIPTS, *_CHARACTER_SCRIPTS)},
}
_ANSWER_BLOCK = re.compile(r"<answer>.*?(?:</answer>|$)", re.DOTALL)
_TAG = re.compile(r"</?(?:think|answer)>")
_CONTENT = re.compile(r"\w")


def reasoning_text(completion: str) -> str:
    """The completion without its answer blocks and without think/answer tags (what the reward judges).

    >>> reasoning_text("<think>a b</think><answer>c</answer>"), reasoning_text("no tags")
    ('a b', 'no tags')
    """
    return _TAG.sub(" ", _ANSWER_BLOCK.sub(" ", completion)).strip()


def script_word_counts(text: str) -> dict[str, int]:
    """Words per script (see the module docstring for what a word is).

    >>> script_word_counts("设 x = 5，then 2x = 10")
    {'han': 1, 'latin': 1}
    """
    counts: dict[str, int] = {}
    for m in _WORD.finditer(text):
        if m.lastgroup is not None:
            counts[m.lastgroup] = counts.get(m.lastgroup, 0) + 1
    return counts


def language_consistency_reward(completion: str, *, language: str = "en", **_: object) -> float:
    """Share of the reasoning's script-bearing words written in ``language``'s script, in [0, 1].

    >>> language_consistency_reward("<think>First, 12 times 3 is 36.</think><answer>36</answer>")
    1.0
    >>> language_consistency_reward("<think>首先 compute the sum</think><answer>3</answer>", language="zh")
    0.4
    >>> language_consistency_reward("<think>23+45=68</think><answer>68</answer>"), language_consistency_reward("")
    (1.0, 0.0)
    """
    scripts = _LANGUAGES.get(language.lower())
    if scripts is None:
        raise ValueError(f"unknown language {language!r}; known: {', '.join(sorted(_LANGUAGES))}")
    text = reasoning_text(completion)
    counts = script_word_counts(text)
    total = sum(counts.values())
    if total == 0:  # no word: 1.0 for a numeric trace, 0.0 for no reasoning at all (module docstring)
        return 1.0 if _CONTENT.search(text) else 0.0
    return sum(counts.get(s, 0) for s in scripts) / total
