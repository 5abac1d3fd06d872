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
import zlib

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


def write_png(path, pixels, width, height):
    """An 8-bit RGB PNG by hand (zlib + struct; no PIL): pixels is rows of (r, g, b)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in pixels)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


CLASSES = ("blue", "green", "red")  # sorted folder names = class order


def class_image(cls, i, size=40):
    """A size x size image of class cls (an index into CLASSES): its colour, with stripes
    and a little per-image variation."""
    base = [(40, 60, 220), (40, 200, 60), (220, 50, 40)][cls]
    return [[tuple(max(0, min(255, c + ((x + y + i) % 7) * 4 - (24 if (y // 5) % 2 else 0))) for c in base)
             for x in range(size)] for y in range(size)]


def fake_image_folder(root, n_train=8, n_val=3, size=40):
    """root/train/<class>/*.png and root/val/<class>/*.png, three classes by colour."""
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(CLASSES):
            os.makedirs(f"{root}/{split}/{name}", exist_ok=True)
            for i in range(n):
                write_png(f"{root}/{split}/{name}/{i:03d}.png", class_image(c, i, size), size, size)


def write_safetensors(path, named):
    """name -> raw bytes of F32 tensors with their shapes: {name: (shape, bytes)}."""
    header, blobs, off = {}, [], 0
    for k in sorted(named):
        shape, data = named[k]
        header[k] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def params_only(ckpt, out):
    """A weights file from a checkpoint: its parameters and BN buffers, without the
    optimizer's and the moving average's tensors and without incres's metadata, as a
    converted torchvision state_dict holds them."""
    with open(ckpt, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    write_safetensors(out, {k: (v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
                            for k, v in header.items()
                            if k != "__metadata__" and not k.startswith(("optimizer.", "ema."))})


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
        self.check_error(["bench", "resnet20", "--threads", "0"], "--threads")

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


class ImageFolder(unittest.TestCase):
    """--data imagefolder:DIR in train and eval, and `incres predict`, on a generated
    folder of 40x40 PNGs (three classes told apart by colour)."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.data = f"{self.dir}/folder"
        fake_image_folder(self.data)

    def tearDown(self):
        self.tmp.cleanup()

    def train(self, out, *extra, iters=3):
        return run("train", "resnet20", "--data", f"imagefolder:{self.data}", "--iters", iters, "--batch", "8",
                   "--no-progress", "--workers", "1", "--out", out, *extra)

    def check_error(self, p, *needles):
        self.assertNotEqual(p.returncode, 0, p.stdout)
        for bad in ("Traceback", "terminate called"):
            self.assertNotIn(bad, p.stderr)
        for needle in needles:
            self.assertIn(needle, p.stderr)

    def test_train_eval_predict(self):
        p = self.train(f"{self.dir}/run")
        self.assertIn("3 steps", p.stdout)
        ckpt = f"{self.dir}/run/last.safetensors"
        with open(f"{self.dir}/run/metrics.jsonl") as f:
            row = [json.loads(l) for l in f][-1]
        self.assertIn("test_top5_error", row)
        self.assertTrue(0 <= row["test_ece"] <= 100, row)
        self.assertGreater(row["train_seconds"], 0)
        self.assertTrue(0 <= row["pool_input_zeros"] <= 1, row)  # the ReLU output entering the global pool
        e = run("eval", ckpt)  # the recorded imagefolder data: DIR/val, 9 images
        self.assertIn("9 images", e.stdout)
        self.assertIn(f"{self.data}/val", e.stdout)
        self.assertIn("top-5 error 0.00%", e.stdout)  # 3 classes: every label is in the top 5
        self.assertIn("calibration error (ECE, 15 bins)", e.stdout)

        # predict with the checkpoint: class names from the recorded folder names.
        img = f"{self.data}/val/red/000.png"
        p = run("predict", img, f"{self.data}/val/blue/001.png", "--checkpoint", ckpt, "--top", "2")
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0], img)
        self.assertEqual(len(lines), 6, p.stdout)  # two images x (name + 2 classes)
        self.assertRegex(lines[1], r"^  1\. [01]\.\d{4}  (blue|green|red) \(class \d\)$")
        probs = [float(l.split()[1]) for l in lines[1:3]]
        self.assertGreaterEqual(probs[0], probs[1])

        # The same weights as a parameters-only file (a converted state_dict's form),
        # with a labels file; top-k is capped at the classes.
        weights = f"{self.dir}/r20.safetensors"
        params_only(ckpt, weights)
        with open(f"{self.dir}/labels.txt", "w") as f:
            f.write("sky\ngrass\nfire\n")
        p = run("predict", img, "--model", "resnet20", "--weights", weights, "--classes", "3",
                "--labels", f"{self.dir}/labels.txt")
        lines = p.stdout.splitlines()
        self.assertEqual(len(lines), 4, p.stdout)
        self.assertEqual(sorted(l.split()[2] for l in lines[1:]), ["fire", "grass", "sky"])
        # Same weights, same normalisation (ImageNet's for image folders): same answer.
        c = run("predict", img, "--checkpoint", ckpt, "--raw-weights", "--labels", f"{self.dir}/labels.txt")
        self.assertEqual(c.stdout, p.stdout)

        # eval --weights on the folder gives the checkpoint's numbers.
        w = run("eval", "--weights", weights, "--model", "resnet20", "--classes", "3",
                "--data", f"imagefolder:{self.data}")
        self.assertEqual(w.stdout.split(":", 1)[1], e.stdout.split(":", 1)[1])

        # Bad cases: another model's weights, a non-image, architecture flags on a checkpoint.
        self.check_error(run("predict", img, "--model", "resnet32", "--weights", weights, "--classes", "3",
                             expect_ok=False), "layer1.3.conv1.weight", "missing")
        self.check_error(run("predict", img, "--model", "resnet20", "--weights", weights, expect_ok=False),
                         "fc.weight")  # 10 classes by default, the file has 3
        notes = f"{self.dir}/notes.png"
        with open(notes, "w") as f:
            f.write("not an image\n")
        p = run("predict", notes, img, "--checkpoint", ckpt, expect_ok=False)
        self.check_error(p, "notes.png")
        self.assertIn(img, p.stdout)  # the good image still gets its answer
        self.check_error(run("predict", img, "--checkpoint", ckpt, "--image", "64", expect_ok=False),
                         "--image", "records its architecture")
        # Every architecture flag (models::arch_options) is refused where the checkpoint
        # records the architecture, --aux-bn too.
        for flag in (["--aux-bn"], ["--paper-layout"], ["--width", "0.5"], ["--unit", "full-preact"]):
            self.check_error(run("eval", ckpt, *flag, expect_ok=False), flag[0], "records its architecture")
            self.check_error(run("predict", img, "--checkpoint", ckpt, *flag, expect_ok=False), flag[0],
                             "records its architecture")
        self.check_error(run("predict", img, "--checkpoint", ckpt, "--labels", f"{self.dir}/labels.txt",
                             "--weights", weights, expect_ok=False), "--weights", "--checkpoint")
        self.check_error(run("eval", "--weights", weights, "--model", "resnet20", "--data",
                             f"imagefolder:{self.data}", expect_ok=False), "3 classes", "10")
        self.check_error(run("eval", expect_ok=False), "checkpoint", "--weights")
        self.check_error(run("eval", "--weights", weights, "--data", f"imagefolder:{self.data}", expect_ok=False),
                         "--model")
        self.check_error(run("eval", ckpt, "--skip-bad", "--data", "fashion-mnist", expect_ok=False),
                         "--skip-bad", "imagefolder")

    def test_predict_with_in_memory_dataset_checkpoints(self):
        # A CIFAR-10 run (fake files, 3 x 32 x 32): predict normalises with the run's own
        # statistics and crops whole images; a Fashion-MNIST run (1 channel) is refused.
        cifar = f"{self.dir}/cifar"
        os.makedirs(cifar)
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            with open(f"{cifar}/{name}", "wb") as f:
                f.write(b"".join(bytes([i % 10]) + bytes((i * 31 + j) % 256 for j in range(3072)) for i in range(8)))
        run("train", "resnet20", "--data", f"cifar10:{cifar}", "--iters", "1", "--batch", "8", "--no-progress",
            "--out", f"{self.dir}/c")
        img = f"{self.dir}/img.png"
        write_png(img, class_image(2, 0, 32), 32, 32)
        p = run("predict", img, "--checkpoint", f"{self.dir}/c/last.safetensors", "--top", "3")
        self.assertEqual(len(p.stdout.splitlines()), 4, p.stdout)
        fake_fashion_mnist(f"{self.dir}/fm")
        run("train", "resnet20", "--data", f"fashion-mnist:{self.dir}/fm", "--iters", "1", "--batch", "16",
            "--no-progress", "--out", f"{self.dir}/f")
        self.check_error(run("predict", img, "--checkpoint", f"{self.dir}/f/last.safetensors", expect_ok=False),
                         "1-channel", "3-channel")

    def test_resume_mid_epoch(self):
        # 24 images, batch 8: 3 steps per epoch; interrupted at step 4 of 5 (mid-epoch),
        # with the ResNet scale augmentation drawing crops and flips.
        self.train(f"{self.dir}/straight", "--seed", "4", iters=5)
        self.train(f"{self.dir}/split", "--seed", "4", "--stop-after", "4", "--eval-every", "1", iters=5)
        with open(f"{self.dir}/split/metrics.jsonl") as f:
            before = [json.loads(l) for l in f][-1]["train_seconds"]
        self.train(f"{self.dir}/split", "--seed", "4", "--resume", f"{self.dir}/split/last.safetensors",
                   "--eval-every", "1", iters=5)
        with open(f"{self.dir}/split/metrics.jsonl") as f:
            rows = [json.loads(l) for l in f]
        # The training time goes on from the checkpoint's over both sessions: the
        # second session's one step alone would be about a quarter of the first's four.
        self.assertGreater(rows[-1]["train_seconds"], before)
        a, b = tensors(f"{self.dir}/straight/last.safetensors"), tensors(f"{self.dir}/split/last.safetensors")
        self.assertEqual(sorted(a), sorted(b))
        for k in a:
            self.assertEqual(a[k], b[k], f"tensor {k} differs after resume")

    def test_bad_images_and_layout(self):
        bad = f"{self.data}/train/green/004.png"
        with open(bad, "r+b") as f:  # a PNG cut short inside its IDAT chunk
            f.truncate(60)
        p = run("train", "resnet20", "--data", f"imagefolder:{self.data}", "--iters", "3", "--batch", "8",
                "--no-progress", expect_ok=False)
        self.check_error(p, "004.png")
        p = self.train(f"{self.dir}/skip", "--skip-bad")
        self.assertIn("skipped 1 bad images", p.stdout)
        with open(f"{self.dir}/skip/metrics.jsonl") as f:
            row = [json.loads(l) for l in f][-1]
        self.assertEqual(row["bad_images"], 1)

        # val must have train's classes.
        os.rename(f"{self.data}/val/red", f"{self.data}/val/orange")
        p = run("train", "resnet20", "--data", f"imagefolder:{self.data}", "--iters", "1", "--batch", "8",
                "--skip-bad", "--no-progress", expect_ok=False)
        self.check_error(p, "val", "orange", "red", "class lists must be the same")
        self.check_error(run("train", "resnet20", "--data", f"imagefolder:{self.dir}/none", "--iters", "1",
                             expect_ok=False), "none/train")
        self.check_error(run("train", "resnet20", "--iters", "1", "--skip-bad", expect_ok=False),
                         "--skip-bad", "imagefolder:DIR")


TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools")


def have_torchvision():
    return subprocess.run(["/usr/bin/python3", "-c", "import torch, torchvision"], capture_output=True).returncode == 0


@unittest.skipUnless(have_torchvision(), "skipped: /usr/bin/python3 has no torch and torchvision")
class TorchWeights(unittest.TestCase):
    """A torchvision resnet18 state_dict, converted by tools/pth_to_safetensors.py, gives
    in `incres predict` the probabilities torchvision gives on the same input. The image
    is 256x256, so the evaluation transform (shorter side to 256, centre 224 crop at
    offset 16) copies pixels exactly and torch's input is reproduced without resampling."""

    def test_resnet18_predict_matches_torchvision(self):
        with tempfile.TemporaryDirectory() as d:
            size = 256
            pixels = [[((x * 7 + y * 3) % 256, (x * y // 64) % 256, (255 - x + (y * y) // 200) % 256)
                       for x in range(size)] for y in range(size)]
            write_png(f"{d}/img.png", pixels, size, size)
            with open(f"{d}/img.rgb", "wb") as f:  # the same pixels, raw HWC, for torch
                f.write(bytes(v for row in pixels for px in row for v in px))
            script = f"""
import json, torch, torchvision
torch.manual_seed(0)
m = torchvision.models.resnet18(num_classes=10)
with torch.no_grad():
    for mod in m.modules():  # BN statistics and affine parameters away from 0 and 1
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1); mod.running_var.uniform_(0.5, 1.5)
            mod.weight.uniform_(0.5, 1.5); mod.bias.normal_(0, 0.1)
m.eval()
torch.save(m.state_dict(), "{d}/r18.pth")
raw = open("{d}/img.rgb", "rb").read()
px = torch.tensor(list(raw), dtype=torch.float32).reshape({size}, {size}, 3)[16:240, 16:240] / 255
mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
x = ((px - mean) / std).permute(2, 0, 1).unsqueeze(0)
with torch.no_grad():
    p = torch.softmax(m(x), 1)[0]
print(json.dumps(p.tolist()))
"""
            ref = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, text=True)
            self.assertEqual(ref.returncode, 0, ref.stderr)
            probs = json.loads(ref.stdout.splitlines()[-1])
            conv = subprocess.run(["/usr/bin/python3", f"{TOOLS}/pth_to_safetensors.py", f"{d}/r18.pth",
                                   f"{d}/r18.safetensors"], capture_output=True, text=True)
            self.assertEqual(conv.returncode, 0, conv.stderr)
            p = run("predict", f"{d}/img.png", "--model", "resnet18", "--weights", f"{d}/r18.safetensors",
                    "--classes", "10")
            got = [(int(l.split("class ")[1]), float(l.split()[1])) for l in p.stdout.splitlines()[1:]]
            order = sorted(range(10), key=lambda c: -probs[c])
            self.assertGreater(probs[order[0]] - probs[order[1]], 1e-3, "the reference needs a clear top-1")
            self.assertEqual(got[0][0], order[0], f"incres {got}, torchvision {probs}")
            for c, prob in got:
                self.assertAlmostEqual(prob, probs[c], delta=2e-4, msg=f"class {c}: {got} vs {probs}")


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

    def test_memory_plan_and_profile(self):
        # `info --memory`: the plan, its lower bound and the sum without sharing, in MiB.
        p = run("info", "resnet20", "--memory", "--batch", "16")
        def mib(label):
            line = next(l for l in p.stdout.splitlines() if label in l)
            return float(line.split(label)[1].split()[0])
        planned, live, unplanned = mib("workspaces"), mib("(no plan needs less)"), mib("without sharing by lifetime")
        self.assertGreater(live, 0, p.stdout)
        self.assertLessEqual(live, planned, p.stdout)
        self.assertLess(planned, unplanned, p.stdout)
        # `bench --profile`: every conv of resnet20 in the per-layer table's totals, and
        # the steps' times adding up to no more than the measured iteration.
        b = run("bench", "resnet20", "--batch", "8", "--iters", "2", "--warmup", "1", "--profile")
        self.assertIn("by primitive kind:", b.stdout)
        kinds = {" ".join(l.split()[:2]): float(l.split()[2]) for l in b.stdout.split("by primitive kind:")[1].splitlines()
                 if l.strip()}
        self.assertIn("forward convolution", kinds, b.stdout)
        self.assertIn("backward convolution", kinds, b.stdout)
        self.assertIn("layer3.2.conv2", b.stdout)
        mean_ms = float(b.stdout.split("(mean ")[1].split(",")[0])
        self.assertLessEqual(sum(kinds.values()), mean_ms * 1.01 + 0.1, b.stdout)
        # Inference: resnet20's 64-channel 3x3 convs (8x8, 4 tiles an image) run as
        # Winograd at batch 4, unless --no-winograd.
        w = run("bench", "resnet20", "--mode", "infer", "--batch", "4", "--iters", "1", "--warmup", "0", "--profile")
        self.assertIn("forward winograd", w.stdout)
        self.assertIn("F(4x4,3x3)", w.stdout)
        d = run("bench", "resnet20", "--mode", "infer", "--batch", "4", "--iters", "1", "--warmup", "0", "--profile",
                "--no-winograd")
        self.assertNotIn("winograd", d.stdout)

    def test_threads_and_isa(self):
        # --threads sets the compute threads; bench reports them and oneDNN's ISA.
        for n in (1, 2):
            j = json.loads(run("bench", "resnet20", "--batch", "4", "--iters", "1", "--warmup", "0", "--json",
                               "--threads", str(n)).stdout.splitlines()[-1])
            self.assertEqual(j["threads"], n)
            self.assertRegex(j["isa"], r"^(avx2|avx512)")
        t = run("bench", "resnet20", "--batch", "4", "--iters", "1", "--warmup", "0", "--threads", "1")
        self.assertIn("1 threads", t.stdout)


class RunFolder(unittest.TestCase):
    """--out DIR: one writer, metrics that agree with the checkpoint, resume that checks
    what it resumes, memory checked before the start, divergence rollback."""
    COMMON = ["train", "resnet20", "--test-limit", "64", "--no-progress"]
    BASE = COMMON + ["--train-limit", "256", "--batch", "32", "--eval-every", "2"]

    @staticmethod
    def rows(path):
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]

    @staticmethod
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    def test_summary_csv_and_plot_in_any_folder(self):
        # A folder name with a quote, a space and shell syntax: the plot is drawn (the
        # script goes to gnuplot as a file, with no shell) and nothing is executed.
        with tempfile.TemporaryDirectory() as d:
            out = f"{d}/it's a \"run\" $(touch {d}/pwned); `touch {d}/pwned2`"
            run(*self.BASE, "--iters", "4", "--out", out)
            self.assertFalse(os.path.exists(f"{d}/pwned") or os.path.exists(f"{d}/pwned2"))
            self.assertGreater(os.path.getsize(f"{out}/curve.png"), 1000)
            with open(f"{out}/summary.csv") as f:
                lines = f.read().splitlines()
            self.assertEqual(lines[0], "epoch,train_loss,eval_loss,eval_top1,eval_top5,lr")
            metrics = [r for r in self.rows(f"{out}/metrics.jsonl") if "test_error" in r]
            self.assertEqual(len(lines) - 1, len(metrics))  # one row per evaluation (every 2 steps)
            for line, r in zip(lines[1:], metrics):
                epoch, train_loss, eval_loss, top1, top5, lr = map(float, line.split(","))
                self.assertAlmostEqual(epoch, r["epochs_done"], places=6)
                self.assertAlmostEqual(train_loss, r["train_loss"], places=5)
                self.assertAlmostEqual(eval_loss, r["test_loss"], places=5)
                self.assertAlmostEqual(top1, 100 - r["test_error"], places=5)
                self.assertAlmostEqual(top5, 100 - r["test_top5_error"], places=5)
                self.assertAlmostEqual(lr, r["lr"], places=8)

    def test_one_writer_per_folder(self):
        with tempfile.TemporaryDirectory() as d:
            a = subprocess.Popen([INCRES, *self.BASE, "--iters", "100000", "--out", d], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env={**os.environ, "INCRES_LOG": "quiet"})
            try:
                for _ in range(300):  # the lock names its holder once the run starts
                    if os.path.exists(f"{d}/run.lock") and self.read(f"{d}/run.lock").strip():
                        break
                    import time
                    time.sleep(0.1)
                b = run(*self.BASE, "--iters", "4", "--seed", "3", "--out", d, expect_ok=False)
                self.assertNotEqual(b.returncode, 0)
                self.assertIn(f"is in use by another run (PID {a.pid}, ", b.stderr)
                self.assertIn("resnet20", b.stderr)
            finally:
                a.kill()
                a.wait()
            # The killed run's lock is taken over, with a note.
            c = subprocess.run([INCRES, *self.BASE, "--iters", "2", "--out", d], capture_output=True, text=True,
                               env={**os.environ, "INCRES_LOG": "info"})
            self.assertEqual(c.returncode, 0, c.stderr)
            self.assertIn(f"taking over the lock of a run that did not end cleanly: {a.pid}", c.stderr)
            self.assertEqual(self.read(f"{d}/run.lock"), b"")  # a clean end leaves it empty

    def test_failed_run_keeps_the_earlier_run(self):
        with tempfile.TemporaryDirectory() as d:
            run(*self.BASE, "--iters", "4", "--out", d)
            metrics, ckpt = self.read(f"{d}/metrics.jsonl"), self.read(f"{d}/last.safetensors")
            self.assertEqual(len(self.rows(f"{d}/metrics.jsonl")), 2)
            bad = run(*self.BASE, "--iters", "4", "--lr", "1e30", "--out", d, expect_ok=False)
            self.assertNotEqual(bad.returncode, 0)
            self.assertEqual(self.read(f"{d}/metrics.jsonl"), metrics)
            self.assertEqual(self.read(f"{d}/last.safetensors"), ckpt)
            # A stale temp file of a process that is gone is removed at the next start.
            with open(f"{d}/last.safetensors.tmp-999999999", "wb") as f:
                f.write(b"x" * 100)
            run(*self.BASE, "--iters", "2", "--out", d)
            self.assertFalse(os.path.exists(f"{d}/last.safetensors.tmp-999999999"))

    def test_rows_past_the_checkpoint_are_dropped_on_resume(self):
        with tempfile.TemporaryDirectory() as d:
            run(*self.BASE, "--iters", "6", "--out", f"{d}/straight")
            run(*self.BASE, "--iters", "6", "--out", f"{d}/split", "--stop-after", "4")
            # A kill between a row and its checkpoint leaves a row past the checkpoint.
            rows = self.rows(f"{d}/split/metrics.jsonl")
            with open(f"{d}/split/metrics.jsonl", "a") as f:
                f.write(json.dumps({**rows[-1], "step": 6, "train_loss": 99.0}) + "\n")
            run(*self.BASE, "--iters", "6", "--out", f"{d}/split", "--resume", f"{d}/split/last.safetensors")
            a, b = self.rows(f"{d}/straight/metrics.jsonl"), self.rows(f"{d}/split/metrics.jsonl")
            self.assertEqual([r["step"] for r in b], [2, 4, 6])
            self.assertEqual([r["train_loss"] for r in a], [r["train_loss"] for r in b])

    def test_partial_span_is_marked(self):
        with tempfile.TemporaryDirectory() as d:
            run(*self.BASE, "--iters", "4", "--out", d, "--stop-after", "3")
            run(*self.BASE, "--iters", "4", "--out", d, "--resume", f"{d}/last.safetensors")
            last = self.rows(f"{d}/metrics.jsonl")[-1]
            self.assertEqual((last["step"], last["partial"], last["from_step"]), (4, True, 3))

    def test_resume_checks_what_it_resumes(self):
        with tempfile.TemporaryDirectory() as d:
            run(*self.BASE, "--iters", "4", "--out", d, "--stop-after", "2")
            ckpt = f"{d}/last.safetensors"
            bad = run(*self.COMMON, "--batch", "16", "--train-limit", "128", "--iters", "4", "--out", d,
                      "--resume", ckpt, expect_ok=False)
            self.assertNotEqual(bad.returncode, 0)
            self.assertIn("--train-limit 256 -> 128", bad.stderr)
            self.assertIn("--batch 32 -> 16", bad.stderr)
            self.assertIn("--force-resume", bad.stderr)
            forced = subprocess.run([INCRES, *self.BASE, "--iters", "4", "--lr", "0.05", "--out", d, "--resume", ckpt,
                                     "--force-resume"], capture_output=True, text=True,
                                    env={**os.environ, "INCRES_LOG": "info"})
            self.assertEqual(forced.returncode, 0, forced.stderr)
            self.assertIn("--force-resume: continuing", forced.stderr)
            self.assertIn("--lr 0.1 -> 0.05", forced.stderr)
            # A finished run says so, exits 0 and writes nothing.
            before = self.read(f"{d}/metrics.jsonl")
            done = run(*self.BASE, "--iters", "4", "--lr", "0.05", "--out", d, "--resume", ckpt)
            self.assertIn("the run is finished (step 4); nothing to do", done.stdout)
            self.assertEqual(self.read(f"{d}/metrics.jsonl"), before)

    def test_memory_is_checked_before_the_start(self):
        p = subprocess.run([INCRES, *self.COMMON, "--batch", "1024", "--train-limit", "1024", "--iters", "1"],
                           capture_output=True, text=True, env={**os.environ, "INCRES_LOG": "quiet",
                                                                 "INCRES_MEMORY_LIMIT": "300000000"})
        self.assertNotEqual(p.returncode, 0)
        self.assertRegex(p.stderr, r"the training program at batch 1024 needs [\d.]+ GB .* 300\.0 MB of memory are "
                                   r"available .* the largest batch that fits is about \d+ \(--batch \d+\)")
        big = run("train", "resnet20", "--image", "4096", "--batch", "1", "--train-limit", "1", "--test-limit", "1",
                  "--iters", "1", "--no-progress", expect_ok=False)
        self.assertIn("the training program at batch 1 needs", big.stderr)  # not std::bad_alloc

    def test_divergence_rollback(self):
        env = {**os.environ, "INCRES_LOG": "info", "INCRES_TEST_NAN_AT_STEP": "5"}
        with tempfile.TemporaryDirectory() as d:
            stop = subprocess.run([INCRES, *self.BASE, "--iters", "8", "--out", f"{d}/stop"], capture_output=True,
                                  text=True, env=env)
            self.assertNotEqual(stop.returncode, 0)
            self.assertIn("loss is nan at step 5", stop.stderr)
            self.assertIn("--on-nonfinite rollback", stop.stderr)
            rb = subprocess.run([INCRES, *self.BASE, "--iters", "8", "--out", f"{d}/rb", "--on-nonfinite", "rollback"],
                                capture_output=True, text=True, env=env)
            self.assertEqual(rb.returncode, 0, rb.stderr)
            self.assertIn("rolled back to", rb.stderr)
            self.assertIn("at step 4; the batch of step 5 will be skipped (rollback 1 of at most 3)", rb.stderr)
            rows = self.rows(f"{d}/rb/metrics.jsonl")
            events = [r for r in rows if r.get("event") == "rollback"]
            self.assertEqual([(e["nonfinite_at_step"], e["to_step"]) for e in events], [(5, 4)])
            steps = [r for r in rows if "step" in r]
            self.assertEqual([r["step"] for r in steps], [2, 4, 6, 8])
            self.assertEqual(steps[2]["skipped_steps"], 1)
            # No checkpoint yet to roll back to: the message says so.
            early = subprocess.run([INCRES, *self.COMMON, "--train-limit", "256", "--batch", "32", "--iters", "8",
                                    "--out", f"{d}/early",
                                    "--on-nonfinite", "rollback"], capture_output=True, text=True, env=env)
            self.assertNotEqual(early.returncode, 0)
            self.assertIn("no checkpoint was written yet", early.stderr)

    def test_bad_flags_and_folders(self):
        with tempfile.TemporaryDirectory() as d:
            with open(f"{d}/file", "w") as f:
                f.write("x")
            bad = run(*self.BASE, "--iters", "1", "--out", f"{d}/file", expect_ok=False)
            self.assertIn(f"--out {d}/file is not a folder", bad.stderr)
            self.assertNotIn("filesystem error", bad.stderr)
            w = run("train", "resnet20", "--width", "0.5", "--iters", "1", expect_ok=False)
            self.assertIn("--width applies to Inception models, not resnet20", w.stderr)
            n = run("train", "resnet20", "--seed", "-1", "--iters", "1", expect_ok=False)
            self.assertIn("--seed: Value -1 is not >= 0", n.stderr)
            for flags, message in ((["--aux-weight", "0.3"], "--aux-weight applies to Inception-v3"),
                                   (["--nesterov", "--optimizer", "rmsprop"], "--nesterov applies to --optimizer sgd"),
                                   (["--warmup-lr", "0.01"], "--warmup-lr applies with --warmup-iters N > 0"),
                                   (["--max-rollbacks", "2"], "--max-rollbacks applies with --on-nonfinite rollback"),
                                   (["--gamma", "0.5", "--schedule", "cosine"], "--gamma applies to --schedule multistep"),
                                   (["--no-aux"], "--no-aux applies to Inception-v3")):
                r = run("train", "resnet20", "--iters", "1", *flags, expect_ok=False)
                self.assertIn(message, r.stderr, flags)
            # Trailing bytes after an IDX file's gzip stream.
            fake_fashion_mnist(f"{d}/fm")
            with open(f"{d}/fm/t10k-labels-idx1-ubyte.gz", "ab") as f:
                f.write(b"JUNK")
            t = run("train", "resnet20", "--data", f"fashion-mnist:{d}/fm", "--iters", "1", "--batch", "32",
                    expect_ok=False)
            self.assertRegex(t.stderr, r"t10k-labels-idx1-ubyte.gz: 4 bytes of trailing data after the gzip stream, "
                                       r"from byte \d+")


class Precision(unittest.TestCase):
    """--precision bf16 end to end: a short bf16 run, its checkpoint (fp32, as always)
    evaluated in bf16 and fp32 alike; on a CPU without bf16, one line naming what is
    missing."""

    def test_bf16_train_eval_or_refusal(self):
        with tempfile.TemporaryDirectory() as d:
            data = f"{d}/fm"
            fake_fashion_mnist(data)
            common = ["--data", f"fashion-mnist:{data}", "--no-progress"]
            p = run("train", "resnet20", *common, "--iters", "3", "--batch", "16", "--precision", "bf16",
                    "--out", f"{d}/run", expect_ok=False)
            if p.returncode != 0:
                self.assertIn("bf16 needs a CPU with AVX512-BF16 or AMX", p.stderr)
                self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
                self.skipTest(f"no bf16 on this CPU: {p.stderr.strip()}")
            ckpt = f"{d}/run/last.safetensors"
            with open(f"{d}/run/metrics.jsonl") as f:
                self.assertEqual(json.loads(f.readlines()[-1])["step"], 3)
            names = tensors(ckpt)
            self.assertEqual(len(names["conv1.weight"]), 16 * 1 * 3 * 3 * 4)  # fp32 master weights
            e16 = run("eval", ckpt, "--precision", "bf16").stdout
            e32 = run("eval", ckpt).stdout
            loss = lambda out: float(out.split("loss ")[1].split(",")[0])
            self.assertAlmostEqual(loss(e16), loss(e32), delta=0.05 * loss(e32))
            # A resume in another precision is refused, naming it (the run is bf16).
            r = run("train", "resnet20", *common, "--iters", "4", "--batch", "16", "--resume", ckpt,
                    "--out", f"{d}/run", expect_ok=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("precision", r.stderr)


class Export(unittest.TestCase):
    """`incres export`: a trained checkpoint becomes an ONNX model with torchvision's
    names and the recorded normalisation in its metadata; bad input is one clear line
    and leaves no file behind. (tests/onnx runs the exports in ONNX Runtime.)"""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        data = f"{cls.dir}/fmnist"
        fake_fashion_mnist(data)
        run("train", "resnet20", "--data", f"fashion-mnist:{data}", "--iters", "2", "--batch", "16",
            "--no-progress", "--out", f"{cls.dir}/run")
        cls.ckpt = f"{cls.dir}/run/last.safetensors"

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check_error(self, args, *needles):
        p = run(*args, expect_ok=False)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        err = p.stderr.strip()
        lines = [l for l in err.splitlines() if l != "Run with --help for more information."]
        self.assertEqual(len(lines), 1, err)
        for bad in ("Traceback", "terminate called"):
            self.assertNotIn(bad, err)
        for needle in needles:
            self.assertIn(needle, err)

    def test_checkpoint_export(self):
        out = f"{self.dir}/resnet20.onnx"
        p = run("export", self.ckpt, "--onnx", out)
        self.assertIn('input "input" [batch_size, 1, 32, 32], output "output"', p.stdout)
        try:
            import onnx
        except ImportError:
            self.skipTest("python3-onnx is not installed")
        m = onnx.load(out)
        onnx.checker.check_model(m, full_check=True)
        self.assertEqual([i.name for i in m.graph.input], ["input"])
        self.assertEqual([o.name for o in m.graph.output], ["output"])
        dims = m.graph.input[0].type.tensor_type.shape.dim
        self.assertEqual(dims[0].dim_param, "batch_size")
        self.assertEqual([d.dim_value for d in dims[1:]], [1, 32, 32])  # Fashion-MNIST padded to 32
        self.assertEqual(m.opset_import[0].version, 13)
        meta = {e.key: e.value for e in m.metadata_props}
        self.assertEqual(meta["incres.model"], "resnet20")
        self.assertEqual(meta["incres.classes"], "10")
        self.assertEqual(len(meta["incres.mean"].split(",")), 1)  # the recorded, one-channel normalisation
        self.assertNotEqual(meta["incres.mean"], meta["incres.std"])
        self.assertEqual(len(json.loads(meta["incres.class_names"])), 10)
        ops = {n.op_type for n in m.graph.node}
        self.assertIn("BatchNormalization", ops)
        run("export", self.ckpt, "--onnx", out, "--fold-bn", "--batch", "4", "--opset", "17")
        m = onnx.load(out)
        self.assertNotIn("BatchNormalization", {n.op_type for n in m.graph.node})
        self.assertEqual(m.graph.input[0].type.tensor_type.shape.dim[0].dim_value, 4)
        self.assertEqual(m.opset_import[0].version, 17)

    def test_unwritable_out(self):
        # OUT is a folder: the temporary file is written, the rename fails; nothing is left.
        folder = f"{self.dir}/taken"
        os.makedirs(folder, exist_ok=True)
        before = sorted(os.listdir(self.dir))
        self.check_error(["export", self.ckpt, "--onnx", folder], folder)
        self.assertEqual(sorted(os.listdir(self.dir)), before)
        self.assertEqual(os.listdir(folder), [])
        self.check_error(["export", self.ckpt, "--onnx", f"{self.dir}/no/such/dir/m.onnx"], "no/such/dir")
        self.assertFalse(os.path.exists(f"{self.dir}/no"))

    def test_bad_arguments(self):
        out = f"{self.dir}/bad.onnx"
        self.check_error(["export", "--onnx", out], "give a checkpoint")
        self.check_error(["export", self.ckpt, "--weights", self.ckpt, "--model", "resnet20", "--onnx", out],
                         "give a checkpoint")
        self.check_error(["export", "--weights", self.ckpt, "--onnx", out], "--model")
        self.check_error(["export", self.ckpt, "--model", "resnet56", "--onnx", out], "resnet20", "resnet56")
        self.check_error(["export", self.ckpt, "--shortcut", "B", "--onnx", out], "--shortcut")
        self.check_error(["export", f"{self.dir}/missing.safetensors", "--onnx", out], "missing.safetensors")
        self.check_error(["export", "--weights", self.ckpt, "--model", "nosuchnet", "--onnx", out], "nosuchnet")
        self.check_error(["export", self.ckpt, "--onnx", out, "--opset", "12"], "--opset")
        self.check_error(["export", "--weights", self.ckpt, "--model", "resnet56", "--onnx", out],
                         "does not match the model")
        self.assertFalse(os.path.exists(out))


class Experiment(unittest.TestCase):
    """`incres experiment`'s machinery at a tiny scale: it runs, resumes after an
    interruption, skips what is finished, refuses another configuration in the same
    folder, and writes its table and plot."""
    TINY = ["--iters", "4", "--eval-every", "2", "--train-limit", "256", "--test-limit", "64", "--no-progress"]

    @classmethod
    def setUpClass(cls):
        # A small Fashion-MNIST-shaped folder: each run then loads 320 images, not 70,000.
        cls.tmp = tempfile.TemporaryDirectory()
        fake_fashion_mnist(f"{cls.tmp.name}/fm", n_train=256, n_test=64)
        cls.TINY = cls.TINY + ["--data", f"fashion-mnist:{cls.tmp.name}/fm"]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_interrupt_resume_report(self):
        with tempfile.TemporaryDirectory() as d:
            out = f"{d}/split"
            first = run("experiment", "degradation", *self.TINY, "--out", out, "--stop-after", "2")
            self.assertIn("Verdict: incomplete, 0 of 6 runs", first.stdout)
            def rows(path):
                with open(path) as f:
                    return [json.loads(l) for l in f]
            self.assertEqual([r["step"] for r in rows(f"{out}/degradation/plain56-s0/metrics.jsonl")], [2])
            # The second invocation resumes every run (logged) and writes the report.
            p = subprocess.run([INCRES, "experiment", "degradation", *self.TINY, "--out", out],
                               capture_output=True, text=True, env={**os.environ, "INCRES_LOG": "info"})
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stderr.count("(resuming)"), 6, p.stderr)
            with open(f"{out}/degradation/report.md") as f:
                report = f.read()
            self.assertEqual(report, p.stdout)
            self.assertRegex(report, r"Verdict: (reproduced|partly reproduced|not reproduced): plain-56")
            self.assertRegex(report, r"\| plain-56 \| 852,730 \| 125\.2 M \| \d+\.\d\d \| \d+\.\d\d \|")
            self.assertRegex(report, r"incres train resnet56 --data \S+ --iters 4 ")
            with open(f"{out}/degradation/plot.png", "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
            with open(f"{out}/degradation/results.tsv") as f:
                self.assertEqual(len(f.read().splitlines()), 7)
            # Resumed runs end where straight ones do.
            run("experiment", "degradation", *self.TINY, "--out", f"{d}/straight")
            for name in ("plain56", "resnet20"):
                a = rows(f"{d}/straight/degradation/{name}-s0/metrics.jsonl")
                b = rows(f"{out}/degradation/{name}-s0/metrics.jsonl")
                self.assertEqual([r["train_loss"] for r in a], [r["train_loss"] for r in b], name)
                self.assertEqual([r["test_error"] for r in a], [r["test_error"] for r in b], name)
            # A third invocation trains nothing.
            ckpt = f"{out}/degradation/plain20-s0/last.safetensors"
            before = os.stat(ckpt).st_mtime_ns
            again = run("experiment", "degradation", *self.TINY, "--out", out)
            self.assertEqual(os.stat(ckpt).st_mtime_ns, before)
            self.assertEqual(again.stdout, report)
            # Another configuration in the same folder is refused, naming what differs.
            bad = run("experiment", "degradation", "--iters", "6", *self.TINY[2:], "--out", out, expect_ok=False)
            self.assertNotIn("(resuming)", bad.stderr)
            self.assertNotEqual(bad.returncode, 0)
            self.assertIn('holds a run of another configuration (iters 4 -> 6', bad.stderr)

    def test_every_experiment_runs(self):
        names = [l.split()[0] for l in run("experiment", "list").stdout.splitlines()]
        self.assertEqual(names, ["degradation", "shortcuts", "identity-shortcut", "unit-order", "depth",
                                 "inception-residual", "residual-scaling", "factorization", "aux-classifier",
                                 "label-smoothing", "low-resolution"])
        with tempfile.TemporaryDirectory() as d:
            for name in names:
                r = run("experiment", name, "--iters", "2", "--eval-every", "1", "--train-limit", "128",
                        "--test-limit", "32", "--seeds", "1", "--no-progress", "--out", d, *self.TINY[-2:])
                self.assertRegex(r.stdout, r"\nVerdict: (reproduced|partly reproduced|not reproduced|ordering)", name)
                self.assertNotIn("not run", r.stdout, name)
                self.assertTrue(os.path.getsize(f"{d}/{name}/plot.png") > 1000, name)
            with open(f"{d}/label-smoothing/report.md") as f:
                self.assertRegex(f.read(), r"\| smoothing 0\.1 \| [\d,]+ \| [\d.]+ M \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \|")
        bad = run("experiment", "nonsense", expect_ok=False)
        self.assertIn("no experiment named 'nonsense'; there are: degradation, shortcuts", bad.stderr)


if __name__ == "__main__":
    INCRES = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
