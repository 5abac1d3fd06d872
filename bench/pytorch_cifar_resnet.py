"""The CIFAR ResNets of incres (resnet20/32/44/56/110, plain nets, shortcut A or B),
in PyTorch: the models bench/pytorch_train.py times. Import with Debian's Python
(/usr/bin/python3, package python3-torch)."""
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
