"""Config checks before any data is read: every key's range (declared beside its schema field), a
model, data set and algorithm that fit, the extras a command line needs. Bad input goes through the
real installed console script and ends in one stderr line naming the key (or both misfits), exit != 0,
no traceback; the unit tests hold the rule table to the schemas."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import METAREC
from omegaconf import OmegaConf

from metarec.algos import ALGOS
from metarec.checks import parse, problems
from metarec.config.compose import compose
from metarec.config.schema import DATA_SCHEMAS, Config
from metarec.errors import UserError
from metarec.config.fit import check_fit
from metarec.models import MODELS
from metarec.run.train import build_model

NOWHERE = "data.root=/nonexistent/ml-100k"  # a MovieLens case that read data would fail on the folder instead

# (arguments, what the one stderr line must say)
CASES = {
    # ---- ranges ------------------------------------------------------------------------------------
    "meta_batch_zero": (["train", "trainer.meta_batch_size=0", NOWHERE], "trainer.meta_batch_size=0: must be >= 1"),
    "unknown_logger": (["train", "trainer.loggers=[neptune]", NOWHERE],
                       "trainer.loggers: 'neptune' is not one of tensorboard, mlflow, wandb"),
    "meta_batch_negative": (["train", "trainer.meta_batch_size=-3", NOWHERE], "trainer.meta_batch_size=-3: must be >= 1"),
    "max_steps_negative": (["train", "trainer.max_steps=-5", NOWHERE], "trainer.max_steps=-5: must be >= 1"),
    "val_every_zero": (["train", "trainer.val_every=0", NOWHERE], "trainer.val_every=0: must be >= 1"),
    "inner_steps_negative": (["train", "algo.inner_steps=-1", NOWHERE], "algo.inner_steps=-1: must be >= 0"),
    "ndcg_gain_bogus": (["train", "eval.ndcg_gain=bogus", NOWHERE], "eval.ndcg_gain='bogus' is not one of exp, linear"),
    "threads_zero": (["train", "device.threads=0", NOWHERE], "device.threads=0: must be >= 1"),
    "split_not_shares": (["train", "data.split=[0.5,0.5,0.5]", NOWHERE], "data.split=[0.5, 0.5, 0.5]: must be 3 shares"),
    "min_ratings_below_query": (["train", "data.min_ratings=5", NOWHERE], "data.query_size must be < data.min_ratings"),
    "prompt_dim_zero": (["train", "data=sinusoid", "algo=prompt", "algo.prompt_dim=0"], "algo.prompt_dim=0: must be >= 1"),
    "reptile_betas": (["train", "data=sinusoid", "algo=reptile", "algo.inner_betas=[0.9,1.0]"], "algo.inner_betas=[0.9, 1.0]: must be two numbers in [0, 1)"),
    "sinusoid_query_zero": (["train", "data=sinusoid", "data.query_size=0"], "data.query_size=0: must be >= 1"),
    "omniglot_one_way": (["train", "data=omniglot", "data.ways=1", "data.root=/nonexistent"], "data.ways=1: must be >= 2"),
    "eval_ndcg_gain": (["eval", "checkpoint=/nonexistent.pt", "eval.ndcg_gain=bogus"], "eval.ndcg_gain='bogus' is not one of"),
    "data_info": (["data", "info", "data.query_size=0", NOWHERE], "data.query_size=0: must be >= 1"),
    # ---- fit ---------------------------------------------------------------------------------------
    "prompt_on_conv4": (["train", "data=omniglot", "algo=prompt", "model=conv4"], "algo=prompt does not fit model=conv4"),
    "omniglot_prompt": (["train", "data=omniglot", "algo=prompt"], "algo=prompt does not fit model=conv4"),
    "sinusoid_melu": (["train", "data=sinusoid", "model=melu"], "model=melu does not fit data=sinusoid"),
    "movielens_mlp": (["train", "model=mlp", NOWHERE], "model=mlp does not fit data=movielens"),
}
# the same, composed in this process (the console script's path is the one above)
IN_PROCESS = {
    "patience_zero": (["train", "trainer.patience=0", NOWHERE], "trainer.patience=0: must be >= 1"),
    "inner_lr_zero": (["train", "algo.inner_lr=0", NOWHERE], "algo.inner_lr=0.0: must be > 0"),
    "meta_lr_negative": (["train", "algo=ridge", "algo.meta_lr=-0.1", NOWHERE], "algo.meta_lr=-0.1: must be > 0"),
    "eval_chunk_zero": (["train", "eval.chunk=0", NOWHERE], "eval.chunk=0: must be >= 1"),
    "split_without_validation": (["train", "data.split=[0.8,0,0.2]", NOWHERE], "data.split=[0.8, 0.0, 0.2]: must be 3 shares in (0, 1)"),
    "hidden_zero": (["train", "model.hidden=[64,0]", NOWHERE], "model.hidden=[64, 0]: each item must be >= 1"),
    "sinusoid_x_range": (["train", "data=sinusoid", "data.x_min=6"], "data.x_min must be < data.x_max"),
    "omniglot_too_many_shots": (["train", "data=omniglot", "data.shots=10", "data.root=/nonexistent"], "their sum must be <= 20"),
    "eval_negative_steps": (["eval", "checkpoint=/nonexistent.pt", "eval.max_steps=-1"], "eval.max_steps=-1: must be >= 0"),
    "movielens_conv4": (["train", "algo=prompt", "model=conv4", NOWHERE], "model=conv4 does not fit data=movielens"),
    "omniglot_ridge": (["train", "data=omniglot", "algo=ridge"], "algo=ridge does not fit data=omniglot"),
    "omniglot_mlp": (["train", "data=omniglot", "model=mlp"], "model=mlp does not fit data=omniglot"),
}
BLOCKER = textwrap.dedent("""
    # sitecustomize: these modules are absent for this process (as without the extra that installs them)
    import os, sys
    BLOCKED = os.environ["METAREC_TEST_ABSENT"].split(",")
    class Absent:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Absent())
""")
ABSENT = "hydra_plugins.hydra_joblib_launcher,hydra_plugins.hydra_optuna_sweeper,hydra_plugins.hydra_submitit_launcher,tensorboard,mlflow,wandb"
EXTRAS = {
    "joblib": (["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1"],
               "hydra/launcher=joblib needs the sweep extra (hydra-joblib-launcher is not installed): pip install 'metarec[sweep]'"),
    "optuna": (["train", "-m", "hparams_search=maml_movielens"], "hydra/sweeper=optuna needs the sweep extra"),
    "slurm": (["train", "-m", "hydra/launcher=slurm", "seed=0,1"], "pip install 'metarec[sweep]'"),
    "tensorboard": (["train", "data=sinusoid", "trainer.tensorboard=true"], "pip install 'metarec[tensorboard]'"),
    "mlflow": (["train", "data=sinusoid", "trainer.loggers=[mlflow]"],
               "trainer.loggers=[mlflow] needs the mlflow extra (mlflow is not installed): pip install 'metarec[mlflow]'"),
    "wandb": (["train", "data=sinusoid", "trainer.loggers=[wandb]"], "pip install 'metarec[wandb]'"),
}


def _run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full.pop("HYDRA_FULL_ERROR", None)
    if args[0] != "data":
        args = [*args, f"hydra.run.dir={cwd}/run", f"hydra.sweep.dir={cwd}/sweep"]
    return subprocess.run([str(METAREC), *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case above as a real subprocess, a few at a time."""
    root = tmp_path_factory.mktemp("checks")
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(BLOCKER)
    blocked = {"PYTHONPATH": str(root / "site"), "METAREC_TEST_ABSENT": ABSENT}
    jobs = {name: (args, None) for name, (args, _) in CASES.items()}
    jobs |= {f"extra_{name}": (args, blocked) for name, (args, _) in EXTRAS.items()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {}
        for name, (args, env) in jobs.items():
            (root / name).mkdir()
            futures[name] = pool.submit(_run, args, root / name, env)
        return root, {name: f.result() for name, f in futures.items()}


def _one_line(r: subprocess.CompletedProcess, message: str) -> None:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("metarec: error: ") and message in lines[0], r.stderr[-2000:]


@pytest.mark.parametrize("name", CASES)
def test_a_bad_value_or_a_misfit_is_one_line_before_any_data(outcomes, name):
    _one_line(outcomes[1][name], CASES[name][1])


@pytest.mark.parametrize("name", IN_PROCESS)
def test_more_bad_values_and_misfits_composed_in_process(name):
    args, message = IN_PROCESS[name]
    overrides = [a for a in args[1:] if a.startswith(("data", "algo", "model", "trainer", "eval", "device"))]
    with pytest.raises(UserError) as e:
        compose(overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", EXTRAS)
def test_a_missing_extra_names_the_pip_command(outcomes, name):
    r = outcomes[1][f"extra_{name}"]
    _one_line(r, EXTRAS[name][1])
    assert "Could not find" not in r.stdout + r.stderr


def test_a_refused_run_records_why_in_its_status_json(outcomes):
    root, _ = outcomes
    status = json.loads((root / "meta_batch_zero" / "run" / "status.json").read_text())
    assert status == {"status": "failed", "reason": "trainer.meta_batch_size=0: must be >= 1", "step": 0}


def test_each_job_of_a_sweep_is_checked_and_the_sweep_says_how_many_failed(tmp_path):
    r = _run(["train", "-m", "data=sinusoid", "trainer.meta_batch_size=0,-1"], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "trainer.meta_batch_size=0: must be >= 1" in r.stderr and "trainer.meta_batch_size=-1: must be >= 1" in r.stderr
    assert "2 job(s) of the sweep failed" in r.stderr
    assert json.loads((tmp_path / "sweep" / "1" / "status.json").read_text())["status"] == "failed"


# ---- the rule table ----------------------------------------------------------------------------------

def _schemas() -> list[type]:
    nested = [f.default_factory if f.default_factory is not dataclasses.MISSING else None for f in dataclasses.fields(Config)]
    typed = [typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)]
    return sorted({*[t for t in nested + typed if dataclasses.is_dataclass(t)], Config, *DATA_SCHEMAS.values(),
                   *(a.Config for a in ALGOS.values())}, key=lambda t: t.__name__)


def _numeric(hint) -> bool:
    args = typing.get_args(hint)
    return hint in (int, float) or any(_numeric(a) for a in args if a is not type(None))


@pytest.mark.parametrize("schema", _schemas(), ids=lambda t: t.__name__)
def test_every_numeric_key_declares_its_range_and_its_default_is_in_it(schema):
    hints = typing.get_type_hints(schema)
    numeric = [f for f in dataclasses.fields(schema) if _numeric(hints[f.name]) and not dataclasses.is_dataclass(hints[f.name])]
    assert numeric or schema is Config
    undeclared = [f.name for f in numeric if "check" not in f.metadata]
    assert not undeclared, f"{schema.__name__}: declare a range with metarec.checks.rule for {undeclared}"
    for f in dataclasses.fields(schema):
        if "check" in f.metadata:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert default is None or parse(f.metadata["check"])(default) is None, (schema.__name__, f.name)


@pytest.mark.parametrize("rule, good, bad", [
    (">= 1", [1, 2.5], [0, -3, 0.99, float("nan"), "1", True]),
    ("> 0", [1e-9], [0, -1e-9]),
    ("in [0, 1)", [0, 0.5], [1, -0.1]),
    ("in (0, 1]", [1, 0.5], [0, 1.1]),
    ("one of exp, linear", ["exp", "linear"], ["bogus", "", 1]),
    ("each >= 1", [[1, 2], []], [[1, 0]]),
    ("any", [-1e9, 0], []),
])
def test_rules_accept_their_range_only(rule, good, bad):
    check = parse(rule)
    assert all(check(v) is None for v in good) and all(check(v) for v in bad)


def test_a_field_without_a_rule_is_not_checked_and_a_malformed_rule_fails_at_import():
    from metarec.checks import rule

    @dataclasses.dataclass
    class Free:
        a: int = 0
        b: int = rule(1, ">= 1")

    assert problems(OmegaConf.structured(Free(a=-5))) == []
    assert problems(OmegaConf.structured(Free(b=0))) == ["b=0: must be >= 1"]
    with pytest.raises(ValueError, match="unknown config rule"):
        rule(1, "positive")


def test_every_preset_passes_its_checks():
    for preset in ["", "data=sinusoid", "data=omniglot", "experiment=maml_omniglot_5w1s", "experiment=melu_ml1m_ridge"]:
        assert problems(compose(preset.split())) == []


# ---- fit: the declaration agrees with what building the model and the algorithm does -----------------

SPECS = {  # a model spec of each data kind, as its task source gives it (small)
    "rating": {"fields": [["gender", 3], ["age", 8], ["occupation", 22], ["zip", 11], ["year", 9], ["item", 40]],
               "multi_hot": ["genre", 5], "offset": 3.5},
    "regression": {"in_dim": 1},
    "classification": {"ways": 5},
}
DATA_OF = {"rating": "movielens", "regression": "sinusoid", "classification": "omniglot"}


@pytest.mark.parametrize("kind", SPECS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("algo", ALGOS)
def test_the_fit_check_refuses_exactly_what_would_not_build(kind, model, algo):
    cfg = compose([f"data={DATA_OF[kind]}", f"algo={algo}"], check=False)
    cfg.model = OmegaConf.merge(cfg.model, {"name": model, "hidden": [8]})
    try:
        check_fit(cfg)
        refused = None
    except UserError as e:
        refused = str(e)
        assert f"model={model}" in refused or f"data={DATA_OF[kind]}" in refused
    if refused is None:  # accepted: it builds, and any exception on the way is a bug that fails here
        ALGOS[algo](cfg.algo, build_model(cfg.model, cfg.algo, SPECS[kind]), kind)
        return
    # refused: building fails too, and for the reason expected, not for a bug on the way
    with pytest.raises(Exception) as e:
        ALGOS[algo](cfg.algo, build_model(cfg.model, cfg.algo, SPECS[kind]), kind)
    if isinstance(e.value, KeyError):  # a model of another data kind asks the spec for its own key
        assert MODEL_KIND[model] != kind and e.value.args == (SPEC_KEY[model],), repr(e.value)
    else:  # the model (UserError from build_model) or the algorithm (ValueError) refuses the pairing, naming it
        assert type(e.value) is (ValueError if algo in RAISES_VALUE_ERROR and "algo=" in str(e.value) else UserError), repr(e.value)
        assert f"algo={algo}" in str(e.value) or f"model={model}" in str(e.value), repr(e.value)


def test_every_model_declares_on_the_base_class_what_the_fit_check_reads():
    """Each model of the registry is a metarec.models.base.Model (data_kinds, offers, fast_form have their
    defaults there); what models offer and algorithms need are OFFERS' words."""
    from metarec.models.base import OFFERS, Model
    for name, model in MODELS.items():
        assert issubclass(model, Model) and set(model.offers) <= set(OFFERS), name
    for name, algo in ALGOS.items():
        assert set(algo.model_needs(compose([f"algo={name}"], check=False).algo)) <= set(OFFERS), name


MODEL_KIND = {"melu": "rating", "mamo": "rating", "mlp": "regression", "conv4": "classification"}
SPEC_KEY = {"melu": "fields", "mamo": "fields", "mlp": "in_dim", "conv4": "ways"}
# algorithm constructors refuse with a ValueError (they know no CLI); build_model turns a model's into a UserError
RAISES_VALUE_ERROR = {"ridge", "tanp", "metaemb", "mwuf", "lwa", "nlba", "lwa_items", "nlba_items"}


def test_a_model_that_refuses_its_settings_is_one_user_error_line():
    cfg = compose(["data=sinusoid", "algo=prompt"])
    algo = OmegaConf.merge(cfg.algo, {"prompt_dim": 0})  # past the range check, as an API caller could
    with pytest.raises(UserError, match="prompt_len and prompt_dim must both be > 0"):
        build_model(cfg.model, algo, {"in_dim": 1})


def test_the_default_main_job_is_the_tuned_maml_preset():
    default = OmegaConf.to_container(compose(["algo=maml", "data=movielens"]), resolve=True)
    preset = OmegaConf.to_container(compose(["experiment=melu_ml100k"]), resolve=True)
    assert default["data"].pop("cut_year") is None and preset["data"].pop("cut_year") == 1996  # null = 1996 on ml-100k
    assert default == preset
    sinusoid = compose(["data=sinusoid", "algo=maml"])
    assert sinusoid.algo.weight_decay == 0.0 and sinusoid.trainer.max_steps == 1000 and sinusoid.trainer.patience is None


def test_commands_that_compose_nothing_import_no_torch():
    code = "import sys; from metarec.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr
