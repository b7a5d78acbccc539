#!/usr/bin/env bash
# Multi-GPU check (2 GPUs): data-parallel `accelerate launch` and `parallelize=True` give the results of
# one GPU. Run from the repo root on a 2-GPU machine with lm-eval installed:  bash benchmarks/multi_gpu.sh OUT
set -euo pipefail
out=${1:-multi_gpu_out}
mkdir -p "$out"
python - "$out/model" <<'PY'
import sys
sys.path.insert(0, "tests")
from tiny_models import make_config, make_model, make_tokenizer
tok = make_tokenizer()
model = make_model("llama", len(tok), seed=0, num_hidden_layers=8, hidden_size=256, intermediate_size=512)
model.save_pretrained(sys.argv[1]); tok.save_pretrained(sys.argv[1])
PY
args="pretrained=$out/model,P=4,method=sink+sel,dtype=float32"
common="--model parallel_hf --tasks pce_smoke --log_samples"
python -m lm_eval_parallel $common --model_args "$args" --device cuda:0 --output_path "$out/one_gpu" 2>&1 | tail -12
accelerate launch --multi_gpu --num_processes 2 -m lm_eval_parallel $common --model_args "$args" \
  --output_path "$out/data_parallel" 2>&1 | tail -12
python -m lm_eval_parallel $common --model_args "$args,parallelize=True,max_memory_per_gpu=12MB" \
  --output_path "$out/parallelize" 2>&1 | tail -12
python - "$out/model" <<'PY'
import sys
from lm_eval_parallel.model import ParallelHFLM
lm = ParallelHFLM(pretrained=sys.argv[1], parallelize=True, max_memory_per_gpu="12MB", dtype="float32")
print("parallelize=True places layers on:", sorted(set(map(str, lm.model.hf_device_map.values()))))
PY
python - "$out" <<'PY'
import glob, json, sys
out = sys.argv[1]
def load(run):
    res = json.load(open(glob.glob(f"{out}/{run}/**/results_*.json", recursive=True)[0]))
    samples = {}
    for path in glob.glob(f"{out}/{run}/**/samples_*.jsonl", recursive=True):
        for line in open(path):
            s = json.loads(line)
            # data parallel pads the shorter rank with repeats of a request, whose responses lm-eval appends
            # to the same instance: compare the first response of every instance
            first = [r[0] for r in s["resps"]]
            samples[(path.split("samples_")[1].rsplit("_", 1)[0], s["doc_id"])] = (first, round(s["attn_entropy"], 5))
    scores = {t: {k: v for k, v in r.items() if "," in k and "stderr" not in k} for t, r in res["results"].items()}
    return scores, samples, res["config"].get("device_map") or res["config"].get("model_dtype")
one = load("one_gpu")
for run in ("data_parallel", "parallelize"):
    other = load(run)
    same_samples = one[1] == other[1]
    print(f"{run}: samples identical to one GPU: {same_samples} ({len(other[1])} samples); scores identical: {one[0] == other[0]}")
PY
