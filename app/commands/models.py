"""``python -m app models [--json]``: the model table, where each model is, and the auto pick."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from app.models import registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    device = registry.detect_device()
    avail = registry.availabilities()
    try:
        picked, reason = registry.auto_select(device, avail)
    except registry.ModelNotAvailable as error:
        picked, reason = None, str(error)
    rows = [
        {
            **asdict(row),
            "memory_needed_gb": round(row.memory_needed_gb(device.dtype_bytes), 1),
            "fits": row.memory_needed_gb(device.dtype_bytes) <= device.free_gb,
            "status": avail[row.id].status,
            "detail": avail[row.id].detail,
        }
        for row in registry.MODELS.values()
    ]
    if args.json:
        out = {
            "device": asdict(device),
            "models": rows,
            "auto_select": {"id": picked, "reason": reason},
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"device: {device.kind} ({device.name}), {device.free_gb:.1f} GB free\n")
    header = f"{'id':30s} {'type':12s} {'params':>7s} {'memory':>7s} {'chat':4s}  {'status':16s} detail"
    print(header)
    print("-" * len(header))
    for r in rows:
        mark = "*" if r["id"] == picked else " "
        memory = f"{r['memory_needed_gb']:.1f}G" + ("" if r["fits"] else "!")
        print(
            f"{mark}{r['id']:29s} {r['model_type']:12s} {r['params_b']:6.2f}B {memory:>7s} "
            f"{'yes' if r['chat'] else 'no':4s}  {r['status']:16s} {r['detail']}"
        )
    print("\nmemory: needed on this device ('!' = does not fit); * = auto-selected")
    print(f"auto-select: {reason}")
    return 0
