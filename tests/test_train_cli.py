"""python -m drpose.train's options: every config field is a flag, JSON config files, errors."""

import argparse
import json

import pytest

from drpose._cli import UsageError
from drpose.train import cli
from drpose.train.__main__ import main
from drpose.train.reward import RewardConfig
from drpose.train.skel import SkelConfig


def parse(cls, argv, config_file=None):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, cls)
    return cli.build(cls, parser.parse_args(argv), config_file)


def test_flags_nested_fields_tuples_and_bools(tmp_path):
    config = parse(SkelConfig, ["--train.steps", "7", "--channels", "8", "16",
                                "--train.progress", "false", "--sigma", "2.5"])
    assert config.train.steps == 7 and config.train.progress is False
    assert config.channels == (8, 16) and config.sigma == 2.5
    assert config.train.lr == SkelConfig().train.lr  # untouched fields keep their defaults


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"steps": 3, "name": "x"}, "kl_weight": 0.5}))
    config = parse(RewardConfig, ["--train.steps", "9"], path)
    assert (config.train.steps, config.train.name, config.kl_weight) == (9, "x", 0.5)


def test_unknown_option_in_file_is_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"kl_wieght": 0.5}))
    with pytest.raises(ValueError, match="kl_wieght"):
        parse(RewardConfig, [], path)


def test_unknown_stage_and_help(capsys):
    assert main(["nonsense"]) == 2
    with pytest.raises(SystemExit) as done:
        main(["reward", "--help"])
    assert done.value.code == 0
    assert "--train.steps" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--train.checkpoint_every", "0"], "--train.checkpoint_every must be an integer >= 1, got 0"),
    (["--train.log_every", "0"], "--train.log_every must be an integer >= 1"),
    (["--train.grad_accum", "0"], "--train.grad_accum must be an integer >= 1"),
    (["--train.steps", "-3"], "--train.steps must be an integer >= 1, got -3"),
    (["--train.keep_checkpoints", "0"], "--train.keep_checkpoints must be an integer >= 1"),
    (["--eval_samples", "0"], "--eval_samples must be an integer >= 1, got 0"),
    (["--batch_size", "0"], "--batch_size must be an integer >= 1, got 0"),
    (["--finetune", "half"], "--finetune must be 'lora' or 'full', got 'half'"),
    (["--pipeline", "no/such/pipe"], "--pipeline no/such/pipe: no such folder"),
    (["--skel", "no/such/skel"], "--skel no/such/skel: no such folder"),
    (["--data", "no/such/data"], "--data no/such/data: no such folder"),
    (["--config", "no/such.json"], "--config no/such.json: no such file"),
])
def test_bad_values_are_one_line_errors_before_any_work(argv, message, tmp_path, capsys,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["reward", *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and message in err
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


def test_empty_input_folder_and_debug_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["reward", "--data", "empty"]) == 2
    assert "--data empty: the folder is empty" in capsys.readouterr().err
    with pytest.raises(Exception, match="the folder is empty"):
        main(["reward", "--data", "empty", "--debug"])


@pytest.mark.parametrize(("values", "key"), [({"train": {"steps": "abc"}}, "train.steps"),
                                             ({"kl_weight": "x"}, "kl_weight"),
                                             ({"train": 3}, "train"),
                                             ({"lora_targets": [1, 2]}, "lora_targets"),
                                             ({"pipeline": 5}, "pipeline")])
def test_config_file_values_are_type_checked(tmp_path, capsys, monkeypatch, values, key):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    assert main(["reward", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"config value {key}" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_config_file_types_that_fit_are_taken(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"kl_weight": 1, "pipeline": None, "lora_targets": ["to_q"]}))
    config = parse(RewardConfig, [], path)
    assert config.kl_weight == 1.0 and isinstance(config.kl_weight, float)
    assert config.lora_targets == ("to_q",) and config.pipeline is None


def test_help_shows_the_stage_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["reward", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--train.lr TRAIN.LR (default: 0.01)" in text  # the reward stage's, not TrainConfig's
    assert "--train.name TRAIN.NAME (default: drpose)" in text


def test_image_every_zero_means_no_grids_and_negative_is_refused():

    assert RewardConfig(image_every=0).image_every == 0  # the experiment and torchrun test use it
    with pytest.raises(UsageError, match=r"--image_every must be an integer >= 0, got -1"):
        RewardConfig(image_every=-1)


def test_overwrite_deletes_the_old_run_and_resume_excludes_it(tiny_renders, tiny_vae, tmp_path,
                                                               capsys):
    argv = ["skel", "--renders", str(tiny_renders), "--vae", str(tiny_vae),
            "--train.runs_dir", str(tmp_path), "--train.name", "s", "--train.steps", "1",
            "--train.progress", "false"]
    assert main(argv) == 0
    (tmp_path / "s" / "old.txt").write_text("from the old run")
    capsys.readouterr()
    assert main(argv) == 2 and "already holds a run" in capsys.readouterr().err
    assert main([*argv, "--resume", "--overwrite"]) == 2
    assert "pass one" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert not (tmp_path / "s" / "old.txt").exists()
    assert (tmp_path / "s" / "metrics.json").is_file()


def test_the_pshuman_preset_is_the_papers_run_and_a_wrong_name_is_named():
    assert "pshuman" in cli.preset_names()
    config = cli.from_dict(RewardConfig, cli.read_config_file("pshuman"))
    assert (config.train.steps, config.batch_size, config.train.grad_accum) == (18000, 2, 2)
    assert config.train.mixed_precision == "bf16" and config.finetune == "lora"
    assert (config.num_steps, config.trained_steps, config.early_stop) == (20, 2, 8)
    assert (config.guidance_scale, config.eta) == (3.0, 1.0)  # inference's CFG and eta
    with pytest.raises(UsageError, match=r"--config pshumann: no such file .* or preset "
                                         r"\(presets: pshuman\)"):
        cli.read_config_file("pshumann")
