"""The ``guidegen serve`` command: start the web app (added to the command line by `guidegen.__main__`)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Optional

import typer

from guidegen.errors import InputError


def check_host(host: str) -> bool:
    """Whether ``host`` is a loopback address (refuses what is neither an address nor "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise InputError("--host", f"must be an IP address or localhost, got {host!r}") from None


HostOption = Annotated[str, typer.Option(help="Address to listen on; the default is reachable from here only.")]
PortOption = Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)]
ModelOption = Annotated[Optional[Path], typer.Option(help="Model folder (default: the shipped model).")]
OutOption = Annotated[Path, typer.Option(help="Folder that keeps the jobs and their files (kept across restarts).")]


def serve(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    model: ModelOption = None,
    out: OutOption = Path("guidegen-web"),
) -> None:
    """Start the web app: type a prompt, watch the job, look at the CT and its labels in 3-D."""
    loopback = check_host(host)
    if model is not None and not (model / "mask_sampler").is_dir():
        raise InputError(model, "is not a GuideGen model folder (expected mask_sampler/ and image_generator/)")
    try:
        import uvicorn

        from guidegen.web.app import create_app
    except ImportError as exc:
        raise InputError("serve", f'needs the web extra: pip install "guidegen[web]" ({exc.name} is missing)') from None
    if not loopback:
        typer.echo(
            f"warning: listening on {host}: anyone who can reach this machine can generate cases and read every "
            "result; the app has no login",
            err=True,
        )
    app = create_app(out, model)
    typer.echo(f"GuideGen web app on http://{'[' + host + ']' if ':' in host else host}:{port}/ (results in {out})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
