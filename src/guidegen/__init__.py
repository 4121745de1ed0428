"""GuideGen: text-guided synthesis of abdominal CT volumes with aligned label maps."""

from guidegen.errors import GuideGenError, InputError
from guidegen.io.volume import Volume

__version__ = "0.1.0"
__all__ = ["GuideGenError", "InputError", "Volume", "__version__"]
