import pytest

from flip_reward.config import SETTING_GROUP_CLASSES, Settings
from flip_reward.config_docs import README, settings_markdown, with_settings
from flip_reward.engines.vllm_local import check_block_size


def test_the_readme_configuration_is_the_generated_one():
    readme = README.read_text()
    assert with_settings(readme) == readme, "README.md's settings tables are out of date: run `make docs`"


def test_every_setting_belongs_to_exactly_one_group():
    grouped = [name for group in SETTING_GROUP_CLASSES for name in group.model_fields]
    assert sorted(grouped) == sorted(Settings.model_fields)
    assert all(f"`FLIP_{name.upper()}`" in settings_markdown() for name in Settings.model_fields)


def test_serve_help_gives_each_setting_the_readme_description(capsys, monkeypatch):
    from flip_reward.cli import build_parser

    monkeypatch.setenv("COLUMNS", "100000")  # no wrapping: argparse breaks lines at hyphens
    with pytest.raises(SystemExit) as exited:  # argparse fails here on a lone % in a description
        build_parser().parse_args(["serve", "--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for name, field in Settings.model_fields.items():
        assert " ".join(f"{field.description} [env FLIP_{name.upper()}] (default:".split()) in shown, name


def test_cli_flags_map_onto_settings():
    from flip_reward.cli import _settings_from, build_parser

    args = build_parser().parse_args(["serve", "--max-tokens", "12", "--no-copy-guard", "--method", "generate"])
    settings = _settings_from(args, set())
    assert (settings.max_tokens, settings.copy_guard, settings.method) == (12, False, "generate")


def test_a_block_size_the_cpu_backend_cannot_take_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="FLIP_KV_BLOCK_SIZE=16"):
        check_block_size(16, on_cpu=True)
    check_block_size(16, on_cpu=False)  # GPUs take 16
    check_block_size(64, on_cpu=True)


def test_a_removed_setting_that_would_change_rewards_stops_the_start(monkeypatch):
    monkeypatch.setenv("FLIP_LIKELIHOOD_BASELINE", "pmi")  # what is built in now: accepted
    monkeypatch.setenv("FLIP_STRUCTURED_OUTPUT", "false")
    Settings()
    monkeypatch.setenv("FLIP_LIKELIHOOD_BASELINE", "none")
    with pytest.raises(ValueError, match="FLIP_LIKELIHOOD_BASELINE='none': removed"):
        Settings()
    monkeypatch.delenv("FLIP_LIKELIHOOD_BASELINE")
    monkeypatch.setenv("FLIP_STRUCTURED_OUTPUT", "true")
    with pytest.raises(ValueError, match="FLIP_STRUCTURED_OUTPUT='true': removed"):
        Settings()
