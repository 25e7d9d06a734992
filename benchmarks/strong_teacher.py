"""A strong CIFAR-10 teacher on this machine's CPU (or a GPU): one-cycle SGD, resumable.

    python benchmarks/strong_teacher.py --epochs 30            # resnet20: starts or resumes
    python benchmarks/strong_teacher.py --epochs 30 --status   # what the checkpoint holds
    python benchmarks/strong_teacher.py --arch resnet56 --device cuda   # the transfer study's

The schedule is made for short budgets: one-cycle SGD (momentum 0.9, Nesterov, peak lr 0.2,
weight decay 5e-4), label smoothing 0.1, the paper's augmentation (random crop with padding 4 and
a horizontal flip), batch 128, on the fixed 45k/5k split of `../shared/data/cifar10/train.npz`.
After every epoch the model, optimiser, scheduler and generator state are written to
`benchmarks/cache/strong_teacher/ckpt.safetensors` + `ckpt.json` (`strong_teacher_<arch>/` for
another architecture; no pickle: tensors as safetensors, the rest as JSON), so an interrupted run
continues at the next epoch with the same schedule. When the last epoch is done the weights and a
card (settings, accuracy per epoch, wall time, machine load) are written to
`benchmarks/data/teachers/cifar10_<arch>.{safetensors,json}`. The data loading and augmentation
run on the CPU whatever `--device` is (the batches then move to it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from workers import zoo  # noqa: E402
from workers.data import iterate_batches, load_dataset  # noqa: E402
from workers.export import state_to_safetensors  # noqa: E402
from workers.train import evaluate, seed_everything  # noqa: E402

DEFAULT_NPZ = ROOT.parent.parent / "shared" / "data" / "cifar10" / "train.npz"
CKPT_DIR = ROOT / "cache" / "strong_teacher"
OUT_DIR = ROOT / "data" / "teachers"


def _flatten(prefix: str, state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Split a nested state dict into tensors (returned by name) and a JSON skeleton."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {str(k): _flatten(f"{prefix}.{k}", v, tensors) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(state)]
    return state


def _unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            return tensors[skeleton["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(v, tensors) for v in skeleton]
    return skeleton


def _optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    state = opt.state_dict()
    # JSON keys are strings; the optimiser's per-parameter state is keyed by int
    return {
        "state": {str(k): v for k, v in state["state"].items()},
        "groups": state["param_groups"],
    }


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    opt.load_state_dict(
        {"state": {int(k): v for k, v in saved["state"].items()}, "param_groups": saved["groups"]}
    )


def _load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.2, help="one-cycle peak lr")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    p.add_argument("--status", action="store_true")
    p.add_argument("--arch", default="resnet20", help="a zoo CIFAR architecture, e.g. resnet56")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = p.parse_args()

    ckpt_dir = CKPT_DIR if args.arch == "resnet20" else CKPT_DIR.with_name(
        f"{CKPT_DIR.name}_{args.arch}"
    )  # fmt: skip
    ckpt_t, ckpt_j = ckpt_dir / "ckpt.safetensors", ckpt_dir / "ckpt.json"
    if args.status:
        print(ckpt_j.read_text() if ckpt_j.exists() else "no checkpoint")
        return
    torch.set_num_threads(args.threads)
    data = load_dataset(f"npz:{args.npz}?val=0.1", None, False, seed=0)
    seed_everything(0)
    device = torch.device(args.device)
    model = zoo.build(args.arch, 10).to(device)
    opt = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = -(-len(data.train) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps, pct_start=0.25
    )
    gen = torch.Generator().manual_seed(0)
    card: dict[str, Any] = {
        "arch": args.arch,
        "dataset": "cifar10 train.npz, 45k/5k fixed-seed split (npz:...?val=0.1, seed 0)",
        "settings": {
            "epochs": args.epochs,
            "optimizer": "SGD momentum 0.9 nesterov, weight decay 5e-4",
            "schedule": f"OneCycleLR max_lr {args.lr:g} pct_start 0.25 (per batch)",
            "label_smoothing": args.label_smoothing,
            "batch_size": args.batch_size,
            "augmentation": "random crop pad 4 + horizontal flip",
            "threads": args.threads,
            "device": args.device,
        },
        "history": [],
        "epoch_seconds": [],
        "load_average_1min": [],
        "command": " ".join(sys.argv),
    }
    if ckpt_j.exists():
        saved = json.loads(ckpt_j.read_text())
        if saved["settings"] != card["settings"]:
            raise SystemExit(f"checkpoint settings differ: {saved['settings']}; delete {ckpt_dir}")
        tensors = load_file(str(ckpt_t))
        model.load_state_dict(_unflatten(saved["model"], tensors))
        _load_optimizer(opt, _unflatten(saved["optimizer"], tensors))  # onto the params' device
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(tensors["generator"])
        card.update({k: saved[k] for k in ("history", "epoch_seconds", "load_average_1min")})
        print(f"resuming after epoch {len(card['history'])}", flush=True)
    for epoch in range(len(card["history"]), args.epochs):
        t0, load0 = time.perf_counter(), _load()
        model.train()
        total = 0.0
        for x, y, _ in iterate_batches(
            data.train, args.batch_size, shuffle=True, augment=True, generator=gen
        ):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        acc = evaluate(model, data.val, device)
        card["history"].append(acc)
        card["epoch_seconds"].append(round(time.perf_counter() - t0, 1))
        card["load_average_1min"].append([round(load0, 2), round(_load(), 2)])
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {total / steps:.3f} val {acc:.4f} "
            f"({card['epoch_seconds'][-1]} s, load {_load():.1f})",
            flush=True,
        )
        tensors: dict[str, torch.Tensor] = {"generator": gen.get_state()}
        state = dict(card)
        state["model"] = _flatten("model", model.state_dict(), tensors)
        state["optimizer"] = _flatten("opt", _optimizer_state(opt), tensors)
        state["scheduler"] = sched.state_dict()
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(ckpt_t) + ".tmp")
        ckpt_j.with_suffix(".tmp").write_text(json.dumps(state) + "\n")
        os.replace(str(ckpt_t) + ".tmp", ckpt_t)
        os.replace(ckpt_j.with_suffix(".tmp"), ckpt_j)
    model.eval().cpu()
    card["accuracy"] = card["history"][-1]
    card["wall_seconds"] = round(sum(card["epoch_seconds"]), 1)
    card["params"] = sum(p.numel() for p in model.parameters())
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"cifar10_{args.arch}.safetensors").write_bytes(state_to_safetensors(model))
    (OUT_DIR / f"cifar10_{args.arch}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("accuracy", "wall_seconds", "params")}))


if __name__ == "__main__":
    main()
