"""How exactly and how fast the ONNX importer reads torchvision networks (issue 15).

    python benchmarks/onnx_import.py            # -> benchmarks/results/onnx_import.json

Each of resnet18, vgg11_bn (CIFAR head), mobilenet_v2 and shufflenet_v2_x0_5 (10 classes,
32x32 input, random weights with non-trivial BatchNorm statistics) is exported four ways -- eval
mode and `training=PRESERVE`, by the TorchScript-based and by the dynamo-based exporter -- and
imported. Recorded per export: the import time, the largest difference from ONNX Runtime's
outputs (relative to max(1, |output|)) and from the PyTorch network's, the layer count and the
channel groups the search may shrink.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from embedding.space import CompressionSpace  # noqa: E402
from tests.workers.test_onnx_import import export, torchvision_net  # noqa: E402
from workers.onnx_import import check_against_onnxruntime, import_onnx  # noqa: E402

NETS = ("resnet18", "vgg11_bn", "mobilenet_v2", "shufflenet_v2_x0_5")


def _export(model: torch.nn.Module, exporter: str, mode: str) -> bytes:
    if exporter == "torchscript":
        return export(model, mode)
    kw = {"training": torch.onnx.TrainingMode.PRESERVE} if mode == "preserve" else {}
    x = torch.randn(2, 3, 32, 32)
    return torch.onnx.export(model, (x,), dynamo=True, **kw).model_proto.SerializeToString()


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    load0 = os.getloadavg()
    for name in NETS:
        model = torchvision_net(name)
        for exporter in ("torchscript", "dynamo"):
            for mode in ("eval", "preserve"):
                data = _export(model, exporter, mode)
                t0 = time.perf_counter()
                teacher = import_onnx(data)
                seconds = time.perf_counter() - t0
                ort_diff = check_against_onnxruntime(data, teacher)
                x = torch.rand(4, 3, 32, 32)
                with torch.no_grad():
                    torch_diff = float((teacher.model(x) - model(x)).abs().max())
                space = CompressionSpace.for_teacher(teacher.model, teacher.input_shape)
                rows.append({
                    "network": name, "exporter": exporter, "mode": mode,
                    "bytes": len(data), "import_seconds": round(seconds, 3),
                    "max_relative_diff_vs_onnxruntime": ort_diff,
                    "max_abs_diff_vs_pytorch": torch_diff,
                    "layers": len(space.graph.layers), "shrinkable_groups": len(space.shrinkable),
                    "params": sum(p.numel() for p in teacher.model.parameters()),
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    out = {
        "rows": rows,
        "worst_vs_onnxruntime": max(r["max_relative_diff_vs_onnxruntime"] for r in rows),
        "load_average": [list(load0), list(os.getloadavg())],
        "torch": torch.__version__,
        "command": "python benchmarks/onnx_import.py",
    }
    path = ROOT / "results" / "onnx_import.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"worst difference from ONNX Runtime: {out['worst_vs_onnxruntime']:.2e} -> {path}")


if __name__ == "__main__":
    main()
