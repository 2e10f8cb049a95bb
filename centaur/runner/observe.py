"""Inside the trial process: run the script as __main__ and record the values it really used.

The tuner writes a spec (`verify.json` in the trial folder) naming what it wrote and where; the launcher
or the starter calls `run_observed`, which runs the script and, when its module finishes (normally, by
an exception or by `sys.exit`), writes what it saw to `observed-<pid>.json` beside the spec:

- `globals`: the module's values of the written module-level names (ALL_CAPS constants, lowercase
  globals), read from the module's own namespace after its last statement;
- `arguments`: for each argparse destination, its value in the namespace the script's own
  `parse_known_args`/`parse_args` returned, at parse time and at the end (a namespace mutated later);
- `opened`: whether the trial's copy of a config file and its original were opened (an audit hook sees
  every `open`, imports and `exec(open(...).read())` included);
- `instances`: the fields of module-level instances of the written settings classes.

The tuner compares them with the study's values (centaur.runner.verify). This module runs before the
user's script in the same interpreter, so it imports only the standard library and changes nothing the
script can see except `argparse.ArgumentParser.parse_known_args`, wrapped to keep its result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from typing import Any

MISSING = {"missing": True}


def _plain(value: Any) -> Any:
    """A JSON value for what the script holds: scalars as they are, numeric types (NumPy, torch scalars)
    as numbers, anything else by its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    for kind in (int, float):
        try:
            if hasattr(value, "item"):
                item = value.item()
                if isinstance(item, (bool, int, float)):
                    return item
            converted = kind(value)
            if converted == value:
                return converted
        except Exception:  # noqa: BLE001 - any object; its repr is the fallback
            continue
    return {"repr": repr(value)[:200]}


class _Observer:
    def __init__(self, spec: dict[str, Any], out_path: str) -> None:
        self.spec = spec
        self.out_path = out_path
        self.namespaces: list[tuple[argparse.Namespace, dict[str, Any]]] = []
        self.opened = {"copy": False, "original": False}
        self.made: list[Any] = []  # instances of the written settings classes, wherever the script made them
        self.written = False

    def install(self) -> None:
        kinds = self.spec.get("instance_kinds", {})
        if "dataclass" in kinds.values():
            self._track_dataclasses(set(kinds))
        if "pydantic" in kinds.values():
            self._track_pydantic(set(kinds))
        if self.spec.get("arguments"):
            self._wrap_argparse()
        if self.spec.get("config_copy"):
            copy, original = (os.path.realpath(self.spec[k]) for k in ("config_copy", "config_original"))
            opened = self.opened

            def hook(event: str, args: tuple[Any, ...]) -> None:
                if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
                    try:
                        path = os.path.realpath(os.fsdecode(args[0]))
                    except (TypeError, ValueError):
                        return
                    if path == copy:
                        opened["copy"] = True
                    elif path == original:
                        opened["original"] = True

            sys.addaudithook(hook)

    def _track_dataclasses(self, names: set[str]) -> None:
        """Wrap `dataclasses.dataclass` so each written settings class of the script records the instances
        its `__init__` makes (HfArgumentParser, tyro and the script itself all go through it)."""
        import dataclasses
        import functools

        original = dataclasses.dataclass
        made = self.made

        def track(cls: Any) -> Any:
            if isinstance(cls, type) and cls.__name__ in names and cls.__module__ == "__main__":
                init = cls.__init__

                @functools.wraps(init)
                def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:
                    init(obj, *args, **kwargs)
                    made.append(obj)

                cls.__init__ = __init__
            return cls

        @functools.wraps(original)
        def dataclass(cls: Any = None, /, **kwargs: Any) -> Any:
            if cls is None:
                decorate = original(**kwargs)
                return lambda c: track(decorate(c))
            return track(original(cls, **kwargs))

        dataclasses.dataclass = dataclass  # type: ignore[assignment]

    def _track_pydantic(self, names: set[str]) -> None:
        try:
            import pydantic
        except ImportError:
            return
        original = pydantic.BaseModel.__init__
        made = self.made

        def __init__(obj: Any, /, **data: Any) -> None:
            original(obj, **data)
            if type(obj).__name__ in names and type(obj).__module__ == "__main__":
                made.append(obj)

        pydantic.BaseModel.__init__ = __init__  # type: ignore[method-assign]

    def _wrap_argparse(self) -> None:
        original = argparse.ArgumentParser.parse_known_args
        namespaces = self.namespaces

        def parse_known_args(parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
            result = original(parser, *args, **kwargs)
            namespace = result[0] if isinstance(result, tuple) else result
            if isinstance(namespace, argparse.Namespace):
                namespaces.append((namespace, dict(vars(namespace))))
            return result

        parse_known_args.__wrapped__ = original  # type: ignore[attr-defined]
        argparse.ArgumentParser.parse_known_args = parse_known_args  # type: ignore[method-assign]

    def report(self, namespace: dict[str, Any], ended: str) -> None:
        if self.written:
            return
        self.written = True
        observed: dict[str, Any] = {"pid": os.getpid(), "ended": ended}
        observed["globals"] = {
            name: _plain(namespace[name]) if name in namespace else MISSING for name in self.spec.get("globals", {})
        }
        arguments: dict[str, Any] = {}
        for dest in self.spec.get("arguments", {}):
            holders = [(ns, at_parse) for ns, at_parse in self.namespaces if dest in at_parse]
            if holders:
                ns, at_parse = holders[-1]
                arguments[dest] = {"parsed": _plain(at_parse[dest]), "end": _plain(getattr(ns, dest, None))}
        observed["arguments"] = arguments
        observed["parsed_args"] = len(self.namespaces)
        observed["opened"] = dict(self.opened)
        instances: dict[str, list[dict[str, Any]]] = {}
        for class_name, fields in self.spec.get("instances", {}).items():
            found = [v for v in [*self.made, *list(namespace.values())] if type(v).__name__ == class_name
                     and getattr(type(v), "__module__", "") == "__main__"]  # fmt: skip
            found = list({id(v): v for v in found}.values())
            instances[class_name] = [
                {f: _plain(getattr(obj, f)) if hasattr(obj, f) else MISSING for f in fields} for obj in found
            ]
        observed["instances"] = instances
        tmp = f"{self.out_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(observed, f)
        os.replace(tmp, self.out_path)


def run_observed(script: str, spec_path: str | None) -> None:
    """Run `script` as __main__ (as `python script` would: sys.argv[0], sys.path[0]); with a spec, record
    what it ran (see the module)."""
    script = os.path.abspath(script)
    sys.argv[0] = script
    sys.path[0] = os.path.dirname(script)
    observer = None
    if spec_path:
        with open(spec_path, encoding="utf-8") as f:
            spec = json.load(f)
        observer = _Observer(spec, os.path.join(os.path.dirname(spec_path), f"observed-{os.getpid()}.json"))
        observer.install()
    module = types.ModuleType("__main__")
    module.__file__ = script
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = module
    with open(script, "rb") as f:
        code = compile(f.read(), script, "exec")
    ended = "exception"
    try:
        exec(code, module.__dict__)
        ended = "finished"
    except SystemExit:
        ended = "exit"
        raise
    finally:
        if observer is not None:
            try:
                observer.report(module.__dict__, ended)
            except Exception as e:  # noqa: BLE001 - the trial's own outcome must not change
                print(f"centaur: could not record the values this run used: {e}", file=sys.stderr)
