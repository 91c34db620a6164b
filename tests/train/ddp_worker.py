"""Run by tests/train/test_ddp.py under torchrun: the real reflow recipe, plus a record of
each rank's final parameters and first batch in a side folder (argv[1])."""

import sys
from pathlib import Path

from safetensors.torch import save_file

from genkit.cli import run_main
from genkit.recipes import reflow
from genkit.train import Trainer

side = Path(sys.argv[1])
rank = int(__import__("os").environ["RANK"])
original_fit = Trainer.fit


def recording_fit(self):
    first = self.data.__class__(self.data.name, self.data.batch_size, seed=self.data.seed, rank=rank)
    result = original_fit(self)
    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in self.models["model"].state_dict().items()}
    tensors["first_batch"] = next(first)
    save_file(tensors, str(side / f"rank{rank}.safetensors"))
    return result


Trainer.fit = recording_fit
sys.exit(run_main(reflow.main, sys.argv[2:]))
