"""`guidegen` command line: a thin skin over the Python API.

Every subcommand calls one API function with keyword arguments. Bad input ends in one line on
stderr (``error: PATH: PROBLEM``) and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from guidegen import __version__
from guidegen.errors import GuideGenError, InputError, OutputExistsError
from guidegen.paths import REPO_ROOT, default_data_dir
from guidegen.settings import GenerationSettings, check_threads

app = typer.Typer(
    name="guidegen",
    help="GuideGen: text-guided synthesis of abdominal CT volumes with aligned label maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_STATE = {"debug": False}

#: The options that say how the networks run (`guidegen.runtime`), shared by every generating command.
PrecisionOption = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto (bf16 only where the hardware runs it natively: AMX, AVX512-BF16 or a CUDA GPU with "
        "bf16; else fp32), fp32, bf16 or fp16.",
    ),
]
BackendOption = Annotated[
    str,
    typer.Option(
        "--backend",
        help="auto (for the CT's slice network the fastest installed one that passes a self-check "
        "against torch; the mask network stays on torch), torch, onnxruntime or openvino "
        '(pip install "guidegen\\[fast]").',
    ),
]
#: The placement stage's switches (`guidegen.masks.placement`), shared by the commands that sample masks.
TumourPlacementOption = Annotated[
    Optional[str],
    typer.Option(
        help="insert: stated tumours are real tumour shapes placed in the sampled anatomy; network: only the "
        "network's own tumours; learned: the stated tumours drawn by the learned tumour stage (default: the "
        "model's setting)."
    ),
]
RealStartOption = Annotated[
    Optional[float],
    typer.Option(
        help="Start the mask sampler from a deformed real map of its bank, carried to this fraction (0-1] of the "
        "diffusion (SDEdit), instead of from noise (default).",
    ),
]
OrganSizesOption = Annotated[
    Optional[str],
    typer.Option(
        help="scale: organs the prompt calls enlarged / small / normal / absent are given that size; all: as "
        "well, solid organs the prompt leaves unchanged are given a normal size; network: organs as the "
        "network drew them (default: the model's setting)."
    ),
]
AortaPlacementOption = Annotated[
    Optional[str],
    typer.Option(
        help="tube: the aorta redrawn as one tube of normal calibre along the network's; network: the aorta as "
        "the network drew it (default: the model's setting)."
    ),
]
#: A user's own label set, for every command that reads a label map.
LabelsJsonOption = Annotated[
    Optional[Path],
    typer.Option(
        "--labels-json",
        help="Your own label set: a JSON file mapping the map's ids to GuideGen class names or "
        '"unknown", e.g. {"1": "liver", "2": "tumour"} (names: list-classes).',
    ),
]
ThreadsOption = Annotated[
    Optional[int], typer.Option(callback=lambda value: check_threads(value), help="CPU threads (default: all).")
]  # checked while parsing


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"guidegen {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _STATE["debug"] = debug


def _new_output(out: Path, overwrite: bool) -> Path:
    """Refuse an existing output before any model loads (the writers check again when they write)."""
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    return out


def _input_file(path: Path, what: str = "file") -> Path:
    """A named input must exist: say so in a fraction of a second, not after the imports."""
    if not path.exists():
        raise InputError(path, f"{what} not found")
    return path


def _parse_triple(text: str, name: str) -> tuple[float, float, float]:
    try:
        values = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(name, f"expected a number or three comma-separated numbers, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise InputError(name, f"expected one or three values, got {text!r}")
    return values[0], values[1], values[2]


@app.command()
def prepare(
    sources: Annotated[
        list[Path],
        typer.Argument(
            metavar="SOURCES",
            help="Dataset or case folders (TotalSegmentator, AbdomenAtlas, nnU-Net, MSD, CT+labels pairs, DICOM).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the manifest and the case cache.")],
    spacing: Annotated[str, typer.Option(help="Target voxel size in mm: one value or x,y,z.")] = "3",
    size: Annotated[str, typer.Option(help="In-plane field of view in voxels: one value or x,y.")] = "128",
    vocabulary: Annotated[
        Optional[str], typer.Option(help="Label vocabulary for plain pairs without a sidecar (see list-vocabularies).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo cases that are already prepared.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Preprocess real CT + label datasets into a cache and a manifest (reruns skip finished cases)."""
    from guidegen.data.prepare import PrepareConfig
    from guidegen.data.prepare import prepare as run_prepare

    try:
        size_values = [int(float(v)) for v in size.replace("x", ",").split(",") if v.strip()] if size else []
    except (ValueError, OverflowError):  # "abc", "nan", "inf"
        raise InputError("--size", f"expected one or two whole numbers, got {size!r}") from None
    if len(size_values) == 1:
        size_values *= 2
    if len(size_values) != 2:
        raise InputError("--size", f"expected one or two values, got {size!r}")
    config = PrepareConfig(
        spacing=_parse_triple(spacing, "--spacing"), size_xy=(size_values[0], size_values[1]), vocabulary=vocabulary
    )
    result = run_prepare(sources, out, config=config, progress=not quiet, overwrite=overwrite)
    typer.echo(
        f"prepared {len(result.prepared)}, skipped {len(result.skipped)} (already done), failed "
        f"{len(result.failed)}; manifest: {result.manifest}"
    )
    for case_id, error in result.failed:
        typer.echo(f"error: {case_id}: {error}", err=True)
    if result.failed:
        raise typer.Exit(1)


@app.command()
def report(
    labels: Annotated[Path, typer.Argument(metavar="LABELS", help="Label map (.nii/.nii.gz or a DICOM-SEG .dcm).")],
    vocabulary: Annotated[
        Optional[str],
        typer.Option(
            help="Label vocabulary of the file (default: from a guidegen-source.json beside it, or GuideGen's own "
            "ids for files GuideGen wrote)."
        ),
    ] = None,
    labels_json: LabelsJsonOption = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the report's phrasing.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the attribute record as JSON after the report.")
    ] = False,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Write the report here instead of printing it.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Write a radiology-style report (and attribute record) for a label map."""
    from guidegen.pipeline import report_for_label_file

    text, attributes = report_for_label_file(labels, vocabulary=vocabulary, seed=seed, label_set=labels_json)
    body = text if not as_json else text + "\n\n" + json.dumps(attributes, indent=1)
    if out is not None:
        from guidegen.io.atomic import write_text

        write_text(out, body + "\n", overwrite=overwrite)
        typer.echo(f"wrote {out}")
    else:
        typer.echo(body)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo-output"),
    data: Annotated[
        Optional[Path], typer.Option(help="Bundled real data folder (default: $GUIDEGEN_DATA or data/real).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Run the data pipeline on the bundled real scan: prepared case, report and preview picture."""
    from guidegen.pipeline import run_demo

    summary = run_demo(out=out, data=data or default_data_dir(), overwrite=overwrite)
    for line in summary:
        typer.echo(line)


train_app = typer.Typer(help="Train GuideGen's models from a JSON recipe.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("masks")
def train_masks(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe JSON (see recipes/mask_sampler_demo.json).")],
    run: Annotated[
        Path,
        typer.Option(
            "--run",
            "--run-dir",
            help="Run folder: checkpoints, log, final model (under torchrun write --run-dir: torchrun mistakes --run "
            "for its --run-path).",
        ),
    ] = Path("runs/mask_sampler"),
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = True,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps in this call.")] = None,
    threads: ThreadsOption = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train the Volumetric Mask Sampler (the recipe's precision: auto = bf16 where native; EMA, exact resume).

    Data-parallel: ``torchrun --nproc-per-node N -m guidegen train masks …``."""
    from guidegen.config import load_config
    from guidegen.masks.config import MaskSamplerConfig
    from guidegen.masks.train import train_mask_sampler
    from guidegen.training import set_threads

    set_threads(threads)
    cfg = load_config(MaskSamplerConfig, config)
    out = train_mask_sampler(
        cfg, run, resume=resume, progress=not quiet, max_steps=max_steps, root=REPO_ROOT, device=_device(device)
    )
    typer.echo(f"run folder: {out}")


@train_app.command("tumours")
def train_tumours(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe JSON (see recipes/tumour_stage.json).")],
    run: Annotated[Path, typer.Option("--run", help="Run folder: pool, checkpoints, log, final model.")] = Path(
        "runs/tumour_stage"
    ),
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = True,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps in this call.")] = None,
    threads: ThreadsOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train the learned tumour stage (fp32, CPU, EMA, exact resume); its model goes beside the mask
    sampler as ``tumour_stage/`` (used by ``--tumour-placement learned``)."""
    from guidegen.config import load_config
    from guidegen.masks.tumour_stage import TumourStageConfig
    from guidegen.masks.tumour_stage_train import train_tumour_stage
    from guidegen.training import set_threads

    set_threads(threads)
    cfg = load_config(TumourStageConfig, config)
    out = train_tumour_stage(cfg, run, resume=resume, progress=not quiet, max_steps=max_steps, root=REPO_ROOT)
    typer.echo(f"run folder: {out}")


def _device(name: str) -> str:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise InputError("--device", f"must be cpu or cuda, got {name!r}")
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(
                "--device", "CUDA was asked for but no CUDA device is available (is the CPU build of torch installed?)"
            )
    return name


@app.command("sample-masks")
def sample_masks(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to generate, in words.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    n: Annotated[int, typer.Option("-n", min=1, max=256, help="Samples of the prompt (sample i uses seed + i).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same masks.")] = 0,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps (default: the model's strided setting).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Mask sampler folder (default: the shipped model).")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Report quality checks (components, relations, adherence, diversity).")
    ] = False,
    tumour_placement: TumourPlacementOption = None,
    organ_sizes: OrganSizesOption = None,
    aorta_placement: AortaPlacementOption = None,
    real_start: RealStartOption = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
) -> None:
    """Sample low-resolution label maps from a prompt (GuideGen's Volumetric Mask Sampler)."""
    settings = GenerationSettings(
        steps=steps,
        guidance=guidance,
        tumour_placement=tumour_placement,
        organ_sizes=organ_sizes,
        aorta_placement=aorta_placement,
        real_start=real_start,
        precision=precision,
        backend=backend,
    )
    _new_output(out, overwrite)
    device = _device(device)
    from guidegen.pipeline import sample_masks_to_folder

    lines, volumes = sample_masks_to_folder(
        prompt=prompt, out=out, n=n, seed=seed, settings=settings, model=model, device=device, overwrite=overwrite
    )
    for line in lines:
        typer.echo(line)
    if check:
        from guidegen.evaluation.masks import check_masks
        from guidegen.io.atomic import write_text

        report = check_masks(volumes, [prompt] * len(volumes))
        write_text(out / "checks.json", json.dumps(report.to_dict(), indent=1), overwrite=True)
        for line in report.summary_lines():
            typer.echo(line)


@train_app.command("demo")
def train_demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")] = Path("models/default"),
    runs: Annotated[
        Path, typer.Option("--runs", help="Run folder for the prepared data, checkpoints and logs.")
    ] = Path("runs/demo"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model folder.")] = False,
) -> None:
    """Train the shipped default model from the bundled real data (the mask sampler in two chained recipes)."""
    from guidegen.pipeline.train_demo import train_demo

    path = train_demo(out=out, runs=runs, overwrite=overwrite, log=typer.echo)
    typer.echo(f"model: {path}")


@train_app.command("images")
def train_images(
    prepared: Annotated[Path, typer.Option("--prepared", "-p", help="Output folder of `guidegen prepare`.")],
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            "-c",
            help="Recipe JSON (see recipes/image_generator_demo.json); default: ImageGeneratorConfig's defaults.",
        ),
    ] = None,
    run: Annotated[
        Path,
        typer.Option(
            "--run",
            "--run-dir",
            "-r",
            help="Run folder: checkpoints, log, final model (under torchrun write --run-dir: torchrun mistakes --run "
            "for its --run-path).",
        ),
    ] = Path("runs/image_generator"),
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = True,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop at this step (resumable).")] = None,
    threads: ThreadsOption = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (under torchrun: one GPU per process).")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train the Conditional Image Generator on prepared real CT slices (recipe precision, EMA, exact resume).

    Data-parallel: ``torchrun --nproc-per-node N -m guidegen train images …``."""
    from guidegen.config import load_config
    from guidegen.images.config import ImageGeneratorConfig
    from guidegen.images.train import train_image_generator
    from guidegen.training import set_threads

    set_threads(threads)
    cfg = load_config(ImageGeneratorConfig, config) if config is not None else ImageGeneratorConfig()
    out = train_image_generator(
        cfg, prepared, run, resume=resume, progress=not quiet, max_steps=max_steps, device=_device(device)
    )
    typer.echo(f"run folder: {out}")


@app.command("generate-ct")
def generate_ct_command(
    labels: Annotated[
        Path, typer.Option("--labels", "-l", help="Label map (.nii/.nii.gz or DICOM-SEG) in any supported vocabulary.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    vocabulary: Annotated[
        Optional[str], typer.Option(help="Label vocabulary of the file (see list-vocabularies).")
    ] = None,
    labels_json: LabelsJsonOption = None,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same CT.")] = 0,
    phase: Annotated[
        Optional[str], typer.Option(help="Contrast phase: non_contrast, arterial, portal_venous, delayed.")
    ] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Optional text for the generator's text condition.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Flow steps per slice.")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Image generator folder (default: the shipped model).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
    texture: Annotated[
        bool,
        typer.Option(
            "--texture/--no-texture",
            help="Where the label map's grid is finer than the model's (3 mm for the shipped model): resample each "
            "structure from its own voxels (no blending across borders) and add scanner-noise grain from a noise "
            "model fitted to real CT.",
        ),
    ] = True,
    levels: Annotated[
        bool,
        typer.Option(
            "--levels/--no-levels",
            help="Set tumour HU by host organ and phase, the unenhanced aorta's and IVC's and the portal "
            "vein's level, bone by depth (bright cortex, darker marrow) and muscle's (where the model has no "
            "muscle class) from real data and literature, keep liver, spleen, kidneys and an unenhanced "
            "pancreas inside the phase's published range, and give each homogeneous organ one level along "
            "z (off: the network's own levels).",
        ),
    ] = True,
) -> None:
    """Bring your own mask: generate a CT (int16 HU) that matches a label map, on the label map's own grid."""
    # This command has one network, so its --steps/--guidance are the image generator's.
    settings = GenerationSettings(
        image_steps=steps, image_guidance=guidance, phase=phase, precision=precision, backend=backend
    )
    _input_file(labels, "label map")
    if labels_json is not None:
        _input_file(labels_json, "label set")
    _new_output(out, overwrite)
    device = _device(device)
    from guidegen.pipeline import generate_ct_to_folder

    for line in generate_ct_to_folder(
        labels=labels,
        out=out,
        vocabulary=vocabulary,
        seed=seed,
        prompt=prompt,
        settings=settings,
        model=model,
        device=device,
        overwrite=overwrite,
        texture=texture,
        levels=levels,
        label_set=labels_json,
    ):
        typer.echo(line)


@app.command("generate")
def generate_command(
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="What to generate, in words.")] = None,
    prompts: Annotated[
        Optional[Path],
        typer.Option("--prompts", help="File of prompts: one a line, or a CSV with 'prompt' and 'count' columns."),
    ] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Cases per prompt (with --prompt).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of case 0; case i uses seed + i, whatever the sharding.")] = 0,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (a rerun with the same request completes it).")
    ] = Path("guidegen-output"),
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="nifti (case folders), nnunet (plus an nnU-Net v2 raw dataset) or dicom (plus DICOM CT + SEG per "
            "case).",
        ),
    ] = "nifti",
    steps: Annotated[
        Optional[int], typer.Option(help="Mask sampler steps (default: the model's strided setting).")
    ] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Mask sampler classifier-free guidance scale.")] = None,
    image_steps: Annotated[Optional[int], typer.Option(help="Image generator flow steps per slice.")] = None,
    image_guidance: Annotated[Optional[float], typer.Option(help="Image generator guidance scale.")] = None,
    phase: Annotated[
        Optional[str], typer.Option(help="Contrast phase for every case (default: what the prompt says).")
    ] = None,
    tumour_placement: TumourPlacementOption = None,
    organ_sizes: OrganSizesOption = None,
    aorta_placement: AortaPlacementOption = None,
    real_start: RealStartOption = None,
    levels: Annotated[
        bool,
        typer.Option(
            "--levels/--no-levels",
            help="Set liver and colon tumours to the level of real tumours for the phase, an unenhanced "
            "aorta and IVC to real unenhanced blood, the portal vein to its phase's typical level, bone to "
            "real bone by depth below its surface and liver, spleen, kidneys and an unenhanced pancreas "
            "inside the phase's published range (off: the image generator's own levels).",
        ),
    ] = True,
    batch_size: Annotated[int, typer.Option(min=1, help="Cases generated together.")] = 4,
    model: Annotated[
        Optional[Path],
        typer.Option(help="Model folder with mask_sampler/ and image_generator/ (default: the shipped model)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: ThreadsOption = None,
    dataset_id: Annotated[int, typer.Option(help="nnU-Net dataset id (--format nnunet).")] = 500,
    dataset_name: Annotated[str, typer.Option(help="nnU-Net dataset name (--format nnunet).")] = "GuideGen",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
) -> None:
    """Generate CT volumes (int16 HU) with aligned label maps from prompts. Works under torchrun (sharded)."""
    from guidegen.settings import DatasetRequest, check_prompt, read_prompts_file

    if (prompt is None) == (prompts is None):
        raise InputError("--prompt/--prompts", "give exactly one of --prompt TEXT or --prompts FILE")
    settings = GenerationSettings(
        steps=steps,
        guidance=guidance,
        image_steps=image_steps,
        image_guidance=image_guidance,
        phase=phase,
        tumour_placement=tumour_placement,
        organ_sizes=organ_sizes,
        aorta_placement=aorta_placement,
        real_start=real_start,
        levels=levels,
        precision=precision,
        backend=backend,
    )
    entries = read_prompts_file(prompts) if prompts is not None else [(check_prompt(prompt), n)]
    request = DatasetRequest(tuple(entries), seed, settings, format)
    if not 1 <= dataset_id <= 999:
        raise InputError("--dataset-id", f"must be 1..999, got {dataset_id}")
    if format == "nnunet":
        from guidegen.io.nnunet import DATASET_NAME

        if not DATASET_NAME.fullmatch(dataset_name):
            raise InputError(
                "--dataset-name",
                f"must be 1-100 letters, digits, '_' or '-', starting with a letter or digit, got {dataset_name!r}",
            )
    # A run folder (run.json) is resumed instead; its request is compared before the model loads.
    # Hidden entries are a killed run's temporaries, which the run itself removes.
    taken = out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())
    if out.exists() and not overwrite and not (out / "run.json").exists() and (taken or not out.is_dir()):
        raise OutputExistsError(out)
    device = _device(device)
    from guidegen.pipeline.cli_support import run_generate

    for line in run_generate(
        request,
        out,
        batch_size=batch_size,
        model=model,
        device=device,
        threads=threads,
        dataset_id=dataset_id,
        dataset_name=dataset_name,
        overwrite=overwrite,
        progress=not quiet,
    ):
        typer.echo(line)


@app.command("edit")
def edit_command(
    ct: Annotated[Path, typer.Option("--ct", help="The real CT: NIfTI file or DICOM series folder.")],
    labels: Annotated[
        Path, typer.Option("--labels", "-l", help="Its label map (NIfTI or DICOM-SEG), on the CT's grid.")
    ],
    prompt: Annotated[
        str, typer.Option("--prompt", "-p", help='The edit, e.g. "add a 3 cm tumour in the sigmoid colon".')
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (edit_000/, edit_001/, …).")] = Path(
        "guidegen-edit"
    ),
    n: Annotated[int, typer.Option("-n", min=1, help="Number of edits (edit i uses seed + i).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of edit 0 (placement and CT noise).")] = 0,
    vocabulary: Annotated[
        Optional[str], typer.Option(help="Label vocabulary of the label file (see list-vocabularies).")
    ] = None,
    labels_json: LabelsJsonOption = None,
    margin: Annotated[
        Optional[float], typer.Option(help="Margin (mm) regenerated around the changed voxels (default 6).")
    ] = None,
    phase: Annotated[
        Optional[str], typer.Option(help="Contrast phase of the scan (default: estimated from the CT).")
    ] = None,
    steps: Annotated[Optional[int], typer.Option(help="Flow steps per slice.")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Image generator folder (default: the shipped model).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
) -> None:
    """Edit a real scan by text: add tumours (or resize organs) in its labels and regenerate its CT only there."""
    settings = GenerationSettings(image_steps=steps, phase=phase, precision=precision, backend=backend)
    _input_file(ct, "CT")
    _input_file(labels, "label map")
    if labels_json is not None:
        _input_file(labels_json, "label set")
    _new_output(out, overwrite)
    device = _device(device)
    from guidegen.pipeline.edit import edit_to_folder

    for line in edit_to_folder(
        ct=ct,
        labels=labels,
        prompt=prompt,
        out=out,
        vocabulary=vocabulary,
        label_set=labels_json,
        n=n,
        seed=seed,
        margin_mm=margin,
        settings=settings,
        model=model,
        device=device,
        overwrite=overwrite,
    ):
        typer.echo(line)


evaluate_app = typer.Typer(help="Evaluate generated cases against real ones.", no_args_is_help=False)
app.add_typer(evaluate_app, name="evaluate")


@evaluate_app.callback(invoke_without_command=True)
def evaluate_command(
    ctx: typer.Context,
    generated: Annotated[
        Optional[Path],
        typer.Option("--generated", "-g", help="Folder of generated cases (ct.nii.gz + labels.nii.gz each)."),
    ] = None,
    real: Annotated[
        Optional[Path], typer.Option("--real", "-r", help="Real cases: case folders or a `guidegen prepare` output.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (metrics.json, report.md, plots).")] = Path(
        "evaluation"
    ),
    judge: Annotated[
        Optional[Path], typer.Option(help="A saved segmentation judge (default: train one on the real cases).")
    ] = None,
    judge_steps: Annotated[int, typer.Option(min=1, help="Training steps of the judge.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split and the judge.")] = 0,
    threads: ThreadsOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing report folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Realism, CT–label alignment, z-consistency and diversity of generated cases (see also `evaluate downstream`)."""
    if ctx.invoked_subcommand is not None:
        return
    if generated is None or real is None:
        raise InputError("--generated/--real", "both are required (see `guidegen evaluate --help`)")
    from guidegen.evaluation.report import evaluate
    from guidegen.training import set_threads

    set_threads(threads)
    evaluate(
        generated, real, out, judge=judge, judge_steps=judge_steps, seed=seed, progress=not quiet, overwrite=overwrite
    )
    typer.echo(f"report: {out}/report.md, metrics: {out}/metrics.json")


@evaluate_app.command("downstream")
def evaluate_downstream_command(
    real: Annotated[Path, typer.Option("--real", "-r", help="Real cases (training; split unless --test is given).")],
    synthetic: Annotated[Path, typer.Option("--synthetic", "-s", help="Generated cases.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Result folder (downstream.json, downstream.md).")] = Path(
        "downstream"
    ),
    test: Annotated[
        Optional[Path], typer.Option(help="Held-out real test cases (default: hold out part of --real).")
    ] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; one run per seed and setting.")] = "0,1,2",
    steps: Annotated[int, typer.Option(min=1, help="Training steps per run.")] = 300,
    classes: Annotated[
        Optional[str],
        typer.Option(
            help="Comma-separated classes to score, e.g. tumour or liver,spleen (default: every trained class); "
            "the segmenter then oversamples their slices and adds a Dice loss, in a soft-tissue window."
        ),
    ] = None,
    settings: Annotated[
        str, typer.Option(help="Training sets to compare: some of real, synthetic, real+synthetic.")
    ] = "real,synthetic,real+synthetic",
    threads: ThreadsOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing result folder.")] = False,
) -> None:
    """Train one small segmenter on real, synthetic and real + synthetic cases; Dice on held-out real cases.

    For tumours: --synthetic a `guidegen edit` output (real scans with tumours added), --classes tumour,
    --settings real,real+synthetic, --test real tumour cases."""
    from guidegen.evaluation.downstream import run_downstream
    from guidegen.training import set_threads

    try:
        seed_list = [int(v) for v in seeds.split(",") if v.strip()]
    except ValueError:
        raise InputError("--seeds", f"expected comma-separated whole numbers, got {seeds!r}") from None
    if not seed_list:
        raise InputError("--seeds", "name at least one seed")
    from guidegen.evaluation.downstream import SETTINGS
    from guidegen.labels.vocabulary import NAMES

    class_list = None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
    if class_list is not None and (not class_list or any(c not in NAMES for c in class_list)):
        raise InputError("--classes", f"expected class names from list-classes, got {classes!r}")
    setting_list = [v.strip() for v in settings.split(",") if v.strip()]
    if not setting_list or any(v not in SETTINGS for v in setting_list):
        raise InputError("--settings", f"expected some of {', '.join(SETTINGS)}, got {settings!r}")
    set_threads(threads)
    run_downstream(
        real,
        synthetic,
        out,
        test_dir=test,
        seeds=seed_list,
        steps=steps,
        overwrite=overwrite,
        classes=class_list,
        settings_run=setting_list,
    )
    typer.echo((out / "downstream.md").read_text(encoding="utf-8"))


@evaluate_app.command("masks")
def evaluate_masks_command(
    sampled: Annotated[
        Path, typer.Option("--sampled", "-s", help="A `sample-masks` output folder (or one sampled label map).")
    ],
    real: Annotated[
        list[Path], typer.Option("--real", "-r", help="A real label map never trained on (repeat the option).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Result folder (realism.txt, realism.json).")] = Path(
        "mask-realism"
    ),
    vocabulary: Annotated[
        Optional[str], typer.Option(help="The real maps' label vocabulary (see list-vocabularies).")
    ] = None,
    labels_json: LabelsJsonOption = None,
    prompt: Annotated[
        Optional[str],
        typer.Option(help="The maps' prompt (default: the folder's prompt.json); scores unstated organs."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing result folder.")] = False,
) -> None:
    """Label-map realism: organ shape statistics of sampled vs real maps, colon continuity, unstated organs."""
    _new_output(out, overwrite)
    _input_file(sampled, "sampled label maps")
    files = sorted(sampled.glob("sample_*/labels.nii.gz")) if sampled.is_dir() else [sampled]
    if not files:
        raise InputError(sampled, "holds no sample_*/labels.nii.gz (a `guidegen sample-masks` output folder)")
    if prompt is None and sampled.is_dir() and (sampled / "prompt.json").is_file():
        from guidegen.io.layouts import read_json_object

        prompt = read_json_object(sampled / "prompt.json").get("prompt")
    for path in real:
        _input_file(path, "real label map")
    import numpy as np

    from guidegen.evaluation.mask_realism import mask_realism_report
    from guidegen.io.atomic import atomic_dir
    from guidegen.pipeline.folders import load_labels

    maps = []
    for path in files:
        volume, _ = load_labels(path, "guidegen")
        spacing = maps[0].spacing if maps else volume.spacing
        if not np.allclose(volume.spacing, spacing, atol=1e-3):
            raise InputError(path, f"voxel spacing {volume.spacing} differs from the other sampled maps' {spacing}")
        maps.append(volume)
    references = []
    for path in real:
        volume, annotated = load_labels(path, vocabulary, labels_json)
        volume.meta["annotated"] = sorted(annotated)
        references.append(volume)
    lines, results = mask_realism_report(maps, references, prompt)
    results["sampled"] = [str(f) for f in files]
    results["real"] = [str(p) for p in real]
    results["prompt"] = prompt
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "realism.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "realism.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    for line in lines:
        typer.echo(line)


@app.command("list-vocabularies")
def list_vocabularies() -> None:
    """Label vocabularies that `prepare --vocabulary` and `report --vocabulary` accept."""
    from guidegen.labels.remap import available_vocabularies, load_vocabulary

    for name in available_vocabularies():
        typer.echo(f"{name:20s} {load_vocabulary(name).description}")


@app.command("list-classes")
def list_classes() -> None:
    """GuideGen's label classes and their ids: the names a --labels-json label set may use."""
    from guidegen.labels.vocabulary import CLASSES, UNKNOWN

    for c in CLASSES:
        typer.echo(f"{c.id:3d}  {c.name:20s} {c.display}")
    typer.echo(f"{UNKNOWN:3d}  {'unknown':20s} not annotated / outside the scan")
    typer.echo(
        'A --labels-json label set maps your ids to these names, e.g. {"1": "liver", "2": "tumour", "9": "unknown"}.'
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, turning GuideGen errors into one line and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        # With standalone_mode=False click *returns* the code of typer.Exit instead of exiting.
        code = app(args=args, prog_name="guidegen", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except (GuideGenError, OSError) as exc:
        if debug:
            traceback.print_exc()
        message = (
            str(exc)
            if isinstance(exc, GuideGenError)
            else f"{getattr(exc, 'filename', '') or ''}: {exc.strerror or exc}".lstrip(": ")
        )
        typer.echo(f"error: {message}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors come through here with standalone_mode=False
        import click

        # typer ≥ 0.2x raises its own copy of click's exceptions (typer._click), not click's.
        if isinstance(exc, click.exceptions.ClickException) or (
            isinstance(exc, typer.TyperException) and hasattr(exc, "show")
        ):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        typer.echo(
            f"internal error: {exc.__class__.__name__}: {' '.join(str(exc).split())} (rerun with --debug for the "
            "traceback)",
            err=True,
        )
        sys.exit(1)
