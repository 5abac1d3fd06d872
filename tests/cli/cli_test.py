#!/usr/bin/env python3
"""End-to-end checks of the `incres` command: bad input gets one clear line and a
non-zero exit, resume continues bit for bit, and a short real run learns.

Usage: cli_test.py PATH/TO/incres [test-name ...]
"""
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

INCRES = None
FMNIST = "/usr/share/datasets/fashion-mnist"


def run(*args, expect_ok=True):
    p = subprocess.run([INCRES, *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "INCRES_LOG": "quiet"})
    if expect_ok and p.returncode != 0:
        raise AssertionError(f"incres {' '.join(map(str, args))} failed:\n{p.stdout}\n{p.stderr}")
    return p


def write_idx(path, magic, dims, payload, compress=True):
    data = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload
    if compress:
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


def fake_fashion_mnist(folder, n_train=64, n_test=32, images_magic=0x803, truncate=False, bad_label=False):
    """A Fashion-MNIST folder of random images; the knobs break one thing each."""
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        pixels = bytes((i * 37) % 256 for i in range(n * 28 * 28))
        if truncate:
            pixels = pixels[: len(pixels) // 2]
        write_idx(f"{folder}/{split}-images-idx3-ubyte.gz", images_magic, [n, 28, 28], pixels)
        labels = bytes(i % 10 for i in range(n))
        if bad_label:
            labels = labels[:-1] + bytes([10])
        write_idx(f"{folder}/{split}-labels-idx1-ubyte.gz", 0x801, [n], labels)


def tensors(path):
    """name -> raw bytes of every tensor in a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]]
            for k, v in header.items() if k != "__metadata__"}


class BadInput(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def check_error(self, args, *needles):
        p = run(*args, expect_ok=False)
        self.assertNotEqual(p.returncode, 0, f"expected failure: {args}")
        err = p.stderr.strip()
        self.assertNotIn("Traceback", err)
        self.assertNotIn("terminate called", err)
        for needle in needles:
            self.assertIn(needle, err, f"incres {' '.join(map(str, args))}: message lacks '{needle}': {err}")
        return err

    def train(self, data, *extra):
        return ["train", "resnet20", "--data", data, "--iters", "1", "--batch", "16", "--no-progress", *extra]

    def test_unknown_model(self):
        self.check_error(["info", "resnet21"], "unknown model 'resnet21'", "resnet20")
        self.check_error(["train", "nosuchnet", "--epochs", "1"], "unknown model")

    def test_bad_flag_values(self):
        self.check_error(["train", "resnet20", "--epochs", "1", "--batch", "0"], "--batch")
        self.check_error(["train", "resnet20", "--epochs", "1", "--lr", "-1"], "--lr")
        self.check_error(["train", "resnet20", "--epochs", "1", "--shortcut", "Z"], "--shortcut")
        self.check_error(["train", "resnet20"], "--epochs")
        self.check_error(["bench", "resnet20", "--mode", "fly"], "--mode")

    def test_bad_recipe_and_optimizer_flags(self):
        base = ["train", "resnet20", "--epochs", "1"]
        self.check_error([*base, "--recipe", "fast"], "--recipe")
        self.check_error([*base, "--optimizer", "adam"], "--optimizer")
        self.check_error([*base, "--clip-norm", "-1"], "--clip-norm")
        self.check_error([*base, "--ema", "1"], "--ema", "[0, 1)")
        self.check_error([*base, "--ema", "-0.5"], "--ema")
        self.check_error([*base, "--aux-weight", "-1"], "--aux-weight")
        self.check_error([*base, "--schedule", "exp", "--decay-epochs", "0"], "--decay-epochs")
        self.check_error([*base, "--schedule", "exp", "--decay-rate", "0"], "--decay-rate")
        self.check_error([*base, "--rmsprop-decay", "1"], "--rmsprop-decay")
        # Flags that the chosen schedule or optimizer would silently ignore.
        self.check_error([*base, "--decay-rate", "0.9"], "--decay-rate", "--schedule exp", "multistep")
        self.check_error([*base, "--recipe", "inception", "--schedule", "cosine", "--decay-epochs", "3"],
                         "--decay-epochs", "cosine")
        self.check_error([*base, "--rmsprop-epsilon", "0.1"], "--rmsprop-epsilon", "sgd")
        self.check_error([*base, "--recipe", "inception", "--nesterov"], "--nesterov", "rmsprop")
        self.check_error([*base, "--optimizer", "rmsprop", "--momentum", "1"], "momentum", "[0, 1)")

    def test_decay_period_shorter_than_an_iteration(self):
        fake_fashion_mnist(self.dir)  # 64 images, batch 16: 4 iterations per epoch
        self.check_error(self.train(f"fashion-mnist:{self.dir}", "--schedule", "exp", "--decay-epochs", "0.1"),
                         "--decay-epochs 0.1", "less than one iteration")

    def test_resume_with_other_recipe_flags(self):
        fake_fashion_mnist(self.dir)
        data = f"fashion-mnist:{self.dir}"
        run(*self.train(data, "--out", f"{self.dir}/i", "--recipe", "inception"))
        ckpt = f"{self.dir}/i/last.safetensors"
        before = tensors(ckpt)
        self.check_error(self.train(data, "--resume", ckpt), "rmsprop", "sgd", "--optimizer rmsprop")
        self.check_error(self.train(data, "--resume", ckpt, "--recipe", "inception", "--ema", "0"),
                         "moving average", "--ema")
        run(*self.train(data, "--out", f"{self.dir}/r", "--optimizer", "rmsprop"))
        self.check_error(self.train(data, "--resume", f"{self.dir}/r/last.safetensors", "--recipe", "inception"),
                         "no moving average", "--ema")
        self.assertEqual(before, tensors(ckpt), "a failed load must not change the file")

    def test_missing_dataset(self):
        self.check_error(self.train(f"fashion-mnist:{self.dir}/none"), "dataset-fashion-mnist", "train-images")
        self.check_error(self.train("cifar10"), "cifar10:DIR")
        self.check_error(self.train("mnist3d"), "unknown dataset")

    def test_wrong_magic(self):
        fake_fashion_mnist(self.dir, images_magic=0x801)
        self.check_error(self.train(f"fashion-mnist:{self.dir}"), "train-images", "0x00000803", "0x00000801")

    def test_truncated(self):
        fake_fashion_mnist(self.dir, truncate=True)
        self.check_error(self.train(f"fashion-mnist:{self.dir}"), "train-images")

    def test_label_out_of_range(self):
        fake_fashion_mnist(self.dir, bad_label=True)
        self.check_error(self.train(f"fashion-mnist:{self.dir}"), "label", "10")

    def test_count_mismatch(self):
        fake_fashion_mnist(self.dir)
        write_idx(f"{self.dir}/train-labels-idx1-ubyte.gz", 0x801, [63], bytes(63))
        self.check_error(self.train(f"fashion-mnist:{self.dir}"), "train-labels", "64", "63")

    def test_unreadable_checkpoint(self):
        bad = f"{self.dir}/bad.safetensors"
        with open(bad, "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
        self.check_error(["eval", bad], "bad.safetensors")
        self.check_error(["eval", f"{self.dir}/absent.safetensors"], "absent.safetensors")

    def test_mismatched_checkpoint(self):
        fake_fashion_mnist(self.dir)
        data = f"fashion-mnist:{self.dir}"
        run(*self.train(data, "--out", f"{self.dir}/b", "--shortcut", "B"))
        ckpt = f"{self.dir}/b/last.safetensors"
        before = tensors(ckpt)
        self.check_error(self.train(data, "--resume", ckpt), "layer2.0.downsample.0.weight")
        self.assertEqual(before, tensors(ckpt), "a failed load must not change the file")


class Resume(unittest.TestCase):
    def test_two_epochs_equal_one_plus_one(self):
        with tempfile.TemporaryDirectory() as d:
            common = ["train", "resnet20", "--train-limit", "512", "--test-limit", "128", "--batch", "64",
                      "--epochs", "2", "--no-progress", "--seed", "5"]
            run(*common, "--out", f"{d}/straight")
            run(*common, "--out", f"{d}/split", "--stop-after", "8")  # 8 steps = 1 epoch
            run(*common, "--out", f"{d}/split", "--resume", f"{d}/split/last.safetensors")
            a, b = tensors(f"{d}/straight/last.safetensors"), tensors(f"{d}/split/last.safetensors")
            self.assertEqual(sorted(a), sorted(b))
            for k in a:
                self.assertEqual(a[k], b[k], f"tensor {k} differs after resume")
            rows = lambda p: [json.loads(l) for l in open(p)]
            ra, rb = rows(f"{d}/straight/metrics.jsonl"), rows(f"{d}/split/metrics.jsonl")
            self.assertEqual(len(ra), 2)
            self.assertEqual([r["train_loss"] for r in ra], [r["train_loss"] for r in rb])
            self.assertEqual([r["test_loss"] for r in ra], [r["test_loss"] for r in rb])


    def test_inception_recipe_rmsprop_ema_mid_epoch(self):
        # The inception recipe on resnet20: RMSProp (rms + momentum slots), the moving
        # average, clipping, label smoothing and an exp schedule that decays every half
        # epoch; interrupted in the middle of an epoch.
        with tempfile.TemporaryDirectory() as d:
            common = ["train", "resnet20", "--recipe", "inception", "--decay-epochs", "0.5",
                      "--train-limit", "512", "--test-limit", "128", "--batch", "64", "--epochs", "2",
                      "--no-progress", "--seed", "3"]
            run(*common, "--out", f"{d}/straight")
            run(*common, "--out", f"{d}/split", "--stop-after", "5")
            run(*common, "--out", f"{d}/split", "--resume", f"{d}/split/last.safetensors")
            a, b = tensors(f"{d}/straight/last.safetensors"), tensors(f"{d}/split/last.safetensors")
            for key in ("conv1.weight", "optimizer.rms.conv1.weight", "optimizer.momentum.conv1.weight",
                        "ema.conv1.weight", "ema.bn1.running_mean"):
                self.assertIn(key, a)
            self.assertFalse(any(k.startswith("optimizer.rms.") and k.endswith("running_mean") for k in a))
            self.assertEqual(sorted(a), sorted(b))
            for k in a:
                self.assertEqual(a[k], b[k], f"tensor {k} differs after resume")
            rows = lambda p: [json.loads(l) for l in open(p)]
            ra, rb = rows(f"{d}/straight/metrics.jsonl"), rows(f"{d}/split/metrics.jsonl")
            self.assertEqual([r["test_loss"] for r in ra], [r["test_loss"] for r in rb])
            # 8 steps per epoch, a decay every 4: the lr of step 7 and of step 15.
            self.assertAlmostEqual(ra[0]["lr"], 0.045 * 0.94, places=12)
            self.assertAlmostEqual(ra[1]["lr"], 0.045 * 0.94 ** 3, places=12)
            self.assertEqual(ra[0]["eval_weights"], "ema")
            self.assertGreater(ra[0]["grad_norm"], 0)
            self.assertIn("clipped_steps", ra[0])
            e = run("eval", f"{d}/straight/last.safetensors", "--data", "fashion-mnist")
            self.assertIn("moving average", e.stdout)
            raw = run("eval", f"{d}/straight/last.safetensors", "--data", "fashion-mnist", "--raw-weights")
            self.assertNotIn("moving average", raw.stdout)


@unittest.skipUnless(os.path.isdir(FMNIST), "Fashion-MNIST is not installed")
class ShortRun(unittest.TestCase):
    def test_learns_fashion_mnist_subset(self):
        # 4 epochs on 4096 training images: stated bar 75% test accuracy on 1000 test
        # images (chance is 10%; it reaches about 80% on this machine).
        with tempfile.TemporaryDirectory() as d:
            p = run("train", "resnet20", "--train-limit", "4096", "--test-limit", "1000", "--epochs", "4",
                    "--batch", "64", "--lr", "0.05", "--schedule", "cosine", "--no-progress", "--out", d)
            row = [json.loads(l) for l in open(f"{d}/metrics.jsonl")][-1]
            self.assertLess(row["test_error"], 25.0, p.stdout)
            e = run("eval", f"{d}/last.safetensors")  # the full 10,000-image test set
            self.assertIn("accuracy", e.stdout)


if __name__ == "__main__":
    INCRES = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
