"""`guidegen serve`: a web app to type a prompt and look at the generated CT in 3-D.

A thin skin over the Python API beside the command line (neither imports the other; `guidegen.__main__`
adds ``serve`` to the command line). Needs the ``web`` extra: ``pip install "guidegen[web]"``.

* `command.py`: the ``serve`` command (host, port, model, output folder).
* `app.py`: the FastAPI application (`create_app`): JSON API and the static page.
* `jobs.py`: the job queue persisted under ``--out``, run by one worker process (`worker.py`).
* `views.py`: label table, parser view, requested-vs-measured, server-rendered slices.
* `static/`: the page (plain HTML/JS) and NiiVue, vendored (never loaded from a CDN).
"""

from guidegen.web.command import serve

__all__ = ["serve"]
