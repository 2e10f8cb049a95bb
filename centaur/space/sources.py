"""Where a script's hyperparameters live, found with the AST (the script is never run).

- `constants`: `ALL_CAPS = literal` assignments, module level or nested (centaur.space.extract).
- `globals`: lowercase module-level `name = literal` assignments (nanoGPT style, often overridden by
  `--key=value` arguments through an exec'd configurator). A trial gets its values written into its work
  copy, which works whether or not the script also reads overrides from the command line.
- `argparse`: `add_argument` calls with a literal default (or `action="store_true"`); a trial gets its
  values as command-line arguments.
- `dataclass`: the literal-default fields of a settings class the script uses (`@dataclass`, attrs,
  pydantic, NamedTuple; centaur.space.settings_classes); a trial gets its values written into the
  class body of its work copy.
- `config`: the scalar leaves of a YAML/JSON/TOML file the script reads, by dotted path
  (centaur.space.configfile); a trial gets a copy of the file, or `key.path=value` overrides.

Which names are tuned by default is conservative for `globals`, `argparse` and `config` (by the last part
of a dotted key): learning rates, weight decay, batch sizes, depths and widths, dropout, warm-up, betas,
momentum, schedule fractions; paths, seeds, logging, devices, I/O and run lengths never are.
`[space.params.NAME]` in centaur.toml tunes any other found name.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from centaur.space.curated import AUTORESEARCH, curated_param, heuristic_param
from centaur.space.extract import Assignment, constant_assignment, constant_value, find_assignments, parse_script
from centaur.space.params import Param

SOURCES: tuple[str, ...] = ("constants", "globals", "argparse", "dataclass", "config")
_LOWER_RE = re.compile(r"^[a-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Argument:
    """One `add_argument` call: the option to write, its destination name and what argparse knows of it."""

    dest: str
    flag: str  # the option string used on the command line (the first long one)
    default: Any
    type: str | None = None  # "int" | "float" | "str" | None
    choices: tuple[Any, ...] = ()
    action: str | None = None  # "store_true" | "store_false" | None
    help: str = ""

    def argv(self, value: Any) -> list[str]:
        """The command-line words that set this argument to `value` (none for a flag left at its default)."""
        if self.action == "store_true":
            return [self.flag] if value else []
        if self.action == "store_false":
            return [] if value else [self.flag]
        text = repr(value) if isinstance(value, float) else str(value)
        return [f"{self.flag}={text}"] if self.flag.startswith("--") else [self.flag, text]


def find_globals(source: str, filename: str = "<script>") -> list[Assignment]:
    """Module-level single-target `name = literal` assignments with a lowercase name (not `_private`),
    first occurrence of each, in source order. Statements inside `if`/`try` at module level count."""
    tree = parse_script(source, filename)
    found: dict[str, Assignment] = {}

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                continue
            a = constant_assignment(node, _LOWER_RE)
            if a is not None and a.name not in found:
                found[a.name] = a

    visit(tree.body)
    return sorted(found.values(), key=lambda a: (a.lineno, a.col_offset))


def find_arguments(source: str, filename: str = "<script>") -> list[Argument]:
    """The optional `add_argument("--name", ...)` calls whose default is a literal (or that are
    `store_true`/`store_false` flags), first of each destination, in source order. Positional and
    required arguments, `nargs` lists and non-literal defaults are left out (they cannot be searched)."""
    tree = parse_script(source, filename)
    found: dict[str, Argument] = {}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    for call in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
        if call.func.attr != "add_argument":  # type: ignore[attr-defined]
            continue
        flags = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if not flags or not all(f.startswith("-") for f in flags):
            continue  # positional
        kw = {k.arg: k.value for k in call.keywords if k.arg}
        if "nargs" in kw or _literal(kw.get("required")) is True:
            continue
        flag = next((f for f in flags if f.startswith("--")), flags[0])
        dest = _literal(kw.get("dest")) if "dest" in kw else flag.lstrip("-").replace("-", "_")
        if not isinstance(dest, str) or not dest.isidentifier() or dest in found:
            continue
        action = _literal(kw.get("action")) if "action" in kw else None
        help_text = _literal(kw.get("help")) if "help" in kw else ""
        help_text = help_text if isinstance(help_text, str) else ""
        if action in ("store_true", "store_false"):
            default = _literal(kw["default"]) if "default" in kw else action == "store_false"
            if isinstance(default, bool):
                found[dest] = Argument(dest, flag, default, "bool", action=action, help=help_text)
            continue
        if action is not None and action != "store":
            continue
        type_name = kw["type"].id if isinstance(kw.get("type"), ast.Name) else None
        if "type" in kw and type_name not in ("int", "float", "str"):
            continue  # a converter we cannot mirror
        if "default" not in kw:
            continue
        try:
            default = constant_value(kw["default"])
        except (ValueError, ArithmeticError):
            continue
        if type_name == "int" and isinstance(default, str):
            default = _convert(default, int)
        elif type_name == "float" and isinstance(default, (str, int)) and not isinstance(default, bool):
            default = _convert(default, float)
        if default is None or isinstance(default, bool):
            continue
        choices: tuple[Any, ...] = ()
        if "choices" in kw:
            value = _literal(kw["choices"])
            if not isinstance(value, (list, tuple)) or not value:
                continue
            choices = tuple(value)
        found[dest] = Argument(dest, flag, default, type_name, choices, None, help_text)
    return list(found.values())


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None


def _convert(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        return None


# -- what is tuned by default (every source) --------------------------------------------------------
# Names are read by meaning, whatever their style: `--device-batch-size`, `device_batch_size`,
# `DEVICE_BATCH_SIZE` and `deviceBatchSize` are one knob (`canonical`), a batch size, not a device setting.
_NEVER = {  # what a word in a name says the setting is, when it is never tuned by default
    "a seed": "seed",
    "an id, token or vocabulary setting": "id ids token tokens bos eos pad unk vocab tokenizer",
    "a data setting": "data dataset split shard shards samples examples input",
    "an I/O setting": "path dir file files filename out output save resume checkpoint ckpt cache root url host "
                      "port name init",
    "a logging setting": "log logs logging wandb tensorboard print verbose interval profile",
    "a device or runtime setting": "device devices dtype compile backend workers worker cuda mps gpu gpus cpu world "
                                   "rank ddp",
    "a context length": "block seq context len length",
    "an evaluation, test or debug setting": "eval val valid validation test always debug dry",
}
_NEVER_WORDS = {word: what for what, words in _NEVER.items() for word in words.split()}
_LENGTH_WORDS = frozenset("iters iter iterations steps epochs epoch budget".split())
_TUNE_NAMES = frozenset(
    "lr learning_rate weight_decay wd momentum dropout gamma beta1 beta2 n_layer n_layers num_layers layers depth "
    "n_embd d_model hidden hidden_size hidden_dim width emb_dim embed_dim embedding_dim model_dim batch_size "
    "micro_batch_size label_smoothing min_lr max_lr grad_clip clip_grad max_grad_norm nesterov amsgrad optimizer "
    "activation scheduler schedule".split()
)
_TUNE_WORDS = frozenset("lr dropout warmup warmdown cooldown beta1 beta2 momentum depth layers hidden width".split())
_DEPTH_NAMES = frozenset("n_layer n_layers num_layers layers depth".split())
_HEAD_NAMES = frozenset("n_head n_heads num_heads heads num_attention_heads".split())
_WIDTH_NAMES = frozenset(
    "n_embd d_model hidden hidden_size hidden_dim width emb_dim embed_dim embedding_dim model_dim".split()
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def canonical(name: str) -> str:
    """The ALL_CAPS form of a name in any style: `--aspect-ratio`, `aspect_ratio`, `aspectRatio` ->
    `ASPECT_RATIO` (the autoresearch names are looked up by it)."""
    return _CAMEL.sub("_", name.lstrip("-")).replace("-", "_").replace(".", "_").upper()


def tuned_by_default(name: str, value: Any, all_names: set[str], choices: tuple[Any, ...] = ()) -> str | None:
    """None when `name` is tuned by default; otherwise why not (shown by `centaur space`; any found name is
    tuned once centaur.toml has a table for it)."""
    key = canonical(name).lower()
    words = set(key.split("_"))
    heads = {canonical(n).lower() for n in all_names} & _HEAD_NAMES
    if isinstance(value, str) and not choices and canonical(name) not in AUTORESEARCH:
        return "a string: give it choices in centaur.toml to tune it"
    if canonical(name) in AUTORESEARCH:
        return None  # one of the study's 14 hyperparameters, under any style of name
    if "batch" in words and "size" in words and not words & {"eval", "val", "valid", "validation", "test"}:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a batch size that is not a number"
    never = sorted(words & set(_NEVER_WORDS))
    if never:
        return _NEVER_WORDS[never[0]]
    if key in _HEAD_NAMES:
        return "a head count: widths must stay divisible by it"
    if key in _WIDTH_NAMES and heads:
        return "a width that must stay divisible by the head count"
    if words & _LENGTH_WORDS and not words & {"warmup", "warmdown", "cooldown"}:
        return "a run length: it changes the compute of a trial"
    if isinstance(value, bool) and key not in _TUNE_NAMES:
        return "a switch"
    if key in _TUNE_NAMES or words & _TUNE_WORDS or key.endswith("_lr"):
        return None
    if key.endswith(("_frac", "_fraction", "_ratio")) and isinstance(value, float):
        return None
    if {"weight", "decay"} <= words or "dropout" in key:
        return None
    return "not a name tuned by default"


def named_param(name: str, default: Any, choices: tuple[Any, ...] = ()) -> Param | None:
    """A range for a name that says what it is: an autoresearch knob under any style of name gets its
    curated range (when the script's value lies in it), dropout, betas, fractions... theirs; else the
    heuristics."""
    if choices:
        if default not in choices:
            return None
        return Param(name, "categorical", default, choices=tuple(choices), source="heuristic")
    curated = curated_param(canonical(name), default)
    if curated is not None and curated.contains(default):
        return dataclasses.replace(curated, name=name)
    key = canonical(name).lower()
    words = set(re.split(r"[_\-]+", key))
    number = isinstance(default, (int, float)) and not isinstance(default, bool)
    if number and isinstance(default, float):
        bounded = {
            "dropout": (0.0, 0.5), "beta1": (0.8, 0.99), "beta2": (0.9, 0.9999), "momentum": (0.5, 0.99),
            "gamma": (0.1, 1.0), "label_smoothing": (0.0, 0.3),
        }  # fmt: skip
        hit = next((r for w, r in bounded.items() if w in words or key == w), None)
        if hit is not None and hit[0] <= default <= hit[1]:
            return Param(name, "float", default, low=hit[0], high=hit[1], source="heuristic")
        if key.endswith(("_frac", "_fraction", "_ratio")) and 0.0 <= default <= 1.0:
            return Param(name, "float", default, low=0.0, high=1.0, source="heuristic")
        if key in ("weight_decay", "wd") or {"weight", "decay"} <= words:
            if default == 0.0 or default >= 0.01:
                return Param(name, "float", default, low=0.0, high=max(0.5, 2 * default), source="heuristic")
    if number and isinstance(default, int) and key in _DEPTH_NAMES and default >= 1:
        return Param(name, "int", default, low=max(1, default // 4), high=max(default * 4, 2), source="heuristic")
    if number and isinstance(default, int) and "warmup" in words and default >= 0:
        return Param(name, "int", default, low=0, high=max(4 * default, 10), source="heuristic")
    return heuristic_param(name, default)


__all__ = [
    "SOURCES", "Argument", "canonical", "find_arguments", "find_assignments", "find_globals", "named_param",
    "tuned_by_default",
]
