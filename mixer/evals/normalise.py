"""Answer normalisation as the benchmarks' own evaluators apply it, and rule-based option extraction.

VQA's and EvalAI's (TextVQA) normalisation, LLaVA's GQA and POPE conversions, MME's yes/no parse, MMBench-style
option extraction for multiple choice.

The VQA rules are the official evaluator's (GT-Vision-Lab/VQA `vqaEval.py`), facts reproduced here, quirks included:
punctuation is deleted when it touches a space (or the text holds a `1,000`-style number) and replaced by a space
otherwise; a `.` not followed by a digit is dropped, at most 32 of them (the evaluator passes `re.UNICODE` where
`re.sub` takes its count); then lower case, number words `none`/`zero`…`ten` → digits, articles dropped, and the
contractions map (apostrophe-less spellings → the spelled form).
"""

from __future__ import annotations

import re

PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_NUMBERS = "zero one two three four five six seven eight nine ten".split()
NUMBER_WORDS = {"none": "0"} | {w: str(i) for i, w in enumerate(_NUMBERS)}
ARTICLES = frozenset({"a", "an", "the"})
# The official evaluator's contractions map, as (spelled form, the apostrophe-less keys that map to it). Its own
# oddities are kept: "somebody'd" maps to "somebodyd" (reversed), "let's" / "she's" map to themselves, the
# capitalised "Im", "Ive", "Id've", "I'dve" can never match lower-cased text, and "'ow'sat" maps to itself.
_CONTRACTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ain't", ("aint",)),
    ("aren't", ("arent",)),
    ("can't", ("cant",)),
    ("could've", ("couldve",)),
    ("couldn't", ("couldnt",)),
    ("couldn't've", ("couldn'tve", "couldnt've")),
    ("didn't", ("didnt",)),
    ("doesn't", ("doesnt",)),
    ("don't", ("dont",)),
    ("hadn't", ("hadnt",)),
    ("hadn't've", ("hadnt've", "hadn'tve")),
    ("hasn't", ("hasnt",)),
    ("haven't", ("havent",)),
    ("he'd", ("hed",)),
    ("he'd've", ("hed've", "he'dve")),
    ("he's", ("hes",)),
    ("how'd", ("howd",)),
    ("how'll", ("howll",)),
    ("how's", ("hows",)),
    ("I'd've", ("Id've", "I'dve")),
    ("I'm", ("Im",)),
    ("I've", ("Ive",)),
    ("isn't", ("isnt",)),
    ("it'd", ("itd",)),
    ("it'd've", ("itd've", "it'dve")),
    ("it'll", ("itll",)),
    ("let's", ("let's",)),
    ("ma'am", ("maam",)),
    ("mightn't", ("mightnt",)),
    ("mightn't've", ("mightnt've", "mightn'tve")),
    ("might've", ("mightve",)),
    ("mustn't", ("mustnt",)),
    ("must've", ("mustve",)),
    ("needn't", ("neednt",)),
    ("not've", ("notve",)),
    ("o'clock", ("oclock",)),
    ("oughtn't", ("oughtnt",)),
    ("'ow's'at", ("ow's'at", "'ows'at")),
    ("'ow'sat", ("'ow'sat",)),
    ("shan't", ("shant",)),
    ("she'd've", ("shed've", "she'dve")),
    ("she's", ("she's",)),
    ("should've", ("shouldve",)),
    ("shouldn't", ("shouldnt",)),
    ("shouldn't've", ("shouldnt've", "shouldn'tve")),
    ("somebodyd", ("somebody'd",)),
    ("somebody'd've", ("somebodyd've", "somebody'dve")),
    ("somebody'll", ("somebodyll",)),
    ("somebody's", ("somebodys",)),
    ("someone'd", ("someoned",)),
    ("someone'd've", ("someoned've", "someone'dve")),
    ("someone'll", ("someonell",)),
    ("someone's", ("someones",)),
    ("something'd", ("somethingd",)),
    ("something'd've", ("somethingd've", "something'dve")),
    ("something'll", ("somethingll",)),
    ("that's", ("thats",)),
    ("there'd", ("thered",)),
    ("there'd've", ("thered've", "there'dve")),
    ("there're", ("therere",)),
    ("there's", ("theres",)),
    ("they'd", ("theyd",)),
    ("they'd've", ("theyd've", "they'dve")),
    ("they'll", ("theyll",)),
    ("they're", ("theyre",)),
    ("they've", ("theyve",)),
    ("'twas", ("twas",)),
    ("wasn't", ("wasnt",)),
    ("we'd've", ("wed've", "we'dve")),
    ("we've", ("weve",)),
    ("weren't", ("werent",)),
    ("what'll", ("whatll",)),
    ("what're", ("whatre",)),
    ("what's", ("whats",)),
    ("what've", ("whatve",)),
    ("when's", ("whens",)),
    ("where'd", ("whered",)),
    ("where's", ("wheres",)),
    ("where've", ("whereve",)),
    ("who'd", ("whod",)),
    ("who'd've", ("whod've", "who'dve")),
    ("who'll", ("wholl",)),
    ("who's", ("whos",)),
    ("who've", ("whove",)),
    ("why'll", ("whyll",)),
    ("why're", ("whyre",)),
    ("why's", ("whys",)),
    ("won't", ("wont",)),
    ("would've", ("wouldve",)),
    ("wouldn't", ("wouldnt",)),
    ("wouldn't've", ("wouldnt've", "wouldn'tve")),
    ("y'all", ("yall",)),
    ("y'all'll", ("yall'll", "y'allll")),
    ("y'all'd've", ("yall'd've", "y'alld've", "y'all'dve")),
    ("you'd", ("youd",)),
    ("you'd've", ("youd've", "you'dve")),
    ("you'll", ("youll",)),
    ("you're", ("youre",)),
    ("you've", ("youve",)),
)
CONTRACTIONS = {key: spelled for spelled, keys in _CONTRACTIONS for key in keys}

_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
# The evaluator's pattern opens with `(?!<=\d)`, a look-ahead (not the look-behind it meant) that never fails before
# a "."; what is left: a "." not followed by a digit.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_LIMIT = 32  # re.UNICODE's value, passed as the count


def vqa_punctuation(text: str) -> str:
    """The evaluator's `processPunctuation`."""
    out = text
    glue = _COMMA_NUMBER.search(text) is not None
    for p in PUNCT:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or glue) else " ")
    return _PERIOD.sub("", out, count=_PERIOD_LIMIT)


def vqa_digit_article(text: str) -> str:
    """The evaluator's `processDigitArticle`: lower case, number words → digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_answer(text: str) -> str:
    """A predicted answer as the VQA evaluator compares it."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqa_digit_article(vqa_punctuation(text))


def evalai_answer(text: str) -> str:
    """EvalAI's answer processor (TextVQA, as LLaVA's m4c evaluator applies it to predictions and references)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return vqa_answer(text)


def gqa_answer(text: str) -> str:
    """LLaVA's GQA conversion: trailing periods stripped, lower case (then GQA's exact match)."""
    return text.rstrip(".").lower()


def pope_yes_no(text: str) -> str:
    """LLaVA's POPE parse: first sentence, commas dropped; "no" if it has the word No / no / not, else "yes"."""
    first = text.split(".")[0].replace(",", "")
    words = first.split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def mme_yes_no(text: str) -> str:
    """MME's `parse_pred_ans`: "yes" / "no", else whichever of them is in the first 4 characters, else "other"."""
    text = text.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def true_false(text: str) -> str | None:
    """The first of true / false / yes / no among the words (VSR: a statement judged true or false), else None."""
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in ("true", "yes"):
            return "true"
        if word in ("false", "no"):
            return "false"
    return None


_OPTION_PUNCT = re.compile(r"[.()\[\],:;!*#{}]")


def choice_letter(text: str, options: dict[str, str]) -> str | None:
    """Which option an answer picks, by rule (MMBench's), or None.

    The one option letter standing as a word, else the one option whose text the answer contains; None when neither
    rule names exactly one.

    "A" is also an article: when it is the only letter found in a longer answer it counts only if nothing else does.
    """
    words = _OPTION_PUNCT.sub(" ", text).split()
    found = [k for k in options if k in words]
    if len(found) == 1 and not (found[0] == "A" and len(words) > 3 and words[0] == "A" and words.count("A") == 1):
        return found[0]
    lower = text.lower()
    by_text = [k for k, v in options.items() if str(v).lower() and str(v).lower() in lower]
    if len(by_text) == 1:
        return by_text[0]
    return found[0] if len(found) == 1 else None
