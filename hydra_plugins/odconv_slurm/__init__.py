"""The Slurm launcher of configs/hydra/launcher/slurm.yaml: hydra-submitit-launcher's, with one fix.

submitit writes `#SBATCH --gpus-per-node=0` for gpus_per_node=0, which Slurm records as a request for the GPU
resource (TresPerNode=gres:gpu:0): a site whose job-submit rules route or reject jobs by their GPU request treats
a CPU job as a GPU job. Here 0 (or null) requests no GPU resource at all.
"""
from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher


class SlurmLauncher(_SubmititSlurmLauncher):
    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not self.params.get("gpus_per_node"):
            self.params["gpus_per_node"] = None  # submitit leaves parameters that are None out of the script
