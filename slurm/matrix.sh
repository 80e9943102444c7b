#!/bin/bash
# The run matrix on a Slurm cluster: every pending stage of dvc.yaml's foreach/matrix stages
# (train@, seed@, precision@, published_path@, ...) as one task of a job array, then one
# gather job that records the stages after them (compare, report, ...) without retraining.
#
#   slurm/matrix.sh [sbatch options for the array's tasks, e.g. --partition=gpu --gpus=1]
#
# Run it on a login node in the checkout, which every node sees at the same path (a shared
# file system); the DVC cache is the checkout's .dvc/cache, shared with it. Steps (the one
# place they are written; docs/parallel.md points here):
#   1. `python -m mnist_repro.parallel.matrix prepare`: the stages the array waits on (check_params,
#      download) run here, now; the array's stages go to a list under .dvc/tmp/matrix/.
#   2. slurm/matrix.sbatch as --array=0-(n-1): task i runs `dvc --wait-for-lock repro -s <stage i>`
#      in the shared checkout, confined by Slurm to the GPU and cores it was given; each task
#      records its own stage in dvc.lock (DVC takes its repo lock only around that write).
#   3. slurm/gather.sbatch after the whole array (afterany): it refuses, naming the array
#      indices to resubmit, while a stage of the list is not recorded (it never trains one);
#      else `dvc repro` records the stages after them (benchmark, compare, report, ...), and
#      `dvc status` is clean.
# A task that fails or is preempted loses only its stage: resubmit its index, which resumes
# from its checkpoint, then the gather step, with the list this script printed:
#   sbatch --array=<i> --export=ALL,MATRIX_STAGES=<list> slurm/matrix.sbatch
#   sbatch --dependency=afterany:<that job> --export=ALL,MATRIX_STAGES=<list> slurm/gather.sbatch
set -euo pipefail
cd "$(dirname "$0")/.."
stages="$PWD/.dvc/tmp/matrix/stages-$(date +%Y%m%d-%H%M%S)-$$.txt"
python -m mnist_repro.parallel.matrix prepare --out "$stages"
n=$(grep -c . "$stages" || true)
after=()
if [ "$n" -gt 0 ]; then
  array=$(sbatch --parsable --array="0-$((n - 1))" --export="ALL,MATRIX_STAGES=$stages" "$@" slurm/matrix.sbatch)
  echo "array job ${array%%;*}: $n stage(s) from $stages"
  after=(--dependency="afterany:${array%%;*}")
fi
gather=$(sbatch --parsable "${after[@]}" --export="ALL,MATRIX_STAGES=$stages" slurm/gather.sbatch)
echo "gather job ${gather%%;*}"
