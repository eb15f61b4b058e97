"""Pilot: does annealing the competition temperature fix the argmax collapse of CVNs?

A short-budget probe ahead of the converged study (``accuracy.py --setting converged``):
each arm trains one model (one seed, 1 torch thread) with the ``deit_small`` recipe at lr
2e-3, batch 128, no warm-up, on 12,000 images (Shapes: generated, 32 px; Fashion-MNIST: a
seeded subset of the training split), holds out 10 % for model selection, and is evaluated
on 2,000 test images under three policies: ``sample6`` (logits averaged over 6 sampled
passes), ``sample1`` and ``argmax`` (deterministic winners), plus the winner peakedness
(:func:`discover.winner_peakedness`, mean over the LWTA layers, on 256 test images).

Arms are JSON objects of ``TrainConfig`` fields plus a ``name``, e.g.::

    python benchmarks/temperature_pilot.py shapes resnet 6 \\
        '[{"name": "dense", "U": 1}, {"name": "u4-t1", "U": 4},
          {"name": "u4-anneal", "U": 4, "temperature_final": 0.05}]'

Each arm prints one JSON line; ``--out`` appends them to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from discover import TrainConfig, evaluate_run, load_run, train, winner_peakedness
from discover.data import build_dataset, build_transforms

MODELS = {
    "resnet": ("small_resnet", {"widths": [16, 32, 64], "depths": [1, 1, 1]}),
    "vit": ("small_vit", {"embed_dim": 96, "depth": 6, "num_heads": 3}),
}


def run_arm(dataset: str, family: str, epochs: int, arm: dict, workdir: Path) -> dict:
    arm = dict(arm)
    name = arm.pop("name")
    shapes = dataset == "shapes"
    model, kwargs = MODELS[family]
    kwargs = {**kwargs, "img_size": 32 if shapes else 28, "in_chans": 3 if shapes else 1}
    if family == "vit":
        kwargs["patch_size"] = 8 if shapes else 7
    data_kwargs = {"n": 12000, "image_size": 32} if shapes else {}
    out = workdir / f"{dataset}-{family}-{name}"
    config = TrainConfig(
        model=model,
        model_kwargs=kwargs,
        dataset=dataset,
        dataset_kwargs=data_kwargs,
        train_subset=None if shapes else 12000,
        recipe="deit_small",
        epochs=epochs,
        batch_size=128,
        lr=2e-3,
        warmup_epochs=0,
        eval_samples=1,
        out=str(out),
        overwrite=True,
        **arm,
    )
    t0 = time.time()
    result = train(config, progress=False)
    record = {
        "arm": name,
        **arm,
        "train_s": round(time.time() - t0),
        "best_val": result.best_top1,
        "curve": [h.get("val_top1") for h in result.history],
    }
    for policy, samples in (("sample", 6), ("sample", 1), ("argmax", 1)):
        ev = evaluate_run(out, split="test", policy=policy, samples=samples, seed=0, limit=2000)
        record[f"{policy}{samples}"] = round(100 * ev.top1, 2)
    net = load_run(out).model
    test = build_dataset(
        dataset, "test", transform=build_transforms(net.data_config, train=False), **data_kwargs
    )
    x = torch.stack([test[i][0] for i in range(256)])
    peaks = winner_peakedness(net.eval(), x)
    record["peak_mean"] = round(statistics.fmean(peaks.values()), 3) if peaks else None
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["shapes", "fashion-mnist"])
    parser.add_argument("family", choices=sorted(MODELS))
    parser.add_argument("epochs", type=int)
    parser.add_argument("arms", type=json.loads, help="JSON list of arms")
    parser.add_argument("--workdir", default="benchmarks/runs/temperature-pilot")
    parser.add_argument("--out", help="append the records to this JSON-lines file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for arm in args.arms:
        record = run_arm(args.dataset, args.family, args.epochs, arm, Path(args.workdir))
        record.update(dataset=args.dataset, family=args.family, epochs=args.epochs)
        print(json.dumps(record), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
