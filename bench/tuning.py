"""`mtlbench tune SUITE --trials N`: every recipe, the baseline included, gets the same number of
trials (the protocol of Kurin et al., NeurIPS 2022, and Xin et al., NeurIPS 2022: a method is only
better than a weighted sum tuned as hard as it is).

A trial is an ordinary run (bench.single_run: its lock, epoch checkpoints, an atomic record) of the
recipe with the [train] settings of `[tune.space]` and the recipe's own `tune = {...}` strategy
options drawn by Optuna's TPE sampler, scored after every epoch on a validation split held out of
train (bench.holdout) - never dev, never test - so Optuna's median pruner can stop it early. Its
record lands in OUT/tune/trials/ with `trial = {study, recipe, number, parameters}`.

Studies live in an Optuna storage: by default OUT/tune/study.db (SQLite: one file, and Optuna's
heartbeat - a trial whose process stopped beating is failed and retried by Optuna itself; the
journal file has no heartbeat), or any Optuna database URL (`--storage`) that several machines
share. Each recipe's study is `SUITE.RECIPE`. The budget is exact under kill -9 and concurrency:
- a trial whose process is gone (same host: its pid; elsewhere: Optuna's heartbeat) or that was
  interrupted is failed and enqueued again with the same parameters; its run, named by those
  parameters, resumes from its last epoch checkpoint or finds its record;
- a trial counts when it is not failed; one asked past the budget (two processes asking at once)
  is failed as surplus before it trains, and so is one that drew the very point another live trial
  holds (two machines seeding alike at once). Failed trials never count. On one host, a lock held
  from the count to the trial's first draw gives each trial its own sampler seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import socket
import time
import warnings
from pathlib import Path

from mtlbench.bench import gate
from mtlbench.bench.config import Recipe, Suite, tune_settings
from mtlbench.bench.context import SuiteContext, comparable_config
from mtlbench.bench.files import exclusive
from mtlbench.bench.records import RunRecord
from mtlbench.bench.settings import CostSettings, SearchRange, TuneSettings
from mtlbench.bench.single_run import Pruned, run_one
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.metrics import lower_is_better

FOLDER = "tune"  # OUT/tune/: the default storage and the trials' records
TRIALS = "trials"
DEFAULT_STORAGE = "study.db"
HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 60
MAX_RETRIES = 3  # a trial that keeps failing (a bug, not a kill) is not retried for ever


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError('mtlbench tune needs Optuna: pip install "mtlbench[tune]"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class Surplus(Exception):
    """A trial asked after the budget was full (another process asked at the same moment)."""


def settings_of(suite: Suite, trials: int | None = None) -> TuneSettings:
    """The suite's [tune] (the default space, lr around the suite's, when it has none); --trials wins."""
    tune = suite.tune or tune_settings({}, suite.train, f"{suite.source} [tune]")
    return dataclasses.replace(tune, trials=trials) if trials is not None else tune


def storage_url(out_dir: Path, storage: str | None) -> str:
    if storage:
        return storage
    folder = Path(out_dir).resolve() / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / DEFAULT_STORAGE}"


def shown_url(url: str) -> str:
    """The storage URL without a password, for logs and records."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.split(':')[0]}:***@{tail}"


def open_storage(url: str):
    optuna = _optuna()
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None,
            heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
    except Exception as error:  # noqa: BLE001 - SQLAlchemy's many errors: one line naming the URL
        raise UserError(f"--storage {shown_url(url)}: cannot open it as an Optuna storage ({str(error)[:200]})"
                        ) from None


def tuning_suite(suite: Suite, tune: TuneSettings) -> Suite:
    """The suite the trials run: dev held out of train, no test, no cost measurement, one seed,
    the recipes compared (not the front's points)."""
    return dataclasses.replace(suite, tune=tune, validation="carved", test=False, seeds=suite.seeds[:1],
                               cost=CostSettings(enabled=False), recipes=suite.compared,
                               checkpoints=dataclasses.replace(suite.checkpoints, keep=0, keep_best=False))


def search_space(suite: Suite, recipe: Recipe) -> dict[str, SearchRange]:
    return {**suite.tune.space, **recipe.space}


def objective_value(suite: Suite, record: RunRecord | dict, reference: dict[str, float] | None) -> float:
    """The trial's score from an epoch's dev metrics ({task: {metric: value}}) or a record: the mean
    of the primary metrics (sign-adjusted), or Δm % against `reference` (objective = "delta_m"). An
    undefined metric (the correlation of constant predictions) counts as 0."""
    metrics = record.metrics if isinstance(record, RunRecord) else record
    scores = {}
    for task in metrics:
        metric = suite.specs[task].primary_metric
        value = metrics[task].get(metric)
        scores[task] = (0.0 if value is None else value) * (-1.0 if lower_is_better(metric) else 1.0)
    if suite.tune.objective == "delta_m":
        return 100.0 * sum((scores[t] - reference[t]) / max(abs(reference[t]), 1e-12) for t in scores) / len(scores)
    return sum(scores.values()) / len(scores)


def parameters_digest(values: dict) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


class RecipeStudy:
    """One recipe's study: trials until the budget is spent (see the module docstring)."""

    def __init__(self, suite: Suite, recipe: Recipe, trials_dir: Path, storage, prepared, log):
        self.suite, self.recipe, self.trials_dir, self.storage, self.log = suite, recipe, trials_dir, storage, log
        self.prepared, self.tune = prepared, suite.tune
        self.name = f"{suite.name}.{recipe.name}"
        self.space = search_space(suite, recipe)
        self.reference: dict[str, float] | None = None

    def study(self, optuna, number: int):
        """The study with a sampler seeded for the next trial: every recipe draws the same startup
        points, and a process that resumes does not draw the points it drew before again."""
        sampler = optuna.samplers.TPESampler(seed=self.tune.seed * 100_003 + number,
                                             n_startup_trials=self.tune.startup_trials)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=self.tune.startup_trials, n_warmup_steps=0)
                  if self.tune.pruner == "median" else optuna.pruners.NopPruner())
        return optuna.create_study(storage=self.storage, study_name=self.name, direction="maximize",
                                   sampler=sampler, pruner=pruner, load_if_exists=True)

    def fingerprint(self) -> str:
        """What the study's trials depend on: the suite's settings and data, the recipe and the
        [tune] settings but its trial count (raising --trials extends a study)."""
        context = SuiteContext(self.suite, self.trials_dir, progress=False, prepared=self.prepared)
        tune = {k: v for k, v in self.tune.as_dict().items() if k != "trials"}
        return gate.config_hash({**comparable_config(context.run_config(self.recipe)), "tune": tune,
                                 "space": {k: r.as_dict() for k, r in self.space.items()}})

    def _check_fingerprint(self, study) -> None:
        mine, theirs = self.fingerprint(), study.user_attrs.get("fingerprint")
        if theirs is None:
            study.set_user_attr("fingerprint", mine)
        elif theirs != mine:
            raise UserError(f"study '{self.name}' in {shown_url(self.storage.url)} was made with other settings "
                            "(the suite, its data, the recipe or [tune] changed); use another --out or --storage")

    def fill(self) -> None:
        optuna = _optuna()
        if self.tune.objective == "delta_m" and self.reference is None:
            self.reference = self._reference()
        checked = False
        while True:
            # Held from the count to the trial's first suggestion: two processes on this host never
            # draw with the same sampler seed (a trial's seed is its number, known under the lock).
            self.lock = _HeldLock(self.trials_dir / f".{self.name}.tune.lock")
            try:
                study = self.study(optuna, len(self.storage.get_all_trials(self._id(optuna), deepcopy=False)))
                if not checked:
                    self._check_fingerprint(study)
                    checked = True
                self._retry_lost(optuna, study)
                trials = study.get_trials(deepcopy=False)
                counted = [t for t in trials if t.state != optuna.trial.TrialState.FAIL]
                waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
                if len(counted) >= self.tune.trials and not waiting:
                    return
                study.optimize(self._objective, n_trials=1, catch=(Surplus,))
            finally:
                self.lock.release()

    def _id(self, optuna) -> int:
        try:
            return self.storage.get_study_id_from_name(self.name)
        except KeyError:
            return optuna.create_study(storage=self.storage, study_name=self.name, direction="maximize",
                                       load_if_exists=True)._study_id

    def _retry_lost(self, optuna, study) -> None:
        """Fail the running trials whose process on this host is gone, and enqueue again every failed
        trial that was not surplus and not retried yet (Optuna's own RetryFailedTrialCallback)."""
        from mtlbench.bench.files import running

        state, here = optuna.trial.TrialState, socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
            owner = trial.user_attrs.get("owner")
            if owner and owner["host"] == here and not running(owner["pid"]):
                with contextlib.suppress(RuntimeError):  # another process failed it first
                    self.storage.set_trial_state_values(trial._trial_id, state.FAIL)
        trials = study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        for trial in trials:
            if trial.state == state.FAIL and trial.number not in retried and not trial.user_attrs.get("surplus"):
                retry(study, trial)
                self.log(f"  {self.recipe.name}: trial {trial.number} did not end; its parameters run again")

    def _objective(self, trial) -> float:
        optuna = _optuna()
        trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})
        ahead = [t for t in trial.study.get_trials(deepcopy=False)
                 if t.number < trial.number and t.state != optuna.trial.TrialState.FAIL]
        if len(ahead) >= self.tune.trials:
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number}: the budget of {self.tune.trials} was full")
        values = self._suggest(trial)
        self.lock.release()
        twin = next((t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number
                     and t.state != optuna.trial.TrialState.FAIL and t.params == values
                     and trial.number not in t.system_attrs.get("retry_history", [])
                     and t.number not in trial.system_attrs.get("retry_history", [])), None)
        if twin is not None:  # another machine drew the same point at the same moment: not a new trial
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number}: the parameters of trial {twin.number}")
        record = self._run(trial, values)
        trial.set_user_attr("run_id", record.run_id)
        trial.set_user_attr("epochs", len(record.history))
        if record.status == "pruned":
            self.log(f"  {self.recipe.name} trial {trial.number}: {_shown(values)}: pruned after epoch "
                     f"{record.pruned['epoch']} ({record.pruned['value']:.4f})")
            raise optuna.TrialPruned()
        if not record.finished:
            self.log(f"  {self.recipe.name} trial {trial.number}: {_shown(values)}: diverged")
            return -math.inf  # the worst, and counted: a setting that diverges is part of the answer
        value = objective_value(self.suite, record, self.reference)
        self.log(f"  {self.recipe.name} trial {trial.number}: {_shown(values)}: {value:.4f}")
        return value

    def _suggest(self, trial) -> dict:
        values = {}
        for key, found in self.space.items():
            current = None
            if "." in key:
                _, spec, _ = self.recipe.strategy(key)
                current = getattr(spec.options, key.rpartition(".")[2])
            if isinstance(current, int) and not isinstance(current, bool):
                values[key] = trial.suggest_int(key, math.ceil(found.low), math.floor(found.high), log=found.log)
            else:
                values[key] = trial.suggest_float(key, found.low, found.high, log=found.log)
        return values

    def _run(self, trial, values: dict) -> RunRecord:
        """The trial's run: named by its parameters, so that a retried trial resumes it."""
        recipe = dataclasses.replace(
            self.recipe.with_values(values), name=f"{self.recipe.name}@{parameters_digest(values)}",
            trial={"study": self.name, "recipe": self.recipe.name, "number": trial.number, "parameters": values})
        suite = dataclasses.replace(self.suite, recipes=(recipe,), baseline=recipe)
        context = SuiteContext(suite, self.trials_dir, log=self.log, progress=False, prepared=self.prepared)

        def report(epoch: int, history: list[dict]) -> None:
            value = objective_value(self.suite, history[-1]["dev"], self.reference)
            trial.report(value, epoch)
            if trial.should_prune():
                raise Pruned(epoch, value)
        while (record := run_one(context, recipe, suite.seeds[0], watch=report)) is None:
            time.sleep(2)  # the same parameters are training in another process: wait for its record
        return record

    def _reference(self) -> dict[str, float]:
        """Δm %'s reference: the baseline recipe with the suite's own settings on the held-out split."""
        baseline = self.suite.baseline or self.suite.recipes[0]
        recipe = dataclasses.replace(baseline, name=f"{baseline.name}@reference", tasks=None)
        suite = dataclasses.replace(self.suite, recipes=(recipe,), baseline=recipe)
        context = SuiteContext(suite, self.trials_dir, log=self.log, progress=False, prepared=self.prepared)
        while (record := run_one(context, recipe, suite.seeds[0])) is None:
            time.sleep(2)
        if not record.finished:
            raise UserError(f"objective = \"delta_m\": the reference run ({baseline.name} with the suite's "
                            "settings) diverged; use objective = \"mean\"")
        return {t: record.metrics[t][suite.specs[t].primary_metric] or 0.0 for t in record.metrics}


class _HeldLock:
    """`bench.files.exclusive` taken now and released once, wherever that happens first."""

    def __init__(self, path: Path):
        self._held = exclusive(path, wait=True)
        self._held.__enter__()
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._held.__exit__(None, None, None)


def _shown(values: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def tune_worker(suite: Suite, out_dir: str, url: str, log=print, prepared=None) -> None:
    """Fill every recipe's study (the loop each process, pool worker or Ray task runs)."""
    trials_dir = Path(out_dir) / FOLDER / TRIALS
    if prepared is None:
        prepared = SuiteContext(suite, trials_dir, log=log, progress=False).prepared
    storage = open_storage(url)
    for recipe in suite.recipes:
        RecipeStudy(suite, recipe, trials_dir, storage, prepared, log).fill()


def best_of(suite: Suite, tune: TuneSettings, url: str) -> dict[str, dict]:
    """Per recipe compared: its tuned settings and what the record keeps (`tuned`): trials, the
    best trial, its parameters and the budget spent."""
    optuna = _optuna()
    storage, state = open_storage(url), optuna.trial.TrialState
    found = {}
    for recipe in suite.compared:
        name = f"{suite.name}.{recipe.name}"
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise UserError(f"{shown_url(url)}: no study '{name}'; run `mtlbench tune` for this suite first") from None
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in (state.COMPLETE, state.PRUNED)]
        complete = [t for t in done if t.state == state.COMPLETE and t.value is not None and math.isfinite(t.value)]
        if not complete:
            raise UserError(f"study '{name}': no trial finished; tune it (again) before running with --tuned")
        best = max(complete, key=lambda t: (t.value, -t.number))
        found[recipe.name] = {
            "study": name, "storage": shown_url(url), "trials": len(done), "best_trial": best.number,
            "best_value": best.value, "objective": tune.objective, "parameters": dict(best.params),
            "budget": {"trials": tune.trials, "completed": len(complete),
                       "pruned": sum(t.state == state.PRUNED for t in done),
                       "trial_epochs": sum(t.user_attrs.get("epochs", 0) for t in done),
                       "epochs_per_trial": suite.train_for(recipe).epochs,
                       "tune_fraction": tune.tune_fraction, "seed": tune.seed}}
    return found


def tuned_suite(suite: Suite, tune: TuneSettings, url: str) -> Suite:
    """The suite with each recipe's best parameters (the front's points: the baseline's, their
    weights kept - the front is tuned at its uniform point, the plain sum)."""
    best = best_of(suite, tune, url)
    base_name = (suite.baseline or suite.recipes[0]).name
    recipes = []
    for recipe in suite.recipes:
        source = base_name if recipe.front is not None else recipe.name
        info = best[source]
        changed = recipe.with_values({k: v for k, v in info["parameters"].items()
                                      if "." not in k or recipe.front is None})
        recipes.append(dataclasses.replace(changed, tuned={**info, **({"from": source} if recipe.front else {})}))
    baseline = next((r for r in recipes if r.name == base_name), None)
    return dataclasses.replace(suite, tune=tune, recipes=tuple(recipes), baseline=baseline)
