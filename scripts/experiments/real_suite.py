"""Build a real multi-task suite from Debian's FreeDict dictionaries and WordNet: word translation into French,
Spanish and German, noun definitions and hypernyms, over one shared set of English words.

The demo suite is synthetic; this one asks a pretrained model for knowledge it may partly have, in five tasks that
share their inputs and differ in their instruction, so task interference and balancing show on real text.

Sources (Debian packages; nothing is downloaded by this script):
    apt-get install -y dict-freedict-eng-fra dict-freedict-eng-spa dict-freedict-eng-deu wordnet-base
Licences: the FreeDict dictionaries are GPL-2.0-or-later, WordNet 3.0 has Princeton's own licence. The suite is
generated on the user's machine and never committed.

Tasks (prompt_response records), all over the same English words:
- translate_fr / translate_es / translate_de: "Translate the English word 'kitchen' into French." -> "cuisine";
- define: "Define the English noun 'kitchen'." -> WordNet's first sense's first definition, without its examples;
- hypernym: "What is a 'kitchen' a kind of? ..." -> "room", the first lemma of that sense's first hypernym.
The words are single lowercase words in all three dictionaries that WordNet knows as nouns only (a word that is also
a verb gets a verb's translation from some dictionaries: rain -> pleuvoir, but Regen), clean in every task. Each
dictionary has its own faults, handled in `translate` and `entry_rank`; every word left out is counted by reason
in DIR/report.json. The validation words and their synonyms are held out of every task's training file, so no
task gives another's validation answers away.

Unequal tasks (`--task-train-words define=400,hypernym=50`): a task listed there trains on the first N words of
the shared training pool (--train-words words, in the split's seeded order), so its words are a reproducible random
subset of the pool, and a smaller task's words are a subset of every larger one's; the held-out words are the same.

Usage: python scripts/experiments/real_suite.py --out DIR [--train-words 400] [--val-words 50] [--seed 0]
    [--task-train-words TASK=N,...]
Writes DIR/<task>/{train,val}.jsonl, DIR/data/real.yaml and DIR/report.json; then
`mtft-train --config-dir DIR data=real ...` or `mtft-eval ... data=DIR/data/real.yaml out=...`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

APT_LINE = "apt-get install -y dict-freedict-eng-fra dict-freedict-eng-spa dict-freedict-eng-deu wordnet-base"
DICTD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
DICTD_FILES = ("index", "dict.dz")
WORDNET_FILES = ("index.noun", "data.noun", "index.verb", "index.adj", "index.adv")
WORD_METRICS = ["exact_match", "chrf"]
GLOSS_METRICS = ["token_f1", "rouge_l"]
MAX_SEQ_LEN = 256  # the longest definition is about 200 tokens with the tiny model's byte tokenizer, under 100 in BPE
MAX_DEFINITION_CHARS = 160  # the few longer glosses are encyclopedic and would dominate the define task's tokens
# 3+ letters: two-letter headwords are function words that WordNet happens to know as nouns (`an`: associate degree)
ENGLISH_WORD = re.compile(r"[a-z]{3,}")
ANSWER_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")  # letters, with inner hyphens or apostrophes
USAGE_LABEL = re.compile(r"\s*\[")  # eng-deu opens a marked sense with [Am.], [coll.], [fig.], [rare], ...
LABEL = re.compile(r"\[([^\]]*)\]")  # eng-deu regions are capitalised ([Ös.], [Schw.]), domains not ([zool.])
BRACKETS = re.compile(r"<[^<>]*>|\[[^\[\]]*\]|\([^()]*\)|\{[^{}]*\}")
CONNECTORS = ("de", "del", "para", "con")


@dataclass(frozen=True)
class Language:
    code: str
    dictionary: str  # the FreeDict name: freedict-eng-<dictionary>.index
    name: str
    stressed_are_cut: bool  # its own articles have unstressed pronunciations; stressed ones are cut compounds
    lost_spaces: bool  # its multi-word translations lost their spaces
    capitalised_nouns: bool = False  # a lowercase answer is an adjective or participle (eng-deu `clothing`: anziehend)


LANGUAGES = (
    Language("fr", "fra", "French", stressed_are_cut=True, lost_spaces=False),
    Language("es", "spa", "Spanish", stressed_are_cut=True, lost_spaces=True),
    Language("de", "deu", "German", stressed_are_cut=False, lost_spaces=False, capitalised_nouns=True),
)
TASK_METRICS = {
    **{f"translate_{lang.code}": WORD_METRICS for lang in LANGUAGES},
    "define": GLOSS_METRICS,
    "hypernym": WORD_METRICS,
}


@dataclass
class Entry:
    """One dictd article: `headword /pronunciation/` (and in eng-deu maybe `<v>`), then the lines below it."""

    headword: str
    pronunciation: str
    body: list[str]


@dataclass
class Dictionary:
    language: Language
    articles: dict[str, list[Entry]]  # single lowercase English word -> its articles
    uses: Counter  # word -> how many articles give it in their first sense
    vocabulary: set[str]  # the words of all its senses, where `is_glued` needs them (lost_spaces)


def decode_dictd_number(text: str) -> int:
    """dictd's index stores offsets and lengths as big-endian base-64 numbers over its own alphabet."""
    value = 0
    for char in text:
        value = value * 64 + DICTD_ALPHABET.index(char)
    return value


def read_dictionary(directory: Path, language: Language) -> Dictionary:
    """The articles of each single lowercase word, in index order. dictzip is gzip-compatible, so gzip reads it."""
    stem = directory / f"freedict-eng-{language.dictionary}"
    text = gzip.decompress(stem.with_suffix(".dict.dz").read_bytes())
    articles: dict[str, list[Entry]] = {}
    for line in stem.with_suffix(".index").read_text(encoding="utf-8").splitlines():
        headword, offset, length = line.split("\t")
        if ENGLISH_WORD.fullmatch(headword):
            start = decode_dictd_number(offset)
            raw = text[start : start + decode_dictd_number(length)].decode("utf-8")
            articles.setdefault(headword, []).append(parse_entry(raw))
    uses: Counter = Counter()
    vocabulary: set[str] = set()
    for entry in (entry for entries in articles.values() for entry in entries):
        uses.update({word.lower() for word in ANSWER_WORD.findall(first_sense(entry))})
        if language.lost_spaces:
            vocabulary.update(word.lower() for line in entry.body for word in ANSWER_WORD.findall(line))
    return Dictionary(language, articles, uses, vocabulary)


def parse_entry(raw: str) -> Entry:
    head, *body = raw.split("\n")
    match = re.fullmatch(r"(.*?)(?: /([^/]*)/)?(?: <[^>]*>)?\s*", head)  # eng-deu tags some parts of speech
    return Entry(match[1].strip(), match[2] or "", body)


def first_sense(entry: Entry) -> str:
    """The first numbered sense, or the first line of an unnumbered article."""
    for line in entry.body:
        if line.strip():
            return re.sub(r"^\s*1\.\s*", "", line)
    return ""


def clean_translation(sense: str) -> tuple[str, str]:
    """(answer, "") or ("", skip reason): the first translation, without tags, domains and parentheticals."""
    previous = None
    while previous != sense:  # innermost brackets first, for nested ones
        previous, sense = sense, BRACKETS.sub(" ", sense)
    candidates = [part.strip() for part in re.split(r"[,;]", sense) if part.strip()]
    if not candidates:
        return "", "empty"
    answer = candidates[0]
    if re.search(r"\s", answer):
        return "", "multi_word"
    if "‐" in answer or answer.startswith("-") or answer.endswith("-"):
        return "", "affix"
    if not ANSWER_WORD.fullmatch(answer):
        return "", "not_a_word"
    return answer, ""


def entry_rank(entry: Entry, uses: Counter, capitalised_nouns: bool) -> tuple[bool, int, bool, float]:
    """Sort key, best article first, for a headword with several.

    - In German, an article whose answer is lowercase is no noun's (`<v>` verbs, untagged adjectives and
      participles: `clothing` -> anziehend), and the suite is of nouns.
    - A longer pronunciation than a sibling's is a compound cut short (eng-spa `apple /æpldʒuːs/` is "apple juice").
    - eng-deu (Ding) has one article per sense, sorted by the German word, so the first is often a technical sense
      (`dog` -> Bandhaken). A sense labelled as regional or informal ([Am.], [coll.] before it, [Ös.] after its
      first word) loses (`turkey` -> Dussel, `tomato` -> Paradeiser); of the rest, the everyday sense has the
      German word the dictionary uses most, and examples. A `Note:` often narrows a sense, so it counts against.
    """
    sense = first_sense(entry)
    answer, _ = clean_translation(sense)
    regional = any(label[:1].isupper() for label in LABEL.findall(re.split(r"[,;]", sense)[0]))
    labelled = regional or bool(USAGE_LABEL.match(sense))
    examples = sum(line.lstrip().startswith('"') for line in entry.body)
    noted = any("Note:" in line for line in entry.body)
    score = math.log2(1 + uses[answer.lower()]) + math.log2(1 + examples) - 2 * noted
    not_noun = capitalised_nouns and answer[:1].islower()
    sound = re.sub(r"[ˈˌː ]", "", entry.pronunciation)
    return not_noun, len(sound), labelled, -score


def is_glued(answer: str, known: set[str]) -> bool:
    """eng-spa lost the spaces of many multi-word translations (`carnedecerdo`, `recipientedeagua`). Such an answer
    is a word, a connector (de, del, para, con) and more, with the word before or after the connector known to the
    dictionary on its own. Glued pairs without a connector (`papelpintado`) look like real compounds and stay."""
    word = answer.lower()
    for cut in range(4, len(word) - 4):
        head, tail = word[:cut], word[cut:]
        for connector in (c for c in CONNECTORS if tail.startswith(c) and len(tail) - len(c) >= 3):
            if head in known or tail[len(connector) :] in known:
                return True
    return False


def translate(word: str, dictionary: Dictionary) -> tuple[str, str]:
    """(answer, "") or ("", skip reason), from the word's best article whose headword is exactly the word (not
    `Turkey` or `farm‐`). eng-fra and eng-spa hold a later import of compounds cut at their first word, with
    stressed pronunciations (`horse /hˈɔːs/ castaña` is "horse chestnut"); their own articles are unstressed."""
    language = dictionary.language
    entries = [entry for entry in dictionary.articles.get(word, []) if entry.headword == word]
    if not entries:
        return "", "no_exact_headword"
    if language.stressed_are_cut:
        entries = [entry for entry in entries if "ˈ" not in entry.pronunciation]
        if not entries:
            return "", "cut_compound"
    best = min(entries, key=lambda entry: entry_rank(entry, dictionary.uses, language.capitalised_nouns))
    answer, reason = clean_translation(first_sense(best))
    if answer and language.lost_spaces and is_glued(answer, dictionary.vocabulary):
        return "", "lost_spaces"
    if answer and language.capitalised_nouns and answer[:1].islower():
        return "", "not_a_noun"
    return answer, reason


@dataclass
class WordNet:
    first_sense: dict[str, str]  # noun -> offset of its most frequent sense
    synsets: dict[str, str]  # offset -> its data.noun line
    not_only_nouns: set[str]  # lemmas that are also verbs, adjectives or adverbs


def read_wordnet(directory: Path) -> WordNet:
    """index.noun lists a noun's senses most frequent first; data.noun's own order is by lexicographer file, which
    would make `bank` a flight manoeuvre. The other indexes tell which nouns are nouns only."""
    first_sense = {}
    for fields in _index_lines(directory / "index.noun"):
        synset_count = int(fields[2])
        first_sense[fields[0]] = fields[len(fields) - synset_count]
    synsets = {}
    for line in (directory / "data.noun").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("  "):
            synsets[line[:8]] = line
    other = {fields[0] for pos in ("verb", "adj", "adv") for fields in _index_lines(directory / f"index.{pos}")}
    return WordNet(first_sense, synsets, other)


def _index_lines(path: Path) -> list[list[str]]:
    """The entries of a WordNet index file; its licence header lines start with two spaces."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split() for line in lines if line and not line.startswith("  ")]


def parse_synset(line: str) -> tuple[list[str], list[str], str]:
    """(lemmas, hypernym offsets, gloss) of a data.noun line; its counts are hexadecimal (w_cnt) and decimal."""
    data, _, gloss = line.partition(" | ")
    fields = data.split()
    word_count = int(fields[3], 16)
    lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(word_count)]
    at = 4 + 2 * word_count
    pointer_count = int(fields[at])
    pointers = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(pointer_count)]
    hypernyms = [offset for symbol, offset, pos, _ in pointers if symbol == "@" and pos == "n"]
    return lemmas, hypernyms, gloss.strip()


def first_definition(gloss: str) -> str:
    """The gloss up to its first `;` outside parentheses; the examples ("...") and further definitions follow it."""
    depth = 0
    for i, char in enumerate(gloss):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == ";" and depth == 0:
            return gloss[:i].strip()
    return gloss.split('"')[0].strip()


def define_and_hypernym(word: str, wordnet: WordNet) -> dict[str, tuple[str, str]]:
    """The define and hypernym answers (or skip reasons) from the word's most frequent noun sense."""
    _, hypernyms, gloss = parse_synset(wordnet.synsets[wordnet.first_sense[word]])
    definition = first_definition(gloss)
    if not definition:
        define = ("", "no_gloss")
    elif len(definition) > MAX_DEFINITION_CHARS:
        define = ("", "long_gloss")
    else:
        define = (definition, "")
    hypernym = (parse_synset(wordnet.synsets[hypernyms[0]])[0][0], "") if hypernyms else ("", "no_hypernym")
    return {"define": define, "hypernym": hypernym}


def prompts(word: str) -> dict[str, str]:
    english = {
        f"translate_{lang.code}": f"Translate the English word '{word}' into {lang.name}." for lang in LANGUAGES
    }
    english["define"] = f"Define the English noun '{word}'."
    english["hypernym"] = f"What is a '{word}' a kind of? Answer with one word or short phrase."
    return english


def check_sources(dictd_dir: Path, wordnet_dir: Path) -> None:
    """Fail before any work, naming every missing file and the install line."""
    needed = [dictd_dir / f"freedict-eng-{lang.dictionary}.{ext}" for lang in LANGUAGES for ext in DICTD_FILES]
    needed += [wordnet_dir / name for name in WORDNET_FILES]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise SystemExit(
            f"real_suite: missing source files: {', '.join(missing)}. Install them with `{APT_LINE}` "
            "(Debian/Ubuntu), or point --dictd-dir / --wordnet-dir at copies."
        )


def collect(dictd_dir: Path, wordnet_dir: Path) -> tuple[dict[str, dict[str, str]], dict[str, str], dict]:
    """{word: {task: answer}} for every word clean in all tasks, {word: its WordNet sense}, and a report of what
    was read and what was skipped why."""
    check_sources(dictd_dir, wordnet_dir)
    dictionaries = [read_dictionary(dictd_dir, lang) for lang in LANGUAGES]
    wordnet = read_wordnet(wordnet_dir)
    shared = sorted(set.intersection(*(set(d.articles) for d in dictionaries)))
    nouns = [word for word in shared if word in wordnet.first_sense]
    candidates = [word for word in nouns if word not in wordnet.not_only_nouns]
    skipped: dict[str, Counter] = {task: Counter() for task in TASK_METRICS}
    answers = {}
    for word in candidates:
        results = {f"translate_{d.language.code}": translate(word, d) for d in dictionaries}
        results.update(define_and_hypernym(word, wordnet))
        for task, (_, reason) in results.items():
            if reason:
                skipped[task][reason] += 1
        if not any(reason for _, reason in results.values()):
            answers[word] = {task: answer for task, (answer, _) in results.items()}
    report = {
        "lowercase_headwords": {d.language.code: len(d.articles) for d in dictionaries},
        "in_all_dictionaries": len(shared),
        "not_a_wordnet_noun": len(shared) - len(nouns),
        "not_only_a_noun": len(nouns) - len(candidates),
        "candidates": len(candidates),
        "skipped": {task: dict(sorted(counts.items())) for task, counts in skipped.items()},
        "clean_in_every_task": len(answers),
    }
    return answers, {word: wordnet.first_sense[word] for word in answers}, report


def split_words(senses: dict[str, str], train_words: int, val_words: int, seed: int) -> tuple[list[str], list[str]]:
    """One seeded split for all tasks: a validation word is in no task's training file, and neither are its synonyms
    (`odor`, `odour`: one WordNet sense, so one definition and hypernym), which would give its answers away."""
    synonyms: dict[str, list[str]] = {}
    for word in sorted(senses):
        synonyms.setdefault(senses[word], []).append(word)
    order = sorted(synonyms)
    random.Random(seed).shuffle(order)
    train, val = [], []
    for sense in order:
        (val if len(val) + len(synonyms[sense]) <= val_words else train).extend(synonyms[sense])
    if len(val) < val_words or not train:
        raise SystemExit(f"real_suite: only {len(senses)} clean words, too few for --val-words {val_words}")
    return train[:train_words], val


def task_train_words(pool: list[str], sizes: dict[str, int]) -> dict[str, list[str]]:
    """Each task's training words: the first `sizes[task]` of the pool (in the split's seeded order), or all of it."""
    return {task: pool[: sizes.get(task, len(pool))] for task in TASK_METRICS}


def write_suite(out: Path, answers: dict[str, dict[str, str]], train: dict[str, list[str]], val: list[str]) -> Path:
    """Write DIR/<task>/{train,val}.jsonl (`train`: each task's training words) and the data config
    DIR/data/real.yaml (a `--config-dir` group)."""
    tasks = []
    for task, metrics in TASK_METRICS.items():
        (out / task).mkdir(parents=True, exist_ok=True)
        for split, words in (("train", train[task]), ("val", val)):
            records = [{"prompt": prompts(w)[task], "response": answers[w][task]} for w in words]
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            (out / task / f"{split}.jsonl").write_text(lines, encoding="utf-8")
        paths = {"path": str(out / task / "train.jsonl"), "val_path": str(out / task / "val.jsonl")}
        tasks.append({"name": task, **paths, "format": "prompt_response", "metrics": list(metrics)})
    config = out / "data" / "real.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by scripts/experiments/real_suite.py from FreeDict (GPL) and WordNet 3.0: never commit.\n"
    suite = {"tasks": tasks, "max_seq_len": MAX_SEQ_LEN}
    body = yaml.safe_dump(suite, sort_keys=False, allow_unicode=True, default_flow_style=None, width=119)
    config.write_text(header + body, encoding="utf-8")
    return config


def build(args: argparse.Namespace) -> dict:
    answers, senses, report = collect(Path(args.dictd_dir), Path(args.wordnet_dir))
    train, val = split_words(senses, args.train_words, args.val_words, args.seed)
    too_many = {task: n for task, n in args.task_train_words.items() if n > len(train)}
    if too_many:
        raise SystemExit(f"real_suite: --task-train-words {too_many} exceed the training pool's {len(train)} words")
    per_task = task_train_words(train, args.task_train_words)
    out = Path(args.out).resolve()
    config = write_suite(out, answers, per_task, val)
    report.update(seed=args.seed, train_words=len(train), val_words=len(val), data_config=str(config))
    report["task_train_words"] = {task: len(words) for task, words in per_task.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def print_summary(report: dict) -> None:
    print(f"lowercase single-word headwords: {report['lowercase_headwords']}")
    print(
        f"in all three: {report['in_all_dictionaries']}; not a WordNet noun: {report['not_a_wordnet_noun']}; "
        f"also a verb/adjective/adverb: {report['not_only_a_noun']}; candidates: {report['candidates']}"
    )
    for task, reasons in report["skipped"].items():
        print(f"  {task:<13} skipped " + (", ".join(f"{r}={n}" for r, n in reasons.items()) or "none"))
    print(f"clean in every task: {report['clean_in_every_task']} words")
    print(f"training pool: {report['train_words']} words, held out: {report['val_words']} (seed {report['seed']})")
    print("training words per task: " + ", ".join(f"{t} {n}" for t, n in report["task_train_words"].items()))
    print(f"data config: {report['data_config']}")


def task_sizes(text: str) -> dict[str, int]:
    """`define=400,hypernym=50` as {task: words}; a task name that is not the suite's, or N < 1, is an error."""
    sizes = {}
    for item in filter(None, text.split(",")):
        task, _, number = item.partition("=")
        if task not in TASK_METRICS or not number.isdigit() or int(number) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: expected TASK=N, N >= 1, TASK one of {list(TASK_METRICS)}")
        sizes[task] = int(number)
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--train-words", type=int, default=400, help="the training pool: every task's words, unless --task-train-words"
    )
    parser.add_argument(
        "--task-train-words",
        type=task_sizes,
        default={},
        metavar="TASK=N,...",
        help="a task's training words, the first N of the pool (unlisted tasks: the whole pool)",
    )
    parser.add_argument("--val-words", type=int, default=50, help="held-out English words, the same in every task")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    parser.add_argument("--dictd-dir", default="/usr/share/dictd", help="holds freedict-eng-{fra,spa,deu}.*")
    parser.add_argument("--wordnet-dir", default="/usr/share/wordnet", help="holds index.noun and data.noun")
    args = parser.parse_args(argv)
    if args.train_words < 1 or args.val_words < 1:
        parser.error("--train-words and --val-words must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    report = build(parse_args(argv))
    print_summary(report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
