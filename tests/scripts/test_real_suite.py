"""scripts/experiments/real_suite.py on tiny hand-written FreeDict (dictd) and WordNet files, so it runs without the
Debian packages: the shared words, the cleaned answers, the skip counts, the split and the data config."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from mtft.config.convert import from_dict
from mtft.data.config import DataConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "experiments" / "real_suite.py"
_spec = importlib.util.spec_from_file_location("real_suite", SCRIPT)
real_suite = sys.modules.setdefault("real_suite", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(real_suite)

TASKS = ["translate_fr", "translate_es", "translate_de", "define", "hypernym"]
CLEAN = ["apple", "automobile", "car", "dog", "house", "tomato", "turkey", "water"]

# index headword -> articles, as FreeDict's TEI conversion writes them (dictd indexes are lowercased).
FRA = {
    "automobile": ["automobile /ɔːtəməbiːl/\nautomobile\n"],
    "car": ["car /kɑːr/\nvoiture\n"],
    "apple": ["apple /æpl/\npomme\n"],
    "dog": ["dog /dɔg/\nchien, clébard\n"],
    "house": ["house /haus/\n1. maison (bâtiment)\n2. logement\n"],
    "tomato": ["tomato /təmɑːtou/\ntomate\n"],
    "turkey": ["Turkey /təːkiː/\nTurquie\n", "turkey /təːkiː/\ndindon\n"],
    "water": ["water‐ /wˈɔːtə/\n1. aquatique\n", "water /wɔːtər/\n1. eau, onde\n2. arroser\n"],
    "china": ["China /tʃainə/\nChine\n"],  # only a proper noun: no_exact_headword
    "cat": ["cat /kæt/\nchat\n"],
    "bread": ["bread /bred/\npain\n"],
    "potato": ["potato /pəteitou/\npomme de terre\n"],  # multi_word
    "ship": ["ship /ʃip/\n‐té\n"],  # affix
    "rain": ["rain /rein/\npluie\n"],
    "milk": ["milk /milk/\nlait\n"],
    "wine": ["wine /wain/\nvin\n"],
    "bank": ["bank /bæŋk/\nbanque\n"],
    "ox": ["ox /ɔks/\nbœuf\n"],  # two letters: never read
}
SPA = {
    "automobile": ["automobile /ɔːtəməbiːl/\nautomóvil\n"],
    "car": ["car /kɑːr/\ncoche\n"],
    "apple": ["apple /ˈapəl/\ntartademanzana\n", "apple /æpldʒuːs/\njugo\n", "apple /æpl/\nmanzana\n"],
    "dog": ["dog /dɔg/\nperro (animal)\n"],
    "house": ["house /haus/\ncasa\n", "house /haustʃɑːdʒ/\nservicio\n"],
    "tomato": ["tomato /təmɑːtou/\ntomate\n"],
    "turkey": ["turkey /təːkiː/\npavo\n"],
    "water": ["water /wˈɔːtə/\nacuarela\n", "water /wɔːtər/\n1. agua; líquido\n2. regar\n"],
    "china": ["china /tʃainə/\nporcelana\n"],
    "cat": ["cat /kˈat/\ngatito\n"],  # only a stressed article, a compound cut short: cut_compound
    "bread": ["bread /bred/\nbarradepan\n"],  # "barra de pan" without its spaces: lost_spaces
    "loaf": ["loaf /louf/\npan\n"],  # makes "pan" a word eng-spa knows
    "potato": ["potato /pəteitou/\npatata\n"],
    "ship": ["ship /ʃip/\nbarco\n"],
    "rain": ["rain /rein/\nlluvia\n"],
    "milk": ["milk /milk/\nleche\n"],
    "wine": ["wine /wain/\nvino\n"],
    "bank": ["bank /bæŋk/\nbanco\n"],
    "ox": ["ox /ɔks/\nbuey\n"],
}
DEU = {
    "automobile": ["automobile /ˈɔːtəməbiːl/\nAutomobil <neut>\n"],
    "car": ["car /kˈɑː/\nAuto <neut>\n"],
    "apple": ["apple /ˈapəl/\nApfel <masc> [bot.]  [cook.]\n"],
    "dog": [  # Ding: one article per sense, sorted by the German word
        "dog /dˈɒɡ/\nBandhaken <masc>\n         Note: Fassbinderei\n",
        "dog /dˈɒɡ/ <v>\nbeschatten <v, trans>\n",
        "dog /dˈɒɡ/\nHund <masc> [zool.]\n",
    ],
    "house": [
        "house /hˈaʊs/\nGeschlecht <neut>, Familie <fem>\n",
        'house /hˈaʊs/\nHaus <neut>\n      "build a house"  - ein Haus bauen\n',
    ],
    "tomato": [
        "tomato /təmˈɑːtəʊ/\ntomatenrot\n",  # an adjective: German nouns are capitalised
        "tomato /təmˈɑːtəʊ/\nParadeiser <masc> [Ös.]\n",  # Austrian
        "tomato /təmˈɑːtəʊ/\nTomate <fem>\n",
    ],
    "turkey": [
        "turkey /tˈɜːki/\n [coll.] Dussel <masc>, Döskopp <masc> [Norddt.]\n",
        "turkey /tˈɜːki/\nTruthahn <masc>, Puter <masc> [cook.]\n",
    ],
    "water": ["water /wˈɔːtə/\nGewässer <neut>\n", "water /wˈɔːtə/\nWasser <neut>\n"],
    "aqua": ["aqua /ˈakwə/\nWasser <neut>\n"],  # the dictionary uses "Wasser" twice, "Gewässer" once
    "china": ["china /tʃˈaɪnə/\nPorzellan <neut>\n"],
    "cat": ["cat /kˈat/\nKatze <fem>\n"],
    "bread": ["bread /bɹˈɛd/\nBrot <neut>\n"],
    "potato": ["potato /pətˈeɪtəʊ/\nKartoffel <fem>\n"],
    "ship": ["ship /ʃˈɪp/\nverschifft\n"],  # no noun: not_a_noun
    "rain": ["rain /ɹˈeɪn/\nRegen <masc>\n"],
    "milk": ["milk /mˈɪlk/\nMilch <fem>\n"],
    "wine": ["wine /wˈaɪn/\nWein <masc>\n"],
    "bank": ["bank /bˈaŋk/\nBank <fem>\n"],
    "ox": ["ox /ˈɒks/\nOchse <masc>\n"],
}

LONG_GLOSS = "fermented juice of grapes " + "and of other fruits " * 8
# offset -> (lemmas, pointers as (symbol, offset), gloss), in data.noun's own order (by offset)
SYNSETS = {
    "00001000": (["entity"], [], "that which is perceived or known"),
    "00001100": (["support"], [("@", "00001000")], "supporting structure"),
    "00001200": (["andiron", "firedog", "dog"], [("@", "00001100")], "metal supports for logs in a fireplace"),
    "00001300": (["canine", "canid"], [("@", "00001000")], "any of various fissiped mammals"),
    "00001400": (["edible_fruit"], [("@", "00001000")], "edible reproductive body of a seed plant"),
    "00001500": (
        ["dwelling", "home", "domicile", "abode", "habitation", "dwelling_house", "residence", "lodging"]
        + ["quarters", "living_quarters", "digs"],  # 11 lemmas: w_cnt is hexadecimal 0b
        [("@", "00001000")],
        "housing that someone is living in",
    ),
    "00001600": (["domestic_fowl", "fowl", "poultry"], [("@", "00001000")], "a domesticated gallinaceous bird"),
    "00001700": (["solanaceous_vegetable"], [("@", "00001000")], "any of several fruits of plants of Solanaceae"),
    "00001800": (["binary_compound"], [("@", "00001000")], "a chemical compound of two elements"),
    "00001900": (["apple"], [("@", "00001400")], "fruit with red or yellow or green skin"),
    "00002000": (
        ["dog", "domestic_dog", "Canis_familiaris"],
        [("~", "00001200"), ("@", "00001300"), ("@", "00001000")],
        'a member of the genus Canis (probably descended from the common wolf); occurs in many breeds; "the dog '
        'barked all night"',
    ),
    "00002100": (["house"], [("@", "00001500")], 'a dwelling that serves as living quarters; "he has a house"'),
    "00002200": (["tomato"], [("@", "00001700")], "mildly acid red or yellow pulpy fruit eaten as a vegetable"),
    "00002300": (["turkey"], [("@", "00001600")], 'large gallinaceous bird with fan-shaped tail "wild turkeys"'),
    "00002400": (["water", "H2O"], [("@", "00001800")], 'a clear liquid (H2O; freezes at 0 degrees); "a swim"'),
    "00002500": (["china"], [("@", "00001000")], "high quality porcelain"),
    "00002600": (["cat"], [("@", "00001000")], "feline mammal"),
    "00002700": (["bread"], [("@", "00001000")], "food made from dough"),
    "00002800": (["potato"], [("@", "00001000")], "an edible tuber"),
    "00002900": (["ship"], [("@", "00001000")], "a vessel that carries passengers"),
    "00003000": (["rain"], [("@", "00001000")], "water falling in drops"),
    "00003100": (["milk"], [("~", "00001000")], "a white nutritious liquid"),  # no hypernym
    "00003200": (["wine"], [("@", "00001000")], LONG_GLOSS),  # long_gloss
    "00003300": (["ox"], [("@", "00001000")], "an adult castrated bull"),
    "00003400": (["motor_vehicle"], [("@", "00001000")], "a self-propelled wheeled vehicle"),
    "00003500": (["car", "auto", "automobile"], [("@", "00003400")], "a motor vehicle with four wheels"),
}
# noun -> its senses, most frequent first; dog's first sense comes after the andiron in data.noun
NOUN_SENSES = {
    "apple": ["00001900"],
    "automobile": ["00003500"],
    "car": ["00003500"],  # a synonym: one sense, one definition and hypernym
    "dog": ["00002000", "00001200"],
    "house": ["00002100"],
    "tomato": ["00002200"],
    "turkey": ["00002300"],
    "water": ["00002400"],
    "china": ["00002500"],
    "cat": ["00002600"],
    "bread": ["00002700"],
    "potato": ["00002800"],
    "ship": ["00002900"],
    "rain": ["00003000"],
    "milk": ["00003100"],
    "wine": ["00003200"],
    "ox": ["00003300"],
}
LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"


def encode_dictd_number(value: int) -> str:
    digits = ""
    while True:
        value, digit = divmod(value, 64)
        digits = real_suite.DICTD_ALPHABET[digit] + digits
        if value == 0:
            return digits


def write_dictd(directory: Path, name: str, articles: dict[str, list[str]]) -> None:
    index, data = [], b""
    for headword, texts in articles.items():
        for text in texts:
            raw = text.encode("utf-8")
            index.append(f"{headword}\t{encode_dictd_number(len(data))}\t{encode_dictd_number(len(raw))}\n")
            data += raw
    index.insert(0, "00databaseshort\tA\tB\n")  # dictd's own entries come first and are not words
    (directory / f"freedict-eng-{name}.index").write_text("".join(index), encoding="utf-8")
    (directory / f"freedict-eng-{name}.dict.dz").write_bytes(gzip.compress(data))


def write_wordnet(directory: Path) -> None:
    lines = [LICENCE]
    for offset, (lemmas, pointers, gloss) in SYNSETS.items():
        words = " ".join(f"{lemma} 0" for lemma in lemmas)
        links = " ".join(f"{symbol} {target} n 0000" for symbol, target in pointers)
        lines.append(f"{offset} 05 n {len(lemmas):02x} {words} {len(pointers):03d} {links} | {gloss}  \n")
    (directory / "data.noun").write_text("".join(lines), encoding="utf-8")
    index = [LICENCE]
    for noun, senses in sorted(NOUN_SENSES.items()):
        index.append(f"{noun} n {len(senses)} 1 @ {len(senses)} 0 {' '.join(senses)}  \n")
    (directory / "index.noun").write_text("".join(index), encoding="utf-8")
    (directory / "index.verb").write_text(LICENCE + "rain v 1 1 @ 1 0 02756558  \n", encoding="utf-8")
    (directory / "index.adj").write_text(LICENCE, encoding="utf-8")
    (directory / "index.adv").write_text(LICENCE, encoding="utf-8")


def write_sources(directory: Path) -> tuple[Path, Path]:
    """The three tiny dictionaries and the tiny WordNet under `directory`: (dictd dir, wordnet dir)."""
    dictd, wordnet = directory / "dictd", directory / "wordnet"
    dictd.mkdir(parents=True)
    wordnet.mkdir()
    for name, articles in (("fra", FRA), ("spa", SPA), ("deu", DEU)):
        write_dictd(dictd, name, articles)
    write_wordnet(wordnet)
    return dictd, wordnet


@pytest.fixture
def sources(tmp_path: Path) -> list[str]:
    dictd, wordnet = write_sources(tmp_path)
    return ["--dictd-dir", str(dictd), "--wordnet-dir", str(wordnet)]


def build(out: Path, sources: list[str], seed: int = 0) -> dict:
    return real_suite.main(
        ["--out", str(out), "--train-words", "10", "--val-words", "2", "--seed", str(seed), *sources]
    )


def read_split(out: Path, task: str, split: str) -> dict[str, dict[str, str]]:
    """{English word: record} of one split file; the word is the quoted one in the prompt."""
    lines = (out / task / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return {json.loads(line)["prompt"].split("'")[1]: json.loads(line) for line in lines}


def per_word(*answers: str) -> dict[str, str]:
    return dict(zip(CLEAN, answers, strict=True))


def read_task(out: Path, task: str) -> dict[str, dict[str, str]]:
    return {**read_split(out, task, "train"), **read_split(out, task, "val")}


def test_dictd_numbers_are_base64_big_endian():
    assert real_suite.decode_dictd_number("B") == 1
    assert real_suite.decode_dictd_number("BA") == 64
    assert real_suite.decode_dictd_number("LOB") == 11 * 64 * 64 + 14 * 64 + 1


def test_answers_are_the_cleaned_first_translation_gloss_and_hypernym(tmp_path, sources):
    build(tmp_path / "out", sources)
    records = {task: read_task(tmp_path / "out", task) for task in TASKS}
    answers = {task: {word: record["response"] for word, record in records[task].items()} for task in TASKS}
    assert answers["translate_fr"] == per_word(
        "pomme", "automobile", "voiture", "chien", "maison", "tomate", "dindon", "eau"
    )
    assert answers["translate_es"] == per_word(
        "manzana", "automóvil", "coche", "perro", "casa", "tomate", "pavo", "agua"
    )
    assert answers["translate_de"] == per_word(
        "Apfel", "Automobil", "Auto", "Hund", "Haus", "Tomate", "Truthahn", "Wasser"
    )
    assert answers["define"] == {
        "apple": "fruit with red or yellow or green skin",
        "automobile": "a motor vehicle with four wheels",
        "car": "a motor vehicle with four wheels",
        "dog": "a member of the genus Canis (probably descended from the common wolf)",  # sense 1 by index.noun
        "house": "a dwelling that serves as living quarters",
        "tomato": "mildly acid red or yellow pulpy fruit eaten as a vegetable",
        "turkey": "large gallinaceous bird with fan-shaped tail",
        "water": "a clear liquid (H2O; freezes at 0 degrees)",
    }
    assert answers["hypernym"] == per_word(
        "edible fruit",
        "motor vehicle",
        "motor vehicle",
        "canine",
        "dwelling",
        "solanaceous vegetable",
        "domestic fowl",
        "binary compound",
    )
    house = {task: records[task]["house"]["prompt"] for task in TASKS}
    assert house == {
        "translate_fr": "Translate the English word 'house' into French.",
        "translate_es": "Translate the English word 'house' into Spanish.",
        "translate_de": "Translate the English word 'house' into German.",
        "define": "Define the English noun 'house'.",
        "hypernym": "What is a 'house' a kind of? Answer with one word or short phrase.",
    }


def test_skips_are_counted_by_reason(tmp_path, sources):
    report = build(tmp_path / "out", sources)
    assert report["lowercase_headwords"] == {"fr": 17, "es": 18, "de": 18}  # not `ox`, nor dictd's 00database
    assert report["in_all_dictionaries"] == 17
    assert report["not_a_wordnet_noun"] == 1  # bank
    assert report["not_only_a_noun"] == 1  # rain, also a verb
    assert report["skipped"] == {
        "translate_fr": {"affix": 1, "multi_word": 1, "no_exact_headword": 1},
        "translate_es": {"cut_compound": 1, "lost_spaces": 1},
        "translate_de": {"not_a_noun": 1},
        "define": {"long_gloss": 1},
        "hypernym": {"no_hypernym": 1},
    }
    assert report["clean_in_every_task"] == len(CLEAN)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["skipped"] == report["skipped"]


def test_validation_words_are_held_out_of_every_task(tmp_path, sources):
    build(tmp_path / "out", sources)
    val_words = {task: set(read_split(tmp_path / "out", task, "val")) for task in TASKS}
    train_words = {task: set(read_split(tmp_path / "out", task, "train")) for task in TASKS}
    held_out = val_words["translate_fr"]
    assert len(held_out) == 2 and all(words == held_out for words in val_words.values())
    assert all(words == train_words["translate_fr"] for words in train_words.values())
    assert not held_out & set.union(*train_words.values())
    assert held_out | train_words["translate_fr"] == set(CLEAN)


def test_synonyms_stay_on_one_side_of_the_split(tmp_path, sources):
    """car and automobile share their WordNet sense, so their definition and hypernym: splitting them would put
    one's validation answers in the other's training samples."""
    sides = []
    for seed in range(6):
        build(tmp_path / str(seed), sources, seed=seed)
        val = set(read_split(tmp_path / str(seed), "define", "val"))
        assert len(val) == 2
        assert ("car" in val) == ("automobile" in val)
        sides.append("car" in val)
    assert any(sides)  # the pair is held out together for some seed, not merely never held out


def test_same_seed_same_suite_and_another_seed_another_split(tmp_path, sources):
    build(tmp_path / "a", sources, seed=0)
    build(tmp_path / "b", sources, seed=0)
    build(tmp_path / "c", sources, seed=3)
    for task in TASKS:
        for split in ("train", "val"):
            assert (tmp_path / "a" / task / f"{split}.jsonl").read_bytes() == (
                tmp_path / "b" / task / f"{split}.jsonl"
            ).read_bytes()
    assert set(read_split(tmp_path / "a", "define", "val")) != set(read_split(tmp_path / "c", "define", "val"))


def test_data_config_loads_with_metrics_and_validation_files(tmp_path, sources):
    report = build(tmp_path / "out", sources)
    config = Path(report["data_config"])
    assert config == (tmp_path / "out" / "data" / "real.yaml").resolve()  # a --config-dir group: data=real
    data = from_dict(DataConfig, yaml.safe_load(config.read_text(encoding="utf-8")), "data")  # as mtft-eval reads it
    assert data.task_names == TASKS
    metrics = {task.name: task.metrics for task in data.tasks}
    assert metrics == {**dict.fromkeys(TASKS, ["exact_match", "chrf"]), "define": ["token_f1", "rouge_l"]}
    for task in data.tasks:
        assert task.format == "prompt_response"
        assert Path(task.path) == (tmp_path / "out" / task.name / "train.jsonl").resolve()
        assert Path(task.val_path) == (tmp_path / "out" / task.name / "val.jsonl").resolve()
    assert data.max_seq_len == real_suite.MAX_SEQ_LEN


def test_missing_sources_name_the_apt_get_line(tmp_path, sources):
    sources[1] = str(tmp_path / "no_dictd")
    with pytest.raises(SystemExit) as raised:
        build(tmp_path / "out", sources)
    message = str(raised.value)
    assert (
        "apt-get install -y dict-freedict-eng-fra dict-freedict-eng-spa dict-freedict-eng-deu wordnet-base" in message
    )
    assert str(tmp_path / "no_dictd" / "freedict-eng-fra.index") in message
    assert not (tmp_path / "out").exists()


def test_unequal_tasks_train_on_nested_prefixes_of_one_pool_and_share_the_held_out_words(tmp_path, sources):
    sizes = "translate_de=2,define=4,hypernym=1"
    words = ["--train-words", "6", "--val-words", "2", "--task-train-words", sizes, *sources]
    report = real_suite.main(["--out", str(tmp_path / "a"), *words])
    assert report["task_train_words"] == {
        "translate_fr": 6,
        "translate_es": 6,
        "translate_de": 2,
        "define": 4,
        "hypernym": 1,
    }
    train = {task: list(read_split(tmp_path / "a", task, "train")) for task in TASKS}
    pool = train["translate_fr"]
    assert len(pool) == 6 and train["translate_es"] == pool
    assert train["define"] == pool[:4] and train["translate_de"] == pool[:2] and train["hypernym"] == pool[:1]
    val = {task: set(read_split(tmp_path / "a", task, "val")) for task in TASKS}
    assert len(val["define"]) == 2 and all(v == val["define"] for v in val.values())
    assert not val["define"] & set(pool)
    equal = real_suite.main(["--out", str(tmp_path / "b"), "--train-words", "6", "--val-words", "2", *sources])
    assert set(read_split(tmp_path / "b", "define", "val")) == val["define"]  # the held-out words unchanged
    assert list(read_split(tmp_path / "b", "translate_de", "train")) == pool  # and the pool too
    assert equal["task_train_words"] == dict.fromkeys(TASKS, 6)
    real_suite.main(["--out", str(tmp_path / "c"), *words])
    for task in TASKS:  # reproducible
        assert (tmp_path / "a" / task / "train.jsonl").read_bytes() == (
            tmp_path / "c" / task / "train.jsonl"
        ).read_bytes()


def test_task_sizes_beyond_the_pool_or_of_unknown_tasks_are_refused(tmp_path, sources, capsys):
    with pytest.raises(SystemExit, match="exceed the training pool's 6 words"):
        real_suite.main(
            [
                "--out",
                str(tmp_path),
                "--train-words",
                "6",
                "--val-words",
                "2",
                "--task-train-words",
                "define=7",
                *sources,
            ]
        )
    with pytest.raises(SystemExit):
        real_suite.main(["--out", str(tmp_path), "--task-train-words", "french=7", *sources])
    assert "'french=7': expected TASK=N" in capsys.readouterr().err
