from pathlib import Path

import pytest

from app.config import Settings
from app.engines.vllm_local import check_block_size

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    missing = [name for name in Settings.model_fields if f"`FLIP_{name.upper()}`" not in README]
    assert not missing, f"README configuration table lacks: {missing}"


def test_cli_flags_map_onto_settings():
    from app.cli import _settings_from, build_parser

    args = build_parser().parse_args(["serve", "--max-tokens", "12", "--no-copy-guard", "--method", "generate"])
    settings = _settings_from(args, set())
    assert (settings.max_tokens, settings.copy_guard, settings.method) == (12, False, "generate")


def test_a_block_size_the_cpu_backend_cannot_take_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="FLIP_KV_BLOCK_SIZE=16"):
        check_block_size(16, on_cpu=True)
    check_block_size(16, on_cpu=False)  # GPUs take 16
    check_block_size(64, on_cpu=True)


def test_every_setting_has_one_group_and_sits_in_its_readme_section():
    from app.config import SETTING_GROUPS

    grouped = [name for names in SETTING_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(Settings.model_fields), "each setting in exactly one group"
    table = README[README.index("## Configuration") :]
    sections = table.split("\n### ")[1:]
    assert len(sections) == len(SETTING_GROUPS), "one README section per settings group"
    for (group, names), section in zip(SETTING_GROUPS.items(), sections):
        rows = [line for line in section.splitlines() if line.startswith("| `FLIP_")]
        assert [row.split("`")[1] for row in rows] == [f"FLIP_{n.upper()}" for n in names], group
