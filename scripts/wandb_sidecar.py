#!/usr/bin/env python3
"""Weights & Biases sidecar of the runner: one W&B run per training step of a pipeline run.

    python3 scripts/wandb_sidecar.py --project P --id RUN_ID --name NAME --dir DIR --config CONFIG.json [--mode offline]

Reads one JSON object per line on stdin ({"step": N, "loss": ..., ...}) and logs it at step N.
`--id` is stable for a pipeline run and step, and `resume="allow"`, so `runner resume` continues
the same W&B run. Exits when stdin closes.
"""
import argparse
import json
import sys

import wandb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", required=True)
    ap.add_argument("--entity")
    ap.add_argument("--id", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--group")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--mode")
    ap.add_argument("--tags", default="")
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    with open(args.config) as fh:
        config = json.load(fh)
    run = wandb.init(project=args.project, entity=args.entity, id=args.id, name=args.name, group=args.group,
                     dir=args.dir, mode=args.mode, config=config, resume="allow",
                     tags=[t for t in args.tags.split(",") if t])
    print(json.dumps({"ready": True, "id": run.id}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        rec = json.loads(line)
        step = int(rec.pop("step"))
        wandb.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=step)
    run.finish()


if __name__ == "__main__":
    main()
