import pytest
from mtlbench.bench import config
from mtlbench.tasks.errors import UserError

from tests.conftest import write_suite

ONE = '[[recipes]]\nname = "rr"\nsampler = "round_robin"\n'


def load(tmp_path, recipes=ONE, **kw):
    return config.load_suite(str(write_suite(tmp_path / "suite.toml", recipes, **kw)))


def test_recipe_is_fully_resolved_with_defaults(tmp_path):
    suite = load(tmp_path, '[[recipes]]\nsampler = { name = "temperature" }\npair_head = "option2"\n')
    recipe = suite.recipes[0]
    assert recipe.name == "temperature+sum"
    assert recipe.sampler.as_dict()["options"] == {"temperature": 2.0}  # default recorded, not implicit
    assert recipe.names() == {"sampler": "temperature", "combiner": "sum", "regularizers": [], "freezing": "none",
                              "pooling": "mean", "pair_head": "concat"}


@pytest.mark.parametrize("recipes, message", [
    ('[[recipes]]\nsampler = "round_robbin"\n', "unknown sampler 'round_robbin' (did you mean 'round_robin'?)"),
    ('[[recipes]]\ncombiner = "summ"\n', "unknown combiner 'summ' (did you mean 'sum'?)"),
    ('[[recipes]]\nsamplr = "joint"\n', "unknown key 'samplr' (did you mean 'sampler'?)"),
    ('[[recipes]]\nsampler = { name = "temperature", temprature = 3 }\n', "unknown option 'temprature' (did you mean 'temperature'?)"),
    ('[[recipes]]\nsampler = { name = "temperature", temperature = "hot" }\n', "expected float"),
    ('[[recipes]]\npooling = "meen"\n', "unknown value 'meen' (did you mean 'mean'?)"),
    ('[[recipes]]\nsampler = { name = "joint", steps_per_epoch = "mins" }\n', "got 'mins' (did you mean 'min'?)"),
])
def test_bad_recipes_name_the_nearest_valid_choice(tmp_path, recipes, message):
    with pytest.raises(UserError) as error:
        load(tmp_path, recipes)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_train_key_and_unknown_suite(tmp_path):
    with pytest.raises(UserError, match="unknown key 'epoch' \\(did you mean 'epochs'\\?\\)"):
        load(tmp_path, train="epoch = 1")
    with pytest.raises(UserError, match="unknown suite 'quik' \\(did you mean 'quick'\\?\\)"):
        config.load_suite("quik")


def test_selected_recipes_keep_their_position_in_the_suite(tmp_path):
    suite = load(tmp_path, '[[recipes]]\nname = "a"\n[[recipes]]\nname = "b"\n[[recipes]]\nname = "c"\n')
    chosen = suite.with_recipes(["c"])
    assert [(r.name, r.position) for r in chosen.recipes] == [("c", 2)]  # tables keep the suite's order
    assert [r.name for r in suite.recipes] == ["a", "b", "c"] and chosen.baseline.name == "a"  # a new Suite


def test_select_recipes_checks_names(tmp_path):
    suite = load(tmp_path)
    with pytest.raises(UserError, match="unknown recipe 'r' \\(did you mean 'rr'\\?\\)"):
        suite.with_recipes(["r"])


def test_a_suite_is_immutable_once_loaded(tmp_path):
    import dataclasses

    suite = load(tmp_path)
    for change in (lambda: setattr(suite, "seeds", (5,)), lambda: setattr(suite.train, "epochs", 9),
                   lambda: setattr(suite.recipes[0], "name", "x"), lambda: setattr(suite.recipes[0].combiner, "name", "x")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            change()


def test_shipped_suites_load():
    for name in config.suite_names():
        suite = config.load_suite(name)
        assert suite.recipes


def test_shipped_suites_pass_strategy_validation(tmp_path):
    """The one validation pass (bench.context) on every shipped suite: no data read, no encoder built."""
    from mtlbench.bench.context import SuiteContext
    for name in config.suite_names():
        SuiteContext(config.load_suite(name), tmp_path).validate()


def test_pretrained_train_applies_only_to_a_real_checkpoint():
    offline = config.load_suite("cs224n-table4")
    assert offline.train.lr == 2e-3 and offline.train.epochs == 5
    bert = config.load_suite("cs224n-table4", {"model": "bert-base-uncased"})
    assert bert.train.lr == 1e-5 and bert.train.epochs == 10 and bert.train.batch_size == 8


def test_cs224n_table4_expresses_the_report_experiments():
    suite = config.load_suite("cs224n-table4")
    recipes = {r.name: r for r in suite.recipes}
    assert recipes["sst_only"].sampler.options.task == "sst"
    assert recipes["round_robin_option2"].pair_head == "concat" and recipes["round_robin_option3"].pair_head == "concat_product"
    assert recipes["total_loss"].combiner.name == "sum" and recipes["gradient_surgery"].combiner.name == "pcgrad"
    assert [recipes[f"round_robin_{r}"].regularizers[0].name for r in ("fgm", "fgsm", "pgd", "contrastive")] == \
        ["fgm", "fgsm", "pgd", "contrastive"]


def test_the_combiners_suite_has_a_row_per_registered_combiner():
    from mtlbench.strategies import registry
    suite = config.load_suite("combiners")
    assert sorted(r.combiner.name for r in suite.recipes) == sorted(registry.available("combiner"))
    assert all(r.sampler.name == "joint" for r in suite.recipes)


def _odd_encoder_suite(tmp_path, recipe: dict, layers: int = 3) -> dict:
    """A suite whose SST files do not exist and whose tiny encoder was never built."""
    from tests.conftest import SMALL_DATA, TINY_ENCODER

    return {"name": "v", "synthetic": SMALL_DATA,
            "tasks": {"sst": {"from": "sst", "source": {"type": "files", "train": "nowhere/train.tsv",
                                                         "dev": "nowhere/dev.tsv"}}, "sts": "sts"},
            "tiny_encoder": {**TINY_ENCODER, "hidden_size": 24, "num_layers": layers}, "recipes": [recipe]}


@pytest.mark.parametrize("recipe, layers, message", [
    ({"sampler": "joint", "freezing": {"name": "frozen_head", "alternate": ["nope"]}}, 3,
     "recipes[0]: freezing.alternate: unknown task 'nope' (did you mean 'sts'?)"),
    ({"sampler": "round_robin", "combiner": "pcgrad"}, 3,
     "recipes[0].combiner: 'pcgrad' needs several task losses per step"),
    ({"sampler": "joint", "pooling": "last4_mean"}, 2,
     "recipes[0].pooling: pooling 'last4_mean' needs an encoder with at least 3 layers"),
])
def test_recipes_are_validated_once_before_any_data_is_read_or_encoder_built(recipe, layers, message, tmp_path):
    """The one validation pass runs on an outline of the model: the suite's SST files are missing
    and its encoder was never built, and yet the recipe's error is the one reported."""
    from mtlbench.bench import backbone
    from mtlbench.bench.api import run

    suite = _odd_encoder_suite(tmp_path, recipe, layers)
    with pytest.raises(UserError) as error:
        run(suite, out=tmp_path / "out")
    assert message in str(error.value)
    key = backbone.tiny_key(backbone.TinyEncoderConfig(**suite["tiny_encoder"]))
    assert not (backbone.cache_root() / "encoders" / f"tiny-{key}").exists() and not (tmp_path / "out").exists()


def test_a_folder_named_like_a_suite_does_not_hide_it(tmp_path, monkeypatch):
    """`--out quick` once, then `mtlbench run` (the quick suite) in the same folder."""
    from mtlbench.bench.suites import find_suite

    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").mkdir()
    (tmp_path / "runs").mkdir()
    assert find_suite("quick").name == "quick.toml" and find_suite("quick").is_file()
    with pytest.raises(UserError, match="runs: a folder; expected a suite name or a suite .toml file"):
        find_suite("runs")
