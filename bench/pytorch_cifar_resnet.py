#!/usr/bin/env python3
"""The CIFAR ResNets of incres, in PyTorch, timed the way `incres bench` times them:
synthetic data, median of timed training steps (forward, cross-entropy, backward,
SGD step), a fixed number of threads. Prints one JSON line.

Run with Debian's Python (/usr/bin/python3, package python3-torch)."""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride, residual, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.residual, self.shortcut = residual, shortcut
        self.stride, self.pad = stride, c_out - c_in
        if residual and shortcut == "B" and (stride != 1 or c_in != c_out):
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        else:
            self.downsample = None

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            if self.downsample is not None:
                s = self.downsample(x)
            elif self.stride != 1 or self.pad:
                s = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.pad))
            else:
                s = x
            y = y + s
        return F.relu(y)


class CifarResNet(nn.Module):
    def __init__(self, n, residual=True, shortcut="A", in_channels=3, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, c = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(Block(c, width, stride if i == 0 else 1, residual, shortcut))
                c = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(name, **kw):
    depth = int(name.lstrip("resnetplain"))
    return CifarResNet((depth - 2) // 6, residual=name.startswith("resnet"), **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", help="resnet20 / resnet56 / plain20 / ...")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--image", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build(a.model, in_channels=a.in_channels)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, a.in_channels, a.image, a.image)
    y = torch.randint(0, 10, (a.batch,))
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"model": a.model, "mode": "train", "batch": a.batch, "peer": f"pytorch {torch.__version__}",
                      "threads": torch.get_num_threads(), "images_per_sec": a.batch / med, "median_ms": med * 1e3}))


if __name__ == "__main__":
    main()
