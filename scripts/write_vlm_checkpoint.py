"""Write a randomly initialised vision-language checkpoint (model, processor, tokenizer) for hf-vla.

Why: a benchmark of hf-vla at a real size, on a machine the real weights cannot be carried to, needs
a checkpoint directory of that size; a random one costs what the real one costs to run. Offline.

    .venv/bin/python scripts/write_vlm_checkpoint.py /tmp/smolvlm-500m --family idefics3 --size 500m
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--family", type=click.Choice(["idefics3", "paligemma"]), default="idefics3", show_default=True,
              help="Layout: idefics3 (SmolVLM) or paligemma.")
@click.option("--size", type=click.Choice(["tiny", "500m"]), default="tiny", show_default=True,
              help="tiny: CPU tests; 500m: about SmolVLM-500M's sizes.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def main(directory: Path, family: str, size: str, seed: int) -> None:
    """Write a random FAMILY checkpoint of SIZE with its processor into DIRECTORY (for policy.args.pretrained)."""
    import math

    from safetensors import safe_open

    from dvlad.policies.random_vlm import write_checkpoint

    write_checkpoint(directory, family, seed=seed, size=size)
    count = 0
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            count += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118
    click.echo(f"{directory}: {family} {size}, {count / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
