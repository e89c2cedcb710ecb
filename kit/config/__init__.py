"""Every setting of the kit, in one visible default (kit/config/defaults.py), each with a checked type and range.

A run's config is DEFAULTS, overridden by a YAML file (``--config configs/x.yaml``), overridden by
``--set section.key=value`` pairs (values parse as YAML: ``--set embed.batch_size=64``,
``--set rerank.enabled=false``). ``kit config`` prints the merged result.

Each stage reads only its own section. A key's comment says what it does and how to turn it off.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ..errors import ConfigError
from .defaults import DEFAULTS, SETTINGS
from .rules import Rule

__all__ = ["DEFAULTS", "SETTINGS", "Rule", "check", "dump_config", "duplicate_keys", "load_config", "parse_override"]


def _merge(conf: dict, update: dict, origin: str, problems: list[str], sources: dict[str, str]) -> None:
    """Merge ``update`` ({section: {key: value}}) into ``conf`` in place; every unknown section or key, and every
    section given as something else than a mapping, is added to ``problems``; ``sources`` remembers where each
    value came from (for the messages of ``check``)."""
    for section, values in (update or {}).items():
        if section not in SETTINGS:
            problems.append(f"{origin}: unknown section '{section}'; the sections are {', '.join(SETTINGS)}")
            continue
        if not isinstance(values, dict):
            problems.append(f"{origin}: section '{section}' must be a mapping of keys (e.g. {section}: "
                            f"{{{next(iter(SETTINGS[section]))}: ...}}), not {values!r}")
            continue
        for key, value in values.items():
            if key not in SETTINGS[section]:
                known = ", ".join(SETTINGS[section])
                problems.append(f"{origin}: unknown key '{section}.{key}'; {section} has {known}")
                continue
            conf[section][key] = copy.deepcopy(value)
            sources[f"{section}.{key}"] = origin


def check(conf: dict, sources: dict[str, str] | None = None) -> list[str]:
    """One line per setting of ``conf`` whose value its rule (kit/config/defaults.py) does not allow."""
    out = []
    for section, rules in SETTINGS.items():
        for key, rule in rules.items():
            value = conf.get(section, {}).get(key, rule.default)
            if (why := rule.problem(value)) is not None:
                where = (sources or {}).get(f"{section}.{key}")
                out.append(f"{section}.{key}={value!r}{f' ({where})' if where else ''}: expected {why}")
    # each embed.also entry by the rule of the embed key it sets (its own keys: kit/pipeline/descriptors.py)
    also = conf.get("embed", {}).get("also")
    for i, extra in enumerate(also if isinstance(also, list) else []):
        for key, value in (extra.items() if isinstance(extra, dict) else ()):
            rule = SETTINGS["embed"].get(key)
            if rule is not None and key != "also" and (why := rule.problem(value)) is not None:
                where = (sources or {}).get("embed.also")
                out.append(f"embed.also[{i}].{key}={value!r}{f' ({where})' if where else ''}: expected {why}")
    return out


def duplicate_keys(text: str, origin: str) -> list[str]:
    """One line per key given twice in one mapping of the YAML ``text``, with both line numbers: YAML itself keeps
    the last value without a word, so ``batch_size: 64`` above a forgotten ``batch_size: 8`` would quietly lose."""
    out: list[str] = []

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                name = f"{prefix}{key_node.value}" if isinstance(key_node, yaml.ScalarNode) else f"{prefix}?"
                line = key_node.start_mark.line + 1
                if name in first:
                    fix = ("merge the two into one" if isinstance(value_node, yaml.MappingNode) else
                           "delete one of them")
                    out.append(f"{origin} line {line}: key '{name}' is given again (first on line {first[name]}); "
                               f"YAML would keep only the last one: {fix}")
                first.setdefault(name, line)
                walk(value_node, f"{name}.")
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, prefix)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "")
    return out


def parse_override(item: str) -> dict:
    """Turn ``"embed.batch_size=64"`` into ``{"embed": {"batch_size": 64}}`` (the value parses as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set '{item}' is not key=value; write e.g. --set embed.batch_size=64")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) != 2:
        raise ConfigError(f"--set '{item}': the key must be section.key, e.g. --set embed.batch_size=64")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set '{item}': the value is not valid YAML ({exc})") from exc
    return {parts[0]: {parts[1]: value}}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS, then the YAML file at ``path``, then each ``section.key=value`` override, in that order.

    Every unknown key and every value outside its type or range is reported in one ConfigError, before any work.
    """
    conf = copy.deepcopy(DEFAULTS)
    problems: list[str] = []
    sources: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; the shipped ones are in configs/")
        text = path.read_text()
        try:
            data = yaml.safe_load(text) or {}
            problems += duplicate_keys(text, str(path))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must be a mapping of sections (embed:, retrieve:, ...)")
        _merge(conf, data, str(path), problems, sources)
    for item in overrides or []:
        _merge(conf, parse_override(item), f"--set {item}", problems, sources)
    problems += check(conf, sources)
    if problems:
        raise ConfigError(f"{len(problems)} bad setting(s):\n  " + "\n  ".join(problems)
                          + "\nFix them in the config file or the --set values; `kit config` lists every setting "
                            "with its default, and kit/config/defaults.py says what each one accepts.")
    return conf


def dump_config(conf: dict) -> str:
    return yaml.safe_dump(conf, sort_keys=False)
