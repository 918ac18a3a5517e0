"""The pieces every LLM planner backend shares, under the name they had before the split.

The code lives in one module per job; this module re-exports it so existing imports keep working:

* :mod:`rpg.planners.schema` — the reply model and its JSON Schema;
* :mod:`rpg.planners.parsing` — reasoning stripping, JSON finding, validation, the plan parser;
* :mod:`rpg.planners.transport` — retries with backoff and the planner service errors;
* :mod:`rpg.planners.chat` — messages, reply modes and the validate → retry loop;
* :mod:`rpg.planners.remote` — the chat base of the network backends (openai, ollama).
"""

from __future__ import annotations

from rpg.planners.chat import (
    ChatMessage,
    ChatPlanner,
    ChatRequest,
    ReplyMode,
    b64,
    build_messages,
    encode_image_png,
    json_instructions,
    json_retry_message,
)
from rpg.planners.parsing import (
    describe_validation_error,
    first_json_object,
    parse_plan_reply,
    shorten,
    strip_reasoning,
)
from rpg.planners.schema import (
    SCHEMA_NAME,
    PlanReply,
    ReplyEntity,
    ReplyFormat,
    ReplyRegion,
    ReplyRow,
    plan_schema,
    reply_schema,
)
from rpg.planners.transport import (
    PlannerConfigurationError,
    PlannerModelNotFoundError,
    Retry,
    RetryPolicy,
    StructuredOutputUnsupported,
    call_with_retries,
    parse_retry_after,
)

__all__ = [
    "SCHEMA_NAME",
    "ChatMessage",
    "ChatPlanner",
    "ChatRequest",
    "PlanReply",
    "PlannerConfigurationError",
    "PlannerModelNotFoundError",
    "ReplyEntity",
    "ReplyFormat",
    "ReplyMode",
    "ReplyRegion",
    "ReplyRow",
    "Retry",
    "RetryPolicy",
    "StructuredOutputUnsupported",
    "b64",
    "build_messages",
    "call_with_retries",
    "describe_validation_error",
    "encode_image_png",
    "first_json_object",
    "json_instructions",
    "json_retry_message",
    "parse_plan_reply",
    "parse_retry_after",
    "plan_schema",
    "reply_schema",
    "shorten",
    "strip_reasoning",
]
