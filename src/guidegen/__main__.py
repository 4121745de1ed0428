"""``python -m guidegen`` and the ``guidegen`` command: the command line with ``serve`` added.

The command line (`guidegen.cli`) and the web app (`guidegen.web`) are sibling skins over the
Python API and may not import each other; this module, above both, puts them together.
"""

from guidegen.cli import app, main
from guidegen.web import serve

app.command("serve")(serve)

__all__ = ["main"]

if __name__ == "__main__":
    main()
