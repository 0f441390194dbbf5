"""Every option of every config group composes, and each maps to one Python definition."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from degflow.cli.app import CONF_DIR, register_resolvers, run_slug, to_plain
from degflow.training.loggers import NullLogger, build_logger
from degflow.core.losses import LossSettings
from degflow.core.solvers import SolverSpec
from degflow.training.lfm import SplineSettings
from degflow.training import train_settings

register_resolvers()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_config(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_config_groups_exist_with_their_documented_options():
    assert options("stage") == ["lfm", "rae"]
    assert options("model/rae") == ["paper", "small"]
    assert options("model/lfm") == ["paper", "small"]
    assert {"demo", "realsr", "paired"} <= set(options("data"))
    assert options("solver") == ["dopri5", "euler", "midpoint", "rk4"]
    assert options("logger") == ["none", "wandb"]
    assert options("experiment")


def test_default_config_is_the_demo_rae_run_with_offline_wandb():
    cfg = compose_config()
    assert cfg.stage.name == "rae" and cfg.data._target_.endswith("demo_data")
    assert cfg.logger.kind == "wandb" and cfg.logger.mode == "offline"
    assert cfg.device == "auto" and cfg.resume is True


@pytest.mark.parametrize("stage", options("stage"))
def test_every_stage_option_builds_train_settings(stage):
    settings = train_settings(to_plain(compose_config([f"stage={stage}"]))["stage"])
    assert settings.name == stage and settings.steps > 0


@pytest.mark.parametrize("group", ["model/rae", "model/lfm"])
def test_every_model_option_instantiates_and_records_its_arguments(group):
    for option in options(group):
        plain = to_plain(compose_config([f"{group}={option}"]))
        node = plain["model"][group.split("/")[1]]
        model = instantiate(node, _convert_="all")
        assert isinstance(model, torch.nn.Module)
        args = {k: v for k, v in node.items() if k != "_target_"}
        assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()} == args


@pytest.mark.parametrize("option", options("solver"))
def test_every_solver_option_is_a_valid_solver_spec(option):
    spec = SolverSpec.create(**to_plain(compose_config([f"solver={option}"]))["solver"])
    assert spec.method == option


@pytest.mark.parametrize("option", options("logger"))
def test_every_logger_option_builds_a_logger(option, tmp_path):
    node = dict(to_plain(compose_config([f"logger={option}"]))["logger"])
    logger = build_logger(node.pop("kind"), tmp_path, {"x": 1}, **node)
    try:
        assert isinstance(logger, NullLogger)
        logger.log({"loss": 1.0}, step=1)
    finally:
        logger.finish()
    assert (tmp_path / "history.jsonl").read_text().count("loss") == 1


@pytest.mark.slow
def test_demo_data_option_instantiates_a_data_bundle():
    bundle = instantiate(to_plain(compose_config(["data=demo"]))["data"], _convert_="all")
    assert bundle.train_scales[0] == 1.0 and len(bundle.val) > 0
    item = bundle.train[0]
    assert item["hr"].shape[0] == 3 and item["lr"].shape[0] == len(bundle.train_scales) - 1


@pytest.mark.parametrize("option", ["realsr", "paired"])
def test_data_options_with_a_root_need_it(option):
    cfg = compose_config([f"data={option}"])
    with pytest.raises(Exception, match="root"):
        to_plain(cfg)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes_and_validates(experiment):
    extra = {"realsr_cpu": ["data.root=/data"]}.get(experiment)   # a preset of data=paired needs its root
    cfg = compose_config([f"+experiment={experiment}", "data.root=/data", "data=realsr"]
                         if "paper" in experiment else [f"+experiment={experiment}", *(extra or [])])
    plain = to_plain(cfg)
    train_settings(plain["stage"])
    LossSettings(**plain["loss"])
    SolverSpec.create(**plain["solver"])
    spline = SplineSettings(**plain["spline"])
    spline.time_map((1.0, 2.0, 4.0))


def test_the_paper_stage2_preset_trains_nhwc_at_its_256_pixel_crops():
    """channels_last was measured faster at 256-px crops on CPU and GPU (docs/BENCHMARKS.md,
    "Training throughput"), slower at the demo's 64 px: on in the paper preset only."""
    paper = to_plain(compose_config(["+experiment=lfm_paper", "data.root=/data"]))
    assert paper["channels_last"] is True and paper["data"]["crop_size"] == 256
    assert to_plain(compose_config([]))["channels_last"] is False


def test_spline_and_loss_nodes_map_to_validated_settings():
    plain = to_plain(compose_config())
    assert SplineSettings(**plain["spline"]).path == "cubic"
    assert LossSettings(**plain["loss"]).lpips_weight == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"spline.path='bezier' is not one of \['cubic', 'linear'\]"):
        SplineSettings(path="bezier")
    with pytest.raises(ValueError, match="loss.taylor_order"):
        LossSettings(taylor_order=4)


def test_unknown_config_options_are_refused_with_the_valid_choices():
    with pytest.raises(ConfigCompositionException, match="rk5"):
        compose_config(["solver=rk5"])
    with pytest.raises(ConfigCompositionException):
        compose_config(["stage.nonexistent_key=1"])


def test_run_directory_is_derived_from_the_command():
    assert run_slug("rae", []) == "default"
    assert run_slug("lfm", ["stage.steps=40", "stage.warmup_steps=10"]) == "stage.steps-40+stage.warmup_steps-10"
    assert run_slug("lfm", ["stage.warmup_steps=10", "stage.steps=40"]) == "stage.steps-40+stage.warmup_steps-10"
    # characters outside [A-Za-z0-9._-] are replaced and a hash keeps different commands apart
    a, b = run_slug("rae", ["data.root=/a/b", "seed=1"]), run_slug("rae", ["data.root=/a_b", "seed=1"])
    assert a.startswith("data.root-_a_b+seed-1-") and a != b
    assert len(run_slug("rae", ["seed=" + "1" * 500])) <= 120
    assert run_slug("rae", ["seed=" + "1" * 500]) != run_slug("rae", ["seed=" + "1" * 499])
    raw = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "config.yaml"), resolve=False)
    assert "run_slug:${stage.name},${hydra:overrides.task}" in raw["hydra"]["run"]["dir"]


def test_run_directory_depends_only_on_what_the_stage_uses():
    assert run_slug("rae", ["loss.lpips_weight=0", "solver=euler", "spline.path=linear", "model/lfm=paper",
                            "model.lfm.nf=8", "eval.lpips=false", "rae_ckpt=x.pt"]) == "default"
    assert run_slug("lfm", ["model.rae.widths=[8,8]", "model/rae=paper"]) == "default"
    assert run_slug("lfm", ["loss.lpips_weight=0"]) == "loss.lpips_weight-0"
    assert run_slug("rae", ["stage=rae", "device=cpu", "num_workers=2", "resume=false", "logger=none",
                            "logger.project=p", "output_root=/o", "hydra/launcher=basic", "stage.ckpt_every=10",
                            "stage.ckpt_minutes=1", "stage.keep_every=100", "stage.log_every=5"]) == "default"


def test_the_multirun_flag_may_follow_the_overrides():
    from degflow.cli.app import hoist_multirun_flag

    argv = ["train.py", "stage=lfm", "-m", "solver.steps=8,16,32"]
    assert hoist_multirun_flag(argv) == ["train.py", "-m", "stage=lfm", "solver.steps=8,16,32"]
