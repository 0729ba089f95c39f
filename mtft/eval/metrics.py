"""Per-sample generation metrics, each in [0, 1], chosen per task in the data config (`metrics: [...]`).

- exact_match: the output equals the reference after normalisation (lower case, punctuation and articles
  removed, whitespace collapsed: SQuAD's normalisation).
- accuracy: for label tasks, the output's answer equals the reference's: the first line of each, or the first
  match of the task's `answer_pattern` (a regex; its first group if it has one), normalised as above.
- token_f1: SQuAD's token-level F1 between the normalised output and reference.
- rouge_l: ROUGE-L F-measure over whitespace tokens (longest common subsequence), as `rouge-score` computes it
  without stemming; written here because that package brings nltk and absl for one dynamic programme.
- chrf: sacrebleu's sentence chrF (character n-gram F-score, β = 2), divided by 100.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable

DEFAULT_METRICS = ("exact_match", "token_f1")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(output: str, reference: str, answer_pattern: str | None = None) -> float:
    return float(normalize(output) == normalize(reference))


def answer(text: str, answer_pattern: str | None) -> str:
    """The part of `text` that is the answer: the regex's first match (its first group if it has one), else the
    first non-empty line."""
    if answer_pattern:
        found = re.search(answer_pattern, text)
        if not found:
            return ""
        return found.group(1) if found.groups() else found.group(0)
    return next((line for line in text.splitlines() if line.strip()), "")


def accuracy(output: str, reference: str, answer_pattern: str | None = None) -> float:
    return float(normalize(answer(output, answer_pattern)) == normalize(answer(reference, answer_pattern)))


def token_f1(output: str, reference: str, answer_pattern: str | None = None) -> float:
    predicted, expected = normalize(output).split(), normalize(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def rouge_l(output: str, reference: str, answer_pattern: str | None = None) -> float:
    predicted, expected = output.lower().split(), reference.lower().split()
    if not predicted or not expected:
        return float(predicted == expected)
    previous = [0] * (len(expected) + 1)
    for token in predicted:
        current = [0]
        for j, other in enumerate(expected):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(predicted), lcs / len(expected)
    return 2 * precision * recall / (precision + recall)


def chrf(output: str, reference: str, answer_pattern: str | None = None) -> float:
    import sacrebleu

    return sacrebleu.sentence_chrf(output, [reference]).score / 100


METRICS: dict[str, Callable[[str, str, str | None], float]] = {
    "exact_match": exact_match,
    "accuracy": accuracy,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
    "chrf": chrf,
}
