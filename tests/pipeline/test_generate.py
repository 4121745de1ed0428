"""End to end with tiny models: the API, case folders, determinism, resume, sharding, exports."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from guidegen.errors import InputError, OutputExistsError
from guidegen.pipeline import GenerationSettings, GuideGen
from guidegen.pipeline.dataset import DatasetRequest, Shard, generate_dataset, plan_cases, read_prompts_file

PROMPT = "4 cm liver tumour, portal venous phase"


@pytest.fixture(scope="module")
def gg(tiny_model):
    return GuideGen.from_pretrained(tiny_model)


def _arrays(folder):
    return (
        np.asarray(nib.load(str(folder / "ct.nii.gz")).dataobj),
        np.asarray(nib.load(str(folder / "labels.nii.gz")).dataobj),
    )


def _max_hu_difference(a, b):
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def _stable(meta):
    return {k: v for k, v in meta.items() if k not in ("timings_s", "created")}


def test_generate_returns_aligned_int16_cases(gg):
    cases = gg.generate(PROMPT, n=2, seed=3)
    assert [c.seed for c in cases] == [3, 4] and [c.index for c in cases] == [0, 1]
    for case in cases:
        assert case.ct.array.dtype == np.int16 and case.labels.array.dtype == np.uint8
        assert case.ct.shape == case.labels.shape and np.array_equal(case.ct.affine, case.labels.affine)
        assert case.ct.array.min() >= -1024 and case.ct.array.max() <= 3071
        assert case.requested.phase == "portal_venous" and case.measured.phase == "portal_venous"
        assert case.requested.tumours[0].organ == "liver"
        assert "EXAM" in case.report or "TECHNIQUE" in case.report
        assert set(case.timings) >= {"masks", "upsample", "images"}
    assert not np.array_equal(cases[0].ct.array, cases[1].ct.array)  # seeds differ → cases differ


def test_a_case_does_not_depend_on_its_batch(gg):
    batch = gg.generate([PROMPT, "enlarged spleen"], n=2, seed=10)
    alone = gg.generate_cases(["enlarged spleen"], seeds=[13], indices=[3])[0]
    assert batch[3].prompt == "enlarged spleen" and batch[3].seed == 13
    assert np.array_equal(batch[3].labels.array, alone.labels.array)
    # Batched convolutions may round differently from single ones (oneDNN picks kernels by batch
    # size): rounding to int16 HU then differs by 1 HU in rare voxels, never more.
    assert _max_hu_difference(batch[3].ct.array, alone.ct.array) <= 1


def test_same_seed_gives_identical_files(gg, tmp_path):
    for name in ("a", "b"):
        generate_dataset(gg, DatasetRequest(((PROMPT, 2),), seed=7), tmp_path / name)
    for case in ("case_000000", "case_000001"):
        a, b = tmp_path / "a" / case, tmp_path / "b" / case
        for x, y in zip(_arrays(a), _arrays(b)):
            assert np.array_equal(x, y)
        assert (a / "report.txt").read_text() == (b / "report.txt").read_text()
        assert _stable(json.loads((a / "case.json").read_text())) == _stable(json.loads((b / "case.json").read_text()))


def test_case_folder_contents(gg, tmp_path):
    summary = generate_dataset(gg, DatasetRequest(((PROMPT, 1),), seed=0), tmp_path / "out")
    folder = tmp_path / "out" / "case_000000"
    assert sorted(p.name for p in folder.iterdir()) == [
        "case.json",
        "ct.nii.gz",
        "labels.nii.gz",
        "preview.png",
        "report.txt",
    ]
    ct, labels = nib.load(str(folder / "ct.nii.gz")), nib.load(str(folder / "labels.nii.gz"))
    assert ct.shape == labels.shape and np.allclose(ct.affine, labels.affine)
    assert ct.get_data_dtype() == np.int16 and labels.get_data_dtype() == np.uint8
    meta = json.loads((folder / "case.json").read_text())
    assert meta["prompt"] == PROMPT and meta["seed"] == 0 and meta["model"] == {"model_id": "tiny-test", "version": "0"}
    assert meta["requested"]["tumours"][0]["organ"] == "liver" and meta["phase"] == "portal_venous"
    assert meta["sampling"]["mask_steps"] == 3 and meta["shape"] == list(ct.shape)
    placed = meta["tumour_placement"]  # what the sampler placed for the stated liver tumour, and whether it holds
    assert placed["mode"] == "insert" and placed["stated"] is True and "tumours" in placed["agreement"]
    assert placed["grid_mm"] == pytest.approx(meta["spacing_mm"])  # placed on the case's own grid, after upsampling
    assert meta["organ_sizes"] == {}  # the prompt states no organ size: nothing resized
    aorta = meta["aorta_placement"]  # the tiny network's aorta: redrawn as a tube, kept, or none drawn
    assert set(aorta) in (
        {"diameter_mm", "slices", "network_mm2", "tube_mm2", "moved_voxels"},
        {"kept", "network_mm2"},
        {"error"},
    )
    assert np.allclose(meta["spacing_mm"], ct.header.get_zooms()) and meta["synthetic"] is True
    assert all(meta["labels"][str(v)] for v in np.unique(np.asarray(labels.dataobj)))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["cases"][0]["folder"] == "case_000000"
    assert summary["generated"] == 1 and summary["skipped"] == 0


def test_rerun_completes_a_killed_run_and_refuses_other_requests(gg, tmp_path):
    out = tmp_path / "out"
    generate_dataset(gg, DatasetRequest(((PROMPT, 3),), seed=1), out)
    before = _arrays(out / "case_000001")
    # What a kill leaves behind: a missing case and its half-written temporary folder.
    shutil.rmtree(out / "case_000001")
    (out / ".case_000001.abc123.tmp").mkdir()
    (out / ".case_000001.abc123.tmp" / "ct.nii.gz").write_bytes(b"partial")
    summary = generate_dataset(gg, DatasetRequest(((PROMPT, 3),), seed=1), out)
    assert (summary["generated"], summary["skipped"]) == (1, 2)
    assert not list(out.glob(".case_*.tmp"))
    after = _arrays(out / "case_000001")
    assert np.array_equal(before[1], after[1]) and _max_hu_difference(before[0], after[0]) <= 1  # batch of 1 vs 3
    with pytest.raises(InputError, match="different request.*seed"):
        generate_dataset(gg, DatasetRequest(((PROMPT, 3),), seed=2), out)
    summary = generate_dataset(gg, DatasetRequest(((PROMPT, 1),), seed=2), out, overwrite=True)
    assert summary["generated"] == 1 and not (out / "case_000001").exists()


def test_existing_unrelated_folder_is_not_overwritten(gg, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        generate_dataset(gg, DatasetRequest(((PROMPT, 1),)), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_shards_together_equal_one_run(gg, tmp_path):
    prompts = [(PROMPT, 2), ("sigmoid colon cancer", 3)]
    generate_dataset(gg, DatasetRequest(tuple(prompts), seed=5), tmp_path / "one", batch_size=2)
    for rank in (0, 1, 0):  # what torchrun's barrier orders; rank 0's last pass writes the full manifest
        summary = generate_dataset(
            gg,
            DatasetRequest(tuple(prompts), seed=5),
            tmp_path / "two",
            batch_size=3,
            shard=Shard(rank, 2),
            barrier=lambda: None,
        )
    assert summary["complete"] and summary["skipped"] == 3
    for case in plan_cases(prompts, 5):
        assert case.seed == 5 + case.index
        (ct1, lab1), (ct2, lab2) = _arrays(tmp_path / "one" / case.folder), _arrays(tmp_path / "two" / case.folder)
        assert np.array_equal(lab1, lab2) and _max_hu_difference(ct1, ct2) <= 1  # batches differ: see above


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# a comment\n4 cm liver tumour\n\n  enlarged spleen  \n", encoding="utf-8")
    assert read_prompts_file(txt) == [("4 cm liver tumour", 1), ("enlarged spleen", 1)]
    csv = tmp_path / "p.csv"
    csv.write_text('Prompt,Count\n"sigmoid colon cancer, 3 cm",4\nnormal abdomen,1\n', encoding="utf-8")
    assert read_prompts_file(csv) == [("sigmoid colon cancer, 3 cm", 4), ("normal abdomen", 1)]
    assert [c.index for c in plan_cases(read_prompts_file(csv), 0)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("empty.txt", "\n# only a comment\n", "holds no prompts"),
        ("bin.txt", b"abc\x00def", "NUL"),
        ("latin1.txt", "f\xe9moral".encode("latin-1"), "not UTF-8"),
        ("nocol.csv", "text,count\nliver,1\n", "'prompt' column"),
        ("badcount.csv", "prompt,count\nliver tumour,many\n", "line 2: count 'many'"),
        ("zero.csv", "prompt,count\nliver tumour,0\n", "at least 1"),
        ("long.txt", "x" * 5000, "characters long"),
    ],
)
def test_bad_prompt_files(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(InputError, match=problem) as info:
        read_prompts_file(path)
    assert str(path) in str(info.value)


def test_nnunet_export(gg, tmp_path):
    summary = generate_dataset(
        gg, DatasetRequest(((PROMPT, 2),), format="nnunet"), tmp_path / "out", dataset_id=42, dataset_name="Tiny"
    )
    dataset = tmp_path / "out" / "nnUNet_raw" / "Dataset042_Tiny"
    assert summary["export"] == str(dataset)
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["channel_names"] == {"0": "CT"} and meta["labels"]["background"] == 0
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == [
        "Tiny_000000_0000.nii.gz",
        "Tiny_000001_0000.nii.gz",
    ]
    from tests.io.test_exports import require_nnunet, run_nnunet_check

    require_nnunet()
    status, printed = run_nnunet_check(tmp_path, [dataset])[str(dataset)]
    assert status == "ok", printed


def test_dicom_export_reads_back_on_the_same_grid(gg, tmp_path):
    from guidegen.io.dicom import read_dicom_series
    from guidegen.io.dicom_seg import read_dicom_seg
    from guidegen.io.nifti import read_nifti
    from guidegen.pipeline.dataset import write_case_folder

    # An untrained sampler may draw an empty map; give the case real structures on its grid.
    case = gg.generate(PROMPT, n=1, seed=0)[0]
    boxes = np.zeros(case.labels.shape, np.uint8)
    boxes[4:20, 4:16, 2:-2], boxes[20:28, 10:20, 4:10], boxes[8:12, 18:26, 3:-3] = 12, 4, 1
    case.labels = case.labels.with_array(boxes)
    folder = tmp_path / "case"
    folder.mkdir()
    write_case_folder(case, folder, gg.info, GenerationSettings(), {"mask_steps": 3, "image_steps": 2}, dicom=True)
    ct = read_nifti(folder / "ct.nii.gz", kind="ct")
    labels = read_nifti(folder / "labels.nii.gz", kind="labels")
    series = read_dicom_series(folder / "dicom" / "CT")
    assert series.shape == ct.shape and np.allclose(series.affine, ct.affine, atol=1e-3)
    assert np.array_equal(series.array, ct.array)
    seg, names = read_dicom_seg(folder / "dicom" / "seg.dcm", reference=series)
    present = [v for v in np.unique(labels.array) if v != 0]
    # SEG segment k ↔ k-th present class in increasing GuideGen id.
    remapped = np.zeros_like(labels.array)
    for k, v in enumerate(present, start=1):
        remapped[labels.array == v] = k
    assert np.array_equal(seg.array, remapped)


def test_levels_are_applied_and_recorded_and_off_keeps_the_network_s(gg):
    """`generate` applies `calibrate_levels` (as `generate-ct` does): only tumours and the aorta move."""
    from guidegen.labels.vocabulary import ID

    for prompt in (PROMPT, "healthy abdomen, non-contrast"):
        (on,) = gg.generate(prompt, seed=5)
        (off,) = gg.generate(prompt, seed=5, levels=False)
        assert np.array_equal(on.labels.array, off.labels.array)
        assert "levels" not in off.ct.meta and on.ct.array.dtype == off.ct.array.dtype == np.int16
        assert on.ct.meta["levels"]["phase"] == on.requested.phase
        touched = np.isin(on.labels.array, [ID["tumour"], ID["aorta"]])
        assert np.array_equal(on.ct.array[~touched], off.ct.array[~touched])
    with pytest.raises(InputError, match="--levels"):
        GenerationSettings(levels="yes")


def test_calibrated_sets_an_unenhanced_aorta_and_a_liver_tumour():
    from guidegen.images.levels import UNENHANCED_AORTA_HU, tumour_level
    from guidegen.io.volume import Volume
    from guidegen.labels.vocabulary import ID
    from guidegen.pipeline.generate import _calibrated

    rng = np.random.default_rng(0)
    labels = np.full((40, 40, 12), ID["body"], np.uint8)
    labels[4:30, 4:30] = ID["liver"]
    labels[12:20, 12:20, 3:9] = ID["tumour"]
    labels[32:37, 32:37] = ID["aorta"]
    hu = np.where(labels == ID["liver"], 55.0, 0.0) + np.where(labels == ID["tumour"], 20.0, 0.0)
    hu += np.where(labels == ID["aorta"], 70.0, 0.0) + rng.normal(0.0, 8.0, labels.shape)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    ct = Volume(np.rint(hu).astype(np.int16), affine, "ct", {"phase": "non_contrast", "seed": 1})
    out = _calibrated(ct, Volume(labels, affine, "labels"))
    assert out.array.dtype == np.int16 and out.meta["seed"] == 1
    record = out.meta["levels"]
    assert record["aorta"]["target_hu"] == pytest.approx(UNENHANCED_AORTA_HU, abs=0.1)
    assert abs(float(out.array[labels == ID["aorta"]].mean()) - UNENHANCED_AORTA_HU) < 3.0
    (tumour,) = record["tumours"]
    assert tumour["host"] == "liver"
    level = tumour_level(out.array.astype(np.float32), labels == ID["tumour"], (3.0, 3.0, 3.0))
    assert abs(level - tumour["target_hu"]) < 1.0 and abs(level - 20.0) > 5.0
    untouched = ~np.isin(labels, [ID["tumour"], ID["aorta"]])
    assert np.array_equal(out.array[untouched], ct.array[untouched])


def test_a_sampled_map_annotates_the_sampler_s_classes_only(tiny_model, monkeypatch):
    """The tiny model pairs an 18-class sampler with a 23-class image generator (as a vocabulary-2
    generator beside the shipped sampler would be): the generator is told that the sampler's classes
    are annotated and the lungs, heart, muscles and other vessels are not (they lie inside "body")."""
    from guidegen.labels.vocabulary import NAMES
    from guidegen.pipeline.generate import sampled_classes

    model = GuideGen.from_pretrained(tiny_model)
    assert (model.mask_sampler.config.num_classes, model.image_generator.config.num_classes) == (18, 23)
    seen = []
    original = model.image_generator.generate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("annotated"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model.image_generator, "generate", spy)
    model.generate(PROMPT, n=1, seed=0)
    assert seen == [list(NAMES[:18])]
    assert sampled_classes(18, 18) is None and sampled_classes(23, 23) is None
