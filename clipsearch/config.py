"""Settings and their precedence: command-line flag > CLIPSEARCH_* environment > config file > default.

The config file is TOML, by default `config.toml` in click's application directory
(~/.config/clipsearch/config.toml on Linux), or the file named by CLIPSEARCH_CONFIG. Its tables are
per command, with the flags' names (dashes or underscores):

    [index]
    model = "ViT-B-32:laion2b_s34b_b79k"
    batch-size = 64

    [query]
    limit = 20

A top-level `library = "..."` applies to every command. click applies the precedence: a value
given on the command line wins over its environment variable, which wins over this file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .errors import ConfigError

COMMANDS = ("index", "query", "status", "check", "serve", "shapes", "train", "eval", "inspect", "duplicates",
            "classify", "tag", "map", "ls", "forget")


def config_path(env: dict) -> Path:
    import click

    given = env.get("CLIPSEARCH_CONFIG")
    return Path(given) if given else Path(click.get_app_dir("clipsearch")) / "config.toml"


def read_config(path: Path) -> dict:
    """The config file's tables and keys as written; {} when there is none."""
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None


def load_default_map(path: Path) -> dict:
    """click's default_map from a config file; {} when there is none."""
    data = read_config(path)
    shared = {k.replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}
    default_map = {}
    for name in COMMANDS:
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"config file {path}: [{name}] must be a table")
        default_map[name] = {**shared, **{k.replace("-", "_"): v for k, v in section.items()}}
    unknown = [k for k, v in data.items() if isinstance(v, dict) and k not in COMMANDS]
    if unknown:
        raise ConfigError(f"config file {path}: unknown section(s) {', '.join(unknown)}")
    return default_map


def _aliases(group, name: str) -> dict[str, str]:
    """A command's parameter names by every name a config file may use (flag names, dashes or underscores)."""
    alias: dict[str, str] = {}
    command = group.commands.get(name)
    for p in command.params if command is not None else ():
        alias[p.name] = p.name
        for opt in getattr(p, "opts", []):
            alias[opt.lstrip("-").replace("-", "_")] = p.name
    return alias


def param_names(group, default_map: dict) -> dict:
    """Config keys may be flag names (`limit`, `batch-size`); click's default_map wants the parameter names of
    the commands of `group` (the click group)."""
    out = {}
    for name, values in default_map.items():
        if name in group.commands:
            alias = _aliases(group, name)
            out[name] = {alias[k]: v for k, v in values.items() if k in alias}
    return out


def unknown_settings(group, path: Path) -> list[str]:
    """The config file's settings that no command of `group` takes (a misspelt `limt` would otherwise be
    ignored silently): a table's keys its command does not have, top-level keys that no command has."""
    lines = []
    for key, value in read_config(path).items():
        if isinstance(value, dict):
            alias = _aliases(group, key)
            lines += [f"config file {path}: [{key}] has no setting {k!r}; it is ignored"
                      for k in value if k.replace("-", "_") not in alias]
        elif not any(key.replace("-", "_") in _aliases(group, c) for c in group.commands):
            lines.append(f"config file {path}: no command has a setting {key!r}; it is ignored")
    return lines
