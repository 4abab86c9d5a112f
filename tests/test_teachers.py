"""The built-in teachers: pinned weights, the denoiser contract, and digits that look like digits."""

import pytest
import torch

from gasbench.core.registry import SOLVERS, TEACHERS
from gasbench.sampling import sample_seeds
from gasbench.core.seeds import noise_and_conditions
from gasbench.teachers.datasets import load_digits_tensor


@pytest.fixture(scope="module")
def digits():
    return TEACHERS.get("digits")()


def test_digits_samples_are_digits_of_their_class(digits):
    """Nearest class mean of the real data agrees with the requested label for most samples."""
    images, labels = load_digits_tensor()
    means = torch.stack([images[labels == k].mean(0) for k in range(10)]).flatten(1)
    seeds = list(range(50_000, 50_200))
    table = SOLVERS.get("unipc")().table(digits, 10)
    samples = sample_seeds(digits, table, seeds, batch_size=200)
    _, cond = noise_and_conditions(digits, seeds)
    predicted = torch.cdist(samples.flatten(1), means).argmin(1)
    assert (predicted == cond).float().mean() > 0.8
    assert samples.min() > -1.5 and samples.max() < 1.5


def test_denoiser_contract(digits):
    noise, cond = noise_and_conditions(digits, [1, 2, 3])
    x = noise * 2.0
    out = digits.denoise(x, torch.tensor(2.0, dtype=torch.float64), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a real digit with a tiny amount of noise comes back (almost) unchanged
    images, labels = load_digits_tensor()
    x0 = images[:3].double()
    noisy = x0 + 1e-3 * noise
    assert (digits.denoise(noisy, torch.tensor(1e-3), labels[:3]) - x0).abs().max() < 0.02
    # and heavy noise is mapped back into the data range
    heavy = digits.denoise(noise * 20, torch.tensor(20.0), cond)
    assert heavy.abs().max() < 1.5


def test_samples_do_not_depend_on_batch_size(digits):
    table = SOLVERS.get("dpmpp2m")().table(digits, 4)
    seeds = list(range(7))
    together = sample_seeds(digits, table, seeds, batch_size=7)
    apart = sample_seeds(digits, table, seeds, batch_size=3)
    assert torch.allclose(together, apart, atol=1e-5)


def test_conditions_are_uniform_random_per_seed(digits):
    _, cond = noise_and_conditions(digits, list(range(2000)))
    counts = torch.bincount(cond, minlength=10)
    assert counts.min() > 140 and counts.max() < 260
    _, again = noise_and_conditions(digits, list(range(2000)))
    assert torch.equal(cond, again)


def test_gmm_denoiser_is_the_posterior_mean():
    """Monte Carlo check of the exact mixture denoiser at one noise level."""
    from gasbench.teachers.gmm import GaussianMixtureTeacher

    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    teacher = GaussianMixtureTeacher(means, std=0.3)
    sigma = 0.7
    n = 400_000
    comp = torch.randint(3, (n,), generator=g)
    x0 = means[comp] + 0.3 * torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)
    x = x0 + sigma * torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)
    # E[x0 | x] = D(x) implies E[(x0 - D(x)) * f(x)] = 0 for any f; take f(x) = x
    residual = x0 - teacher.denoise(x, torch.tensor(sigma), None)
    assert residual.mean().abs() < 5e-3
    assert (residual * x).mean().abs() < 5e-3


def test_fashion_mnist_missing_or_corrupt_files_are_named(tmp_path, monkeypatch):
    from gasbench.core.errors import GasbenchError
    from gasbench.teachers.datasets import FASHION_FILES, load_fashion_tensor

    monkeypatch.setenv("GASBENCH_FASHION_MNIST", str(tmp_path))
    with pytest.raises(GasbenchError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_tensor("test")
    for name, _ in FASHION_FILES.values():
        (tmp_path / name).write_bytes(b"not gzip")
    with pytest.raises(GasbenchError, match="is corrupt or not Fashion-MNIST"):
        load_fashion_tensor("test")


def test_fashion_mnist_from_the_debian_package():
    from gasbench.teachers.datasets import fashion_dir, load_fashion_tensor

    if not (fashion_dir() / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not installed in {fashion_dir()} (apt-get install dataset-fashion-mnist)")
    images, labels = load_fashion_tensor("test")
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    assert torch.bincount(labels).tolist() == [1000] * 10
