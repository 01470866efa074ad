"""SLURM support: sweep grids as job-array manifests (:mod:`smet.slurm.grid`) and sbatch template
rendering (:mod:`smet.slurm.render`). The command line is ``smet-submit`` (:mod:`smet.cli.submit`);
the templates live in ``slurm/`` and the local test cluster in ``scripts/slurm-local.sh``."""
