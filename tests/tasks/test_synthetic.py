import numpy as np
from mtlbench.tasks import synthetic
from mtlbench.tasks.synthetic import SyntheticConfig, compose_valence, generate
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression


def test_generation_is_deterministic_and_sized():
    config = SyntheticConfig(sst_train=50, sst_dev=10, sst_test=5)
    assert generate("sst", config).rows == generate("sst", config).rows
    assert {k: len(v) for k, v in generate("sst", config).rows.items()} == {"train": 50, "dev": 10, "test": 5}
    assert generate("sst", SyntheticConfig(seed=1)).rows["train"][:20] != generate("sst").rows["train"][:20]


def test_composition_rules():
    assert compose_valence(-2, False, True) == 1  # "not awful" is somewhat positive
    assert compose_valence(1, True, False) == 2  # "very good" is very positive
    assert compose_valence(1, True, True) == -1  # "not very good" is somewhat negative
    assert compose_valence(0, False, False) == 0


def test_label_distributions_match_the_real_tasks_shape():
    config = SyntheticConfig()
    sst = [r["label"] for r in generate("sst").rows["train"]]
    assert set(sst) == {0, 1, 2, 3, 4} and min(np.bincount(sst)) > 0.15 * len(sst)
    quora = generate("quora").rows["train"]
    assert abs(np.mean([r["label"] for r in quora]) - 0.37) < 0.02
    assert len(quora) >= 3 * config.sst_train
    sts = [r["label"] for r in generate("sts").rows["train"]]
    assert min(sts) >= 0 and max(sts) <= 5 and np.std(sts) > 1.2


def test_hard_non_paraphrases_keep_high_word_overlap():
    rows = [r for r in generate("quora").rows["train"] if r["label"] == 0]

    def overlap(r):
        a, b = set(r["text_a"].split()), set(r["text_b"].split())
        return len(a & b) / len(a | b)
    assert np.mean([overlap(r) > 0.6 for r in rows]) > 0.4  # most negatives differ in one slot


def test_every_emitted_word_is_in_the_vocabulary():
    vocabulary = set(synthetic.vocabulary())
    for task in ("sst", "quora", "sts"):
        for row in generate(task).rows["dev"]:
            for key in ("text", "text_a", "text_b"):
                assert set(row.get(key, "").split()) <= vocabulary


def test_bag_of_words_cannot_solve_sentiment():
    """The sentiment task needs composition: a unigram classifier stays far below the suite's models."""
    rows = generate("sst").rows
    vectorizer = CountVectorizer(token_pattern=r"[^ ]+")
    x = vectorizer.fit_transform([r["text"] for r in rows["train"]])
    model = LogisticRegression(max_iter=2000).fit(x, [r["label"] for r in rows["train"]])
    accuracy = model.score(vectorizer.transform([r["text"] for r in rows["dev"]]), [r["label"] for r in rows["dev"]])
    assert 0.3 < accuracy < 0.6
