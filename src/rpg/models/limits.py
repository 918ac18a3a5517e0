"""The limits a plan or request is held to, and the defaults it gets when it names none."""

__all__ = [
    "DEFAULT_BASE_RATIO",
    "DEFAULT_HIRES_STRENGTH",
    "DEFAULT_STRENGTH",
    "MAX_CONTROL_SCALE",
    "MAX_HIRES_SCALE",
    "MAX_LAYERS",
    "MAX_PLAN_JSON_BYTES",
    "MAX_PROMPT_CHARS",
    "MAX_REQUEST_JSON_BYTES",
    "MAX_SEED",
]

#: Base-prompt weight used when a plan has a base prompt and names no ratio.
DEFAULT_BASE_RATIO = 0.3

#: Largest ControlNet conditioning scale a request accepts (typical values are 0.3 to 2).
MAX_CONTROL_SCALE = 10.0

#: Largest seed: torch generators take unsigned 64-bit seeds, and image ``i`` uses ``seed + i``.
MAX_SEED = 2**64 - 1

#: Longest prompt (user prompt, negative prompt, region and base prompts), in characters.
MAX_PROMPT_CHARS = 10_000
#: Largest plan, as JSON in UTF-8 bytes. With :data:`MAX_REQUEST_JSON_BYTES` it bounds what a PNG
#: saved by rpg carries (request + plan, see :mod:`rpg.metadata`) below Pillow's 1 MiB limit on
#: one text chunk, so every PNG rpg writes, rpg (and any Pillow) reads back.
MAX_PLAN_JSON_BYTES = 128 * 1024
#: Largest request (plan included), as JSON in UTF-8 bytes.
MAX_REQUEST_JSON_BYTES = 256 * 1024

#: Most layers a canvas plan may have: every layer is one more prompt to encode and one more
#: attention at the positions it shares, and past a few dozen a canvas is better said as a grid.
MAX_LAYERS = 32

#: The strength a request with an init image and no strength gets (A1111's default denoising).
DEFAULT_STRENGTH = 0.75
#: The hires pass's strength when a request names none.
DEFAULT_HIRES_STRENGTH = 0.5
#: The largest hires scale: past it the second pass is mostly invented detail.
MAX_HIRES_SCALE = 4.0
