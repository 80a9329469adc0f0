"""How options are read and checked: one parser for every recipe, defaults < recipe defaults < YAML < CLI < Python.

The option definitions (dataclasses whose `metadata["help"]` documents each option) live in hfssl/args.py;
this module holds the machinery around them: the parser, YAML configs and shipped presets, the generic
checks every option class uses (choices, positive numbers, fractions, one source of two), and the
Markdown tables behind `hfssl options` and docs/options/.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from hfssl.errors import OptionError

__all__ = [
    "OptionError",
    "check_choices",
    "check_fraction",
    "check_positive",
    "choices_of",
    "config_file",
    "fill_unset",
    "given",
    "load_yaml",
    "one_of",
    "option_values",
    "options_table",
    "parse_args",
]


def choices_of(f: dataclasses.Field) -> tuple[Any, ...]:
    """The values a field accepts: `metadata["choices"]`, a tuple or a function returning one (for tables defined
    in modules the options must not import at definition time)."""
    choices = f.metadata["choices"]
    return tuple(choices() if callable(choices) else choices)


def _choice_fields(types: Sequence[type]) -> set[str]:
    return {f.name for t in types for f in dataclasses.fields(t) if "choices" in f.metadata}


def check_choices(options: Any) -> None:
    """Every field with `metadata["choices"]` holds one of them (None passes: "the default for the model")."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if "choices" in f.metadata and value is not None and value not in choices_of(f):
            raise ValueError(f"--{f.name} must be one of {', '.join(map(str, choices_of(f)))}, got {value!r}.")


def check_fraction(name: str, value: float, low_open: bool = True, high_open: bool = True) -> None:
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"--{name} must be in {lo}0, 1{hi}, got {value}. Pass a value such as 0.15.")


def check_positive(options: Any, *names: str) -> None:
    """Each named option is unset (None) or a positive number."""
    for name in names:
        value = getattr(options, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be a positive integer, got {value}.")


def one_of(options: Any, first: str, second: str, notes: tuple[str, str] = ("", "")) -> None:
    """At most one of two options that name the same thing ("Pass either --dataset_name or --train_file, not both.")."""
    if getattr(options, first) and getattr(options, second):
        raise ValueError(f"Pass either --{first}{notes[0]} or --{second}{notes[1]}, not both.")


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"Config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError:
        raise ValueError(f"Config file {path} is not UTF-8 text.") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"Config file {path} must hold a mapping of option: value, got {type(loaded).__name__}.")
    return loaded


def parse_args(
    types: Sequence[type],
    argv: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    dataset: Any = None,
) -> tuple[Any, ...]:
    """Parse `recipe.py [config.yaml] [--key value ...]` into the given dataclasses.

    Precedence: dataclass defaults < `defaults` (the recipe's) < YAML file < command line < `options`
    (keyword arguments of the Python API, Python values). `dataset`, an in-memory `datasets.Dataset`
    or `DatasetDict`, becomes the data of the data options. Unknown names raise `OptionError`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(types)
    known = {f.name for t in types for f in dataclasses.fields(t) if f.init}
    merged: dict[str, Any] = dict(defaults or {})
    given: set[str] = set()
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        config_path = config_file(argv.pop(0))
        from_yaml = load_yaml(config_path)
        unknown = sorted(set(from_yaml) - known)
        if unknown:
            raise OptionError(
                f"Unknown option(s) in {config_path}: {', '.join(unknown)}.{_did_you_mean(unknown[0], known)} "
                "See `--help` for valid names."
            )
        merged.update(_typed_numbers(parser, from_yaml, config_path))
        given.update(from_yaml)
    # `--key none` sets an optional option to None (argparse would try float("none")).
    # (read the annotations: HfArgumentParser rewrites `field.type` to the bare type)
    optional = {name for t in types for name, hint in typing.get_type_hints(t).items() if type(None) in typing.get_args(hint)}
    optional.discard("report_to")  # its own value "none" means no integrations
    kept: list[str] = []
    i = 0
    while i < len(argv):
        key = argv[i][2:].replace("-", "_") if argv[i].startswith("--") else None
        if key in optional and i + 1 < len(argv) and argv[i + 1].lower() in ("none", "null"):
            merged[key] = None
            given.add(key)
            i += 2
            continue
        kept.append(argv[i])
        i += 1
    argv = kept
    parser.error = lambda message: _parse_error(message, known)  # argparse would print and exit; OptionError carries it
    namespace = parser.parse_args(argv)
    # Only what the user typed overrides the YAML and recipe defaults.
    typed = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    for action in parser._actions:
        if typed.intersection(action.option_strings) and action.dest != "help":
            merged[action.dest] = getattr(namespace, action.dest)
            given.add(action.dest)
    if options:
        unknown = sorted(set(options) - known)
        if unknown:
            raise OptionError(
                f"Unknown option(s): {', '.join(unknown)}.{_did_you_mean(unknown[0], known)} "
                "`hfssl options <recipe>` lists the valid names."
            )
        merged.update(options)
        given.update(options)
    try:
        parsed = parser.parse_dict(merged)  # the dataclasses' own checks (__post_init__) run here
    except OptionError:
        raise
    except (ValueError, TypeError) as err:
        raise OptionError(str(err)) from err
    if dataset is not None:
        _attach_dataset(parsed, dataset)
    for options_object in parsed:  # what the user set, as opposed to defaults: see `given`
        fields = {f.name for f in dataclasses.fields(options_object)}
        options_object.__dict__["_given"] = frozenset(given & fields)
    return parsed


def fill_unset(values: dict[str, Any], *objects: Any) -> dict[str, Any]:
    """Set each of `values` on the options object that has it, unless the user set it; return what was set."""
    applied = {}
    for name, value in values.items():
        owner = next((o for o in objects if name in {f.name for f in dataclasses.fields(o)}), None)
        if owner is None:
            raise KeyError(f"no options object has {name!r}")
        if name not in given(owner):
            setattr(owner, name, value)
            applied[name] = value
    return applied


def given(options: Any) -> frozenset[str]:
    """The names of the options the user set (YAML, command line or Python) in a parsed options object.

    A recipe whose best default depends on the model (a small encoder from scratch or a pretrained checkpoint)
    fills in only the options that are not in this set.
    """
    return options.__dict__.get("_given", frozenset())


def _attach_dataset(parsed: Sequence[Any], dataset: Any) -> None:
    """Give the in-memory dataset to the data options, which must not name another source."""
    import datasets

    if not isinstance(dataset, (datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise OptionError(
            f"dataset= must be a datasets.Dataset or DatasetDict, got {type(dataset).__name__}. "
            "Wrap in-memory rows with datasets.Dataset.from_dict({...}) or from_pandas(df)."
        )
    data = next((p for p in parsed if any(f.name == "dataset" for f in dataclasses.fields(p))), None)
    if data is None:
        raise OptionError("dataset=: this recipe reads no data of its own (a pipeline's stages do). Pass it to a recipe.")
    named = [
        f"--{name}"
        for name in ("dataset_name", "train_file", "train_dir", "validation_file", "validation_dir")
        if getattr(data, name, None)
    ]
    if named:
        raise OptionError(f"dataset= and {', '.join(named)} both name the data: pass one of them.")
    data.dataset = dataset


def option_values(options: Any) -> dict[str, Any]:
    """An options dataclass as a dict of what can be typed (for records): the in-memory dataset left out."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.init}


def config_file(path: str) -> str:
    """A YAML config: the path as given, or the name of a preset that ships with hfssl (hfssl.recipes's configs/)."""
    if Path(path).is_file():
        return path
    from hfssl.recipes import CONFIGS

    if os.sep not in path and (CONFIGS / path).is_file():
        return str(CONFIGS / path)
    shipped = ", ".join(sorted(p.name for p in CONFIGS.glob("*.yaml")))
    raise OptionError(f"Config file {path} does not exist (the presets that ship with hfssl, usable by name: {shipped}).")


def _parser(types: Sequence[type]) -> HfArgumentParser:
    """HfArgumentParser, with every boolean option taking the bare flag (`--train_tokenizer` means true).

    transformers gives the bare form to `bool` fields but not to `bool | None` ones (None: "decide for me").
    """
    from transformers.hf_argparser import string_to_bool

    parser = HfArgumentParser(list(types))
    for action in parser._actions:
        if action.type is string_to_bool and action.nargs is None:
            action.nargs, action.const = "?", True
        if action.dest in _choice_fields(types):
            action.choices = None  # enforced by check_choices, with the same message from the CLI, YAML and Python
    return parser


def _did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name.lstrip("-").replace("-", "_"), list(known), n=1, cutoff=0.75)
    return f" Did you mean --{close[0]}?" if close else ""


def _parse_error(message: str, known: set[str]) -> typing.NoReturn:
    """argparse's message as an OptionError; it quotes the offending arguments, so Hub tokens are blanked out first."""
    secrets = [t for t in (os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")) if t]
    for secret in secrets:
        message = message.replace(secret, "<HF_TOKEN>")
    message = re.sub(r"hf_[A-Za-z0-9]{8,}", "<HF_TOKEN>", message)  # a token typed after a misspelt --hub_token
    unknown = re.match(r"unrecognized arguments: (\S+)", message)
    hint = _did_you_mean(unknown.group(1), known) if unknown and unknown.group(1).startswith("--") else ""
    raise OptionError(f"Could not parse options: {message}.{hint} See `--help` for the options and their types.")


def _typed_numbers(parser: HfArgumentParser, values: dict[str, Any], path: str) -> dict[str, Any]:
    """YAML values of int and float options, checked and converted as the command line would.

    YAML reads `1e-4` as a string and `ten` as text: both reach the Trainer unconverted otherwise.
    """
    kinds = {action.dest: action.type for action in parser._actions if action.type in (int, float)}
    checked = dict(values)
    for key, value in values.items():
        kind = kinds.get(key)
        if kind is None or value is None:
            continue
        if isinstance(value, str):
            try:
                checked[key] = kind(value)
                continue
            except ValueError:
                pass
        elif not isinstance(value, bool) and (isinstance(value, int) or (kind is float and isinstance(value, float))):
            continue
        raise ValueError(f"Config file {path}: {key} must be {'an integer' if kind is int else 'a number'}, got {value!r}.")
    return checked


def options_table(types: Sequence[type], skip: type | None = None) -> str:
    """A Markdown table of the options of `types` (for `hfssl options` and docs/options), from their help text."""
    rows = ["| option | default | what it does |", "|---|---|---|"]
    skipped = {f.name for f in dataclasses.fields(skip)} if skip else set()
    for t in types:
        for f in dataclasses.fields(t):
            if not f.init or f.name in skipped or "help" not in f.metadata:
                continue
            default = f.default if f.default is not dataclasses.MISSING else "-"
            help_text = f.metadata["help"]
            if "choices" in f.metadata:
                help_text += f" One of: {', '.join(map(str, choices_of(f)))}."
            help_text = help_text.replace("|", "\\|")
            rows.append(f"| `--{f.name}` | `{default}` | {help_text} |")
    return "\n".join(rows)
