"""python -m drpose.train's options: every config field is a flag, JSON config files, errors."""

import argparse
import json

import pytest

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
