"""The package's shape: imports flow one way along the data path, options are declared once, functions stay short.

Layers, bottom to top (a module may import its own layer or lower ones, never higher):
leaf modules (errors, defaults, the option declarations, the cache folder, output files) -> video -> engine ->
model -> pipeline -> what is built on a session (explain, synth, eval, train, serve) -> the command line.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "videoxl"
LAYERS = [
    {"videoxl", "videoxl.errors", "videoxl.defaults", "videoxl.decoding", "videoxl.options", "videoxl.cache",
     "videoxl.question", "videoxl.outputs"},
    {"videoxl.video"},
    {"videoxl.engine"},
    {"videoxl.model", "videoxl.llm"},
    {"videoxl.pipeline"},
    {"videoxl.explain", "videoxl.synth", "videoxl.eval", "videoxl.train", "videoxl.serve", "videoxl.live"},
    {"videoxl.cli"},
]
# inside the engine the same rule holds, module by module
ENGINE = ["dispatch", "rope", "layout", "pattern", "accounting", "store", "summaries", "attention", "generate",
          "prefill", "select", "decode", "heads"]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (at the top or inside a function)."""
    modules = _modules()
    edges = {}
    for name, path in modules.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    found.add(full if full in modules else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        edges[name] = {t for t in found if t in modules and t != name}
    return edges


def _layer(module: str) -> int:
    for depth in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:depth])
        for i, layer in enumerate(LAYERS):
            if prefix in layer:
                return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_imports_have_no_circles():
    assert _cycles(_imports()) == []


def test_no_import_climbs_to_a_higher_layer():
    climbs = [(m, t) for m, targets in _imports().items() for t in targets if _layer(t) > _layer(m)]
    engine = [(m, t) for m, targets in _imports().items() if m.startswith("videoxl.engine.")
              for t in targets if t.startswith("videoxl.engine.")
              and ENGINE.index(t.rsplit(".", 1)[1]) > ENGINE.index(m.rsplit(".", 1)[1])]
    assert climbs == [] and engine == []


def test_the_analysis_sees_a_climb_and_a_circle():
    edges = {"videoxl.video.reader": {"videoxl.pipeline"}, "videoxl.pipeline": {"videoxl.video.reader"}}
    assert _cycles(edges) == [["videoxl.pipeline", "videoxl.video.reader"]]
    assert _layer("videoxl.pipeline") > _layer("videoxl.video.reader")


def test_functions_are_short():
    """No function over 60 lines, except where the reason is written on the line before it (``# long: why``)."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                size = node.end_lineno - node.lineno + 1
                if size > 60 and not lines[first - 2].strip().startswith("# long:"):
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({size} lines)")
    assert long == []


# -- one default per option -----------------------------------------------------------------------------------------
def _parsed_defaults(argv: list[str]) -> dict:
    from videoxl import decoding
    from videoxl.cli import _parser

    return decoding.given(_parser(argv).parse_args(argv))


def test_library_cli_and_server_decode_identically_by_default():
    from videoxl.decoding import Generation, Selection, options
    from videoxl.serve.protocol import parse_chat

    library = options("videoxl")
    assert library == (Selection(), Generation())
    cli = options("videoxl", **_parsed_defaults(["ask", "demo", "q"]))
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"},
                                                      {"type": "video_url", "video_url": {"url": "a.mp4"}}]}]}
    server = options("videoxl", **parse_chat(body, 8192, 4096).decoding)
    assert library == cli == server
    for profile in ("videoxl", "published"):  # a profile's defaults reach the three alike
        assert options(profile) == options(profile, **_parsed_defaults(["ask", "demo", "q"])) == \
            options(profile, **parse_chat(body, 8192, 4096).decoding)
    assert options("published")[0].sparse_stamps and not options("videoxl")[0].sparse_stamps


def test_every_option_reaches_the_cli_and_the_server_under_one_name():
    from videoxl import decoding
    from videoxl.cli import _parser
    from videoxl.serve.protocol import parse_chat

    fields = [f for cls in (decoding.Selection, decoding.Generation) for f in dataclasses.fields(cls)]
    values = {"topk": 2, "kv_budget": 0.5, "chunk": 2, "dense": True, "sparse_stamps": True, "min_confidence": 0.1,
              "max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 3, "seed": 5, "stop": ("x",)}
    assert {f.name for f in fields} == set(values) and len(fields) <= 12
    argv = ["ask", "demo", "q"]
    for f in fields:
        flag = f.metadata.get("cli") or "--" + f.name.replace("_", "-")
        v = values[f.name]
        argv += [flag, *(["on"] if v is True else list(v) if isinstance(v, tuple) else [str(v)])]
    assert _parsed_defaults(argv) == {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"},
                                                      {"type": "video_url", "video_url": {"url": "a.mp4"}}]}],
            **{http: values[name] for http, name in decoding.request_fields().items()}}
    assert parse_chat(body, 8192, 4096).decoding == values
    eval_flags = {a.dest for a in _parser(["eval", "needle"])._subparsers._group_actions[0].choices["eval"]
                  ._subparsers._group_actions[0].choices["needle"]._actions}
    assert {"topk", "decode_chunk", "sparse_stamps", "kv_budget"} <= eval_flags


def test_profiles_follow_the_checkpoint_and_explicit_options_win(tiny_checkpoint):
    from videoxl import DEFAULT_MODEL, VideoXL2
    from videoxl.decoding import options
    from videoxl.errors import OptionError

    assert VideoXL2.from_pretrained(DEFAULT_MODEL, device="cpu").profile == "videoxl"
    assert VideoXL2.from_pretrained(tiny_checkpoint, device="cpu").profile == "published"
    assert options("published", sparse_stamps=False)[0].sparse_stamps is False
    assert options("published", topk=None, kv_budget=0.3)[0].limit is None
    with pytest.raises(OptionError, match="unknown decoding option"):
        options("videoxl", follow_tail=0.1)
