"""The public decoding options, each declared once: what is reloaded dense (:class:`Selection`) and how the answer
is generated (:class:`Generation`), and the named profiles that give a checkpoint its defaults.

Every field carries its default, its constraint and its help text. The command line (``videoxl ask``, ``videoxl
eval``) builds its flags from these fields (:func:`add_arguments`) and the server reads its request fields through
them (:func:`from_mapping`), so the library, the CLI and the server cannot disagree. A plain module with no heavy
imports, so the CLI builds its parser without loading torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import OptionError

from .defaults import NEW_TOKENS_LIMIT


def _option(default, help: str, check: Callable[[Any], str | None] | None = None, cli: str | None = None,
            http: str | None = None):
    """A field with its default, its help text and its constraint (``check`` returns what is wrong, or None);
    ``cli`` and ``http`` rename it on the command line and in a request."""
    return field(default=default, metadata={"help": help, "check": check, "cli": cli, "http": http})


def _whole(low: int, high: int | None = None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
            return f"must be a whole number {'>= ' + str(low) if high is None else f'from {low} to {high:,}'}"
        return None
    return check


def _real(low: float, high: float, low_open: bool = False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v > high \
                or v < low or (low_open and v == low):
            return f"must be a finite number in {'(' if low_open else '['}{low:g}, {high:g}]"
        return None
    return check


def _switch(v):
    return None if isinstance(v, bool) else "must be true or false (on or off)"


def _stops(v):
    if not isinstance(v, tuple) or len(v) > 4 or not all(isinstance(s, str) and s for s in v):
        return "must be up to 4 non-empty strings"
    return None


class _Checked:
    """Checks every field against its declared constraint when an instance is made."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check = f.metadata.get("check")
            if value is None and _optional(self, f):
                continue
            problem = check(value) if check is not None else None
            if problem:
                raise OptionError(f"{f.name} {problem}, got {value!r}")


def _optional(instance, f: dataclasses.Field) -> bool:
    hint = typing.get_type_hints(type(instance))[f.name]
    return type(None) in typing.get_args(hint)


@dataclass(frozen=True)
class Selection(_Checked):
    """Which chunks are reloaded dense for a question; the rest stay sparse (pooled). The first and last chunk are
    always dense; the others are ranked by the model's own relevance (``engine/select.py``)."""

    topk: int | None = _option(4, "relevant chunks reloaded dense besides the first and last", _whole(0))
    kv_budget: float | None = _option(
        None, "instead of topk: the fraction of the dense KV cache the answer may use", _real(0, 1, low_open=True))
    chunk: int | None = _option(1, "decoding chunk size in 4-frame groups (none: the pre-fill chunk)", _whole(1),
                                cli="--decode-chunk", http="decode_chunk")
    dense: bool = _option(False, "decode with every chunk dense (no selection)", _switch)
    sparse_stamps: bool = _option(
        False, "sparse chunks keep their timestamp tokens in the answer's cache (the published bi-level decoding)",
        _switch)
    min_confidence: float | None = _option(
        None, "decode every chunk dense when the chosen chunks stand out less than this (0-1)", _real(0, 1))

    @property
    def selects(self) -> bool:
        """Whether chunks are chosen (else every chunk is dense)."""
        return not self.dense and (self.topk is not None or self.kv_budget is not None)

    @property
    def limit(self) -> int | None:
        """The number of relevant chunks reloaded dense (None: as the budget allows)."""
        return None if self.kv_budget is not None else self.topk


@dataclass(frozen=True)
class Generation(_Checked):
    """How the answer is generated: greedy when ``temperature`` is 0."""

    max_new_tokens: int = _option(32, "answer length limit in tokens", _whole(1, NEW_TOKENS_LIMIT), http="max_tokens")
    temperature: float = _option(0.0, "sampling temperature (0: greedy)", _real(0, 2))
    top_p: float = _option(1.0, "nucleus sampling: the smallest set of tokens holding this probability",
                           _real(0, 1, low_open=True))
    top_k: int = _option(0, "sample among the k most likely tokens (0: all)", _whole(0))
    seed: int | None = _option(None, "sampling seed", _whole(0, 2**63 - 1))
    stop: tuple[str, ...] = _option((), "strings that end the answer (up to 4)", _stops)


@dataclass(frozen=True)
class Profile:
    """A checkpoint family's decoding defaults and load dtype; a user's explicit option always wins."""

    name: str
    selection: Selection
    gpu_dtype: str | None  # None: the checkpoint's own torch_dtype, else bf16 on GPU


PROFILES = {
    # the bundled model and SmolLM2: the choices measured on them (docs/relevance.md)
    "videoxl": Profile("videoxl", Selection(), None),
    # BAAI/Video-XL-2 and any checkpoint in its layout: decoded as it was trained and evaluated (the published
    # bi-level code keeps every sparse chunk's timestamps; every published run loads float16)
    "published": Profile("published", Selection(sparse_stamps=True), "float16"),
}


def options(profile: str = "videoxl", **given) -> tuple[Selection, Generation]:
    """The profile's defaults with the ``given`` options (field names of :class:`Selection` or
    :class:`Generation`) over them; OptionError names an unknown option or a bad value."""
    base = PROFILES[profile].selection
    names = {f.name for f in dataclasses.fields(Selection)} | {f.name for f in dataclasses.fields(Generation)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise OptionError(f"unknown decoding option {unknown[0]!r}; the options are {', '.join(sorted(names))}")
    if "stop" in given and isinstance(given["stop"], (list, str)):
        given["stop"] = (given["stop"],) if isinstance(given["stop"], str) else tuple(given["stop"])
    if given.get("kv_budget") is not None and "topk" not in given:
        given["topk"] = None
    sel = {k: v for k, v in given.items() if k in {f.name for f in dataclasses.fields(Selection)}}
    gen = {k: v for k, v in given.items() if k not in sel}
    return dataclasses.replace(base, **sel), Generation(**gen)


# -- the command line and requests ------------------------------------------------------------------------------
def _cli_name(f: dataclasses.Field) -> str:
    return f.metadata.get("cli") or "--" + f.name.replace("_", "-")


def _parse_text(f: dataclasses.Field, hint) -> Callable[[str], Any]:
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = base[0]
    check = f.metadata.get("check")

    def parse(text: str):
        if kind is bool:
            if text not in ("on", "off"):
                raise argparse.ArgumentTypeError(f"must be 'on' or 'off', got {text!r}")
            return text == "on"
        if text == "none" and type(None) in typing.get_args(hint):
            return None
        try:
            value = int(text) if kind is int else float(text) if kind is float else text
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a {'whole ' if kind is int else ''}number, got {text!r}") \
                from None
        problem = check(value) if check is not None and kind in (int, float) else None
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value
    return parse


def _spelled(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == ():
        return "none"
    return " ".join(value) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else str(value)


def add_arguments(parser: argparse.ArgumentParser, classes: tuple[type, ...] = (Selection, Generation)) -> None:
    """One flag per field of ``classes``; a flag not given is left out of the parsed namespace, so the model's
    profile decides it (:func:`given`). A switch alone (``--dense``) means on."""
    for cls in classes:
        group = parser.add_argument_group(cls.__name__.lower(), " ".join(cls.__doc__.split()))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = _spelled(f.default)
            others = [f"{p.name}: {_spelled(getattr(p.selection, f.name))}" for p in PROFILES.values()
                      if cls is Selection and getattr(p.selection, f.name) != f.default]
            note = f"default {default}" + "".join(f"; profile {o}" for o in others)
            kw: dict = {"help": f"{f.metadata['help']} ({note})", "default": argparse.SUPPRESS, "dest": _dest(f)}
            if f.name == "stop":
                kw.update(action="append", metavar="TEXT")
            else:
                kw.update(type=_parse_text(f, hints[f.name]), metavar=f.name.upper())
                if hints[f.name] is bool:
                    kw.update(metavar="on|off", nargs="?", const=True)
            group.add_argument(_cli_name(f), **kw)


def _dest(f: dataclasses.Field) -> str:
    return _cli_name(f)[2:].replace("-", "_")


def given(namespace: argparse.Namespace) -> dict:
    """The decoding options a parsed command line states explicitly, by field name."""
    fields = [f for cls in (Selection, Generation) for f in dataclasses.fields(cls)]
    return {f.name: getattr(namespace, _dest(f)) for f in fields if hasattr(namespace, _dest(f))}


def request_fields() -> dict[str, str]:
    """Request field -> option name, for every option (the server's extra fields and OpenAI's own)."""
    return {(f.metadata.get("http") or f.name): f.name
            for cls in (Selection, Generation) for f in dataclasses.fields(cls)}


def from_mapping(body: Mapping[str, Any]) -> dict:
    """The decoding options a request states (field names as :func:`request_fields` spells them), unchecked:
    :func:`options` checks them. A ``null`` is the same as leaving the field out."""
    return {name: body[key] for key, name in request_fields().items() if body.get(key) is not None}
