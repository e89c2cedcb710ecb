from __future__ import annotations

import pytest

from kit.config import DEFAULTS, load_config, parse_override
from kit.errors import ConfigError


def test_override_parses_yaml_values():
    assert parse_override("embed.batch_size=64") == {"embed": {"batch_size": 64}}
    assert parse_override("rerank.enabled=false") == {"rerank": {"enabled": False}}
    assert parse_override("embed.mean=[0.5, 0.5, 0.5]") == {"embed": {"mean": [0.5, 0.5, 0.5]}}


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("embed:\n  batch_size: 8\n  image_size: 96\n")
    conf = load_config(p, ["embed.batch_size=4"])
    assert conf["embed"]["batch_size"] == 4 and conf["embed"]["image_size"] == 96
    assert conf["retrieve"] == DEFAULTS["retrieve"]


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'embed.batchsize'"):
        load_config(None, ["embed.batchsize=3"])
    p = tmp_path / "c.yaml"
    p.write_text("embedd: {}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'embedd'"):
        load_config(p)


def test_shipped_configs_load():
    from pathlib import Path

    for p in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        assert load_config(p)["embed"]["model"]
