"""Does an explanation name a word? Exact or inflected forms, no network lemmatiser.

The rule: lower-case both, split the explanation into word tokens, and accept when a token is one of
the target's inflectional forms (plural / third person `-s`, `-es`, `-ies`; past `-ed`, `-d`,
`-ied`; `-ing` with e-drop and consonant doubling; comparatives `-er`/`-est` for adjectives only;
irregular forms from a small table) or when the token and the target share a base form after undoing
those inflections. Derivations (`happiness` for `happy`), synonyms and hypernyms are not hits: a
class concept lists its accepted hypernyms explicitly. Multi-word targets (`body part`) match as a
run of consecutive tokens, each matching its word.

Deliberately conservative: a false hit inflates the score, a false miss only understates it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_VOWELS = set("aeiou")

# Irregular inflection groups: every form in a group shares the first entry as its base.
_IRREGULAR_GROUPS = [
    "be am is are was were been being", "have has had having", "do does did done doing",
    "go goes went gone going", "make makes made making", "take takes took taken taking",
    "see sees saw seen seeing", "come comes came coming", "know knows knew known knowing",
    "give gives gave given giving", "find finds found finding", "think thinks thought thinking",
    "tell tells told telling", "become becomes became becoming", "leave leaves left leaving",
    "feel feels felt feeling", "bring brings brought bringing", "begin begins began begun beginning",
    "keep keeps kept keeping", "hold holds held holding", "write writes wrote written writing",
    "stand stands stood standing", "hear hears heard hearing", "run runs ran running",
    "swim swims swam swum swimming", "fly flies flew flown flying", "eat eats ate eaten eating",
    "drink drinks drank drunk drinking", "sit sits sat sitting", "sleep sleeps slept sleeping",
    "speak speaks spoke spoken speaking", "sing sings sang sung singing", "buy buys bought buying",
    "sell sells sold selling", "pay pays paid paying", "spend spends spent spending",
    "steal steals stole stolen stealing", "build builds built building",
    "break breaks broke broken breaking", "throw throws threw thrown throwing",
    "catch catches caught catching", "hit hits hitting", "drive drives drove driven driving",
    "ride rides rode ridden riding", "fall falls fell fallen falling", "grow grows grew grown growing",
    "rise rises rose risen rising", "win wins won winning", "lose loses lost losing",
    "fight fights fought fighting", "teach teaches taught teaching", "read reads reading",
    "learn learns learned learnt learning", "understand understands understood understanding",
    "forget forgets forgot forgotten forgetting", "hide hides hid hidden hiding",
    "freeze freezes froze frozen freezing", "draw draws drew drawn drawing",
    "burn burns burned burnt burning", "cut cuts cutting", "put puts putting", "let lets letting",
    "shut shuts shutting", "set sets setting", "die dies died dying", "lie lies lay lain lying",
    "tie ties tied tying", "say says said saying", "get gets got gotten getting",
    "send sends sent sending", "meet meets met meeting", "lead leads led leading",
    "mean means meant meaning", "wear wears wore worn wearing", "bite bites bit bitten biting",
    "shoot shoots shot shooting", "dream dreams dreamed dreamt dreaming",
    "man men", "woman women", "child children", "person people", "foot feet", "tooth teeth",
    "mouse mice", "goose geese", "ox oxen", "sheep", "fish", "deer", "knife knives", "wife wives",
    "wolf wolves", "leaf leaves", "life lives", "half halves", "shelf shelves", "loaf loaves",
    "thief thieves", "calf calves", "scissors", "clothes", "potato potatoes", "tomato tomatoes",
    "hero heroes", "good better best", "bad worse worst", "far farther further farthest furthest",
    "little less least", "many more most", "much more most", "i me my mine",
    "we us our ours", "he him his", "she her hers", "they them their theirs",
]
_BASE_OF: dict[str, set[str]] = {}
_GROUP_OF: dict[str, set[str]] = {}
for _line in _IRREGULAR_GROUPS:
    _forms = _line.split()
    for _form in _forms:
        _BASE_OF.setdefault(_form, set()).add(_forms[0])
        _GROUP_OF.setdefault(_forms[0], set()).update(_forms)

_MIN_STEM = 3
"""Undoing a suffix must leave at least this many letters (`red` is not `r` + `-ed`)."""


def tokens(text: str) -> list[str]:
    """Lower-case word tokens of `text`; a possessive `'s` is dropped (`dog's` -> `dog`)."""
    out = []
    for token in _TOKEN.findall(text.lower().replace("\u2019", "'")):
        if token.endswith("'s"):
            token = token[:-2]
        out.append(token.strip("'"))
    return [t for t in out if t]


def _consonant(ch: str) -> bool:
    return ch.isalpha() and ch not in _VOWELS


def _doubles(word: str) -> bool:
    """Whether `word` doubles its last consonant before -ing/-ed (stop -> stopping); CVC rule."""
    return (
        len(word) >= 3 and _consonant(word[-1]) and word[-1] not in "wxy"
        and word[-2] in _VOWELS and _consonant(word[-3])
    )


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in _VOWELS:
        return word[:-1] + "ies"
    return word + "s"


@lru_cache(maxsize=8192)
def word_forms(word: str, pos: str | None = None) -> frozenset[str]:
    """The inflectional forms of `word` (lower-cased); `pos` adj adds -er/-est, verb/None -ed/-ing.

    >>> sorted(word_forms("stop"))
    ['stop', 'stopped', 'stopping', 'stops']
    """
    word = word.lower().strip()
    forms = {word}
    for base in _BASE_OF.get(word, {word}):
        forms |= _GROUP_OF.get(base, {base})
    if word in _BASE_OF:
        return frozenset(forms)  # irregular: the table is the whole story
    if pos in (None, "verb", "noun"):
        forms.add(_plural(word))
        if word.endswith("e"):
            forms |= {word + "d", word[:-1] + "ing"}
            if word.endswith("ie"):
                forms.add(word[:-2] + "ying")
        elif word.endswith("y") and len(word) > 1 and word[-2] not in _VOWELS:
            forms |= {word[:-1] + "ied", word + "ing"}
        elif _doubles(word):
            forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}
        else:
            forms |= {word + "ed", word + "ing"}
    if pos == "adj":
        if word.endswith("e"):
            forms |= {word + "r", word + "st"}
        elif word.endswith("y") and len(word) > 1 and word[-2] not in _VOWELS:
            forms |= {word[:-1] + "ier", word[:-1] + "iest"}
        elif _doubles(word):
            forms |= {word + word[-1] + "er", word + word[-1] + "est"}
        else:
            forms |= {word + "er", word + "est"}
    return frozenset(forms)


@lru_cache(maxsize=65536)
def base_forms(token: str) -> frozenset[str]:
    """Candidate base forms of a (possibly inflected) word: itself plus undone -s/-ed/-ing/-er/-est.

    Over-generates on purpose (`seed` -> `see`); `target_forms` keeps only the bases that really
    inflect back to the word."""
    token = token.lower()
    if token in _BASE_OF:
        return frozenset(_BASE_OF[token] | {token})
    out = {token}

    def add(stem: str) -> None:
        if len(stem) >= _MIN_STEM:
            out.add(stem)

    if token.endswith("ies"):
        add(token[:-3] + "y")
    elif token.endswith("es") and token[:-2].endswith(("s", "x", "z", "ch", "sh", "o")):
        add(token[:-2])
    elif token.endswith("s") and not token.endswith("ss"):
        add(token[:-1])
    for suffix in ("ed", "ing", "er", "est"):
        if not token.endswith(suffix):
            continue
        stem = token[: -len(suffix)]
        if suffix == "ed" and stem.endswith("i"):
            add(stem[:-1] + "y")
            continue
        add(stem)
        add(stem + "e")
        if len(stem) >= 2 and stem[-1] == stem[-2] and _consonant(stem[-1]):
            add(stem[:-1])
    return frozenset(out)


@lru_cache(maxsize=8192)
def target_forms(word: str, pos: str | None = None) -> frozenset[str]:
    """Every form accepted for `word`: its inflections and, when `word` is itself an inflected form
    (`dreams`, `tired`), the inflections of its base (`dream`, `tire`)."""
    word = word.lower().strip()
    forms = set(word_forms(word, pos))
    for base in base_forms(word) - {word}:
        if word in word_forms(base, None) or word in word_forms(base, "adj"):
            forms |= word_forms(base, None) | word_forms(base, pos)
    return frozenset(forms)


def token_matches(token: str, word: str, pos: str | None = None) -> bool:
    """Whether one text token names `word` (generated forward from the target, never guessed
    backwards from the text: `seed` does not name `see`)."""
    return token.lower() in target_forms(word, pos)


def names(text: str, answer: str, pos: str | None = None) -> bool:
    """Whether `text` names `answer` (one word, or a phrase matched as consecutive tokens)."""
    target = tokens(answer)
    if not target:
        return False
    seen = tokens(text)
    width = len(target)
    for start in range(len(seen) - width + 1):
        window = seen[start : start + width]
        # only the last word of a phrase inflects ("body parts")
        if all(a == b for a, b in zip(window[:-1], target[:-1])) and token_matches(
            window[-1], target[-1], pos if width == 1 else "noun"
        ):
            return True
    return False


def names_any(text: str, answers: Iterable[str], pos: str | None = None) -> str | None:
    """The first of `answers` that `text` names, or None."""
    for answer in answers:
        if names(text, answer, pos):
            return answer
    return None


def same_token(text: str, word: str) -> bool:
    """Exact token recovery: the answer is the word itself (case, quotes and spaces ignored)."""
    text, word = text.strip().lower(), word.strip().lower()
    return text == word or (bool(word) and text.strip("\"'`.,!?").strip() == word)
