#!/usr/bin/env python3
"""Data-parallel training end to end: `mpirun -np 2 incres train` against one process,
run after run, with other flags on one rank, across a stop, and with a rank killed or
hung. One thread per rank, over TCP loopback (--mca btl tcp,self).

Usage: dist_test.py PATH/TO/incres PATH/TO/mpirun [group ...]
"""
import array
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

INCRES = MPIRUN = None
ENV = {**os.environ, "INCRES_LOG": "quiet", "OMP_NUM_THREADS": "1",
       "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
# resnet20 on 3200 Fashion-MNIST images, batch 32 (16 per rank), evaluation on 40: the
# last test batch leaves rank 1 an empty share.
SMALL = ["resnet20", "--batch", "32", "--train-limit", "3200", "--test-limit", "40", "--threads", "1",
         "--no-progress", "--workers", "1"]


def mpirun(np, args, timeout=300, **popen):
    cmd = [MPIRUN, "-np", str(np), "--mca", "btl", "tcp,self", "--oversubscribe",
           "-x", "INCRES_LOG", "-x", "OMP_NUM_THREADS", INCRES, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, **popen)


def single(args, timeout=300):
    return subprocess.run([INCRES, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def rows(folder):
    with open(f"{folder}/metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "step" in r]


def tensors(path):
    """name -> raw bytes of every tensor of a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    return {k: blob[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            for k, v in header.items() if k != "__metadata__"}


def max_rel(a, b):
    return max(abs(x - y) / abs(x) for x, y in zip(a, b))


class Equivalence(unittest.TestCase):
    """2 ranks with --sync-bn against 1 process on the same global batch."""

    def test_losses_per_step(self):
        # A float32 ReLU net trains chaotically: a pre-activation within rounding of
        # zero flips its ReLU between two correct runs (tests/parity/torch_parity.py),
        # and the flips compound. So the 2-rank run is held to the differences between
        # two correct single-process runs, 1 thread and 2 threads, at a learning rate
        # small enough that those stay small; and the first steps, before flips
        # compound, to 1e-5.
        with tempfile.TemporaryDirectory() as d:
            recipe = ["train", *SMALL, "--iters", "100", "--eval-every", "1", "--lr", "1e-4", "--schedule", "constant",
                      "--sync-bn"]
            ok(single([*recipe, "--out", f"{d}/one"]))
            two_threads = [a if a != "1" or recipe[i - 1] != "--threads" else "2" for i, a in enumerate(recipe)]
            ok(single([*two_threads, "--out", f"{d}/threads"]))
            ok(mpirun(2, [*recipe, "--out", f"{d}/two"]))
            one = [r["train_loss"] for r in rows(f"{d}/one")]
            threads = [r["train_loss"] for r in rows(f"{d}/threads")]
            two = [r["train_loss"] for r in rows(f"{d}/two")]
            self.assertEqual(len(two), 100)
            envelope = max_rel(one, threads)
            print(f"\n  per-step loss, 2 ranks vs 1 process: first 3 steps {max_rel(one[:3], two[:3]):.1e}, "
                  f"100 steps {max_rel(one, two):.1e}; 1 thread vs 2 threads: {envelope:.1e}", file=sys.stderr)
            self.assertLess(max_rel(one[:3], two[:3]), 1e-5)
            self.assertLess(max_rel(one, two), max(4 * envelope, 1e-3))

    def test_every_step_from_the_same_state(self):
        # Compounding aside: from the 2-rank run's own checkpoints at steps 0, 25, 50 and
        # 75, one process continues for 3 steps (resuming across N is allowed with
        # --sync-bn), and every one of those steps' losses is within 1e-5 of the 2-rank
        # run's.
        with tempfile.TemporaryDirectory() as d:
            recipe = ["train", *SMALL, "--iters", "100", "--eval-every", "1", "--lr", "1e-4", "--schedule", "constant",
                      "--sync-bn", "--out", f"{d}/two"]
            for k in (25, 50, 75, 100):
                resume = ["--resume", f"{d}/two/last.safetensors"] if k > 25 else []
                ok(mpirun(2, [*recipe, "--stop-after", k, *resume]))
                if k < 100:
                    os.replace(f"{d}/two/last.safetensors", f"{d}/two-{k}.safetensors")
                    os.link(f"{d}/two-{k}.safetensors", f"{d}/two/last.safetensors")
            two = {r["step"]: r["train_loss"] for r in rows(f"{d}/two")}
            self.assertEqual(sorted(two), list(range(1, 101)))
            worst = 0
            for k in (0, 25, 50, 75):
                one = f"{d}/one-{k}"
                args = [a if a != f"{d}/two" else one for a in recipe] + ["--stop-after", k + 3]
                ok(single(args + (["--resume", f"{d}/two-{k}.safetensors"] if k else [])))
                for r in rows(one):
                    if r["step"] > k:
                        worst = max(worst, abs(r["train_loss"] - two[r["step"]]) / two[r["step"]])
            print(f"\n  1 process continuing the 2-rank run at steps 0/25/50/75, 3 steps each: {worst:.1e}",
                  file=sys.stderr)
            self.assertLess(worst, 1e-5)

    def test_per_rank_statistics_without_sync_bn(self):
        # Without --sync-bn each rank normalises its own 16 images (as PyTorch DDP
        # does), so the very first loss is not the 1-process one, yet the run learns.
        with tempfile.TemporaryDirectory() as d:
            recipe = ["train", *SMALL, "--iters", "60", "--eval-every", "1"]
            ok(single([*recipe, "--out", f"{d}/one"]))
            ok(mpirun(2, [*recipe, "--out", f"{d}/two"]))
            one, two = rows(f"{d}/one"), rows(f"{d}/two")
            self.assertGreater(abs(one[0]["train_loss"] - two[0]["train_loss"]) / one[0]["train_loss"], 1e-4)
            self.assertLess(two[-1]["train_loss"], 0.8 * two[0]["train_loss"])

    def test_sharded_evaluation_sums_exactly(self):
        # One step at a learning rate of 1e-30: both runs evaluate the same weights and
        # statistics; 40 test images in batches of 32 leave rank 1 nothing of the last.
        with tempfile.TemporaryDirectory() as d:
            recipe = ["train", *SMALL, "--iters", "1", "--lr", "1e-30", "--sync-bn"]
            ok(single([*recipe, "--out", f"{d}/one"]))
            ok(mpirun(2, [*recipe, "--out", f"{d}/two"]))
            one, two = rows(f"{d}/one")[-1], rows(f"{d}/two")[-1]
            self.assertEqual(one["test_error"], two["test_error"])
            self.assertEqual(one["test_top5_error"], two["test_top5_error"])
            self.assertAlmostEqual(one["test_loss"], two["test_loss"], delta=1e-5 * one["test_loss"])
            self.assertAlmostEqual(one["test_ece"], two["test_ece"], delta=1e-3)


class Deterministic(unittest.TestCase):
    def test_same_world_same_bits(self):
        with tempfile.TemporaryDirectory() as d:
            for run in ("a", "b"):
                ok(mpirun(2, ["train", *SMALL, "--iters", "30", "--out", f"{d}/{run}"]))
            a, b = tensors(f"{d}/a/last.safetensors"), tensors(f"{d}/b/last.safetensors")
            self.assertEqual(a.keys(), b.keys())
            differ = [k for k in a if a[k] != b[k]]
            self.assertEqual(differ, [], "tensors that differ between two runs")


class Mismatch(unittest.TestCase):
    def mpmd(self, args0, args1):
        cmd = [MPIRUN, "--mca", "btl", "tcp,self", "--oversubscribe", "-x", "INCRES_LOG", "-x", "OMP_NUM_THREADS",
               "-np", "1", INCRES, *args0, ":", "-np", "1", INCRES, *args1]
        return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)

    def test_other_model_names_the_first_tensor(self):
        with tempfile.TemporaryDirectory() as d:
            base = ["train", *SMALL, "--iters", "5", "--out", d]
            other = [a if a != "resnet20" else "resnet20" for a in base] + ["--shortcut", "B"]
            p = self.mpmd(base, other)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("rank 1 built another model than rank 0", p.stderr)
            self.assertIn("'layer2.0.", p.stderr)  # the first block whose shortcut differs
            self.assertFalse(os.path.exists(f"{d}/last.safetensors"))

    def test_other_settings_name_the_flag(self):
        with tempfile.TemporaryDirectory() as d:
            base = ["train", *SMALL, "--iters", "5", "--out", d]
            p = self.mpmd(base, base + ["--lr", "0.2"])
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("rank 1 was started with other settings than rank 0", p.stderr)
            self.assertIn("--lr 0.1 -> 0.2", p.stderr)

    def test_batch_must_split(self):
        p = mpirun(2, ["train", *[a if a != "32" else "33" for a in SMALL], "--iters", "5"], timeout=120)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("must split evenly over the 2 processes", p.stderr)


class Resume(unittest.TestCase):
    def test_stop_and_resume_is_the_straight_run(self):
        with tempfile.TemporaryDirectory() as d:
            recipe = [*SMALL, "--iters", "30", "--eval-every", "10"]
            ok(mpirun(2, ["train", *recipe, "--out", f"{d}/straight"]))
            ok(mpirun(2, ["train", *recipe, "--out", f"{d}/split", "--stop-after", "10"]))
            ok(mpirun(2, ["train", *recipe, "--out", f"{d}/split", "--resume", f"{d}/split/last.safetensors"]))
            a, b = tensors(f"{d}/straight/last.safetensors"), tensors(f"{d}/split/last.safetensors")
            self.assertEqual([k for k in a if a[k] != b[k]], [])

    def test_other_process_count(self):
        with tempfile.TemporaryDirectory() as d:
            recipe = [*SMALL, "--iters", "20"]
            ok(mpirun(2, ["train", *recipe, "--out", f"{d}/run", "--stop-after", "10"]))
            p = single(["train", *recipe, "--out", f"{d}/run", "--resume", f"{d}/run/last.safetensors"])
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("the number of processes (mpirun -np", p.stderr)
            # With global statistics the count does not change the run: accepted.
            ok(mpirun(2, ["train", *recipe, "--sync-bn", "--out", f"{d}/sync", "--stop-after", "10"]))
            ok(single(["train", *recipe, "--sync-bn", "--out", f"{d}/sync", "--resume", f"{d}/sync/last.safetensors"]))
            self.assertEqual(rows(f"{d}/sync")[-1]["step"], 20)


def rank_pid(folder, rank):
    """The PID of the incres process of `rank` training into `folder`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"incres") and folder.encode() in cmd and \
                f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return int(pid)
    return None


class Faults(unittest.TestCase):
    def start(self, folder, extra=()):
        cmd = [MPIRUN, "-np", "2", "--mca", "btl", "tcp,self", "--oversubscribe", "-x", "INCRES_LOG",
               "-x", "OMP_NUM_THREADS", INCRES, "train", *SMALL, "--iters", "100", "--eval-every", "20",
               "--comm-timeout", "10", "--out", folder, *extra]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        deadline = time.time() + 120
        while not os.path.exists(f"{folder}/last.safetensors"):  # mid-epoch, past a checkpoint
            self.assertIsNone(p.poll(), "the run ended before its first checkpoint")
            self.assertLess(time.time(), deadline)
            time.sleep(0.05)
        pid = rank_pid(folder, 1)
        self.assertIsNotNone(pid)
        return p, pid

    def finish(self, p, what):
        t0 = time.time()
        try:
            out, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            self.fail(f"{what}: mpirun still running after 90 s")
        took = time.time() - t0
        print(f"\n  {what}: the job ended {took:.1f} s later, exit {p.returncode}; stderr:\n    "
              + "\n    ".join(err.strip().splitlines()[:3]), file=sys.stderr)
        self.assertLess(took, 60)
        self.assertNotEqual(p.returncode, 0)
        return err

    def resume(self, folder):
        ok(mpirun(2, ["train", *SMALL, "--iters", "100", "--eval-every", "20", "--out", folder,
                      "--resume", f"{folder}/last.safetensors"]))
        self.assertEqual(rows(folder)[-1]["step"], 100)

    def test_killed_rank(self):
        with tempfile.TemporaryDirectory() as d:
            p, pid = self.start(d)
            os.kill(pid, signal.SIGKILL)
            self.finish(p, "rank 1 killed")
            self.resume(d)

    def test_hung_rank(self):
        # A stopped process breaks no connection: rank 0's watchdog must notice.
        with tempfile.TemporaryDirectory() as d:
            p, pid = self.start(d)
            os.kill(pid, signal.SIGSTOP)
            try:
                err = self.finish(p, "rank 1 stopped")
            finally:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.assertIn("incres: error: rank 0 of 2:", err)
            self.assertIn("for the other ranks (--comm-timeout 10): a rank died or hangs", err)
            self.assertIn("at step ", err)
            self.resume(d)


if __name__ == "__main__":
    INCRES, MPIRUN = sys.argv[1], sys.argv[2]
    names = sys.argv[3:]
    suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromName(n, sys.modules[__name__]) for n in names) \
        if names else unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    sys.exit(0 if unittest.TextTestRunner(verbosity=2).run(suite).wasSuccessful() else 1)
