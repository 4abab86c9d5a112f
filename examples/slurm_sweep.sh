#!/usr/bin/env bash
# A gasbench sweep as a Slurm job array: every method at NFE 4-10 on one teacher, split over
# the array's tasks. Each task runs one shard; overlapping or restarted tasks compute each cell
# once (the per-cell locks on the shared results directory). Submit with
#   sbatch --array=1-8 examples/slurm_sweep.sh
# and follow it with
#   gasbench status --results-dir $RESULTS
#SBATCH --job-name=gasbench-sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=gasbench-sweep-%A_%a.log
set -euo pipefail

TEACHER=${TEACHER:-cifar10}
RESULTS=${RESULTS:-$HOME/gasbench-results}        # on a filesystem every node sees
export GASBENCH_HOME=${GASBENCH_HOME:-$HOME/.cache/gasbench}   # weights and trajectory caches, shared too

gasbench run -d "$TEACHER" --nfe 4,6,8,10 --device cuda \
    --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" --results-dir "$RESULTS"
