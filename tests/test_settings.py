"""`GenerationSettings` and the request checks: validated once, one-line errors naming the option,
and cheap enough that the command line refuses bad input before torch is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from guidegen.errors import InputError, OutputExistsError
from guidegen.settings import DatasetRequest, GenerationSettings, check_prompt, check_seed, check_threads


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"steps": 0}, "--steps"),
        ({"steps": 2.5}, "--steps"),
        ({"guidance": -1.0}, "--guidance"),
        ({"guidance": float("nan")}, "--guidance"),
        ({"image_steps": 10**9}, "--image-steps"),
        ({"image_guidance": 51.0}, "--image-guidance"),
        ({"phase": "venous"}, "--phase"),
        ({"tumour_placement": "paste"}, "--tumour-placement"),
        ({"organ_sizes": "big"}, "--organ-sizes"),
        ({"aorta_placement": "pipe"}, "--aorta-placement"),
        ({"precision": "int8"}, "--precision"),
        ({"backend": "tensorrt"}, "--backend"),
    ],
)
def test_each_bad_setting_is_refused_naming_its_option(changes, option):
    with pytest.raises(InputError) as info:
        GenerationSettings(**changes)
    assert str(info.value).startswith(option) and "\n" not in str(info.value)


def test_settings_are_frozen_and_replace_validates():
    settings = GenerationSettings(image_steps=4, phase="arterial")
    with pytest.raises(AttributeError):
        settings.image_steps = 5  # type: ignore[misc]
    assert settings.replace(image_steps=8).image_steps == 8
    with pytest.raises(InputError, match="--image-steps"):
        settings.replace(image_steps=0)
    with pytest.raises(TypeError, match="image_stpes"):
        settings.replace(image_stpes=8)
    assert GenerationSettings.from_options(settings) is settings
    assert GenerationSettings.from_options(None, phase="delayed") == GenerationSettings(phase="delayed")
    assert GenerationSettings.from_options(settings, precision="fp32").image_steps == 4


def test_run_json_keeps_what_decides_the_cases_not_how_the_networks_ran():
    settings = GenerationSettings(steps=12, precision="fp32", backend="torch")
    request = DatasetRequest((("4 cm liver tumour", 2),), seed=5, settings=settings)
    stored = request.to_dict({"model_id": "m", "version": "1"})
    assert (
        stored["settings"]["steps"] == 12
        and "precision" not in stored["settings"]
        and "backend" not in stored["settings"]
    )
    assert DatasetRequest((("4 cm liver tumour", 2),), 5, settings.replace(precision="bf16")).to_dict(
        {}
    ) == DatasetRequest((("4 cm liver tumour", 2),), 5, settings).to_dict({})


def test_dataset_request_checks_format_count_and_seed():
    with pytest.raises(InputError, match="--format"):
        DatasetRequest((("x", 1),), format="png")
    with pytest.raises(InputError, match="-n"):
        DatasetRequest((("x", 2_000_000),))
    with pytest.raises(InputError, match="--seed"):
        DatasetRequest((("x", 3),), seed=2**64 - 2)  # case 2 would need seed 2**64
    with pytest.raises(InputError, match="--prompt"):
        DatasetRequest(())


def test_prompt_seed_and_thread_checks():
    assert check_prompt("  4 cm\tliver tumour ") == "4 cm liver tumour"
    with pytest.raises(InputError, match="--prompt"):
        check_prompt("   ")
    assert check_seed(-(2**63)) == -(2**63)
    with pytest.raises(InputError, match="--seed"):
        check_seed(True)  # type: ignore[arg-type]
    assert check_threads(None) is None and check_threads(2) == 2
    with pytest.raises(InputError, match="--threads"):
        check_threads(0)


BAD_REQUESTS = [
    (["generate", "--prompt", "x", "--image-steps", "0"], "--image-steps"),
    (["generate", "--prompt", "x", "--phase", "venous"], "--phase"),
    (["generate", "--prompt", "x", "--threads", "0"], "--threads"),
    (["generate", "--prompts", "/nonexistent/prompts.txt"], "prompts.txt"),
    (["generate-ct", "--labels", "/nonexistent/labels.nii.gz", "--out", "o"], "labels.nii.gz"),
    (["sample-masks", "--prompt", "x", "--out", "o", "--tumour-placement", "paste"], "--tumour-placement"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_REQUESTS)
def test_bad_requests_are_refused_before_torch_is_imported(args, needle, tmp_path):
    # Behaviour, not time: the refusal happens before any heavy import (torch, MONAI, transformers),
    # which is what makes it come back in a fraction of a second.
    code = (
        "import sys\nfrom guidegen.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    print('torch' in sys.modules, 'monai' in sys.modules, e.code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.stdout.split() == ["False", "False", "2"], done.stdout + done.stderr
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_an_existing_output_is_refused_before_torch_is_imported(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something.txt").write_text("x")
    code = (
        "import sys\nfrom guidegen.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    print('torch' in sys.modules, e.code)\n"
    )
    for args in (
        ["sample-masks", "--prompt", "x", "--out", str(out)],
        ["generate", "--prompt", "x", "--out", str(out)],
    ):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert done.stdout.split() == ["False", "2"], done.stdout + done.stderr
        assert str(OutputExistsError(out)) in done.stderr


def test_version_and_usage_lines():
    from typer.testing import CliRunner

    from guidegen import __version__
    from guidegen.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == f"guidegen {__version__}"
    # typer marks a required argument with braces; it must read as a name, not a template slot.
    for command, shown in (("report", "{LABELS}"), ("prepare", "{SOURCES}...")):
        usage = next(line for line in runner.invoke(app, [command, "--help"]).output.splitlines() if "Usage" in line)
        assert shown in usage, usage


def test_a_run_folder_with_another_request_is_refused_before_the_model_loads(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"prompts": [{"prompt": "enlarged spleen", "count": 1}], "seed": 9}')
    code = (
        "import sys\nfrom guidegen.cli import main\nimport guidegen.pipeline.generate as g\n"
        "g.GuideGen.from_pretrained = None  # loading a model would fail loudly\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    print(e.code)\n"
    )
    args = ["generate", "--prompt", "4 cm liver tumour", "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["2"], done.stdout + done.stderr
    assert "holds a different request" in done.stderr and "prompts" in done.stderr
