"""The OpenAI wire format: chat-completion requests in, completions, stream chunks and error objects out.

Requests follow vLLM's conventions for video: a user message holds ``text`` parts and one ``video_url`` (or
``image_url``) part, ``{"type": "video_url", "video_url": {"url": ...}, "uuid": ...}``; frame sampling goes in
``media_io_kwargs = {"video": {"num_frames": N, "fps": F}}``. The decoding options are the fields of
``videoxl.decoding.Selection`` and ``Generation`` (``decoding.request_fields``): OpenAI's own (``max_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop``) and videoxl's as extra top-level fields (the ``openai`` client's
``extra_body``: ``topk``, ``kv_budget``, ``decode_chunk``, ``dense``, ``sparse_stamps``, ``min_confidence``,
``top_k``); a field left out or ``null`` takes the model's profile default.
"""

from __future__ import annotations

import json
import time
import unicodedata
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from .. import decoding, defaults
from ..errors import OptionError
from ..live.since import Since, parse_since


class ServeError(Exception):
    """An error answered with an OpenAI error object and an HTTP status (4xx: the client's fault)."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
             504: "timeout_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return error_body(self.message, self.TYPES.get(self.status, "server_error"), self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass(frozen=True)
class MediaRef:
    """The video (or image) a request is about: a URL to fetch, a uuid naming it, or both; ``where`` names the
    request part it came from (for messages about it). ``since``: the part of a live stream asked about."""

    kind: str  # "video" or "image"
    url: str | None
    uuid: str | None
    where: str = "messages"
    since: Since | None = None


@dataclass
class ChatRequest:
    """What the server needs from a chat-completion request, validated."""

    model: str | None
    question: str
    media: MediaRef | None
    stream: bool = False
    include_usage: bool = False
    num_frames: int | None = None
    fps: float | None = None
    max_fps: float | None = None
    decoding: dict = field(default_factory=dict)  # the decoding options the request states, by field name


# -- the request body as JSON: numbers and nesting bounded before any field is looked at ---------------------------
MAX_DEPTH = 32  # a chat request nests about 6 levels
MAX_DIGITS = 40  # longer integers are refused, not parsed (Python's int() of 5,000 digits raises)


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ServeError(400, f"a number with {len(text)} digits in the request body; numbers have at most "
                              f"{MAX_DIGITS}")
    return int(text)


def _constant(name: str):
    raise ServeError(400, f"{name} is not a number JSON allows; send a finite number")


def parse_json(body: str | bytes | bytearray) -> object:
    """The request body as JSON; ServeError(400) for invalid JSON, NaN/Infinity, huge integers or nesting deeper
    than :data:`MAX_DEPTH`."""
    try:
        value = json.loads(body, parse_int=_int, parse_constant=_constant)
    except RecursionError:
        raise ServeError(400, f"the request body nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ServeError(400, f"the request body is not valid JSON ({e})") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_DEPTH:
                    raise ServeError(400, f"the request body nests deeper than {MAX_DEPTH} levels")
                stack.append((child, depth + 1))
    return value


# -- the schema ----------------------------------------------------------------------------------------------------
Int = Annotated[int, Strict()]
Number = Annotated[float, Field(allow_inf_nan=False)]
Flag = Annotated[bool, Strict()]


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Part):
    type: Literal["text"]
    text: str


class UrlObject(_Part):
    url: str | None = None
    since: Any = None  # checked by videoxl.live.since.parse_since


class VideoPart(_Part):
    type: Literal["video_url"]
    video_url: UrlObject | str | None = None
    uuid: str | None = Field(None, min_length=1, max_length=256)


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: UrlObject | str | None = None
    uuid: str | None = Field(None, min_length=1, max_length=256)


Part = Annotated[Union[TextPart, VideoPart, ImagePart], Field(discriminator="type")]


class Message(_Part):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class VideoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_frames: Int | None = Field(None, ge=1, le=defaults.FRAMES_LIMIT)
    fps: Number | None = Field(None, ge=1e-3, le=240)
    max_fps: Number | None = Field(None, ge=1e-3, le=240)


class MediaOptions(_Part):
    video: VideoOptions | None = None


class StreamOptions(_Part):
    include_usage: Flag = False


class ChatBody(BaseModel):
    """The fields of a /v1/chat/completions body that the server reads, with their bounds, except the decoding
    options (checked by their declarations in ``videoxl.decoding``, :func:`_decoding`); other OpenAI fields are
    ignored, except those it cannot honour (:data:`UNSUPPORTED`), which are refused."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    n: Int = Field(1, ge=1, le=1)
    stream: Flag = False
    stream_options: StreamOptions | None = None
    media_io_kwargs: MediaOptions | None = None
    max_frames: Int | None = Field(None, ge=1, le=defaults.FRAMES_LIMIT)
    fps: Number | None = Field(None, ge=1e-3, le=240)


# OpenAI fields whose meaning the server cannot honour: refused rather than silently ignored (as vLLM does)
UNSUPPORTED = {"response_format": "structured output", "tools": "tool calls", "tool_choice": "tool calls",
               "functions": "function calls", "function_call": "function calls", "logprobs": "log probabilities",
               "top_logprobs": "log probabilities"}


def _unsupported(body: dict) -> None:
    for name, what in UNSUPPORTED.items():
        value = body.get(name)
        if value in (None, False, [], "none") or (name == "response_format" and value == {"type": "text"}):
            continue
        raise ServeError(400, f"'{name}': {what} are not supported by this server", param=name)


TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none"}


def _schema_error(e: ValidationError) -> ServeError:
    """The 400 for a body that does not fit :class:`ChatBody`: its deepest error (for a union, the branch that
    got furthest), with the field's path as the client wrote it (``messages[0].content[1].text``)."""
    errors = e.errors(include_url=False, include_input=False)
    first = max(reversed(errors), key=lambda err: len(err["loc"]))
    where, last = "", None
    for p in first["loc"]:
        if isinstance(p, int):
            where += f"[{p}]"
        elif p not in TYPE_NAMES and p != last and not any(c in p for c in "[-") and not p[:1].isupper():
            where += ("." if where else "") + p
        last = p
    where = where or "body"
    return ServeError(400, f"'{where}': {first['msg']}", param=where.split(".")[0].split("[")[0])


def _invisible(text: str) -> bool:
    """True if ``text`` shows nothing: only whitespace and format characters (zero-width space, BOM, joiners)."""
    return all(c.isspace() or unicodedata.category(c) in ("Cf", "Cc", "Zs", "Zl", "Zp") for c in text)


def _media(part: VideoPart | ImagePart, where: str) -> MediaRef:
    kind = "video" if part.type == "video_url" else "image"
    inner = getattr(part, part.type)
    url = inner.url if isinstance(inner, UrlObject) else inner
    if url is not None and not url.strip():
        raise ServeError(400, f"'{where}.{part.type}.url' is empty", param="messages")
    if url is None and part.uuid is None:
        raise ServeError(400, f"a '{part.type}' part needs a url, or a uuid sent with a url before",
                         param="messages")
    since = inner.since if isinstance(inner, UrlObject) else None
    if since is not None:
        try:
            since = parse_since(since)
        except OptionError as e:
            raise ServeError(400, f"'{where}.{part.type}.since' {str(e).removeprefix('since ')}",
                             param="messages") from None
    return MediaRef(kind, url, part.uuid, where, since)


def parse_chat(body: object, max_question_chars: int, max_tokens_limit: int) -> ChatRequest:
    """Validate a /v1/chat/completions body; ServeError(400) names the field that is wrong.

    The question is the text of the last user message; the media is the one video or image in the user
    messages (so a follow-up question may leave it out of the last turn). System messages are not used: the
    checkpoint carries its own system prompt.
    """
    if not isinstance(body, dict):
        raise ServeError(400, "the request body must be a JSON object")
    _unsupported(body)
    try:
        req = ChatBody.model_validate(body)
    except ValidationError as e:
        raise _schema_error(e) from None
    media: list[MediaRef] = []
    question = None
    for i, m in enumerate(req.messages):
        parts = [TextPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content or []
        texts = []
        for j, part in enumerate(parts):
            if isinstance(part, TextPart):
                texts.append(part.text)
            elif m.role == "user":
                media.append(_media(part, f"messages[{i}].content[{j}]"))
            else:
                raise ServeError(400, f"'{part.type}' in a {m.role} message: media go in user messages",
                                 param="messages")
        if m.role == "user":
            question = "\n".join(texts)
    if question is None or _invisible(question):
        raise ServeError(400, "the last user message has no text: ask a question", param="messages")
    if len(question) > max_question_chars:
        raise ServeError(400, f"the question has {len(question)} characters; the limit is {max_question_chars}",
                         param="messages")
    if len(media) > 1:
        raise ServeError(400, f"{len(media)} media parts; send one video or image per conversation",
                         param="messages")
    video = req.media_io_kwargs.video if req.media_io_kwargs and req.media_io_kwargs.video else VideoOptions()
    return ChatRequest(
        model=req.model, question=question, media=media[0] if media else None,
        stream=req.stream, include_usage=bool(req.stream_options and req.stream_options.include_usage),
        num_frames=video.num_frames or req.max_frames, fps=video.fps or req.fps, max_fps=video.max_fps,
        decoding=_decoding(body),
    )


def _decoding(body: dict) -> dict:
    """The decoding options a request states, checked by their declarations (videoxl.decoding)."""
    given = decoding.from_mapping(body)
    if body.get("max_completion_tokens") is not None:  # OpenAI's newer name for max_tokens
        given["max_new_tokens"] = body["max_completion_tokens"]
    if isinstance(given.get("stop"), (str, list)):
        given["stop"] = (given["stop"],) if isinstance(given["stop"], str) else tuple(given["stop"])
    for name, value in given.items():  # JSON has one number type: 4.0 is the whole number 4
        if isinstance(value, float) and value.is_integer() and name in _WHOLE:
            given[name] = int(value)
    try:
        decoding.options(**given)
    except OptionError as e:
        field_name = str(e).split(" ")[0]
        param = {v: k for k, v in decoding.request_fields().items()}.get(field_name, field_name)
        raise ServeError(400, f"'{param}'{str(e)[len(field_name):]}", param=param) from None
    return given


_WHOLE = {"topk", "chunk", "max_new_tokens", "top_k", "seed"}


def completion_id() -> str:
    return f"chatcmpl-{uuidlib.uuid4().hex}"


def completion(cid: str, model: str, text: str, finish: str, usage: dict, videoxl: dict) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}],
            "usage": usage, "videoxl": videoxl}


def chunk(cid: str, model: str, created: int, delta: dict | None, finish: str | None = None, **extra) -> dict:
    """One ``chat.completion.chunk``; ``delta=None`` makes the usage-only chunk (no choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            **extra}
