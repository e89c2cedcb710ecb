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


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """YAML keeps the last of two equal keys without a word: a forgotten second batch_size, or a second embed:
    section that drops the first one's keys, would change the run unseen."""
    p = tmp_path / "c.yaml"
    p.write_text("embed:\n  batch_size: 64\n  image_size: 96\n  batch_size: 8\nretrieve:\n  topk: 10\n"
                 "embed:\n  model: tf_efficientnet_lite0\n")
    with pytest.raises(ConfigError, match=r"2 bad setting\(s\)") as err:
        load_config(p)
    assert (f"{p} line 4: key 'embed.batch_size' is given again (first on line 2); YAML would keep only the last "
            "one: delete one of them") in str(err.value)
    assert (f"{p} line 7: key 'embed' is given again (first on line 1); YAML would keep only the last one: merge "
            "the two") in str(err.value)
    p.write_text("embed:\n  batch_size: 64\nretrieve:\n  batch_size: 8\n")  # the same name in two sections is fine
    with pytest.raises(ConfigError, match="unknown key 'retrieve.batch_size'"):  # (only unknown there)
        load_config(p)


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'embed.batchsize'; embed has model, weights"):
        load_config(None, ["embed.batchsize=3"])
    p = tmp_path / "c.yaml"
    p.write_text("embedd: {}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown section 'embedd'"):
        load_config(p)


@pytest.mark.parametrize("item, expected", [
    ("embed.batch_size=abc", "embed.batch_size='abc' (--set embed.batch_size=abc): expected an integer >= 1"),
    ("embed.batch_size=0", "expected an integer >= 1"),
    ("embed.batch_size=true", "expected an integer >= 1"),  # a bool is not a number
    ("openset.threshold=abc", "expected a number >= -1 and <= 1 or 'auto'"),
    ("openset.threshold=2", "openset.threshold=2"),
    ("retrieve.topk=-1", "retrieve.topk=-1"),
    ("train.epochs=abc", "train.epochs='abc'"),
    ("rerank.extractor=sift2", "expected one of 'sift', 'aliked-n16'"),
    ("embed.mean=[0.5, 0.5]", "a list of 3 items"),
    ("embed.device=gpu", "embed.device='gpu'"),
    ("validate.query_fraction=1", "expected a number > 0 and < 1"),
    ("openset.candidates=[]", "at least 1 items"),
    ("embed.tta_views=-1", "embed.tta_views=-1"),
    # an embed.also entry's keys obey the rules of the embed keys they set
    ("embed.also=[{model: x, tta_views: -1}]",
     "embed.also[0].tta_views=-1 (--set embed.also=[{model: x, tta_views: -1}]): expected an integer >= 0 and <= 32"),
    ("embed.also=[{model: x}, {model: y, tta_flip: 3}]", "embed.also[1].tta_flip=3"),
])
def test_bad_values_are_refused_with_what_is_expected(item, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [item])
    assert expected in str(err.value) and "1 bad setting" in str(err.value)


def test_every_bad_key_in_one_message(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("embed:\n  batch_size: -3\nretrieve: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, ["openset.threshold=2", "cluster.cut=nope", "train.epochz=3"])
    msg = str(err.value)
    assert msg.startswith("5 bad setting(s)")
    for part in ("embed.batch_size=-3 (" + str(p) + ")", "section 'retrieve' must be a mapping",
                 "openset.threshold=2", "cluster.cut='nope'", "unknown key 'train.epochz'"):
        assert part in msg, part


def test_allowed_values_pass():
    conf = load_config(None, ["openset.threshold=0.7", "embed.image_size=null", "rerank.batch_size=auto",
                              "cluster.cut=0.5", "embed.mean=[0.4, 0.5, 0.6]", "train.margin=0", "rerank.geometric=null"])
    assert conf["openset"]["threshold"] == 0.7 and conf["rerank"]["batch_size"] == "auto"


def test_every_default_obeys_its_own_rule():
    from kit.config import SETTINGS, check

    assert check(DEFAULTS) == []
    assert set(SETTINGS) == set(DEFAULTS) and all(set(SETTINGS[s]) == set(DEFAULTS[s]) for s in SETTINGS)


def test_shipped_configs_load():
    """Every shipped config loads, and every value it sets is what the merged config holds."""
    from pathlib import Path

    import yaml

    files = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
    assert len(files) >= 5
    for p in files:
        conf = load_config(p)
        for section, values in (yaml.safe_load(p.read_text()) or {}).items():
            for key, value in values.items():
                assert conf[section][key] == value, (p.name, section, key)
