#!/usr/bin/env bash
# The record: torchrun with one process per visible GPU (8 on the reference node). Every argument
# goes to train_gpt.py, e.g. ./run.sh --record=my_idea --num_iterations=5500
set -euo pipefail
cd "$(dirname "$0")"
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 1 ]; then
    echo "error: torch sees no CUDA GPU, so there is nothing for torchrun to start. Check nvidia-smi," \
         "CUDA_VISIBLE_DEVICES and that torch is a CUDA build; for a CPU run use" \
         "python train_gpt.py --preset=tiny." >&2
    exit 2
fi
exec torchrun --standalone --nproc_per_node="$gpus" train_gpt.py "$@"
