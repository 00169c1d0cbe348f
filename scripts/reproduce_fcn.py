"""Reproduce the FCN reference on PASCAL VOC: FCN-32s -> FCN-16s -> FCN-8s, then the results table.

    python scripts/reproduce_fcn.py data.root=/data/VOCdevkit sbd.root=/data/benchmark_RELEASE \
        weights=/data/vgg16-00b39a1b.pth [stages=fcn32s,fcn16s,fcn8s[,fcn8s_atonce]]
        [handoff=last|best] [out=DIR] [any src/train.py override, given to every stage]

Each stage is `python src/train.py experiment=voc_<stage> ...` with <out>/<stage> as its run dir.
A stage trained from an earlier one gets that stage's checkpoint as model.init_from (handoff=last:
its last.ckpt, the reference's choice of the final snapshot; best: its best on the validation set).
`sbd.root` is data.sbd_root; `weights` is model.backbone.weights of the stages trained from VGG16
(weights=imagenet also sets data.normalize=imagenet). With an existing out=DIR, a stage whose
metrics.json is there is reused and one with only checkpoints/last.ckpt resumes from it.
Prints the table of docs/reproducing-fcn.md ("Targets") with the measured columns filled from
the stages' metrics.json and writes it to <out>/results.md and <out>/results.json.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import src  # noqa: E402, F401  (sets SEGLAB_ROOT, which stored data paths may refer to)
from src.utils.errors import UserError  # noqa: E402
from src.utils.files import write_json_atomic  # noqa: E402

HANDOFFS = ("last", "best")


@dataclass(frozen=True)
class Stage:
    """One training of the pipeline: its experiment, and the stage it starts from (None: VGG16)."""

    name: str
    label: str
    experiment: str
    parent: str | None = None


STAGES = {
    "fcn32s": Stage("fcn32s", "FCN-32s", "voc_fcn32s"),
    "fcn16s": Stage("fcn16s", "FCN-16s", "voc_fcn16s", parent="fcn32s"),
    "fcn8s": Stage("fcn8s", "FCN-8s", "voc_fcn8s", parent="fcn16s"),
    "fcn8s_atonce": Stage("fcn8s_atonce", "FCN-8s at-once", "voc_fcn8s_atonce"),
}
DEFAULT_STAGES = ("fcn32s", "fcn16s", "fcn8s")

# Published mIoU (%) on seg11valid; docs/reproducing-fcn.md ("Targets") gives them with context.
TARGETS = {
    "reference": {"fcn32s": 63.6, "fcn16s": 65.0, "fcn8s": 65.5, "fcn8s_atonce": 65.4},
    "paper": {"fcn32s": 59.4, "fcn16s": 62.4, "fcn8s": 62.7},
    "pytorch_fcn": {"fcn32s": 63.13, "fcn16s": 64.80, "fcn8s": 65.39, "fcn8s_atonce": 65.10},
}
TARGET_SOURCES = {
    "reference": "fcn.berkeleyvision.org README: the Caffe reference recipe (PAMI 2016)",
    "paper": "Long et al., CVPR 2015, Table 2: the original schedule",
    "pytorch_fcn": "wkentaro/pytorch-fcn README at v1.7.0 (Aug 2017)",
}


class StageFailed(RuntimeError):
    """A stage's train.py exited with an error; its exit status is kept."""

    def __init__(self, stage: str, returncode: int, run_dir: Path) -> None:
        super().__init__(f"stage {stage} failed (exit {returncode}); its output is in {run_dir}")
        self.returncode = returncode


@dataclass
class Options:
    """The command line: the script's own keys, and the overrides every stage gets."""

    out: Path
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    handoff: str = "last"
    weights: str | None = None
    overrides: list[str] = field(default_factory=list)


def hydra_value(value: str | Path) -> str:
    """`value` as a Hydra override value: quoted unless it is a plain path or word."""
    text = str(value)
    if re.fullmatch(r"[\w/.+~-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_args(argv: list[str]) -> Options:
    """Split key=value arguments into the script's options and the stages' overrides."""
    options = Options(out=REPO_ROOT / "logs" / "reproduce_fcn" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    for argument in argv:
        key, sep, value = argument.partition("=")
        if not sep:
            raise UserError(f"argument {argument!r}: expected key=value (see --help)")
        if key == "sbd.root":
            options.overrides.append(f"data.sbd_root={value}")
        elif key == "weights":
            options.weights = value
        elif key == "out":
            options.out = Path(value).expanduser().resolve()
        elif key == "stages":
            options.stages = [name.strip() for name in value.split(",") if name.strip()]
        elif key == "handoff":
            options.handoff = value
        else:
            options.overrides.append(argument)
    check_options(options)
    return options


def check_options(options: Options) -> None:
    """Known stages, each after the stage it starts from; weights when a stage starts from VGG16."""
    unknown = [name for name in options.stages if name not in STAGES]
    if unknown or not options.stages:
        raise UserError(f"stages={','.join(options.stages)}: expected a list of {list(STAGES)}")
    for index, name in enumerate(options.stages):
        parent = STAGES[name].parent
        if parent is not None and parent not in options.stages[:index]:
            raise UserError(f"stages: {name} starts from {parent}, so {parent} must come before it")
    if options.handoff not in HANDOFFS:
        raise UserError(f"handoff={options.handoff}: expected one of {list(HANDOFFS)}")
    from_vgg = [name for name in options.stages if STAGES[name].parent is None]
    if from_vgg and options.weights is None:
        raise UserError(
            f"{', '.join(from_vgg)} start(s) from VGG16: pass weights=<VGG16 converted from Caffe, "
            "e.g. vgg16-00b39a1b.pth> (or weights=imagenet for torchvision's; see docs/reproducing-fcn.md, 'Weights')"
        )
    if options.weights == "imagenet":
        # torchvision's weights expect RGB 0-1 input with ImageNet statistics, in every stage
        options.overrides.append("data.normalize=imagenet")


def stage_command(stage: Stage, options: Options, run_dir: Path, init_from: Path | None) -> list[str]:
    """The train.py command line of one stage."""
    command = [
        sys.executable,
        str(REPO_ROOT / "src" / "train.py"),
        f"experiment={stage.experiment}",
        f"hydra.run.dir={hydra_value(run_dir)}",
    ]
    if init_from is None:
        command.append(f"model.backbone.weights={hydra_value(options.weights)}")
    else:
        command.append(f"model.init_from={hydra_value(init_from)}")
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():  # an interrupted stage continues where it stopped
        command.append(f"ckpt_path={hydra_value(last)}")
    return command + options.overrides


def run_stage(stage: Stage, options: Options, init_from: Path | None) -> Path:
    """Train one stage (unless its metrics.json shows it done) and return its run dir."""
    run_dir = options.out / stage.name
    if (run_dir / "metrics.json").is_file():
        print(f"[reproduce_fcn] {stage.name}: done in {run_dir}, reused", flush=True)
        return run_dir
    command = stage_command(stage, options, run_dir, init_from)
    print(f"[reproduce_fcn] {stage.name}: {' '.join(command[1:])}", flush=True)
    returncode = subprocess.run(command, cwd=REPO_ROOT).returncode
    if returncode != 0:
        raise StageFailed(stage.name, returncode, run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"stage {stage.name} wrote no metrics.json in {run_dir} (it trained nothing?)")
    return run_dir


def stage_checkpoint(run_dir: Path, handoff: str) -> Path:
    """The checkpoint a stage hands to the next: checkpoints/last.ckpt or its best-*.ckpt."""
    folder = run_dir / "checkpoints"
    found = [folder / "last.ckpt"] if handoff == "last" else sorted(folder.glob("best-*.ckpt"))
    found = [path for path in found if path.is_file()]
    if not found:
        raise UserError(f"no {handoff} checkpoint in {folder} to hand to the next stage")
    return max(found, key=lambda path: path.stat().st_mtime)


def validation_images(run_dir: Path) -> int | None:
    """How many images the stage validated on, listed from the data config of the stage's own run.

    Read from the `.hydra/config.yaml` this pipeline's run wrote, never from the checkpoint: the
    config a checkpoint stores is data, not something to build (src/utils/checkpoint.py).
    """
    import hydra
    from omegaconf import OmegaConf

    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        return None
    datamodule = hydra.utils.instantiate(OmegaConf.load(config_file).data)
    return len(datamodule.split_pairs(datamodule.val_split))


def percent(value: float | None) -> float | None:
    """A metric in [0, 1] as a percentage rounded to 2 decimals."""
    return None if value is None else round(100 * value, 2)


def stage_result(stage: Stage, run_dir: Path, handoff: str) -> dict[str, Any]:
    """What a finished stage measured, from its metrics.json, and where it is."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best, final = metrics.get("best", {}), metrics.get("final", {})
    checkpoint = stage_checkpoint(run_dir, handoff)
    return {
        "stage": stage.name,
        "experiment": stage.experiment,
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "best_mIoU": percent(best.get("val/mIoU")),
        "best_step": best.get("step"),
        "final_mIoU": percent(final.get("val/mIoU")),
        "global_step": metrics.get("global_step"),
        "val_images": validation_images(run_dir),
    }


def cell(value: Any) -> str:
    """A table cell: empty for a missing value."""
    return "" if value is None else str(value)


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """The Markdown table: published targets beside what these stages measured."""
    lines = [
        "| model | reference (Caffe) | paper Table 2 | pytorch-fcn | measured here (best) "
        "| final | best at step | val images |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, stage in STAGES.items():
        measured = results.get(name, {})
        row = [
            stage.label,
            *(cell(TARGETS[source].get(name)) for source in TARGETS),
            *(cell(measured.get(key)) for key in ("best_mIoU", "final_mIoU", "best_step", "val_images")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    notes = [f"- {source}: {text}" for source, text in TARGET_SOURCES.items()]
    notes.append(
        "- measured here: val/mIoU (%) of this run's stages on the validation split they read "
        "(seg11valid: 736 images on Pascal VOC)"
    )
    return "\n".join(lines + ["", "Targets: mIoU (%) on seg11valid.", *notes]) + "\n"


def reproduce(options: Options) -> dict[str, dict[str, Any]]:
    """Run the stages in order, handing checkpoints on; write and return the results."""
    run_dirs: dict[str, Path] = {}
    results: dict[str, dict[str, Any]] = {}
    for name in options.stages:
        stage = STAGES[name]
        parent_dir = run_dirs.get(stage.parent) if stage.parent else None
        init_from = stage_checkpoint(parent_dir, options.handoff) if parent_dir else None
        run_dirs[name] = run_stage(stage, options, init_from)
        results[name] = stage_result(stage, run_dirs[name], options.handoff)
        results[name]["init_from"] = None if init_from is None else str(init_from)
    table = results_table(results)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "results.md").write_text(table)
    # a list: the stages in the order they ran (write_json_atomic sorts mapping keys)
    stages = list(results.values())
    write_json_atomic(options.out / "results.json", {"stages": stages, "targets": TARGETS})
    print(table, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 2 on a bad argument, a failed stage's exit status when one fails."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0
    try:
        reproduce(parse_args(argv))
    except StageFailed as failure:
        print(f"reproduce_fcn: error: {failure}", file=sys.stderr)
        return failure.returncode
    except UserError as err:
        print(f"reproduce_fcn: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
