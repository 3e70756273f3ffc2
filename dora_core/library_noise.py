"""Import-time log lines of torchao that tell our users nothing, dropped where they are logged.

transformers imports torchao whenever it is installed (transformers/quantizers/quantizer_torchao.py),
so every command that loads transformers imported it, and its import logged
- `Failed to load .../torchao/_C_*.so: ...`, once per optional compiled kernel its wheel ships
  (mxfp8, cutlass) that does not load with this Python or torch; we use none of them (NF4 is
  pure PyTorch, dora_core/quantization.py);
- through torch's `torch.utils._pytree` logger, `<enum ...> is an Enum subclass ... Calling
  register_constant() on Enum subclasses is deprecated` for torchao's own enums: a deprecation
  for torchao's authors, not for us.

A filter on each of those two loggers drops exactly those records; anything else they log
(another torchao warning, the same pytree warning for an enum that is not torchao's), every other
logger and every `warnings` warning still gets through. `dora_core/__init__.py` installs the
filters before anything in dora_core imports torch or transformers.
"""

from __future__ import annotations

import logging

_PYTREE_ENUM_DEPRECATION = "is an Enum subclass and is now natively supported by torch.compile"


def _torchao_kernel_not_loaded(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return message.startswith("Failed to load ") and "torchao" in message and ".so" in message


def _torchao_enum_deprecation(record: logging.LogRecord) -> bool:
    if _PYTREE_ENUM_DEPRECATION not in str(record.msg) or not record.args:
        return False
    args = record.args if isinstance(record.args, tuple) else (record.args,)
    return str(getattr(args[0], "__module__", "")).startswith("torchao")


class _Drop(logging.Filter):
    def __init__(self, matches) -> None:
        super().__init__()
        self.matches = matches

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.matches(record)


DROPPED = {"torchao": _torchao_kernel_not_loaded, "torch.utils._pytree": _torchao_enum_deprecation}


def install() -> None:
    """Add the filters (once per logger, however often this is called)."""
    for name, matches in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.matches is matches for f in logger.filters):
            logger.addFilter(_Drop(matches))


install()
