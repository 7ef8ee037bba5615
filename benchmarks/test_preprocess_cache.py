"""Speed of the local-copy preprocessing cache: preprocessing one BraTS-sized scan against a cache hit.

One scan of 240x240x155 at 1 mm (compressed NIfTI, as BraTS ships it), preprocessed to 2 mm
(reorient, resample, crop or pad, scale, written as uncompressed NIfTI), against finding the
same scan in the cache. Goal: a cache hit at least 50x faster, so a second run starts at once.

Run with ``pytest benchmarks/test_preprocess_cache.py`` (not part of the test suite).
"""

import nibabel as nib
import numpy as np
import pytest

from privbench.tasks import preprocess

GROUP = "one 240x240x155 BraTS scan to 2 mm"
SETTINGS = preprocess.Settings(2.0, (120, 120, 78), ((0, 0), (1, 1), (2, 2), (4, 3)))


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("brats")
    rng = np.random.default_rng(0)
    image = np.zeros((240, 240, 155), np.float32)
    image[40:200, 30:210, 10:145] = 300 + 50 * rng.standard_normal((160, 180, 135))
    label = np.zeros(image.shape, np.int16)
    label[100:140, 100:140, 60:100] = 2
    label[110:130, 110:130, 70:90] = 4
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), folder / "t1ce.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "seg.nii.gz")
    return folder / "t1ce.nii.gz", folder / "seg.nii.gz"


def test_preprocess_miss(benchmark, scan, tmp_path):
    benchmark.group = GROUP
    counter = iter(range(1000))
    files = benchmark.pedantic(lambda: preprocess.cached(tmp_path / str(next(counter)), *scan, SETTINGS),
                               rounds=3, iterations=1)
    assert nib.load(str(files[1])).shape == (120, 120, 78)


def test_cache_hit(benchmark, scan, tmp_path):
    benchmark.group = GROUP
    preprocess.cached(tmp_path, *scan, SETTINGS)
    files = benchmark(preprocess.cached, tmp_path, *scan, SETTINGS)
    assert set(np.unique(np.asarray(nib.load(str(files[1])).dataobj))) == {0, 2, 3}
