"""The CLI's precision choice: bf16 only where the CPU multiplies bf16 matrices natively."""

import pytest
import yaml
from conftest import REPO

import varirm.lightning_cli
from varirm.cli import cli_main
from varirm.lightning_cli import cpu_precision


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    monkeypatch.delenv("VARIRM_CPU_BF16", raising=False)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_cpu_becomes_fp32_only_without_native_bf16(monkeypatch, native):
    monkeypatch.setattr(varirm.lightning_cli, "cpu_bf16_is_native", lambda: native)
    precision, note = cpu_precision("bf16-mixed", "cpu")
    assert (precision, bool(note)) == (("bf16-mixed", False) if native else ("32-true", True))
    assert cpu_precision("32-true", "cpu") == ("32-true", "")  # fp32 is never touched
    assert cpu_precision("bf16-mixed", "gpu") == ("bf16-mixed", "")  # nor a GPU run


def test_env_keeps_bf16_on_any_cpu(monkeypatch):
    monkeypatch.setattr(varirm.lightning_cli, "cpu_bf16_is_native", lambda: False)
    monkeypatch.setenv("VARIRM_CPU_BF16", "1")
    assert cpu_precision("bf16-mixed", "cpu") == ("bf16-mixed", "")


def test_fit_runs_and_saves_the_precision_it_used(tmp_path, monkeypatch, capsys, tiny_model_dir, synthetic_dir):
    monkeypatch.setattr(varirm.lightning_cli, "cpu_bf16_is_native", lambda: False)
    run = tmp_path / "run"
    cli = cli_main(["fit", "--config", str(REPO / "recipes" / "quickstart.yaml"),
                    "--trainer.default_root_dir", str(run), "--trainer.max_steps", "2",
                    "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
                    "--model.init_args.model_name_or_path", tiny_model_dir,
                    "--data.init_args.train", str(synthetic_dir / "train.jsonl"), "--data.init_args.val", "null",
                    "--data.init_args.test", "null"])
    assert cli.trainer.precision == "32-true"  # the recipe says bf16-mixed
    assert "bf16-mixed -> 32-true" in capsys.readouterr().err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == "32-true"  # a resume from the saved config trains the same way
