#!/usr/bin/python3
"""Convert a PyTorch checkpoint (.pth / .pt) to a .safetensors file incres can load.

incres names its parameters as torchvision does (ResNets, Inception-v3) and as timm
does (Inception-v4, Inception-ResNet-v2), so the conversion is a change of container,
not of names: every floating-point tensor of the state_dict is written as F32 under
its own name. Integer tensors (BatchNorm's num_batches_tracked) are written as I64;
incres ignores them when loading.

Accepted inputs: a state_dict; a dict holding one under "state_dict", "model" or
"model_state"; or a whole pickled nn.Module. A "module." prefix (DataParallel) is
removed.

usage: /usr/bin/python3 tools/pth_to_safetensors.py IN.pth OUT.safetensors [--prefix P]
   e.g. python3 -c 'import torch, torchvision; \\
            torch.save(torchvision.models.resnet50().state_dict(), "r50.pth")'
        /usr/bin/python3 tools/pth_to_safetensors.py r50.pth r50.safetensors
        build/incres eval --weights r50.safetensors --model resnet50 ...
Needs Debian's python3-torch (the safetensors file is written by hand, no other
package is needed).
"""
import argparse
import json
import os
import struct
import sys


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: torch.Tensor} to path (atomically: temp file, fsync, rename)."""
    import torch
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.is_floating_point():
            t, dtype = t.to(torch.float32), "F32"
        elif t.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            t, dtype = t.to(torch.int64), "I64"
        else:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # 8-byte aligned data section, as the reference writer
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def state_dict_of(obj):
    import torch
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if key in obj and isinstance(obj[key], (dict, torch.nn.Module)):
                return state_dict_of(obj[key])
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError("no state_dict found (expected a dict of tensors, a dict with 'state_dict' "
                     "or 'model', or an nn.Module)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--prefix", default="", help="keep only keys with this prefix, and strip it")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("pth_to_safetensors: needs torch (Debian: apt install python3-torch)")
    try:
        obj = torch.load(args.input, map_location="cpu")
        sd = state_dict_of(obj)
    except Exception as e:  # a clear line, not a traceback
        sys.exit(f"pth_to_safetensors: {args.input}: {e}")
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if args.prefix:
            if not k.startswith(args.prefix):
                continue
            k = k[len(args.prefix):]
        out[k] = v
    if not out:
        sys.exit(f"pth_to_safetensors: {args.input}: no tensors to write")
    write_safetensors(args.output, out, {"format": "pt", "source": os.path.basename(args.input)})
    print(f"wrote {len(out)} tensors to {args.output}")


if __name__ == "__main__":
    main()
