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

import time
import uuid as uuidlib
from dataclasses import dataclass, field

from .. import decoding
from ..errors import OptionError


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
    """The video (or image) a request is about: a URL to fetch, a uuid naming it, or both."""

    kind: str  # "video" or "image"
    url: str | None
    uuid: str | None


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


def _number(body: dict, name: str, kind: type, low: float | None = None, high: float | None = None,
            where: str | None = None):
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise ServeError(400, f"'{where or name}' must be {'an integer' if kind is int else 'a number'}, "
                              f"got {value!r}", param=where or name)
    value = kind(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ServeError(400, f"'{where or name}' must lie in [{low}, {high}], got {value}", param=where or name)
    return value


def _media_part(part: dict) -> MediaRef:
    kind = "video" if part["type"] == "video_url" else "image"
    inner = part.get(part["type"])
    if inner is not None and not isinstance(inner, (dict, str)):
        raise ServeError(400, f"'{part['type']}' must be an object with a 'url'", param="messages")
    url = inner.get("url") if isinstance(inner, dict) else inner
    uuid = part.get("uuid")
    if url is not None and not isinstance(url, str):
        raise ServeError(400, f"'{part['type']}.url' must be a string", param="messages")
    if uuid is not None and (not isinstance(uuid, str) or not uuid or len(uuid) > 256):
        raise ServeError(400, "'uuid' must be a non-empty string of at most 256 characters", param="messages")
    if url is None and uuid is None:
        raise ServeError(400, f"a '{part['type']}' part needs a url, or a uuid sent with a url before",
                         param="messages")
    return MediaRef(kind, url, uuid)


def parse_chat(body: object, max_question_chars: int, max_tokens_limit: int) -> ChatRequest:
    """Validate a /v1/chat/completions body; ServeError(400) names the field that is wrong.

    The question is the text of the last user message; the media is the one video or image in the user
    messages (so a follow-up question may leave it out of the last turn). System messages are not used: the
    checkpoint carries its own system prompt.
    """
    if not isinstance(body, dict):
        raise ServeError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServeError(400, "'messages' must be a non-empty list", param="messages")
    media: list[MediaRef] = []
    question = None
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ServeError(400, "each message needs a role: system, developer, user or assistant",
                             param="messages")
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise ServeError(400, "a message's 'content' must be a string or a list of parts", param="messages")
        texts = []
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ServeError(400, "a text part needs a string 'text'", param="messages")
                texts.append(part["text"])
            elif kind in ("video_url", "image_url") and m["role"] == "user":
                media.append(_media_part(part))
            else:
                raise ServeError(400, f"unsupported content part {kind!r} in a {m['role']} message: use 'text', "
                                      "'video_url' or 'image_url'", param="messages")
        if m["role"] == "user":
            question = "\n".join(texts)
    if question is None or not question.strip():
        raise ServeError(400, "the last user message has no text: ask a question", param="messages")
    if len(question) > max_question_chars:
        raise ServeError(400, f"the question has {len(question)} characters; the limit is {max_question_chars}",
                         param="messages")
    if len(media) > 1:
        raise ServeError(400, f"{len(media)} media parts; send one video or image per conversation",
                         param="messages")
    if body.get("n", 1) != 1:
        raise ServeError(400, "only n=1 is supported", param="n")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ServeError(400, "'model' must be a string", param="model")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise ServeError(400, "'stream' must be true or false", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ServeError(400, "'stream_options' must be an object", param="stream_options")
    decoding = _decoding(body)
    media_kwargs = body.get("media_io_kwargs") or {}
    video_kwargs = media_kwargs.get("video", {}) if isinstance(media_kwargs, dict) else None
    if not isinstance(video_kwargs, dict):
        raise ServeError(400, "'media_io_kwargs' must look like {\"video\": {\"num_frames\": N, \"fps\": F}}",
                         param="media_io_kwargs")
    unknown = set(video_kwargs) - {"num_frames", "fps", "max_fps"}
    if unknown:
        raise ServeError(400, f"unknown media_io_kwargs.video option(s): {', '.join(sorted(unknown))}; "
                              "use num_frames, fps, max_fps", param="media_io_kwargs")
    where = "media_io_kwargs.video."
    return ChatRequest(
        model=model, question=question, media=media[0] if media else None,
        stream=bool(body.get("stream", False)), include_usage=bool(stream_options.get("include_usage", False)),
        num_frames=_number(video_kwargs, "num_frames", int, 1, None, where + "num_frames")
        or _number(body, "max_frames", int, 1, None),
        fps=_number(video_kwargs, "fps", float, 1e-3, 240, where + "fps") or _number(body, "fps", float, 1e-3, 240),
        max_fps=_number(video_kwargs, "max_fps", float, 1e-3, 240, where + "max_fps"),
        decoding=decoding,
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
