"""Embedded synthetic SST / Quora / STS-style tasks over one shared lexicon and grammar, and entity
tagging (IOB NER, binary) over the same sentences.

Every *meaning* (entity, relation, quality) has two surface forms (synonyms), so the tasks share
what there is to learn: the paraphrase and similarity tasks reward mapping synonyms together,
and the sentiment task reuses the same nouns and adjectives. The tasks are built to need more
than a bag of words:

- sentiment depends on composition: negation flips and softens polarity ("not awful" is somewhat
  positive), intensifiers sharpen mild words ("very good" is very positive), and in "X but Y" /
  "although X , Y" the second clause decides while the first carries another valence;
- most non-paraphrases change exactly one entity or relation of the question, so word overlap stays
  high, while a paraphrase may change the template and swap synonyms (some non-paraphrases are
  unrelated questions, as in the real Quora data);
- similarity is 5 * (1 - changed_slots / slots) from the generating process, plus Gaussian noise;
- the entities are the noun phrases "the / a NOUN", typed by the noun's meaning (person, work, place,
  object): the noun alone fixes its tag, but whether "the" begins an entity depends on the next
  word ("the film" does, "the best way" does not).

Generation is deterministic in (config, task, split).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import ClassVar

from mtlbench.tasks.errors import UserError, nearest
from mtlbench.tasks.reading import RawSplit
from mtlbench.tasks.spec import SPLITS, TaskData

# Each inner tuple is one meaning; its members are interchangeable surface forms.
NOUNS = (
    ("film", "movie"), ("actor", "performer"), ("director", "filmmaker"), ("story", "tale"),
    ("plot", "storyline"), ("script", "screenplay"), ("cast", "ensemble"), ("ending", "finale"),
    ("soundtrack", "score"), ("hero", "protagonist"), ("villain", "antagonist"), ("city", "town"),
    ("house", "home"), ("car", "vehicle"), ("dog", "puppy"), ("book", "novel"), ("song", "tune"),
    ("teacher", "instructor"), ("doctor", "physician"), ("garden", "yard"), ("river", "stream"),
    ("computer", "laptop"), ("phone", "cellphone"), ("kitchen", "galley"),
)
# (base form, third person) per surface form.
VERBS = (
    (("fix", "fixes"), ("repair", "repairs")), (("buy", "buys"), ("purchase", "purchases")),
    (("find", "finds"), ("locate", "locates")), (("build", "builds"), ("construct", "constructs")),
    (("watch", "watches"), ("view", "views")), (("clean", "cleans"), ("wash", "washes")),
    (("sell", "sells"), ("vend", "vends")), (("start", "starts"), ("begin", "begins")),
    (("help", "helps"), ("assist", "assists")), (("describe", "describes"), ("explain", "explains")),
    (("choose", "chooses"), ("select", "selects")), (("improve", "improves"), ("enhance", "enhances")),
)
# Adjective meanings by valence -2..+2.
ADJECTIVES = {
    2: (("brilliant", "superb"), ("wonderful", "marvelous"), ("excellent", "outstanding")),
    1: (("good", "fine"), ("pleasant", "agreeable"), ("charming", "likable")),
    0: (("ordinary", "average"), ("typical", "standard"), ("plain", "simple")),
    -1: (("weak", "poor"), ("dull", "boring"), ("clumsy", "awkward")),
    -2: (("awful", "dreadful"), ("terrible", "horrible"), ("disastrous", "atrocious")),
}
ALL_ADJECTIVES = tuple(m for v in sorted(ADJECTIVES) for m in ADJECTIVES[v])
INTENSIFIERS = ("very", "really", "extremely", "truly")
COPULAS = ("is", "was", "seemed", "felt")
OPENERS = ("honestly ,", "overall ,", "in my opinion ,", "to be fair ,", "frankly ,")
FUNCTION_WORDS = (
    "the", "a", "not", "but", "although", "and", "in", "how", "do", "i", "can", "what", "is", "best",
    "way", "to", "why", "does", "reason", "where", "good", "place", "would", "you", "say", "?", ",",
)

# Clause recipes per target valence: (adjective valence, intensified, negated).
# Intensifying sharpens +-1 to +-2; negating a polar adjective gives the opposite sign, magnitude 1.
_CLAUSES = {
    2: ((2, False, False), (2, True, False), (1, True, False)),
    1: ((1, False, False), (-1, False, True), (-2, False, True), (-1, True, True)),
    0: ((0, False, False), (0, True, False)),
    -1: ((-1, False, False), (1, False, True), (2, False, True), (1, True, True)),
    -2: ((-2, False, False), (-2, True, False), (-1, True, False)),
}


def compose_valence(adjective_valence: int, intensified: bool, negated: bool) -> int:
    """The valence of "[not] [very] ADJ" under the generator's grammar."""
    v = adjective_valence
    if intensified and abs(v) == 1:
        v *= 2
    if negated and v != 0:
        v = -1 if v > 0 else 1
    return v


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes per task and split, noise levels and the generator's seed."""

    seed: int = 13
    sst_train: int = 3000
    sst_dev: int = 600
    sst_test: int = 600
    quora_train: int = 9000
    quora_dev: int = 1200
    quora_test: int = 1200
    sts_train: int = 3000
    sts_dev: int = 600
    sts_test: int = 600
    sst_label_noise: float = 0.08  # fraction of labels moved one class, like annotator disagreement
    quora_positive_rate: float = 0.37
    quora_unrelated_negatives: float = 0.3  # negatives that are a different question, not one slot changed
    keep_form: float = 0.7  # pair tasks: an unchanged meaning keeps its surface form with this probability
    sts_noise: float = 0.35  # std of Gaussian noise on the 0-5 score
    ner_train: int = 3000  # entity tagging: IOB ("ner") and binary ("entity") tags of the same sentences
    ner_dev: int = 600
    ner_test: int = 600

    MAX_ROWS: ClassVar[int] = 1_000_000  # per task and split: more would fill the memory, refused when read

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name.endswith(("_train", "_dev", "_test")) and not 0 <= value <= self.MAX_ROWS:
                raise ValueError(f"{name} must be from 0 to {self.MAX_ROWS:,}, got {value}")
            if name.endswith(("_noise", "_rate", "_negatives", "keep_form")) and not 0 <= value <= (
                    5 if name == "sts_noise" else 1):
                raise ValueError(f"{name} must be from 0 to {5 if name == 'sts_noise' else 1}, got {value}")

    def size(self, task: str, split: str) -> int:
        return getattr(self, f"{task}_{split}")

    def as_dict(self) -> dict:
        return asdict(self)


def vocabulary() -> list[str]:
    """Every word the generator can emit, in a stable order."""
    words: list[str] = list(FUNCTION_WORDS) + list(INTENSIFIERS) + list(COPULAS)
    words += [w for o in OPENERS for w in o.split()]
    words += [w for m in NOUNS for w in m]
    words += [f for m in VERBS for form in m for f in form]
    words += [w for m in ALL_ADJECTIVES for w in m]
    return list(dict.fromkeys(words))


def _rng(config: SyntheticConfig, task: str, split: str) -> random.Random:
    return random.Random(f"{config.seed}/{task}/{split}")


# --- sentiment -----------------------------------------------------------------------------------

def _clause(rng: random.Random, valence: int) -> str:
    adj_valence, intensified, negated = rng.choice(_CLAUSES[valence])
    words = ["the", rng.choice(rng.choice(NOUNS)), rng.choice(COPULAS)]
    if negated:
        words.append("not")
    if intensified:
        words.append(rng.choice(INTENSIFIERS))
    words.append(rng.choice(rng.choice(ADJECTIVES[adj_valence])))
    return " ".join(words)


def _contrasting(rng: random.Random, valence: int) -> int:
    # Uniform over the other valences: "A but B" and "B but A" are then equally likely, so the
    # words alone cannot tell which clause decides.
    return rng.choice([v for v in ADJECTIVES if v != valence])


def sentiment_example(rng: random.Random, noise: float) -> dict:
    valence = rng.randint(-2, 2)
    form = rng.random()
    if form < 0.2:
        text = _clause(rng, valence)
    elif form < 0.65:
        text = f"{_clause(rng, _contrasting(rng, valence))} but {_clause(rng, valence)}"
    elif form < 0.9:
        text = f"although {_clause(rng, _contrasting(rng, valence))} , {_clause(rng, valence)}"
    else:
        text = f"{_clause(rng, valence)} and {_clause(rng, valence)}"
    if rng.random() < 0.2:
        text = f"{rng.choice(OPENERS)} {text}"
    label = valence + 2
    if rng.random() < noise:
        label = min(4, max(0, label + rng.choice((-1, 1))))
    return {"text": text, "label": label}


# --- paraphrase --------------------------------------------------------------------------------

# Question intents: slot kinds and interchangeable templates.
_INTENTS = (
    (("verb", "noun"), (
        "how do i {verb} the {noun} ?", "how can i {verb} the {noun} ?",
        "what is the best way to {verb} the {noun} ?",
    )),
    (("verb", "noun", "place"), (
        "how do i {verb} the {noun} in the {place} ?", "how can i {verb} the {noun} in the {place} ?",
        "in the {place} , how can i {verb} the {noun} ?",
    )),
    (("subject", "verb3", "noun"), (
        "why does the {subject} {verb} the {noun} ?",
        "what is the reason the {subject} {verb3} the {noun} ?",
    )),
    (("verb", "noun"), (
        "where can i {verb} a {noun} ?", "where is a good place to {verb} a {noun} ?",
    )),
    (("noun", "adjective"), (
        "is the {noun} {adjective} ?", "would you say the {noun} is {adjective} ?",
    )),
)
_SLOT_MEANINGS = {
    "verb": len(VERBS), "verb3": len(VERBS), "noun": len(NOUNS), "subject": len(NOUNS),
    "place": len(NOUNS), "adjective": len(ALL_ADJECTIVES),
}


def _surface(rng: random.Random, meanings: dict[str, int], like: dict | None = None, keep: float = 0.0) -> dict:
    """Surface form index per slot; with `like`, an unchanged meaning keeps its form with prob. `keep`."""
    forms = {}
    for slot, m in meanings.items():
        if like is not None and like["meanings"][slot] == m and rng.random() < keep:
            forms[slot] = like["forms"][slot]
        else:
            forms[slot] = rng.randrange(2)
    return {"meanings": meanings, "forms": forms}


def _realise(template: str, choice: dict) -> str:
    words = {}
    for slot, m in choice["meanings"].items():
        form = choice["forms"][slot]
        if slot in ("verb", "verb3"):
            words["verb"], words["verb3"] = VERBS[m][form]
        elif slot == "adjective":
            words[slot] = ALL_ADJECTIVES[m][form]
        else:
            words[slot] = NOUNS[m][form]
    return template.format(**words)


def _other_meaning(rng: random.Random, slot: str, current: int) -> int:
    return rng.choice([m for m in range(_SLOT_MEANINGS[slot]) if m != current])


def _question(rng: random.Random) -> tuple[tuple, tuple, dict]:
    slots, templates = rng.choice(_INTENTS)
    return slots, templates, {s: rng.randrange(_SLOT_MEANINGS[s]) for s in slots}


def paraphrase_example(rng: random.Random, positive_rate: float, keep_form: float, unrelated_negatives: float) -> dict:
    slots, templates, meanings = _question(rng)
    first = _surface(rng, meanings)
    template_a = rng.choice(templates)
    text_a = _realise(template_a, first)
    is_duplicate = rng.random() < positive_rate
    if not is_duplicate and rng.random() < unrelated_negatives:
        _, other_templates, other_meanings = _question(rng)  # a different question altogether
        text_b = _realise(rng.choice(other_templates), _surface(rng, other_meanings))
        return {"text_a": text_a, "text_b": text_b, "label": 0}
    other = dict(meanings)
    if not is_duplicate:
        changed = rng.choice(slots)  # one entity or relation differs; word overlap stays high
        other[changed] = _other_meaning(rng, changed, meanings[changed])
    template_b = template_a if rng.random() < 0.5 else rng.choice(templates)
    text_b = _realise(template_b, _surface(rng, other, first, keep_form))
    return {"text_a": text_a, "text_b": text_b, "label": int(is_duplicate)}


# --- similarity --------------------------------------------------------------------------------

_STATEMENT_SLOTS = ("subject", "verb3", "noun", "place")
_STATEMENTS = (
    "the {subject} {verb3} the {noun} in the {place}",
    "in the {place} , the {subject} {verb3} the {noun}",
)


def similarity_example(rng: random.Random, noise: float, keep_form: float) -> dict:
    meanings = {s: rng.randrange(_SLOT_MEANINGS[s]) for s in _STATEMENT_SLOTS}
    changed = rng.randint(0, len(_STATEMENT_SLOTS))
    other = dict(meanings)
    for slot in rng.sample(_STATEMENT_SLOTS, changed):
        other[slot] = _other_meaning(rng, slot, meanings[slot])
    score = 5.0 * (1 - changed / len(_STATEMENT_SLOTS)) + rng.gauss(0.0, noise)
    first = _surface(rng, meanings)
    return {
        "text_a": _realise(rng.choice(_STATEMENTS), first),
        "text_b": _realise(rng.choice(_STATEMENTS), _surface(rng, other, first, keep_form)),
        "label": round(min(5.0, max(0.0, score)), 2),
    }


# --- entities ----------------------------------------------------------------------------------

# Entity type per noun meaning (the index into NOUNS).
ENTITY_TYPES = ("PER", "WORK", "PLACE", "OBJ")
_NOUN_TYPE = dict.fromkeys(("film", "story", "plot", "script", "ending", "soundtrack", "book", "song"), "WORK")
_NOUN_TYPE.update(dict.fromkeys(("actor", "director", "cast", "hero", "villain", "teacher", "doctor"), "PER"))
_NOUN_TYPE.update(dict.fromkeys(("city", "house", "garden", "river", "kitchen"), "PLACE"))
_NOUN_TYPE.update(dict.fromkeys(("car", "dog", "computer", "phone"), "OBJ"))
NOUN_TYPES = {word: _NOUN_TYPE[meaning[0]] for meaning in NOUNS for word in meaning}
NER_LABELS = ("O",) + tuple(f"{p}-{t}" for t in ENTITY_TYPES for p in "BI")


def entity_tags(tokens: list[str]) -> list[str]:
    """IOB tags of a generated sentence: "the / a NOUN" is one entity of the noun's type."""
    tags = ["O"] * len(tokens)
    for i, word in enumerate(tokens):
        if word in NOUN_TYPES:
            kind = NOUN_TYPES[word]
            if i > 0 and tokens[i - 1] in ("the", "a"):
                tags[i - 1], tags[i] = f"B-{kind}", f"I-{kind}"
            else:
                tags[i] = f"B-{kind}"
    return tags


def tagging_example(rng: random.Random, config: SyntheticConfig, binary: bool) -> dict:
    """A sentence of one of the three tasks (reviews, questions, statements) with its entity tags."""
    form = rng.random()
    if form < 0.4:
        text = sentiment_example(rng, 0.0)["text"]
    elif form < 0.7:
        text = paraphrase_example(rng, config.quora_positive_rate, config.keep_form,
                                  config.quora_unrelated_negatives)["text_a"]
    else:
        text = similarity_example(rng, config.sts_noise, config.keep_form)["text_a"]
    tokens = text.split()
    tags = entity_tags(tokens)
    return {"tokens": tokens, "tags": [int(t != "O") for t in tags] if binary else tags}


def polarity_example(rng: random.Random) -> dict:
    """A review whose label is its polarity (1 positive, 0 negative; neutral reviews are not drawn):
    the feature the `direction` dial turns against itself (two tasks, the same sentences)."""
    while True:
        example = sentiment_example(rng, 0.0)
        if example["label"] != 2:
            return {"text": example["text"], "label": int(example["label"] > 2)}


GENERATORS = ("sst", "quora", "sts", "ner", "entity", "polarity")
CLASSES = {"sst": 5, "quora": 2, "polarity": 2}  # the generators whose labels `label_noise` flips
# The dials where multi-task methods are said to differ (docs/fair-comparison.md), each off by default:
# loss-scale imbalance (`scale` multiplies a regression target), training-size imbalance
# (`train_fraction` keeps that share of train), label noise (`label_noise` moves that fraction of the
# training labels to another class) and gradient conflict (`direction = -1` flips polarity's label).
DIALS = {"scale": 1.0, "train_fraction": 1.0, "label_noise": 0.0, "direction": 1}


def generate(task: str, config: SyntheticConfig = SyntheticConfig()) -> TaskData:
    """All splits of one synthetic task. "ner" and "entity" tag the same sentences."""
    makers = {
        "sst": lambda rng: sentiment_example(rng, config.sst_label_noise),
        "quora": lambda rng: paraphrase_example(rng, config.quora_positive_rate, config.keep_form,
                                                config.quora_unrelated_negatives),
        "sts": lambda rng: similarity_example(rng, config.sts_noise, config.keep_form),
        "ner": lambda rng: tagging_example(rng, config, binary=False),
        "entity": lambda rng: tagging_example(rng, config, binary=True),
        "polarity": polarity_example,
    }
    if task not in makers:
        raise KeyError(task)
    stream = {"entity": "ner", "polarity": "sst"}.get(task, task)  # polarity: the sst sizes
    rows = {}
    for split in SPLITS:
        rng = _rng(config, "polarity" if task == "polarity" else stream, split)
        rows[split] = [makers[task](rng) for _ in range(config.size(stream, split))]
    return TaskData(rows=rows)


def turn_dials(generator: str, rows: dict[str, list[dict]], dials: dict, seed: int, where: str
               ) -> dict[str, list[dict]]:
    """The rows with the task's dials applied (see DIALS); dev and test keep their true labels, so
    noise hurts the learning, never the scoring."""
    for key, value in dials.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise UserError(f"{where}.{key}: expected a number, got {value!r}")
    scale, fraction = float(dials.get("scale", 1.0)), float(dials.get("train_fraction", 1.0))
    noise, direction = float(dials.get("label_noise", 0.0)), dials.get("direction", 1)
    if scale != 1.0 and generator != "sts":
        raise UserError(f"{where}.scale: only the sts generator's regression target scales (declare label_range "
                        "scaled with it)")
    if not 0 < scale <= 1e6 or not 0 < fraction <= 1 or not 0 <= noise <= 1 or direction not in (1, -1):
        raise UserError(f"{where}: scale must be in (0, 1e6], train_fraction in (0, 1], label_noise in [0, 1] and "
                        f"direction 1 or -1; got {dict(dials)}")
    if (noise or direction != 1) and generator not in CLASSES:
        raise UserError(f"{where}: label_noise and direction apply to the classification generators "
                        f"({', '.join(CLASSES)}), not '{generator}'")
    if direction == -1 and generator != "polarity":
        raise UserError(f"{where}.direction: only the polarity generator's label turns round")
    rng = random.Random(f"{seed}/{generator}/dials")
    out = {}
    for split, split_rows in rows.items():
        split_rows = [dict(r) for r in split_rows]
        for row in split_rows:
            if scale != 1.0:
                row["label"] = round(row["label"] * scale, 6)
            if direction == -1:
                row["label"] = 1 - row["label"]
        if split == "train":
            split_rows = split_rows[:max(1, round(fraction * len(split_rows)))]
            for row in split_rows:
                if rng.random() < noise:
                    row["label"] = rng.choice([c for c in range(CLASSES[generator]) if c != row["label"]])
        out[split] = split_rows
    return out


def read(spec, options: dict, context):
    """The source interface (tasks.sources): the generator's rows, labels as the generator writes them."""
    generator = options.get("generator")
    if generator not in GENERATORS:
        raise UserError(f"{spec.origin}.sources.synthetic.generator: unknown generator '{generator}'"
                        f"{nearest(str(generator), GENERATORS)}; generators: {', '.join(GENERATORS)}")
    dials = {k: v for k, v in options.items() if k in DIALS}
    rows = turn_dials(generator, generate(generator, context.synthetic).rows, dials, context.synthetic.seed,
                      f"{spec.origin}.sources.synthetic")
    return {split: RawSplit([(f"synthetic {generator} [{split}] row {i}", row) for i, row in enumerate(rows)])
            for split, rows in rows.items()}, None


# --- a file fixture for seed 001's layout -------------------------------------------------------

def topic_example(rng: random.Random, config: SyntheticConfig) -> dict:
    """A question labelled with the type of the first entity it mentions."""
    while True:
        text = paraphrase_example(rng, config.quora_positive_rate, config.keep_form,
                                  config.quora_unrelated_negatives)["text_a"]
        nouns = [NOUN_TYPES[w] for w in text.split() if w in NOUN_TYPES]
        if nouns:
            return {"content": text, "label": {"PER": "person", "WORK": "work", "PLACE": "place",
                                               "OBJ": "object"}[nouns[0]]}


def write_classification_fixture(folder, sizes: dict[str, dict[str, int]], seed: int = 13) -> None:
    """Two tasks in seed 001's layout: `TASK/{train,dev,test}.tsv` (columns content, label) and
    `TASK/label2ind.json`. The label maps deliberately do not follow sorted order."""
    import json
    from pathlib import Path

    config = SyntheticConfig(seed=seed)
    label_maps = {"sentiment": {"positive": 0, "negative": 1, "neutral": 2},
                  "topic": {"work": 0, "person": 1, "place": 2, "object": 3}}

    def sentiment(rng):
        example = sentiment_example(rng, 0.0)
        valence = example["label"] - 2
        return {"content": example["text"],
                "label": "positive" if valence > 0 else "negative" if valence < 0 else "neutral"}

    makers = {"sentiment": sentiment, "topic": lambda rng: topic_example(rng, config)}
    for task, maker in makers.items():
        target = Path(folder) / task
        target.mkdir(parents=True, exist_ok=True)
        (target / "label2ind.json").write_text(json.dumps(label_maps[task], indent=1) + "\n", encoding="utf-8")
        for split, size in sizes[task].items():
            rng = random.Random(f"{seed}/fixture-{task}/{split}")
            lines = ["content\tlabel"] + [f"{e['content']}\t{e['label']}" for e in (maker(rng) for _ in range(size))]
            (target / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
