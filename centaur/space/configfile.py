"""The `config` parameter source: a YAML, JSON or TOML file that the training script reads.

Keys are named by their dotted path (`optimizer.lr`, `model.n_layer`); every scalar leaf (a number, a
string, a boolean) is a candidate. A trial gets its values either in a copy of the file written into its
trial folder (`[space] config_inject = "copy"`, the default; same format, the other keys untouched) or as
Hydra-style `key.path=value` command-line arguments (`config_inject = "overrides"`).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centaur.config import ConfigError

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}
INJECT_MODES = ("copy", "overrides")


@dataclass
class ConfigFile:
    """A parsed config file: its scalar leaves by dotted path, and the paths whose values cannot be tuned."""

    path: Path  # absolute
    shown: str  # as written in centaur.toml
    fmt: str  # yaml | json | toml
    inject: str  # copy | overrides
    text: str
    leaves: dict[str, Any] = field(default_factory=dict)
    nonscalar: dict[str, str] = field(default_factory=dict)  # dotted path -> "a list", "a table", "null"

    def trial_relpath(self, script_dir: Path) -> Path:
        """Where the per-trial copy goes inside the trial folder: the file's place relative to the script's
        folder, or just its name when it lies outside that folder."""
        try:
            return self.path.relative_to(script_dir.resolve())
        except ValueError:
            return Path(self.path.name)

    def write_trial_copy(self, trial_dir: Path, script_dir: Path, values: Mapping[str, Any]) -> Path:
        """Write the trial's copy of the file (with `values`; unchanged for overrides) at its place relative
        to the work copy; when the file lies in a subfolder of the script's folder (`conf/train.yaml`), the
        rest of that folder comes too (Hydra's config groups), if small. Returns the copy's path."""
        rel = self.trial_relpath(script_dir)
        copy = trial_dir / rel
        folder = self.path.parent
        if len(rel.parts) > 1 and _small_folder(folder):
            shutil.copytree(folder, copy.parent, dirs_exist_ok=True)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(self.render(values) if values else self.text, encoding="utf-8")
        return copy

    def literals(self, script_dir: Path) -> set[str]:
        """The strings by which a script may name the file (rewritten to the copy in the work copy)."""
        rel = self.trial_relpath(script_dir).as_posix()
        return {self.shown, rel, f"./{rel}", str(self.path)}

    def render(self, values: Mapping[str, Any]) -> str:
        """The file's text with `values` (by dotted path) written in, in its own format."""
        unknown = sorted(set(values) - set(self.leaves))
        if unknown:
            raise ConfigError(f"{self.shown}: no scalar key {unknown[0]} to write")
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{self.shown}: cannot write non-finite value {value!r} for {key}")
        if self.fmt == "yaml":
            return _render_yaml(self.text, values)
        if self.fmt == "toml":
            return _render_toml(self.text, values)
        data = json.loads(self.text)
        for key, value in values.items():
            _set_path(data, key, value)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


_FOLDER_MAX_FILES = 200
_FOLDER_MAX_BYTES = 4 * 2**20


def _small_folder(folder: Path) -> bool:
    """A config folder small enough to copy into every trial's folder."""
    files, size = 0, 0
    for path in folder.rglob("*"):
        if path.is_symlink():
            return False
        if path.is_file():
            files += 1
            size += path.stat().st_size
            if files > _FOLDER_MAX_FILES or size > _FOLDER_MAX_BYTES:
                return False
    return True


def load_config_file(path: Path, shown: str, inject: str, where: str) -> ConfigFile:
    """Read and flatten the config file; `where` prefixes the errors (the centaur.toml and its key)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"{where} = {json.dumps(shown)}: unknown format {path.suffix or '(no suffix)'}; "
            "give a .yaml, .yml, .json or .toml file"
        )
    if not path.is_file():
        raise ConfigError(f"{where} = {json.dumps(shown)}: no such file {path} (the path is relative to centaur.toml)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where} = {json.dumps(shown)}: cannot read {path}: {e}") from None
    try:
        data = parse_config_text(text, fmt)
    except ConfigError as e:
        raise ConfigError(f"{where} = {json.dumps(shown)}: {path} is not valid {fmt.upper()}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where} = {json.dumps(shown)}: {path} must hold a mapping of keys at its top, not {_kind(data)}"
        )
    config = ConfigFile(path.resolve(), shown, fmt, inject, text)
    _flatten(data, "", config)
    return config


def override_args(values: Mapping[str, Any]) -> list[str]:
    """Hydra-style `key.path=value` words for `values`."""
    words = []
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"cannot pass non-finite value {value!r} for {key}")
        words.append(f"{key}={_override_value(value)}")
    return words


_PLAIN = re.compile(r"^[A-Za-z0-9_./:+\-]+$")


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in ("true", "false", "null", "none"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- parsing ---------------------------------------------------------------------------------------
def _yaml_loader() -> type:
    """PyYAML's SafeLoader, reading `1e-3` as a float (YAML 1.1 wants `1.0e-3`, configs rarely do)."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        raise ConfigError("reading YAML needs PyYAML (pip install pyyaml)") from None

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def parse_config_text(text: str, fmt: str) -> Any:
    """The data of a config file's text in `fmt` (yaml, json, toml); raises ConfigError."""
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(str(e)) from None
    if fmt == "toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(str(e)) from None
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(" ".join(str(e).split())) from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _flatten(data: dict[Any, Any], prefix: str, out: ConfigFile) -> None:
    for key, value in data.items():
        if not isinstance(key, str) or not key or "." in key:
            continue  # not addressable by a dotted path
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            if not value:
                out.nonscalar[path] = "an empty table"
            _flatten(value, f"{path}.", out)
        elif isinstance(value, (bool, int, float, str)) and not (isinstance(value, float) and not math.isfinite(value)):
            out.leaves[path] = value
        else:
            out.nonscalar[path] = _kind(value) if not isinstance(value, float) else "not a finite number"


def _set_path(data: Any, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


# -- writing ---------------------------------------------------------------------------------------
def _render_toml(text: str, values: Mapping[str, Any]) -> str:
    import tomlkit

    doc = tomlkit.parse(text)  # keeps the file's comments and layout
    for key, value in values.items():
        _set_path(doc, key, value)
    return tomlkit.dumps(doc)


def _render_yaml(text: str, values: Mapping[str, Any]) -> str:
    """The YAML text with each value replaced where it stands, so comments and layout stay."""
    import yaml

    root = yaml.compose(text, Loader=_yaml_loader())
    spans: list[tuple[int, int, str]] = []

    def visit(node: Any, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                continue
            path = f"{prefix}{k.value}"
            if isinstance(v, yaml.MappingNode):
                visit(v, f"{path}.")
            elif isinstance(v, yaml.ScalarNode) and path in values:
                spans.append((v.start_mark.index, v.end_mark.index, _yaml_scalar(values[path])))

    visit(root, "")
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _yaml_scalar(value: Any) -> str:
    import yaml

    if isinstance(value, float):
        text = repr(value)
        return text if "." in text or "e" not in text else text.replace("e", ".0e", 1)  # 1e-05 -> 1.0e-05
    dumped = yaml.safe_dump(value, default_flow_style=True, width=1 << 20)
    return dumped.removesuffix("\n").removesuffix("\n...").strip()
