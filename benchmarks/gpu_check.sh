#!/usr/bin/env bash
# The GPU check, prepared to run once on a lent device machine (H100/H200), from the repo root:
#   bash benchmarks/gpu_check.sh
# It trains nasnetalarge at 331 px with bf16 autocast for 2 x (warm-up + 3 rounds x 60 steps)
# through cxrclf's Trainer and through a bare PyTorch loop on the same model, batch (10, as the
# paper) and data, and prints images/s of both. The device image already holds torch, timm,
# typer, rich, safetensors, opencv, pandas, scipy and scikit-learn; cxrclf runs from the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))"
python3 benchmarks/train_overhead.py --model nasnetalarge --image-size 331 --batch-size 10 --steps 60 --rounds 3 --device cuda
python3 benchmarks/train_overhead.py --model tf_efficientnet_lite0 --image-size 224 --batch-size 10 --steps 60 --rounds 3 --device cuda
