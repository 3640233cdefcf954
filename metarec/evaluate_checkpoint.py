"""`metarec eval checkpoint=PATH`: rebuild data and model from the checkpoint's own config, then
evaluate; command-line overrides change the evaluation only (algo.inner_steps=5, data.shots=5).
eval.split=val scores validation users instead of test ones (MovieLens: val and val_new, the
validation users' new items), for choices that must not look at a test user."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from metarec import checkpoint
from metarec.device import setup_device
from metarec.errors import UserError, first_line
from metarec.evaluate import evaluate_all, format_table
from metarec.train import build

log = logging.getLogger("metarec")


def evaluate_checkpoint(cli_cfg: DictConfig, overrides: list[str], run_dir: Path) -> dict:
    path = cli_cfg.checkpoint or cli_cfg.eval.checkpoint
    if not path:
        raise UserError("metarec eval needs a checkpoint: metarec eval checkpoint=outputs/DATE/TIME/checkpoints/best.pt")
    ck = checkpoint.load(path)
    cfg = checkpoint.config(ck, Path(path))  # checked against today's schemas
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key.startswith("hydra.") or key == "hydra":
            continue
        if key == "device":  # a group choice: take the composed device config
            cfg.device = cli_cfg.device
            continue
        if key in ("data", "model", "algo", "experiment"):
            raise UserError(f"metarec eval rebuilds {key} from the checkpoint's own config, so {o} cannot apply: "
                            f"change single keys instead (e.g. algo.inner_steps=5, data.shots=5)")
        try:
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, force_add=False)
        except Exception as e:  # noqa: BLE001 - a wrong type or unknown key, said in one line
            raise UserError(f"override {o} does not fit the checkpoint's config: {first_line(e)}") from None
    cfg.trainer.progress = False
    device = setup_device(cfg.device)
    source, model, algo = build(cfg, device, progress=False)
    if ck.get("fingerprint") != source.fingerprint():
        where = f"data.root={cfg.data.root}" if cfg.data.get("root") else f"the {cfg.data.name} data this config loads"
        raise UserError(f"checkpoint {path} was trained on other data than {where} (the data fingerprints differ): "
                        f"point data.root at the data it was trained on")
    try:
        model.load_state_dict(ck["model"])
        algo.load_state_dict(ck["algo"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"checkpoint {path} does not fit the model its config describes ({first_line(e)})") from None
    if cfg.eval.split not in ("test", "val"):
        raise UserError(f"eval.split={cfg.eval.split!r} is not one of test, val (val: validation users only)")
    result = evaluate_all(cfg, source, algo, cfg.eval.split)
    result["checkpoint"] = str(path)
    result["overrides"] = overrides
    result["split"] = cfg.eval.split
    table = format_table(result, f"{cfg.algo.name} on {cfg.data.name} ({cfg.eval.split}): {path}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        (run_dir / "eval.md").write_text(table)
    except OSError as e:
        raise UserError(f"could not write the evaluation to {run_dir} ({e.strerror or e}): "
                        f"free disk space or choose a writable hydra.run.dir") from None
    print(table)
    return result
