from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers.data import augment_batch, dataset_info, iterate_batches, load_dataset
from workers.spec import BadSpecError


def test_digits_splits_are_fixed_and_image_shaped() -> None:
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert (len(a.train), len(a.val), a.test) == (1438, 359, None)
    assert a.num_classes == 10 and a.input_shape == (3, 32, 32)
    assert a.train.images.dtype == torch.uint8
    assert a.train.images.shape == (1438, 3, 32, 32)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    assert set(a.train.labels.tolist()) == set(range(10))
    # Grey images replicated to 3 channels, using the whole 0..255 range.
    assert torch.equal(a.train.images[:, 0], a.train.images[:, 2])
    assert int(a.train.images.max()) == 255
    assert dataset_info("digits") == (10, (3, 32, 32))
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.val.labels, a.val.labels)


def test_digits_are_scikit_learns_read_without_importing_it() -> None:
    """A digits job's workers read scikit-learn's bundled file (its import costs ~2 CPU s per
    process); the values are `load_digits()`'s."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from workers.data import _digits_table

    d, table = load_digits(), _digits_table()
    assert np.array_equal(table[:, :-1], d.data) and np.array_equal(table[:, -1], d.target)
    code = (
        "import sys; from workers.data import load_dataset; load_dataset('digits'); "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out


def test_npz_limit_split_and_validation_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    y = np.arange(50) % 5
    np.savez(tmp_path / "a.npz", x=x, y=y)
    s = load_dataset(f"npz:{tmp_path / 'a.npz'}?limit=20")
    assert (len(s.train), len(s.val)) == (18, 2)
    assert s.num_classes == 5 and s.input_shape == (3, 8, 8)
    kept = {bytes(img.numpy().tobytes()) for img in torch.cat([s.train.images, s.val.images])}
    first20 = {bytes(torch.from_numpy(x[i]).permute(2, 0, 1).numpy().tobytes()) for i in range(20)}
    assert kept == first20
    assert dataset_info(f"npz:{tmp_path / 'a.npz'}") == (5, (3, 8, 8))
    # Relative paths resolve against the data dir; explicit validation/test arrays are used as is.
    np.savez(
        tmp_path / "b.npz", x=x, y=y, x_val=x[:7], y_val=y[:7], x_test=x[:3, ..., 0], y_test=y[:3]
    )
    with pytest.raises(BadSpecError, match="same image shape"):
        load_dataset("npz:b.npz", root=str(tmp_path))
    np.savez(tmp_path / "c.npz", x=x, y=y, x_val=x[:7], y_val=y[:7], x_test=x[:3], y_test=y[:3])
    c = load_dataset("npz:c.npz", root=str(tmp_path))
    assert (len(c.train), len(c.val), len(c.test or [])) == (50, 7, 3)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("imagenet", "unknown dataset 'imagenet'"),
        ("npz:/nonexistent/x.npz", "does not exist"),
        ("folder:/nonexistent", "does not exist"),
        ("npz:/tmp/x.npz?limit=abc", "must be an integer"),
        ("npz:/tmp/x.npz?shuffle=1", "unknown dataset option"),
        ("", "non-empty"),
    ],
)
def test_bad_specs_are_typed_errors(spec: str, match: str) -> None:
    with pytest.raises(BadSpecError, match=match):
        load_dataset(spec)


def test_npz_content_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", x=np.zeros((4, 8, 8, 3), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(BadSpecError, match="uint8"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}")
    np.savez(tmp_path / "g.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(BadSpecError, match="'x'"):
        load_dataset(f"npz:{tmp_path / 'g.npz'}")
    (tmp_path / "h.npz").write_bytes(b"not a zip")
    with pytest.raises(BadSpecError, match="is not an .npz file of plain arrays"):
        load_dataset(f"npz:{tmp_path / 'h.npz'}")
    # object arrays would need unpickling: refused, and the message never suggests it
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4))
    for read in (load_dataset, dataset_info):
        with pytest.raises(BadSpecError, match="plain arrays") as err:
            read(f"npz:{tmp_path / 'o.npz'}")
        assert "pickle" not in err.value.message


def test_cifar_without_a_copy_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(BadSpecError, match="download=True") as err:
        load_dataset("cifar10", root=str(tmp_path))
    assert "npz:" in err.value.message
    assert dataset_info("cifar100") == (100, (3, 32, 32))


def test_image_folder_with_and_without_split_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = tmp_path / "split" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                px = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(px).save(d / f"{i}.png")
                flat = tmp_path / "flat" / cls
                flat.mkdir(parents=True, exist_ok=True)
                Image.fromarray(px).save(flat / f"{split}{i}.png")
    s = load_dataset(f"folder:{tmp_path / 'split'}?size=16")
    assert (len(s.train), len(s.val), s.num_classes, s.input_shape) == (6, 6, 2, (3, 16, 16))
    f = load_dataset(f"folder:{tmp_path / 'flat'}")
    assert (len(f.train) + len(f.val), f.input_shape) == (12, (3, 32, 32))
    assert dataset_info(f"folder:{tmp_path / 'flat'}") == (2, (3, 32, 32))


def test_augment_batch_crops_a_padded_window_and_flips() -> None:
    imgs = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    gen = torch.Generator().manual_seed(3)
    out = augment_batch(imgs, gen, pad=2)
    assert out.shape == imgs.shape
    padded = torch.nn.functional.pad(imgs, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(2)) for w in windows)
    # Same generator state -> same augmentation.
    again = augment_batch(imgs, torch.Generator().manual_seed(3), pad=2)
    assert torch.equal(out, again)


def test_iterate_batches_normalises_and_covers_every_image_once() -> None:
    s = load_dataset("digits")
    gen = torch.Generator().manual_seed(0)
    seen = []
    for x, y, idx in iterate_batches(s.val, 100, shuffle=True, generator=gen):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert torch.equal(y, s.val.labels[idx])
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(len(s.val)))
    x_all = s.val.normalized()
    assert abs(float(x_all.mean())) < 0.2 and abs(float(x_all.std()) - 1) < 0.2
    with pytest.raises(ValueError, match="Generator"):
        next(iterate_batches(s.val, 10, shuffle=True))
