"""GuideGen: text-guided synthesis of abdominal CT volumes with aligned label maps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guidegen.errors import GuideGenError, InputError

if TYPE_CHECKING:
    from guidegen.io.volume import Volume

__version__ = "0.1.0"
__all__ = ["GuideGenError", "InputError", "Volume", "__version__"]


def __getattr__(name: str) -> Any:
    # `Volume` loads numpy and nibabel; importing the package (the command line does, before it
    # checks its arguments) should not.
    if name == "Volume":
        from guidegen.io.volume import Volume

        return Volume
    raise AttributeError(f"module 'guidegen' has no attribute {name!r}")
