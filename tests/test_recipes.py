"""Every shipped recipe parses and instantiates its classes (no weights loaded, no Hub access),
so a recipe cannot rot. (litgpt tests/test_config_hub.py)"""

import inspect
from pathlib import Path

import pytest

from varirm.lightning_cli import VarirmCLI
from varirm.preference_data import PreferenceDataModule
from varirm.reward_training import RewardModelModule

ALL = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))
SAMPLE_RECIPES = [p for p in ALL if p.parent.name == "sample"]
SFT_RECIPES = [p for p in ALL if p.stem.startswith("sft")]
RLOO_RECIPES = [p for p in ALL if p.parent.name == "rloo"]
REGIMES_RECIPES = [p for p in ALL if p.stem == "regimes"]
VERIFY_RECIPES = [p for p in ALL if p.parent.name == "verify" and p not in REGIMES_RECIPES]
RECIPES = [p for p in ALL if p not in SAMPLE_RECIPES + SFT_RECIPES + RLOO_RECIPES + VERIFY_RECIPES + REGIMES_RECIPES]


class ParseOnly(VarirmCLI):
    """Parses and type-checks a recipe, builds model and data modules, skips the Trainer (GPU
    recipes name accelerators this machine lacks)."""

    def instantiate_classes(self):
        self.config_init = self.parser.instantiate_classes(self.config)
        self.model, self.datamodule = self.config_init["model"], self.config_init["data"]


def test_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"quickstart", "full_1b", "lora_1b", "qlora_8b", "variance_synthetic",
                                         "variance_lora_1b", "fsdp_8b"}
    assert SAMPLE_RECIPES and SFT_RECIPES
    assert {p.stem for p in VERIFY_RECIPES} >= {"synthetic", "testbed_gpu", "paper_1b"}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses(recipe):
    cli = ParseOnly(RewardModelModule, PreferenceDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    run=False, args=["--config", str(recipe)], auto_configure_optimizers=False)
    assert isinstance(cli.model, RewardModelModule) and isinstance(cli.datamodule, PreferenceDataModule)
    assert cli.datamodule.hparams.tokenizer_name_or_path == cli.model.hparams.model_name_or_path
    assert cli.config["trainer"]["default_root_dir"]


def test_fsdp_recipe_shards_and_checkpoints_decoder_layers():
    """The FSDP recipe's strategy is built as written: FULL_SHARD, FSDP units and activation
    checkpointing on the Llama decoder layer, sharded checkpoints, bf16 compute on fp32 weights."""
    from torch.distributed.fsdp import ShardingStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    path = next(p for p in RECIPES if p.stem == "fsdp_8b")
    cli = ParseOnly(RewardModelModule, PreferenceDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    run=False, args=["--config", str(path)], auto_configure_optimizers=False)
    strategy = cli.config_init["trainer"]["strategy"]
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD and strategy._state_dict_type == "sharded"
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert cli.config["trainer"]["precision"] == "bf16-mixed" and cli.model.hparams.dtype == "float32"
    assert cli.config["trainer"]["devices"] == 8 and not cli.model.hparams.gradient_checkpointing


def test_a_bad_recipe_value_is_rejected_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPES[0].read_text().replace("overlong: truncate", "overlong: sometimes"))
    with pytest.raises(SystemExit):
        ParseOnly(RewardModelModule, PreferenceDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  run=False, args=["--config", str(bad)], auto_configure_optimizers=False)


@pytest.mark.parametrize("recipe", SAMPLE_RECIPES, ids=[p.stem for p in SAMPLE_RECIPES])
def test_sample_recipe_parses(recipe):
    from jsonargparse import ArgumentParser

    from varirm.sampling import sample

    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_function_arguments(sample)
    cfg = parser.parse_args(["--config", str(recipe)])
    assert cfg.k >= 2 and cfg.policy and cfg.prompts and cfg.output


@pytest.mark.parametrize("recipe", SFT_RECIPES, ids=[p.stem for p in SFT_RECIPES])
def test_sft_recipe_parses(recipe):
    from varirm.sft import SFTDataModule, SFTModule

    cli = ParseOnly(SFTModule, SFTDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                    args=["--config", str(recipe)], auto_configure_optimizers=False)
    assert isinstance(cli.model, SFTModule) and cli.model.hparams.save_dir


@pytest.mark.parametrize("recipe", RLOO_RECIPES, ids=[p.stem for p in RLOO_RECIPES])
def test_rloo_recipe_parses(recipe):
    from varirm.lightning_cli import PolicyCLI
    from varirm.rloo import PromptDataModule, RLOOModule

    class ParseOnlyPolicy(PolicyCLI):
        instantiate_classes = ParseOnly.instantiate_classes

    cli = ParseOnlyPolicy(RLOOModule, PromptDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                          args=["--config", str(recipe)], auto_configure_optimizers=False)
    assert isinstance(cli.model, RLOOModule) and cli.model.hparams.k >= 2


OVERLAYS = {"regularizers": "synthetic", "objectives": "synthetic"}  # used on top of synthetic.yaml


@pytest.mark.parametrize("recipe", VERIFY_RECIPES, ids=[p.stem for p in VERIFY_RECIPES])
def test_verify_recipe_parses_with_every_recipe_it_names(recipe, monkeypatch):
    """The verification config parses, and so does every RM and RLOO recipe it runs, with the
    overrides it applies (no weights loaded)."""
    from jsonargparse import ArgumentParser

    from varirm.callbacks import PolicyEvaluation
    from varirm.jobs import JOBS, apply_overrides, load_recipe
    from varirm.lightning_cli import PolicyCLI
    from varirm.rloo import PromptDataModule, RLOOModule
    from varirm.sft import SFTDataModule, SFTModule
    from varirm.verify import verify

    monkeypatch.chdir(recipe.parents[2])  # recipe paths are relative to the repository root
    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_function_arguments(verify)
    base = OVERLAYS.get(recipe.stem)  # a config used on top of another one
    args = ["--config", str(recipe.parent / f"{base}.yaml")] if base else []
    cfg = parser.instantiate_classes(parser.parse_args([*args, "--config", str(recipe)]))
    names = [spec.name for spec in cfg.reward_models]
    assert len(set(names)) == len(names) and set(cfg.compare or []) <= set(names)
    assert {n for b in cfg.budgets or [] for n in b} <= set(names)
    for spec in cfg.reward_models:
        assert (spec.recipe is None) != (spec.reward is None), spec
        if spec.recipe:
            cli = ParseOnly(RewardModelModule, PreferenceDataModule, subclass_mode_model=True, subclass_mode_data=True,
                            run=False, args=apply_overrides(load_recipe(spec.recipe), spec.overrides),
                            auto_configure_optimizers=False)
            assert isinstance(cli.model, RewardModelModule)

    class ParseOnlyPolicy(PolicyCLI):
        instantiate_classes = ParseOnly.instantiate_classes

    cli = ParseOnlyPolicy(RLOOModule, PromptDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                          args=apply_overrides(load_recipe(cfg.rloo_recipe), cfg.rloo_overrides),
                          auto_configure_optimizers=False)
    callbacks = cli.config_init["trainer"]["callbacks"]
    assert any(isinstance(c, PolicyEvaluation) for c in callbacks), "the RLOO recipe needs the gold-curve callback"
    for step in cfg.prepare:  # each names a job and arguments that job takes
        assert step.job in {"make-tiny-model", "make-real-model", "make-synthetic", "make-instruction-world", "sft",
                            "sample"}, step
        if step.job == "sft":
            assert set(step.args) <= {"recipe", "overrides"}, step
            ParseOnly(SFTModule, SFTDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                      args=apply_overrides(load_recipe(step.args["recipe"]), step.args.get("overrides")),
                      auto_configure_optimizers=False)
        else:
            arguments = {**(load_recipe(step.args["config"]) if "config" in step.args else {}), **step.args}
            arguments.pop("config", None)
            inspect.signature(JOBS[step.job]).bind(**arguments)


def test_regimes_recipe_parses_with_every_setting_it_runs(monkeypatch):
    """recipes/verify/regimes.yaml parses as `varirm regimes` arguments, and the RLOO recipe parses
    with each setting's overrides (optimizer, lr, beta, advantage normalization)."""
    import itertools

    from jsonargparse import ArgumentParser

    from varirm.jobs import apply_overrides, load_recipe
    from varirm.lightning_cli import PolicyCLI
    from varirm.regimes import regimes
    from varirm.rloo import PromptDataModule, RLOOModule

    recipe = REGIMES_RECIPES[0]
    monkeypatch.chdir(recipe.parents[2])  # recipe paths are relative to the repository root
    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_function_arguments(regimes)
    cfg = parser.instantiate_classes(parser.parse_args(["--config", str(recipe)]))
    assert all(spec.reward and not spec.recipe for spec in cfg.reward_models)
    assert len(cfg.seeds) >= 3 and set(cfg.optimizers) == {"adamw", "sgd"} and set(cfg.lr) == set(cfg.optimizers)

    class ParseOnlyPolicy(PolicyCLI):
        instantiate_classes = ParseOnly.instantiate_classes

    for opt, beta, norm in itertools.product(cfg.optimizers, cfg.betas, cfg.advantage_normalizations):
        overrides = {**cfg.rloo_overrides, "model.init_args.optimizer": opt, "model.init_args.lr": cfg.lr[opt],
                     "model.init_args.beta": beta, "model.init_args.advantage_normalization": norm}
        cli = ParseOnlyPolicy(RLOOModule, PromptDataModule, subclass_mode_model=True, subclass_mode_data=True,
                              run=False, args=apply_overrides(load_recipe(cfg.rloo_recipe), overrides),
                              auto_configure_optimizers=False)
        assert cli.model.hparams.optimizer == opt and cli.model.hparams.advantage_normalization == norm
