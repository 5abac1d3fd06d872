#!/usr/bin/python3
"""The installed library, used as a program outside the tree uses it:

  1. `cmake --install BUILD --prefix P` installs bin/incres, lib/libincres.so, the two
     public headers and lib/cmake/incres/incresConfig.cmake; the public header
     includes nothing but the standard library and <incres/error.h>;
  2. examples/embed configures with find_package(incres) against P alone, builds and
     runs: on a checkpoint trained by `incres train` on a generated image folder, its
     classes and probabilities equal `incres predict`'s;
  3. find_package(incres REQUIRED COMPONENTS <one it lacks>) fails in CMake, naming
     the component and those there are.

usage: embed_test.py INCRES BUILD_DIR SOURCE_DIR
"""
import os
import re
import subprocess
import sys
import tempfile

INCRES, BUILD, SOURCE = map(os.path.abspath, sys.argv[1:4])
sys.path.insert(0, os.path.join(SOURCE, "tests", "cli"))
from cli_test import fake_image_folder  # noqa: E402


def run(*args, ok=True, **kw):
    p = subprocess.run(list(map(str, args)), capture_output=True, text=True, **kw)
    if ok and p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(map(str, args))}\n{p.stdout}\n{p.stderr}")
    return p


def predictions(text):
    """(class name, probability) per image from classify's or incres predict's output."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s+(?:\d+\. )?([01]\.\d{4})\s+(\S+) \(class \d+\)$", line)
        if m:
            out.append((m.group(2), m.group(1)))
    return out


def main():
    failures = []
    with tempfile.TemporaryDirectory(prefix="incres-embed-") as tmp:
        prefix = f"{tmp}/prefix"
        run("cmake", "--install", BUILD, "--prefix", prefix)
        for f in ("bin/incres", "lib/libincres.so", "include/incres/incres.h", "include/incres/error.h",
                  "lib/cmake/incres/incresConfig.cmake", "lib/cmake/incres/incresConfigVersion.cmake"):
            if not os.path.exists(f"{prefix}/{f}"):
                failures.append(f"not installed: {f}")
        with open(f"{prefix}/include/incres/incres.h") as f:
            includes = re.findall(r'^#include [<"]([^>"]+)[>"]', f.read(), re.M)
        internal = [i for i in includes if "/" in i and i != "incres/error.h"]
        if internal:
            failures.append(f"the public header includes {internal}")

        build = f"{tmp}/embed-build"
        run("cmake", "-S", f"{SOURCE}/examples/embed", "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}")
        run("cmake", "--build", build)

        data = f"{tmp}/images"
        fake_image_folder(data)
        run(INCRES, "train", "resnet20", "--data", f"imagefolder:{data}", "--iters", "3", "--batch", "8",
            "--no-progress", "--out", f"{tmp}/run", env={**os.environ, "INCRES_LOG": "quiet"})
        ckpt = f"{tmp}/run/last.safetensors"
        images = [f"{data}/val/red/000.png", f"{data}/val/blue/001.png"]
        ours = run(f"{build}/classify", ckpt, *images).stdout
        cli = run(INCRES, "predict", *images, "--checkpoint", ckpt, "--top", "3").stdout
        print(ours)
        if not re.match(r"resnet20: \d+ parameters, \d+ MACs, input 3x32x32\n", ours):
            failures.append(f"classify printed no model line: {ours[:200]}")
        if len(predictions(ours)) != 6 or predictions(ours) != predictions(cli):
            failures.append(f"classify and incres predict differ:\n{ours}\n{cli}")
        bad = run(f"{build}/classify", ckpt, f"{tmp}/none.png", ok=False)
        if bad.returncode != 1 or "none.png" not in bad.stderr:
            failures.append(f"a missing image: exit {bad.returncode}, {bad.stderr.strip()}")

        os.makedirs(f"{tmp}/missing")
        with open(f"{tmp}/missing/CMakeLists.txt", "w") as f:
            f.write("cmake_minimum_required(VERSION 3.25)\nproject(m LANGUAGES CXX)\n"
                    "find_package(incres REQUIRED COMPONENTS inference cuda)\n")
        p = run("cmake", "-S", f"{tmp}/missing", "-B", f"{tmp}/missing/b", f"-DCMAKE_PREFIX_PATH={prefix}", ok=False)
        if p.returncode == 0 or "has no component 'cuda'; it provides: inference;training" not in p.stderr:
            failures.append(f"a missing component: exit {p.returncode}, {p.stderr.strip()[-600:]}")

    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
